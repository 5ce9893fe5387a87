// The runtime descriptor exposure (node_exposure.h): at publish, for a volume served
// over vhost-user-blk, the files microVM runtimes read (formats in
// csi/node/runtime_descriptors.h, locations and examples in docs/EXPOSURE.md section 7):
//   <kata root>/<base64url(target)>/mountInfo.json   Kata direct-assigned volume
//   <target>.firecracker-drive.json                   Firecracker PUT /drives body
//   <target>.cloud-hypervisor-disk                    Cloud Hypervisor --disk value
// Unpublish removes all three; stage and unstage have nothing to do.
#include <sys/stat.h>

#include "csi/node/node_exposure.h"
#include "csi/node/runtime_descriptors.h"

namespace stellarium::node {
namespace {

// Kata's runtime-rs volume type for a vhost-user-blk socket ("spdkvol": the device is
// the socket of a vhost-user-blk target, which is what this driver serves).
constexpr char kKataVhostUserVolumeType[] = "spdkvol";

// Firecracker drive ids and Cloud Hypervisor ids: letters, digits and '_'.
std::string DriveId(const std::string& volume_id) {
  std::string out = volume_id;
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return out;
}

class RuntimeDescriptorExposure final : public NodeExposure {
 public:
  explicit RuntimeDescriptorExposure(std::string kata_root) : kata_root_(std::move(kata_root)) {}

  Status Stage(StagedVolume*) override { return Status::Ok(); }
  Status Unstage(const StagedVolume&, bool) override { return Status::Ok(); }

  Status Publish(const StagedVolume& v, const std::string& target, const PublishedTarget& how,
                 bool) override {
    if (v.socket.empty()) {
      return Status::FailedPrecondition("volume " + v.volume_id +
                                        ": no vhost-user-blk socket to describe");
    }
    KataMountInfo kata;
    kata.volume_type = kKataVhostUserVolumeType;
    kata.device = v.socket;
    kata.fstype = v.block ? "" : v.fs_type;
    kata.metadata = {{"stellarium.io/volume-id", v.volume_id},
                     {"stellarium.io/exposure", "vhost-user-blk"}};
    kata.options = how.mount_flags;
    if (how.read_only) kata.options.push_back("ro");

    FirecrackerDrive drive;
    drive.drive_id = DriveId(v.volume_id);
    drive.socket = v.socket;
    drive.is_read_only = how.read_only;
    ASSIGN_OR_RETURN(const std::string drive_json, FirecrackerDriveJson(drive));

    CloudHypervisorDisk disk;
    disk.socket = v.socket;
    disk.readonly = how.read_only;
    disk.num_queues = 1;
    disk.id = DriveId(v.volume_id);
    ASSIGN_OR_RETURN(const std::string disk_arg, CloudHypervisorDiskArg(disk));

    Status st = WriteKataMountInfo(kata_root_, target, kata).status();
    if (st.ok()) st = WriteDescriptorFile(FirecrackerDrivePath(target), drive_json, 0600);
    if (st.ok()) {
      st = WriteDescriptorFile(CloudHypervisorDiskPath(target), disk_arg + "\n", 0600);
    }
    if (!st.ok()) (void)RemoveAll(target);
    return st.Annotate("volume " + v.volume_id);
  }

  Status Unpublish(const StagedVolume&, const std::string& target, bool) override {
    return RemoveAll(target);
  }

  Status Restore(const StagedVolume&) override { return Status::Ok(); }
  Status Flush(const StagedVolume&) override { return Status::Ok(); }
  Result<uint64_t> Expand(const StagedVolume&) override { return uint64_t{0}; }

  Result<ExposureUsage> Inspect(const StagedVolume& v, const std::string& path) override {
    ExposureUsage out;
    if (v.targets.count(path) == 0) return out;  // the staging path has no descriptors
    const std::string kata =
        KataVolumeDir(kata_root_, path) + "/" + kKataMountInfoFile;
    for (const std::string& file :
         {kata, FirecrackerDrivePath(path), CloudHypervisorDiskPath(path)}) {
      struct stat st;
      if (::stat(file.c_str(), &st) != 0) {
        out.abnormal += (out.abnormal.empty() ? "descriptor missing: " : ", ") + file;
      }
    }
    return out;
  }

 private:
  Status RemoveAll(const std::string& target) {
    RETURN_IF_ERROR(RemoveKataMountInfo(kata_root_, target));
    RETURN_IF_ERROR(RemoveDescriptorFile(FirecrackerDrivePath(target)));
    return RemoveDescriptorFile(CloudHypervisorDiskPath(target));
  }

  const std::string kata_root_;
};

}  // namespace

std::unique_ptr<NodeExposure> NewRuntimeDescriptorExposure(std::string kata_root) {
  return std::make_unique<RuntimeDescriptorExposure>(std::move(kata_root));
}

}  // namespace stellarium::node
