#include "tests/node/guest_util.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>

#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"

namespace stellarium::testing {

std::string Base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

CommandResult BuildGuest(const std::string& source_dir, const std::string& guest_dir) {
  return RunCommand({"bash", source_dir + "/scripts/build-guest.sh", guest_dir});
}

std::string DefaultGuestDir() {
  const char* env = getenv("STELLARIUM_GUEST_DIR");
  return env ? env : "/var/tmp/stellarium-guest";
}

CommandResult BootGuest(const std::string& guest_dir, const std::vector<std::string>& disk_args,
                        const std::string& script, int memory_mib) {
  const std::string mem = std::to_string(memory_mib);
  std::vector<std::string> argv = {
      "timeout",
      "600",
      "qemu-system-x86_64",
      "-M",
      "microvm,accel=tcg,pit=on,memory-backend=mem",
      "-object",
      "memory-backend-memfd,id=mem,size=" + mem + "M,share=on",
      "-cpu",
      "max",
      "-m",
      mem,
      "-smp",
      "1",
      "-nodefaults",
      "-no-user-config",
      "-display",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-global",
      "virtio-mmio.force-legacy=false",
      "-kernel",
      guest_dir + "/vmlinux",
      "-initrd",
      guest_dir + "/initrd.cpio.gz",
      "-append",
      "console=ttyS0 quiet panic=-1 tsc_early_khz=2600000 stellarium_cmd=" + Base64(script)};
  argv.insert(argv.end(), disk_args.begin(), disk_args.end());
  return RunCommand(argv);
}

std::vector<std::string> VhostUserDiskArgs(const std::string& socket) {
  static int n = 0;
  const std::string id = "vu" + std::to_string(n++);
  return {"-chardev", "socket,id=" + id + ",path=" + socket, "-device",
          "vhost-user-blk,chardev=" + id + ",num-queues=1"};
}

std::vector<std::string> RawDriveArgs(const std::string& path, bool read_only) {
  static int n = 0;
  const std::string id = "d" + std::to_string(n++);
  return {"-drive",
          "id=" + id + ",file=" + path + ",format=raw,if=none,cache=none" +
              (read_only ? ",readonly=on" : ""),
          "-device", "virtio-blk-device,drive=" + id};
}

std::string HashAndWriteScript(const std::string& marker) {
  return "set -e\n"
         "mount -t ext4 /dev/vda /mnt\n"
         "echo \"GUEST-SHA256 $(sha256sum /mnt/known.bin | cut -d' ' -f1)\"\n"
         "echo '" +
         marker +
         "' > /mnt/from-guest.txt\n"
         "sync\n"
         "umount /mnt\n"
         "echo GUEST-DONE\n";
}

std::string GuestHash(const std::string& console) {
  std::smatch m;
  std::regex re("GUEST-SHA256 ([0-9a-f]{64})");
  return std::regex_search(console, m, re) ? m[1].str() : "";
}

std::string ReadFileThroughLoop(std::shared_ptr<BlockIo> io, const std::string& work_dir,
                                const std::string& name) {
  using node::AttachLoop;
  using node::DetachLoop;
  using node::FuseBlockServer;
  auto fuse = FuseBlockServer::Start({.mountpoint = work_dir + "/check-fuse"});
  EXPECT_TRUE(fuse.ok()) << fuse.status().ToString();
  if (!fuse.ok()) return "";
  EXPECT_TRUE((*fuse)->AddVolume("check", io).ok());
  auto loop = AttachLoop((*fuse)->PathOf("check"), {.read_only = true, .direct_io = true});
  EXPECT_TRUE(loop.ok()) << loop.status().ToString();
  if (!loop.ok()) return "";
  std::string mnt = work_dir + "/check-mnt";
  mkdir(mnt.c_str(), 0755);
  std::string content;
  if (mount(loop->path.c_str(), mnt.c_str(), "ext4", MS_RDONLY, "noload") == 0) {
    {
      std::ifstream in(mnt + "/" + name);
      content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }  // closed before unmounting
    EXPECT_EQ(umount2(mnt.c_str(), 0), 0) << "umount " << mnt << ": " << strerror(errno);
  } else {
    ADD_FAILURE() << "mount " << loop->path << ": " << strerror(errno);
  }
  auto fsck = RunCommand({"e2fsck", "-fn", loop->path});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  Status det = DetachLoop(loop->path);
  EXPECT_TRUE(det.ok()) << det.ToString();
  return content;
}

}  // namespace stellarium::testing
