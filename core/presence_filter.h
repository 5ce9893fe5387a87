// PresenceFilter: an in-memory Bloom filter of the chunk ids a store holds, so that
// "is this chunk stored?" for a chunk that is not (every block of a new image) is
// answered without the chunk index. RocksDB answers such a question through its own
// per-table filters, but at about a microsecond a lookup; an import asks it for every
// block.
//
// What must stay true: no false negatives. A chunk is added to the filter before it
// becomes visible in the index (ChunkStore adds it while staging the bytes), and the
// chunks stored before the store was opened are added by a scan of the index that runs
// in the background after open. Until that scan is done the filter answers "maybe" to
// everything. Chunks deleted by gc stay in the filter (a false positive costs one index
// lookup). A filter that has taken in far more ids than it was sized for would answer
// "maybe" too often to help; it then answers "maybe" to everything, and the next open
// sizes a larger one.
//
// Layout: 512-bit blocks (one cache line); an id picks a block and 6 bits in it from
// its own bytes (a SHA-256 is uniform already). 12 bits per expected id: about a 2 %
// false-positive rate at capacity.
//
// Thread-safety: Add, MayContain and the scan may run concurrently (atomic bit sets).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "core/backend/chunk_index.h"
#include "core/sha256.h"

namespace stellarium {

class PresenceFilter {
 public:
  // Room for `expected` ids, at most `max_bytes` of memory.
  PresenceFilter(uint64_t expected, uint64_t max_bytes);
  PresenceFilter(const PresenceFilter&) = delete;
  PresenceFilter& operator=(const PresenceFilter&) = delete;

  void Add(const ChunkId& id);
  // False only when the id was never added (and the scan of the index is done).
  bool MayContain(const ChunkId& id) const;
  // The ids stored before open have all been added: answers are definite from now on.
  void MarkComplete() { complete_.store(true, std::memory_order_release); }
  bool complete() const { return complete_.load(std::memory_order_acquire); }

 private:
  static constexpr int kBitsPerBlock = 512, kProbes = 6;
  struct Block {
    std::atomic<uint64_t> words[kBitsPerBlock / 64];
  };
  uint64_t blocks_ = 0;
  uint64_t capacity_ = 0;  // ids it was sized for
  std::unique_ptr<Block[]> bits_;
  std::atomic<uint64_t> added_{0};
  std::atomic<bool> complete_{false};
};

// ChunkIndex::LocateMany through a filter, for both backends: the locators of `ids`
// (0 = not stored), looking up with get_many only the ids the filter cannot rule out.
using GetEntries = std::function<Status(const std::vector<ChunkId>&,
                                        std::vector<std::optional<IndexEntry>>*)>;
Status LocateThroughFilter(const PresenceFilter& filter, const std::vector<ChunkId>& ids,
                           const GetEntries& get_many, std::vector<uint64_t>* locators);

// Fills a PresenceFilter with the ids a store held at open, on a thread of its own
// (stl-filter-scan), for either backend. `scan` adds every stored id to the filter,
// checking `stop` now and then, and returns true when it saw them all (the filter is
// then marked complete; otherwise it keeps answering "maybe").
class PresenceFilterFill {
 public:
  using Scan = std::function<bool(PresenceFilter& filter, const std::atomic<bool>& stop)>;
  PresenceFilterFill(PresenceFilter* filter, Scan scan);
  ~PresenceFilterFill();  // stops the scan and waits for its thread
  PresenceFilterFill(const PresenceFilterFill&) = delete;
  PresenceFilterFill& operator=(const PresenceFilterFill&) = delete;
  // Waits until the scan has ended, complete or not.
  void Wait() const { ended_.wait(); }

 private:
  std::atomic<bool> stop_{false};
  std::promise<void> done_;
  std::shared_future<void> ended_ = done_.get_future().share();
  std::thread thread_;
};

}  // namespace stellarium
