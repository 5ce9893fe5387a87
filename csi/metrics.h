// Metrics: the Prometheus endpoint of stellarium-csi (--metrics-address, off by
// default), served by prometheus-cpp's embedded HTTP server at /metrics.
//
//   stellarium_csi_rpc_total{method,code}                 RPCs finished
//   stellarium_csi_rpc_duration_seconds{method,code}      their latency (histogram)
//   stellarium_csi_staged_volumes                         volumes staged on this node
//   stellarium_csi_published_targets                      their publish targets
//   stellarium_store_{volumes,snapshots,images,layers,chunks}
//   stellarium_store_{chunk,referenced,disk}_bytes        Store::GetStats() at scrape time
//   stellarium_gc_{passes,failed_passes,reclaimed_bytes,chunks_deleted,
//     layers_reclaimed}_total, stellarium_gc_last_pass_seconds   background gc
//   stellarium_image_import_bytes_total                   bytes downloaded by URL imports
//   stellarium_image_imports_in_progress                  URL imports running now
//   stellarium_image_imports_total{result}                finished: ok, failed, reused
//   stellarium_image_import_downloaded_bytes{source}      per running import (source:
//   stellarium_image_import_size_bytes{source}            12 hex of its key; size when
//   stellarium_image_import_waiters{source}               known; callers waiting for it)
//
// Thread-safety: OnRpc from any thread; the scrape runs on the HTTP server's threads.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "csi/driver.h"
#include "csi/run_rpc.h"

namespace stellarium::node {
class ImageImporter;
}  // namespace stellarium::node

namespace stellarium::csi {

class Metrics : public RpcObserver {
 public:
  // Listens on `address` ("host:port", ":port"; port 0 picks a free one).
  // UNAVAILABLE when it cannot listen. `driver` must outlive the Metrics.
  static Result<std::unique_ptr<Metrics>> Start(const std::string& address, Driver* driver);
  ~Metrics() override;

  void OnRpc(const char* method, grpc::StatusCode code, double seconds) override;
  // Exports the importer's progress from now on. `importer` must outlive the Metrics
  // or be unset (nullptr) first.
  void WatchImports(const node::ImageImporter* importer);
  // The port the endpoint listens on.
  int port() const;

 private:
  struct Impl;
  explicit Metrics(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace stellarium::csi
