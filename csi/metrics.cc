#include "csi/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <exception>

#include "csi/node/image_importer.h"
#include "csi/status_map.h"

namespace stellarium::csi {
namespace {

using node::ImageImporter;
using node::ImporterStats;
using node::ImportProgress;

// One metric without labels.
prometheus::MetricFamily Single(const std::string& name, const std::string& help,
                                prometheus::MetricType type, double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(metric);
  return family;
}

prometheus::MetricFamily Gauge(const std::string& name, const std::string& help, double value) {
  return Single(name, help, prometheus::MetricType::Gauge, value);
}

prometheus::MetricFamily Counter(const std::string& name, const std::string& help, double value) {
  return Single(name, help, prometheus::MetricType::Counter, value);
}

// The background collector's totals (core/collector.h).
void CollectGc(const CollectorTotals& t, std::vector<prometheus::MetricFamily>* out) {
  out->push_back(Counter("stellarium_gc_passes_total", "Background gc passes run", t.passes));
  out->push_back(Counter("stellarium_gc_failed_passes_total", "Background gc passes that failed",
                         t.failed_passes));
  out->push_back(Counter("stellarium_gc_reclaimed_bytes_total",
                         "Bytes on disk the background gc gave back",
                         static_cast<double>(t.disk_bytes_reclaimed)));
  out->push_back(Counter("stellarium_gc_chunks_deleted_total", "Chunks the background gc deleted",
                         static_cast<double>(t.chunks_deleted)));
  out->push_back(Counter("stellarium_gc_layers_reclaimed_total",
                         "Layers the background gc reclaimed", static_cast<double>(t.layers_reclaimed)));
  out->push_back(Gauge("stellarium_gc_last_pass_seconds", "How long the last gc pass took",
                       t.last_pass_seconds));
}

// Values read when Prometheus scrapes: node state and the store's statistics.
class StateCollector : public prometheus::Collectable {
 public:
  explicit StateCollector(Driver* driver) : driver_(driver) {}
  std::atomic<const ImageImporter*> importer{nullptr};

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    size_t staged = 0, targets = 0;
    if (driver_->node_state) {
      for (const auto& v : driver_->node_state->List()) {
        ++staged;
        targets += v.targets.size();
      }
    }
    out.push_back(Gauge("stellarium_csi_staged_volumes", "Volumes staged on this node", staged));
    out.push_back(Gauge("stellarium_csi_published_targets",
                        "Publish targets of the volumes staged on this node", targets));
    if (driver_->store) {
      Result<StoreStats> stats = driver_->store->GetStats(Store::StatsDetail::kEstimate);  // per scrape: O(1)
      if (stats.ok()) {
        out.push_back(Gauge("stellarium_store_volumes", "Volumes in the store", stats->volumes));
        out.push_back(Gauge("stellarium_store_snapshots", "Snapshots in the store", stats->snapshots));
        out.push_back(Gauge("stellarium_store_images", "Imported images remembered", stats->images));
        out.push_back(Gauge("stellarium_store_layers", "Layers in the store", stats->layers));
        out.push_back(Gauge("stellarium_store_chunks", "Distinct stored chunks", stats->chunks));
        out.push_back(Gauge("stellarium_store_chunk_bytes", "Uncompressed bytes of stored chunks",
                            static_cast<double>(stats->chunk_bytes)));
        out.push_back(Gauge("stellarium_store_referenced_bytes",
                            "Logical bytes referenced by all layers",
                            static_cast<double>(stats->referenced_bytes)));
        out.push_back(Gauge("stellarium_store_disk_bytes", "Size of the store directory on disk",
                            static_cast<double>(stats->disk_bytes)));
      } else {
        spdlog::warn("metrics: store stats: {}", stats.status().ToString());
      }
    }
    if (driver_->collector) CollectGc(driver_->collector->totals(), &out);
    if (const ImageImporter* imp = importer.load()) CollectImports(*imp, &out);
    return out;
  }

 private:
  static void CollectImports(const ImageImporter& importer, std::vector<prometheus::MetricFamily>* out) {
    const ImporterStats s = importer.Stats();
    auto counter = [](const std::string& name, const std::string& help) {
      prometheus::MetricFamily f;
      f.name = name;
      f.help = help;
      f.type = prometheus::MetricType::Counter;
      return f;
    };
    prometheus::MetricFamily bytes = counter("stellarium_image_import_bytes_total",
                                             "Bytes downloaded by image imports from URLs");
    bytes.metric.emplace_back().counter.value = static_cast<double>(s.downloaded_bytes_total);
    out->push_back(bytes);
    prometheus::MetricFamily done = counter("stellarium_image_imports_total",
                                            "Image imports from URLs finished, by result (reused: "
                                            "found in the store by digest or unchanged ETag)");
    for (const auto& [result, n] : {std::pair<const char*, uint64_t>{"ok", s.imports_succeeded},
                                    {"failed", s.imports_failed},
                                    {"reused", s.reused}}) {
      auto& m = done.metric.emplace_back();
      m.label.push_back({"result", result});
      m.counter.value = static_cast<double>(n);
    }
    out->push_back(done);
    out->push_back(Gauge("stellarium_image_imports_in_progress", "Image imports from URLs running now",
                         static_cast<double>(s.running.size())));
    auto per_source = [&](const std::string& name, const std::string& help, auto value) {
      prometheus::MetricFamily f;
      f.name = name;
      f.help = help;
      f.type = prometheus::MetricType::Gauge;
      for (const ImportProgress& p : s.running) {
        auto v = value(p);
        if (!v) continue;
        auto& m = f.metric.emplace_back();
        m.label.push_back({"source", p.source_id});
        m.gauge.value = *v;
      }
      out->push_back(f);
    };
    per_source("stellarium_image_import_downloaded_bytes", "Bytes downloaded so far by a running import",
               [](const ImportProgress& p) { return std::optional<double>(p.downloaded_bytes); });
    per_source("stellarium_image_import_size_bytes", "Download size of a running import, when known",
               [](const ImportProgress& p) {
                 return p.download_total ? std::optional<double>(*p.download_total) : std::nullopt;
               });
    per_source("stellarium_image_import_waiters", "CreateVolume calls waiting for a running import",
               [](const ImportProgress& p) { return std::optional<double>(p.waiters); });
  }

  Driver* const driver_;
};

}  // namespace

struct Metrics::Impl {
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<prometheus::Registry> registry;
  std::shared_ptr<StateCollector> state;
  prometheus::Family<prometheus::Counter>* rpcs = nullptr;
  prometheus::Family<prometheus::Histogram>* latency = nullptr;
};

Result<std::unique_ptr<Metrics>> Metrics::Start(const std::string& address, Driver* driver) {
  auto impl = std::make_unique<Impl>();
  // civetweb wants "port" or "host:port".
  std::string bind = address[0] == ':' ? address.substr(1) : address;
  try {
    impl->exposer = std::make_unique<prometheus::Exposer>(bind, 2);
  } catch (const std::exception& e) {
    return Status::Unavailable("metrics: cannot listen on " + address + ": " + e.what());
  }
  impl->registry = std::make_shared<prometheus::Registry>();
  impl->rpcs = &prometheus::BuildCounter()
                    .Name("stellarium_csi_rpc_total")
                    .Help("CSI RPCs finished, by method and gRPC code")
                    .Register(*impl->registry);
  impl->latency = &prometheus::BuildHistogram()
                       .Name("stellarium_csi_rpc_duration_seconds")
                       .Help("CSI RPC latency in seconds, by method and gRPC code")
                       .Register(*impl->registry);
  impl->state = std::make_shared<StateCollector>(driver);
  impl->exposer->RegisterCollectable(impl->registry);
  impl->exposer->RegisterCollectable(impl->state);
  return std::unique_ptr<Metrics>(new Metrics(std::move(impl)));
}

Metrics::Metrics(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Metrics::~Metrics() = default;

void Metrics::OnRpc(const char* method, grpc::StatusCode code, double seconds) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  const prometheus::Labels labels = {{"method", method}, {"code", GrpcCodeName(code)}};
  impl_->rpcs->Add(labels).Increment();
  impl_->latency->Add(labels, kBuckets).Observe(seconds);
}

void Metrics::WatchImports(const ImageImporter* importer) { impl_->state->importer.store(importer); }

int Metrics::port() const {
  auto ports = impl_->exposer->GetListeningPorts();
  return ports.empty() ? 0 : ports[0];
}

}  // namespace stellarium::csi
