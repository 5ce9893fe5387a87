#include "csi/request_limits.h"

#include <google/protobuf/descriptor.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "csi/node/paths.h"
#include "csi/status_map.h"

namespace stellarium::csi {
namespace {

namespace pb = google::protobuf;

// Request strings longer than this are not looked for in messages: no id or path is
// (both are refused first), and anything longer is cut with the message as a whole.
constexpr size_t kLongestShortened = 8192;

bool IsIdField(const std::string& name) {
  return name == "volume_id" || name == "snapshot_id" || name == "source_volume_id" ||
         name == "node_id" || name == "name";
}

bool IsPathField(const std::string& name) {
  return name == "staging_target_path" || name == "target_path" || name == "volume_path";
}

// Calls `visit(field, dotted path, value)` for every string set in `message` and its
// sub-messages (repeated fields and map entries too), except in `secrets`, until it
// returns false. Returns false when stopped.
using StringVisitor =
    std::function<bool(const pb::FieldDescriptor&, const std::string&, const std::string&)>;

bool VisitStrings(const pb::Message& message, const std::string& prefix,
                  const StringVisitor& visit) {
  const pb::Reflection* reflection = message.GetReflection();
  std::vector<const pb::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const pb::FieldDescriptor* field : fields) {
    if (field->name() == "secrets") continue;
    const std::string path = prefix.empty() ? field->name() : prefix + "." + field->name();
    const bool is_message = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    const bool is_string = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING;
    if (!is_message && !is_string) continue;
    std::string scratch;
    if (field->is_repeated()) {
      const int n = reflection->FieldSize(message, field);
      for (int i = 0; i < n; ++i) {
        if (is_message) {
          if (!VisitStrings(reflection->GetRepeatedMessage(message, field, i), path, visit)) {
            return false;
          }
        } else if (!visit(*field, path,
                          reflection->GetRepeatedStringReference(message, field, i, &scratch))) {
          return false;
        }
      }
    } else if (is_message) {
      if (!VisitStrings(reflection->GetMessage(message, field), path, visit)) return false;
    } else if (!visit(*field, path, reflection->GetStringReference(message, field, &scratch))) {
      return false;
    }
  }
  return true;
}

// The first `keep` bytes of `text`, not splitting a UTF-8 character.
size_t CutPoint(std::string_view text, size_t keep) {
  if (text.size() <= keep) return text.size();
  size_t cut = keep;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

}  // namespace

std::string Shorten(std::string_view text, size_t keep) {
  if (text.size() <= keep) return std::string(text);
  return std::string(text.substr(0, CutPoint(text, keep))) + "... (" + std::to_string(text.size()) +
         " bytes)";
}

grpc::Status CheckRequestLimits(const pb::Message& request) {
  grpc::Status refused = grpc::Status::OK;
  VisitStrings(
      request, "",
      [&](const pb::FieldDescriptor& field, const std::string& path, const std::string& value) {
        if (IsIdField(field.name()) && value.size() > kMaxIdBytes) {
          refused = InvalidArgument(path + " '" + Shorten(value) + "' is longer than the " +
                                    std::to_string(kMaxIdBytes) +
                                    " bytes this driver takes for ids and names");
        } else if (IsPathField(field.name())) {
          refused = ToGrpcStatus(node::CheckPathLength(path, value));
        }
        return refused.ok();
      });
  return refused;
}

grpc::Status BoundStatus(const grpc::Status& status, const pb::Message& request) {
  if (status.ok()) return status;
  const std::string& message = status.error_message();
  std::vector<std::string> long_strings;
  VisitStrings(request, "",
               [&](const pb::FieldDescriptor&, const std::string&, const std::string& value) {
                 if (value.size() > kShownBytes && value.size() <= kLongestShortened &&
                     message.size() >= value.size()) {
                   long_strings.push_back(value);
                 }
                 return true;
               });
  if (long_strings.empty() && message.size() <= kMaxMessageBytes) return status;
  // Longest first: a shorter string may be part of a longer one.
  std::sort(long_strings.begin(), long_strings.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  std::string out;
  size_t i = 0;
  while (i < message.size() && out.size() <= kMaxMessageBytes) {
    bool replaced = false;
    for (const std::string& s : long_strings) {
      if (message[i] == s[0] && message.compare(i, s.size(), s) == 0) {
        out += Shorten(s);
        i += s.size();
        replaced = true;
        break;
      }
    }
    if (!replaced) out += message[i++];
  }
  if (i < message.size() || out.size() > kMaxMessageBytes) {
    out = out.substr(0, CutPoint(out, kMaxMessageBytes)) + "... (message of " +
          std::to_string(message.size()) + " bytes cut)";
  }
  return grpc::Status(status.error_code(), out, status.error_details());
}

}  // namespace stellarium::csi
