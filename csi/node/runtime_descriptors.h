// Descriptors that microVM runtimes read to use a staged volume directly:
//   - Kata Containers direct-assigned volumes: mountInfo.json in
//     <root>/<base64url(target path)>/ (root /run/kata-containers/shared/direct-volumes),
//     directory 0700, file 0600; keys "volume-type", "device", "fstype", "metadata",
//     "options" (what `kata-runtime direct-volume add` writes). base64url is RFC 4648 §5
//     with '=' padding (Go's base64.URLEncoding, which Kata uses).
//   - a Firecracker drive object (PUT /drives/{drive_id} body): "drive_id",
//     "path_on_host" (a block device) or "socket" (vhost-user-blk), "is_read_only",
//     "is_root_device".
//   - a Cloud Hypervisor --disk argument: "path=...,readonly=on" or
//     "vhost_user=on,socket=...,num_queues=N,readonly=on".
// Files are written atomically (temporary file + rename) and removal is idempotent.
// The JSON is written with nlohmann-json (keys in the order above, no spaces) and
// base64url comes from absl; text that is not valid UTF-8 cannot be JSON and is
// refused with INVALID_ARGUMENT.
//
// Thread-safety: free functions; concurrent writes for the same target are the
// caller's to serialize (the CSI node service holds a per-volume lock).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

inline constexpr char kKataDirectVolumesRoot[] = "/run/kata-containers/shared/direct-volumes";
inline constexpr char kKataMountInfoFile[] = "mountInfo.json";

// RFC 4648 §5 alphabet with '=' padding.
std::string Base64Url(const std::string& data);

struct KataMountInfo {
  std::string volume_type{};  // "block" for a block device; a runtime-specific type otherwise
  std::string device{};       // device node path (or vhost-user socket for such types)
  std::string fstype{};       // "ext4", ... ("" for raw block)
  std::map<std::string, std::string> metadata{};
  std::vector<std::string> options{};  // mount options
};

// The mountInfo.json text. INVALID_ARGUMENT when a value is not valid UTF-8.
Result<std::string> KataMountInfoJson(const KataMountInfo& info);
// <root>/<base64url(target_path)>
std::string KataVolumeDir(const std::string& root, const std::string& target_path);
// Writes the file; returns its path. INVALID_ARGUMENT for a relative or empty target
// path, an empty volume type or device, or a value that is not valid UTF-8 (nothing
// is written then).
Result<std::string> WriteKataMountInfo(const std::string& root, const std::string& target_path,
                                       const KataMountInfo& info);
// Removes the file and its directory. OK if absent.
Status RemoveKataMountInfo(const std::string& root, const std::string& target_path);

struct FirecrackerDrive {
  std::string drive_id{};      // [A-Za-z0-9_]+
  std::string path_on_host{};  // exactly one of path_on_host and socket
  std::string socket{};
  bool is_read_only = false;
  bool is_root_device = false;
};
Result<std::string> FirecrackerDriveJson(const FirecrackerDrive& drive);

struct CloudHypervisorDisk {
  std::string path{};  // exactly one of path and socket
  std::string socket{};
  bool readonly = false;
  uint32_t num_queues = 0;  // 0 = leave to the VMM
  std::string id{};         // optional device id
};
Result<std::string> CloudHypervisorDiskArg(const CloudHypervisorDisk& disk);

// Writes `content` to `path` with `mode`, atomically; creates the parent directory
// (mode 0700) if missing.
Status WriteDescriptorFile(const std::string& path, const std::string& content,
                           unsigned mode = 0600);
// OK if absent.
Status RemoveDescriptorFile(const std::string& path);

}  // namespace stellarium::node
