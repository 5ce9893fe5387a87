#include "core/collector.h"

#include "core/thread_name.h"

namespace stellarium {

Collector::Collector(Store* store, CollectorOptions options)
    : store_(store), options_(std::move(options)) {
  thread_ = std::thread([this] {
    NameThisThread("stl-gc");
    Run();
  });
}

Collector::~Collector() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

CollectorTotals Collector::totals() const {
  std::lock_guard l(mu_);
  return totals_;
}

void Collector::Run() {
  GcOptions gc;
  gc.full = false;
  gc.duty = options_.duty;
  gc.stop = &stop_;
  gc.wait_for_imports = false;  // a running import's garbage waits for a later pass
  for (;;) {
    {
      std::unique_lock l(mu_);
      cv_.wait_for(l, options_.interval, [&] { return stop_.load(); });
      if (stop_) return;
    }
    if (!store_->HasGarbage()) continue;
    Result<GcReport> r = store_->Gc(gc);
    Account(r);
    if (options_.on_pass) options_.on_pass(r);
  }
}

void Collector::Account(const Result<GcReport>& r) {
  std::lock_guard l(mu_);
  ++totals_.passes;
  if (!r.ok()) {
    ++totals_.failed_passes;
    return;
  }
  totals_.layers_reclaimed += r->layers_reclaimed;
  totals_.chunks_deleted += r->chunks_deleted;
  if (r->disk_bytes_before > r->disk_bytes_after) {
    totals_.disk_bytes_reclaimed += r->disk_bytes_before - r->disk_bytes_after;
  }
  totals_.last_pass_seconds = r->seconds;
}

}  // namespace stellarium
