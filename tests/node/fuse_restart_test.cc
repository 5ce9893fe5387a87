// Staged volumes survive restarts of the driver: real stellarium-csi processes over
// gRPC on a unix socket, a real stellarium-fd-holder process, real FUSE, loop devices
// and ext4. The driver is stopped with SIGTERM (it drains its FUSE workers) or killed
// with SIGKILL, a fresh driver process takes over the same FUSE connection, and the
// mount on the volume's loop device keeps working: files written before are read back
// (O_DIRECT, so the bytes come through the device, not the page cache), new files are
// written and fsynced, and exactly one loop device backs the volume. Then the volume
// is unstaged, staged again on yet another driver process, its files are there, and
// `e2fsck -fn` on the volume exported from the store is clean.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "core/store.h"
#include "core/tree_image.h"
#include "csi.grpc.pb.h"
#include "csi/node/block_device/fd_holder.h"
#include "csi/node/block_device/loop_control.h"
#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::csi::v1;
using stellarium::testing::BackgroundCommand;
using stellarium::testing::PatternBytes;
using stellarium::testing::RunCommand;
using stellarium::testing::SpawnLogged;

constexpr size_t kMiB = 1 << 20;

// Writes `data` to `path` (created) in `chunk`-sized writes, O_DIRECT when asked, then
// fsyncs. Returns "" or what failed.
std::string WriteFile(const std::string& path, const std::vector<char>& data, size_t chunk,
                      bool direct) {
  // O_CLOEXEC: a driver spawned meanwhile must not inherit it (it would keep the
  // target busy).
  int fd =
      open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (direct ? O_DIRECT : 0), 0644);
  if (fd < 0) return "open " + path + ": " + strerror(errno);
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, chunk) != 0) return "posix_memalign";
  std::string err;
  for (size_t off = 0; off < data.size() && err.empty(); off += chunk) {
    size_t n = std::min(chunk, data.size() - off);
    memcpy(buf, data.data() + off, n);
    if (pwrite(fd, buf, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n)) {
      err = "write " + path + ": " + strerror(errno);
    }
  }
  if (err.empty() && fsync(fd) != 0) err = "fsync " + path + ": " + strerror(errno);
  free(buf);
  close(fd);
  return err;
}

// Reads the whole file with O_DIRECT (through the device, not the page cache).
std::vector<char> ReadDirect(const std::string& path, size_t size) {
  std::vector<char> out;
  int fd = open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return out;
  size_t padded = (size + 4095) / 4096 * 4096;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, padded) != 0) return out;
  ssize_t n = pread(fd, buf, padded, 0);
  if (n >= static_cast<ssize_t>(size))
    out.assign(static_cast<char*>(buf), static_cast<char*>(buf) + size);
  free(buf);
  close(fd);
  return out;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool KernelHasFuseResend() {
  struct utsname u;
  if (uname(&u) != 0) return false;
  int major = 0, minor = 0;
  if (sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > 6 || (major == 6 && minor >= 9);
}

class FuseRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = stellarium::testing::NodeTestsUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    if (!stellarium::testing::HaveProgram("e2fsck")) GTEST_SKIP() << "needs e2fsck";
    char tmpl[] = "/tmp/fr-XXXXXX";  // short: unix socket paths have 107 bytes at most
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    for (const char* d : {"kubelet", "images", "state"}) fs::create_directories(root_ + "/" + d);
    ASSERT_NO_FATAL_FAILURE(StartHolder());
  }

  void StartHolder() {
    holder_ = SpawnLogged({STELLARIUM_FD_HOLDER_PATH, "--socket", root_ + "/state/fd-holder.sock"},
                          root_ + "/holder.log");
    ASSERT_GT(holder_, 0);
    // Listening once a client can connect (a stale socket file may still be there).
    for (int i = 0; i < 500; ++i) {
      if (FdHolderGet(root_ + "/state/fd-holder.sock", "probe").status().code() ==
          StatusCode::kNotFound) {
        return;
      }
      usleep(10000);
    }
    FAIL() << "the holder did not start:\n" << ReadText(root_ + "/holder.log");
  }

  void StopHolder() {
    if (holder_ <= 0) return;
    kill(holder_, SIGTERM);
    waitpid(holder_, nullptr, 0);
    holder_ = -1;
  }

  void TearDown() override {
    if (root_.empty()) return;
    if (driver_ > 0) {
      for (const auto& [id, staging] : staged_) (void)Unstage(id, staging);
      StopDriver(SIGTERM);
    }
    StopHolder();
    // Leave the machine as found even when a test failed half-way: every mount under
    // the test's directory (targets, staging paths, the FUSE mount), deepest first.
    std::vector<std::string> mounts;
    std::ifstream mountinfo("/proc/self/mountinfo");
    std::string line;
    while (std::getline(mountinfo, line)) {
      std::istringstream f(line);
      std::string id, parent, devno, mroot, mount_point;
      f >> id >> parent >> devno >> mroot >> mount_point;
      if (mount_point.rfind(root_ + "/", 0) == 0) mounts.push_back(mount_point);
    }
    std::sort(mounts.begin(), mounts.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (const auto& m : mounts) umount2(m.c_str(), MNT_DETACH);
    auto loops = ListLoops();
    if (loops.ok()) {
      for (const auto& d : *loops) {
        if (d.backing_file.rfind(root_ + "/", 0) == 0) (void)DetachLoop(d.path, /*lazy=*/true);
      }
    }
    if (HasFailure()) {
      std::cerr << "---- driver log ----\n"
                << ReadText(root_ + "/driver.log") << "---- holder log ----\n"
                << ReadText(root_ + "/holder.log");
    }
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  void StartDriver() {
    ASSERT_EQ(driver_, -1);
    driver_ = SpawnLogged(
        {STELLARIUM_CSI_PATH, "--endpoint", "unix://" + root_ + "/csi.sock", "--node-id", "node-1",
         "--store", root_ + "/store", "--state-dir", root_ + "/state", "--kubelet-dir",
         root_ + "/kubelet", "--import-root", root_ + "/images", "--log-level", "info"},
        root_ + "/driver.log");
    ASSERT_GT(driver_, 0);
    auto channel =
        grpc::CreateChannel("unix://" + root_ + "/csi.sock", grpc::InsecureChannelCredentials());
    identity_ = v1::Identity::NewStub(channel);
    controller_ = v1::Controller::NewStub(channel);
    node_ = v1::Node::NewStub(channel);
    // Ready when Probe says so; a driver that exits or never gets ready fails the test.
    for (int i = 0; i < 600; ++i) {
      int status;
      ASSERT_EQ(waitpid(driver_, &status, WNOHANG), 0) << "the driver exited:\n"
                                                       << ReadText(root_ + "/driver.log");
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
      v1::ProbeRequest req;
      v1::ProbeResponse resp;
      if (identity_->Probe(&ctx, req, &resp).ok() && resp.ready().value()) return;
      usleep(100000);
    }
    FAIL() << "the driver did not get ready:\n" << ReadText(root_ + "/driver.log");
  }

  void StopDriver(int sig) {
    if (driver_ <= 0) return;
    kill(driver_, sig);
    int status = 0;
    waitpid(driver_, &status, 0);
    if (sig == SIGTERM) {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    }
    driver_ = -1;
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return ctx;
  }

  static v1::VolumeCapability Cap(bool block) {
    v1::VolumeCapability cap;
    if (block) {
      cap.mutable_block();
    } else {
      cap.mutable_mount()->set_fs_type("ext4");
    }
    cap.mutable_access_mode()->set_mode(v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    return cap;
  }

  // A volume imported from an ext4 image holding hello.txt.
  std::string CreateVolumeFromImage() {
    std::string tree = root_ + "/images/tree";
    fs::create_directories(tree);
    std::ofstream(tree + "/hello.txt") << kHello;
    std::string image = root_ + "/images/base.img";
    Status st = BuildExt4FromTree(tree, 64 * kMiB, "restart", image);
    EXPECT_TRUE(st.ok()) << st.ToString();
    v1::CreateVolumeRequest req;
    req.set_name("pvc-restart");
    *req.add_volume_capabilities() = Cap(false);
    (*req.mutable_parameters())["image"] = image;
    v1::CreateVolumeResponse resp;
    grpc::Status gs = controller_->CreateVolume(Ctx().get(), req, &resp);
    EXPECT_TRUE(gs.ok()) << gs.error_message();
    return resp.volume().volume_id();
  }

  v1::Volume CreateBlankVolume(const std::string& name, int64_t bytes) {
    v1::CreateVolumeRequest req;
    req.set_name(name);
    req.mutable_capacity_range()->set_required_bytes(bytes);
    *req.add_volume_capabilities() = Cap(true);
    v1::CreateVolumeResponse resp;
    grpc::Status gs = controller_->CreateVolume(Ctx().get(), req, &resp);
    EXPECT_TRUE(gs.ok()) << gs.error_message();
    return resp.volume();
  }

  grpc::Status Stage(const std::string& id, const std::string& staging, bool block) {
    v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    *req.mutable_volume_capability() = Cap(block);
    v1::NodeStageVolumeResponse resp;
    grpc::Status st = node_->NodeStageVolume(Ctx().get(), req, &resp);
    if (st.ok()) staged_[id] = staging;
    return st;
  }
  grpc::Status Unstage(const std::string& id, const std::string& staging) {
    v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    v1::NodeUnstageVolumeResponse resp;
    grpc::Status st = node_->NodeUnstageVolume(Ctx().get(), req, &resp);
    if (st.ok()) staged_.erase(id);
    return st;
  }
  grpc::Status Publish(const std::string& id, const std::string& staging, const std::string& target,
                       bool block) {
    v1::NodePublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    req.set_target_path(target);
    *req.mutable_volume_capability() = Cap(block);
    v1::NodePublishVolumeResponse resp;
    return node_->NodePublishVolume(Ctx().get(), req, &resp);
  }
  grpc::Status Unpublish(const std::string& id, const std::string& target) {
    v1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_target_path(target);
    v1::NodeUnpublishVolumeResponse resp;
    return node_->NodeUnpublishVolume(Ctx().get(), req, &resp);
  }

  std::string StagingPath(const std::string& name) {
    std::string p = root_ + "/kubelet/plugins/kubernetes.io/csi/staging/" + name;
    fs::create_directories(p);
    return p;
  }

  // The loop devices backed by the volume's file in the driver's FUSE mount.
  size_t LoopsBacking(const std::string& id) {
    auto loops = FindLoopsBackedBy(root_ + "/state/fuse/" + id);
    EXPECT_TRUE(loops.ok()) << loops.status().ToString();
    return loops.ok() ? loops->size() : 0;
  }

  // Exports the volume from the store (no driver may run) and checks it with e2fsck.
  void ExpectCleanExport(const std::string& id) {
    auto store = Store::Open({.path = root_ + "/store"});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto vol = (*store)->OpenVolume(id, /*read_only=*/true);
    ASSERT_TRUE(vol.ok()) << vol.status().ToString();
    std::string image = root_ + "/export.img";
    std::ofstream out(image, std::ios::binary);
    std::vector<char> buf(4 * kMiB);
    for (uint64_t off = 0; off < (*vol)->size(); off += buf.size()) {
      size_t n = std::min<uint64_t>(buf.size(), (*vol)->size() - off);
      ASSERT_TRUE((*vol)->Read(off, n, buf.data()).ok());
      out.write(buf.data(), static_cast<std::streamsize>(n));
    }
    out.close();
    auto fsck = RunCommand({"e2fsck", "-fn", image});
    EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  }

  // The filesystem-mode scenario, stopping the first driver with `sig`.
  void RunFilesystemScenario(int sig, bool direct) {
    ASSERT_NO_FATAL_FAILURE(StartDriver());
    const std::string id = CreateVolumeFromImage();
    ASSERT_FALSE(id.empty());
    const std::string staging = StagingPath("restart");
    grpc::Status st = Stage(id, staging, false);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(ReadText(staging + "/hello.txt"), kHello);
    const std::vector<char> before = PatternBytes(8 * kMiB, 1);
    ASSERT_EQ(WriteFile(staging + "/before.bin", before, direct ? kMiB : 64 * 1024, direct), "");

    StopDriver(sig);
    ASSERT_NO_FATAL_FAILURE(StartDriver());
    // The new driver took over the connection and the device (did not make new ones).
    EXPECT_NE(ReadText(root_ + "/driver.log").find("resumed the FUSE connection"),
              std::string::npos);
    EXPECT_TRUE(fs::exists(staging + "/hello.txt"));
    EXPECT_EQ(ReadDirect(staging + "/before.bin", before.size()), before);
    const std::vector<char> after = PatternBytes(4 * kMiB, 2);
    ASSERT_EQ(WriteFile(staging + "/after.bin", after, direct ? kMiB : 64 * 1024, direct), "");
    EXPECT_EQ(ReadDirect(staging + "/after.bin", after.size()), after);
    EXPECT_EQ(LoopsBacking(id), 1u);
    // The kubelet stages again after a driver restart: same device, nothing new.
    st = Stage(id, staging, false);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(LoopsBacking(id), 1u);

    st = Unstage(id, staging);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(LoopsBacking(id), 0u);
    StopDriver(SIGTERM);

    ASSERT_NO_FATAL_FAILURE(StartDriver());
    st = Stage(id, staging, false);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(ReadText(staging + "/hello.txt"), kHello);
    EXPECT_EQ(ReadDirect(staging + "/before.bin", before.size()), before);
    EXPECT_EQ(ReadDirect(staging + "/after.bin", after.size()), after);
    st = Unstage(id, staging);
    ASSERT_TRUE(st.ok()) << st.error_message();
    StopDriver(SIGTERM);
    ExpectCleanExport(id);
  }

  // A blank volume staged with Mount access (ext4, formatted at this first stage) holding
  // an 8 MiB file, fsynced, whose cached pages are dropped: reading it goes to the driver.
  struct MountedVolume {
    std::string id, staging, file, device, backing_file;
  };
  MountedVolume StageMountedVolume(const std::string& name) {
    MountedVolume m;
    m.id = CreateBlankVolume(name, 64 * kMiB).volume_id();
    EXPECT_FALSE(m.id.empty());
    m.staging = StagingPath(name);
    grpc::Status st = Stage(m.id, m.staging, false);
    EXPECT_TRUE(st.ok()) << st.error_message();
    m.file = m.staging + "/data.bin";
    EXPECT_EQ(WriteFile(m.file, PatternBytes(8 * kMiB, 9), kMiB, false), "");
    int fd = open(m.file.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
    m.backing_file = root_ + "/state/fuse/" + m.id;
    auto loops = FindLoopsBackedBy(m.backing_file);
    EXPECT_TRUE(loops.ok() && loops->size() == 1u);
    if (loops.ok() && !loops->empty()) m.device = (*loops)[0].path;
    return m;
  }

  // Programs that ask the driver for something (a block of the volume's file system not
  // in the page cache, a statfs and a listing of the FUSE mount): each waits while no
  // driver serves the connection.
  static std::vector<std::unique_ptr<BackgroundCommand>> StartWaitingTools(
      const MountedVolume& m, const std::string& fuse_mount) {
    std::vector<std::unique_ptr<BackgroundCommand>> tools;
    for (const std::vector<std::string>& argv :
         std::vector<std::vector<std::string>>{{"dd", "if=" + m.file, "of=/dev/null", "bs=4096",
                                                "count=1", "skip=1000", "iflag=direct"},
                                               {"stat", "-f", fuse_mount},
                                               {"ls", fuse_mount}}) {
      tools.push_back(std::make_unique<BackgroundCommand>(argv));
    }
    return tools;
  }

  static constexpr char kHello[] = "hello from the golden image\n";
  std::string root_;
  pid_t holder_ = -1;
  pid_t driver_ = -1;
  std::map<std::string, std::string> staged_;  // volume id -> staging path
  std::unique_ptr<v1::Identity::Stub> identity_;
  std::unique_ptr<v1::Controller::Stub> controller_;
  std::unique_ptr<v1::Node::Stub> node_;
};

TEST_F(FuseRestartTest, MountSurvivesSigtermOfTheDriver) {
  RunFilesystemScenario(SIGTERM, /*direct=*/false);
}

TEST_F(FuseRestartTest, MountSurvivesSigkillOfTheDriver) {
  RunFilesystemScenario(SIGKILL, /*direct=*/false);
}

TEST_F(FuseRestartTest, MountSurvivesSigkillWith1MiBODirectWrites) {
  RunFilesystemScenario(SIGKILL, /*direct=*/true);
}

TEST_F(FuseRestartTest, MountSurvivesSigtermWith1MiBODirectWrites) {
  RunFilesystemScenario(SIGTERM, /*direct=*/true);
}

// Block mode: the device bind-mounted on the target file keeps working after a kill.
TEST_F(FuseRestartTest, PublishedBlockDeviceSurvivesSigkill) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const v1::Volume vol = CreateBlankVolume("pvc-block", 32 * kMiB);
  const std::string id = vol.volume_id();
  ASSERT_FALSE(id.empty());
  const std::string staging = StagingPath("block");
  std::string parent = root_ + "/kubelet/pods/p1/volumes";
  fs::create_directories(parent);
  const std::string target = parent + "/dev";
  ASSERT_TRUE(Stage(id, staging, true).ok());
  grpc::Status st = Publish(id, staging, target, true);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::vector<char> first = PatternBytes(4 * kMiB, 3);
  ASSERT_EQ(WriteFile(target, first, kMiB, true), "");

  StopDriver(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  EXPECT_EQ(ReadDirect(target, first.size()), first);
  const std::vector<char> second = PatternBytes(2 * kMiB, 4);
  ASSERT_EQ(WriteFile(target, second, kMiB, true), "");
  EXPECT_EQ(ReadDirect(target, second.size()), second);
  EXPECT_EQ(LoopsBacking(id), 1u);
  ASSERT_TRUE(Unpublish(id, target).ok());
  st = Unstage(id, staging);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(LoopsBacking(id), 0u);
  StopDriver(SIGTERM);

  auto store = Store::Open({.path = root_ + "/store"});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto v = (*store)->OpenVolume(id, true);
  ASSERT_TRUE(v.ok());
  std::vector<char> got(4 * kMiB);
  ASSERT_TRUE((*v)->Read(0, got.size(), got.data()).ok());
  std::vector<char> want = first;
  memcpy(want.data(), second.data(), second.size());
  EXPECT_EQ(got, want);
}

// A request the killed driver had read but not answered is sent again by the kernel
// (FUSE_NOTIFY_RESEND) to the next driver: a writer busy during the kill finishes.
TEST_F(FuseRestartTest, WriterBusyDuringSigkillCompletes) {
  if (!KernelHasFuseResend()) {
    GTEST_SKIP() << "needs Linux 6.9+ (FUSE_NOTIFY_RESEND); on older kernels an I/O in "
                    "flight when the driver is killed never completes (docs/EXPOSURE.md)";
  }
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const v1::Volume vol = CreateBlankVolume("pvc-busy", 64 * kMiB);
  const std::string id = vol.volume_id();
  const std::string staging = StagingPath("busy");
  std::string parent = root_ + "/kubelet/pods/p2/volumes";
  fs::create_directories(parent);
  const std::string target = parent + "/dev";
  ASSERT_TRUE(Stage(id, staging, true).ok());
  ASSERT_TRUE(Publish(id, staging, target, true).ok());

  // The writer rewrites the whole device with 1 MiB O_DIRECT writes until told to stop,
  // then fsyncs; every pass writes the same bytes.
  const std::vector<char> data = PatternBytes(64 * kMiB, 5);
  std::atomic<bool> stop{false};
  std::atomic<int> passes{0};
  std::string writer_error;
  std::thread writer([&] {
    while (!stop.load() || passes.load() == 0) {
      writer_error = WriteFile(target, data, kMiB, true);
      if (!writer_error.empty()) return;
      ++passes;
    }
  });
  usleep(200000);  // let it get going (any moment will do)
  StopDriver(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  stop = true;
  // The kernel accepted the request to resend what the killed driver had read.
  EXPECT_EQ(ReadText(root_ + "/driver.log").find("cannot resend"), std::string::npos);
  writer.join();  // hangs forever if a lost request is never answered
  EXPECT_EQ(writer_error, "");
  EXPECT_EQ(ReadDirect(target, data.size()), data);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
}

// No holder: the driver works and says clearly that volumes will not survive it.
TEST_F(FuseRestartTest, WithoutAHolderTheDriverWorksAndSaysSo) {
  StopHolder();
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  EXPECT_NE(ReadText(root_ + "/driver.log").find("no fd holder listens on"), std::string::npos);
  const v1::Volume vol = CreateBlankVolume("pvc-alone", 16 * kMiB);
  const std::string staging = StagingPath("alone");
  std::string parent = root_ + "/kubelet/pods/p3/volumes";
  fs::create_directories(parent);
  const std::string target = parent + "/dev";
  ASSERT_TRUE(Stage(vol.volume_id(), staging, true).ok());
  ASSERT_TRUE(Publish(vol.volume_id(), staging, target, true).ok());
  const std::vector<char> data = PatternBytes(2 * kMiB, 6);
  ASSERT_EQ(WriteFile(target, data, kMiB, true), "");
  EXPECT_EQ(ReadDirect(target, data.size()), data);
  ASSERT_TRUE(Unpublish(vol.volume_id(), target).ok());
  ASSERT_TRUE(Unstage(vol.volume_id(), staging).ok());
  EXPECT_EQ(LoopsBacking(vol.volume_id()), 0u);
}

// The holder restarts while the driver runs: the driver deposits the fd again, so a
// later driver restart is still survived.
TEST_F(FuseRestartTest, DriverDepositsAgainWhenTheHolderRestarts) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const v1::Volume vol = CreateBlankVolume("pvc-again", 16 * kMiB);
  const std::string id = vol.volume_id();
  const std::string staging = StagingPath("again");
  std::string parent = root_ + "/kubelet/pods/p4/volumes";
  fs::create_directories(parent);
  const std::string target = parent + "/dev";
  ASSERT_TRUE(Stage(id, staging, true).ok());
  ASSERT_TRUE(Publish(id, staging, target, true).ok());
  StopHolder();  // it closes what it held; the driver's own fd keeps the connection
  ASSERT_NO_FATAL_FAILURE(StartHolder());
  const std::string socket = root_ + "/state/fd-holder.sock";
  bool held = false;
  for (int i = 0; i < 300 && !held; ++i) {  // the driver retries once a second
    auto got = FdHolderGet(socket, "fuse");
    if (got.ok()) {
      close(got->fd);
      held = true;
    } else {
      usleep(100000);
    }
  }
  ASSERT_TRUE(held) << "the driver did not deposit its fd with the new holder";
  const std::vector<char> data = PatternBytes(2 * kMiB, 7);
  ASSERT_EQ(WriteFile(target, data, kMiB, true), "");
  StopDriver(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  EXPECT_EQ(ReadDirect(target, data.size()), data);
  EXPECT_EQ(LoopsBacking(id), 1u);
  ASSERT_TRUE(Unpublish(id, target).ok());
  ASSERT_TRUE(Unstage(id, staging).ok());
}

// While the driver is down, `losetup` of a volume's device (LOOP_GET_STATUS64, what
// `losetup -a` asks for each device) and `ls -l` of the state directory (a stat of the
// FUSE mount without its access time) return at once: the kernel answers them from the
// attributes the driver gave it. They used to wait for the next driver once the old
// driver's 1 s attribute time had passed (a node script's `losetup -a` hung as long as
// the driver was down).
TEST_F(FuseRestartTest, LosetupAndLsOfTheStateDirDoNotWaitForARestartingDriver) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const MountedVolume m = StageMountedVolume("nowait");
  ASSERT_FALSE(m.device.empty());
  for (int sig : {SIGKILL, SIGTERM}) {
    SCOPED_TRACE(sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    // Written and listed just before the stop: the kernel then asks again for the
    // file's size and times and the mount's access time (neither is what these need).
    ASSERT_EQ(WriteFile(m.staging + "/recent.bin", PatternBytes(kMiB, 10), kMiB, false), "");
    ASSERT_EQ(RunCommand({"ls", root_ + "/state/fuse"}).exit_code, 0);
    StopDriver(sig);
    usleep(1'500'000);  // past the attribute time the driver used to give (1 s)
    BackgroundCommand losetup({"losetup", m.device});
    BackgroundCommand ls_state({"ls", "-l", root_ + "/state"});
    const bool losetup_done = losetup.WaitFor(5);
    const bool ls_done = ls_state.WaitFor(5);
    ASSERT_NO_FATAL_FAILURE(StartDriver());  // also ends the waits of a failing run
    EXPECT_TRUE(losetup_done) << losetup.command() << " waited for the driver";
    EXPECT_TRUE(ls_done) << ls_state.command() << " waited for the driver";
    EXPECT_EQ(losetup.exit_code(), 0);
    EXPECT_EQ(ls_state.exit_code(), 0);
  }
  ASSERT_TRUE(Unstage(m.id, m.staging).ok());
}

// What does go to the driver while it is down (a read of an uncached block through the
// loop device, a statfs and a listing of the FUSE mount) waits -- I/O is paused, not
// failed -- and is answered soon after the new driver is up, never left hanging.
TEST_F(FuseRestartTest, WaitingRequestsAreAnsweredSoonAfterTheDriverIsBack) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const MountedVolume m = StageMountedVolume("waits");
  for (int sig : {SIGKILL, SIGTERM}) {
    SCOPED_TRACE(sig == SIGKILL ? "SIGKILL" : "SIGTERM");
    StopDriver(sig);
    usleep(1'500'000);
    auto tools = StartWaitingTools(m, root_ + "/state/fuse");
    for (auto& t : tools) EXPECT_FALSE(t->WaitFor(1)) << t->command() << " did not wait";
    // Waits when the volume was written since the kernel last asked for its size.
    tools.push_back(
        std::make_unique<BackgroundCommand>(std::vector<std::string>{"stat", m.backing_file}));
    ASSERT_NO_FATAL_FAILURE(StartDriver());  // returns once the driver answers Probe
    for (auto& t : tools) {
      EXPECT_TRUE(t->WaitFor(10)) << t->command() << " still waits 10 s after the driver is back";
      EXPECT_EQ(t->exit_code(), 0) << t->command();
    }
  }
  ASSERT_TRUE(Unstage(m.id, m.staging).ok());
}

// The driver never comes back (the fd holder keeps the connection): what waits, waits
// until the admin aborts the connection the way docs/troubleshooting.md says, here with
// `umount -f` of the FUSE mount (no fusectl needed); then every wait ends with an error.
TEST_F(FuseRestartTest, AbortingTheConnectionEndsTheWaitsWhenTheDriverNeverReturns) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const MountedVolume m = StageMountedVolume("gone");
  StopDriver(SIGKILL);
  usleep(1'500'000);
  const std::string fuse_mount = root_ + "/state/fuse";
  auto tools = StartWaitingTools(m, fuse_mount);
  for (auto& t : tools) EXPECT_FALSE(t->WaitFor(1)) << t->command() << " did not wait";
  // Fails with "target is busy" (the loop device holds a file) after aborting.
  (void)RunCommand({"umount", "-f", "--no-canonicalize", fuse_mount});
  for (auto& t : tools) {
    EXPECT_TRUE(t->WaitFor(5)) << t->command() << " still waits after the abort";
    EXPECT_NE(t->exit_code(), 0) << t->command() << " succeeded on an aborted connection";
  }
  BackgroundCommand stat_file({"stat", m.backing_file});
  EXPECT_TRUE(stat_file.WaitFor(5));
}

// The node plugin uninstalled (the node pod deleted: driver and fd holder stop): no
// process holds the connection, so the kernel ends it and nothing waits; I/O fails.
TEST_F(FuseRestartTest, NothingWaitsOnceTheDriverAndTheHolderAreGone) {
  ASSERT_NO_FATAL_FAILURE(StartDriver());
  const MountedVolume m = StageMountedVolume("uninstalled");
  StopDriver(SIGTERM);
  StopHolder();
  auto tools = StartWaitingTools(m, root_ + "/state/fuse");
  tools.push_back(
      std::make_unique<BackgroundCommand>(std::vector<std::string>{"losetup", m.device}));
  tools.push_back(
      std::make_unique<BackgroundCommand>(std::vector<std::string>{"stat", m.backing_file}));
  for (auto& t : tools) EXPECT_TRUE(t->WaitFor(5)) << t->command() << " waits for nobody";
  EXPECT_NE(tools[0]->exit_code(), 0) << "a read of the volume succeeded with no driver";
}

// The holder on its own (in this process, on a thread): a pipe's write end deposited,
// taken back and used; bad requests refused with the entry named; nothing changes.
TEST(FdHolderTest, HoldsHandsBackAndRefusesBadRequests) {
  char tmpl[] = "/tmp/fh-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string sock = std::string(tmpl) + "/h.sock";
  EXPECT_EQ(FdHolderGet(sock, "fuse").status().code(), StatusCode::kUnavailable);
  auto server = FdHolderServer::Listen(sock);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  struct stat st;
  ASSERT_EQ(stat(sock.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(FdHolderServer::Listen(sock).status().code(), StatusCode::kFailedPrecondition);
  int stop = eventfd(0, EFD_CLOEXEC);
  std::thread t([&] { EXPECT_TRUE((*server)->Run(stop).ok()); });

  int p[2];
  ASSERT_EQ(pipe(p), 0);
  EXPECT_EQ(FdHolderGet(sock, "fuse").status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(FdHolderPut(sock, "fuse", p[1], "payload").ok());
  close(p[1]);  // only the holder has the write end now
  auto got = FdHolderGet(sock, "fuse");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->payload, "payload");
  ASSERT_EQ(write(got->fd, "x", 1), 1);
  close(got->fd);
  char c = 0;
  ASSERT_EQ(read(p[0], &c, 1), 1);
  EXPECT_EQ(c, 'x');

  Status bad = FdHolderPut(sock, "no/slash", p[0], "");
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("no/slash"), std::string::npos) << bad.message();
  EXPECT_EQ(FdHolderPut(sock, "big", p[0], std::string(kFdHolderMaxPayload + 1, 'x')).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(FdHolderPut(sock, "nofd", -1, "").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*server)->held(), 1u);  // the refused requests changed nothing

  ASSERT_TRUE(FdHolderDrop(sock, "fuse").ok());
  EXPECT_EQ((*server)->held(), 0u);
  // Dropped: the pipe's last write end is closed, so the read end sees end of file.
  EXPECT_EQ(read(p[0], &c, 1), 0);
  EXPECT_TRUE(FdHolderDrop(sock, "fuse").ok());  // idempotent

  uint64_t one = 1;
  ASSERT_EQ(write(stop, &one, sizeof(one)), 8);
  t.join();
  close(stop);
  close(p[0]);
  server->reset();
  std::error_code ec;
  fs::remove_all(tmpl, ec);
}

}  // namespace
}  // namespace stellarium::node
