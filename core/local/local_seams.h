// Private to core/local: the local store's batches and its three seams (see
// local_backend.h for what each one maps to in RocksDB).
#pragma once

#include <rocksdb/write_batch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/backend/backend.h"
#include "core/local/db.h"
#include "core/presence_filter.h"

namespace stellarium {

// A Batch of the local store: one WriteBatch, plus the guards checked before it is
// written.
struct LocalBatch final : Batch {
  struct Guard {
    Table table;
    std::string key;
    std::optional<std::string> value;
  };
  rocksdb::WriteBatch writes;
  std::vector<Guard> guards;
  bool changes_tables = false;  // commits of such batches are serialized (guards)
  size_t Count() const override { return writes.Count(); }
};

struct LocalBulkBatch final : BulkBatch {
  explicit LocalBulkBatch(std::unique_ptr<IngestBatch> b) : ingest(std::move(b)) {}
  Status IngestWith(BulkBatch* other) override {
    return ingest->IngestWith(other ? static_cast<LocalBulkBatch*>(other)->ingest.get() : nullptr);
  }
  std::unique_ptr<IngestBatch> ingest;
};

// REQUIRES: the batch was made by a LocalBackend.
inline LocalBatch* AsLocal(Batch* b) { return static_cast<LocalBatch*>(b); }
inline IngestBatch* AsLocal(BulkBatch* b) { return static_cast<LocalBulkBatch*>(b)->ingest.get(); }

Cf CfOf(Table table);

// The span of numbers (locators, layer ids) whose keys were deleted since it was last
// taken: what ReclaimSpace compacts after an incremental gc pass.
class DeletedSpan {
 public:
  void Add(uint64_t v) {
    std::lock_guard l(mu_);
    lo_ = std::min(lo_, v);
    hi_ = std::max(hi_, v);
  }
  // False when nothing was deleted.
  bool Take(uint64_t* lo, uint64_t* hi) {
    std::lock_guard l(mu_);
    if (lo_ > hi_) return false;
    *lo = lo_;
    *hi = hi_;
    lo_ = UINT64_MAX;
    hi_ = 0;
    return true;
  }

 private:
  std::mutex mu_;
  uint64_t lo_ = UINT64_MAX, hi_ = 0;  // GUARDED_BY(mu_)
};

class LocalChunkBytes final : public ChunkBytes {
 public:
  // next_locator: above every stored locator. disk_readahead_bytes: 0 = off.
  LocalChunkBytes(Db* db, uint64_t next_locator, uint64_t disk_readahead_bytes);
  ~LocalChunkBytes() override;

  Result<Placement> Reserve(size_t n) override;
  void Put(Batch* batch, uint64_t locator, std::string_view bytes) override;
  Status Put(BulkBatch* batch, uint64_t locator, std::string_view bytes) override;
  void Delete(Batch* batch, uint64_t locator) override;
  Status GetMany(const std::vector<uint64_t>& locators, const std::string& context,
                 const std::function<Status(std::span<const std::string_view>)>& fn) override;
  Status ForEach(const std::function<Status(uint64_t, size_t)>& fn) override;
  uint64_t bytes_read_ahead() const override { return bytes_read_ahead_.load(); }
  DeletedSpan& deleted() { return deleted_; }

 private:
  void ReadAheadOnDisk(uint64_t lo, uint64_t hi, size_t count, uint64_t bytes);
  void AheadLoop();

  static constexpr size_t kLongRun = 128;  // chunks in one read: 512 KiB of 4 KiB blocks
  static constexpr size_t kAheadRuns = 8;
  static constexpr uint64_t kAheadStep = 8 << 20;
  struct AheadRun {
    uint64_t start = 0, end = 0;  // locators: where the run began, how far it was asked for
    uint64_t used = 0;            // ahead_clock_ when last met; 0: a free slot
  };
  Db* db_;
  const uint64_t disk_readahead_bytes_;
  std::atomic<uint64_t> next_locator_;
  std::mutex ahead_mu_;
  std::condition_variable ahead_cv_;
  std::array<AheadRun, kAheadRuns> ahead_runs_{};          // GUARDED_BY(ahead_mu_)
  uint64_t ahead_clock_ = 0;                               // GUARDED_BY(ahead_mu_)
  std::deque<std::pair<uint64_t, uint64_t>> ahead_queue_;  // GUARDED_BY(ahead_mu_)
  bool stop_ahead_ = false;                                // GUARDED_BY(ahead_mu_)
  std::thread ahead_thread_;  // runs AheadLoop; started by the first read-ahead
  std::atomic<uint64_t> bytes_read_ahead_{0};
  DeletedSpan deleted_;
};

class LocalChunkIndex final : public ChunkIndex {
 public:
  // The presence filter is sized for twice the chunks stored now (at least a million,
  // at most kFilterMaxBytes) and filled from the index by a background scan.
  LocalChunkIndex(Db* db, uint64_t chunks_now);
  ~LocalChunkIndex() override;

  Result<std::optional<IndexEntry>> Get(const ChunkId& id) override;
  Status GetMany(const std::vector<ChunkId>& ids,
                 std::vector<std::optional<IndexEntry>>* entries) override;
  Status LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) override;
  void AddRefs(Batch* batch, const ChunkId& id, int64_t delta, uint64_t locator) override;
  Status AddRefs(BulkBatch* batch, const ChunkId& id, int64_t delta, uint64_t locator) override;
  void Erase(Batch* batch, const ChunkId& id) override;
  Status ForEach(const std::function<Status(const ChunkId&, const IndexEntry&)>& fn) override;
  void WaitForPresenceFilter() override { fill_.Wait(); }

 private:
  bool ScanIntoFilter(PresenceFilter& filter, const std::atomic<bool>& stop);

  static constexpr uint64_t kFilterMaxBytes = 256u << 20;  // 170 million chunks' worth
  Db* db_;
  const std::string plus_one_, minus_one_;  // the common operands, encoded once
  PresenceFilter filter_;
  PresenceFilterFill fill_;  // last: its thread stops before what it uses goes
};

class LocalCatalog final : public Catalog {
 public:
  // next_layer: above every layer id stored.
  LocalCatalog(Db* db, uint64_t next_layer) : db_(db), next_layer_(next_layer) {}

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
  DeletedSpan& deleted_layers() { return deleted_layers_; }

 private:
  Db* db_;
  std::atomic<uint64_t> next_layer_;
  DeletedSpan deleted_layers_;
};

}  // namespace stellarium
