// FuseBlockServer + loop devices, for real: a FUSE mount, loop devices with direct I/O,
// mkfs.ext4, ext4 mounts, O_DIRECT writes. The backend is MemBlockIo (a test double for
// the store only); volume_exposure_test.cc runs the same path over a core Volume.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"
#include "tests/node/test_util.h"
#include "tests/thread_names.h"

namespace stellarium::node {
namespace {

using stellarium::testing::BackgroundCommand;
using stellarium::testing::HaveProgram;
using stellarium::testing::MemBlockIo;
using stellarium::testing::PatternBytes;
using stellarium::testing::RunCommand;
using stellarium::testing::TempDir;

constexpr uint64_t kMiB = 1 << 20;

class FuseLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = stellarium::testing::NodeTestsUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    auto server = FuseBlockServer::Start({.mountpoint = tmp_.path() + "/fuse"});
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server);
  }
  void TearDown() override {
    for (const auto& dir : mounted_) umount2(dir.c_str(), MNT_DETACH);
    for (const auto& dev : loops_) (void)DetachLoop(dev);
    server_.reset();
  }
  LoopDevice Attach(const std::string& file, bool direct_io, bool read_only = false) {
    auto d = AttachLoop(file, {.read_only = read_only, .direct_io = direct_io});
    EXPECT_TRUE(d.ok()) << d.status().ToString();
    if (!d.ok()) return {};
    loops_.push_back(d->path);
    return *d;
  }
  void Mount(const std::string& dev, const std::string& dir) {
    mkdir(dir.c_str(), 0755);
    ASSERT_EQ(mount(dev.c_str(), dir.c_str(), "ext4", 0, nullptr), 0)
        << "mount " << dev << ": " << strerror(errno);
    mounted_.push_back(dir);
  }
  void Unmount(const std::string& dir) {
    ASSERT_EQ(umount2(dir.c_str(), 0), 0) << "umount " << dir << ": " << strerror(errno);
    mounted_.erase(std::remove(mounted_.begin(), mounted_.end(), dir), mounted_.end());
  }
  void Detach(const std::string& dev) {
    ASSERT_TRUE(DetachLoop(dev).ok());
    loops_.erase(std::remove(loops_.begin(), loops_.end(), dev), loops_.end());
  }

  TempDir tmp_;
  std::unique_ptr<FuseBlockServer> server_;
  std::vector<std::string> loops_;
  std::vector<std::string> mounted_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteFileSynced(const std::string& path, const std::string& content) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
}

TEST_F(FuseLoopTest, ServesVolumeAsFileOfItsSizeWithoutReadingIt) {
  auto io = std::make_shared<MemBlockIo>(64 * kMiB);
  ASSERT_TRUE(server_->AddVolume("vol-a", io).ok());
  struct stat st;
  ASSERT_EQ(stat(server_->PathOf("vol-a").c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 64 * kMiB);
  EXPECT_EQ(io->bytes_read.load(), 0u);  // lazy: nothing read to serve the file

  // A read of 8 KiB in the middle reads that range (and no more than the kernel asks).
  std::vector<char> want = PatternBytes(8192, 7);
  ASSERT_TRUE(io->Write(40 * kMiB, want.data(), want.size()).ok());
  int fd = open(server_->PathOf("vol-a").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<char> got(8192);
  ASSERT_EQ(pread(fd, got.data(), got.size(), 40 * kMiB), 8192);
  close(fd);
  EXPECT_EQ(got, want);
  EXPECT_LE(io->bytes_read.load(), 8192u * 2);
}

TEST_F(FuseLoopTest, WorkerThreadsAreNamed) {
  // The server's workers start with it and name themselves (core/thread_name.h).
  bool named = false;
  for (int i = 0; i < 500 && !named; ++i) {
    named = stellarium::testing::ThreadNames().count("stl-fuse") == 1;
    if (!named) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(named);
  server_.reset();
  EXPECT_EQ(stellarium::testing::ThreadNames().count("stl-fuse"), 0u) << "stopped with the server";
}

TEST_F(FuseLoopTest, WritesAndFsyncReachTheBlockIo) {
  auto io = std::make_shared<MemBlockIo>(4 * kMiB);
  ASSERT_TRUE(server_->AddVolume("vol-w", io).ok());
  int fd = open(server_->PathOf("vol-w").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  std::vector<char> data = PatternBytes(5000, 3);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 12345), 5000);
  uint64_t flushes = io->flushes.load();
  ASSERT_EQ(fsync(fd), 0);
  EXPECT_GT(io->flushes.load(), flushes);
  // Past the end: refused whole, nothing written.
  std::vector<char> tail(8192, 'x');
  EXPECT_EQ(pwrite(fd, tail.data(), tail.size(), 4 * kMiB - 4096), -1);
  EXPECT_EQ(errno, ENOSPC);
  close(fd);
  std::vector<char> contents = io->Snapshot();
  EXPECT_TRUE(std::equal(data.begin(), data.end(), contents.begin() + 12345));
  EXPECT_EQ(std::count(contents.end() - 8192, contents.end(), 'x'), 0);
}

TEST_F(FuseLoopTest, RejectsBadNamesAndKeepsReadOnlyVolumesReadOnly) {
  auto io = std::make_shared<MemBlockIo>(kMiB, 4096, /*read_only=*/true);
  EXPECT_EQ(server_->AddVolume("a/b", io).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->AddVolume("..", io).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->AddVolume("", io).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(server_->ListVolumes().empty());
  ASSERT_TRUE(server_->AddVolume("ro", io).ok());
  ASSERT_TRUE(server_->AddVolume("ro", io).ok());  // idempotent
  EXPECT_EQ(server_->AddVolume("ro", std::make_shared<MemBlockIo>(kMiB)).code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(open(server_->PathOf("ro").c_str(), O_RDWR), -1);
  EXPECT_EQ(errno, EROFS);
  int fd = open(server_->PathOf("ro").c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  close(fd);
}

TEST_F(FuseLoopTest, RemoveVolumeDropsTheFileAndFlushes) {
  auto io = std::make_shared<MemBlockIo>(kMiB);
  ASSERT_TRUE(server_->AddVolume("gone", io).ok());
  struct stat st;
  ASSERT_EQ(stat(server_->PathOf("gone").c_str(), &st), 0);
  uint64_t flushes = io->flushes.load();
  ASSERT_TRUE(server_->RemoveVolume("gone").ok());
  EXPECT_GT(io->flushes.load(), flushes);
  EXPECT_EQ(stat(server_->PathOf("gone").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_TRUE(server_->RemoveVolume("gone").ok());  // absent: OK
}

TEST_F(FuseLoopTest, Ext4OnLoopSurvivesDetachAndReattach) {
  auto io = std::make_shared<MemBlockIo>(64 * kMiB);
  ASSERT_TRUE(server_->AddVolume("fs", io).ok());
  std::string file = server_->PathOf("fs");
  LoopDevice dev = Attach(file, /*direct_io=*/true);
  ASSERT_FALSE(dev.path.empty());
  EXPECT_TRUE(dev.direct_io) << "the kernel refused direct I/O on the FUSE file";
  EXPECT_EQ(dev.size_bytes, 64 * kMiB);

  auto r = RunCommand({"mkfs.ext4", "-q", "-F", dev.path});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string mnt = tmp_.path() + "/mnt";
  Mount(dev.path, mnt);
  std::string big(3 * kMiB + 17, '\0');
  std::vector<char> pattern = PatternBytes(big.size(), 11);
  big.assign(pattern.begin(), pattern.end());
  WriteFileSynced(mnt + "/hello.txt", "hello from the loop device\n");
  WriteFileSynced(mnt + "/big.bin", big);
  // Busy while mounted: refused, and the device stays attached.
  EXPECT_EQ(DetachLoop(dev.path).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(DescribeLoop(dev.path).ok());
  Unmount(mnt);

  // Restart recovery finds the device by its backing file.
  auto found = FindLoopsBackedBy(file);
  ASSERT_TRUE(found.ok()) << found.status().ToString();
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ((*found)[0].path, dev.path);

  Detach(dev.path);
  found = FindLoopsBackedBy(file);
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(found->empty());

  LoopDevice again = Attach(file, /*direct_io=*/true);
  ASSERT_FALSE(again.path.empty());
  Mount(again.path, mnt);
  EXPECT_EQ(ReadFile(mnt + "/hello.txt"), "hello from the loop device\n");
  EXPECT_EQ(ReadFile(mnt + "/big.bin"), big);
  Unmount(mnt);
  r = RunCommand({"e2fsck", "-fn", again.path});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// O_DIRECT writes of every size from 4 KiB to 1 MiB through a loop device with direct
// I/O on must land byte-identical in the BlockIo (qemu-storage-daemon's FUSE export
// corrupts the 1 MiB ones).
TEST_F(FuseLoopTest, ODirectWritesFrom4KiBTo1MiBLandIntact) {
  const uint64_t size = 32 * kMiB;
  auto io = std::make_shared<MemBlockIo>(size);
  ASSERT_TRUE(server_->AddVolume("dio", io).ok());
  LoopDevice dev = Attach(server_->PathOf("dio"), /*direct_io=*/true);
  ASSERT_FALSE(dev.path.empty());
  ASSERT_TRUE(dev.direct_io);

  int fd = open(dev.path.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0) << strerror(errno);
  std::vector<char> expect(size, 0);
  uint64_t seed = 100;
  uint64_t offset = 0;
  for (size_t len = 4096; len <= kMiB; len *= 2) {
    for (int rep = 0; rep < 3; ++rep) {
      std::vector<char> data = PatternBytes(len, seed++);
      void* buf = nullptr;
      ASSERT_EQ(posix_memalign(&buf, 4096, len), 0);
      memcpy(buf, data.data(), len);
      // Unaligned to the length (only to 4 KiB) so writes straddle FUSE request edges.
      ASSERT_EQ(pwrite(fd, buf, len, static_cast<off_t>(offset)), static_cast<ssize_t>(len))
          << "len " << len << ": " << strerror(errno);
      memcpy(expect.data() + offset, data.data(), len);
      // Read back through the device with O_DIRECT too.
      memset(buf, 0, len);
      ASSERT_EQ(pread(fd, buf, len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
      EXPECT_EQ(memcmp(buf, data.data(), len), 0) << "read back of " << len << " bytes";
      free(buf);
      offset += len + 4096;
    }
  }
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  ASSERT_LE(offset, size);
  std::vector<char> contents = io->Snapshot();
  ASSERT_EQ(contents.size(), expect.size());
  for (uint64_t off = 0; off < size; off += 4096) {
    ASSERT_EQ(memcmp(contents.data() + off, expect.data() + off, 4096), 0)
        << "block at offset " << off << " differs from what was written";
  }
}

// A sequential reader through the loop device makes the volume's read-ahead read past
// what was asked (with readahead_bytes 0 it reads exactly that); a write through the
// device over ranges already read ahead is what every later read returns.
TEST_F(FuseLoopTest, SequentialReadsReadAheadAndWritesAreNeverShadowed) {
  const uint64_t size = 32 * kMiB;
  std::vector<char> expect = PatternBytes(size, 9);
  auto read_through = [&](FuseBlockServer* server, const std::string& name,
                          const std::shared_ptr<MemBlockIo>& io, uint64_t n) {
    ASSERT_TRUE(io->Write(0, expect.data(), size).ok());
    io->bytes_read = 0;
    ASSERT_TRUE(server->AddVolume(name, io).ok());
    LoopDevice dev = Attach(server->PathOf(name), /*direct_io=*/true);
    ASSERT_FALSE(dev.path.empty());
    int fd = open(dev.path.c_str(), O_RDONLY | O_DIRECT);
    ASSERT_GE(fd, 0) << strerror(errno);
    void* buf = nullptr;
    ASSERT_EQ(posix_memalign(&buf, 4096, kMiB), 0);
    for (uint64_t off = 0; off < n; off += kMiB) {
      ASSERT_EQ(pread(fd, buf, kMiB, static_cast<off_t>(off)), static_cast<ssize_t>(kMiB));
      ASSERT_EQ(memcmp(buf, expect.data() + off, kMiB), 0) << "MiB at " << off;
    }
    free(buf);
    close(fd);
  };

  // Without read-ahead: the volume is read exactly where the reader read.
  {
    auto plain =
        FuseBlockServer::Start({.mountpoint = tmp_.path() + "/fuse-plain", .readahead_bytes = 0});
    ASSERT_TRUE(plain.ok()) << plain.status().ToString();
    auto io = std::make_shared<MemBlockIo>(size);
    ASSERT_NO_FATAL_FAILURE(read_through(plain->get(), "plain", io, 6 * kMiB));
    EXPECT_EQ(io->bytes_read.load(), 6 * kMiB);
    ASSERT_TRUE(DetachLoop(loops_.back()).ok());
    loops_.pop_back();
  }

  // With it (the default): helpers read beyond the reader.
  auto io = std::make_shared<MemBlockIo>(size);
  ASSERT_NO_FATAL_FAILURE(read_through(server_.get(), "ra", io, 6 * kMiB));
  for (int i = 0; i < 500 && io->bytes_read.load() <= 7 * kMiB; ++i) usleep(10000);
  EXPECT_GT(io->bytes_read.load(), 7 * kMiB) << "nothing was read ahead of the reader";

  // Overwrite a range the read-ahead holds (6..9 MiB), at 4 KiB and 1 MiB sizes, then
  // read the whole device: every byte is what was last written.
  int fd = open(loops_.back().c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0) << strerror(errno);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, kMiB), 0);
  std::vector<char> fresh = PatternBytes(kMiB, 10);
  memcpy(buf, fresh.data(), kMiB);
  ASSERT_EQ(pwrite(fd, buf, kMiB, 7 * kMiB), static_cast<ssize_t>(kMiB)) << strerror(errno);
  memcpy(expect.data() + 7 * kMiB, fresh.data(), kMiB);
  ASSERT_EQ(pwrite(fd, buf, 4096, 6 * kMiB + 8192), 4096) << strerror(errno);
  memcpy(expect.data() + 6 * kMiB + 8192, fresh.data(), 4096);
  for (uint64_t off = 0; off < size; off += kMiB) {
    ASSERT_EQ(pread(fd, buf, kMiB, static_cast<off_t>(off)), static_cast<ssize_t>(kMiB));
    ASSERT_EQ(memcmp(buf, expect.data() + off, kMiB), 0) << "MiB at " << off << " is stale";
  }
  free(buf);
  close(fd);
  std::vector<char> contents = io->Snapshot();
  EXPECT_TRUE(contents == expect) << "the volume holds what was written";
}

TEST_F(FuseLoopTest, ResizeReachesTheLoopDevice) {
  auto io = std::make_shared<MemBlockIo>(8 * kMiB);
  ASSERT_TRUE(server_->AddVolume("grow", io).ok());
  LoopDevice dev = Attach(server_->PathOf("grow"), /*direct_io=*/true);
  ASSERT_FALSE(dev.path.empty());
  EXPECT_EQ(dev.size_bytes, 8 * kMiB);
  io->Resize(24 * kMiB);
  ASSERT_TRUE(server_->NotifyResized("grow").ok());
  auto size = RefreshLoopSize(dev.path);
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, 24 * kMiB);
  EXPECT_EQ(server_->NotifyResized("nope").code(), StatusCode::kNotFound);
}

// Regression: Stop() used to mark the session exited before unmounting; once the
// kernel's cached root attributes expired, the unmount path's stat() waited forever
// for a worker that had already quit.
TEST_F(FuseLoopTest, StopsAfterCachedAttributesExpire) {
  server_.reset();
  auto server =
      FuseBlockServer::Start({.mountpoint = tmp_.path() + "/fuse", .attr_timeout_seconds = 1.0});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  server_ = std::move(*server);
  ASSERT_TRUE(server_->AddVolume("v", std::make_shared<MemBlockIo>(kMiB)).ok());
  struct stat st;
  ASSERT_EQ(stat(server_->mountpoint().c_str(), &st), 0);
  usleep(1'200'000);  // longer than the attribute timeout
  server_.reset();    // must return
  EXPECT_EQ(stat((tmp_.path() + "/fuse/v").c_str(), &st), -1);
}

// The kernel answers a loop device's status (LOOP_GET_STATUS64, what `losetup -a` asks
// for each device) and stat() of the mount from the attributes it keeps, without a
// request: they return while no process serves the connection, as during a driver
// restart. With the 1 s attribute time the server gave before, they waited for the next
// process. A statfs always asks: it waits until the connection ends. (A stat() that asks
// for the access time waits too once the mount was listed: the kernel marks it stale.)
TEST_F(FuseLoopTest, LoopStatusAndStatOfTheMountNeedNoServer) {
  if (!HaveProgram("losetup") || !HaveProgram("stat")) GTEST_SKIP() << "needs losetup and stat";
  ASSERT_TRUE(server_->AddVolume("v", std::make_shared<MemBlockIo>(4 * kMiB)).ok());
  LoopDevice dev = Attach(server_->PathOf("v"), /*direct_io=*/true);
  ASSERT_FALSE(dev.path.empty());
  {  // written through the device, as a mounted file system does
    int fd = open(dev.path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    void* buf = nullptr;
    ASSERT_EQ(posix_memalign(&buf, 4096, 4096), 0);
    memset(buf, 7, 4096);
    EXPECT_EQ(pwrite(fd, buf, 4096, 0), 4096);
    free(buf);
    close(fd);
  }
  const std::string mount = server_->mountpoint();
  // What the fd holder keeps across a restart (close-on-exec: the tools started below
  // must not hold the connection).
  int held = fcntl(server_->fd(), F_DUPFD_CLOEXEC, 3);
  ASSERT_GE(held, 0);
  server_->Release();  // no process serves the connection from now on
  usleep(1'500'000);   // past the 1 s the attributes used to be kept

  BackgroundCommand losetup({"losetup", dev.path});
  BackgroundCommand stat_mount({"stat", mount});
  BackgroundCommand statfs({"stat", "-f", mount});
  const bool losetup_done = losetup.WaitFor(5);
  const bool mount_done = stat_mount.WaitFor(5);
  const bool statfs_done = statfs.WaitFor(0.5);
  close(held);  // the last fd: the connection ends, and every wait with it
  EXPECT_TRUE(losetup_done) << losetup.command() << " waited for a server";
  EXPECT_TRUE(mount_done) << stat_mount.command() << " waited for a server";
  EXPECT_EQ(losetup.exit_code(), 0);
  EXPECT_EQ(stat_mount.exit_code(), 0);
  EXPECT_FALSE(statfs_done) << "statfs was answered with no server";
  EXPECT_TRUE(statfs.WaitFor(5)) << "statfs still waits after the connection ended";
}

// Stopping while a loop device still holds a file aborts the connection instead of
// waiting for the holder; the loop device then reports I/O errors, never stale data.
TEST_F(FuseLoopTest, StopsWhileALoopDeviceStillHoldsAFile) {
  auto io = std::make_shared<MemBlockIo>(4 * kMiB);
  ASSERT_TRUE(server_->AddVolume("held", io).ok());
  LoopDevice dev = Attach(server_->PathOf("held"), /*direct_io=*/true);
  ASSERT_FALSE(dev.path.empty());
  server_.reset();  // must return
  int fd = open(dev.path.c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, 4096), 0);
  EXPECT_EQ(pread(fd, buf, 4096, 0), -1);
  free(buf);
  close(fd);
}

TEST(LoopDeviceTest, BadArgumentsNameTheObject) {
  std::string why = stellarium::testing::NodeTestsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  auto r = AttachLoop("/nonexistent/file.img", {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/file.img"), std::string::npos);
  EXPECT_EQ(DetachLoop("/dev/sda").code(), StatusCode::kInvalidArgument);
  auto d = DescribeLoop("/dev/loopx");
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  TempDir tmp;
  std::string odd = tmp.path() + "/odd.img";
  std::ofstream(odd) << "123";
  r = AttachLoop(odd, {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace stellarium::node
