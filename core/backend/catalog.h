// Catalog: the third of a backend's three seams (backend.h). It holds the store's
// records in a few tables of key -> value (volumes, snapshots, images, names, layers)
// and, for every layer, its block map: block index -> map value. Keys and values are
// bytes to the catalog; core/format.h encodes them (and docs/FORMAT.md describes them).
//
// Changes are staged in a Batch and applied atomically by Backend::Commit, together with
// the chunk-index and chunk-byte changes of the same batch. A batch may carry guards
// (Expect): "this key still holds this value (or is absent)"; the commit applies
// nothing and is ABORTED when a guard does not hold. Store guards every catalog change
// with what it read, so two writers (two threads, or two processes of a shared backend)
// never both win a race for a name or a layer's reference count.
//
// Thread-safety: all methods may be called concurrently; a MapCursor is used by one
// thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace stellarium {

class Batch;
class BulkBatch;

// The catalog's tables. Persisted (each is a column family of the local store): never
// renumber.
enum class Table : uint8_t {
  kVolumes = 0,  // volume id -> VolumeRecord
  kSnapshots,    // snapshot id -> SnapshotRecord
  kImages,       // image digest (32 bytes) -> ImageRecord
  kNames,        // 'v' or 's' + name -> volume or snapshot id
  kLayers,       // layer id (u64 BE) -> LayerRecord
};

// Walks one layer's map entries of a block range in block order.
class MapCursor {
 public:
  virtual ~MapCursor() = default;
  virtual bool Valid() const = 0;
  // REQUIRES: Valid(). The value stays valid until Next().
  virtual uint64_t block() const = 0;
  virtual std::string_view value() const = 0;
  virtual void Next() = 0;
  // Not OK when the walk stopped on an error rather than at the end.
  virtual Status status() const = 0;
};

class Catalog {
 public:
  virtual ~Catalog() = default;

  // ---- records ----
  virtual Result<std::optional<std::string>> Get(Table table, std::string_view key) = 0;
  // Calls fn(key, value) for every record of the table in key order; stops at the first
  // error fn returns.
  virtual Status Scan(Table table,
                      const std::function<Status(std::string_view, std::string_view)>& fn) = 0;
  virtual void Put(Batch* batch, Table table, std::string_view key, std::string_view value) = 0;
  virtual void Delete(Batch* batch, Table table, std::string_view key) = 0;
  // A guard: the commit fails (ABORTED) unless `key` then holds `value` (nullopt: is
  // absent).
  virtual void Expect(Batch* batch, Table table, std::string_view key,
                      std::optional<std::string_view> value) = 0;
  // A layer id never handed out before (also not by an earlier process on this store);
  // the batch records what a later open needs to keep that true.
  virtual uint64_t NewLayerId(Batch* batch) = 0;

  // ---- block maps ----
  // Entries of `layer` with from <= block < to. fill_cache = false for scans that should
  // not push hot data out of caches (gc, fsck).
  virtual std::unique_ptr<MapCursor> NewMapCursor(uint64_t layer, uint64_t from, uint64_t to,
                                                  bool fill_cache = true) = 0;
  virtual Result<std::optional<std::string>> GetMap(uint64_t layer, uint64_t block) = 0;
  virtual void PutMap(Batch* batch, uint64_t layer, uint64_t block, std::string_view value) = 0;
  virtual void DeleteMap(Batch* batch, uint64_t layer, uint64_t block) = 0;
  // An import's entries. REQUIRES: (layer, block) increasing within a batch.
  virtual Status PutMap(BulkBatch* batch, uint64_t layer, uint64_t block,
                        std::string_view value) = 0;
  // Calls fn(layer, block, value) for every map entry of every layer, in (layer, block)
  // order (fsck, statistics). Entries whose key cannot be decoded are skipped and
  // counted in *malformed (may be null).
  virtual Status ScanMaps(const std::function<Status(uint64_t, uint64_t, std::string_view)>& fn,
                          uint64_t* malformed = nullptr) = 0;
};

}  // namespace stellarium
