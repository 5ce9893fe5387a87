// BlockDeviceProvider: how a volume in the store becomes a kernel block device on this
// node, and back. The node service knows volumes only through this interface; the
// mechanism behind it is replaceable without touching the services.
//
// The implementation (Options::block_device "fuse"): FuseLoopBlockDeviceProvider
// (fuse_loop_provider.h), a file in the driver's FUSE mount over core's
// BlockIo behind a loop device; lazy, every write reaches the store directly, Sync()
// only flushes; with the fd holder, attached devices survive a restart of the driver.
// The interface stays with one implementation: the node's exposures use a device
// without knowing what serves it, and a kernel mechanism (ublk, nbd) where a node has
// one would sit behind it without touching them.
//
// Contract shared by every implementation:
//   - Attach is idempotent: attaching an attached volume with the same read_only returns
//     the same device; with another read_only it is FAILED_PRECONDITION.
//   - Detach is idempotent (OK when not attached) and leaves every write made through
//     the device in the store. REQUIRES: nothing has the device open (unmounted).
//   - Recover() runs once at start-up, before any other call, and re-adopts what a
//     previous run of the driver left attached (the kubelet keeps mounts across driver
//     restarts), so Detach after a restart still writes everything back.
//
// Thread-safety: calls for different volumes may run in parallel; the caller serializes
// calls for the same volume (the node service holds the volume's lock).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

struct AttachedDevice {
  std::string volume_id;
  std::string device_path;  // "/dev/loop3"
  bool read_only = false;
  uint64_t size_bytes = 0;
};

class BlockDeviceProvider {
 public:
  virtual ~BlockDeviceProvider() = default;

  // Short name used in the `exposure` StorageClass parameter and in logs ("loop").
  virtual std::string Name() const = 0;
  // Re-adopts devices left by an earlier run; returns what is attached afterwards.
  virtual Result<std::vector<AttachedDevice>> Recover() = 0;
  // Makes the volume a block device; returns it. NOT_FOUND if the volume does not exist.
  virtual Result<AttachedDevice> Attach(const std::string& volume_id, bool read_only) = 0;
  // Writes every change back to the store and releases the device.
  virtual Status Detach(const std::string& volume_id) = 0;
  // Makes every write completed through the device visible in the store (and durable).
  // OK when not attached. Called before a snapshot of a volume in use.
  virtual Status Sync(const std::string& volume_id) = 0;
  // Grows the device to the volume's current size in the store; returns the new size.
  virtual Result<uint64_t> Resize(const std::string& volume_id) = 0;
  // The attached device of a volume, if any.
  virtual std::optional<AttachedDevice> Find(const std::string& volume_id) = 0;
};

}  // namespace stellarium::node
