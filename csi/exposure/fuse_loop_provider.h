// FuseLoopBlockDeviceProvider: the csi::BlockDeviceProvider (csi/block_device.h) that
// makes a volume a kernel block device without copying it: the volume is served as a
// file by one FuseBlockServer under <state_dir>/fuse, and a loop device (direct I/O) is
// attached to that file. Reads are lazy and every write reaches the store as it
// happens, so Attach costs the same for any volume size, Sync() is only a flush, and
// Detach has nothing to write back.
//
// Restart semantics (the contract's Recover()): the FUSE connection belongs to this
// process. After the driver died, loop devices on files of the old mount return I/O
// errors and cannot be re-adopted; Recover() detaches those that nothing holds, marks
// the held ones for automatic detach when their last user closes them, and reports no
// device attached (docs/EXPOSURE.md, "Limits"). Every write that completed before the
// crash is in the store; writes are durable once flushed.
//
// Thread-safety: as csi::BlockDeviceProvider (a mutex guards the attachment table).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/store.h"
#include "csi/block_device.h"
#include "csi/exposure/fuse_block_server.h"
#include "csi/exposure/loop_device.h"

namespace stellarium::exposure {

struct FuseLoopProviderOptions {
  std::string state_dir{};  // the FUSE mount is <state_dir>/fuse
  bool direct_io = true;    // loop devices with direct I/O (measured: docs/EXPOSURE.md)
};

class FuseLoopBlockDeviceProvider : public csi::BlockDeviceProvider {
 public:
  // Starts the FUSE server. `store` must outlive the provider.
  static Result<std::unique_ptr<FuseLoopBlockDeviceProvider>> Create(
      Store* store, const FuseLoopProviderOptions& options);
  // Stops the FUSE server; devices still attached are cut off (see Recover()).
  ~FuseLoopBlockDeviceProvider() override;

  std::string Name() const override { return "fuse"; }
  Result<std::vector<csi::AttachedDevice>> Recover() override;
  Result<csi::AttachedDevice> Attach(const std::string& volume_id, bool read_only) override;
  Status Detach(const std::string& volume_id) override;
  Status Sync(const std::string& volume_id) override;
  Result<uint64_t> Resize(const std::string& volume_id) override;
  std::optional<csi::AttachedDevice> Find(const std::string& volume_id) override;

  const std::string& mountpoint() const { return mountpoint_; }

 private:
  struct Attachment {
    std::shared_ptr<Volume> volume;
    csi::AttachedDevice device;
  };
  FuseLoopBlockDeviceProvider(Store* store, FuseLoopProviderOptions options);

  Store* store_;
  FuseLoopProviderOptions options_;
  std::string mountpoint_;
  std::unique_ptr<FuseBlockServer> fuse_;
  std::mutex mu_;
  std::map<std::string, Attachment> attached_;  // GUARDED_BY(mu_), by volume id
};

}  // namespace stellarium::exposure
