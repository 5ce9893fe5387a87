// The block device exposure (node_exposure.h): a kernel block device from the
// BlockDeviceProvider, formatted ext4 on first use and mounted at the staging path for
// Mount access, bind-mounted at each target. Every device call goes to the provider,
// every mount and format call to the Mounter.
#include <spdlog/spdlog.h>

#include "csi/node/node_exposure.h"

namespace stellarium::node {
namespace {

class BlockDeviceExposure final : public NodeExposure {
 public:
  BlockDeviceExposure(BlockDeviceProvider* devices, Mounter* mounter)
      : devices_(devices), mounter_(mounter) {}

  Status Stage(StagedVolume* v) override {
    const std::string& id = v->volume_id;
    std::optional<AttachedDevice> before = devices_->Find(id);
    ASSIGN_OR_RETURN(const AttachedDevice device, devices_->Attach(id, v->read_only));
    // Undo only what this call attached: a repeated stage leaves a working device alone.
    auto rollback = [&](const Status& st) {
      if (!before) {
        Status undo = devices_->Detach(id);
        if (!undo.ok())
          spdlog::error("volume {}: rollback of stage failed: {}", id, undo.ToString());
      }
      return st;
    };
    v->device = device.device_path;
    if (v->block) return Status::Ok();

    const std::string& staging = v->staging_path;
    Result<bool> mounted = mounter_->IsMountPoint(staging);
    if (!mounted.ok()) return rollback(mounted.status());
    if (*mounted) {
      Result<std::string> source = mounter_->MountSource(staging);
      if (!source.ok() || *source != device.device_path) {
        return rollback(Status::FailedPrecondition("staging_target_path " + staging +
                                                   " already has something else mounted on it"));
      }
      return Status::Ok();
    }
    if (before)
      spdlog::warn("volume {}: staged at {} but not mounted; mounting again", id, staging);
    Status st = mounter_->EnsureDirectory(staging);
    if (!st.ok()) return rollback(st);
    Result<std::string> on_disk = mounter_->ProbeFilesystem(device.device_path);
    if (!on_disk.ok()) return rollback(on_disk.status());
    if (on_disk->empty()) {
      if (v->read_only) {
        return rollback(
            Status::FailedPrecondition("volume " + id +
                                       " has no filesystem yet and is staged read-only: stage it "
                                       "read-write once to format it"));
      }
      spdlog::info("volume {}: no filesystem on {}, formatting ext4", id, device.device_path);
      st = mounter_->FormatExt4(device.device_path);
      if (!st.ok()) return rollback(st);
    } else if (*on_disk != v->fs_type) {
      return rollback(Status::FailedPrecondition("volume " + id + " holds '" + *on_disk +
                                                 "', not " + v->fs_type + ": cannot mount it"));
    }
    std::vector<std::string> options = v->mount_flags;
    if (v->read_only) options.push_back("ro");
    st = mounter_->Mount(device.device_path, staging, v->fs_type, options);
    if (!st.ok()) return rollback(st);
    return Status::Ok();
  }

  Status Unstage(const StagedVolume& v, bool recorded) override {
    if (!v.block) {
      ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(v.staging_path));
      // Without a record, unmount only a staging path this volume's device is behind.
      if (mounted && (recorded || devices_->Find(v.volume_id))) {
        RETURN_IF_ERROR(mounter_->Unmount(v.staging_path));
      }
    }
    return devices_->Detach(v.volume_id);
  }

  Status Publish(const StagedVolume& v, const std::string& target, const PublishedTarget& how,
                 bool recorded) override {
    if (recorded) {
      ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(target));
      if (mounted) return Status::Ok();
      spdlog::warn("volume {}: published at {} but not mounted; mounting again", v.volume_id,
                   target);
    }
    if (v.block) {
      RETURN_IF_ERROR(mounter_->EnsureFile(target));
      return mounter_->BindMount(v.device, target, how.read_only, {});
    }
    RETURN_IF_ERROR(mounter_->EnsureDirectory(target));
    return mounter_->BindMount(v.staging_path, target, how.read_only, how.mount_flags);
  }

  Status Unpublish(const StagedVolume& v, const std::string& target, bool recorded) override {
    ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(target));
    if (!mounted) return Status::Ok();
    if (!recorded) {
      // Not recorded (a publish that died before recording it): unmount only what
      // comes from this volume's device; never someone else's mount.
      Result<std::string> source = mounter_->MountSource(target);
      if (v.device.empty() || !source.ok() || *source != v.device) {
        return Status::FailedPrecondition("target_path " + target +
                                          " is a mount point this driver did not create for "
                                          "volume " +
                                          v.volume_id);
      }
    }
    return mounter_->Unmount(target);
  }

  // The provider re-adopts devices itself (BlockDeviceProvider::Recover at start-up);
  // NodeStageVolume mounts again what a reboot unmounted.
  Status Restore(const StagedVolume&) override { return Status::Ok(); }

  Status Flush(const StagedVolume& v) override {
    if (!v.block) RETURN_IF_ERROR(mounter_->SyncFilesystem(v.staging_path));
    return devices_->Sync(v.volume_id);
  }

  Result<uint64_t> Expand(const StagedVolume& v) override {
    ASSIGN_OR_RETURN(const uint64_t size, devices_->Resize(v.volume_id));
    if (!v.block) RETURN_IF_ERROR(mounter_->ResizeExt4(v.device));
    return size;
  }

  Result<ExposureUsage> Inspect(const StagedVolume& v, const std::string& path) override {
    ExposureUsage out;
    if (v.block) {
      ASSIGN_OR_RETURN(out.size_bytes, mounter_->BlockDeviceSize(v.device));
      if (!devices_->Find(v.volume_id)) {
        out.abnormal = "the volume's device " + v.device + " is not attached";
      }
      return out;
    }
    ASSIGN_OR_RETURN(bool mounted, mounter_->IsMountPoint(path));
    if (!mounted) out.abnormal = path + " is not mounted";
    ASSIGN_OR_RETURN(out.filesystem, mounter_->FilesystemUsage(path));
    return out;
  }

 private:
  BlockDeviceProvider* const devices_;
  Mounter* const mounter_;
};

}  // namespace

std::unique_ptr<NodeExposure> NewBlockDeviceExposure(BlockDeviceProvider* devices,
                                                     Mounter* mounter) {
  return std::make_unique<BlockDeviceExposure>(devices, mounter);
}

}  // namespace stellarium::node
