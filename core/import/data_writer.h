// DataWriter: the import's chunk-bytes stage, on kThreads threads (stl-imp-data). Each
// takes a data period (DataWork: the new chunks' bytes and their locators, 16 MiB by
// default) from the placer, writes it into a bulk batch of the backend's ChunkBytes and
// ingests it, then returns the DataWork to the free channel. Periods finish in any
// order; WaitFor(n) lets the index writer wait until periods [0, n) are all ingested,
// so the chunk index never names bytes that are not stored.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core/import/work.h"
#include "core/store_impl.h"

namespace stellarium::import {

class DataWriter {
 public:
  static constexpr unsigned kThreads = 2;

  DataWriter(StoreImpl& store, uint32_t block_size, std::string what, ImportControl* control)
      : s_(store), bs_(block_size), what_(std::move(what)), control_(control) {}
  ~DataWriter() { Join(); }

  void Start(Channel<std::unique_ptr<DataWork>>* in, Channel<std::unique_ptr<DataWork>>* free);
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  // Blocks until data periods [0, n) are ingested, or the import stops.
  void WaitFor(uint64_t n);

 private:
  void Run(Channel<std::unique_ptr<DataWork>>* in, Channel<std::unique_ptr<DataWork>>* free);
  void Done(uint64_t period);

  StoreImpl& s_;
  const uint32_t bs_;
  const std::string what_;
  ImportControl* control_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t done_ = 0;              // GUARDED_BY(mu_): periods [0, done_) are ingested
  std::set<uint64_t> done_after_;  // GUARDED_BY(mu_): finished past a gap
  std::vector<std::thread> threads_;
};

}  // namespace stellarium::import
