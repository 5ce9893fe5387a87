// FuseBlockServer: one FUSE mount (libfuse3 low-level API, one session, its own worker
// threads) that shows each added volume as one regular file, so a loop device can turn
// the volume into a kernel block device without nbd, ublk or device-mapper.
//
//   <mountpoint>/            the root directory, lists the volumes
//   <mountpoint>/<name>      a regular file of the volume's size; reads and writes go
//                            to the volume's BlockIo (through a read-ahead layer,
//                            csi/node/read_ahead.h, unless turned off), fsync and
//                            close flush it
//
// Why it is shaped this way (see docs/EXPOSURE.md for measurements):
//   - Lazy: nothing is read up front; a read of a range reads only that range from the
//     BlockIo, so adding a volume costs the same whatever its size. Only a sequential
//     reader (a pod reading a file, a VM booting off the loop device) makes the volume's
//     read-ahead layer read up to readahead_bytes beyond it, while it consumes what it
//     got; writes pass through it and are never shadowed.
//   - Every open uses FUSE direct_io: the kernel keeps no page cache of the file, so a
//     loop device with direct I/O on reaches the BlockIo with each bio, and data written
//     through another path (a vhost-user-blk backend on the same volume) is never
//     shadowed by stale cached pages.
//   - Writes are received by copying (no splice) with max_write 1 MiB, and every write is
//     applied whole or fails whole: the kernel never sees a short write, so a 1 MiB
//     O_DIRECT write through a loop device lands intact (qemu-storage-daemon's FUSE
//     export corrupts those).
//   - Survives the death of the process (docs/EXPOSURE.md, "Driver restarts"): inode
//     numbers are a hash of the name and file handles carry no pointer, so a new
//     process can take over the same /dev/fuse connection (Resume) and answer requests
//     for files the kernel opened in the old one. The workers are our own loop over
//     fuse_session_receive_buf/process_buf, never fuse_session_loop_mt, because that
//     loop drops a request it has read once the session is marked exited; ours stops
//     reading on Release() and answers everything it has read (drain).
//   - Names and attributes are given to the kernel for a long time and invalidated
//     explicitly on every change, so that what the kernel can answer by itself
//     (`losetup -a`, a stat() of the mount) needs no process while none serves.
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
#include "csi/node/read_ahead.h"

struct fuse_session;

namespace stellarium::node {

struct FuseBlockServerOptions {
  std::string mountpoint{};  // created if missing; a dead FUSE mount there is removed
  unsigned max_threads = 8;  // FUSE worker threads
  bool allow_other = true;   // let other users (a VMM running unprivileged) open files
  // Read-ahead per volume for sequential readers (csi/node/read_ahead.h): at most this many bytes
  // held per volume, read by 3 helper threads of its own; 0 turns it off.
  uint64_t readahead_bytes = 8 << 20;
  // How long the kernel keeps the names and attributes of the root and the volume files
  // (lookup, getattr). Every change this server makes invalidates them at once
  // (RemoveVolume, NotifyResized), so a long time costs nothing; it lets the kernel
  // answer stat() of a file and a loop device's LOOP_GET_STATUS (`losetup -a`) by
  // itself, also while no process serves the connection (a driver restart). A year; tests
  // that need the kernel to ask again set a short one.
  double attr_timeout_seconds = 365.0 * 24 * 3600;
};

// What a new process needs to take over a live FUSE connection: the /dev/fuse fd
// (kept open by another process, fd_holder.h) and the FUSE_INIT request
// the kernel sent when the connection was made (raw `struct fuse_init_in` bytes, see
// <linux/fuse.h>), which is replayed to the new libfuse session.
struct FuseResumeState {
  int fd = -1;            // not owned by FuseBlockServer::Resume: it dups it
  std::string init_in{};  // FuseBlockServer::init_in() of the process that mounted
};

class FuseBlockServer {
 public:
  // Mounts the file system and starts the worker threads. Needs /dev/fuse and the
  // privilege to mount (root). UNAVAILABLE if FUSE cannot be used here.
  // Waits (a few seconds at most) for the kernel's FUSE_INIT, so that init_in() and
  // fd() are ready to be handed to an fd holder when it returns.
  static Result<std::unique_ptr<FuseBlockServer>> Start(const FuseBlockServerOptions& options);
  // Takes over the live connection of a FUSE mount at options.mountpoint made by an
  // earlier process: nothing is mounted, the session is initialized from
  // state.init_in, and no request is read until Serve() (add the volumes the kernel
  // still has open first). INVALID_ARGUMENT for a malformed init_in, UNAVAILABLE when
  // the connection is dead.
  static Result<std::unique_ptr<FuseBlockServer>> Resume(const FuseBlockServerOptions& options,
                                                         const FuseResumeState& state);
  // After Resume: starts the workers, then asks the kernel to send again every request
  // the dead process had read but not answered (FUSE_NOTIFY_RESEND, Linux 6.9+).
  // Returns how that went: OK, or UNIMPLEMENTED on kernels without it (such requests
  // then never complete; see docs/EXPOSURE.md). No-op when already serving.
  Status Serve();
  // Stops reading requests, finishes those already read (every one gets its answer),
  // and closes this process's /dev/fuse fd WITHOUT unmounting: requests the kernel
  // queues from now on wait for the next process to Resume. Idempotent.
  void Release();
  // Unmounts and stops (unless Release()d). Files still held open (an attached loop
  // device) are cut off: detach loop devices first.
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

  // This process's /dev/fuse fd (-1 after Release()); for an fd holder to dup.
  int fd() const;
  // The FUSE_INIT request body the connection was made with (see FuseResumeState).
  std::string init_in() const;

  // Internal: the state the FUSE callbacks see. Public only for the callback table.
  struct Entry;
  struct State;

 private:
  explicit FuseBlockServer(FuseBlockServerOptions options);
  Status NewSession();
  void StartWorkers();
  // Has the kernel fetch the root's attributes now, while the workers answer, so that a
  // later stat() of the mountpoint (`ls -l` of its parent, `df`) is answered from the
  // kernel's cache, also while no process serves the connection. REQUIRES: serving.
  void PrimeRootAttributes();
  void StopWorkers();
  void Stop();

  FuseBlockServerOptions options_;
  std::unique_ptr<State> state_;
  fuse_session* session_ = nullptr;
  std::vector<std::thread> workers_;
  int stop_fd_ = -1;      // eventfd: readable when the workers must stop reading
  bool mounted_ = false;  // we own the mount (unmount on Stop)
  bool resumed_ = false;  // made by Resume(): Serve() sends FUSE_NOTIFY_RESEND
};

}  // namespace stellarium::node
