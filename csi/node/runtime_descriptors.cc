// Runtime descriptors: see runtime_descriptors.h.
#include "csi/node/runtime_descriptors.h"

#include <absl/strings/escaping.h>
#include <errno.h>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

namespace stellarium::node {

std::string Base64Url(const std::string& in) {
  // absl's web-safe alphabet is RFC 4648 §5's, without padding; Go's
  // base64.URLEncoding (what Kata decodes with) pads to a multiple of 4 with '='.
  std::string out = absl::WebSafeBase64Escape(in);
  out.append((4 - out.size() % 4) % 4, '=');
  return out;
}

namespace {

// Compact JSON text of `j` and a newline. nlohmann-json refuses strings that are not
// valid UTF-8 (type_error 316); `what` names the descriptor in the error.
Result<std::string> DumpJson(const nlohmann::ordered_json& j, const std::string& what) {
  try {
    return j.dump() + "\n";
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(what + ": a value is not valid UTF-8 (" + e.what() + ")");
  }
}

Status CheckTarget(const std::string& target_path) {
  if (target_path.empty() || target_path[0] != '/') {
    return Status::InvalidArgument("kata direct volume: target path '" + target_path +
                                   "' is not absolute");
  }
  return Status::Ok();
}

}  // namespace

Result<std::string> KataMountInfoJson(const KataMountInfo& info) {
  nlohmann::ordered_json j;
  j["volume-type"] = info.volume_type;
  j["device"] = info.device;
  j["fstype"] = info.fstype;
  j["metadata"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : info.metadata) j["metadata"][k] = v;
  j["options"] = info.options;
  return DumpJson(j, "kata direct volume " + info.device);
}

std::string KataVolumeDir(const std::string& root, const std::string& target_path) {
  return root + "/" + Base64Url(target_path);
}

Status WriteDescriptorFile(const std::string& path, const std::string& content, unsigned mode) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) {
    return Status::InvalidArgument("descriptor path '" + path + "': not an absolute file path");
  }
  std::string dir = path.substr(0, slash);
  // Create missing parents (0700 for the leaf directory, which holds the descriptor).
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = dir.find('/', pos + 1);
    std::string prefix = dir.substr(0, pos);
    if (mkdir(prefix.c_str(), pos == std::string::npos ? 0700 : 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "descriptor " + path + ": mkdir " + prefix);
    }
  }
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, "descriptor " + path + ": create");
  fchmod(fd, mode);  // not subject to the umask
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return Status::FromErrno(err, "descriptor " + path + ": write");
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    unlink(tmp.c_str());
    return Status::FromErrno(errno, "descriptor " + path + ": sync");
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Status::FromErrno(err, "descriptor " + path + ": rename");
  }
  return Status::Ok();
}

Status RemoveDescriptorFile(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "descriptor " + path + ": remove");
  }
  return Status::Ok();
}

Result<std::string> WriteKataMountInfo(const std::string& root, const std::string& target_path,
                                       const KataMountInfo& info) {
  RETURN_IF_ERROR(CheckTarget(target_path));
  if (info.volume_type.empty() || info.device.empty()) {
    return Status::InvalidArgument("kata direct volume for " + target_path +
                                   ": volume-type and device must be set");
  }
  ASSIGN_OR_RETURN(const std::string json, KataMountInfoJson(info));
  std::string dir = KataVolumeDir(root, target_path);
  std::string file = dir + "/" + kKataMountInfoFile;
  RETURN_IF_ERROR(WriteDescriptorFile(file, json, 0600));
  if (chmod(dir.c_str(), 0700) != 0)
    return Status::FromErrno(errno, "kata direct volume: chmod " + dir);
  return file;
}

Status RemoveKataMountInfo(const std::string& root, const std::string& target_path) {
  RETURN_IF_ERROR(CheckTarget(target_path));
  std::string dir = KataVolumeDir(root, target_path);
  RETURN_IF_ERROR(RemoveDescriptorFile(dir + "/" + kKataMountInfoFile));
  if (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "kata direct volume: remove " + dir);
  }
  return Status::Ok();
}

Result<std::string> FirecrackerDriveJson(const FirecrackerDrive& d) {
  if (d.drive_id.empty()) return Status::InvalidArgument("firecracker drive: empty drive_id");
  for (char c : d.drive_id) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_') {
      return Status::InvalidArgument("firecracker drive '" + d.drive_id +
                                     "': drive_id may hold only letters, digits and '_'");
    }
  }
  if (d.path_on_host.empty() == d.socket.empty()) {
    return Status::InvalidArgument("firecracker drive " + d.drive_id +
                                   ": set exactly one of path_on_host and socket");
  }
  nlohmann::ordered_json j;
  j["drive_id"] = d.drive_id;
  if (!d.path_on_host.empty()) {
    j["path_on_host"] = d.path_on_host;
  } else {
    j["socket"] = d.socket;
  }
  j["is_read_only"] = d.is_read_only;
  j["is_root_device"] = d.is_root_device;
  return DumpJson(j, "firecracker drive " + d.drive_id);
}

Result<std::string> CloudHypervisorDiskArg(const CloudHypervisorDisk& d) {
  if (d.path.empty() == d.socket.empty()) {
    return Status::InvalidArgument("cloud-hypervisor disk: set exactly one of path and socket");
  }
  for (const std::string* v : {&d.path, &d.socket, &d.id}) {
    if (v->find_first_of(",=\n") != std::string::npos) {
      return Status::InvalidArgument("cloud-hypervisor disk value '" + *v +
                                     "': may not contain ',', '=' or a newline");
    }
  }
  std::string out;
  if (!d.path.empty()) {
    out = "path=" + d.path;
  } else {
    out = "vhost_user=on,socket=" + d.socket;
  }
  if (d.num_queues > 0) out += ",num_queues=" + std::to_string(d.num_queues);
  out += d.readonly ? ",readonly=on" : ",readonly=off";
  if (!d.id.empty()) out += ",id=" + d.id;
  return out;
}

}  // namespace stellarium::node
