// A real guest on a real volume: QEMU (TCG, microvm, memfd shared memory) boots Debian's
// kernel with the initramfs from scripts/build-guest.sh. The disk is an ext4 image
// imported into a real core Store, served (a) by VhostUserBlkServer and (b) by the
// FUSE file + loop device as a plain virtio-blk drive. The guest prints the sha256 of a
// known file and writes a file; the test compares the hash and then finds the guest's
// file in the volume, read back through core (FUSE + loop + ext4 mount, read-only).
//
// Skips only when qemu-system-x86_64 is not installed. The guest is built (once, then
// cached) in $STELLARIUM_GUEST_DIR or /var/tmp/stellarium-guest.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>

#include "core/store.h"
#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"
#include "csi/node/vhost_user/vhost_user_blk.h"
#include "tests/node/guest_util.h"
#include "tests/node/node_fixture.h"
#include "tests/node/test_util.h"

#ifndef STELLARIUM_SOURCE_DIR
#error "STELLARIUM_SOURCE_DIR must point at the source tree (scripts/build-guest.sh)"
#endif

namespace stellarium::node {
namespace {

using stellarium::testing::CommandResult;
using stellarium::testing::GuestHash;
using stellarium::testing::HashAndWriteScript;
using stellarium::testing::HaveProgram;
using stellarium::testing::ImportedExt4;
using stellarium::testing::ImportKnownExt4;
using stellarium::testing::RunCommand;
using stellarium::testing::TempDir;

class GuestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HaveProgram("qemu-system-x86_64")) return;
    guest_dir_ = stellarium::testing::DefaultGuestDir();
    build_ = stellarium::testing::BuildGuest(STELLARIUM_SOURCE_DIR, guest_dir_);
  }
  void SetUp() override {
    if (!HaveProgram("qemu-system-x86_64")) {
      GTEST_SKIP() << "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
    }
    ASSERT_EQ(build_.exit_code, 0) << "scripts/build-guest.sh failed:\n" << build_.output;
    auto store = Store::Open({.path = tmp_.path() + "/store"});
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    img_ = ImportKnownExt4(*store_, tmp_.path(), "guest-vol", 64);
    ASSERT_FALSE(img_.volume.id.empty());
    auto vol = store_->OpenVolume(img_.volume.id);
    ASSERT_TRUE(vol.ok()) << vol.status().ToString();
    volume_ = *vol;
  }

  CommandResult Boot(const std::vector<std::string>& disk_args, const std::string& script) {
    return stellarium::testing::BootGuest(guest_dir_, disk_args, script);
  }

  // Reads a file from the volume's ext4 through core: FUSE file, read-only loop, mount.
  std::string ReadFromVolume(const std::string& name) {
    return stellarium::testing::ReadFileThroughLoop(volume_, tmp_.path(), name);
  }

  static inline std::string guest_dir_;
  static inline CommandResult build_;
  TempDir tmp_;
  std::unique_ptr<Store> store_;
  ImportedExt4 img_;
  std::shared_ptr<Volume> volume_;
};

TEST_F(GuestTest, GuestUsesTheVolumeThroughVhostUserBlk) {
  std::string sock = tmp_.path() + "/vhost.sock";
  auto server = VhostUserBlkServer::Start(sock, volume_, {.num_queues = 1, .serial = "guest-vol"});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  CommandResult r = Boot({"-chardev", "socket,id=c0,path=" + sock, "-device",
                          "vhost-user-blk,chardev=c0,num-queues=1"},
                         HashAndWriteScript("hello over vhost-user"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("GUEST-DONE"), std::string::npos) << r.output;
  EXPECT_EQ(GuestHash(r.output), img_.known_sha256) << r.output;
  EXPECT_EQ((*server)->last_error(), "");

  // The VMM "restarts": a new QEMU connects to the same server and sees the write.
  r = Boot({"-chardev", "socket,id=c0,path=" + sock, "-device",
            "vhost-user-blk,chardev=c0,num-queues=1"},
           "mount -t ext4 /dev/vda /mnt && echo \"GUEST-READ $(cat /mnt/from-guest.txt)\" && "
           "umount /mnt\n");
  EXPECT_NE(r.output.find("GUEST-READ hello over vhost-user"), std::string::npos) << r.output;
  EXPECT_EQ((*server)->connections(), 2u);
  EXPECT_EQ((*server)->last_error(), "");
  server->reset();
  ASSERT_TRUE(volume_->Flush().ok());
  EXPECT_EQ(ReadFromVolume("from-guest.txt"), "hello over vhost-user\n");
}

// Large and small O_DIRECT writes from a real guest driver (multi-segment requests up
// to 1 MiB) land byte-identical in the store.
TEST_F(GuestTest, GuestDirectWritesOverVhostUserLandInTheStore) {
  CreateVolumeRequest req;
  req.name = "blank";
  req.size_bytes = 64 << 20;
  auto info = store_->CreateVolume(req);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto blank = store_->OpenVolume(info->id);
  ASSERT_TRUE(blank.ok());
  std::string sock = tmp_.path() + "/blank.sock";
  auto server = VhostUserBlkServer::Start(sock, *blank, {.num_queues = 1});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  CommandResult r =
      Boot({"-chardev", "socket,id=c0,path=" + sock, "-device",
            "vhost-user-blk,chardev=c0,num-queues=1"},
           "dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null\n"
           "dd if=/tmp/pat of=/dev/vda bs=1M oflag=direct 2>/dev/null\n"
           "dd if=/tmp/pat of=/dev/vda bs=4096 count=256 seek=8192 oflag=direct 2>/dev/null\n"
           "sync\n"
           "echo \"GUEST-PAT16M $(sha256sum /tmp/pat | cut -d' ' -f1)\"\n"
           "echo \"GUEST-PAT1M $(head -c 1048576 /tmp/pat | sha256sum | cut -d' ' -f1)\"\n");
  std::smatch m16, m1;
  ASSERT_TRUE(std::regex_search(r.output, m16, std::regex("GUEST-PAT16M ([0-9a-f]{64})")))
      << r.output;
  ASSERT_TRUE(std::regex_search(r.output, m1, std::regex("GUEST-PAT1M ([0-9a-f]{64})")))
      << r.output;
  std::string big(16 << 20, '\0'), small(1 << 20, '\0');
  ASSERT_TRUE((*blank)->Read(0, big.size(), big.data()).ok());
  ASSERT_TRUE((*blank)->Read(32 << 20, small.size(), small.data()).ok());
  EXPECT_EQ(stellarium::testing::Sha256Hex(big), m16[1].str()) << "1 MiB O_DIRECT writes";
  EXPECT_EQ(stellarium::testing::Sha256Hex(small), m1[1].str()) << "4 KiB O_DIRECT writes";
}

// The guest reads in sequence (so the back-end reads ahead of it), writes a block in
// the range just read ahead, then reads on across it with O_DIRECT: it must see its
// write, and the region it read must be what the store holds afterwards.
TEST_F(GuestTest, GuestWriteIntoARangeReadAheadIsReadBack) {
  CreateVolumeRequest req;
  req.name = "readahead";
  req.size_bytes = 32 << 20;
  auto info = store_->CreateVolume(req);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  auto vol = store_->OpenVolume(info->id);
  ASSERT_TRUE(vol.ok());
  std::vector<char> content = stellarium::testing::PatternBytes(req.size_bytes, 17);
  ASSERT_TRUE((*vol)->Write(0, content.data(), content.size()).ok());
  // The server's own read-ahead layer, wrapped here so the test can see it act.
  auto readahead = std::make_shared<ReadAheadBlockIo>(*vol, ReadAheadOptions{});
  std::string sock = tmp_.path() + "/ra.sock";
  auto server = VhostUserBlkServer::Start(sock, readahead, {.num_queues = 1, .readahead_bytes = 0});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  // Block 1200 (4.7 MiB) lies in what is read ahead of a stream ending at 4 MiB.
  CommandResult r =
      Boot({"-chardev", "socket,id=c0,path=" + sock, "-device",
            "vhost-user-blk,chardev=c0,num-queues=1"},
           "dd if=/dev/vda of=/dev/null bs=512K count=8 iflag=direct 2>/dev/null\n"
           "dd if=/dev/urandom of=/tmp/blk bs=4096 count=1 2>/dev/null\n"
           "dd if=/tmp/blk of=/dev/vda bs=4096 seek=1200 count=1 oflag=direct 2>/dev/null\n"
           "echo \"GUEST-WROTE $(sha256sum /tmp/blk | cut -d' ' -f1)\"\n"
           "echo \"GUEST-REGION $(dd if=/dev/vda bs=512K skip=8 count=8 iflag=direct 2>/dev/null"
           " | sha256sum | cut -d' ' -f1)\"\n"
           "echo \"GUEST-BLOCK $(dd if=/dev/vda bs=4096 skip=1200 count=1 iflag=direct 2>/dev/null"
           " | sha256sum | cut -d' ' -f1)\"\n");
  std::smatch wrote, region, block;
  ASSERT_TRUE(std::regex_search(r.output, wrote, std::regex("GUEST-WROTE ([0-9a-f]{64})")))
      << r.output;
  ASSERT_TRUE(std::regex_search(r.output, region, std::regex("GUEST-REGION ([0-9a-f]{64})")))
      << r.output;
  ASSERT_TRUE(std::regex_search(r.output, block, std::regex("GUEST-BLOCK ([0-9a-f]{64})")))
      << r.output;
  EXPECT_EQ(block[1].str(), wrote[1].str()) << "the guest read back older bytes than it wrote";
  server->reset();
  std::string back(4 << 20, '\0');
  ASSERT_TRUE((*vol)->Read(4 << 20, back.size(), back.data()).ok());
  EXPECT_EQ(stellarium::testing::Sha256Hex(back), region[1].str())
      << "the guest's sequential read differs from the store";
  EXPECT_EQ(stellarium::testing::Sha256Hex(back.substr(1200 * 4096 - (4 << 20), 4096)),
            wrote[1].str());
  ReadAheadBlockIo::Stats st = readahead->stats();
  EXPECT_GT(st.reads_from_windows, 0u) << "the guest's reads were not read ahead";
  EXPECT_GE(st.windows_discarded, 1u) << "the write did not meet a window";
}

TEST_F(GuestTest, ReadOnlyVolumeIsReadOnlyInTheGuest) {
  auto ro = store_->OpenVolume(img_.volume.id, /*read_only=*/true);
  ASSERT_TRUE(ro.ok()) << ro.status().ToString();
  std::vector<char> before(4096);
  ASSERT_TRUE(volume_->Read(0, before.size(), before.data()).ok());
  std::string sock = tmp_.path() + "/ro.sock";
  auto server = VhostUserBlkServer::Start(sock, *ro, {.num_queues = 1});
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  CommandResult r =
      Boot({"-chardev", "socket,id=c0,path=" + sock, "-device",
            "vhost-user-blk,chardev=c0,num-queues=1"},
           "echo \"GUEST-RO $(cat /sys/block/vda/ro)\"\n"
           "mount -t ext4 -o ro,noload /dev/vda /mnt\n"
           "echo \"GUEST-SHA256 $(sha256sum /mnt/known.bin | cut -d' ' -f1)\"\n"
           "umount /mnt\n"
           "if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then "
           "echo GUEST-WRITE-OK; else echo GUEST-WRITE-REFUSED; fi\n");
  EXPECT_NE(r.output.find("GUEST-RO 1"), std::string::npos) << r.output;
  EXPECT_EQ(GuestHash(r.output), img_.known_sha256) << r.output;
  EXPECT_NE(r.output.find("GUEST-WRITE-REFUSED"), std::string::npos) << r.output;
  std::vector<char> after(4096);
  ASSERT_TRUE(volume_->Read(0, after.size(), after.data()).ok());
  EXPECT_EQ(after, before);
}

TEST_F(GuestTest, SameGuestBootsFromTheFuseLoopDevice) {
  if (!stellarium::testing::NodeTestsUnavailableReason().empty()) {
    GTEST_SKIP() << stellarium::testing::NodeTestsUnavailableReason();
  }
  auto fuse = FuseBlockServer::Start({.mountpoint = tmp_.path() + "/fuse"});
  ASSERT_TRUE(fuse.ok()) << fuse.status().ToString();
  ASSERT_TRUE((*fuse)->AddVolume("guest-vol", volume_).ok());
  auto loop = AttachLoop((*fuse)->PathOf("guest-vol"), {.direct_io = true});
  ASSERT_TRUE(loop.ok()) << loop.status().ToString();
  CommandResult r = Boot({"-drive", "id=d0,file=" + loop->path + ",format=raw,if=none,cache=none",
                          "-device", "virtio-blk-device,drive=d0"},
                         HashAndWriteScript("hello over the loop device"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("GUEST-DONE"), std::string::npos) << r.output;
  EXPECT_EQ(GuestHash(r.output), img_.known_sha256) << r.output;
  ASSERT_TRUE(DetachLoop(loop->path).ok());
  ASSERT_TRUE((*fuse)->RemoveVolume("guest-vol").ok());
  fuse->reset();
  EXPECT_EQ(ReadFromVolume("from-guest.txt"), "hello over the loop device\n");
}

}  // namespace
}  // namespace stellarium::node
