// LoopBlockDeviceProvider: the first BlockDeviceProvider (see csi/block_device.h).
//
// Attach exports the volume into <dir>/<volume id>.img (sparse: zero blocks stay holes),
// records a 128-bit digest of every block in <dir>/<volume id>.sums, and binds a loop
// device to the file with LOOP_CONFIGURE. Sync and Detach compare each block of the
// file with its recorded digest and write only the changed blocks through
// Volume::Write, then Flush. <dir>/<volume id>.meta (written last) marks a complete
// attachment; Recover() re-adopts the loop device still bound to the file or binds a
// new one, so nothing written through the device is lost across a driver restart.
//
// Limits (honest ones): the first attach reads the whole volume once; the file holds a
// second copy of the volume's data while it is attached; Sync costs a read of the
// file's data extents. The FUSE-backed provider in csi/exposure/ removes all three.
//
// Thread-safety: see BlockDeviceProvider.
#pragma once

#include <memory>
#include <string>

#include "core/store.h"
#include "csi/block_device.h"

namespace stellarium::csi {

// `store` must outlive the provider. `dir` is created if missing.
std::unique_ptr<BlockDeviceProvider> NewLoopBlockDeviceProvider(Store* store,
                                                                 const std::string& dir);

}  // namespace stellarium::csi
