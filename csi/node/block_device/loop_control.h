// Loop control: turn a regular file (a FuseBlockServer file) into a kernel block device
// and back. Every loop ioctl and /sys/block/loop* read in the project lives in
// loop_control.cc; FuseLoopBlockDeviceProvider (fuse_loop_provider.h) is what joins it
// to the FUSE file server.
//
// Attach uses LOOP_CTL_GET_FREE + LOOP_CONFIGURE (one atomic ioctl: file, flags, block
// size), retrying when another process grabs the same free device first. Direct I/O is
// requested with LO_FLAGS_DIRECT_IO; the kernel may refuse it silently, so the result
// reports what /sys/block/loopN/loop/dio says.
//
// Thread-safety: free functions, safe to call concurrently (the kernel serializes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace stellarium::node {

struct LoopAttachOptions {
  bool read_only = false;
  bool direct_io = true;
  uint32_t logical_block_size = 512;  // 512 or a power of two up to 4096
};

struct LoopDevice {
  std::string path;          // "/dev/loop3"
  int index = -1;            // 3
  std::string backing_file;  // as the kernel reports it
  bool direct_io = false;    // what the kernel actually uses
  bool read_only = false;
  uint64_t size_bytes = 0;
};

// Attaches `file` to a free loop device. NOT_FOUND if the file does not exist;
// UNAVAILABLE if the machine has no loop support; the error names the file.
Result<LoopDevice> AttachLoop(const std::string& file, const LoopAttachOptions& options);
// Detaches /dev/loopN. OK if it is not attached. FAILED_PRECONDITION while a file
// system is mounted on it (or another exclusive holder has it), and nothing changes;
// with `lazy`, a busy device is instead detached by the kernel when its last user
// closes it (LO_FLAGS_AUTOCLEAR) and OK is returned.
Status DetachLoop(const std::string& device, bool lazy = false);
// The loop devices whose backing file is `file` (normally at most one). Matches the
// canonical path (symlinks resolved when the file still exists). For restart recovery.
Result<std::vector<LoopDevice>> FindLoopsBackedBy(const std::string& file);
// Every attached loop device on the machine.
Result<std::vector<LoopDevice>> ListLoops();
// Describes /dev/loopN from sysfs. NOT_FOUND if it has no backing file.
Result<LoopDevice> DescribeLoop(const std::string& device);
// Re-reads the backing file's size into the device (LOOP_SET_CAPACITY). The backing
// file is stat()ed first so a FUSE file's new size is fetched. Returns the new size.
Result<uint64_t> RefreshLoopSize(const std::string& device);

}  // namespace stellarium::node
