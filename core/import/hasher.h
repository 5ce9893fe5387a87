// SegmentHasher: the import's second stage, on one thread per core (stl-imp-hash). For
// each segment from the reader it decides, per block: all zero or not, its SHA-256
// (many blocks at once, core/sha256.h), what the base image holds there when the import
// is a delta over an earlier image of the same size, and (one lookup for the segment)
// where the store already keeps each chunk. It fills the segment's ids, zero, kind,
// located and same_as_base, and hands it on to the placer; segments leave in any order.
// The last hasher to finish closes the placer's channel.
#pragma once

#include <memory>
#include <thread>
#include <vector>

#include "core/import/work.h"
#include "core/store_impl.h"

namespace stellarium::import {

class SegmentHasher {
 public:
  // base_chain: the base image's layer chain, head first (empty: no base).
  SegmentHasher(StoreImpl& store, uint32_t block_size, std::vector<uint64_t> base_chain,
                std::string what, ImportControl* control)
      : s_(store),
        bs_(block_size),
        base_chain_(std::move(base_chain)),
        what_(std::move(what)),
        control_(control) {}
  ~SegmentHasher() { Join(); }

  void Start(unsigned threads, Channel<std::unique_ptr<Segment>>* in,
             Channel<std::unique_ptr<Segment>>* out);
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  Status Process(Segment& seg);
  // The base image's map values of the segment's blocks.
  Status BaseView(const Segment& seg, std::vector<std::pair<uint64_t, format::MapValue>>* out);

  StoreImpl& s_;
  const uint32_t bs_;
  const std::vector<uint64_t> base_chain_;
  const std::string what_;
  ImportControl* control_;
  std::atomic<unsigned> running_{0};
  std::vector<std::thread> threads_;
};

}  // namespace stellarium::import
