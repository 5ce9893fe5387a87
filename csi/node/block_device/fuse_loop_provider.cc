// FuseLoopBlockDeviceProvider: see fuse_loop_provider.h.
#include "csi/node/block_device/fuse_loop_provider.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

namespace stellarium::node {
namespace {

constexpr char kHolderEntry[] = "fuse";

// What the holder keeps with the fd: the mountpoint, a newline, the FUSE_INIT body.
std::string HolderPayload(const std::string& mountpoint, const std::string& init_in) {
  return mountpoint + "\n" + init_in;
}

}  // namespace

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
  if (!p->TryResume()) {
    ASSIGN_OR_RETURN(
        p->fuse_, FuseBlockServer::Start(
                      {.mountpoint = p->mountpoint_, .readahead_bytes = options.readahead_bytes}));
  }
  if (options.fd_holder_socket.empty()) {
    spdlog::warn(
        "fuse block devices: no fd holder configured: staged volumes will not "
        "survive a restart of the driver");
    return p;
  }
  const std::string socket = options.fd_holder_socket;
  p->lease_ = std::make_unique<FdHolderLease>(
      socket, kHolderEntry, p->fuse_->fd(), HolderPayload(p->mountpoint_, p->fuse_->init_in()),
      [socket](bool held) {
        if (held) {
          spdlog::info(
              "fuse block devices: fd holder {} keeps the FUSE connection: staged "
              "volumes survive a restart of the driver",
              socket);
        } else {
          spdlog::warn(
              "fuse block devices: no fd holder listens on {}: staged volumes will "
              "not survive a restart of the driver until one does (retrying)",
              socket);
        }
      });
  return p;
}

bool FuseLoopBlockDeviceProvider::TryResume() {
  const std::string& socket = options_.fd_holder_socket;
  if (socket.empty()) return false;
  Result<HeldFd> held = FdHolderGet(socket, kHolderEntry);
  if (!held.ok()) {
    if (held.status().code() != StatusCode::kNotFound) {
      spdlog::warn("fuse block devices: {}", held.status().ToString());
    }
    return false;
  }
  size_t nl = held->payload.find('\n');
  std::string mountpoint = held->payload.substr(0, nl);
  if (nl == std::string::npos || mountpoint != mountpoint_) {
    spdlog::warn(
        "fuse block devices: the fd holder keeps a FUSE connection for '{}', not {}; "
        "ignoring it",
        mountpoint, mountpoint_);
    close(held->fd);
    return false;
  }
  auto server = FuseBlockServer::Resume(
      {.mountpoint = mountpoint_, .readahead_bytes = options_.readahead_bytes},
      {.fd = held->fd, .init_in = held->payload.substr(nl + 1)});
  close(held->fd);
  if (!server.ok()) {
    spdlog::warn(
        "fuse block devices: cannot resume the FUSE connection kept by the fd holder "
        "({}); mounting afresh",
        server.status().ToString());
    (void)FdHolderDrop(socket, kHolderEntry);
    return false;
  }
  fuse_ = std::move(server).value();
  resumed_ = true;
  AdoptLoops();
  Status st = fuse_->Serve();
  if (!st.ok()) {
    spdlog::warn(
        "fuse block devices: {}: an I/O the previous driver had in progress when it "
        "was killed never completes",
        st.ToString());
  }
  spdlog::info("fuse block devices: resumed the FUSE connection at {} with {} volume(s)",
               mountpoint_, attached_.size());
  return true;
}

void FuseLoopBlockDeviceProvider::AdoptLoops() {
  Result<std::vector<LoopDevice>> loops = ListLoops();
  if (!loops.ok()) {
    spdlog::error("fuse block devices: list loop devices: {}", loops.status().ToString());
    return;
  }
  const std::string prefix = mountpoint_ + "/";
  std::lock_guard<std::mutex> lock(mu_);
  for (const LoopDevice& d : *loops) {
    if (d.backing_file.compare(0, prefix.size(), prefix) != 0) continue;
    std::string id = d.backing_file.substr(prefix.size());
    if (attached_.count(id)) {
      // Two loop devices on one file: keep the first, let the other go when unused.
      spdlog::warn("volume {}: second loop device {} on {}; detaching it when unused", id, d.path,
                   d.backing_file);
      (void)DetachLoop(d.path, /*lazy=*/true);
      continue;
    }
    Result<std::shared_ptr<Volume>> vol = store_->OpenVolume(id, d.read_only);
    Status st = vol.ok() ? fuse_->AddVolume(id, *vol) : vol.status();
    if (!st.ok()) {
      spdlog::error("volume {}: cannot serve {} again ({}); detaching it when unused", id, d.path,
                    st.ToString());
      (void)DetachLoop(d.path, /*lazy=*/true);
      continue;
    }
    attached_[id] = Attachment{*vol, AttachedDevice{id, d.path, d.read_only, d.size_bytes}};
    spdlog::info("volume {}: re-adopted {}", id, d.path);
  }
}

FuseLoopBlockDeviceProvider::~FuseLoopBlockDeviceProvider() {
  bool held = lease_ && lease_->held();
  lease_.reset();  // stop watching; the holder keeps what it holds
  std::lock_guard<std::mutex> lock(mu_);
  if (held && !attached_.empty()) {
    // Drain: every request read is answered; later ones wait in the kernel for the
    // next driver, which resumes the connection.
    fuse_->Release();
    for (auto& [id, a] : attached_) {
      if (!a.volume->read_only()) (void)a.volume->Flush();
    }
    spdlog::info(
        "fuse block devices: {} volume(s) stay attached; the fd holder keeps the "
        "FUSE connection for the next driver",
        attached_.size());
    return;
  }
  for (auto& [id, a] : attached_) {
    if (!a.volume->read_only()) (void)a.volume->Flush();
  }
  if (!attached_.empty()) {
    spdlog::error(
        "fuse block devices: stopping without an fd holder: {} attached volume(s) "
        "lose their device",
        attached_.size());
  }
  fuse_.reset();  // unmounts: the connection ends
  if (!options_.fd_holder_socket.empty()) {
    (void)FdHolderDrop(options_.fd_holder_socket, kHolderEntry);
  }
}

Result<std::vector<AttachedDevice>> FuseLoopBlockDeviceProvider::Recover() {
  ASSIGN_OR_RETURN(std::vector<LoopDevice> loops, ListLoops());
  const std::string prefix = mountpoint_ + "/";
  std::lock_guard<std::mutex> lock(mu_);
  for (const LoopDevice& d : loops) {
    if (d.backing_file.compare(0, prefix.size(), prefix) != 0) continue;
    std::string name = d.backing_file.substr(prefix.size());
    auto it = attached_.find(name);
    if (it != attached_.end() && it->second.device.device_path == d.path) continue;  // ours
    // Left by an earlier run whose FUSE connection is gone: it only returns errors.
    // Detach it now, or when its last user (a stale mount) lets go.
    (void)DetachLoop(d.path, /*lazy=*/true);
  }
  std::vector<AttachedDevice> out;
  for (const auto& [id, a] : attached_) out.push_back(a.device);
  return out;
}

Result<AttachedDevice> FuseLoopBlockDeviceProvider::Attach(const std::string& volume_id,
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
  AttachedDevice dev{volume_id, loop->path, read_only, loop->size_bytes};
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

std::optional<AttachedDevice> FuseLoopBlockDeviceProvider::Find(const std::string& volume_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attached_.find(volume_id);
  if (it == attached_.end()) return std::nullopt;
  return it->second.device;
}

}  // namespace stellarium::node
