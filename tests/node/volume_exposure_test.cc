// End to end over a real core Volume: an ext4 image imported into a real Store, served
// by FuseBlockServer, attached to a loop device with direct I/O, mounted. Files written
// (also with 1 MiB O_DIRECT writes) survive unstaging, closing the store and staging
// again from a fresh Store and server; e2fsck -fn on the exported volume is clean.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "core/export.h"
#include "core/store.h"
#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"
#include "tests/node/node_fixture.h"
#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

using stellarium::testing::ImportKnownExt4;
using stellarium::testing::PatternBytes;
using stellarium::testing::RunCommand;
using stellarium::testing::TempDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// One "staging": the FUSE file, the loop device and the ext4 mount of a volume.
struct Staged {
  std::unique_ptr<FuseBlockServer> fuse;
  LoopDevice loop;
  std::string mnt;
};

Staged Stage(const std::string& root, std::shared_ptr<Volume> vol) {
  Staged s;
  auto fuse = FuseBlockServer::Start({.mountpoint = root + "/fuse"});
  EXPECT_TRUE(fuse.ok()) << fuse.status().ToString();
  if (!fuse.ok()) return s;
  s.fuse = std::move(*fuse);
  EXPECT_TRUE(s.fuse->AddVolume(vol->id(), vol).ok());
  auto loop = AttachLoop(s.fuse->PathOf(vol->id()), {.direct_io = true});
  EXPECT_TRUE(loop.ok()) << loop.status().ToString();
  if (!loop.ok()) return s;
  s.loop = *loop;
  s.mnt = root + "/mnt";
  mkdir(s.mnt.c_str(), 0755);
  EXPECT_EQ(mount(s.loop.path.c_str(), s.mnt.c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  return s;
}

void Unstage(Staged& s, const std::string& volume_id) {
  EXPECT_EQ(umount2(s.mnt.c_str(), 0), 0) << strerror(errno);
  EXPECT_TRUE(DetachLoop(s.loop.path).ok());
  EXPECT_TRUE(s.fuse->RemoveVolume(volume_id).ok());
  s.fuse.reset();
}

TEST(VolumeExposureTest, Ext4VolumeSurvivesUnstageAndRestageOnAFreshStore) {
  std::string why = stellarium::testing::NodeTestsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  std::string store_dir = tmp.path() + "/store";
  std::string volume_id;
  std::string big;
  {
    auto store = Store::Open({.path = store_dir});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    auto img = ImportKnownExt4(**store, tmp.path(), "pvc-e2e", 128);
    volume_id = img.volume.id;
    ASSERT_FALSE(volume_id.empty());
    auto vol = (*store)->OpenVolume(volume_id);
    ASSERT_TRUE(vol.ok()) << vol.status().ToString();
    Staged s = Stage(tmp.path(), *vol);
    ASSERT_TRUE(s.loop.direct_io);

    // The known file reads back through loop -> FUSE -> core.
    EXPECT_EQ(ReadFile(s.mnt + "/known.bin"), img.known_content);

    // Ordinary buffered writes with fsync.
    {
      std::ofstream(s.mnt + "/written.txt") << "written through the loop device\n";
      int fd = open((s.mnt + "/written.txt").c_str(), O_RDONLY);
      ASSERT_EQ(fsync(fd), 0);
      close(fd);
    }
    // 1 MiB O_DIRECT writes into a file on the mounted file system.
    std::vector<char> pattern = PatternBytes(8 << 20, 99);
    big.assign(pattern.begin(), pattern.end());
    int fd = open((s.mnt + "/direct.bin").c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644);
    ASSERT_GE(fd, 0) << strerror(errno);
    void* buf = nullptr;
    ASSERT_EQ(posix_memalign(&buf, 4096, 1 << 20), 0);
    for (size_t off = 0; off < big.size(); off += 1 << 20) {
      memcpy(buf, big.data() + off, 1 << 20);
      ASSERT_EQ(pwrite(fd, buf, 1 << 20, static_cast<off_t>(off)), 1 << 20) << strerror(errno);
    }
    free(buf);
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
    Unstage(s, volume_id);
    // The store is closed here, as when the driver process exits.
  }

  // A fresh Store and FUSE server: the files are there.
  auto store = Store::Open({.path = store_dir});
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto vol = (*store)->OpenVolume(volume_id);
  ASSERT_TRUE(vol.ok());
  Staged s = Stage(tmp.path(), *vol);
  EXPECT_EQ(ReadFile(s.mnt + "/written.txt"), "written through the loop device\n");
  EXPECT_EQ(ReadFile(s.mnt + "/direct.bin"), big);
  Unstage(s, volume_id);

  // The exported volume is a clean ext4 file system.
  std::string exported = tmp.path() + "/exported.raw";
  auto ex = ExportVolume(**vol, exported);
  ASSERT_TRUE(ex.ok()) << ex.status().ToString();
  auto fsck = RunCommand({"e2fsck", "-fn", exported});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
}

TEST(VolumeExposureTest, ODirectWritesThroughLoopMatchTheVolume) {
  std::string why = stellarium::testing::NodeTestsUnavailableReason();
  if (!why.empty()) GTEST_SKIP() << why;
  TempDir tmp;
  auto store = Store::Open({.path = tmp.path() + "/store"});
  ASSERT_TRUE(store.ok());
  CreateVolumeRequest req;
  req.name = "raw";
  req.size_bytes = 32 << 20;
  auto info = (*store)->CreateVolume(req);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto vol = (*store)->OpenVolume(info->id);
  ASSERT_TRUE(vol.ok());
  auto fuse = FuseBlockServer::Start({.mountpoint = tmp.path() + "/fuse"});
  ASSERT_TRUE(fuse.ok());
  ASSERT_TRUE((*fuse)->AddVolume("raw", *vol).ok());
  auto loop = AttachLoop((*fuse)->PathOf("raw"), {.direct_io = true});
  ASSERT_TRUE(loop.ok()) << loop.status().ToString();
  int fd = open(loop->path.c_str(), O_RDWR | O_DIRECT);
  ASSERT_GE(fd, 0);
  uint64_t off = 4096;  // deliberately not aligned to the larger sizes
  uint64_t seed = 1;
  std::vector<std::pair<uint64_t, std::vector<char>>> written;
  for (size_t len = 4096; len <= (1 << 20); len *= 2) {
    std::vector<char> data = PatternBytes(len, seed++);
    void* buf = nullptr;
    ASSERT_EQ(posix_memalign(&buf, 4096, len), 0);
    memcpy(buf, data.data(), len);
    ASSERT_EQ(pwrite(fd, buf, len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
    free(buf);
    written.emplace_back(off, std::move(data));
    off += len + 4096;
  }
  ASSERT_EQ(fsync(fd), 0);
  close(fd);
  ASSERT_TRUE(DetachLoop(loop->path).ok());
  // Read back through core, not through the device.
  for (const auto& [o, data] : written) {
    std::vector<char> got(data.size());
    ASSERT_TRUE((*vol)->Read(o, got.size(), got.data()).ok());
    EXPECT_EQ(got, data) << data.size() << "-byte O_DIRECT write at offset " << o;
  }
}

}  // namespace
}  // namespace stellarium::node
