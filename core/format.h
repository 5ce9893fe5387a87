// The on-disk format: every key layout and value encoding of the store. The only code
// that encodes or decodes them; docs/FORMAT.md describes the same in prose (change both
// together). Record values (layers, volumes, snapshots, images) and map values are the
// catalog's, whatever backend holds them; column family names, the chunk index record,
// and the data and map keys are the local store's (core/local/).
//
// Persisted on disk: never renumber an enum value, never reorder a record's fields.
// New record fields are appended; decoders ignore trailing bytes they do not know.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/catalog_info.h"
#include "core/sha256.h"
#include "core/status.h"

namespace stellarium::format {

// Bumped when a change is not readable by older code. Stored under meta key "format".
inline constexpr uint32_t kFormatVersion = 2;

// Column family names. Persisted on disk.
inline constexpr const char* kCfMeta = "default";
inline constexpr const char* kCfChunks = "chunks";
inline constexpr const char* kCfMaps = "maps";
inline constexpr const char* kCfLayers = "layers";
inline constexpr const char* kCfVolumes = "volumes";
inline constexpr const char* kCfSnapshots = "snapshots";
inline constexpr const char* kCfImages = "images";
inline constexpr const char* kCfNames = "names";
inline constexpr const char* kCfData = "data";

// The chunk index ("chunks" family), keyed by the 32-byte SHA-256: a record (and a
// merge operand on it) is a zigzag varint reference count (a delta, in an operand),
// then a varint locator: where the bytes are in the "data" family, 0 for none (a
// count-only operand). Merging adds the counts and keeps the first non-zero locator.
struct ChunkRecord {
  int64_t count = 0;
  uint64_t locator = 0;
};
std::string EncodeChunkRecord(const ChunkRecord& r);
// The index key: the id's 32 bytes.
inline std::string_view ChunkKey(const ChunkId& id) { return AsBytes(id); }
// False when the bytes are not a chunk record.
bool DecodeChunkRecord(std::string_view v, ChunkRecord* r);

// The chunk bytes ("data" family), keyed by locator (u64 BE). Locators are handed out
// in increasing order as chunks are written, so the blocks of one import (or one
// write) sit next to each other: a sequential read of a volume is a sequential read of
// this family. Locator 0 is never used.
std::string DataKey(uint64_t locator);
uint64_t DecodeDataKey(std::string_view key);
inline constexpr size_t kDataKeySize = 8;

// Meta keys.
inline constexpr std::string_view kMetaFormat = "format";          // u32 LE
inline constexpr std::string_view kMetaNextLayer = "next_layer";   // u64 LE
std::string EncodeFormatVersion(uint32_t version);
uint32_t DecodeFormatVersion(std::string_view v);  // 0 when malformed

// Layer states. Persisted on disk; never renumber.
enum class LayerState : uint8_t {
  kImporting = 1,  // being filled by an import; discarded at the next open if still so
  kActive = 2,     // a volume's writable head
  kFrozen = 3,     // read-only: a snapshot's, an image's, or a clone's parent
  kDead = 4,       // nothing refers to it; gc drops its map entries, then the record
};

struct LayerRecord {
  uint64_t id = 0;            // the key, not encoded in the value
  uint64_t parent = 0;        // 0 = none
  LayerState state = LayerState::kActive;
  uint64_t refs = 0;          // volume heads + snapshots + child layers naming it
  uint32_t block_size = 0;
  int64_t created_unix_ns = 0;
  std::string image_digest;   // 32 raw bytes when this is an image's layer, else empty
};

struct VolumeRecord {
  VolumeInfo info;            // info.id is the key, not encoded in the value
  uint64_t head = 0;
};

struct SnapshotRecord {
  SnapshotInfo info;          // info.id is the key
  uint64_t layer = 0;
};

struct ImageRecord {
  ImageInfo info;             // info.digest (hex) is the key's hex form
  uint64_t layer = 0;
};

// ---- keys ----
std::string LayerKey(uint64_t layer);                  // u64 BE
uint64_t DecodeLayerKey(std::string_view key);
std::string MapKey(uint64_t layer, uint64_t block);    // u64 BE layer, u64 BE block
void DecodeMapKey(std::string_view key, uint64_t* layer, uint64_t* block);
inline constexpr size_t kMapKeySize = 16;
std::string VolumeNameKey(std::string_view name);      // 'v' + name
std::string SnapshotNameKey(std::string_view name);    // 's' + name

// A map value is empty: "zero here, whatever the parents say"; or a 32-byte chunk id
// followed by a varint locator hint: where the chunk's bytes were when the entry was
// written (absent or 0: unknown). Readers go straight to the hint and fall back to the
// chunk index when the bytes there are gone or are another chunk's (the hash check
// tells), so a stale hint costs a lookup, never a wrong read.
struct MapValue {
  enum Kind : uint8_t { kZero, kChunk, kMalformed };
  Kind kind = kMalformed;
  ChunkId id{};       // kChunk
  uint64_t hint = 0;  // kChunk: 0 = unknown
  bool is_chunk() const { return kind == kChunk; }
};
// The one decoder of map values.
MapValue DecodeMapValue(std::string_view v);
std::string EncodeMapValue(const ChunkId& id, uint64_t hint);

// Allocation-free forms of the same bytes, for bulk writers (an import writes a map
// entry per block).
struct MapKeyBytes {
  char bytes[kMapKeySize];
  std::string_view view() const { return {bytes, kMapKeySize}; }
};
MapKeyBytes MapKeyOf(uint64_t layer, uint64_t block);
struct MapValueBytes {
  char bytes[kChunkIdSize + 10];  // id, varint hint
  uint8_t size = 0;
  std::string_view view() const { return {bytes, size}; }
};
MapValueBytes MapValueOf(const ChunkId& id, uint64_t hint);

// ---- values ----
std::string EncodeU64(uint64_t v);   // LE, 8 bytes
uint64_t DecodeU64(std::string_view v);

std::string EncodeLayer(const LayerRecord& r);
Result<LayerRecord> DecodeLayer(uint64_t id, std::string_view v);
std::string EncodeVolume(const VolumeRecord& r);
Result<VolumeRecord> DecodeVolume(std::string_view id, std::string_view v);
std::string EncodeSnapshot(const SnapshotRecord& r);
Result<SnapshotRecord> DecodeSnapshot(std::string_view id, std::string_view v);
std::string EncodeImage(const ImageRecord& r);
Result<ImageRecord> DecodeImage(std::string_view digest_bytes, std::string_view v);

// The content digest of an image (docs/FORMAT.md, "The image content digest"):
//   body   = SHA-256(kImageDigestTag || id_0 || id_1 || ...), id_i being block i's chunk
//            id, or 32 zero bytes for an all-zero block;
//   digest = SHA-256(kImageDigestTag || block size (u32 LE) || size (u64 LE) || body).
// ImageDigest feeds the blocks in order and gives the digest.
inline constexpr std::string_view kImageDigestTag = "stellarium-image-v1";
class ImageDigest {
 public:
  ImageDigest();
  void AddBlock(const ChunkId& id);  // all zeros for an all-zero block
  ChunkId Finish(uint32_t block_size, uint64_t size);

 private:
  Sha256Stream body_;
};

}  // namespace stellarium::format
