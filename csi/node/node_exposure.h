// NodeExposure: one way of making a staged volume usable on this node. The node
// service (csi/node_service.h) speaks only this interface; which syscalls, devices,
// sockets or files are behind it is each implementation's business, one file each:
//
//   - block device      (block_device_exposure.cc): a kernel block device from the
//     BlockDeviceProvider, ext4-formatted on first use and mounted at the staging path
//     (Mount access), bind-mounted at each target. Pods and raw-block consumers.
//   - vhost-user-blk    (vhost_user_exposure.cc): a vhost-user-blk back-end on a unix
//     socket under <state dir>/vhost/, served straight from the store; nothing is
//     mounted on the node. MicroVM runtimes.
//   - runtime descriptors (descriptor_exposure.cc): at publish, the files microVM
//     runtimes read to find that socket: Kata's mountInfo.json, a Firecracker drive
//     object and a Cloud Hypervisor --disk string.
//
// A volume's `exposure` (StorageClass parameter, volume_context) picks a combination:
// the block device provider's name -> {block device}; "vhost-user-blk" ->
// {vhost-user-blk, runtime descriptors}. NodeExposures runs a combination as one
// NodeExposure (in order; stage and publish roll back what they did on failure).
//
// Contract of every implementation (the CSI idempotency rules live in the node
// service; these make them cheap to keep):
//   - Stage/Publish are idempotent: repeating one repairs what is missing (a mount lost
//     in a reboot, a backend lost in a restart) and changes nothing else.
//   - Unstage/Unpublish are idempotent and OK when nothing is there. With
//     recorded = false the node service has no record of the call it undoes (a call
//     that died before recording, or a repeat): only what is certainly this volume's
//     is removed, anything else on the path is FAILED_PRECONDITION.
//   - Restore runs once per staged record when the driver starts.
//
// Thread-safety: calls for different volumes may run in parallel; the node service
// serializes calls for one volume (it holds the volume's lock).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/store.h"
#include "csi/node/block_device/block_device_provider.h"
#include "csi/node/mounter.h"
#include "csi/node/node_state.h"

namespace stellarium::node {

// What NodeGetVolumeStats reports for a staged volume at one of its paths.
struct ExposureUsage {
  std::optional<FsUsage> filesystem;  // a filesystem mounted on the node
  uint64_t size_bytes = 0;            // otherwise: the size its consumer sees
  std::string abnormal;               // "" when healthy, else what is wrong
};

class NodeExposure {
 public:
  virtual ~NodeExposure() = default;

  // Makes the volume usable; fills in what it made (staged->device, staged->socket).
  virtual Status Stage(StagedVolume* staged) = 0;
  virtual Status Unstage(const StagedVolume& staged, bool recorded) = 0;
  // Makes the staged volume usable at `target` (a directory for Mount access, a file
  // for Block access), created here when missing. `recorded`: the node service already
  // recorded it.
  virtual Status Publish(const StagedVolume& staged, const std::string& target,
                         const PublishedTarget& how, bool recorded) = 0;
  // Undoes Publish. The target itself stays: the node service removes it when the
  // driver made it (PublishedTarget::created), never one the kubelet made.
  virtual Status Unpublish(const StagedVolume& staged, const std::string& target,
                           bool recorded) = 0;
  // After a driver restart: brings back what the old process held for this record.
  virtual Status Restore(const StagedVolume& staged) = 0;
  // Makes every write completed through the exposure visible and durable in the store.
  virtual Status Flush(const StagedVolume& staged) = 0;
  // The volume grew in the store: grows what its consumer sees. Returns the new size
  // (0 when this exposure has no size of its own).
  virtual Result<uint64_t> Expand(const StagedVolume& staged) = 0;
  // Usage and health at `path` (the staging path or a target).
  virtual Result<ExposureUsage> Inspect(const StagedVolume& staged, const std::string& path) = 0;
};

std::unique_ptr<NodeExposure> NewBlockDeviceExposure(BlockDeviceProvider* devices,
                                                     Mounter* mounter);
// Sockets are <socket_dir>/<volume id>.sock. `devices` and `mounter` format a blank
// volume staged for Mount access (the guest mounts it with the recorded fs_type).
// readahead_bytes: VhostUserBlkOptions::readahead_bytes of every connection (0 = off).
std::unique_ptr<NodeExposure> NewVhostUserBlkExposure(Store* store, BlockDeviceProvider* devices,
                                                      Mounter* mounter, std::string socket_dir,
                                                      uint64_t readahead_bytes);
// Kata descriptors go under `kata_root` (Options::kata_direct_volume_dir); the
// Firecracker and Cloud Hypervisor files next to the target.
std::unique_ptr<NodeExposure> NewRuntimeDescriptorExposure(std::string kata_root);

// Descriptor file names next to a target path (docs/EXPOSURE.md, section 7).
std::string FirecrackerDrivePath(const std::string& target);
std::string CloudHypervisorDiskPath(const std::string& target);

// The exposures of this node by `exposure` value, each combination as one NodeExposure.
class NodeExposures {
 public:
  // `block_name` is the block device provider's name (the default exposure) and selects
  // {block}; `vhost_user_name` (the CSI layer's value, "vhost-user-blk") selects
  // {vhost_user, descriptors}.
  NodeExposures(std::string block_name, std::unique_ptr<NodeExposure> block,
                std::string vhost_user_name, std::unique_ptr<NodeExposure> vhost_user,
                std::unique_ptr<NodeExposure> descriptors);
  ~NodeExposures();

  // The exposure a volume asks for ("" = the default). FAILED_PRECONDITION naming the
  // values this node offers when it is not one of them.
  Result<NodeExposure*> For(const std::string& exposure);
  // The name recorded for `exposure` ("" -> the block device provider's name).
  std::string Normalize(const std::string& exposure) const;
  // Every exposure, for undoing calls nothing was recorded for.
  NodeExposure* All() { return all_.get(); }

 private:
  std::string block_name_;
  std::string vhost_user_name_;
  std::vector<std::unique_ptr<NodeExposure>> owned_;
  std::map<std::string, std::unique_ptr<NodeExposure>> by_name_;  // combinations
  std::unique_ptr<NodeExposure> all_;
};

}  // namespace stellarium::node
