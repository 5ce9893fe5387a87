// Where staging and target paths may be (issue 18, "the kubelet directory itself is
// accepted"): strictly below --kubelet-dir, never the kubelet directory, its plugins or
// plugins_registry directory (also through a symlink), the driver's state directory or
// its store; and unpublish removes only the targets the driver created. Through the real
// driver over gRPC with real loop devices and mounts (root; skipped otherwise).
#include <sys/mount.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/csi/csi_fixture.h"

namespace stellarium::csi::testing {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

// "/a/b/." and "/a/b//" as mountinfo shows them: "/a/b".
std::string Normal(const std::string& path) {
  std::string out = fs::path(path).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

class CsiConfinementTest : public CsiDriverTest {
 protected:
  void SetUp() override {
    if (!CanUseLoopDevices()) GTEST_SKIP() << LoopSkipReason();
    CsiDriverTest::SetUp();
  }

  // Mounts stacked at exactly `path`.
  int MountsAt(const std::string& path) const {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string id, parent, devno, root, mount_point;
      f >> id >> parent >> devno >> root >> mount_point;
      if (mount_point == path) ++n;
    }
    return n;
  }
  bool IsMountPoint(const std::string& path) const { return MountsAt(path) > 0; }

  // A stage that must be refused. Should the driver take it (the bug guarded here), the
  // mount is undone by hand and forgotten, so the fixture still leaves no mount and no
  // loop device on the machine.
  void ExpectStageRefused(const std::string& id, const std::string& staging) {
    const int mounts = MountsAt(Normal(staging));
    grpc::Status st = Stage(id, staging, MountCap());
    EXPECT_EQ(st.error_code(), StatusCode::PERMISSION_DENIED)
        << staging << ": " << st.error_message();
    if (st.ok()) {
      ASSERT_TRUE(Unstage(id, staging).ok());
      return;
    }
    EXPECT_FALSE(driver().node_state->Get(id).has_value()) << "a refused stage was recorded";
    EXPECT_EQ(MountsAt(Normal(staging)), mounts) << staging;
  }

  // As above for a publish of a staged volume.
  void ExpectPublishRefused(const std::string& id, const std::string& staging,
                            const std::string& target) {
    const int mounts = MountsAt(Normal(target));
    grpc::Status st = Publish(id, staging, target, MountCap());
    EXPECT_EQ(st.error_code(), StatusCode::PERMISSION_DENIED)
        << target << ": " << st.error_message();
    if (st.ok()) {
      auto record = driver().node_state->Get(id);
      ASSERT_TRUE(record.has_value());
      for (const auto& [path, how] : record->targets) {
        while (::umount2(path.c_str(), MNT_DETACH) == 0) {
        }
      }
      record->targets.clear();
      ASSERT_TRUE(driver().node_state->Put(*record).ok());
      return;
    }
    EXPECT_EQ(MountsAt(Normal(target)), mounts) << target;
    EXPECT_TRUE(driver().node_state->Get(id)->targets.empty()) << "a refused publish was recorded";
  }
};

TEST_F(CsiConfinementTest, StagingAtTheKubeletDirectoryIsRefused) {
  std::string id = MustCreateVolume("kubelet-stage", 16 << 20);
  StagingPath("kubelet-stage");  // the kubelet's own tree exists
  for (const std::string& staging : {kubelet_, kubelet_ + "/", kubelet_ + "/.", kubelet_ + "//"}) {
    SCOPED_TRACE(staging);
    ExpectStageRefused(id, staging);
  }
  EXPECT_TRUE(fs::is_directory(kubelet_ + "/plugins/kubernetes.io/csi/staging/kubelet-stage"));
}

TEST_F(CsiConfinementTest, TargetAtTheKubeletDirectoryIsRefused) {
  std::string id = MustCreateVolume("kubelet-target", 16 << 20);
  std::string staging = StagingPath("kubelet-target");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ExpectPublishRefused(id, staging, kubelet_);
  EXPECT_TRUE(fs::is_directory(kubelet_));
  EXPECT_TRUE(Unstage(id, staging).ok()) << "the volume must still unstage";
  EXPECT_TRUE(fs::is_directory(staging));
}

// Unpublish of the kubelet directory removed it once it was empty.
TEST_F(CsiConfinementTest, UnpublishNeverRemovesTheKubeletDirectory) {
  std::string id = MustCreateVolume("kubelet-unpublish", 16 << 20);
  ASSERT_TRUE(fs::is_empty(kubelet_));
  EXPECT_EQ(Unpublish(id, kubelet_).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(fs::is_directory(kubelet_)) << "unpublish removed the kubelet directory";
  EXPECT_EQ(Unstage(id, kubelet_).error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(fs::is_directory(kubelet_));
}

TEST_F(CsiConfinementTest, PluginsDirectoriesAreRefused) {
  std::string id = MustCreateVolume("plugins", 16 << 20);
  std::string staging = StagingPath("plugins");
  fs::create_directories(kubelet_ + "/plugins_registry");
  ExpectStageRefused(id, kubelet_ + "/plugins");
  ExpectStageRefused(id, kubelet_ + "/plugins_registry");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ExpectPublishRefused(id, staging, kubelet_ + "/plugins");
  ExpectPublishRefused(id, staging, kubelet_ + "/plugins_registry/");
  // plugins_registry need not exist yet: the kubelet's path is refused all the same.
  fs::remove(kubelet_ + "/plugins_registry");
  ExpectPublishRefused(id, staging, kubelet_ + "/plugins_registry");
  EXPECT_FALSE(fs::exists(kubelet_ + "/plugins_registry")) << "the driver created it";
  EXPECT_TRUE(Unstage(id, staging).ok());
  EXPECT_TRUE(fs::is_directory(kubelet_ + "/plugins"));
}

TEST_F(CsiConfinementTest, SymlinksToTheKubeletDirectoryAreRefused) {
  std::string id = MustCreateVolume("links", 16 << 20);
  std::string staging = StagingPath("links");
  fs::create_directories(kubelet_ + "/pods/p1/volumes");
  fs::create_directory_symlink(kubelet_, kubelet_ + "/pods/p1/volumes/to-kubelet");
  fs::create_directory_symlink(kubelet_ + "/plugins", kubelet_ + "/pods/p1/volumes/to-plugins");
  ExpectStageRefused(id, kubelet_ + "/pods/p1/volumes/to-kubelet");
  ExpectStageRefused(id, kubelet_ + "/pods/p1/volumes/to-plugins");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ExpectPublishRefused(id, staging, kubelet_ + "/pods/p1/volumes/to-kubelet");
  ExpectPublishRefused(id, staging, kubelet_ + "/pods/p1/volumes/to-plugins");
  EXPECT_TRUE(Unstage(id, staging).ok());
}

// A node whose state directory and store lie in the kubelet's tree (a layout the chart
// does not use, but nothing forbids): neither they, anything in them, nor a directory
// holding them is a place for a mount.
class CsiConfinementOwnDirsTest : public CsiConfinementTest {
 protected:
  CsiConfinementOwnDirsTest() {
    state_subdir_ = "kubelet/plugins/csi.stellarium.io/state";
    store_subdir_ = "kubelet/plugins/csi.stellarium.io/store";
  }
};

TEST_F(CsiConfinementOwnDirsTest, StateDirectoryAndStoreAreRefused) {
  std::string id = MustCreateVolume("own-dirs", 16 << 20);
  const std::string own = kubelet_ + "/plugins/csi.stellarium.io";
  const std::string store = own + "/store";
  fs::create_directories(state_dir_ + "/kubelet-made");
  for (const std::string& path : {state_dir_, state_dir_ + "/kubelet-made", state_dir_ + "/staged",
                                  state_dir_ + "/new", store, store + "/new", own}) {
    SCOPED_TRACE(path);
    ExpectStageRefused(id, path);
  }
  std::string staging = StagingPath("own-dirs");
  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ExpectPublishRefused(id, staging, state_dir_ + "/fuse");
  ExpectPublishRefused(id, staging, state_dir_ + "/target");
  ExpectPublishRefused(id, staging, store);
  ExpectPublishRefused(id, staging, own);
  EXPECT_FALSE(fs::exists(state_dir_ + "/target")) << "the driver created it";
  // A sibling of the driver's directories in the same tree is fine.
  std::string target = own + "-sibling";
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  ASSERT_TRUE(Unpublish(id, target).ok());
  EXPECT_TRUE(Unstage(id, staging).ok());
}

// Unpublish took away any empty directory at the target: one the kubelet made, even the
// kubelet directory itself. It removes only a target the driver created.
TEST_F(CsiConfinementTest, UnpublishKeepsDirectoriesTheKubeletMade) {
  std::string id = MustCreateVolume("keep", 16 << 20);
  std::string staging = StagingPath("keep");
  std::string target = TargetPath("keep");
  fs::create_directories(target);  // made by the kubelet, not the driver

  // Never published there: nothing is the driver's.
  ASSERT_TRUE(Unpublish(id, target).ok());
  EXPECT_TRUE(fs::is_directory(target)) << "unpublish removed a directory it did not create";

  ASSERT_TRUE(Stage(id, staging, MountCap()).ok());
  ASSERT_TRUE(Publish(id, staging, target, MountCap()).ok());
  EXPECT_TRUE(IsMountPoint(target));
  ASSERT_TRUE(Unpublish(id, target).ok());
  EXPECT_FALSE(IsMountPoint(target));
  EXPECT_TRUE(fs::is_directory(target)) << "unpublish removed a directory it did not create";
  ASSERT_TRUE(Unpublish(id, target).ok()) << "a repeat is OK";
  EXPECT_TRUE(fs::is_directory(target));

  // A target the driver made goes with the unpublish, also across a driver restart.
  std::string made = TargetPath("made");
  ASSERT_FALSE(fs::exists(made));
  ASSERT_TRUE(Publish(id, staging, made, MountCap()).ok());
  StopServer();
  StartServer();
  ASSERT_TRUE(Unpublish(id, made).ok());
  EXPECT_FALSE(fs::exists(made)) << "the driver's own target was left behind";

  // Block access: the same for a file at the target.
  ASSERT_TRUE(Unstage(id, staging).ok());
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  std::string file = TargetPath("keep-block");
  { std::ofstream(file) << ""; }
  ASSERT_TRUE(Publish(id, staging, file, BlockCap()).ok());
  ASSERT_TRUE(Unpublish(id, file).ok());
  EXPECT_TRUE(fs::is_regular_file(file)) << "unpublish removed a file it did not create";
  ASSERT_TRUE(Unstage(id, staging).ok());
  EXPECT_TRUE(fs::is_directory(staging)) << "unstage removed the kubelet's staging directory";
}

// A publish that fails after the driver made the target takes the target away again.
// (The microVM descriptors cannot be written here: the Kata directory is a file.)
TEST_F(CsiConfinementTest, FailedPublishRemovesTheTargetItMade) {
  v1::Volume volume;
  ASSERT_TRUE(
      CreateVolume(VolumeRequest("fail", 16 << 20, {{"exposure", "vhost-user-blk"}}), &volume)
          .ok());
  const std::string& id = volume.volume_id();
  std::string staging = StagingPath("fail");
  ASSERT_TRUE(Stage(id, staging, BlockCap()).ok());
  fs::remove_all(root_ + "/kata");
  { std::ofstream(root_ + "/kata") << "not a directory"; }
  std::string target = TargetPath("fail");
  grpc::Status st = Publish(id, staging, target, BlockCap());
  ASSERT_FALSE(st.ok());
  EXPECT_FALSE(fs::exists(target)) << st.error_message();
  ASSERT_TRUE(Unstage(id, staging).ok());
}

}  // namespace
}  // namespace stellarium::csi::testing
