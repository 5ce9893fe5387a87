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
#include <functional>
#include <string>
#include <string_view>
#include <vector>

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
  // The client that fills an importing layer, on a store shared by several (the RADOS
  // store); empty otherwise, and then not written at all.
  std::string owner;
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

// ---- The RADOS store (core/rados/; docs/FORMAT.md, "The RADOS store") ----
namespace rados {

// The catalog: one object whose omap holds every record, keyed by a table letter ('v'
// volumes, 's' snapshots, 'i' images, 'n' names, 'l' layers, 'm' meta) and the record's
// key as the local store writes it.
inline constexpr std::string_view kCatalogObject = "stellarium.catalog";
inline constexpr std::string_view kGcLockObject = "stellarium.gc";  // the collector's lock
inline constexpr std::string_view kMetaNextPack = "mnext_pack";  // u64 LE
std::string CatalogKey(char table, std::string_view key);

// Block maps: a layer's entries in shards of kMapShardBlocks blocks, one object each,
// omap key = block (u64 BE), value = the map value.
inline constexpr uint64_t kMapShardBlocks = 1 << 16;
std::string MapObject(uint64_t layer, uint64_t shard);  // "stellarium.map.<layer>.<shard>"
inline constexpr std::string_view kMapObjectPrefix = "stellarium.map.";
// A layer's map directory: object "stellarium.maps.<layer>", omap key = shard (u64 BE)
// for every map shard object the layer has, written before the shard.
std::string MapDirectoryObject(uint64_t layer);
inline constexpr std::string_view kMapDirectoryPrefix = "stellarium.maps.";
bool DecodeMapDirectoryObject(std::string_view name, uint64_t* layer);
// A map shard's entries are in its omap (block key -> value), or, as an import writes
// them, appended to its data as records: block (u64 BE), varint length, value. Omap
// entries win over records; an omap value of one byte kMapTombstone deletes the entry.
void AppendMapRecord(std::string* out, uint64_t block, std::string_view value);
bool DecodeMapRecords(std::string_view data,
                      const std::function<void(uint64_t, std::string_view)>& fn);
inline constexpr std::string_view kMapTombstone = std::string_view("\x00", 1);
std::string MapBlockKey(uint64_t block);  // u64 BE
uint64_t DecodeMapBlockKey(std::string_view key);
// The layer and shard of a map object's name; false when it is not one.
bool DecodeMapObject(std::string_view name, uint64_t* layer, uint64_t* shard);

// The chunk index: kIndexShards objects by the id's first byte; omap key = the id's 32
// bytes + 'L' -> location (u64 LE locator), + 'C' -> condemned since (i64 LE Unix ns).
inline constexpr int kIndexShards = 256;
std::string IndexObject(uint8_t shard);  // "stellarium.index.<2 hex>"
std::string IndexLocationKey(const ChunkId& id);
std::string IndexCondemnedKey(const ChunkId& id);

// Chunk bytes in packs: object "stellarium.pack.<pack, 11 hex>", data = the chunks'
// stored bytes back to back, omap "s" + group (u32 BE) -> the slot table of slots
// [256 group, 256 group + 256): per slot u32 offset, u32 stored length, u32 raw length,
// u8 codec (0 none, 1 LZ4 block), u8 present; xattr "written" = i64 LE Unix ns of the last write. A locator is
// pack << 20 | slot.
inline constexpr std::string_view kPackObjectPrefix = "stellarium.pack.";
inline constexpr const char* kPackWrittenXattr = "written";  // i64 LE Unix ns of the last write
std::string PackObject(uint64_t pack);
bool DecodePackObject(std::string_view name, uint64_t* pack);
inline constexpr int kSlotBits = 20;
inline constexpr uint32_t kSlotGroup = 256;
inline uint64_t Locator(uint64_t pack, uint32_t slot) { return pack << kSlotBits | slot; }
inline uint64_t PackOf(uint64_t locator) { return locator >> kSlotBits; }
inline uint32_t SlotOf(uint64_t locator) { return locator & ((1u << kSlotBits) - 1); }
struct Slot {
  uint32_t offset = 0, stored = 0, raw = 0;
  uint8_t codec = 0;  // 0 stored as is, 1 LZ4 (block format)
  bool present = false;
};
std::string SlotGroupKey(uint32_t group);
std::string EncodeSlotGroup(const std::vector<Slot>& slots);  // up to kSlotGroup
bool DecodeSlotGroup(std::string_view v, std::vector<Slot>* slots);

// A client's lease: object "stellarium.client.<id>", omap "expires" = i64 LE Unix ns.
std::string ClientObject(std::string_view client);

std::string EncodeI64(int64_t v);
int64_t DecodeI64(std::string_view v);

}  // namespace rados

}  // namespace stellarium::format
