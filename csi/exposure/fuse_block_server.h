// FuseBlockServer: one FUSE mount (libfuse3 low-level API, one session, its own worker
// threads) that shows each added volume as one regular file, so a loop device can turn
// the volume into a kernel block device without nbd, ublk or device-mapper.
//
//   <mountpoint>/            the root directory, lists the volumes
//   <mountpoint>/<name>      a regular file of the volume's size; reads and writes go
//                            straight to the volume's BlockIo, fsync and close flush it
//
// Why it is shaped this way (see docs/EXPOSURE.md for measurements):
//   - Lazy: nothing is read up front; a read of a range reads only that range from the
//     BlockIo, so adding a volume costs the same whatever its size.
//   - Every open uses FUSE direct_io: the kernel keeps no page cache of the file, so a
//     loop device with direct I/O on reaches the BlockIo with each bio, and data written
//     through another path (a vhost-user-blk backend on the same volume) is never
//     shadowed by stale cached pages.
//   - Writes are received by copying (no splice) with max_write 1 MiB, and every write is
//     applied whole or fails whole: the kernel never sees a short write, so a 1 MiB
//     O_DIRECT write through a loop device lands intact (qemu-storage-daemon's FUSE
//     export corrupts those).
//
// Thread-safety: all public methods are safe to call from any thread, concurrently with
// the FUSE workers. Requests for one volume may run in parallel; BlockIo is thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/block_io.h"
#include "core/status.h"

struct fuse_session;

namespace stellarium::exposure {

struct FuseBlockServerOptions {
  std::string mountpoint{};  // created if missing; a dead FUSE mount there is removed
  unsigned max_threads = 8;  // FUSE worker threads at most
  bool allow_other = true;   // let other users (a VMM running unprivileged) open files
};

class FuseBlockServer {
 public:
  // Mounts the file system and starts the worker threads. Needs /dev/fuse and the
  // privilege to mount (root). UNAVAILABLE if FUSE cannot be used here.
  static Result<std::unique_ptr<FuseBlockServer>> Start(const FuseBlockServerOptions& options);
  // Unmounts and stops. Files still held open (an attached loop device) are cut off:
  // detach loop devices first.
  ~FuseBlockServer();
  FuseBlockServer(const FuseBlockServer&) = delete;
  FuseBlockServer& operator=(const FuseBlockServer&) = delete;

  const std::string& mountpoint() const { return options_.mountpoint; }
  // <mountpoint>/<name>
  std::string PathOf(const std::string& name) const;

  // Shows `io` as <mountpoint>/<name>. INVALID_ARGUMENT for a name that is empty, ".",
  // "..", longer than 255 bytes or contains '/' or NUL. ALREADY_EXISTS if the name is in
  // use by another BlockIo (adding the same BlockIo again is OK).
  Status AddVolume(const std::string& name, std::shared_ptr<BlockIo> io);
  // Removes the file and flushes its BlockIo. OK if absent. Handles already open (a
  // loop device not yet detached) keep working until closed.
  Status RemoveVolume(const std::string& name);
  // Tells the kernel that the BlockIo's size() changed, so stat() and a loop device's
  // LOOP_SET_CAPACITY see the new size. NOT_FOUND if the name is not served.
  Status NotifyResized(const std::string& name);
  std::vector<std::string> ListVolumes() const;

  // Internal: the state the FUSE callbacks see. Public only for the callback table.
  struct Entry;
  struct State;

 private:
  explicit FuseBlockServer(FuseBlockServerOptions options);
  void Stop();

  FuseBlockServerOptions options_;
  std::unique_ptr<State> state_;
  fuse_session* session_ = nullptr;
  std::thread loop_thread_;
  bool mounted_ = false;
};

}  // namespace stellarium::exposure
