// How much of a request the driver takes, and how much of it it repeats.
//
// The CSI spec caps string fields at 128 bytes unless a field says otherwise (paths: what
// the operating system allows). The driver takes ids and names up to kMaxIdBytes, eight
// times that, and paths up to PATH_MAX bytes with components up to NAME_MAX; a request
// carrying more is INVALID_ARGUMENT before any service looks at it (CheckRequestLimits).
// Whatever a request carries is repeated in messages and logs cut to kShownBytes
// (Shorten): a status message always fits gRPC's metadata limit and a log line stays one
// line of a readable size, whatever a client sends. RunRpc (csi/run_rpc.h) applies both
// to every RPC of every service, so no service does it call by call.
//
// Thread-safety: pure functions.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "core/provision.h"

namespace stellarium::csi {

// Longest volume id, snapshot id, node id or name a request may carry: the CLI's name
// limit, so one rule holds for every name in the store.
inline constexpr size_t kMaxIdBytes = kMaxNameBytes;
// How much of a request string a message or a log line repeats.
inline constexpr size_t kShownBytes = 128;
// Longest status message the driver sends (gRPC carries it in a header, percent-encoded,
// within an 8 KiB limit by default).
inline constexpr size_t kMaxMessageBytes = 2048;

// `text` itself when it has at most `keep` bytes; otherwise its first `keep` bytes (cut at
// a UTF-8 character boundary) followed by "... (<size> bytes)".
std::string Shorten(std::string_view text, size_t keep = kShownBytes);

// INVALID_ARGUMENT naming the first field of `request` (searched through nested
// messages) that is too long: an id or a name (volume_id, snapshot_id, source_volume_id,
// node_id, name) longer than kMaxIdBytes, or a path (staging_target_path, target_path,
// volume_path) longer than the OS allows (node::CheckPathLength). OK otherwise.
grpc::Status CheckRequestLimits(const google::protobuf::Message& request);

// `status` with every long string of `request` in its message shortened, and the message
// cut to kMaxMessageBytes. Secrets are never looked at.
grpc::Status BoundStatus(const grpc::Status& status, const google::protobuf::Message& request);

}  // namespace stellarium::csi
