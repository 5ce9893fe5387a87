// The microVM exposure through the real driver: a stellarium-csi server in this process
// on a unix socket, real gRPC stubs (tests/csi/csi_fixture.h), a real store. Volumes
// whose StorageClass says `exposure: vhost-user-blk` are staged as a vhost-user-blk
// back-end on a socket under the state directory and published as runtime
// descriptors. The vhost-user socket is checked by speaking the protocol to it
// (GET_FEATURES), and, in DriverGuestTest, by a real QEMU guest.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "csi/node/node_exposure.h"
#include "csi/node/node_state.h"
#include "csi/node/runtime_descriptors.h"
#include "csi/node/vhost_user/vhost_user_protocol.h"
#include "tests/csi/csi_fixture.h"
#include "tests/node/guest_util.h"
#include "tests/node/node_fixture.h"

#ifndef STELLARIUM_SOURCE_DIR
#error "STELLARIUM_SOURCE_DIR must point at the source tree (scripts/build-guest.sh)"
#endif

namespace stellarium::csi::testing {
namespace {

using node::CloudHypervisorDiskPath;
using node::FirecrackerDrivePath;
using stellarium::testing::CommandResult;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

unsigned Mode(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

// Connects to a vhost-user back-end and asks VHOST_USER_GET_FEATURES, as a VMM's first
// message does. Returns the feature bits, or an error naming what failed.
Result<uint64_t> AskFeatures(const std::string& socket_path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "connect " + socket_path);
  }
  uint32_t header[3] = {node::kVhostUserGetFeatures, node::kVhostUserVersion, 0};
  if (::write(fd, header, sizeof(header)) != static_cast<ssize_t>(sizeof(header))) {
    ::close(fd);
    return Status::Internal("write GET_FEATURES to " + socket_path);
  }
  uint8_t reply[12 + 8];
  size_t got = 0;
  while (got < sizeof(reply)) {
    ssize_t n = ::read(fd, reply + got, sizeof(reply) - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got != sizeof(reply)) return Status::Internal("short GET_FEATURES reply from " + socket_path);
  uint32_t request, flags, size;
  uint64_t features;
  std::memcpy(&request, reply, 4);
  std::memcpy(&flags, reply + 4, 4);
  std::memcpy(&size, reply + 8, 4);
  std::memcpy(&features, reply + 12, 8);
  if (request != node::kVhostUserGetFeatures || !(flags & node::kVhostUserReplyFlag) ||
      size != 8) {
    return Status::Internal("unexpected GET_FEATURES reply header");
  }
  return features;
}

class DriverExposureTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    if (!CanUseLoopDevices()) GTEST_SKIP() << LoopSkipReason();
    CsiDriverTest::SetUp();
  }

  std::string CreateVhostVolume(const std::string& name, int64_t bytes = 64 << 20,
                                std::map<std::string, std::string> params = {}) {
    params["exposure"] = "vhost-user-blk";
    v1::Volume v;
    grpc::Status st = CreateVolume(VolumeRequest(name, bytes, params), &v);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(v.volume_context().at("stellarium.io/exposure"), "vhost-user-blk");
    return v.volume_id();
  }

  // Mounts at staging or target paths (the block device provider may keep its own FUSE
  // mount in the state directory; that one serves no volume of these tests).
  std::vector<std::string> KubeletMounts() const {
    std::vector<std::string> out;
    for (const std::string& m : MountsUnderRoot()) {
      if (m.rfind(kubelet_ + "/", 0) == 0) out.push_back(m);
    }
    return out;
  }

  std::string SocketOf(const std::string& id) { return root_ + "/state/vhost/" + id + ".sock"; }
  std::string KataDir(const std::string& target) {
    return node::KataVolumeDir(root_ + "/kata", target);
  }
};

TEST_F(DriverExposureTest, StagePublishWriteDescriptorsAndUnpublishUnstageRemoveThem) {
  const std::string id = CreateVhostVolume("vm-disk");
  const std::string staging = StagingPath("vm-disk");
  const std::string target = TargetPath("vm-pod");
  const std::string socket = SocketOf(id);

  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  EXPECT_TRUE(IsSocket(socket)) << socket;
  EXPECT_EQ(Mode(root_ + "/state/vhost"), 0700u);
  EXPECT_EQ(KubeletMounts(), std::vector<std::string>{}) << "vhost-user-blk mounts nothing";
  EXPECT_EQ(LoopsUnderRoot(), std::vector<std::string>{}) << "and keeps no loop device";
  Result<uint64_t> features = AskFeatures(socket);
  ASSERT_TRUE(features.ok()) << features.status().ToString();
  EXPECT_FALSE(*features & (1ull << node::kVirtioBlkFRo)) << "a read-write volume";
  EXPECT_TRUE(*features & (1ull << node::kVirtioFVersion1));
  // The blank volume was formatted before it was served: the guest mounts it as ext4.
  auto volume = driver().store->OpenVolume(id, /*read_only=*/true);
  ASSERT_TRUE(volume.ok()) << volume.status().ToString();
  unsigned char magic[2] = {};
  ASSERT_TRUE((*volume)->Read(1024 + 0x38, 2, reinterpret_cast<char*>(magic)).ok());
  EXPECT_EQ(magic[0], 0x53);
  EXPECT_EQ(magic[1], 0xEF);
  volume->reset();

  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  struct stat st;
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode)) << "the Mount target is a directory the runtime finds";

  const std::string kata_dir = KataDir(target);
  const std::string kata_file = kata_dir + "/mountInfo.json";
  EXPECT_EQ(kata_dir, root_ + "/kata/" + node::Base64Url(target));
  EXPECT_EQ(Mode(kata_dir), 0700u);
  EXPECT_EQ(Mode(kata_file), 0600u);
  YAML::Node kata = YAML::Load(ReadAll(kata_file));  // JSON is YAML
  ASSERT_TRUE(kata.IsMap()) << ReadAll(kata_file);
  std::set<std::string> keys;
  for (const auto& kv : kata) keys.insert(kv.first.as<std::string>());
  EXPECT_EQ(keys,
            (std::set<std::string>{"volume-type", "device", "fstype", "metadata", "options"}));
  EXPECT_EQ(kata["volume-type"].as<std::string>(), "spdkvol");
  EXPECT_EQ(kata["device"].as<std::string>(), socket);
  EXPECT_EQ(kata["fstype"].as<std::string>(), "ext4");
  EXPECT_EQ(kata["metadata"]["stellarium.io/volume-id"].as<std::string>(), id);
  EXPECT_TRUE(kata["options"].IsSequence());
  EXPECT_EQ(kata["options"].size(), 0u);

  const std::string fc_file = FirecrackerDrivePath(target);
  EXPECT_EQ(fc_file, target + ".firecracker-drive.json");
  EXPECT_EQ(Mode(fc_file), 0600u);
  YAML::Node fc = YAML::Load(ReadAll(fc_file));
  std::string drive_id = id;
  for (char& c : drive_id) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  EXPECT_EQ(fc["drive_id"].as<std::string>(), drive_id);
  EXPECT_EQ(fc["socket"].as<std::string>(), socket);
  EXPECT_FALSE(fc["path_on_host"]) << "vhost-user drives name a socket, not a host path";
  EXPECT_FALSE(fc["is_read_only"].as<bool>());
  EXPECT_FALSE(fc["is_root_device"].as<bool>());

  const std::string ch_file = CloudHypervisorDiskPath(target);
  EXPECT_EQ(ch_file, target + ".cloud-hypervisor-disk");
  EXPECT_EQ(ReadAll(ch_file),
            "vhost_user=on,socket=" + socket + ",num_queues=1,readonly=off,id=" + drive_id + "\n");

  // Idempotent: the same calls again succeed and change nothing.
  const std::string before = ReadAll(kata_file);
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  EXPECT_EQ(ReadAll(kata_file), before);
  EXPECT_TRUE(IsSocket(socket));

  // Unstage while published is refused and changes nothing.
  grpc::Status busy = Unstage(id, staging);
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << busy.error_message();
  EXPECT_TRUE(IsSocket(socket));

  ASSERT_TRUE(Unpublish(id, target).ok());
  EXPECT_FALSE(Exists(kata_file));
  EXPECT_FALSE(Exists(kata_dir));
  EXPECT_FALSE(Exists(fc_file));
  EXPECT_FALSE(Exists(ch_file));
  EXPECT_FALSE(Exists(target));
  EXPECT_TRUE(IsSocket(socket)) << "unpublish leaves the staged back-end running";
  ASSERT_TRUE(Unpublish(id, target).ok()) << "a repeated unpublish is OK";

  ASSERT_TRUE(Unstage(id, staging).ok());
  EXPECT_FALSE(Exists(socket));
  EXPECT_FALSE(driver().node_state->Get(id).has_value());
  ASSERT_TRUE(Unstage(id, staging).ok()) << "a repeated unstage is OK";
}

TEST_F(DriverExposureTest, ReadOnlyVolumeIsServedWithVirtioBlkRo) {
  // An image volume (it has a file system) staged read-only, published read-only.
  std::string image = MakeExt4Image("ro-image", {{"hello.txt", "hi\n"}});
  const std::string id = CreateVhostVolume("ro-disk", 0, {{"image", image}});
  const std::string staging = StagingPath("ro-disk");
  const std::string target = TargetPath("ro-pod");
  ASSERT_TRUE(Stage(id, staging, MountCap(Mode::SINGLE_NODE_READER_ONLY)).ok());
  Result<uint64_t> features = AskFeatures(SocketOf(id));
  ASSERT_TRUE(features.ok()) << features.status().ToString();
  EXPECT_TRUE(*features & (1ull << node::kVirtioBlkFRo));

  grpc::Status rw = Publish(id, staging, target, MountCap());
  EXPECT_EQ(rw.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << rw.error_message();
  EXPECT_FALSE(Exists(KataDir(target))) << "a refused publish writes nothing";

  ASSERT_TRUE(Publish(id, staging, target, MountCap(Mode::SINGLE_NODE_READER_ONLY)).ok());
  YAML::Node kata = YAML::Load(ReadAll(KataDir(target) + "/mountInfo.json"));
  ASSERT_EQ(kata["options"].size(), 1u);
  EXPECT_EQ(kata["options"][0].as<std::string>(), "ro");
  EXPECT_TRUE(YAML::Load(ReadAll(FirecrackerDrivePath(target)))["is_read_only"].as<bool>());
  EXPECT_NE(ReadAll(CloudHypervisorDiskPath(target)).find(",readonly=on"), std::string::npos);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
}

TEST_F(DriverExposureTest, BlockAccessPublishesAFileTargetAndRawDescriptors) {
  const std::string id = CreateVhostVolume("raw-disk");
  const std::string staging = StagingPath("raw-disk");
  const std::string target = TargetPath("raw-pod");
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, BlockCap()).ok());
  struct stat st;
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  YAML::Node kata = YAML::Load(ReadAll(KataDir(target) + "/mountInfo.json"));
  EXPECT_EQ(kata["fstype"].as<std::string>(), "") << "raw block: no file system";
  // Nothing formatted a Block volume.
  auto volume = driver().store->OpenVolume(id, true);
  ASSERT_TRUE(volume.ok());
  std::vector<char> head(4096);
  ASSERT_TRUE((*volume)->Read(0, head.size(), head.data()).ok());
  EXPECT_EQ(head, std::vector<char>(4096, 0));
  volume->reset();
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
}

TEST_F(DriverExposureTest, BadExposureRequestsAreRefusedAndChangeNothing) {
  // An unknown exposure in the StorageClass: INVALID_ARGUMENT naming it.
  grpc::Status st = CreateVolume(VolumeRequest("bad", 64 << 20, {{"exposure", "nbd"}}));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'nbd'"), std::string::npos) << st.error_message();

  // A volume_context asking for an exposure this node lacks: FAILED_PRECONDITION.
  const std::string id = MustCreateVolume("plain");
  v1::NodeStageVolumeRequest req;
  req.set_volume_id(id);
  req.set_staging_target_path(StagingPath("plain"));
  *req.mutable_volume_capability() = MountCap();
  (*req.mutable_volume_context())["stellarium.io/exposure"] = "ublk";
  v1::NodeStageVolumeResponse resp;
  st = node_->NodeStageVolume(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("ublk"), std::string::npos) << st.error_message();
  EXPECT_FALSE(driver().node_state->Get(id).has_value());

  // Staged one way, asked again another way: ALREADY_EXISTS, the first stays.
  const std::string vm = CreateVhostVolume("vm");
  const std::string staging = StagingPath("vm");
  ASSERT_TRUE(Stage(vm, staging, MountCap()).ok());
  req.set_volume_id(vm);
  req.set_staging_target_path(staging);
  (*req.mutable_volume_context())["stellarium.io/exposure"] = driver().devices->Name();
  st = node_->NodeStageVolume(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_TRUE(IsSocket(SocketOf(vm)));
  EXPECT_EQ(KubeletMounts(), std::vector<std::string>{});
  ASSERT_TRUE(Unstage(vm, staging).ok());
}

TEST_F(DriverExposureTest, RestartedDriverServesTheSameSocketAgain) {
  const std::string id = CreateVhostVolume("survivor");
  const std::string staging = StagingPath("survivor");
  const std::string target = TargetPath("survivor-pod");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  const std::string kata = ReadAll(KataDir(target) + "/mountInfo.json");

  StopServer();
  EXPECT_FALSE(AskFeatures(SocketOf(id)).ok()) << "nothing serves the socket while stopped";
  StartServer();

  Result<uint64_t> features = AskFeatures(SocketOf(id));
  ASSERT_TRUE(features.ok()) << "the restarted driver serves the staged volume again: "
                             << features.status().ToString();
  EXPECT_EQ(ReadAll(KataDir(target) + "/mountInfo.json"), kata) << "descriptors are kept";
  v1::NodeGetVolumeStatsRequest stats_req;
  stats_req.set_volume_id(id);
  stats_req.set_volume_path(target);
  v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(node_->NodeGetVolumeStats(Ctx().get(), stats_req, &stats).ok());
  EXPECT_FALSE(stats.volume_condition().abnormal()) << stats.volume_condition().message();
  ASSERT_EQ(stats.usage_size(), 1);
  EXPECT_EQ(stats.usage(0).total(), 64 << 20);
  // Stage and publish again are still idempotent, and the teardown works.
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
  EXPECT_FALSE(Exists(SocketOf(id)));
}

// A real guest on the socket the DRIVER serves: QEMU (TCG, microvm) connects to the
// staged volume's vhost-user-blk socket named in the published Firecracker/Kata
// descriptors, mounts the disk, hashes a known file and writes one. The driver is then
// restarted and a second guest (a restarted VMM) reads the file back through the
// restored back-end; finally the test finds the file in the volume through core.
class DriverGuestTest : public DriverExposureTest {
 protected:
  static void SetUpTestSuite() {
    if (!stellarium::testing::HaveProgram("qemu-system-x86_64")) return;
    guest_dir_ = stellarium::testing::DefaultGuestDir();
    build_ = stellarium::testing::BuildGuest(STELLARIUM_SOURCE_DIR, guest_dir_);
  }
  void SetUp() override {
    if (!stellarium::testing::HaveProgram("qemu-system-x86_64")) {
      GTEST_SKIP() << "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
    }
    ASSERT_EQ(build_.exit_code, 0) << "scripts/build-guest.sh failed:\n" << build_.output;
    DriverExposureTest::SetUp();
  }
  static inline std::string guest_dir_;
  static inline CommandResult build_;
};

TEST_F(DriverGuestTest, GuestBootsOnTheSocketTheDriverServes) {
  std::vector<char> pattern = stellarium::testing::PatternBytes(300 * 1024, 77);
  const std::string known(pattern.begin(), pattern.end());
  std::string image = MakeExt4Image("guest-image", {{"known.bin", known}});
  const std::string id = CreateVhostVolume("guest-disk", 0, {{"image", image}});
  const std::string staging = StagingPath("guest-disk");
  const std::string target = TargetPath("guest-pod");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  // The VMM takes the socket from the descriptor, as a runtime would.
  const std::string socket =
      YAML::Load(ReadAll(FirecrackerDrivePath(target)))["socket"].as<std::string>();
  ASSERT_EQ(socket, SocketOf(id));

  CommandResult r = stellarium::testing::BootGuest(
      guest_dir_, stellarium::testing::VhostUserDiskArgs(socket),
      stellarium::testing::HashAndWriteScript("written by a guest of the driver"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("GUEST-DONE"), std::string::npos) << r.output;
  EXPECT_EQ(stellarium::testing::GuestHash(r.output), stellarium::testing::Sha256Hex(known))
      << r.output;

  // The driver restarts; the VMM reconnects to the same socket and sees the write.
  StopServer();
  StartServer();
  r = stellarium::testing::BootGuest(
      guest_dir_, stellarium::testing::VhostUserDiskArgs(socket),
      "mount -t ext4 /dev/vda /mnt && echo \"GUEST-READ $(cat /mnt/from-guest.txt)\" && "
      "umount /mnt\n");
  EXPECT_NE(r.output.find("GUEST-READ written by a guest of the driver"), std::string::npos)
      << r.output;

  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
  auto volume = driver().store->OpenVolume(id, /*read_only=*/true);
  ASSERT_TRUE(volume.ok()) << volume.status().ToString();
  EXPECT_EQ(stellarium::testing::ReadFileThroughLoop(*volume, root_, "from-guest.txt"),
            "written by a guest of the driver\n");
}

}  // namespace
}  // namespace stellarium::csi::testing
