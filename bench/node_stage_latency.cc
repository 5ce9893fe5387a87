// node_stage_latency: NodeStageVolume latency through the whole CSI path (a gRPC call
// over the driver's unix socket, checks, the volume lock, the exposure, the node state
// record), for a 1 GiB and a 64 GiB volume side by side, for each exposure the driver
// offers (the block device provider, named by the driver, and vhost-user-blk) and each
// access type:
//   block  Block access: the device (or socket) only;
//   mount  Mount access on a volume that already holds ext4 (a first, untimed stage
//          formats it): the device plus an ext4 mount (nothing mounted for vhost-user).
// Both volumes have data mapped across their whole size (one distinct 4 KiB block
// every --stride bytes, default 16 MiB). Each timed call is a stage of an unstaged volume; unstage
// is not timed. Calls alternate between the sizes so machine noise hits both alike. Prints the
// median and p90 per size and the ratio 64 GiB / 1 GiB (independent of size means about 1).
//
// usage: node_stage_latency [--calls N] [--stride BYTES] [--work DIR]   (root: loop, mount)
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

#include "bench/node_bench_util.h"
#include "csi.grpc.pb.h"
#include "csi/logging.h"
#include "csi/options.h"
#include "csi/server.h"

using namespace stellarium;
namespace v1 = ::csi::v1;
using Mode = v1::VolumeCapability::AccessMode;

namespace {

void Must(bool ok, const std::string& what) { bench::Must(ok, "node_stage_latency", what); }

v1::VolumeCapability Cap(bool block) {
  v1::VolumeCapability cap;
  if (block) {
    cap.mutable_block();
  } else {
    cap.mutable_mount()->set_fs_type("ext4");
  }
  cap.mutable_access_mode()->set_mode(Mode::SINGLE_NODE_WRITER);
  return cap;
}

struct Case {
  std::string exposure;
  bool block;
  std::string volume_id[2];  // 1 GiB, 64 GiB
  std::string staging[2];
  std::vector<double> ms[2];
};

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> known = {"--calls", "--stride", "--work"};
  const char* usage = "node_stage_latency [--calls N] [--stride BYTES] [--work DIR]";
  const int calls = std::atoi(bench::FlagValue(argc, argv, "--calls", "30", known, usage).c_str());
  const uint64_t stride = std::strtoull(
      bench::FlagValue(argc, argv, "--stride", "16777216", known, usage).c_str(), nullptr, 10);
  std::string work = bench::FlagValue(argc, argv, "--work", "", known, usage);
  Must(::geteuid() == 0, "needs root (loop devices and mounts)");
  const bool own_work = work.empty();
  if (own_work) {
    char tmpl[] = "/tmp/node-bench-XXXXXX";
    Must(::mkdtemp(tmpl) != nullptr, "mkdtemp");
    work = tmpl;
  }
  const std::string kubelet = work + "/kubelet";
  std::filesystem::create_directories(kubelet);
  stellarium::csi::SetupLogging("warn", "text");

  // A driver of its own in `work`, as a node runs it (the default block device).
  stellarium::csi::Options o{.endpoint = "unix://" + work + "/csi.sock",
                             .node_id = "bench",
                             .store = work + "/store",
                             .state_dir = work + "/state",
                             .kubelet_dir = kubelet};
  o.kata_direct_volume_dir = work + "/kata";
  Must(stellarium::csi::Validate(&o).ok(), "options");
  auto server = stellarium::csi::Server::Start(o);
  Must(server.ok(), server.ok() ? "" : server.status().ToString());
  Store& store = *(*server)->driver().store;
  const std::string block_exposure = (*server)->driver().devices->Name();

  auto channel = grpc::CreateChannel(o.endpoint, grpc::InsecureChannelCredentials());
  auto controller = v1::Controller::NewStub(channel);
  auto node = v1::Node::NewStub(channel);

  auto stage = [&](const std::string& id, const std::string& staging, bool block) {
    v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    *req.mutable_volume_capability() = Cap(block);
    v1::NodeStageVolumeResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = node->NodeStageVolume(&ctx, req, &resp);
    Must(st.ok(), "stage " + id + ": " + st.error_message());
  };
  auto unstage = [&](const std::string& id, const std::string& staging) {
    v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    v1::NodeUnstageVolumeResponse resp;
    grpc::ClientContext ctx;
    grpc::Status st = node->NodeUnstageVolume(&ctx, req, &resp);
    Must(st.ok(), "unstage " + id + ": " + st.error_message());
  };

  const uint64_t sizes[2] = {1ull << 30, 64ull << 30};
  const char* labels[2] = {"1 GiB", "64 GiB"};
  std::vector<Case> cases;
  for (const std::string& exposure : {block_exposure, std::string("vhost-user-blk")}) {
    for (bool block : {true, false}) cases.push_back(Case{exposure, block, {}, {}, {}});
  }
  int n = 0;
  for (Case& c : cases) {
    for (int s = 0; s < 2; ++s) {
      const std::string name = "v" + std::to_string(n++);
      v1::CreateVolumeRequest req;
      req.set_name(name);
      req.mutable_capacity_range()->set_required_bytes(static_cast<int64_t>(sizes[s]));
      *req.add_volume_capabilities() = Cap(c.block);
      (*req.mutable_parameters())["exposure"] = c.exposure;
      v1::CreateVolumeResponse resp;
      grpc::ClientContext ctx;
      grpc::Status st = controller->CreateVolume(&ctx, req, &resp);
      Must(st.ok(), "create: " + st.error_message());
      c.volume_id[s] = resp.volume().volume_id();
      auto volume = store.OpenVolume(c.volume_id[s]);
      Must(volume.ok(), "open");
      std::vector<char> data(4096);
      uint64_t k = 0;
      // Data across the whole size; Mount cases keep the first MiB free for ext4 to
      // overwrite when the untimed first stage formats the volume.
      for (uint64_t off = c.block ? 0 : stride; off < sizes[s]; off += stride, ++k) {
        std::memset(data.data(), 'a' + static_cast<int>(k % 26), data.size());
        std::memcpy(data.data(), &k, sizeof(k));  // distinct blocks (one chunk record each)
        std::memcpy(data.data() + 8, &n, sizeof(n));
        Must((*volume)->Write(off, data.data(), data.size()).ok(), "write");
      }
      Must((*volume)->Flush().ok(), "flush");
      volume->reset();
      c.staging[s] = kubelet + "/staging/" + name;
      std::filesystem::create_directories(c.staging[s]);
      if (!c.block) {  // format once, untimed
        stage(c.volume_id[s], c.staging[s], false);
        unstage(c.volume_id[s], c.staging[s]);
      }
    }
  }

  for (int i = 0; i < calls; ++i) {
    for (Case& c : cases) {
      for (int s = 0; s < 2; ++s) {
        auto t0 = std::chrono::steady_clock::now();
        stage(c.volume_id[s], c.staging[s], c.block);
        auto t1 = std::chrono::steady_clock::now();
        c.ms[s].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        unstage(c.volume_id[s], c.staging[s]);
      }
    }
  }

  std::printf(
      "NodeStageVolume through gRPC (unix socket), %d calls per case, data every %llu "
      "bytes\n",
      calls, static_cast<unsigned long long>(stride));
  std::printf("%-16s %-6s %14s %14s %14s %14s %8s\n", "exposure", "access",
              (std::string(labels[0]) + " median").c_str(),
              (std::string(labels[0]) + " p90").c_str(),
              (std::string(labels[1]) + " median").c_str(),
              (std::string(labels[1]) + " p90").c_str(), "ratio");
  for (const Case& c : cases) {
    double m0 = bench::Percentile(c.ms[0], 0.5), m1 = bench::Percentile(c.ms[1], 0.5);
    std::printf("%-16s %-6s %11.3f ms %11.3f ms %11.3f ms %11.3f ms %8.2f\n", c.exposure.c_str(),
                c.block ? "block" : "mount", m0, bench::Percentile(c.ms[0], 0.9), m1,
                bench::Percentile(c.ms[1], 0.9), m1 / m0);
  }
  std::printf(
      "ratio = median 64 GiB / median 1 GiB (about 1 when staging does not depend on "
      "the size)\n");

  (*server)->Shutdown();
  server->reset();
  if (own_work) std::filesystem::remove_all(work);
  return 0;
}
