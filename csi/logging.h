// Logging set-up (spdlog) and the one-line-per-RPC record the server writes.
//
// Every RPC is logged once when it ends: method, the volume (or snapshot, or name) it
// is about, the result code and the latency. Successes of calls that change something
// (create, delete, stage, publish, expand, ...) log at info, successes of queries
// (Probe, Get*, List*, NodeGetVolumeStats, ...) at debug; client errors at warn, server
// errors (INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE) at error. Only named identifier
// fields are read from a request, so secrets and mount flags never reach the log.
// Request strings are cut to kShownBytes (csi/request_limits.h) and every line's message,
// whoever logs it, to a few KiB.
//
// Thread-safety: SetupLogging once at start-up; LogRpc from any thread.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>
#include <spdlog/common.h>

#include <chrono>
#include <string>

namespace stellarium::csi {

// level: trace|debug|info|warn|error; format: text|json (one JSON object per line).
// Lines go to stderr, or to `sink` when given (tests read the driver's lines there).
void SetupLogging(const std::string& level, const std::string& format,
                  spdlog::sink_ptr sink = nullptr);

// The identifier a request is about: volume_id, else source_volume_id, snapshot_id,
// then name, as "field=value" with the value cut (Shorten); "" when it has none.
std::string RequestSubject(const google::protobuf::Message& request);

void LogRpc(const char* method, const google::protobuf::Message& request,
            const grpc::Status& status, std::chrono::steady_clock::duration latency);

}  // namespace stellarium::csi
