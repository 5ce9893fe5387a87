#include "csi/status_map.h"

namespace stellarium::csi {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  // Codes are equal by construction (core/status.h); anything outside gRPC's range
  // would be a core bug and is reported as INTERNAL rather than sent on the wire.
  const int code = static_cast<int>(status.code());
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::DATA_LOSS)) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "unexpected core status " + std::to_string(code) + ": " +
                            status.message());
  }
  std::string message = status.message();
  if (message.empty()) message = StatusCodeName(status.code());
  return grpc::Status(static_cast<grpc::StatusCode>(code), message);
}

const char* GrpcCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",           "CANCELLED",          "UNKNOWN",        "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",     "ALREADY_EXISTS", "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",    "DATA_LOSS",
      "UNAUTHENTICATED"};
  int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : "UNKNOWN_CODE";
}

grpc::Status InvalidArgument(const std::string& m) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, m);
}
grpc::Status NotFound(const std::string& m) { return grpc::Status(grpc::StatusCode::NOT_FOUND, m); }
grpc::Status FailedPrecondition(const std::string& m) {
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, m);
}
grpc::Status AlreadyExists(const std::string& m) {
  return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, m);
}
grpc::Status OutOfRange(const std::string& m) {
  return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, m);
}
grpc::Status Aborted(const std::string& m) { return grpc::Status(grpc::StatusCode::ABORTED, m); }

}  // namespace stellarium::csi
