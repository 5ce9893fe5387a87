// The vhost-user-blk exposure (node_exposure.h): one VhostUserBlkServer per staged
// volume on <socket dir>/<volume id>.sock, reading and writing the store directly.
// Nothing is mounted on the node: the microVM's guest mounts the disk itself. A blank
// volume staged for Mount access is formatted first, once, through the block device
// provider (the guest mounts it with the recorded fs_type). Publish only creates the
// target path the kubelet hands to the runtime; the runtime descriptors are
// descriptor_exposure.cc's.
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cerrno>
#include <mutex>

#include "csi/node/node_exposure.h"
#include "csi/node/vhost_user/vhost_user_blk.h"

namespace stellarium::node {
namespace {

// The most queues a front-end may use. One thread serves them all (vhost_user_blk.h),
// so the descriptors ask for one; more are accepted for VMMs that insist.
constexpr uint32_t kMaxQueues = 4;

// ext4's superblock starts at byte 1024; its magic 0xEF53 (little endian) at +0x38.
constexpr uint64_t kExt4MagicOffset = 1024 + 0x38;

class VhostUserBlkExposure final : public NodeExposure {
 public:
  VhostUserBlkExposure(Store* store, BlockDeviceProvider* devices, Mounter* mounter,
                       std::string socket_dir, uint64_t readahead_bytes)
      : store_(store),
        devices_(devices),
        mounter_(mounter),
        socket_dir_(std::move(socket_dir)),
        readahead_bytes_(readahead_bytes) {}

  ~VhostUserBlkExposure() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, served] : served_) {
      served.server.reset();
      Status st = served.volume->Flush();
      if (!st.ok()) spdlog::error("volume {}: flush at shutdown: {}", id, st.ToString());
    }
  }

  Status Stage(StagedVolume* v) override {
    const std::string socket = SocketPath(v->volume_id);
    if (socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return Status::FailedPrecondition("volume " + v->volume_id + ": vhost-user socket path " +
                                        socket + " is longer than a unix socket path may be (" +
                                        std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                                        " bytes): use a shorter --state-dir");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = served_.find(v->volume_id);
      if (it != served_.end()) {
        if (it->second.read_only != v->read_only) {
          return Status::FailedPrecondition("volume " + v->volume_id + " is served on " + socket +
                                            (it->second.read_only ? " read-only" : " read-write"));
        }
        v->socket = socket;
        return Status::Ok();
      }
    }
    if (!v->block) RETURN_IF_ERROR(EnsureFilesystem(*v));
    v->socket = socket;
    return Serve(*v);
  }

  Status Unstage(const StagedVolume& v, bool) override {
    const std::string socket = v.socket.empty() ? SocketPath(v.volume_id) : v.socket;
    Served served;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = served_.find(v.volume_id);
      if (it != served_.end()) {
        served = std::move(it->second);
        served_.erase(it);
      }
    }
    if (served.server) {
      served.server.reset();  // closes the connection, joins the thread, removes the socket
      RETURN_IF_ERROR(served.volume->Flush().Annotate("volume " + v.volume_id + ": flush"));
      return Status::Ok();
    }
    // Not served by this process: a socket file left by a dead one goes.
    struct stat st;
    if (::lstat(socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
        ::unlink(socket.c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(errno, "volume " + v.volume_id + ": remove socket " + socket);
    }
    return Status::Ok();
  }

  Status Publish(const StagedVolume& v, const std::string& target, const PublishedTarget&,
                 bool) override {
    if (!Serving(v.volume_id)) {
      return Status::FailedPrecondition("volume " + v.volume_id +
                                        " has no vhost-user-blk back-end running: call "
                                        "NodeStageVolume again");
    }
    // The runtime finds the volume by this path (Kata: the descriptor named after it).
    return v.block ? mounter_->EnsureFile(target) : mounter_->EnsureDirectory(target);
  }

  Status Unpublish(const StagedVolume& v, const std::string& target, bool) override {
    ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(target));
    if (mounted) {
      return Status::FailedPrecondition("target_path " + target + " is a mount point; volume " +
                                        v.volume_id + " (vhost-user-blk) never mounts there");
    }
    return Status::Ok();
  }

  Status Restore(const StagedVolume& v) override {
    if (Serving(v.volume_id)) return Status::Ok();
    StagedVolume copy = v;
    if (copy.socket.empty()) copy.socket = SocketPath(v.volume_id);
    return Serve(copy);
  }

  Status Flush(const StagedVolume& v) override {
    std::shared_ptr<Volume> volume;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = served_.find(v.volume_id);
      if (it == served_.end()) return Status::Ok();
      volume = it->second.volume;
    }
    return volume->Flush();
  }

  Result<uint64_t> Expand(const StagedVolume& v) override {
    // The back-end reads the size from the volume at each request; the guest sees the
    // new capacity when its VMM reconnects (no config-change message: EXPOSURE.md).
    ASSIGN_OR_RETURN(VolumeInfo info, store_->GetVolume(v.volume_id));
    return info.size_bytes;
  }

  Result<ExposureUsage> Inspect(const StagedVolume& v, const std::string&) override {
    ExposureUsage out;
    ASSIGN_OR_RETURN(VolumeInfo info, store_->GetVolume(v.volume_id));
    out.size_bytes = info.size_bytes;
    if (!Serving(v.volume_id)) {
      out.abnormal = "no vhost-user-blk back-end is serving " + SocketPath(v.volume_id);
    }
    return out;
  }

 private:
  struct Served {
    std::shared_ptr<Volume> volume;
    std::unique_ptr<VhostUserBlkServer> server;
    bool read_only = false;
  };

  std::string SocketPath(const std::string& volume_id) const {
    return socket_dir_ + "/" + volume_id + ".sock";
  }

  bool Serving(const std::string& volume_id) {
    std::lock_guard<std::mutex> lock(mu_);
    return served_.count(volume_id) > 0;
  }

  Status Serve(const StagedVolume& v) {
    if (::mkdir(socket_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "create the vhost-user socket directory " + socket_dir_);
    }
    ASSIGN_OR_RETURN(std::shared_ptr<Volume> volume, store_->OpenVolume(v.volume_id, v.read_only));
    VhostUserBlkOptions options;
    options.num_queues = kMaxQueues;
    options.read_only = v.read_only;
    options.serial = v.volume_id;
    options.readahead_bytes = readahead_bytes_;
    auto server = VhostUserBlkServer::Start(v.socket, volume, options);
    if (!server.ok()) return server.status().Annotate("volume " + v.volume_id);
    std::lock_guard<std::mutex> lock(mu_);
    served_[v.volume_id] = Served{volume, std::move(server).value(), v.read_only};
    spdlog::info("volume {}: vhost-user-blk on {}{}", v.volume_id, v.socket,
                 v.read_only ? " (read-only)" : "");
    return Status::Ok();
  }

  // Mount access: the guest mounts the disk with v.fs_type, so a blank volume is
  // formatted once here. An ext4 superblock read through the store answers the common
  // case without attaching anything.
  Status EnsureFilesystem(const StagedVolume& v) {
    {
      ASSIGN_OR_RETURN(std::shared_ptr<Volume> volume, store_->OpenVolume(v.volume_id, true));
      unsigned char magic[2] = {0, 0};
      if (volume->size() >= kExt4MagicOffset + 2) {
        RETURN_IF_ERROR(volume->Read(kExt4MagicOffset, 2, reinterpret_cast<char*>(magic)));
      }
      if (magic[0] == 0x53 && magic[1] == 0xEF && v.fs_type == "ext4") return Status::Ok();
    }
    ASSIGN_OR_RETURN(const AttachedDevice device, devices_->Attach(v.volume_id, v.read_only));
    Status st = FormatIfBlank(v, device.device_path);
    Status detach = devices_->Detach(v.volume_id);
    RETURN_IF_ERROR(st);
    return detach;
  }

  Status FormatIfBlank(const StagedVolume& v, const std::string& device) {
    ASSIGN_OR_RETURN(const std::string on_disk, mounter_->ProbeFilesystem(device));
    if (on_disk == v.fs_type) return Status::Ok();
    if (!on_disk.empty()) {
      return Status::FailedPrecondition("volume " + v.volume_id + " holds '" + on_disk + "', not " +
                                        v.fs_type + ": the guest could not mount it");
    }
    if (v.read_only) {
      return Status::FailedPrecondition("volume " + v.volume_id +
                                        " has no filesystem yet and is staged read-only: stage "
                                        "it read-write once to format it");
    }
    spdlog::info("volume {}: no filesystem, formatting {} before serving it", v.volume_id,
                 v.fs_type);
    return mounter_->FormatExt4(device);
  }

  Store* const store_;
  BlockDeviceProvider* const devices_;
  Mounter* const mounter_;
  const std::string socket_dir_;
  const uint64_t readahead_bytes_;  // VhostUserBlkOptions::readahead_bytes
  std::mutex mu_;
  std::map<std::string, Served> served_;  // GUARDED_BY(mu_), by volume id
};

}  // namespace

std::unique_ptr<NodeExposure> NewVhostUserBlkExposure(Store* store, BlockDeviceProvider* devices,
                                                      Mounter* mounter, std::string socket_dir,
                                                      uint64_t readahead_bytes) {
  return std::make_unique<VhostUserBlkExposure>(store, devices, mounter, std::move(socket_dir),
                                                readahead_bytes);
}

}  // namespace stellarium::node
