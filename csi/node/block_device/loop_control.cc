// Loop device control: see loop_control.h.
#include "csi/node/block_device/loop_control.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

namespace stellarium::node {

namespace {

// Closes an fd on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::optional<std::string> ReadSysfs(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// "/dev/loop12" -> 12; -1 if not a loop device path.
int LoopIndex(const std::string& device) {
  const std::string prefix = "/dev/loop";
  if (device.compare(0, prefix.size(), prefix) != 0 || device.size() == prefix.size()) return -1;
  int n = 0;
  for (size_t i = prefix.size(); i < device.size(); ++i) {
    if (device[i] < '0' || device[i] > '9' || n > 1'000'000) return -1;
    n = n * 10 + (device[i] - '0');
  }
  return n;
}

std::string Canonical(const std::string& file) {
  char buf[PATH_MAX];
  if (realpath(file.c_str(), buf) != nullptr) return buf;
  return file;
}

}  // namespace

Result<LoopDevice> DescribeLoop(const std::string& device) {
  int index = LoopIndex(device);
  if (index < 0) return Status::InvalidArgument("loop device '" + device + "': not /dev/loopN");
  std::string sys = "/sys/block/loop" + std::to_string(index);
  auto backing = ReadSysfs(sys + "/loop/backing_file");
  if (!backing || backing->empty()) {
    return Status::NotFound("loop device " + device + ": not attached");
  }
  LoopDevice d;
  d.path = device;
  d.index = index;
  d.backing_file = *backing;
  d.direct_io = ReadSysfs(sys + "/loop/dio").value_or("0") == "1";
  d.read_only = ReadSysfs(sys + "/ro").value_or("0") == "1";
  d.size_bytes = std::strtoull(ReadSysfs(sys + "/size").value_or("0").c_str(), nullptr, 10) * 512;
  return d;
}

Result<LoopDevice> AttachLoop(const std::string& file, const LoopAttachOptions& options) {
  uint32_t bs = options.logical_block_size;
  if (bs < 512 || bs > 4096 || (bs & (bs - 1)) != 0) {
    return Status::InvalidArgument("loop attach " + file + ": logical block size " +
                                   std::to_string(bs) + " is not a power of two in [512, 4096]");
  }
  int open_flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  if (options.direct_io) open_flags |= O_DIRECT;
  int raw = open(file.c_str(), open_flags);
  if (raw < 0 && errno == EINVAL && options.direct_io) {
    raw = open(file.c_str(), open_flags & ~O_DIRECT);  // file system without O_DIRECT
  }
  if (raw < 0) return Status::FromErrno(errno, "loop attach: open " + file);
  Fd file_fd(raw);
  struct stat st;
  if (fstat(file_fd.get(), &st) != 0) return Status::FromErrno(errno, "loop attach: stat " + file);
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument("loop attach " + file + ": not a regular file");
  }
  if (st.st_size % bs != 0) {
    return Status::InvalidArgument("loop attach " + file + ": size " + std::to_string(st.st_size) +
                                   " is not a multiple of the block size " + std::to_string(bs));
  }

  Fd ctl(open("/dev/loop-control", O_RDWR | O_CLOEXEC));
  if (ctl.get() < 0) return Status::Unavailable("loop attach " + file + ": no /dev/loop-control");

  // Another process may take the free device between GET_FREE and CONFIGURE: retry.
  for (int attempt = 0; attempt < 64; ++attempt) {
    int index = ioctl(ctl.get(), LOOP_CTL_GET_FREE);
    if (index < 0) return Status::FromErrno(errno, "loop attach " + file + ": LOOP_CTL_GET_FREE");
    std::string dev = "/dev/loop" + std::to_string(index);
    Fd loop(open(dev.c_str(), (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (loop.get() < 0) {
      if (errno == ENOENT || errno == ENXIO) continue;  // node not created yet: retry
      return Status::FromErrno(errno, "loop attach " + file + ": open " + dev);
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.fd = static_cast<uint32_t>(file_fd.get());
    cfg.block_size = bs;
    cfg.info.lo_flags =
        (options.read_only ? LO_FLAGS_READ_ONLY : 0) | (options.direct_io ? LO_FLAGS_DIRECT_IO : 0);
    strncpy(reinterpret_cast<char*>(cfg.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
    if (ioctl(loop.get(), LOOP_CONFIGURE, &cfg) != 0) {
      if (errno == EBUSY) continue;
      return Status::FromErrno(errno, "loop attach " + file + ": LOOP_CONFIGURE " + dev);
    }
    return DescribeLoop(dev);
  }
  return Status::Unavailable("loop attach " + file + ": no free loop device after 64 attempts");
}

Status DetachLoop(const std::string& device, bool lazy) {
  if (LoopIndex(device) < 0) {
    return Status::InvalidArgument("loop device '" + device + "': not /dev/loopN");
  }
  // On current kernels (seen on 6.18), LOOP_CLR_FD on a device still in use does not
  // fail: it marks the device for automatic detach on last close and returns 0. So
  // "in use" is checked first: an exclusive open fails with EBUSY while a file system
  // is mounted on it.
  int excl = open(device.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  if (excl < 0 && (errno == ENOENT || errno == ENXIO)) return Status::Ok();
  if (excl < 0 && errno == EBUSY && !lazy) {
    return Status::FailedPrecondition("loop detach " + device +
                                      ": device busy (still mounted or held open)");
  }
  if (excl >= 0) close(excl);
  Fd loop(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (loop.get() < 0) {
    if (errno == ENOENT || errno == ENXIO) return Status::Ok();
    return Status::FromErrno(errno, "loop detach: open " + device);
  }
  if (ioctl(loop.get(), LOOP_CLR_FD) == 0) return Status::Ok();
  if (errno == ENXIO) return Status::Ok();  // not attached
  if (errno == EBUSY) {
    if (lazy) {  // older kernels: ask for autoclear explicitly
      struct loop_info64 info;
      memset(&info, 0, sizeof(info));
      if (ioctl(loop.get(), LOOP_GET_STATUS64, &info) == 0) {
        info.lo_flags |= LO_FLAGS_AUTOCLEAR;
        if (ioctl(loop.get(), LOOP_SET_STATUS64, &info) == 0) return Status::Ok();
      }
    }
    return Status::FailedPrecondition("loop detach " + device +
                                      ": device busy (still mounted or open)");
  }
  return Status::FromErrno(errno, "loop detach: LOOP_CLR_FD " + device);
}

Result<std::vector<LoopDevice>> ListLoops() {
  std::vector<LoopDevice> out;
  DIR* dir = opendir("/sys/block");
  if (dir == nullptr) return Status::FromErrno(errno, "list loop devices: /sys/block");
  while (struct dirent* de = readdir(dir)) {
    std::string name = de->d_name;
    if (name.compare(0, 4, "loop") != 0) continue;
    auto d = DescribeLoop("/dev/" + name);
    if (!d.ok()) continue;  // not attached
    const std::string deleted = " (deleted)";
    std::string& b = d->backing_file;
    if (b.size() > deleted.size() &&
        b.compare(b.size() - deleted.size(), deleted.size(), deleted) == 0) {
      b.resize(b.size() - deleted.size());
    }
    out.push_back(*d);
  }
  closedir(dir);
  return out;
}

Result<std::vector<LoopDevice>> FindLoopsBackedBy(const std::string& file) {
  std::string want = Canonical(file);
  ASSIGN_OR_RETURN(std::vector<LoopDevice> all, ListLoops());
  std::vector<LoopDevice> out;
  for (auto& d : all) {
    if (d.backing_file == want || d.backing_file == file) out.push_back(std::move(d));
  }
  return out;
}

Result<uint64_t> RefreshLoopSize(const std::string& device) {
  ASSIGN_OR_RETURN(LoopDevice d, DescribeLoop(device));
  struct stat st;
  stat(d.backing_file.c_str(), &st);  // refreshes a FUSE file's cached attributes
  Fd loop(open(device.c_str(), O_RDONLY | O_CLOEXEC));
  if (loop.get() < 0) return Status::FromErrno(errno, "loop refresh size: open " + device);
  if (ioctl(loop.get(), LOOP_SET_CAPACITY, 0) != 0) {
    return Status::FromErrno(errno, "loop refresh size: LOOP_SET_CAPACITY " + device);
  }
  uint64_t bytes = 0;
  if (ioctl(loop.get(), BLKGETSIZE64, &bytes) != 0) {
    return Status::FromErrno(errno, "loop refresh size: BLKGETSIZE64 " + device);
  }
  return bytes;
}

}  // namespace stellarium::node
