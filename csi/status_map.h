// The one place where a core Status becomes a gRPC status.
//
// Core's StatusCode values equal gRPC's (core/status.h), so the code passes through
// unchanged; what this function owns is the CSI spec's reading of them. The spec's
// error tables (spec.md, "... Errors" under each RPC) only use codes core already
// returns with the same meaning:
//   NOT_FOUND           source snapshot/volume or the volume itself does not exist
//   ALREADY_EXISTS      a name is reused with incompatible parameters
//   OUT_OF_RANGE        unsupported capacity (e.g. smaller than the source)
//   FAILED_PRECONDITION volume in use (open for I/O, staged, published)
//   RESOURCE_EXHAUSTED  no space
//   ABORTED             an operation is pending for the same volume or name
// DATA_LOSS (a stored chunk failed its checksum) is passed through: the CO shows it to
// the user, which is what a corruption deserves. Messages are kept: they name the object
// and what to do.
//
// Thread-safety: a pure function.
#pragma once

#include <grpcpp/support/status.h>

#include "core/status.h"

namespace stellarium::csi {

grpc::Status ToGrpcStatus(const Status& status);

// "NOT_FOUND", "OK", ... (for logs and metric labels).
const char* GrpcCodeName(grpc::StatusCode code);

// Shorthands for errors the csi layer finds itself (request validation).
grpc::Status InvalidArgument(const std::string& message);
grpc::Status NotFound(const std::string& message);
grpc::Status FailedPrecondition(const std::string& message);
grpc::Status AlreadyExists(const std::string& message);
grpc::Status OutOfRange(const std::string& message);
grpc::Status Aborted(const std::string& message);

}  // namespace stellarium::csi

// In functions returning grpc::Status: return the mapped status of a failed core call.
#define CSI_RETURN_IF_ERROR(expr)                                   \
  do {                                                              \
    ::stellarium::Status _csi_st = (expr);                          \
    if (!_csi_st.ok()) return ::stellarium::csi::ToGrpcStatus(_csi_st); \
  } while (0)

#define CSI_ASSIGN_OR_RETURN(lhs, expr) \
  CSI_ASSIGN_OR_RETURN_IMPL(STELLARIUM_CONCAT(_csi_result_, __LINE__), lhs, expr)
#define CSI_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)                           \
  auto tmp = (expr);                                                        \
  if (!tmp.ok()) return ::stellarium::csi::ToGrpcStatus(tmp.status());     \
  lhs = std::move(tmp).value()

// In functions returning grpc::Status: return a non-OK grpc::Status.
#define CSI_RETURN_IF_GRPC_ERROR(expr)      \
  do {                                      \
    ::grpc::Status _csi_gst = (expr);       \
    if (!_csi_gst.ok()) return _csi_gst;    \
  } while (0)
