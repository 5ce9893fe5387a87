// The store's admin socket: how the `stellarium` CLI asks the process that holds a
// store (the CSI driver) to do what a read-only view of the store cannot (gc).
//
// The holder serves a unix socket beside the store, <store>/admin.sock (mode 0600: the
// store's owner only), one request per connection, one JSON object per line:
//   {"command": "gc"}  ->  {"ok": true, "report": {...GcReport...}}
//                      or  {"ok": false, "code": <core StatusCode>, "message": "..."}
// The CLI reads info, list, export and fsck through a read-only view instead
// (StoreOptions::read_only): a consistent picture, with no work in the holder.
//
// Thread-safety: AdminServer serves on a thread of its own, one request at a time;
// RequestGc may be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "core/status.h"
#include "core/store.h"

namespace stellarium {

std::string AdminSocketPath(const std::string& store_dir);

class AdminServer {
 public:
  // Serves `store` on AdminSocketPath(store->options().path), replacing a stale socket
  // file. REQUIRES: store outlives the server.
  static Result<std::unique_ptr<AdminServer>> Start(Store* store);
  // Stops serving and removes the socket.
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

 private:
  AdminServer(Store* store, int listen_fd, int stop_fd, std::string path);
  void Serve();
  void Handle(int fd);

  Store* store_;
  int listen_fd_, stop_fd_;  // stop_fd_: an eventfd that ends Serve()
  std::string path_;
  std::thread thread_;
};

// Asks the process serving `store_dir`'s admin socket to run a full gc pass and returns
// its report. UNAVAILABLE when nothing serves the socket.
Result<GcReport> RequestGc(const std::string& store_dir);

}  // namespace stellarium
