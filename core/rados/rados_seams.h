// Private to core/rados: the RADOS store's batches and its three seams. The layout they
// read and write is docs/FORMAT.md "The RADOS store"; core/format.h encodes it.
#pragma once

#include <atomic>
#include <deque>
#include <condition_variable>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/backend/backend.h"
#include "core/format.h"
#include "core/presence_filter.h"
#include "core/rados/cache.h"
#include "core/rados/rados_io.h"
#include "core/rados/read_ahead.h"

namespace stellarium {

// Changes to objects, key by key: a value to set, or nullopt to remove.
using OmapChanges = std::map<std::string, std::optional<std::string>>;

// What one batch (or bulk batch) changes, object by object.
struct RadosChanges {
  std::map<uint64_t, std::string_view> bytes;  // new chunk bytes by locator (raw)
  std::deque<std::string> owned;               // copies `bytes` views (a Batch's)
  std::map<uint8_t, OmapChanges> index;        // by index shard
  // Chunks already stored that the batch names (by index shard): the index op checks
  // they are still stored and not condemned (docs/FORMAT.md, the writer window).
  std::map<uint8_t, std::set<ChunkId>> named;
  OmapChanges catalog;                         // the catalog object's records
  OmapChanges guards;                          // catalog keys that must hold these values
  std::map<std::string, OmapChanges> maps;     // by map object: omap entries
  std::map<std::string, std::string> map_appends;  // by map object: records appended
  std::set<uint64_t> dead_bytes;               // locators whose bytes are garbage now
  size_t count = 0;
  void Clear() { *this = RadosChanges(); }
};

struct RadosBatch final : Batch {
  RadosChanges changes;
  size_t Count() const override { return changes.count; }
};

class RadosBackend;

struct RadosBulkBatch final : BulkBatch {
  RadosBulkBatch(RadosBackend* b, std::string w) : backend(b), what(std::move(w)) {}
  Status IngestWith(BulkBatch* other) override;
  RadosBackend* backend;
  std::string what;
  RadosChanges changes;
};

inline RadosChanges& ChangesOf(Batch* b) { return static_cast<RadosBatch*>(b)->changes; }
inline RadosChanges& ChangesOf(BulkBatch* b) { return static_cast<RadosBulkBatch*>(b)->changes; }

// Chunk bytes in packs (docs/FORMAT.md). Small reservations share this client's open
// pack, appended to at each commit; a large one (an import's data period) gets a pack of
// its own, written whole. Reads come from the node cache, else from the pack: the slot
// table (cached), then byte ranges, each chunk decompressed and cached.
class RadosChunkBytes final : public ChunkBytes {
 public:
  // A shared pack left unwritten for `idle_ns` is sealed: gc may delete a pack whose
  // chunks all died once it has not been written for a writer window, so this must be
  // well below the window.
  RadosChunkBytes(RadosIo* io, std::unique_ptr<ChunkCache> cache, uint64_t slot_cache_bytes,
                  int64_t idle_ns);

  Result<Placement> Reserve(size_t n) override;
  void Put(Batch* batch, uint64_t locator, std::string_view bytes) override;
  Status Put(BulkBatch* batch, uint64_t locator, std::string_view bytes) override;
  void Delete(Batch* batch, uint64_t locator) override;
  Status GetMany(const std::vector<uint64_t>& locators, const std::string& context,
                 const std::function<Status(std::span<const std::string_view>)>& fn) override;
  Status ForEach(const std::function<Status(uint64_t, size_t)>& fn) override;
  void Forget(uint64_t locator) override { cache_->Forget(locator); }

  // Writes `bytes` (raw chunks by locator) into their packs: appended to shared packs
  // (a batch's), or as whole packs written at once (a bulk batch's: its own packs); all
  // durable when it returns.
  Status WritePacks(const std::map<uint64_t, std::string_view>& bytes, bool whole_packs,
                    const std::string& what);
  // The slot table of a pack (cached for sealed packs).
  Result<std::shared_ptr<const std::vector<format::rados::Slot>>> Slots(uint64_t pack);
  ChunkCache* cache() { return cache_.get(); }

  static constexpr uint64_t kPackBytes = 4u << 20;       // a shared pack is sealed past this
  static constexpr size_t kOwnPackReservation = 1024;   // reservations this large get a pack

 private:
  struct OpenPack {
    uint64_t pack = 0;
    uint32_t next_slot = 0;   // reserved so far
    uint64_t size = 0;        // bytes appended so far
    std::vector<format::rados::Slot> slots;  // written so far, by slot
    bool loaded = false;      // slots and size are known (new, or reloaded)
    std::chrono::steady_clock::time_point touched;  // reserved in or written to last
  };
  // REQUIRES: mu_ held.
  Status Reload(uint64_t pack, OpenPack* open);
  Result<uint64_t> NewPackNumber();
  Status AppendToShared(uint64_t pack,
                        const std::vector<std::pair<uint32_t, std::string_view>>& chunks,
                        const std::string& what);
  std::unique_ptr<librados::ObjectWriteOperation> WholePack(
      const std::vector<std::pair<uint32_t, std::string_view>>& chunks);
  // Chunks read from packs: views into arenas they hold.
  struct Fetched {
    std::vector<std::string_view> views;
    std::vector<std::shared_ptr<const std::string>> arenas;
  };
  // Reads and decompresses the chunks `wanted` (locator, position in out->views) of one
  // pack, and with read_ahead (or none wanted: the whole pack) the rest of the pack after
  // them; caches every chunk read. out may be null (only the cache gets them).
  Status FetchFromPack(uint64_t pack, const std::vector<std::pair<uint64_t, size_t>>& wanted,
                       bool read_ahead, Fetched* out, const std::string& context);

  RadosIo* io_;
  std::unique_ptr<ChunkCache> cache_;
  const std::chrono::nanoseconds idle_;
  LruMap<uint64_t, std::vector<format::rados::Slot>> slot_cache_;
  std::mutex mu_;
  uint64_t next_pack_ = 0, pack_range_end_ = 0;         // GUARDED_BY(mu_)
  std::map<uint64_t, OpenPack> shared_;                 // GUARDED_BY(mu_): packs appended to
  uint64_t current_shared_ = 0;                         // GUARDED_BY(mu_): 0 = none yet
  std::set<uint64_t> unwritten_;  // GUARDED_BY(mu_): shared packs numbered here, never written
  PackReadAhead read_ahead_;  // last: stops before what it uses goes
};

// The chunk index in kIndexShards shard objects; no reference counts
// (counts_references() is false). A presence filter, filled from the shards in the
// background after open, answers "not stored" without a round trip.
class RadosChunkIndex final : public ChunkIndex {
 public:
  explicit RadosChunkIndex(RadosIo* io);
  ~RadosChunkIndex() override;

  Result<std::optional<IndexEntry>> Get(const ChunkId& id) override;
  Status GetMany(const std::vector<ChunkId>& ids,
                 std::vector<std::optional<IndexEntry>>* entries) override;
  Status LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) override;
  void AddRefs(Batch* batch, const ChunkId& id, int64_t delta, uint64_t locator) override;
  Status AddRefs(BulkBatch* batch, const ChunkId& id, int64_t delta, uint64_t locator) override;
  void Erase(Batch* batch, const ChunkId& id) override;
  Status ForEach(const std::function<Status(const ChunkId&, const IndexEntry&)>& fn) override;
  void WaitForPresenceFilter() override { fill_.Wait(); }
  bool counts_references() const override { return false; }

  // Every entry of one shard: id -> (location value, condemned value or "").
  struct Raw {
    std::string location, condemned;
  };
  Status ScanShard(uint8_t shard, const std::function<Status(const ChunkId&, const Raw&)>& fn);

 private:
  void Stage(RadosChanges* c, const ChunkId& id, uint64_t locator);
  void AddRefs(RadosChanges* c, const ChunkId& id, int64_t delta, uint64_t locator);
  bool ScanIntoFilter(PresenceFilter& filter, const std::atomic<bool>& stop);
  // GetMany, with or without condemned chunks (LocateMany, for writers: without).
  Status GetEntries(const std::vector<ChunkId>& ids, bool condemned_too,
                    std::vector<std::optional<IndexEntry>>* entries);

  RadosIo* io_;
  PresenceFilter filter_;
  PresenceFilterFill fill_;  // last: its thread stops before what it uses goes
};

// The catalog in one object's omap, block maps in shard objects. Map shards read from
// the cluster are cached; this client's own commits update the cached copies.
class RadosCatalog final : public Catalog {
 public:
  RadosCatalog(RadosIo* io, uint64_t map_cache_bytes);

  Result<std::optional<std::string>> Get(Table table, std::string_view key) override;
  Status Scan(Table table,
              const std::function<Status(std::string_view, std::string_view)>& fn) override;
  void Put(Batch* batch, Table table, std::string_view key, std::string_view value) override;
  void Delete(Batch* batch, Table table, std::string_view key) override;
  void Expect(Batch* batch, Table table, std::string_view key,
              std::optional<std::string_view> value) override;
  uint64_t NewLayerId(Batch* batch) override;

  std::unique_ptr<MapCursor> NewMapCursor(uint64_t layer, uint64_t from, uint64_t to,
                                          bool fill_cache) override;
  Result<std::optional<std::string>> GetMap(uint64_t layer, uint64_t block) override;
  void PutMap(Batch* batch, uint64_t layer, uint64_t block, std::string_view value) override;
  void DeleteMap(Batch* batch, uint64_t layer, uint64_t block) override;
  Status PutMap(BulkBatch* batch, uint64_t layer, uint64_t block, std::string_view value) override;
  Status ScanMaps(const std::function<Status(uint64_t, uint64_t, std::string_view)>& fn,
                  uint64_t* malformed) override;

  using Shard = std::map<uint64_t, std::string>;  // block -> map value
  // A map shard's entries (cached).
  Result<std::shared_ptr<const Shard>> LoadShard(uint64_t layer, uint64_t shard);
  // After a commit of `maps`: the cached shards it changed get the changes too.
  void Applied(const std::map<std::string, OmapChanges>& maps);
  // After records were appended to `objects`: their cached copies are dropped (and the
  // layers' directories, which may list new shards).
  void Forget(const std::map<std::string, std::string>& objects);
  // The shards a layer has (its map directory; cached).
  Result<std::shared_ptr<const std::set<uint64_t>>> Shards(uint64_t layer);
  // The directory entries to write (before the shards) for the map objects `c` changes.
  static std::map<std::string, OmapChanges> DirectoryChanges(const RadosChanges& c);
  // A map object's entries: its records, then its omap entries over them.
  Status ReadShard(const std::string& oid, Shard* out, uint64_t* bytes, uint64_t* malformed);

 private:
  static char Letter(Table table);
  RadosIo* io_;
  LruMap<std::string, Shard> shards_;             // by map object name
  LruMap<uint64_t, std::set<uint64_t>> dirs_;     // by layer
};

}  // namespace stellarium
