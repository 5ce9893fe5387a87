// csi_clone_latency: CreateVolume-from-snapshot latency through the whole CSI path (a
// gRPC call over the driver's unix socket, validation, locks, core's O(1) clone), for a
// 1 GiB and a 64 GiB source volume side by side. Both sources have real data mapped
// across their whole size (a few distinct 4 KiB blocks written every --stride bytes,
// so the store stays small), then are snapshotted; each timed call clones a snapshot
// into a new volume. Calls alternate between the two sizes so machine noise hits both
// alike. Prints median, p99 and mean per size and the ratio 64 GiB / 1 GiB (O(1)
// means about 1).
//
// usage: csi_clone_latency [--calls N] [--stride BYTES] [--work DIR]
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "csi.grpc.pb.h"
#include "csi/logging.h"
#include "csi/options.h"
#include "csi/server.h"

using namespace stellarium;
namespace v1 = ::csi::v1;

namespace {

void Must(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "csi_clone_latency: %s\n", what.c_str());
    std::exit(1);
  }
}

struct Source {
  const char* label;
  uint64_t size;
  std::string volume_id, snapshot_id;
  uint64_t mapped_blocks = 0;
  std::vector<double> ms;
};

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 1000;
  uint64_t stride = 1 << 20;
  std::string work;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--calls" && i + 1 < argc) calls = std::atoi(argv[++i]);
    else if (a == "--stride" && i + 1 < argc) stride = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--work" && i + 1 < argc) work = argv[++i];
    else {
      std::fprintf(stderr, "usage: csi_clone_latency [--calls N] [--stride BYTES] [--work DIR]\n");
      return 2;
    }
  }
  bool own_work = work.empty();
  if (own_work) {
    char tmpl[] = "/tmp/csi-bench-XXXXXX";
    Must(::mkdtemp(tmpl) != nullptr, "mkdtemp");
    work = tmpl;
  }
  std::filesystem::create_directories(work + "/kubelet");
  stellarium::csi::SetupLogging("warn", "text");

  stellarium::csi::Options o;
  o.endpoint = "unix://" + work + "/csi.sock";
  o.node_id = "bench";
  o.store = work + "/store";
  o.state_dir = work + "/state";
  o.kubelet_dir = work + "/kubelet";
  Must(stellarium::csi::Validate(&o).ok(), "options");
  auto server = stellarium::csi::Server::Start(o);
  Must(server.ok(), server.ok() ? "" : server.status().ToString());
  Store& store = *(*server)->driver().store;

  auto channel = grpc::CreateChannel(o.endpoint, grpc::InsecureChannelCredentials());
  auto controller = v1::Controller::NewStub(channel);

  Source sources[] = {{"1 GiB", 1ull << 30, "", "", 0, {}}, {"64 GiB", 64ull << 30, "", "", 0, {}}};
  for (Source& s : sources) {
    // The source volume over gRPC, its data written through core (cheap), its
    // snapshot over gRPC.
    v1::CreateVolumeRequest req;
    req.set_name(std::string("source-") + s.label);
    req.mutable_capacity_range()->set_required_bytes(static_cast<int64_t>(s.size));
    auto* cap = req.add_volume_capabilities();
    cap->mutable_mount()->set_fs_type("ext4");
    cap->mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    v1::CreateVolumeResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = controller->CreateVolume(&ctx, req, &resp);
    Must(st.ok(), "create source: " + st.error_message());
    s.volume_id = resp.volume().volume_id();
    auto volume = store.OpenVolume(s.volume_id);
    Must(volume.ok(), "open source");
    std::vector<char> block(4096);
    uint64_t n = 0;
    for (uint64_t off = 0; off < s.size; off += stride, ++n) {
      std::memset(block.data(), 'a' + static_cast<int>(n % 4), block.size());  // 4 distinct blocks
      Must((*volume)->Write(off, block.data(), block.size()).ok(), "write");
    }
    Must((*volume)->Flush().ok(), "flush");
    volume->reset();
    auto stats = store.GetVolumeStats(s.volume_id);
    Must(stats.ok(), "stats");
    s.mapped_blocks = stats->mapped_blocks;

    v1::CreateSnapshotRequest sreq;
    sreq.set_name(std::string("snap-") + s.label);
    sreq.set_source_volume_id(s.volume_id);
    v1::CreateSnapshotResponse sresp;
    grpc::ClientContext sctx;
    st = controller->CreateSnapshot(&sctx, sreq, &sresp);
    Must(st.ok(), "snapshot: " + st.error_message());
    s.snapshot_id = sresp.snapshot().snapshot_id();
  }

  for (int i = 0; i < calls; ++i) {
    for (Source& s : sources) {
      v1::CreateVolumeRequest req;
      req.set_name(std::string("clone-") + s.label + "-" + std::to_string(i));
      auto* cap = req.add_volume_capabilities();
      cap->mutable_mount()->set_fs_type("ext4");
      cap->mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
      req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(s.snapshot_id);
      v1::CreateVolumeResponse resp;
      grpc::ClientContext ctx;
      auto t0 = std::chrono::steady_clock::now();
      grpc::Status st = controller->CreateVolume(&ctx, req, &resp);
      auto t1 = std::chrono::steady_clock::now();
      Must(st.ok(), "clone: " + st.error_message());
      Must(resp.volume().capacity_bytes() == static_cast<int64_t>(s.size), "clone size");
      s.ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  }

  std::printf("CreateVolume from a snapshot through gRPC (unix socket), %d calls per size\n",
              calls);
  std::printf("%-8s %14s %10s %10s %10s\n", "source", "mapped blocks", "median ms", "p99 ms",
              "mean ms");
  for (const Source& s : sources) {
    double mean = 0;
    for (double v : s.ms) mean += v;
    mean /= static_cast<double>(s.ms.size());
    std::printf("%-8s %14llu %10.3f %10.3f %10.3f\n", s.label,
                static_cast<unsigned long long>(s.mapped_blocks), Percentile(s.ms, 0.5),
                Percentile(s.ms, 0.99), mean);
  }
  std::printf("ratio 64 GiB / 1 GiB: median %.2f, p99 %.2f\n",
              Percentile(sources[1].ms, 0.5) / Percentile(sources[0].ms, 0.5),
              Percentile(sources[1].ms, 0.99) / Percentile(sources[0].ms, 0.99));

  (*server)->Shutdown();
  server->reset();
  if (own_work) std::filesystem::remove_all(work);
  return 0;
}
