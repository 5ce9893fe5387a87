// FuseLoopBlockDeviceProvider against the BlockDeviceProvider contract, over a
// real Store, real FUSE, real loop devices and ext4.
#include "csi/node/block_device/fuse_loop_provider.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "tests/node/test_util.h"

namespace stellarium::node {
namespace {

using stellarium::testing::RunCommand;
using stellarium::testing::TempDir;

class FuseLoopProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why = stellarium::testing::NodeTestsUnavailableReason();
    if (!why.empty()) GTEST_SKIP() << why;
    auto store = Store::Open({.path = tmp_.path() + "/store"});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    CreateVolumeRequest req;
    req.name = "pvc-a";
    req.size_bytes = 64 << 20;
    auto v = store_->CreateVolume(req);
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    volume_id_ = v->id;
  }
  std::unique_ptr<FuseLoopBlockDeviceProvider> NewProvider() {
    auto p =
        FuseLoopBlockDeviceProvider::Create(store_.get(), {.state_dir = tmp_.path() + "/state"});
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(*p) : nullptr;
  }
  // Detaches every loop device a test attached (if a failed test left one).
  void TearDown() override {
    umount2((tmp_.path() + "/mnt").c_str(), MNT_DETACH);
    for (const auto& dev : devices_) (void)DetachLoop(dev);
  }
  std::vector<std::string> devices_;

  TempDir tmp_;
  std::unique_ptr<Store> store_;
  std::string volume_id_;
};

TEST_F(FuseLoopProviderTest, AttachIsIdempotentAndWritesReachTheStore) {
  auto p = NewProvider();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->Name(), "loop");  // what consumers see: a loop device
  auto rec = p->Recover();
  ASSERT_TRUE(rec.ok());
  EXPECT_TRUE(rec->empty());

  auto dev = p->Attach(volume_id_, false);
  ASSERT_TRUE(dev.ok()) << dev.status().ToString();
  devices_.push_back(dev->device_path);
  EXPECT_EQ(dev->size_bytes, 64u << 20);
  auto again = p->Attach(volume_id_, false);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->device_path, dev->device_path);
  EXPECT_EQ(p->Attach(volume_id_, true).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(p->Attach("vol-00000000deadbeef", false).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(p->Find(volume_id_).has_value());
  EXPECT_EQ(p->Find(volume_id_)->device_path, dev->device_path);

  auto mk = RunCommand({"mkfs.ext4", "-q", "-F", dev->device_path});
  ASSERT_EQ(mk.exit_code, 0) << mk.output;
  ASSERT_TRUE(p->Sync(volume_id_).ok());
  // The store has the file system now, before any detach: ext4's magic at 1080.
  auto vol = store_->OpenVolume(volume_id_, true);
  ASSERT_TRUE(vol.ok());
  uint16_t magic = 0;
  ASSERT_TRUE((*vol)->Read(1080, 2, reinterpret_cast<char*>(&magic)).ok());
  EXPECT_EQ(magic, 0xEF53);

  // Busy while mounted; detachable after.
  std::string mnt = tmp_.path() + "/mnt";
  mkdir(mnt.c_str(), 0755);
  ASSERT_EQ(mount(dev->device_path.c_str(), mnt.c_str(), "ext4", 0, nullptr), 0) << strerror(errno);
  EXPECT_EQ(p->Detach(volume_id_).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(p->Find(volume_id_).has_value());  // a refused detach changes nothing
  ASSERT_EQ(umount2(mnt.c_str(), 0), 0);
  ASSERT_TRUE(p->Detach(volume_id_).ok());
  EXPECT_FALSE(p->Find(volume_id_).has_value());
  EXPECT_TRUE(p->Detach(volume_id_).ok());  // idempotent
  auto fsck = RunCommand({"e2fsck", "-fn", dev->device_path});
  EXPECT_NE(fsck.exit_code, 0);  // the device is gone
}

TEST_F(FuseLoopProviderTest, ResizeGrowsTheDevice) {
  auto p = NewProvider();
  ASSERT_TRUE(p);
  auto dev = p->Attach(volume_id_, false);
  ASSERT_TRUE(dev.ok());
  devices_.push_back(dev->device_path);
  ASSERT_TRUE(store_->ResizeVolume(volume_id_, 96 << 20).ok());
  auto size = p->Resize(volume_id_);
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, 96u << 20);
  EXPECT_EQ(p->Find(volume_id_)->size_bytes, 96u << 20);
  ASSERT_TRUE(p->Detach(volume_id_).ok());
  EXPECT_EQ(p->Resize(volume_id_).status().code(), StatusCode::kFailedPrecondition);
}

// After a crash of the driver the old loop devices are dead (their FUSE connection went
// with the process). A new provider's Recover() detaches them: no duplicates, no leak.
TEST_F(FuseLoopProviderTest, RecoverDetachesDeviceLeftByADeadRun) {
  std::string old_device;
  {
    auto p = NewProvider();
    ASSERT_TRUE(p);
    auto dev = p->Attach(volume_id_, false);
    ASSERT_TRUE(dev.ok());
    old_device = dev->device_path;
    devices_.push_back(old_device);
  }  // "crash": the provider goes away with the device attached
  auto before = ListLoops();
  ASSERT_TRUE(before.ok());
  bool found = false;
  for (const auto& d : *before) found |= d.path == old_device;
  ASSERT_TRUE(found) << "the dead run's loop device should still be attached";

  auto p = NewProvider();
  ASSERT_TRUE(p);
  auto rec = p->Recover();
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_TRUE(rec->empty());
  auto after = ListLoops();
  ASSERT_TRUE(after.ok());
  for (const auto& d : *after) EXPECT_NE(d.backing_file.find(p->mountpoint()), 0u) << d.path;
  // The volume attaches again, once.
  auto dev = p->Attach(volume_id_, false);
  ASSERT_TRUE(dev.ok()) << dev.status().ToString();
  devices_.push_back(dev->device_path);
  ASSERT_TRUE(p->Detach(volume_id_).ok());
}

TEST(FuseLoopProviderArgsTest, BadArgumentsAreRefused) {
  EXPECT_EQ(FuseLoopBlockDeviceProvider::Create(nullptr, {.state_dir = "/tmp/x"}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace stellarium::node
