#include "tests/csi/csi_fixture.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/tree_image.h"
#include "csi/logging.h"
#include "csi/node/node_state.h"

namespace stellarium::csi::testing {

namespace fs = std::filesystem;

bool CanUseLoopDevices() { return ::geteuid() == 0 && ::access("/dev/loop-control", R_OK | W_OK) == 0; }

std::string LoopSkipReason() {
  if (::geteuid() != 0) return "needs root (loop devices and mounts); run the suite as root";
  return "needs /dev/loop-control (loop devices)";
}

void CsiDriverTest::SetUp() {
  SetupLogging(::getenv("CSI_TEST_LOG") ? ::getenv("CSI_TEST_LOG") : "warn", "text");
  char tmpl[] = "/tmp/csi-test-XXXXXX";  // short: a unix socket path has 107 bytes at most
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  root_ = tmpl;
  kubelet_ = root_ + "/kubelet";
  images_ = root_ + "/images";
  endpoint_ = "unix://" + root_ + "/csi.sock";
  state_dir_ = root_ + "/" + state_subdir_;
  fs::create_directories(kubelet_);
  fs::create_directories(images_);
  fs::create_directories(state_dir_);
  auto holder = node::FdHolderServer::Listen(state_dir_ + "/fd-holder.sock");
  ASSERT_TRUE(holder.ok()) << holder.status().ToString();
  holder_ = std::move(holder).value();
  holder_stop_ = ::eventfd(0, EFD_CLOEXEC);
  holder_thread_ = std::thread([this] { (void)holder_->Run(holder_stop_); });
  StartServer();
}

void CsiDriverTest::TearDown() {
  if (server_) {
    // Leave the machine as found even when a test failed half-way.
    for (const auto& staged : driver().node_state->List()) {
      for (const auto& [target, t] : staged.targets) (void)Unpublish(staged.volume_id, target);
      (void)Unstage(staged.volume_id, staged.staging_path);
    }
  }
  StopServer();
  if (holder_thread_.joinable()) {
    uint64_t one = 1;
    (void)!::write(holder_stop_, &one, sizeof(one));
    holder_thread_.join();
    ::close(holder_stop_);
  }
  holder_.reset();
  EXPECT_TRUE(MountsUnderRoot().empty()) << "mounts left under " << root_;
  EXPECT_TRUE(LoopsUnderRoot().empty()) << "loop devices left for " << root_;
  std::error_code ec;
  fs::remove_all(root_, ec);
}

Options CsiDriverTest::MakeOptions() const {
  Options o;
  o.endpoint = endpoint_;
  o.node_id = "node-1";
  o.store = root_ + "/" + store_subdir_;
  o.state_dir = state_dir_;
  o.kubelet_dir = kubelet_;
  o.import_root = {images_};
  o.max_volumes_per_node = 64;
  o.log_level = "warn";
  o.metrics_address = metrics_address_;
  o.controller_expansion = controller_expansion_;
  o.gc_interval_seconds = gc_interval_seconds_;
  o.kata_direct_volume_dir = root_ + "/kata";  // never the host's /run/kata-containers
  Status st = Validate(&o);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return o;
}

void CsiDriverTest::StartServer() {
  auto server = Server::Start(MakeOptions());
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  server_ = std::move(server).value();
  auto channel = grpc::CreateChannel(endpoint_, grpc::InsecureChannelCredentials());
  identity_ = v1::Identity::NewStub(channel);
  controller_ = v1::Controller::NewStub(channel);
  node_ = v1::Node::NewStub(channel);
}

void CsiDriverTest::StopServer() {
  identity_.reset();
  controller_.reset();
  node_.reset();
  server_.reset();
}

std::unique_ptr<grpc::ClientContext> CsiDriverTest::Ctx() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  return ctx;
}

v1::VolumeCapability CsiDriverTest::MountCap(Mode::Mode mode,
                                             const std::vector<std::string>& flags) {
  v1::VolumeCapability cap;
  cap.mutable_mount()->set_fs_type("ext4");
  for (const auto& f : flags) cap.mutable_mount()->add_mount_flags(f);
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

v1::VolumeCapability CsiDriverTest::BlockCap(Mode::Mode mode) {
  v1::VolumeCapability cap;
  cap.mutable_block();
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

v1::CreateVolumeRequest CsiDriverTest::VolumeRequest(const std::string& name, int64_t required,
                                                     const std::map<std::string, std::string>& params) {
  v1::CreateVolumeRequest req;
  req.set_name(name);
  if (required > 0) req.mutable_capacity_range()->set_required_bytes(required);
  *req.add_volume_capabilities() = MountCap();
  for (const auto& [k, v] : params) (*req.mutable_parameters())[k] = v;
  return req;
}

grpc::Status CsiDriverTest::CreateVolume(const v1::CreateVolumeRequest& req, v1::Volume* volume) {
  v1::CreateVolumeResponse resp;
  grpc::Status st = controller_->CreateVolume(Ctx().get(), req, &resp);
  if (st.ok() && volume) *volume = resp.volume();
  return st;
}

std::string CsiDriverTest::MustCreateVolume(const std::string& name, int64_t bytes) {
  v1::Volume v;
  grpc::Status st = CreateVolume(VolumeRequest(name, bytes), &v);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return v.volume_id();
}

std::string CsiDriverTest::MustCreateSnapshot(const std::string& name, const std::string& volume_id) {
  v1::CreateSnapshotRequest req;
  req.set_name(name);
  req.set_source_volume_id(volume_id);
  v1::CreateSnapshotResponse resp;
  grpc::Status st = controller_->CreateSnapshot(Ctx().get(), req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return resp.snapshot().snapshot_id();
}

grpc::Status CsiDriverTest::DeleteVolume(const std::string& id) {
  v1::DeleteVolumeRequest req;
  req.set_volume_id(id);
  v1::DeleteVolumeResponse resp;
  return controller_->DeleteVolume(Ctx().get(), req, &resp);
}

grpc::Status CsiDriverTest::Stage(const std::string& id, const std::string& staging,
                                  const v1::VolumeCapability& cap) {
  v1::NodeStageVolumeRequest req;
  req.set_volume_id(id);
  req.set_staging_target_path(staging);
  *req.mutable_volume_capability() = cap;
  v1::NodeStageVolumeResponse resp;
  return node_->NodeStageVolume(Ctx().get(), req, &resp);
}

grpc::Status CsiDriverTest::Unstage(const std::string& id, const std::string& staging) {
  v1::NodeUnstageVolumeRequest req;
  req.set_volume_id(id);
  req.set_staging_target_path(staging);
  v1::NodeUnstageVolumeResponse resp;
  return node_->NodeUnstageVolume(Ctx().get(), req, &resp);
}

grpc::Status CsiDriverTest::Publish(const std::string& id, const std::string& staging,
                                    const std::string& target, const v1::VolumeCapability& cap,
                                    bool readonly) {
  v1::NodePublishVolumeRequest req;
  req.set_volume_id(id);
  req.set_staging_target_path(staging);
  req.set_target_path(target);
  req.set_readonly(readonly);
  *req.mutable_volume_capability() = cap;
  v1::NodePublishVolumeResponse resp;
  return node_->NodePublishVolume(Ctx().get(), req, &resp);
}

grpc::Status CsiDriverTest::Unpublish(const std::string& id, const std::string& target) {
  v1::NodeUnpublishVolumeRequest req;
  req.set_volume_id(id);
  req.set_target_path(target);
  v1::NodeUnpublishVolumeResponse resp;
  return node_->NodeUnpublishVolume(Ctx().get(), req, &resp);
}

std::string CsiDriverTest::StagingPath(const std::string& name) {
  std::string p = kubelet_ + "/plugins/kubernetes.io/csi/staging/" + name;
  fs::create_directories(p);  // the kubelet creates the staging directory
  return p;
}

std::string CsiDriverTest::TargetPath(const std::string& name) {
  std::string parent = kubelet_ + "/pods/" + name + "/volumes";
  fs::create_directories(parent);  // the kubelet creates the parent, the driver the target
  return parent + "/mount";
}

std::string CsiDriverTest::MakeTree(const std::string& name,
                                    const std::map<std::string, std::string>& files) {
  std::string dir = images_ + "/" + name;
  for (const auto& [path, contents] : files) {
    fs::path p = fs::path(dir) / path;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << contents;
  }
  fs::create_directories(dir);
  return dir;
}

std::string CsiDriverTest::MakeExt4Image(const std::string& name,
                                         const std::map<std::string, std::string>& files) {
  std::string tree = MakeTree(name + ".tree", files);
  std::string image = images_ + "/" + name + ".img";
  Status st = BuildExt4FromTree(tree, 32 << 20, name, image);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return image;
}

std::vector<std::string> CsiDriverTest::MountsUnderRoot() const {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, devno, r, mount_point;
    f >> id >> parent >> devno >> r >> mount_point;
    // The running driver's own FUSE mount (the files behind its loop devices) is not a
    // leftover; after StopServer it must be gone too.
    if (server_ && mount_point == state_dir_ + "/fuse") continue;
    if (mount_point.rfind(root_ + "/", 0) == 0) out.push_back(mount_point);
  }
  return out;
}

std::vector<std::string> CsiDriverTest::LoopsUnderRoot() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/sys/block", ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("loop", 0) != 0) continue;
    std::ifstream in(entry.path() / "loop" / "backing_file");
    std::string backing;
    if (in && std::getline(in, backing) && backing.rfind(root_ + "/", 0) == 0) {
      out.push_back("/dev/" + name + " -> " + backing);
    }
  }
  return out;
}

}  // namespace stellarium::csi::testing
