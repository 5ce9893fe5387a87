// Mounter: every mount, unmount, format, filesystem resize and filesystem query the
// driver makes, in one place. External programs (mount, umount, mkfs.ext4, resize2fs,
// blkid) are run through core's RunProgram (core/process.h) with an argument vector,
// never through a shell, so nothing in a request can be interpreted as shell syntax.
// Mount state is read from /proc/self/mountinfo through libmount (util-linux).
//
// The services call only this class and BlockDeviceProvider; neither they nor the
// tests make mount syscalls of their own.
//
// Thread-safety: stateless; safe from any thread. Two calls on the same path at once
// are the caller's business (the services hold the volume's lock).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

struct FsUsage {
  uint64_t total_bytes = 0, available_bytes = 0, used_bytes = 0;
  uint64_t total_inodes = 0, free_inodes = 0, used_inodes = 0;
};

class Mounter {
 public:
  // mount -t fs_type -o options device target. REQUIRES: target is a directory.
  Status Mount(const std::string& device, const std::string& target, const std::string& fs_type,
               const std::vector<std::string>& options);
  // Bind-mounts source (a directory or a device node) onto target; with read_only the
  // bind is remounted read-only (a plain "-o ro" bind is not read-only on Linux).
  Status BindMount(const std::string& source, const std::string& target, bool read_only,
                   const std::vector<std::string>& options);
  // Unmounts target; OK if nothing is mounted there.
  Status Unmount(const std::string& target);
  // True when `path` is a mount point in this mount namespace.
  Result<bool> IsMountPoint(const std::string& path);
  // The mount source (device or bind origin as mountinfo shows it) of mount point
  // `path`; NOT_FOUND when nothing is mounted there.
  Result<std::string> MountSource(const std::string& path);

  // The filesystem signature on `device` ("ext4"), or "" when it has none. A partition
  // table is reported as "ptable:<type>" so it is never mistaken for an empty device.
  Result<std::string> ProbeFilesystem(const std::string& device);
  // mkfs.ext4 on a device (formats the whole device).
  Status FormatExt4(const std::string& device);
  // Grows the ext4 filesystem on `device` to the device's size (online when mounted).
  Status ResizeExt4(const std::string& device);

  // statvfs() of a mounted filesystem (or any directory).
  Result<FsUsage> FilesystemUsage(const std::string& path);
  // Size in bytes of a block device node.
  Result<uint64_t> BlockDeviceSize(const std::string& device);
  // Flushes the filesystem holding `path` (syncfs), e.g. before a snapshot.
  Status SyncFilesystem(const std::string& path);

  // Publish targets: the SP creates them and removes them (CSI NodePublish/Unpublish).
  Status EnsureDirectory(const std::string& path);
  Status EnsureFile(const std::string& path);
  // Removes an empty directory or a file; OK if absent.
  Status RemovePath(const std::string& path);
  bool Exists(const std::string& path);
};

}  // namespace stellarium::node
