// Server: the gRPC plumbing of stellarium-csi. Start() opens the store, recovers the
// node's devices and staging records, binds the unix socket (mode 0600) and serves the
// Identity, Controller and Node services on it. Shutdown() stops accepting calls, lets
// running ones finish (up to a deadline), removes the socket and closes the store.
// Every service method runs through RunRpc (csi/run_rpc.h); the server installs the
// metrics as its RpcObserver.
//
// Thread-safety: Start/Shutdown/Wait from the owning thread; RPCs run on gRPC's
// threads.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "core/status.h"
#include "csi/driver.h"
#include "csi/options.h"

namespace stellarium::csi {

class IdentityService;
class ControllerService;
class NodeService;
class Metrics;

class Server {
 public:
  // FAILED_PRECONDITION when the store is held by another process or the socket is
  // served by another driver; the message says which and what to do.
  static Result<std::unique_ptr<Server>> Start(const Options& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Stops serving; idempotent. Calls still running after `grace` are cancelled.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::seconds(10));
  // Blocks until Shutdown() has been called and the gRPC server has stopped.
  void Wait();

  Driver& driver() { return *driver_; }
  const std::string& socket_path() const { return socket_path_; }
  NodeService& node_service() { return *node_; }
  // The Prometheus endpoint's port; 0 when --metrics-address is off.
  int metrics_port() const;

 private:
  Server() = default;

  std::unique_ptr<Driver> driver_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<IdentityService> identity_;
  std::unique_ptr<NodeService> node_;
  std::unique_ptr<ControllerService> controller_;
  std::unique_ptr<grpc::Server> grpc_;
  std::string socket_path_;
  std::mutex mu_;
  bool shut_down_ = false;  // GUARDED_BY(mu_)
};

}  // namespace stellarium::csi
