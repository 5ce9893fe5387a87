// Server: the gRPC plumbing of stellarium-csi. Start() opens the store, recovers the
// node's devices and staging records, binds the unix socket (mode 0600) and serves the
// Identity, Controller and Node services on it. Shutdown() stops accepting calls, lets
// running ones finish (up to a deadline), removes the socket and closes the store.
//
// RunRpc() is the interceptor-like wrapper every service method goes through: it times
// the call, turns an escaping exception into INTERNAL (no exception crosses the RPC
// boundary), reports it to the RpcObserver (metrics) and logs one line (csi/logging.h).
//
// Thread-safety: Start/Shutdown/Wait from the owning thread; RPCs run on gRPC's
// threads.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "core/status.h"
#include "csi/driver.h"
#include "csi/logging.h"
#include "csi/options.h"

namespace stellarium::csi {

class IdentityService;
class ControllerService;
class NodeService;
class Metrics;

// Sees every RPC when it ends (the metrics module implements it).
class RpcObserver {
 public:
  virtual ~RpcObserver() = default;
  virtual void OnRpc(const char* method, grpc::StatusCode code, double seconds) = 0;
};
// Installs the process-wide observer (nullptr: none). Not owned.
void SetRpcObserver(RpcObserver* observer);
RpcObserver* GetRpcObserver();

template <typename Request, typename Body>
grpc::Status RunRpc(const char* method, const Request& request, Body&& body) {
  const auto start = std::chrono::steady_clock::now();
  grpc::Status status;
  try {
    status = body();
  } catch (const std::exception& e) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("unexpected error: ") + e.what());
  } catch (...) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, "unexpected error");
  }
  const auto latency = std::chrono::steady_clock::now() - start;
  if (RpcObserver* observer = GetRpcObserver()) {
    observer->OnRpc(method, status.error_code(), std::chrono::duration<double>(latency).count());
  }
  LogRpc(method, request, status, latency);
  return status;
}

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
