#include "core/chunk_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>

#include "core/db.h"
#include "core/format.h"
#include "core/presence_filter.h"
#include "core/thread_name.h"

namespace stellarium {
namespace {

// The index ("chunks": id -> count, locator) and the bytes ("data": locator -> bytes);
// format.h and docs/FORMAT.md.
class RocksChunkStore : public ChunkStore {
 public:
  // The presence filter is sized for twice the chunks stored now (at least a million,
  // at most kFilterMaxBytes) and filled from the index by a background scan.
  RocksChunkStore(Db* db, uint64_t next_locator, uint64_t chunks_now, uint64_t disk_readahead_bytes)
      : db_(db),
        disk_readahead_bytes_(disk_readahead_bytes),
        next_locator_(next_locator),
        filter_(std::max<uint64_t>(1u << 20, 2 * chunks_now), kFilterMaxBytes) {
    scan_ = std::thread([this] {
      NameThisThread("stl-filter-scan");
      ScanIntoFilter();
    });
  }
  ~RocksChunkStore() override {
    stop_scan_ = true;
    scan_.join();
    {
      std::lock_guard<std::mutex> lock(ahead_mu_);
      stop_ahead_ = true;
    }
    ahead_cv_.notify_all();
    if (ahead_thread_.joinable()) ahead_thread_.join();
  }

  Status Read(const ChunkId& id, std::string* out, const std::string& context) override {
    return ReadMany({ChunkRef{id, 0}}, context, [&](size_t, std::string_view data) {
      out->assign(data);
      return Status::Ok();
    });
  }

  Status ReadMany(const std::vector<ChunkRef>& refs, const std::string& context,
                  const std::function<Status(size_t, std::string_view)>& fn) override {
    const size_t n = refs.size();
    // 1. Straight to the hinted places, in locator order: chunks written together are
    //    read together. A miss or another chunk's bytes there sends the ref to step 2.
    std::vector<std::pair<uint64_t, size_t>> order;  // (locator, i)
    std::vector<size_t> unplaced;
    for (size_t i = 0; i < n; ++i) {
      if (refs[i].hint != 0)
        order.emplace_back(refs[i].hint, i);
      else
        unplaced.push_back(i);
    }
    RETURN_IF_ERROR(Fetch(&order, context, refs,
                          [&](size_t i, std::optional<std::string_view> data, bool matches) {
                            if (data && !data->empty() && matches) return fn(i, *data);
                            unplaced.push_back(i);
                            return Status::Ok();
                          }));
    if (unplaced.empty()) return Status::Ok();
    // 2. Where the index says the others are.
    const size_t m = unplaced.size();
    std::vector<rocksdb::Slice> keys(m);
    std::vector<rocksdb::PinnableSlice> records(m);
    std::vector<rocksdb::Status> statuses(m);
    for (size_t k = 0; k < m; ++k) keys[k] = Key(refs[unplaced[k]].id);
    db_->raw()->MultiGet(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), m, keys.data(),
                         records.data(), statuses.data());
    order.clear();
    for (size_t k = 0; k < m; ++k) {
      const size_t i = unplaced[k];
      if (!statuses[k].ok() && !statuses[k].IsNotFound()) {
        return FromRocks(statuses[k], context + ": chunk " + ToHex(refs[i].id));
      }
      format::ChunkRecord r;
      if (statuses[k].IsNotFound() || !format::DecodeChunkRecord(records[k].ToStringView(), &r) ||
          r.locator == 0) {
        return Missing(refs[i].id, context);
      }
      order.emplace_back(r.locator, i);
    }
    return Fetch(
        &order, context, refs, [&](size_t i, std::optional<std::string_view> data, bool matches) {
          if (!data || data->empty()) return Missing(refs[i].id, context);
          if (!matches) {
            return Status::Corruption(context + ": chunk " + ToHex(refs[i].id) +
                                      " does not match its SHA-256 (corrupted on disk); run fsck");
          }
          return fn(i, *data);
        });
  }

  Result<uint64_t> Locate(const ChunkId& id) override {
    if (!filter_.MayContain(id)) return uint64_t{0};
    ASSIGN_OR_RETURN(auto r, Record(id));
    return r ? r->locator : 0;  // a count without bytes stores nothing
  }

  Status LocateMany(const std::vector<ChunkId>& ids, std::vector<uint64_t>* locators) override {
    locators->assign(ids.size(), 0);
    std::vector<size_t> ask;  // the ids the filter cannot rule out
    for (size_t i = 0; i < ids.size(); ++i) {
      if (filter_.MayContain(ids[i])) ask.push_back(i);
    }
    const size_t n = ask.size();
    if (n == 0) return Status::Ok();
    std::vector<rocksdb::Slice> keys(n);
    std::vector<rocksdb::PinnableSlice> records(n);
    std::vector<rocksdb::Status> statuses(n);
    for (size_t k = 0; k < n; ++k) keys[k] = Key(ids[ask[k]]);
    db_->raw()->MultiGet(rocksdb::ReadOptions(), db_->cf(Cf::kChunks), n, keys.data(),
                         records.data(), statuses.data());
    for (size_t k = 0; k < n; ++k) {
      const ChunkId& id = ids[ask[k]];
      if (statuses[k].IsNotFound()) continue;
      if (!statuses[k].ok()) return FromRocks(statuses[k], "chunk " + ToHex(id));
      format::ChunkRecord r;
      if (!format::DecodeChunkRecord(records[k].ToStringView(), &r)) {
        return Status::Corruption("chunk " + ToHex(id) + ": undecodable index record; run fsck");
      }
      (*locators)[ask[k]] = r.locator;
    }
    return Status::Ok();
  }

  Result<int64_t> RefCount(const ChunkId& id) override {
    ASSIGN_OR_RETURN(auto r, Record(id));
    return r ? r->count : 0;
  }

  uint64_t AddRef(Txn* txn, const ChunkId& id, std::string_view data,
                  Placement* placement) override {
    if (data.empty()) {
      txn->Merge(db_->cf(Cf::kChunks), Key(id), kPlusOne);
      return 0;
    }
    filter_.Add(id);  // before the chunk can be seen in the index
    uint64_t loc = placement != nullptr && placement->next < placement->end
                       ? placement->next++
                       : next_locator_.fetch_add(1);
    txn->Put(db_->cf(Cf::kData), format::DataKey(loc), rocksdb::Slice(data.data(), data.size()));
    txn->Merge(db_->cf(Cf::kChunks), Key(id), format::EncodeChunkRecord({1, loc}));
    return loc;
  }

  Status StageBytes(IngestBatch* batch, uint64_t locator, std::string_view bytes) override {
    return batch->Put(Cf::kData, format::DataKey(locator), bytes);
  }

  Status StageRefs(IngestBatch* batch, const ChunkId& id, int64_t delta,
                   uint64_t locator) override {
    if (locator != 0) filter_.Add(id);  // before the chunk can be seen in the index
    return batch->Merge(Cf::kChunks, std::string_view(Key(id).data(), kChunkIdSize),
                        format::EncodeChunkRecord({delta, locator}));
  }

  Placement Reserve(size_t n) override {
    Placement p;
    p.next = next_locator_.fetch_add(n);
    p.end = p.next + n;
    return p;
  }

  void DropRef(Txn* txn, const ChunkId& id) override {
    txn->Merge(db_->cf(Cf::kChunks), Key(id), kMinusOne);
  }

  Result<SweepResult> Sweep() override {
    std::unique_lock lock(sweep_lock());
    SweepResult r;
    // 1. Index records whose count is zero or below go; the others' locators are live.
    std::vector<bool> live(next_locator_.load());
    {
      auto it = db_->NewIterator(Cf::kChunks, /*fill_cache=*/false);
      rocksdb::WriteBatch batch;
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        format::ChunkRecord rec;
        if (!format::DecodeChunkRecord(it->value().ToStringView(), &rec)) {
          return Status::Corruption("gc: chunk " +
                                    ToHex(ChunkIdFromBytes(it->key().ToStringView())) +
                                    ": undecodable index record; run fsck");
        }
        if (rec.count > 0) {
          if (rec.locator < live.size()) live[rec.locator] = true;
          continue;
        }
        batch.Delete(db_->cf(Cf::kChunks), it->key());
        ++r.chunks_deleted;
        RETURN_IF_ERROR(WriteFull(&batch, "gc: delete chunks"));
      }
      RETURN_IF_ERROR(FromRocks(it->status(), "gc: scan chunks"));
      RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kSync, "gc: delete chunks"));
    }
    // 2. Bytes no index record refers to: the deleted chunks' and racing writers' copies.
    {
      auto it = db_->NewIterator(Cf::kData, false);
      rocksdb::WriteBatch batch;
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        uint64_t loc = format::DecodeDataKey(it->key().ToStringView());
        if (loc >= live.size() || live[loc]) continue;
        r.bytes_freed += it->value().size();
        batch.Delete(db_->cf(Cf::kData), it->key());
        RETURN_IF_ERROR(WriteFull(&batch, "gc: delete chunk data"));
      }
      RETURN_IF_ERROR(FromRocks(it->status(), "gc: scan chunk data"));
      RETURN_IF_ERROR(db_->Write(&batch, WriteMode::kSync, "gc: delete chunk data"));
    }
    return r;
  }

  Status ForEach(
      const std::function<Status(const ChunkId&, std::string_view, int64_t)>& fn) override {
    auto it = db_->NewIterator(Cf::kChunks, false);
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      ChunkId id = ChunkIdFromBytes(it->key().ToStringView());
      format::ChunkRecord rec;
      if (!format::DecodeChunkRecord(it->value().ToStringView(), &rec)) {
        return Status::Corruption("chunk " + ToHex(id) + ": undecodable index record");
      }
      rocksdb::PinnableSlice data;
      if (rec.locator != 0) {
        rocksdb::Status s =
            db_->raw()->Get(ro, db_->cf(Cf::kData), format::DataKey(rec.locator), &data);
        if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "chunk " + ToHex(id));
      }
      RETURN_IF_ERROR(fn(id, std::string_view(data.data(), data.size()), rec.count));
    }
    return FromRocks(it->status(), "scan chunks");
  }

  Result<ChunkTotals> Totals() override {
    ChunkTotals t;
    auto it = db_->NewIterator(Cf::kChunks, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++t.chunks;
    RETURN_IF_ERROR(FromRocks(it->status(), "scan chunks"));
    it = db_->NewIterator(Cf::kData, false);
    for (it->SeekToFirst(); it->Valid(); it->Next()) t.bytes += it->value().size();
    RETURN_IF_ERROR(FromRocks(it->status(), "scan chunk data"));
    return t;
  }

 private:
  static rocksdb::Slice Key(const ChunkId& id) {
    return rocksdb::Slice(reinterpret_cast<const char*>(id.data()), id.size());
  }

  // Reads the bytes stored at each (locator, i) of *order (sorted here) with one iterator
  // that steps over near neighbours and seeks past gaps, checks every one's SHA-256
  // against refs[i].id in one Sha256Many batch, then calls fn(i, bytes, matches) in
  // locator order: bytes is nullopt for a locator with nothing stored. The iterator pins
  // the blocks it reads (pin_data: a table block, or a memtable entry, lives as long as
  // the iterator), so the bytes stay valid until every chunk is checked; the pinned
  // memory is about the bytes the caller asked for.
  Status Fetch(std::vector<std::pair<uint64_t, size_t>>* order, const std::string& context,
               const std::vector<ChunkRef>& refs,
               const std::function<Status(size_t, std::optional<std::string_view>, bool)>& fn) {
    if (order->empty()) return Status::Ok();
    std::sort(order->begin(), order->end());
    rocksdb::ReadOptions ro;
    ro.adaptive_readahead = true;
    ro.pin_data = true;
    // A long run of chunks (512 KiB or more) is read from disk in large reads, not one SST
    // block at a time; shorter runs rely on the kernel's readahead.
    if (order->size() >= kLongRun) ro.readahead_size = 1 << 20;
    std::unique_ptr<rocksdb::Iterator> it(db_->raw()->NewIterator(ro, db_->cf(Cf::kData)));
    constexpr uint64_t kMaxStep = 16;  // farther than this, seek rather than step
    uint64_t bytes = 0;                // of the chunks found
    std::vector<std::string_view> found(order->size());  // empty: not there
    std::vector<bool> present(order->size(), false);
    for (size_t k = 0; k < order->size(); ++k) {
      const auto& [want, i] = (*order)[k];
      bool valid = it->Valid();
      uint64_t at = valid ? format::DecodeDataKey(it->key().ToStringView()) : 0;
      if (!valid || at > want || want - at > kMaxStep) {
        it->Seek(format::DataKey(want));
      } else {
        while (at < want && it->Valid()) {
          it->Next();
          if (it->Valid()) at = format::DecodeDataKey(it->key().ToStringView());
        }
      }
      if (!it->status().ok())
        return FromRocks(it->status(), context + ": chunk " + ToHex(refs[i].id));
      if (it->Valid() && format::DecodeDataKey(it->key().ToStringView()) == want) {
        const std::string_view v = it->value().ToStringView();
        bytes += v.size();
        found[k] = v;
        present[k] = true;
      }
    }
    std::vector<ChunkId> digests(order->size());
    Sha256Many(found.data(), found.size(), digests.data());
    for (size_t k = 0; k < order->size(); ++k) {
      const size_t i = (*order)[k].second;
      RETURN_IF_ERROR(present[k] ? fn(i, found[k], digests[k] == refs[i].id)
                                 : fn(i, std::nullopt, false));
    }
    if (order->size() >= kLongRun)
      ReadAheadOnDisk(order->front().first, order->back().first, order->size(), bytes);
    return Status::Ok();
  }

  // Disk read-ahead. A long, dense run of locators (at least kLongRun chunks, spread
  // over at most twice as many locators) is a reader going through chunks stored
  // together: an import stores an image's new chunks at consecutive locators, in image
  // order, so a volume read in order reads them in order. After such a run, the Db is
  // asked to start reading the next disk_readahead_bytes_ of chunk bytes (in locators:
  // that many bytes at the run's average chunk size), so the disk works ahead of the
  // reader's CPU work (SHA-256 checks, copies) instead of one kernel read-ahead window
  // at a time. Each run followed remembers how far it was asked for, and asks again
  // once its reader has come kAheadStep closer (so the distance stays between
  // disk_readahead_bytes_ - kAheadStep and disk_readahead_bytes_). Up to kAheadRuns
  // runs at once. The asking is done by a thread of its own (AheadLoop).
  void ReadAheadOnDisk(uint64_t lo, uint64_t hi, size_t count, uint64_t bytes) {
    if (disk_readahead_bytes_ == 0 || bytes == 0 || hi - lo + 1 > 2 * count) return;
    const uint64_t chunk = bytes / count + 1;
    const uint64_t ahead = std::max<uint64_t>(count, disk_readahead_bytes_ / chunk);
    const uint64_t step =
        std::min<uint64_t>(ahead / 2, std::max<uint64_t>(count, kAheadStep / chunk));
    uint64_t from, to;
    {
      std::lock_guard<std::mutex> lock(ahead_mu_);
      ++ahead_clock_;
      AheadRun* run = nullptr;
      for (auto& r : ahead_runs_) {
        if (r.used != 0 && r.start <= lo && lo <= r.end) run = &r;
      }
      if (run != nullptr) {
        run->used = ahead_clock_;
        if (run->end >= hi + ahead - step) return;
        from = std::max(run->end, hi) + 1;
      } else {
        run = &*std::min_element(
            ahead_runs_.begin(), ahead_runs_.end(),
            [](const AheadRun& a, const AheadRun& b) { return a.used < b.used; });
        *run = AheadRun{lo, 0, ahead_clock_};
        from = hi + 1;
      }
      to = run->end = hi + ahead;
      if (ahead_queue_.size() >= kAheadRuns) ahead_queue_.pop_front();
      ahead_queue_.emplace_back(from, to);
      if (!ahead_thread_.joinable())
        ahead_thread_ = std::thread([this] {
          NameThisThread("stl-disk-ahead");
          AheadLoop();
        });
    }
    ahead_cv_.notify_one();
  }

  // The thread that asks: a reader goes on with its work while the kernel allocates
  // pages and queues disk reads, which may wait for room in the device's queue.
  void AheadLoop() {
    std::unique_lock<std::mutex> lock(ahead_mu_);
    for (;;) {
      ahead_cv_.wait(lock, [&] { return stop_ahead_ || !ahead_queue_.empty(); });
      if (stop_ahead_) return;
      auto [from, to] = ahead_queue_.front();
      ahead_queue_.pop_front();
      lock.unlock();
      bytes_read_ahead_ += db_->Prefetch(Cf::kData, format::DataKey(from), format::DataKey(to));
      lock.lock();
    }
  }

  static Status Missing(const ChunkId& id, const std::string& context) {
    return Status::Corruption(context + ": chunk " + ToHex(id) + " is missing from the store");
  }

  Result<std::optional<format::ChunkRecord>> Record(const ChunkId& id) {
    ASSIGN_OR_RETURN(auto v, db_->Get(Cf::kChunks, Key(id), "chunk " + ToHex(id)));
    if (!v) return std::optional<format::ChunkRecord>();
    format::ChunkRecord r;
    if (!format::DecodeChunkRecord(*v, &r)) {
      return Status::Corruption("chunk " + ToHex(id) + ": undecodable index record; run fsck");
    }
    return std::optional<format::ChunkRecord>(r);
  }

  // Writes a batch that has grown large and starts a new one.
  Status WriteFull(rocksdb::WriteBatch* batch, const std::string& what) {
    if (batch->Count() < 8192) return Status::Ok();
    RETURN_IF_ERROR(db_->Write(batch, WriteMode::kNoSync, what));
    batch->Clear();
    return Status::Ok();
  }

  const std::string kPlusOne = format::EncodeChunkRecord({1, 0});
  const std::string kMinusOne = format::EncodeChunkRecord({-1, 0});
  // Adds every chunk of the index to the filter, then declares it complete.
  void ScanIntoFilter() {
    auto it = db_->NewIterator(Cf::kChunks, /*fill_cache=*/false);
    for (it->SeekToFirst(); it->Valid() && !stop_scan_.load(); it->Next()) {
      filter_.Add(ChunkIdFromBytes(it->key().ToStringView()));
    }
    // A failed scan leaves the filter incomplete: it then answers "maybe" to everything.
    if (it->status().ok() && !stop_scan_.load()) filter_.MarkComplete();
    scan_done_.set_value();
  }

  void WaitForPresenceFilter() override { scan_finished_.wait(); }

  uint64_t bytes_read_ahead() const override { return bytes_read_ahead_.load(); }

  static constexpr uint64_t kFilterMaxBytes = 256u << 20;  // 170 million chunks' worth
  static constexpr size_t kLongRun = 128;  // chunks in one read: 512 KiB of 4 KiB blocks
  struct AheadRun {
    uint64_t start = 0, end = 0;  // locators: where the run began, how far it was asked for
    uint64_t used = 0;            // ahead_clock_ when last met; 0: a free slot
  };
  Db* db_;
  const uint64_t disk_readahead_bytes_;
  std::mutex ahead_mu_;
  static constexpr size_t kAheadRuns = 8;
  static constexpr uint64_t kAheadStep = 8 << 20;
  std::condition_variable ahead_cv_;
  std::array<AheadRun, kAheadRuns> ahead_runs_{};          // GUARDED_BY(ahead_mu_)
  uint64_t ahead_clock_ = 0;                               // GUARDED_BY(ahead_mu_)
  std::deque<std::pair<uint64_t, uint64_t>> ahead_queue_;  // GUARDED_BY(ahead_mu_)
  bool stop_ahead_ = false;                                // GUARDED_BY(ahead_mu_)
  std::thread ahead_thread_;  // runs AheadLoop; started by the first read-ahead
  std::atomic<uint64_t> bytes_read_ahead_{0};
  std::atomic<uint64_t> next_locator_;
  PresenceFilter filter_;
  std::atomic<bool> stop_scan_{false};
  std::promise<void> scan_done_;
  std::shared_future<void> scan_finished_ = scan_done_.get_future().share();
  std::thread scan_;  // runs ScanIntoFilter
};

}  // namespace

Result<std::unique_ptr<ChunkStore>> NewRocksChunkStore(Db* db, uint64_t disk_readahead_bytes) {
  // Locators continue after the highest one stored (1 in an empty store).
  auto it = db->NewIterator(Cf::kData, false);
  it->SeekToLast();
  RETURN_IF_ERROR(FromRocks(it->status(), "store " + db->dir() + ": find the last chunk"));
  uint64_t next = it->Valid() ? format::DecodeDataKey(it->key().ToStringView()) + 1 : 1;
  auto chunks = db->EstimateKeys(Cf::kChunks);
  return std::unique_ptr<ChunkStore>(
      std::make_unique<RocksChunkStore>(db, next, chunks.ok() ? *chunks : 0, disk_readahead_bytes));
}

}  // namespace stellarium
