// FuseLoopBlockDeviceProvider: see fuse_loop_provider.h.
#include "csi/exposure/fuse_loop_provider.h"

#include <sys/stat.h>

namespace stellarium::exposure {

FuseLoopBlockDeviceProvider::FuseLoopBlockDeviceProvider(Store* store,
                                                         FuseLoopProviderOptions options)
    : store_(store), options_(std::move(options)), mountpoint_(options_.state_dir + "/fuse") {}

Result<std::unique_ptr<FuseLoopBlockDeviceProvider>> FuseLoopBlockDeviceProvider::Create(
    Store* store, const FuseLoopProviderOptions& options) {
  if (store == nullptr) return Status::InvalidArgument("fuse block devices: no store given");
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return Status::InvalidArgument("fuse block devices: state directory '" + options.state_dir +
                                   "' is not an absolute path");
  }
  if (mkdir(options.state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "fuse block devices: mkdir " + options.state_dir);
  }
  std::unique_ptr<FuseLoopBlockDeviceProvider> p(new FuseLoopBlockDeviceProvider(store, options));
  ASSIGN_OR_RETURN(p->fuse_, FuseBlockServer::Start({.mountpoint = p->mountpoint_}));
  return p;
}

FuseLoopBlockDeviceProvider::~FuseLoopBlockDeviceProvider() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, a] : attached_) (void)a.volume->Flush();
  fuse_.reset();
}

Result<std::vector<csi::AttachedDevice>> FuseLoopBlockDeviceProvider::Recover() {
  ASSIGN_OR_RETURN(std::vector<LoopDevice> loops, ListLoops());
  const std::string prefix = mountpoint_ + "/";
  std::lock_guard<std::mutex> lock(mu_);
  for (const LoopDevice& d : loops) {
    if (d.backing_file.compare(0, prefix.size(), prefix) != 0) continue;
    std::string name = d.backing_file.substr(prefix.size());
    if (attached_.count(name)) continue;  // ours, from this run
    // Left by an earlier run: its FUSE connection is gone, so it only returns errors.
    // Detach it now, or when its last user (a stale mount) lets go.
    (void)DetachLoop(d.path, /*lazy=*/true);
  }
  std::vector<csi::AttachedDevice> out;
  for (const auto& [id, a] : attached_) out.push_back(a.device);
  return out;
}

Result<csi::AttachedDevice> FuseLoopBlockDeviceProvider::Attach(const std::string& volume_id,
                                                                bool read_only) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attached_.find(volume_id);
  if (it != attached_.end()) {
    if (it->second.device.read_only != read_only) {
      return Status::FailedPrecondition("volume " + volume_id + ": already attached " +
                                        (it->second.device.read_only ? "read-only" : "read-write") +
                                        " at " + it->second.device.device_path);
    }
    return it->second.device;
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Volume> vol, store_->OpenVolume(volume_id, read_only));
  RETURN_IF_ERROR(fuse_->AddVolume(volume_id, vol));
  auto loop = AttachLoop(fuse_->PathOf(volume_id),
                         {.read_only = read_only, .direct_io = options_.direct_io});
  if (!loop.ok()) {
    (void)fuse_->RemoveVolume(volume_id);
    return loop.status().Annotate("volume " + volume_id);
  }
  csi::AttachedDevice dev{volume_id, loop->path, read_only, loop->size_bytes};
  attached_[volume_id] = Attachment{vol, dev};
  return dev;
}

Status FuseLoopBlockDeviceProvider::Detach(const std::string& volume_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attached_.find(volume_id);
  if (it == attached_.end()) return Status::Ok();
  RETURN_IF_ERROR(DetachLoop(it->second.device.device_path).Annotate("volume " + volume_id));
  Status s = fuse_->RemoveVolume(volume_id);  // flushes
  attached_.erase(it);
  return s;
}

Status FuseLoopBlockDeviceProvider::Sync(const std::string& volume_id) {
  std::shared_ptr<Volume> vol;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = attached_.find(volume_id);
    if (it == attached_.end()) return Status::Ok();
    vol = it->second.volume;
  }
  // Writes reach the store as they happen (FUSE direct_io, no cache below the device):
  // making them durable is all that is left.
  if (vol->read_only()) return Status::Ok();
  return vol->Flush().Annotate("volume " + volume_id + ": sync");
}

Result<uint64_t> FuseLoopBlockDeviceProvider::Resize(const std::string& volume_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attached_.find(volume_id);
  if (it == attached_.end()) {
    return Status::FailedPrecondition("volume " + volume_id + ": not attached");
  }
  RETURN_IF_ERROR(fuse_->NotifyResized(volume_id));
  ASSIGN_OR_RETURN(uint64_t size, RefreshLoopSize(it->second.device.device_path));
  it->second.device.size_bytes = size;
  return size;
}

std::optional<csi::AttachedDevice> FuseLoopBlockDeviceProvider::Find(const std::string& volume_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attached_.find(volume_id);
  if (it == attached_.end()) return std::nullopt;
  return it->second.device;
}

}  // namespace stellarium::exposure
