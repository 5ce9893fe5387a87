// The local store's ChunkBytes: the "data" family, locator (u64 BE) -> bytes, and the
// disk read-ahead for sequential readers.
#include <algorithm>

#include "core/format.h"
#include "core/local/local_seams.h"
#include "core/thread_name.h"

namespace stellarium {

LocalChunkBytes::LocalChunkBytes(Db* db, uint64_t next_locator, uint64_t disk_readahead_bytes)
    : db_(db), disk_readahead_bytes_(disk_readahead_bytes), next_locator_(next_locator) {}

LocalChunkBytes::~LocalChunkBytes() {
  {
    std::lock_guard<std::mutex> lock(ahead_mu_);
    stop_ahead_ = true;
  }
  ahead_cv_.notify_all();
  if (ahead_thread_.joinable()) ahead_thread_.join();
}

Result<Placement> LocalChunkBytes::Reserve(size_t n) {
  Placement p;
  p.next = next_locator_.fetch_add(n);
  p.end = p.next + n;
  return p;
}

void LocalChunkBytes::Put(Batch* batch, uint64_t locator, std::string_view bytes) {
  AsLocal(batch)->writes.Put(db_->cf(Cf::kData), format::DataKey(locator),
                             rocksdb::Slice(bytes.data(), bytes.size()));
}

Status LocalChunkBytes::Put(BulkBatch* batch, uint64_t locator, std::string_view bytes) {
  return AsLocal(batch)->Put(Cf::kData, format::DataKey(locator), bytes);
}

void LocalChunkBytes::Delete(Batch* batch, uint64_t locator) {
  deleted_.Add(locator);
  AsLocal(batch)->writes.Delete(db_->cf(Cf::kData), format::DataKey(locator));
}

// One iterator steps over near neighbours and seeks past gaps. It pins the blocks it
// reads (pin_data: a table block, or a memtable entry, lives as long as the iterator),
// so every view stays valid until fn has seen them all; the pinned memory is about the
// bytes the caller asked for.
Status LocalChunkBytes::GetMany(const std::vector<uint64_t>& locators, const std::string& context,
                                const std::function<Status(std::span<const std::string_view>)>& fn) {
  if (locators.empty()) return fn({});
  rocksdb::ReadOptions ro;
  ro.adaptive_readahead = true;
  ro.pin_data = true;
  // A long run of chunks (512 KiB or more) is read from disk in large reads, not one SST
  // block at a time; shorter runs rely on the kernel's readahead.
  if (locators.size() >= kLongRun) ro.readahead_size = 1 << 20;
  std::unique_ptr<rocksdb::Iterator> it(db_->raw()->NewIterator(ro, db_->cf(Cf::kData)));
  constexpr uint64_t kMaxStep = 16;  // farther than this, seek rather than step
  uint64_t bytes = 0;                // of the chunks found
  std::vector<std::string_view> found(locators.size());  // empty: not there
  for (size_t k = 0; k < locators.size(); ++k) {
    const uint64_t want = locators[k];
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
    if (!it->status().ok()) {
      return FromRocks(it->status(), context + ": chunk bytes at " + std::to_string(want));
    }
    if (it->Valid() && format::DecodeDataKey(it->key().ToStringView()) == want) {
      found[k] = it->value().ToStringView();
      bytes += found[k].size();
    }
  }
  RETURN_IF_ERROR(fn(found));
  if (locators.size() >= kLongRun)
    ReadAheadOnDisk(locators.front(), locators.back(), locators.size(), bytes);
  return Status::Ok();
}

Status LocalChunkBytes::ForEach(const std::function<Status(uint64_t, size_t)>& fn) {
  auto it = db_->NewIterator(Cf::kData, /*fill_cache=*/false);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    RETURN_IF_ERROR(fn(format::DecodeDataKey(it->key().ToStringView()), it->value().size()));
  }
  return FromRocks(it->status(), "scan chunk bytes");
}

// Disk read-ahead. A long, dense run of locators (at least kLongRun chunks, spread over
// at most twice as many locators) is a reader going through chunks stored together: an
// import stores an image's new chunks at consecutive locators, in image order, so a
// volume read in order reads them in order. After such a run, the Db is asked to start
// reading the next disk_readahead_bytes_ of chunk bytes (in locators: that many bytes at
// the run's average chunk size), so the disk works ahead of the reader's CPU work
// (SHA-256 checks, copies) instead of one kernel read-ahead window at a time. Each run
// followed remembers how far it was asked for, and asks again once its reader has come
// kAheadStep closer (so the distance stays between disk_readahead_bytes_ - kAheadStep
// and disk_readahead_bytes_). Up to kAheadRuns runs at once. The asking is done by a
// thread of its own (AheadLoop).
void LocalChunkBytes::ReadAheadOnDisk(uint64_t lo, uint64_t hi, size_t count, uint64_t bytes) {
  if (disk_readahead_bytes_ == 0 || bytes == 0 || hi - lo + 1 > 2 * count) return;
  const uint64_t chunk = bytes / count + 1;
  const uint64_t ahead = std::max<uint64_t>(count, disk_readahead_bytes_ / chunk);
  const uint64_t step = std::min<uint64_t>(ahead / 2, std::max<uint64_t>(count, kAheadStep / chunk));
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
      run = &*std::min_element(ahead_runs_.begin(), ahead_runs_.end(),
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

// The thread that asks: a reader goes on with its work while the kernel allocates pages
// and queues disk reads, which may wait for room in the device's queue.
void LocalChunkBytes::AheadLoop() {
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

}  // namespace stellarium
