#include "csi/volume_spec.h"

#include <cctype>
#include <cstdio>

#include "core/provision.h"
#include "core/sources/http_source.h"
#include "csi/options.h"
#include "csi/status_map.h"

namespace stellarium::csi {

using ::csi::v1::VolumeCapability;
using Mode = ::csi::v1::VolumeCapability::AccessMode::Mode;

Attributes VolumeParams::ToAttributes() const {
  Attributes a;
  a[kParamFsType] = fs_type;
  a[kParamExposure] = exposure;
  if (!image.empty()) a[kParamImage] = image;
  if (!image_dir.empty()) a[kParamImageDir] = image_dir;
  if (!url.empty()) a[kParamUrl] = url;
  if (!sha256.empty()) a[kParamSha256] = sha256;
  return a;
}

Result<VolumeParams> ParseVolumeParameters(
    const google::protobuf::Map<std::string, std::string>& params,
    const std::string& exposure_name) {
  VolumeParams p;
  p.exposure = exposure_name;
  for (const auto& [key, value] : params) {
    if (key.rfind(kReservedPrefix, 0) == 0) continue;
    if (key == kParamImage) {
      p.image = value;
    } else if (key == kParamImageDir) {
      p.image_dir = value;
    } else if (key == kParamUrl) {
      const std::string lower = [&] {
        std::string l = value.substr(0, 8);
        for (auto& c : l) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return l;
      }();
      if (lower.rfind("http://", 0) != 0 && lower.rfind("https://", 0) != 0) {
        return Status::InvalidArgument("parameter url '" + RedactUrl(value) +
                                       "': only http:// and https:// URLs are supported");
      }
      p.url = value;
    } else if (key == kParamSha256) {
      ASSIGN_OR_RETURN(p.sha256, ParseSha256Digest(value, "parameter sha256"));
    } else if (key == kParamBlockSize) {
      ASSIGN_OR_RETURN(p.block_size, ParseBlockSize(value, "parameter blockSize"));
    } else if (key == kParamFsType) {
      if (value != "ext4") {
        return Status::InvalidArgument("parameter fsType '" + value +
                                       "': only ext4 is supported");
      }
      p.fs_type = value;
    } else if (key == kParamExposure) {
      if (value != exposure_name && value != kExposureVhostUserBlk) {
        return Status::InvalidArgument("parameter exposure '" + value +
                                       "': not available on this driver (available: " +
                                       exposure_name + ", " + kExposureVhostUserBlk + ")");
      }
      p.exposure = value;
    } else {
      return Status::InvalidArgument("unknown parameter '" + key +
                                     "' (known: image, imageDir, url, sha256, blockSize, fsType, exposure)");
    }
  }
  if (!p.image.empty() && !p.image_dir.empty()) {
    return Status::InvalidArgument("parameters image and imageDir are exclusive");
  }
  if (!p.url.empty() && (!p.image.empty() || !p.image_dir.empty())) {
    return Status::InvalidArgument("parameter url and the image/imageDir parameters are exclusive");
  }
  if (!p.sha256.empty() && p.url.empty()) {
    return Status::InvalidArgument("parameter sha256 needs the parameter url");
  }
  return p;
}

Status CheckNoParameters(const google::protobuf::Map<std::string, std::string>& params,
                         const std::string& what) {
  for (const auto& [key, value] : params) {
    if (key.rfind(kReservedPrefix, 0) == 0) continue;
    return Status::InvalidArgument("unknown " + what + " parameter '" + key + "'");
  }
  return Status::Ok();
}

bool IsReadOnlyMode(Mode mode) {
  return mode == VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY ||
         mode == VolumeCapability::AccessMode::MULTI_NODE_READER_ONLY;
}

bool IsSingleWriterMode(Mode mode) {
  return mode == VolumeCapability::AccessMode::SINGLE_NODE_WRITER ||
         mode == VolumeCapability::AccessMode::SINGLE_NODE_SINGLE_WRITER;
}

grpc::Status CheckCapability(const VolumeCapability& cap) {
  if (cap.access_type_case() == VolumeCapability::ACCESS_TYPE_NOT_SET) {
    return InvalidArgument("volume capability: access_type (block or mount) is required");
  }
  if (!cap.has_access_mode() || cap.access_mode().mode() == VolumeCapability::AccessMode::UNKNOWN) {
    return InvalidArgument("volume capability: access_mode is required");
  }
  switch (cap.access_mode().mode()) {
    case VolumeCapability::AccessMode::SINGLE_NODE_WRITER:
    case VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY:
    case VolumeCapability::AccessMode::SINGLE_NODE_SINGLE_WRITER:
    case VolumeCapability::AccessMode::SINGLE_NODE_MULTI_WRITER:
      break;
    default:
      return InvalidArgument("volume capability: access mode " +
                             VolumeCapability::AccessMode::Mode_Name(cap.access_mode().mode()) +
                             " is not supported: volumes are local to one node");
  }
  if (cap.has_mount()) {
    const std::string& fs = cap.mount().fs_type();
    if (!fs.empty() && fs != kDefaultFsType) {
      return InvalidArgument("volume capability: fs_type '" + fs + "' is not supported (ext4 only)");
    }
    if (!cap.mount().volume_mount_group().empty()) {
      return InvalidArgument("volume capability: volume_mount_group is not supported");
    }
  }
  return grpc::Status::OK;
}

std::map<std::string, std::string> VolumeContext(const VolumeInfo& info,
                                                 const std::string& node_id,
                                                 const std::string& default_exposure) {
  auto attr = [&](const char* key, const std::string& fallback) {
    auto it = info.attributes.find(key);
    return it == info.attributes.end() || it->second.empty() ? fallback : it->second;
  };
  return {
      {kCtxFsType, attr(kParamFsType, kDefaultFsType)},
      {kCtxExposure, attr(kParamExposure, default_exposure)},
      {kCtxBlockSize, std::to_string(info.block_size)},
      {kCtxSourceKind, info.source_kind.empty() ? "blank" : info.source_kind},
      {kCtxNode, node_id},
  };
}

::csi::v1::Volume ToCsiVolume(const VolumeInfo& info, const std::string& node_id,
                              const std::string& default_exposure) {
  ::csi::v1::Volume v;
  v.set_capacity_bytes(static_cast<int64_t>(info.size_bytes));
  v.set_volume_id(info.id);
  for (const auto& [k, val] : VolumeContext(info, node_id, default_exposure)) {
    (*v.mutable_volume_context())[k] = val;
  }
  if (info.source_kind == "snapshot") {
    v.mutable_content_source()->mutable_snapshot()->set_snapshot_id(info.source_id);
  } else if (info.source_kind == "volume") {
    v.mutable_content_source()->mutable_volume()->set_volume_id(info.source_id);
  }
  (*v.add_accessible_topology()->mutable_segments())[kTopologyKey] = node_id;
  return v;
}

::csi::v1::Snapshot ToCsiSnapshot(const SnapshotInfo& info) {
  ::csi::v1::Snapshot s;
  s.set_size_bytes(static_cast<int64_t>(info.size_bytes));
  s.set_snapshot_id(info.id);
  s.set_source_volume_id(info.source_volume_id);
  s.mutable_creation_time()->set_seconds(info.created_unix_ns / 1000000000);
  s.mutable_creation_time()->set_nanos(static_cast<int32_t>(info.created_unix_ns % 1000000000));
  s.set_ready_to_use(true);  // snapshots are O(1) metadata: usable at once
  return s;
}

grpc::Status CheckName(const std::string& name, const std::string& what) {
  if (name.empty()) return InvalidArgument(what + " is required");
  return ToGrpcStatus(ValidateName(name, what));
}

uint64_t RoundUp(uint64_t value, uint64_t unit) {
  if (unit == 0) return value;
  return (value + unit - 1) / unit * unit;
}

}  // namespace stellarium::csi
