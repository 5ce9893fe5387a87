// FuseLoopBlockDeviceProvider: the BlockDeviceProvider (block_device_provider.h) that
// makes a volume a kernel block device without copying it: the volume is served as a
// file by one FuseBlockServer under <state_dir>/fuse, and a loop device (direct I/O) is
// attached to that file. Reads are lazy and every write reaches the store as it
// happens, so Attach costs the same for any volume size, Sync() is only a flush, and
// Detach has nothing to write back.
//
// Restart semantics (the contract's Recover(); docs/EXPOSURE.md, "Driver restarts"):
// the FUSE connection lives as long as some process holds its /dev/fuse fd. With an
// fd holder (options.fd_holder_socket, fd_holder.h) the provider deposits
// the fd there and, when the driver stops with volumes attached, drains its FUSE
// workers and leaves the mount in place; the next provider takes the fd back, resumes
// the same connection, re-adopts every loop device backed by a file of the mount (no
// new loop device: the mounts on them never notice beyond a pause) and serves again.
// Without a holder, or when the holder lost the fd, the old connection is dead: loop
// devices on it return I/O errors and cannot be re-adopted; Recover() detaches those
// that nothing holds, marks the held ones for automatic detach when their last user
// closes them, and reports no device attached. Every write that completed is in the
// store either way; writes are durable once flushed (fsync on the device).
//
// Thread-safety: as BlockDeviceProvider (a mutex guards the attachment table).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/store.h"
#include "csi/node/block_device/block_device_provider.h"
#include "csi/node/block_device/fd_holder.h"
#include "csi/node/block_device/fuse_block_server.h"
#include "csi/node/block_device/loop_control.h"

namespace stellarium::node {

struct FuseLoopProviderOptions {
  std::string state_dir{};  // the FUSE mount is <state_dir>/fuse
  bool direct_io = true;    // loop devices with direct I/O (measured: docs/EXPOSURE.md)
  // The fd holder's socket; "" = none (volumes then do not survive a driver restart).
  std::string fd_holder_socket{};
  // FuseBlockServerOptions::readahead_bytes: read-ahead held per volume (0 = off).
  uint64_t readahead_bytes = FuseBlockServerOptions{}.readahead_bytes;
};

class FuseLoopBlockDeviceProvider : public BlockDeviceProvider {
 public:
  // Resumes the FUSE connection kept by the fd holder (re-adopting its loop devices)
  // or starts a new FUSE server. `store` must outlive the provider.
  static Result<std::unique_ptr<FuseLoopBlockDeviceProvider>> Create(
      Store* store, const FuseLoopProviderOptions& options);
  // With devices attached and the fd held by the holder: drains the FUSE workers and
  // leaves the mount to the next provider. Otherwise stops the FUSE server; devices
  // still attached are then cut off (see Recover()).
  ~FuseLoopBlockDeviceProvider() override;

  // The consumer's view: a loop device ("exposure: loop"), whatever serves its file.
  std::string Name() const override { return "loop"; }
  Result<std::vector<AttachedDevice>> Recover() override;
  Result<AttachedDevice> Attach(const std::string& volume_id, bool read_only) override;
  Status Detach(const std::string& volume_id) override;
  Status Sync(const std::string& volume_id) override;
  Result<uint64_t> Resize(const std::string& volume_id) override;
  std::optional<AttachedDevice> Find(const std::string& volume_id) override;

  const std::string& mountpoint() const { return mountpoint_; }
  // True when this provider took over a live FUSE connection from an earlier run.
  bool resumed() const { return resumed_; }
  // True while the fd holder keeps the FUSE connection.
  bool fd_held() const { return lease_ && lease_->held(); }

 private:
  struct Attachment {
    std::shared_ptr<Volume> volume;
    AttachedDevice device;
  };
  FuseLoopBlockDeviceProvider(Store* store, FuseLoopProviderOptions options);
  // Takes the FUSE fd back from the holder and resumes it; false when there is none.
  bool TryResume();
  // Re-adds the volumes whose loop devices are backed by files of the resumed mount.
  void AdoptLoops();

  Store* store_;
  FuseLoopProviderOptions options_;
  std::string mountpoint_;
  std::unique_ptr<FuseBlockServer> fuse_;
  std::unique_ptr<FdHolderLease> lease_;
  bool resumed_ = false;
  std::mutex mu_;
  std::map<std::string, Attachment> attached_;  // GUARDED_BY(mu_), by volume id
};

}  // namespace stellarium::node
