// Collector: garbage collection in the background for a store that serves volumes (the
// CSI driver's). Every `interval` it asks the store whether anything was freed
// (Store::HasGarbage: constant time) and, if so, runs an incremental gc pass paced by
// `duty`, so reclaimed space comes back within about an interval of the deletes that
// freed it while the data path keeps its speed. The first pass after open is a full one
// (the store asks for it). Each pass is reported to on_pass (logs) and summed in
// totals() (metrics).
//
// Thread-safety: the passes run on a thread of its own; totals() from any thread. The
// destructor stops a running pass between two batches and joins.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "core/store.h"

namespace stellarium {

struct CollectorOptions {
  std::chrono::milliseconds interval{20000};
  double duty = 0.25;  // GcOptions::duty
  // Called after each pass, on the collector's thread.
  std::function<void(const Result<GcReport>&)> on_pass;
};

struct CollectorTotals {
  uint64_t passes = 0, failed_passes = 0;
  uint64_t layers_reclaimed = 0, chunks_deleted = 0;
  uint64_t disk_bytes_reclaimed = 0;  // the store's size on disk, before minus after
  double last_pass_seconds = 0;
};

class Collector {
 public:
  // REQUIRES: store outlives the collector.
  Collector(Store* store, CollectorOptions options);
  ~Collector();
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  CollectorTotals totals() const;

 private:
  void Run();
  void Account(const Result<GcReport>& r);

  Store* store_;
  const CollectorOptions options_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  CollectorTotals totals_;  // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace stellarium
