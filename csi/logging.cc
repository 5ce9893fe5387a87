#include "csi/logging.h"

#include <google/protobuf/descriptor.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <memory>

#include "csi/request_limits.h"
#include "csi/status_map.h"

namespace stellarium::csi {
namespace {

// Longest message one log line carries, whoever logs it: more is cut (Shorten), so no
// input makes a line of megabytes.
constexpr size_t kMaxLogMessageBytes = 2 * kMaxMessageBytes;

// The message of a log line, cut to kMaxLogMessageBytes.
std::string_view Payload(const spdlog::details::log_msg& msg, std::string* cut) {
  std::string_view payload(msg.payload.data(), msg.payload.size());
  if (payload.size() <= kMaxLogMessageBytes) return payload;
  *cut = Shorten(payload, kMaxLogMessageBytes);
  return *cut;
}

// Appends `text` to a log line. Line breaks and other control characters are escaped
// (as in a JSON string: "\n", "\u001b"), so a line is one record whatever a request
// carried; `json` also escapes '"', '\\' and tabs for the contents of a JSON string.
void AppendEscaped(std::string_view text, bool json, spdlog::memory_buf_t& dest) {
  for (char c : text) {
    if (!json && (c == '"' || c == '\\' || c == '\t')) {
      dest.push_back(c);
      continue;
    }
    switch (c) {
      case '"':
        dest.append(std::string_view("\\\""));
        break;
      case '\\':
        dest.append(std::string_view("\\\\"));
        break;
      case '\n':
        dest.append(std::string_view("\\n"));
        break;
      case '\t':
        dest.append(std::string_view("\\t"));
        break;
      case '\r':
        dest.append(std::string_view("\\r"));
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          dest.append(std::string_view(buf));
        } else {
          dest.push_back(c);
        }
    }
  }
}

// %& in a pattern: the message, cut, one line.
class TextMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string cut;
    AppendEscaped(Payload(msg, &cut), /*json=*/false, dest);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<TextMessageFlag>();
  }
};

// %* in a pattern: the message, cut, as the contents of a JSON string.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string cut;
    AppendEscaped(Payload(msg, &cut), /*json=*/true, dest);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

bool IsQuery(const char* method) {
  static const char* const kQueries[] = {"Probe",
                                         "GetPluginInfo",
                                         "GetPluginCapabilities",
                                         "ControllerGetCapabilities",
                                         "NodeGetCapabilities",
                                         "NodeGetInfo",
                                         "NodeGetVolumeStats",
                                         "ListVolumes",
                                         "ListSnapshots",
                                         "GetCapacity",
                                         "GetSnapshot",
                                         "ControllerGetVolume",
                                         "ValidateVolumeCapabilities"};
  for (const char* q : kQueries) {
    if (std::strcmp(q, method) == 0) return true;
  }
  return false;
}

bool IsServerError(grpc::StatusCode code) {
  return code == grpc::StatusCode::INTERNAL || code == grpc::StatusCode::UNKNOWN ||
         code == grpc::StatusCode::DATA_LOSS || code == grpc::StatusCode::UNAVAILABLE;
}


}  // namespace

void SetupLogging(const std::string& level, const std::string& format, spdlog::sink_ptr sink) {
  if (!sink) sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("stellarium-csi", std::move(sink));
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  if (format == "json") {
    formatter->add_flag<JsonMessageFlag>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%*"})");
  } else {
    formatter->add_flag<TextMessageFlag>('&').set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %l %&");
  }
  logger->set_formatter(std::move(formatter));
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
}

std::string RequestSubject(const google::protobuf::Message& request) {
  const auto* descriptor = request.GetDescriptor();
  const auto* reflection = request.GetReflection();
  for (const char* field_name : {"volume_id", "source_volume_id", "snapshot_id", "name"}) {
    const auto* field = descriptor->FindFieldByName(field_name);
    if (field == nullptr || field->is_repeated() ||
        field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_STRING) {
      continue;
    }
    std::string scratch;
    const std::string& value = reflection->GetStringReference(request, field, &scratch);
    if (!value.empty()) return std::string(field_name) + "=" + Shorten(value);
  }
  return "";
}

void LogRpc(const char* method, const google::protobuf::Message& request,
            const grpc::Status& status, std::chrono::steady_clock::duration latency) {
  const double ms = std::chrono::duration<double, std::milli>(latency).count();
  const std::string subject = RequestSubject(request);
  const grpc::StatusCode code = status.error_code();
  spdlog::level::level_enum level = spdlog::level::info;
  if (code == grpc::StatusCode::OK) {
    level = IsQuery(method) ? spdlog::level::debug : spdlog::level::info;
  } else {
    level = IsServerError(code) ? spdlog::level::err : spdlog::level::warn;
  }
  if (!spdlog::default_logger_raw()->should_log(level)) return;
  if (code == grpc::StatusCode::OK) {
    spdlog::log(level, "rpc={} {}{}code=OK latency_ms={:.3f}", method, subject,
                subject.empty() ? "" : " ", ms);
  } else {
    spdlog::log(level, "rpc={} {}{}code={} latency_ms={:.3f} error=\"{}\"", method, subject,
                subject.empty() ? "" : " ", GrpcCodeName(code), ms, status.error_message());
  }
}

}  // namespace stellarium::csi
