// Node lifecycles with real loop devices and real ext4 mounts (as root; they skip with
// a message otherwise). Each test ends with no mount and no loop device left behind
// (the fixture checks).
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/store.h"
#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFileSynced(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  ::fsync(fd);
  ::close(fd);
}

// ext4 grows online only with CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS); some sandboxes
// drop it even for root. A real node plugin runs privileged and has it.
bool HasCapSysResource() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      unsigned long long caps = std::stoull(line.substr(7), nullptr, 16);
      return (caps >> 24) & 1;  // CAP_SYS_RESOURCE
    }
  }
  return false;
}

class LifecycleTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    if (!CanUseLoopDevices()) GTEST_SKIP() << LoopSkipReason();
    CsiDriverTest::SetUp();
  }

  // Mount entries at exactly `path` and their per-mount options.
  std::vector<std::string> MountOptionsAt(const std::string& path) const {
    std::vector<std::string> out;
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string id, parent, devno, root, mount_point, options;
      f >> id >> parent >> devno >> root >> mount_point >> options;
      if (mount_point == path) out.push_back(options);
    }
    return out;
  }

  std::string CreateFromSnapshot(const std::string& name, const std::string& snap) {
    auto req = VolumeRequest(name);
    req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snap);
    v1::Volume v;
    grpc::Status st = CreateVolume(req, &v);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return v.volume_id();
  }

  void ExpectStoreEmptyAfterGc() {
    auto gc = driver().store->Gc();
    ASSERT_TRUE(gc.ok()) << gc.status().ToString();
    auto stats = driver().store->GetStats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->volumes, 0u);
    EXPECT_EQ(stats->snapshots, 0u);
    EXPECT_EQ(stats->images, 0u);
    EXPECT_EQ(stats->layers, 0u);
    EXPECT_EQ(stats->chunks, 0u) << "gc leaves nothing behind";
    auto fsck = driver().store->Fsck();
    ASSERT_TRUE(fsck.ok());
    EXPECT_TRUE(fsck->ok());
  }
};

TEST_F(LifecycleTest, ImageToSnapshotToCloneWithRealMounts) {
  std::string image = MakeExt4Image("golden", {{"etc/os-release", "ID=stellarium\n"}});
  v1::Volume vol;
  ASSERT_TRUE(CreateVolume(VolumeRequest("pvc-golden", 0, {{"image", image}}), &vol).ok());
  const std::string id = vol.volume_id();
  const std::string staging = StagingPath(id);
  const std::string target = TargetPath("pod-a");

  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  EXPECT_EQ(ReadFile(target + "/etc/os-release"), "ID=stellarium\n");
  WriteFileSynced(target + "/written-by-pod", "pod data\n");
  ASSERT_TRUE(Unpublish(id, target).ok());
  EXPECT_FALSE(fs::exists(target)) << "the driver removes the target it created";
  ASSERT_TRUE(Unstage(id, staging).ok());
  EXPECT_TRUE(MountsUnderRoot().empty());
  EXPECT_TRUE(LoopsUnderRoot().empty());

  std::string snap = MustCreateSnapshot("snap-golden", id);
  std::string clone = CreateFromSnapshot("pvc-clone", snap);
  const std::string clone_staging = StagingPath(clone);
  ASSERT_TRUE(Stage(clone, clone_staging, MountCap()).ok());
  EXPECT_EQ(ReadFile(clone_staging + "/written-by-pod"), "pod data\n");
  EXPECT_EQ(ReadFile(clone_staging + "/etc/os-release"), "ID=stellarium\n");
  ASSERT_TRUE(Unstage(clone, clone_staging).ok());

  ASSERT_TRUE(DeleteVolume(clone).ok());
  v1::DeleteSnapshotRequest del;
  del.set_snapshot_id(snap);
  v1::DeleteSnapshotResponse dresp;
  ASSERT_TRUE(controller_->DeleteSnapshot(Ctx().get(), del, &dresp).ok());
  ASSERT_TRUE(DeleteVolume(id).ok());
  ExpectStoreEmptyAfterGc();
  EXPECT_TRUE(MountsUnderRoot().empty());
  EXPECT_TRUE(LoopsUnderRoot().empty());
}

TEST_F(LifecycleTest, BlankVolumeIsFormattedOnFirstStageOnly) {
  std::string id = MustCreateVolume("blank", 64 << 20);
  std::string staging = StagingPath("blank");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  EXPECT_TRUE(fs::exists(staging + "/lost+found")) << "formatted ext4";
  WriteFileSynced(staging + "/keep", "kept\n");
  ASSERT_TRUE(Unstage(id, staging).ok());
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  EXPECT_EQ(ReadFile(staging + "/keep"), "kept\n") << "not formatted again";
  ASSERT_TRUE(Unstage(id, staging).ok());
}

TEST_F(LifecycleTest, StageAndPublishTenTimesGiveTheSameMounts) {
  std::string id = MustCreateVolume("idem", 64 << 20);
  std::string staging = StagingPath("idem");
  std::string target = TargetPath("idem");
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Stage(id, staging, MountCap()).ok()) << i;
  EXPECT_EQ(MountOptionsAt(staging).size(), 1u);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok()) << i;
  EXPECT_EQ(MountOptionsAt(target).size(), 1u);
  // Same target, other options: incompatible.
  EXPECT_EQ(Publish(id, staging, target, MountCap(), /*readonly=*/true).error_code(),
            StatusCode::ALREADY_EXISTS);
  // Same staging path, other capability: incompatible.
  EXPECT_EQ(Stage(id, staging, BlockCap()).error_code(), StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(DeleteVolume(id).error_code(), StatusCode::FAILED_PRECONDITION)
      << "a staged volume is in use";
  EXPECT_EQ(Unstage(id, staging).error_code(), StatusCode::FAILED_PRECONDITION)
      << "still published";
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Unpublish(id, target).ok()) << i;
  EXPECT_TRUE(MountOptionsAt(target).empty());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Unstage(id, staging).ok()) << i;
  EXPECT_TRUE(MountOptionsAt(staging).empty());
  EXPECT_TRUE(DeleteVolume(id).ok());
}

TEST_F(LifecycleTest, SingleWriterVolumeRefusesASecondWriterTarget) {
  std::string id = MustCreateVolume("single", 64 << 20);
  std::string staging = StagingPath("single");
  ASSERT_TRUE(Stage(id, staging, MountCap(Mode::SINGLE_NODE_SINGLE_WRITER)).ok());
  ASSERT_TRUE(Publish(id, staging, TargetPath("w1"), MountCap(Mode::SINGLE_NODE_SINGLE_WRITER)).ok());
  EXPECT_EQ(Publish(id, staging, TargetPath("w2"), MountCap(Mode::SINGLE_NODE_SINGLE_WRITER))
                .error_code(),
            StatusCode::FAILED_PRECONDITION);
  // A read-only publish is not a second writer, and it is really read-only.
  std::string ro = TargetPath("ro");
  ASSERT_TRUE(Publish(id, staging, ro, MountCap(Mode::SINGLE_NODE_SINGLE_WRITER), true).ok());
  EXPECT_EQ(::access(ro.c_str(), W_OK), -1);
  EXPECT_EQ(errno, EROFS);
  // SINGLE_NODE_MULTI_WRITER allows several writers on the node.
  std::string multi = MustCreateVolume("multi", 64 << 20);
  std::string mstaging = StagingPath("multi");
  ASSERT_TRUE(Stage(multi, mstaging, MountCap(Mode::SINGLE_NODE_MULTI_WRITER)).ok());
  ASSERT_TRUE(Publish(multi, mstaging, TargetPath("m1"), MountCap(Mode::SINGLE_NODE_MULTI_WRITER)).ok());
  ASSERT_TRUE(Publish(multi, mstaging, TargetPath("m2"), MountCap(Mode::SINGLE_NODE_MULTI_WRITER)).ok());
  // The fixture's TearDown unpublishes and unstages all of it.
}

TEST_F(LifecycleTest, MountFlagsAreHonoured) {
  std::string id = MustCreateVolume("flags", 64 << 20);
  std::string staging = StagingPath("flags");
  ASSERT_TRUE(Stage(id, staging, MountCap(Mode::SINGLE_NODE_WRITER, {"noatime", "nodev"})).ok());
  auto options = MountOptionsAt(staging);
  ASSERT_EQ(options.size(), 1u);
  EXPECT_NE(options[0].find("noatime"), std::string::npos) << options[0];
  EXPECT_NE(options[0].find("nodev"), std::string::npos) << options[0];
  std::string target = TargetPath("flags");
  ASSERT_TRUE(Publish(id, staging, target, MountCap(Mode::SINGLE_NODE_WRITER, {"noexec"})).ok());
  options = MountOptionsAt(target);
  ASSERT_EQ(options.size(), 1u);
  EXPECT_NE(options[0].find("noexec"), std::string::npos) << options[0];
}

TEST_F(LifecycleTest, BlockAccessPublishesTheDeviceAtAFile) {
  std::string id = MustCreateVolume("raw", 16 << 20);
  std::string staging = StagingPath("raw");
  std::string target = TargetPath("raw");
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, BlockCap()).ok());
  {
    int fd = ::open(target.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::lseek(fd, 0, SEEK_END), 16 << 20);
    std::string block(4096, 'B');
    ASSERT_EQ(::pwrite(fd, block.data(), block.size(), 1 << 20), 4096);
    ::fsync(fd);
    ::close(fd);
  }
  v1::NodeGetVolumeStatsRequest req;
  req.set_volume_id(id);
  req.set_volume_path(target);
  v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(node_->NodeGetVolumeStats(Ctx().get(), req, &stats).ok());
  ASSERT_EQ(stats.usage_size(), 1);
  EXPECT_EQ(stats.usage(0).unit(), v1::VolumeUsage::BYTES);
  EXPECT_EQ(stats.usage(0).total(), 16 << 20);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
  // The write went back into the store.
  auto volume = driver().store->OpenVolume(id, true);
  ASSERT_TRUE(volume.ok());
  std::string back(4096, '\0');
  ASSERT_TRUE((*volume)->Read(1 << 20, back.size(), back.data()).ok());
  EXPECT_EQ(back, std::string(4096, 'B'));
}

TEST_F(LifecycleTest, StatsReportBytesAndInodesOfMounts) {
  std::string id = MustCreateVolume("stats", 64 << 20);
  std::string staging = StagingPath("stats");
  std::string target = TargetPath("stats");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  v1::NodeGetVolumeStatsRequest req;
  req.set_volume_id(id);
  req.set_volume_path(target);
  v1::NodeGetVolumeStatsResponse resp;
  ASSERT_TRUE(node_->NodeGetVolumeStats(Ctx().get(), req, &resp).ok());
  ASSERT_EQ(resp.usage_size(), 2);
  EXPECT_EQ(resp.usage(0).unit(), v1::VolumeUsage::BYTES);
  EXPECT_GT(resp.usage(0).total(), 32 << 20);
  EXPECT_GT(resp.usage(0).available(), 0);
  EXPECT_EQ(resp.usage(1).unit(), v1::VolumeUsage::INODES);
  EXPECT_GT(resp.usage(1).total(), 0);
  EXPECT_FALSE(resp.volume_condition().abnormal());
  req.set_volume_path(TargetPath("not-published-here"));
  EXPECT_EQ(node_->NodeGetVolumeStats(Ctx().get(), req, &resp).error_code(), StatusCode::NOT_FOUND);

  v1::ControllerGetVolumeRequest get;
  get.set_volume_id(id);
  v1::ControllerGetVolumeResponse got;
  ASSERT_TRUE(controller_->ControllerGetVolume(Ctx().get(), get, &got).ok());
  ASSERT_EQ(got.status().published_node_ids_size(), 1);
  EXPECT_EQ(got.status().published_node_ids(0), "node-1");
}

TEST_F(LifecycleTest, ExpansionGrowsAnAttachedBlockDevice) {
  std::string id = MustCreateVolume("grow-raw", 16 << 20);
  std::string staging = StagingPath("grow-raw");
  std::string target = TargetPath("grow-raw");
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, BlockCap()).ok());

  v1::ControllerExpandVolumeRequest creq;
  creq.set_volume_id(id);
  creq.mutable_capacity_range()->set_required_bytes(48 << 20);
  *creq.mutable_volume_capability() = BlockCap();
  v1::ControllerExpandVolumeResponse cresp;
  ASSERT_TRUE(controller_->ControllerExpandVolume(Ctx().get(), creq, &cresp).ok());
  EXPECT_TRUE(cresp.node_expansion_required()) << "the attached device must grow too";

  v1::NodeExpandVolumeRequest nreq;
  nreq.set_volume_id(id);
  nreq.set_volume_path(target);
  nreq.mutable_capacity_range()->set_required_bytes(48 << 20);
  *nreq.mutable_volume_capability() = BlockCap();
  v1::NodeExpandVolumeResponse nresp;
  ASSERT_TRUE(node_->NodeExpandVolume(Ctx().get(), nreq, &nresp).ok());
  EXPECT_EQ(nresp.capacity_bytes(), 48 << 20);
  int fd = ::open(target.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::lseek(fd, 0, SEEK_END), 48 << 20);
  // The grown tail is writable and goes back into the store.
  std::string block(4096, 'T');
  ASSERT_EQ(::pwrite(fd, block.data(), block.size(), (48 << 20) - 4096), 4096);
  ::fsync(fd);
  ::close(fd);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
  auto volume = driver().store->OpenVolume(id, true);
  ASSERT_TRUE(volume.ok());
  std::string back(4096, '\0');
  ASSERT_TRUE((*volume)->Read((48 << 20) - 4096, back.size(), back.data()).ok());
  EXPECT_EQ(back, block);
}

// Distributed deployment: the controller does not advertise expansion (the elected
// resizer can reach only its own node), so NodeExpandVolume on the volume's node grows
// the volume in the store, then the device.
TEST_F(LifecycleTest, NodeExpansionGrowsTheVolumeWhenControllerExpansionIsOff) {
  StopServer();
  controller_expansion_ = false;
  StartServer();
  v1::ControllerGetCapabilitiesResponse caps;
  v1::ControllerGetCapabilitiesRequest caps_req;
  ASSERT_TRUE(controller_->ControllerGetCapabilities(Ctx().get(), caps_req, &caps).ok());
  for (const auto& c : caps.capabilities()) {
    EXPECT_NE(c.rpc().type(), v1::ControllerServiceCapability::RPC::EXPAND_VOLUME);
  }
  std::string id = MustCreateVolume("grow-node", 16 << 20);
  std::string staging = StagingPath("grow-node");
  std::string target = TargetPath("grow-node");
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, BlockCap()).ok());
  v1::NodeExpandVolumeRequest nreq;
  nreq.set_volume_id(id);
  nreq.set_volume_path(target);
  nreq.mutable_capacity_range()->set_required_bytes(40 << 20);
  nreq.mutable_capacity_range()->set_limit_bytes(30 << 20);
  *nreq.mutable_volume_capability() = BlockCap();
  v1::NodeExpandVolumeResponse nresp;
  EXPECT_EQ(node_->NodeExpandVolume(Ctx().get(), nreq, &nresp).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(driver().store->GetVolume(id)->size_bytes, 16u << 20) << "a refused call changes nothing";
  nreq.mutable_capacity_range()->clear_limit_bytes();
  for (int i = 0; i < 3; ++i) {  // idempotent
    ASSERT_TRUE(node_->NodeExpandVolume(Ctx().get(), nreq, &nresp).ok());
    EXPECT_EQ(nresp.capacity_bytes(), 40 << 20);
  }
  EXPECT_EQ(driver().store->GetVolume(id)->size_bytes, 40u << 20);
  int fd = ::open(target.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::lseek(fd, 0, SEEK_END), 40 << 20);
  ::close(fd);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
}

TEST_F(LifecycleTest, OnlineExpansionGrowsTheMountedFilesystem) {
  if (!HasCapSysResource()) {
    GTEST_SKIP() << "online ext4 resize needs CAP_SYS_RESOURCE, which this process lacks "
                    "(ExpansionGrowsAnAttachedBlockDevice covers the device side)";
  }
  std::string id = MustCreateVolume("grow", 64 << 20);
  std::string staging = StagingPath("grow");
  std::string target = TargetPath("grow");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  struct statvfs before;
  ASSERT_EQ(::statvfs(target.c_str(), &before), 0);

  v1::ControllerExpandVolumeRequest creq;
  creq.set_volume_id(id);
  creq.mutable_capacity_range()->set_required_bytes(128 << 20);
  *creq.mutable_volume_capability() = MountCap();
  v1::ControllerExpandVolumeResponse cresp;
  ASSERT_TRUE(controller_->ControllerExpandVolume(Ctx().get(), creq, &cresp).ok());
  EXPECT_TRUE(cresp.node_expansion_required());

  v1::NodeExpandVolumeRequest nreq;
  nreq.set_volume_id(id);
  nreq.set_volume_path(target);
  nreq.mutable_capacity_range()->set_required_bytes(128 << 20);
  v1::NodeExpandVolumeResponse nresp;
  ASSERT_TRUE(node_->NodeExpandVolume(Ctx().get(), nreq, &nresp).ok());
  EXPECT_EQ(nresp.capacity_bytes(), 128 << 20);
  struct statvfs after;
  ASSERT_EQ(::statvfs(target.c_str(), &after), 0);
  EXPECT_GT(after.f_blocks * after.f_frsize, before.f_blocks * before.f_frsize + (48 << 20));

  nreq.mutable_capacity_range()->set_required_bytes(1ll << 30);  // controller not called
  EXPECT_EQ(node_->NodeExpandVolume(Ctx().get(), nreq, &nresp).error_code(), StatusCode::OUT_OF_RANGE);
}

TEST_F(LifecycleTest, SnapshotOfAVolumeInUseHasItsLatestWrites) {
  std::string id = MustCreateVolume("busy", 64 << 20);
  std::string staging = StagingPath("busy");
  std::string target = TargetPath("busy");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  WriteFileSynced(target + "/before-snapshot", "v1\n");
  std::string snap = MustCreateSnapshot("busy-snap", id);
  // And a clone of the volume itself, still in use.
  auto clone_req = VolumeRequest("busy-clone");
  clone_req.mutable_volume_content_source()->mutable_volume()->set_volume_id(id);
  v1::Volume clone;
  ASSERT_TRUE(CreateVolume(clone_req, &clone).ok());

  std::string from_snap = CreateFromSnapshot("busy-restore", snap);
  for (const std::string& vol : {from_snap, clone.volume_id()}) {
    std::string s = StagingPath(vol);
    ASSERT_TRUE(Stage(vol, s, MountCap()).ok());
    EXPECT_EQ(ReadFile(s + "/before-snapshot"), "v1\n") << vol;
    ASSERT_TRUE(Unstage(vol, s).ok());
  }
}

TEST_F(LifecycleTest, DriverRestartKeepsStagedVolumesAndTheirWrites) {
  std::string id = MustCreateVolume("survivor", 64 << 20);
  std::string staging = StagingPath("survivor");
  std::string target = TargetPath("survivor");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  WriteFileSynced(target + "/across-restart", "still here\n");

  StopServer();  // the kubelet keeps the mounts; the driver goes away and comes back
  StartServer();
  EXPECT_EQ(ReadFile(target + "/across-restart"), "still here\n");
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok()) << "idempotent after restart";
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());

  std::string snap = MustCreateSnapshot("survivor-snap", id);
  std::string restored = CreateFromSnapshot("survivor-restored", snap);
  std::string s = StagingPath(restored);
  ASSERT_TRUE(Stage(restored, s, MountCap()).ok());
  EXPECT_EQ(ReadFile(s + "/across-restart"), "still here\n");
  ASSERT_TRUE(Unstage(restored, s).ok());
}

TEST_F(LifecycleTest, ReadOnlyStageOfABlankVolumeIsRefused) {
  std::string id = MustCreateVolume("ro-blank", 16 << 20);
  EXPECT_EQ(Stage(id, StagingPath("ro-blank"), MountCap(Mode::SINGLE_NODE_READER_ONLY)).error_code(),
            StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(LoopsUnderRoot().empty()) << "a failed stage leaves no device";
}

}  // namespace
}  // namespace stellarium::csi::testing
