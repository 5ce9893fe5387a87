#include "csi/node/node_state.h"

#include <errno.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

namespace stellarium::node {
namespace {

namespace fs = std::filesystem;

std::string Encode(const StagedVolume& v) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "volume_id" << YAML::Value << v.volume_id;
  out << YAML::Key << "staging_path" << YAML::Value << v.staging_path;
  out << YAML::Key << "device" << YAML::Value << v.device;
  out << YAML::Key << "block" << YAML::Value << v.block;
  out << YAML::Key << "fs_type" << YAML::Value << v.fs_type;
  out << YAML::Key << "mount_flags" << YAML::Value << YAML::Flow << v.mount_flags;
  out << YAML::Key << "access_mode" << YAML::Value << v.access_mode;
  out << YAML::Key << "read_only" << YAML::Value << v.read_only;
  out << YAML::Key << "exposure" << YAML::Value << v.exposure;
  out << YAML::Key << "socket" << YAML::Value << v.socket;
  out << YAML::Key << "targets" << YAML::Value << YAML::BeginMap;
  for (const auto& [path, t] : v.targets) {
    out << YAML::Key << path << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "read_only" << YAML::Value << t.read_only;
    out << YAML::Key << "mount_flags" << YAML::Value << YAML::Flow << t.mount_flags;
    out << YAML::Key << "created" << YAML::Value << t.created;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

template <typename T>
T Field(const YAML::Node& node, const char* key, T fallback) {
  return node[key] ? node[key].as<T>() : fallback;
}

StagedVolume Decode(const YAML::Node& n) {
  StagedVolume v;
  v.volume_id = Field<std::string>(n, "volume_id", "");
  v.staging_path = Field<std::string>(n, "staging_path", "");
  v.device = Field<std::string>(n, "device", "");
  v.block = Field<bool>(n, "block", false);
  v.fs_type = Field<std::string>(n, "fs_type", "");
  v.mount_flags = Field<std::vector<std::string>>(n, "mount_flags", {});
  v.access_mode = Field<int>(n, "access_mode", 0);
  v.read_only = Field<bool>(n, "read_only", false);
  v.exposure = Field<std::string>(n, "exposure", "");
  v.socket = Field<std::string>(n, "socket", "");
  if (n["targets"]) {
    for (const auto& kv : n["targets"]) {
      PublishedTarget t;
      t.read_only = Field<bool>(kv.second, "read_only", false);
      t.mount_flags = Field<std::vector<std::string>>(kv.second, "mount_flags", {});
      t.created = Field<bool>(kv.second, "created", false);
      v.targets[kv.first.as<std::string>()] = t;
    }
  }
  return v;
}

}  // namespace

std::string NodeState::PathFor(const std::string& volume_id) const {
  return dir_ + "/" + volume_id + ".yaml";
}

Status NodeState::Load() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) return Status::Internal("create " + dir_ + ": " + ec.message());
  std::map<std::string, StagedVolume> loaded;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    if (entry.path().extension() != ".yaml") continue;
    try {
      StagedVolume v = Decode(YAML::LoadFile(entry.path().string()));
      if (v.volume_id.empty()) throw YAML::Exception(YAML::Mark(), "no volume_id");
      loaded[v.volume_id] = std::move(v);
    } catch (const YAML::Exception& e) {
      return Status::Corruption("node state " + entry.path().string() + ": " + e.what());
    }
  }
  if (ec) return Status::Internal("read " + dir_ + ": " + ec.message());
  std::lock_guard<std::mutex> lock(mu_);
  volumes_ = std::move(loaded);
  return Status::Ok();
}

std::optional<StagedVolume> NodeState::Get(const std::string& volume_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = volumes_.find(volume_id);
  if (it == volumes_.end()) return std::nullopt;
  return it->second;
}

std::vector<StagedVolume> NodeState::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<StagedVolume> out;
  for (const auto& [id, v] : volumes_) out.push_back(v);
  return out;
}

Status NodeState::Put(const StagedVolume& staged) {
  std::string path = PathFor(staged.volume_id);
  std::string tmp = path + ".tmp";
  std::string data = Encode(staged);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  ssize_t n = ::write(fd, data.data(), data.size());
  int err = errno;
  if (n != static_cast<ssize_t>(data.size()) || ::fsync(fd) != 0) {
    ::close(fd);
    return Status::FromErrno(n < 0 ? err : EIO, "write " + tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + tmp);
  std::lock_guard<std::mutex> lock(mu_);
  volumes_[staged.volume_id] = staged;
  return Status::Ok();
}

Status NodeState::Remove(const std::string& volume_id) {
  std::string path = PathFor(volume_id);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "remove " + path);
  }
  std::lock_guard<std::mutex> lock(mu_);
  volumes_.erase(volume_id);
  return Status::Ok();
}

}  // namespace stellarium::node
