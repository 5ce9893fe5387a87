// What the import's stages hand each other (core/import/pipeline.h has the whole
// picture), the bounded queue they hand it through, and the flag that stops them all.
//
//   reader -> Segment -> hasher -> Segment -> placer -> DataWork  -> data writers
//                                                    -> IndexWork -> index writer
//
// Thread-safety: a Segment, DataWork or IndexWork belongs to one stage at a time (the
// one that popped it); Channel and ImportControl are safe to share.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/sha256.h"
#include "core/status.h"

namespace stellarium::import {

// What a block is, decided by the hasher.
enum BlockKind : uint8_t {
  kSkip,          // all zero with nothing under it, or the same chunk as the base image
  kZeroOverBase,  // all zero over a base image block with data: a zero marker
  kData,          // a chunk to reference (or to store, when the store lacks it)
};

// 1 MiB of the image (or less at its end), in image order by seq.
struct Segment {
  uint64_t seq = 0;
  uint64_t first_block = 0;
  size_t nblocks = 0;
  std::string buf;                   // nblocks * block size
  std::vector<uint32_t> hole_bytes;  // per block: bytes known to be zero without reading
  // Filled by the hasher:
  std::vector<ChunkId> ids;
  std::vector<uint8_t> zero;      // per block: 1 when all zero
  std::vector<uint8_t> kind;      // per block: a BlockKind
  std::vector<uint64_t> located;  // per kData block: its locator in the store, or 0
  uint64_t same_as_base = 0;      // blocks the base image already has
};

struct ChunkIdHash {
  size_t operator()(const ChunkId& id) const {
    size_t h;
    std::memcpy(&h, id.data(), sizeof h);  // a SHA-256 is uniform already
    return h;
  }
};

// A chunk of the current index period: how many references the period adds, and for a
// chunk this import stores, the locator its bytes got (0 for a chunk stored before).
struct PeriodRef {
  int64_t count = 0;
  uint64_t stored_at = 0;
  uint64_t hint = 0;  // where the bytes are, for map entries
};

struct MapEntry {
  uint64_t block = 0;
  ChunkId id{};
  uint64_t hint = 0;
  bool zero = false;  // an explicit zero marker
};

// One data period: the new chunks' bytes (one block each, back to back) and their
// locators, written into one table by one of the data writers.
struct DataWork {
  uint64_t period = 0;  // data periods are numbered from 0 in image order
  std::string bytes;
  std::vector<uint64_t> locators;
  void Clear() {
    bytes.clear();
    locators.clear();
  }
};

// What the placer's decisions about one segment produce for the index writer: map
// entries, and at the end of an index period the period's chunks and how many data
// periods must be ingested before them.
struct IndexWork {
  std::vector<MapEntry> maps;  // in block order
  bool end_index_period = false;
  uint64_t data_periods = 0;  // with end_index_period: data periods [0, this) first
  std::vector<std::pair<ChunkId, PeriodRef>> refs;
  void Clear() {
    maps.clear();
    end_index_period = false;
    refs.clear();
  }
};

// A bounded hand-off queue between stages (bounded by how many items exist: each stage
// takes its empty items from a "free" channel).
template <typename T>
class Channel {
 public:
  void Push(T v) {
    std::lock_guard l(mu_);
    q_.push_back(std::move(v));
    cv_.notify_one();
  }
  // False when closed and drained.
  bool Pop(T* out) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    *out = std::move(q_.front());
    q_.pop_front();
    return true;
  }
  void Close() {
    std::lock_guard l(mu_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> q_;
  bool closed_ = false;
};

// The first failure of any stage, and the flag that tells the others to stop.
class ImportControl {
 public:
  bool stopped() const { return stop_.load(); }
  void Stop() { stop_ = true; }
  void Fail(Status st) {
    std::lock_guard l(mu_);
    if (status_.ok()) status_ = std::move(st);
    stop_ = true;
  }
  Status status() {
    std::lock_guard l(mu_);
    return status_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  Status status_;  // GUARDED_BY(mu_)
};

}  // namespace stellarium::import
