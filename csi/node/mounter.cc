#include "csi/node/mounter.h"

#include "core/process.h"

#include <errno.h>
#include <fcntl.h>
#include <libmount.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <sstream>

namespace stellarium::node {
namespace {

std::string Join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

// One mount of this mount namespace, as /proc/self/mountinfo lists it.
struct MountEntry {
  std::string mount_point;
  std::string source;  // device or bind origin, "none", "" when the kernel shows none
};

std::string OrEmpty(const char* s) { return s ? s : ""; }

// The mount table, read by libmount from /proc/self/mountinfo (it decodes the kernel's
// octal escapes). The file is only read: no mount point is stat()ed, so a dead FUSE
// mount in the table cannot make this wait.
Result<std::vector<MountEntry>> ReadMountInfo() {
  static constexpr char kMountInfo[] = "/proc/self/mountinfo";
  std::unique_ptr<libmnt_table, void (*)(libmnt_table*)> table(mnt_new_table(), mnt_unref_table);
  if (!table) return Status::Internal("libmount: cannot allocate a mount table");
  if (int rc = mnt_table_parse_file(table.get(), kMountInfo); rc < 0) {
    return Status::FromErrno(-rc, std::string("read ") + kMountInfo);
  }
  std::unique_ptr<libmnt_iter, void (*)(libmnt_iter*)> it(mnt_new_iter(MNT_ITER_FORWARD),
                                                          mnt_free_iter);
  if (!it) return Status::Internal("libmount: cannot allocate an iterator");
  std::vector<MountEntry> entries;
  libmnt_fs* fs = nullptr;
  while (mnt_table_next_fs(table.get(), it.get(), &fs) == 0) {
    entries.push_back({OrEmpty(mnt_fs_get_target(fs)), OrEmpty(mnt_fs_get_source(fs))});
  }
  return entries;
}

}  // namespace

Status Mounter::Mount(const std::string& device, const std::string& target,
                      const std::string& fs_type, const std::vector<std::string>& options) {
  std::vector<std::string> argv = {"mount"};
  if (!fs_type.empty()) argv.insert(argv.end(), {"-t", fs_type});
  if (!options.empty()) argv.insert(argv.end(), {"-o", Join(options, ",")});
  argv.insert(argv.end(), {"--", device, target});
  return RunProgramOk(argv);
}

Status Mounter::BindMount(const std::string& source, const std::string& target, bool read_only,
                          const std::vector<std::string>& options) {
  std::vector<std::string> argv = {"mount", "--bind"};
  if (!options.empty()) argv.insert(argv.end(), {"-o", Join(options, ",")});
  argv.insert(argv.end(), {"--", source, target});
  RETURN_IF_ERROR(RunProgramOk(argv));
  if (read_only) {
    std::vector<std::string> opts = {"remount", "bind", "ro"};
    opts.insert(opts.end(), options.begin(), options.end());
    Status st = RunProgramOk({"mount", "-o", Join(opts, ","), "--", target});
    if (!st.ok()) {
      Status undo = Unmount(target);
      (void)undo;
      return st;
    }
  }
  return Status::Ok();
}

Status Mounter::Unmount(const std::string& target) {
  ASSIGN_OR_RETURN(bool mounted, IsMountPoint(target));
  if (!mounted) return Status::Ok();
  return RunProgramOk({"umount", "--", target});
}

Result<bool> Mounter::IsMountPoint(const std::string& path) {
  ASSIGN_OR_RETURN(auto entries, ReadMountInfo());
  for (const auto& e : entries) {
    if (e.mount_point == path) return true;
  }
  return false;
}

Result<std::string> Mounter::MountSource(const std::string& path) {
  ASSIGN_OR_RETURN(auto entries, ReadMountInfo());
  // The last entry for a mount point is the one on top.
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->mount_point == path) return it->source;
  }
  return Status::NotFound(path + ": not a mount point");
}

Result<std::string> Mounter::ProbeFilesystem(const std::string& device) {
  ASSIGN_OR_RETURN(ProgramResult r,
                   RunProgram({"blkid", "-p", "-o", "export", "--", device}));
  // blkid exits 2 when it finds no signature at all.
  if (r.exit_code == 2) return std::string();
  if (r.exit_code != 0) {
    return Status::Internal("blkid " + device + " exited with " + std::to_string(r.exit_code) +
                            ": " + r.output);
  }
  std::istringstream lines(r.output);
  std::string line, type, ptype;
  while (std::getline(lines, line)) {
    if (line.rfind("TYPE=", 0) == 0) type = line.substr(5);
    if (line.rfind("PTTYPE=", 0) == 0) ptype = line.substr(7);
  }
  if (!type.empty()) return type;
  if (!ptype.empty()) return "ptable:" + ptype;
  return std::string("unknown");
}

Status Mounter::FormatExt4(const std::string& device) {
  return RunProgramOk({"mkfs.ext4", "-q", "-F", "-m", "0", "--", device});
}

Status Mounter::ResizeExt4(const std::string& device) {
  Status st = RunProgramOk({"resize2fs", "--", device});
  if (!st.ok() && st.message().find("Permission denied") != std::string::npos) {
    // The kernel refuses EXT4_IOC_RESIZE_FS without CAP_SYS_RESOURCE.
    return Status::FailedPrecondition(
        "growing the mounted ext4 on " + device +
        " needs CAP_SYS_RESOURCE: run the node plugin privileged (" + st.message() + ")");
  }
  return st;
}

Result<FsUsage> Mounter::FilesystemUsage(const std::string& path) {
  struct statvfs st;
  if (::statvfs(path.c_str(), &st) != 0) return Status::FromErrno(errno, "statvfs " + path);
  FsUsage u;
  u.total_bytes = static_cast<uint64_t>(st.f_blocks) * st.f_frsize;
  u.available_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  u.used_bytes = static_cast<uint64_t>(st.f_blocks - st.f_bfree) * st.f_frsize;
  u.total_inodes = st.f_files;
  u.free_inodes = st.f_ffree;
  u.used_inodes = st.f_files - st.f_ffree;
  return u;
}

Result<uint64_t> Mounter::BlockDeviceSize(const std::string& device) {
  int fd = ::open(device.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + device);
  uint64_t size = 0;
  int rc = ::ioctl(fd, BLKGETSIZE64, &size);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno(err, "BLKGETSIZE64 " + device);
  return size;
}

Status Mounter::SyncFilesystem(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  int rc = ::syncfs(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno(err, "syncfs " + path);
  return Status::Ok();
}

Status Mounter::EnsureDirectory(const std::string& path) {
  if (::mkdir(path.c_str(), 0750) == 0 || errno == EEXIST) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Status::Ok();
    return Status::FailedPrecondition(path + " exists and is not a directory");
  }
  return Status::FromErrno(errno, "mkdir " + path);
}

Status Mounter::EnsureFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (fd < 0) {
    if (errno == EISDIR) return Status::FailedPrecondition(path + " is a directory, not a file");
    return Status::FromErrno(errno, "create " + path);
  }
  ::close(fd);
  return Status::Ok();
}

Status Mounter::RemovePath(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "stat " + path);
  }
  int rc = S_ISDIR(st.st_mode) ? ::rmdir(path.c_str()) : ::unlink(path.c_str());
  if (rc != 0 && errno != ENOENT) return Status::FromErrno(errno, "remove " + path);
  return Status::Ok();
}

bool Mounter::Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace stellarium::node
