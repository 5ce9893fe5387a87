// Test guest machinery shared by the guest tests and the node benchmark: builds (once,
// cached) the kernel + busybox initramfs of scripts/build-guest.sh and boots it with
// QEMU (microvm, TCG, memfd shared memory so vhost-user back-ends can map it). The
// guest runs one shell script from the kernel command line, prints markers on the
// serial console and powers off.
//
// Thread-safety: free functions; each Boot is its own QEMU process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/block_io.h"
#include "tests/node/test_util.h"

namespace stellarium::testing {

// Builds the guest into `guest_dir` (scripts/build-guest.sh under `source_dir`).
CommandResult BuildGuest(const std::string& source_dir, const std::string& guest_dir);
// $STELLARIUM_GUEST_DIR or /var/tmp/stellarium-guest.
std::string DefaultGuestDir();

// Boots the guest in `guest_dir` with extra QEMU arguments (the disks) and `script`;
// returns the console output. `memory_mib` of memfd-backed shared memory.
CommandResult BootGuest(const std::string& guest_dir, const std::vector<std::string>& disk_args,
                        const std::string& script, int memory_mib = 512);

// QEMU arguments for a vhost-user-blk disk on `socket` and for a raw file/device drive.
std::vector<std::string> VhostUserDiskArgs(const std::string& socket);
std::vector<std::string> RawDriveArgs(const std::string& path, bool read_only = false);

// The script every "use the volume" guest runs: mount /dev/vda, print
// "GUEST-SHA256 <hex>" of /mnt/known.bin, write `marker` to /mnt/from-guest.txt,
// unmount, print GUEST-DONE.
std::string HashAndWriteScript(const std::string& marker);
// The hex digest printed by HashAndWriteScript, or "".
std::string GuestHash(const std::string& console);

// Reads file `name` from the ext4 file system on `io` through a FUSE file, a read-only
// loop device and a mount under `work_dir` (e2fsck -fn must pass too; failures are
// test failures). Returns the content ("" on failure).
std::string ReadFileThroughLoop(std::shared_ptr<BlockIo> io, const std::string& work_dir,
                                const std::string& name);

std::string Base64(const std::string& in);

}  // namespace stellarium::testing
