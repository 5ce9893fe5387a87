// RunRpc: the interceptor-like wrapper every CSI service method goes through. It times
// the call, refuses a request carrying an over-long id, name or path before the service
// sees it, turns an escaping exception into INTERNAL (no exception crosses the RPC
// boundary), cuts what the status message repeats of the request
// (csi/request_limits.h), reports the call to the process's RpcObserver (the metrics)
// and logs one line (csi/logging.h). A header of its own so that the services and the metrics need
// not include the server that composes them.
//
// Thread-safety: RunRpc from any thread; SetRpcObserver before the first RPC and after
// the last (the observer is read atomically, not owned).
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <exception>
#include <string>

#include "csi/logging.h"
#include "csi/request_limits.h"

namespace stellarium::csi {

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
  grpc::Status status = CheckRequestLimits(request);
  try {
    if (status.ok()) status = body();
  } catch (const std::exception& e) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("unexpected error: ") + e.what());
  } catch (...) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, "unexpected error");
  }
  status = BoundStatus(status, request);
  const auto latency = std::chrono::steady_clock::now() - start;
  if (RpcObserver* observer = GetRpcObserver()) {
    observer->OnRpc(method, status.error_code(), std::chrono::duration<double>(latency).count());
  }
  LogRpc(method, request, status, latency);
  return status;
}

}  // namespace stellarium::csi
