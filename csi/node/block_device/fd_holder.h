// FdHolder: keeps file descriptors alive across restarts of the driver.
//
// Why: a FUSE connection lives as long as some process holds its /dev/fuse fd. If
// only the driver held it, every volume mounted through the driver's FUSE mount would
// fail the moment the driver exits (an upgrade, a crash, an OOM kill). A small holder
// process next to the driver (a second container of the node DaemonSet sharing the
// state directory, `stellarium-fd-holder`) receives the fd over a unix socket
// (SCM_RIGHTS), keeps it open, and hands a copy back to the restarted driver, which
// resumes serving the same mount (FuseBlockServer::Resume).
//
// Protocol (SOCK_SEQPACKET, one message each way per request; the socket is created
// mode 0600, so only root talks to it):
//   request:  op (1 byte: 'P' put, 'G' get, 'D' drop), name length (1 byte), name,
//             payload (put only: opaque bytes kept with the fd, at most kMaxPayload);
//             a put carries exactly one fd as SCM_RIGHTS, nothing else carries any.
//   reply:    status (1 byte: 0 ok, 1 not found, 2 bad request), then for a get the
//             payload, with the fd as SCM_RIGHTS.
// Names are 1-64 bytes of [A-Za-z0-9._-]. Put replaces an entry of the same name
// (closing the old fd). The holder keeps everything in memory only: when it restarts,
// it holds nothing until the driver puts again (FdHolderLease does that).
//
// Thread-safety: FdHolderServer::Run runs on one thread; the client functions are
// free functions, safe from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "core/status.h"

namespace stellarium::node {

inline constexpr size_t kFdHolderMaxPayload = 4096;

// The serving side, in the holder process.
class FdHolderServer {
 public:
  // Binds `socket_path` (a stale socket file is replaced; a served one is refused with
  // FAILED_PRECONDITION).
  static Result<std::unique_ptr<FdHolderServer>> Listen(const std::string& socket_path);
  ~FdHolderServer();
  FdHolderServer(const FdHolderServer&) = delete;
  FdHolderServer& operator=(const FdHolderServer&) = delete;

  // Serves until `stop_fd` becomes readable (an eventfd or pipe; -1: forever).
  Status Run(int stop_fd);
  // How many fds are held (for logs and tests).
  size_t held() const;

 private:
  struct Held {
    int fd = -1;
    std::string payload;
  };
  explicit FdHolderServer(std::string path, int listen_fd)
      : path_(std::move(path)), listen_fd_(listen_fd) {}
  void HandleMessage(int client);

  std::string path_;
  int listen_fd_ = -1;
  mutable std::mutex mu_;
  std::map<std::string, Held> held_;  // GUARDED_BY(mu_)
};

// A copy of a held fd and its payload. The caller owns fd.
struct HeldFd {
  int fd = -1;
  std::string payload;
};

// Client calls, each on its own connection. UNAVAILABLE when no holder listens on
// `socket_path`; NOT_FOUND from FdHolderGet when nothing is held under `name`.
Status FdHolderPut(const std::string& socket_path, const std::string& name, int fd,
                   const std::string& payload);
Result<HeldFd> FdHolderGet(const std::string& socket_path, const std::string& name);
Status FdHolderDrop(const std::string& socket_path, const std::string& name);

// Keeps an fd deposited with the holder for as long as the lease lives: puts it in
// the constructor (if a holder listens), then watches the connection from its own
// thread; when the holder restarts (the connection closes) it puts the fd again as
// soon as a holder listens (checked once a second). `on_change` is called once from
// the constructor with whether the fd is held, then from the thread on each change
// (to log it). Thread-safety: the object is used by one thread; it runs its own.
class FdHolderLease {
 public:
  FdHolderLease(std::string socket_path, std::string name, int fd, std::string payload,
                std::function<void(bool held)> on_change);
  // Stops watching; the fd stays with the holder (that is the point).
  ~FdHolderLease();
  FdHolderLease(const FdHolderLease&) = delete;
  FdHolderLease& operator=(const FdHolderLease&) = delete;

  bool held() const { return held_.load(); }

 private:
  // Connects and puts; returns the connection, or -1 when no holder took the fd.
  int Deposit();
  void Loop(int sock);

  std::string socket_path_;
  std::string name_;
  int fd_;
  std::string payload_;
  std::function<void(bool)> on_change_;
  int stop_fd_ = -1;
  std::atomic<bool> held_{false};
  std::thread thread_;
};

}  // namespace stellarium::node
