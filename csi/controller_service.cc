#include "csi/controller_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <filesystem>
#include <sstream>

#include <unistd.h>

#include "core/image_source.h"
#include "core/sources/http_source.h"
#include "core/tree_image.h"
#include "csi/node/paths.h"
#include "csi/node_service.h"
#include "csi/run_rpc.h"
#include "csi/status_map.h"
#include "csi/volume_spec.h"

namespace stellarium::csi {

using namespace ::csi::v1;
// Both core and csi.v1 have these names; in this file they mean the CSI messages.
using ::csi::v1::CreateVolumeRequest;
using ::csi::v1::Volume;
// From the node library (csi/node/).
using node::FsUsage;
using node::ImageImporter;
using node::ImportedImage;
using node::ImporterOptions;
using node::kAnchorPrefix;
using node::ResolveUnderAnyRoot;
using node::UrlSource;

namespace {

// Paging tokens are "next:<id of the first entry of the next page>". Entries are sorted
// by id, so a page boundary survives creates and deletes between calls.
constexpr char kTokenPrefix[] = "next:";
// Label of ext4 images built from imageDir: the same tree builds the same image (core
// derives UUID and hash seed from it), so its blocks dedup to nothing new.
constexpr char kTreeImageLabel[] = "stellarium";

Result<size_t> PageStart(const std::string& token, const std::vector<std::string>& sorted_ids) {
  if (token.empty()) return size_t{0};
  if (token.rfind(kTokenPrefix, 0) != 0 || token.size() == sizeof(kTokenPrefix) - 1) {
    return Status::Aborted("starting_token '" + token + "' was not issued by this driver");
  }
  const std::string id = token.substr(sizeof(kTokenPrefix) - 1);
  return static_cast<size_t>(std::lower_bound(sorted_ids.begin(), sorted_ids.end(), id) -
                             sorted_ids.begin());
}

// The secrets a URL source reads from CreateVolume (StorageClass
// csi.storage.k8s.io/provisioner-secret-name/-namespace). Values are never logged.
constexpr char kSecretCaBundle[] = "caBundle";      // PEM text of trusted CAs
constexpr char kSecretHeaders[] = "headers";        // "Name: value" lines
constexpr char kSecretHeaderPrefix[] = "header.";   // header.<Name>: the value

Status CheckHeaderName(const std::string& name, const std::string& what) {
  if (name.empty()) return Status::InvalidArgument(what + ": empty header name");
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return Status::InvalidArgument(what + ": header name '" + name +
                                     "' may hold only letters, digits, '-' and '_'");
    }
  }
  return Status::Ok();
}

Status CheckHeaderValue(const std::string& value, const std::string& what) {
  if (value.find_first_of("\r\n") != std::string::npos) {
    return Status::InvalidArgument(what + ": the value contains a line break");
  }
  return Status::Ok();
}

// The URL source of a CreateVolume: parameters url/sha256 plus the secrets.
Result<UrlSource> UrlSourceOf(const CreateVolumeRequest& req, const VolumeParams& params,
                              uint32_t block_size) {
  UrlSource src;
  src.url = params.url;
  src.sha256 = params.sha256;
  src.block_size = block_size;
  for (const auto& [key, value] : req.secrets()) {
    const std::string what = "secret key '" + key + "'";
    if (key == kSecretCaBundle) {
      if (value.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        return Status::InvalidArgument(what + ": not a PEM certificate bundle");
      }
      src.ca_bundle_pem = value;
    } else if (key == kSecretHeaders) {
      std::istringstream lines(value);
      std::string line;
      while (std::getline(lines, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        const size_t colon = line.find(':');
        if (colon == std::string::npos) {
          return Status::InvalidArgument(what + ": a line is not of the form 'Name: value'");
        }
        RETURN_IF_ERROR(CheckHeaderName(line.substr(0, colon), what));
        src.headers.push_back(line);
      }
    } else if (key.rfind(kSecretHeaderPrefix, 0) == 0) {
      const std::string name = key.substr(sizeof(kSecretHeaderPrefix) - 1);
      RETURN_IF_ERROR(CheckHeaderName(name, what));
      RETURN_IF_ERROR(CheckHeaderValue(value, what));
      src.headers.push_back(name + ": " + value);
    } else {
      return Status::InvalidArgument(what + " is not used by url sources (known: caBundle, headers, "
                                     "header.<Name>)");
    }
  }
  if (!src.ca_bundle_pem.empty() && src.url.rfind("https://", 0) != 0 &&
      src.url.rfind("HTTPS://", 0) != 0) {
    return Status::InvalidArgument("secret key 'caBundle' applies to https:// URLs only");
  }
  return src;
}

std::string DescribeRange(const CapacityRange& r) {
  return "required_bytes " + std::to_string(r.required_bytes()) + ", limit_bytes " +
         std::to_string(r.limit_bytes());
}

}  // namespace

VolumeCondition ControllerService::Condition(const std::string& volume_id) const {
  VolumeCondition c;
  c.set_abnormal(false);
  c.set_message("ok");
  if (auto staged = driver_->node_state->Get(volume_id)) {
    if (!driver_->devices->Find(volume_id)) {
      c.set_abnormal(true);
      c.set_message("staged at " + staged->staging_path + " but its block device is gone");
    }
  }
  return c;
}

ControllerService::ControllerService(Driver* driver, NodeService* node)
    : driver_(driver), node_(node) {
  ImporterOptions io;
  io.state_dir = driver->options.state_dir;
  io.max_image_size = driver->options.max_image_size;
  io.max_concurrent_imports = driver->options.max_concurrent_imports;
  importer_ = std::make_unique<ImageImporter>(driver->store.get(), io);
}

Volume ControllerService::ToCsi(const VolumeInfo& info) const {
  return ToCsiVolume(info, driver_->options.node_id, driver_->devices->Name());
}

// ---------------------------------------------------------------------------------------
// CreateVolume
// ---------------------------------------------------------------------------------------

Result<VolumeInfo> ControllerService::CreateFromSource(
    const CreateVolumeRequest& req, const VolumeParams& params,
    const std::optional<ImportedImage>& url_image) {
  const uint64_t required = static_cast<uint64_t>(req.capacity_range().required_bytes());
  const uint64_t limit = static_cast<uint64_t>(req.capacity_range().limit_bytes());
  ::stellarium::CreateVolumeRequest creq;
  creq.name = req.name();
  creq.attributes = params.ToAttributes();
  creq.block_size = params.block_size;
  const uint32_t block_size =
      params.block_size ? params.block_size : driver_->store->options().default_block_size;

  auto fit = [&](uint64_t source_size, uint32_t bs, const std::string& what) -> Result<uint64_t> {
    uint64_t size = RoundUp(std::max(required, source_size), bs);
    if (limit > 0 && size > limit) {
      return Status::OutOfRange(what + " needs " + std::to_string(size) +
                                " bytes, more than limit_bytes " + std::to_string(limit));
    }
    return size;
  };

  if (req.has_volume_content_source()) {
    const VolumeContentSource& src = req.volume_content_source();
    if (src.has_snapshot()) {
      const std::string& snap_id = src.snapshot().snapshot_id();
      ASSIGN_OR_RETURN(SnapshotInfo snap, driver_->store->GetSnapshot(snap_id));
      if (params.block_size && params.block_size != snap.block_size) {
        return Status::InvalidArgument("parameter blockSize " + std::to_string(params.block_size) +
                                       " differs from source snapshot " + snap_id + "'s " +
                                       std::to_string(snap.block_size));
      }
      ASSIGN_OR_RETURN(creq.size_bytes,
                       fit(snap.size_bytes, snap.block_size, "source snapshot " + snap_id));
      return driver_->store->CreateVolumeFromSnapshot(creq, snap_id);
    }
    const std::string& vol_id = src.volume().volume_id();
    ASSIGN_OR_RETURN(VolumeInfo source, driver_->store->GetVolume(vol_id));
    if (params.block_size && params.block_size != source.block_size) {
      return Status::InvalidArgument("parameter blockSize " + std::to_string(params.block_size) +
                                     " differs from source volume " + vol_id + "'s " +
                                     std::to_string(source.block_size));
    }
    ASSIGN_OR_RETURN(creq.size_bytes,
                     fit(source.size_bytes, source.block_size, "source volume " + vol_id));
    // A source in use on this node: its latest writes must be in the store first.
    auto source_lock = driver_->locks.Acquire(Driver::VolumeKey(vol_id));
    RETURN_IF_ERROR(node_->FlushVolume(vol_id));
    return driver_->store->CloneVolume(creq, vol_id);
  }

  if (!params.url.empty()) {
    const std::string what = "url " + RedactUrl(params.url);
    if (!url_image) {
      // The volume existed before the import and was deleted since: start over.
      return Status::Aborted("volume " + req.name() + " from " + what + " changed meanwhile; retry");
    }
    const ImportedImage& img = *url_image;
    creq.block_size = img.block_size;
    creq.size_bytes = RoundUp(std::max(required, img.size_bytes), img.block_size);
    if (limit > 0 && creq.size_bytes > limit) {
      return Status::OutOfRange(what + ": image needs " + std::to_string(creq.size_bytes) +
                                " bytes, more than limit_bytes " + std::to_string(limit));
    }
    Result<VolumeInfo> v = importer_->CloneFrom(creq, img.digest);
    if (!v.ok() && v.status().IsNotFound()) {
      return Status::Aborted(what + ": its image was released while this volume was being made; retry");
    }
    if (v.ok()) {
      spdlog::info("volume {} ({}): clone of image {} from {}{}", v->id, req.name(), img.digest, what,
                   img.downloaded ? "" : " (no download: the node had it)");
    }
    return v;
  }

  if (!params.image.empty() || !params.image_dir.empty()) {
    const bool from_tree = !params.image_dir.empty();
    const std::string what = from_tree ? "parameter imageDir" : "parameter image";
    ASSIGN_OR_RETURN(std::string path,
                     ResolveUnderAnyRoot(what, from_tree ? params.image_dir : params.image,
                                         driver_->options.import_root));
    std::string built;  // the temporary image built from a tree
    if (from_tree) {
      ASSIGN_OR_RETURN(TreeSize tree, MeasureTree(path));
      uint64_t image_size = std::max<uint64_t>(DefaultImageSize(tree), RoundUp(required, block_size));
      ASSIGN_OR_RETURN(image_size, fit(image_size, block_size, "imageDir " + path));
      static std::atomic<uint64_t> counter{0};
      const std::string tmp_dir = driver_->options.state_dir + "/tmp";
      std::error_code ec;
      std::filesystem::create_directories(tmp_dir, ec);
      if (ec) return Status::Internal("create " + tmp_dir + ": " + ec.message());
      built = tmp_dir + "/tree-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter.fetch_add(1)) + ".img";
      RETURN_IF_ERROR(BuildExt4FromTree(path, image_size, kTreeImageLabel, built));
    }
    struct Cleanup {
      std::string path;
      ~Cleanup() {
        if (!path.empty()) ::unlink(path.c_str());
      }
    } cleanup{built};
    ASSIGN_OR_RETURN(std::unique_ptr<ImageSource> source,
                     OpenFileImageSource(from_tree ? built : path));
    const uint64_t image_size = source->Size().value_or(0);
    ASSIGN_OR_RETURN(creq.size_bytes, fit(image_size, block_size, "image " + path));
    ImportOptions options;
    options.volume = creq;
    options.pad_to_block = true;
    ASSIGN_OR_RETURN(ImportResult imported, driver_->store->ImportImage(*source, options));
    spdlog::info("volume {} ({}): imported {} ({} bytes, {} new chunks{})", imported.volume.id,
                 req.name(), path, imported.summary.raw_bytes, imported.summary.new_chunks,
                 imported.summary.reused_image ? ", image already known: cloned" : "");
    return imported.volume;
  }

  uint64_t size = required ? required : kDefaultVolumeBytes;
  if (!required && limit) size = std::min<uint64_t>(size, limit);
  size = RoundUp(size, block_size);
  if (limit > 0 && size > limit) {
    return Status::OutOfRange("capacity_range " + DescribeRange(req.capacity_range()) +
                              ": no multiple of the block size " + std::to_string(block_size) +
                              " fits");
  }
  creq.size_bytes = size;
  return driver_->store->CreateVolume(creq);
}

grpc::Status ControllerService::Create(grpc::ServerContext* context, const CreateVolumeRequest& req,
                                       CreateVolumeResponse* resp) {
  CSI_RETURN_IF_GRPC_ERROR(CheckName(req.name(), "name"));
  if (ImageImporter::IsAnchorName(req.name())) {
    return InvalidArgument("name '" + req.name() + "': the prefix " + kAnchorPrefix +
                           " is reserved for the driver's images");
  }
  if (req.volume_capabilities_size() == 0) return InvalidArgument("volume_capabilities is required");
  for (const auto& cap : req.volume_capabilities()) CSI_RETURN_IF_GRPC_ERROR(CheckCapability(cap));
  const CapacityRange& range = req.capacity_range();
  if (range.required_bytes() < 0 || range.limit_bytes() < 0) {
    return InvalidArgument("capacity_range must not be negative (" + DescribeRange(range) + ")");
  }
  if (range.limit_bytes() > 0 && range.required_bytes() > range.limit_bytes()) {
    return OutOfRange("capacity_range: required_bytes exceeds limit_bytes (" +
                      DescribeRange(range) + ")");
  }
  CSI_ASSIGN_OR_RETURN(VolumeParams params,
                       ParseVolumeParameters(req.parameters(), driver_->devices->Name()));
  std::string source_kind, source_id;
  if (req.has_volume_content_source()) {
    const auto& src = req.volume_content_source();
    if (src.has_snapshot()) {
      source_kind = "snapshot";
      source_id = src.snapshot().snapshot_id();
    } else if (src.has_volume()) {
      source_kind = "volume";
      source_id = src.volume().volume_id();
    } else {
      return InvalidArgument("volume_content_source: set snapshot or volume");
    }
    if (source_id.empty()) return InvalidArgument("volume_content_source: the source id is empty");
    if (!params.image.empty() || !params.image_dir.empty() || !params.url.empty()) {
      return InvalidArgument("volume_content_source and the image/imageDir/url parameters are "
                             "exclusive");
    }
  }
  if (req.has_accessibility_requirements() &&
      req.accessibility_requirements().requisite_size() > 0) {
    bool reachable = false;
    for (const auto& topo : req.accessibility_requirements().requisite()) {
      auto it = topo.segments().find(kTopologyKey);
      if (it != topo.segments().end() && it->second == driver_->options.node_id) reachable = true;
    }
    if (!reachable) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "this driver provisions on node " + driver_->options.node_id +
                              " only, which is not in accessibility_requirements.requisite");
    }
  }

  // A URL's image is fetched (or waited for) before the name lock is taken: the wait may
  // last until the deadline, and a retry of the same name must be able to join it.
  std::optional<ImportedImage> url_image;
  if (!params.url.empty()) {
    Result<VolumeInfo> before = driver_->store->FindVolumeByName(req.name());
    if (!before.ok() && !before.status().IsNotFound()) return ToGrpcStatus(before.status());
    if (!before.ok()) {
      const uint32_t block_size =
          params.block_size ? params.block_size : driver_->store->options().default_block_size;
      CSI_ASSIGN_OR_RETURN(UrlSource src, UrlSourceOf(req, params, block_size));
      // The image must fit what was asked for: limit_bytes, else required_bytes.
      const uint64_t capacity = static_cast<uint64_t>(range.limit_bytes() > 0 ? range.limit_bytes()
                                                                              : range.required_bytes());
      CSI_ASSIGN_OR_RETURN(url_image, importer_->Get(src, capacity, context->deadline(),
                                                     [context] { return context->IsCancelled(); }));
    }
  }

  auto name_lock = driver_->locks.Acquire(Driver::VolumeNameKey(req.name()));
  Result<VolumeInfo> existing = driver_->store->FindVolumeByName(req.name());
  if (existing.ok()) {
    const VolumeInfo& v = *existing;
    const uint64_t required = static_cast<uint64_t>(range.required_bytes());
    const uint64_t limit = static_cast<uint64_t>(range.limit_bytes());
    std::string why;
    if (v.size_bytes < required) why = "it is " + std::to_string(v.size_bytes) + " bytes";
    else if (limit > 0 && v.size_bytes > limit) why = "it is " + std::to_string(v.size_bytes) + " bytes";
    else if (!source_kind.empty() && (v.source_kind != source_kind || v.source_id != source_id))
      why = "its source is " + (v.source_kind.empty() ? "none" : v.source_kind + " " + v.source_id);
    else if (source_kind.empty() && params.image.empty() && params.image_dir.empty() &&
             params.url.empty() && !v.source_kind.empty())
      why = "it was created from " + v.source_kind + " " + v.source_id;
    else if (v.attributes != params.ToAttributes()) why = "it has other parameters";
    else if (params.block_size && v.block_size != params.block_size)
      why = "its block size is " + std::to_string(v.block_size);
    if (!why.empty()) {
      return AlreadyExists("volume name '" + req.name() + "' is taken by " + v.id + " and " + why);
    }
    *resp->mutable_volume() = ToCsi(v);
    return grpc::Status::OK;
  }
  if (!existing.status().IsNotFound()) return ToGrpcStatus(existing.status());

  CSI_ASSIGN_OR_RETURN(VolumeInfo created, CreateFromSource(req, params, url_image));
  *resp->mutable_volume() = ToCsi(created);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Delete(const DeleteVolumeRequest& req) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  if (auto staged = driver_->node_state->Get(id)) {
    return FailedPrecondition("volume " + id + " is staged on node " + driver_->options.node_id +
                              " at " + staged->staging_path + ": unstage it first");
  }
  Result<VolumeInfo> info = driver_->store->GetVolume(id);
  if (!info.ok() && !info.status().IsNotFound()) return ToGrpcStatus(info.status());
  if (info.ok() && ImageImporter::IsAnchorName(info->name)) {
    return FailedPrecondition("volume " + id + " holds an imported image for the driver; it goes "
                              "with the last volume made from that image");
  }
  CSI_RETURN_IF_ERROR(driver_->store->DeleteVolume(id));
  if (info.ok() && info->source_kind == "image") {
    // The last volume of an image from a URL takes the image's anchor with it.
    Status st = importer_->ReleaseIfUnused(info->source_id);
    if (!st.ok()) spdlog::warn("volume {} deleted; releasing image {}: {}", id, info->source_id, st.ToString());
  }
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

grpc::Status ControllerService::Snapshot(const CreateSnapshotRequest& req,
                                         CreateSnapshotResponse* resp) {
  CSI_RETURN_IF_GRPC_ERROR(CheckName(req.name(), "name"));
  if (req.source_volume_id().empty()) return InvalidArgument("source_volume_id is required");
  CSI_RETURN_IF_ERROR(CheckNoParameters(req.parameters(), "snapshot"));
  auto name_lock = driver_->locks.Acquire(Driver::SnapshotNameKey(req.name()));
  Result<SnapshotInfo> existing = driver_->store->FindSnapshotByName(req.name());
  if (existing.ok()) {
    if (existing->source_volume_id != req.source_volume_id()) {
      return AlreadyExists("snapshot name '" + req.name() + "' is taken by " + existing->id +
                           " of volume " + existing->source_volume_id);
    }
    *resp->mutable_snapshot() = ToCsiSnapshot(*existing);
    return grpc::Status::OK;
  }
  if (!existing.status().IsNotFound()) return ToGrpcStatus(existing.status());
  auto volume_lock = driver_->locks.Acquire(Driver::VolumeKey(req.source_volume_id()));
  CSI_RETURN_IF_ERROR(node_->FlushVolume(req.source_volume_id()));
  CSI_ASSIGN_OR_RETURN(SnapshotInfo snap,
                       driver_->store->CreateSnapshot(req.name(), req.source_volume_id()));
  *resp->mutable_snapshot() = ToCsiSnapshot(snap);
  return grpc::Status::OK;
}

grpc::Status ControllerService::ListSnaps(const ListSnapshotsRequest& req,
                                          ListSnapshotsResponse* resp) {
  if (req.max_entries() < 0) return InvalidArgument("max_entries must not be negative");
  std::vector<SnapshotInfo> snaps;
  if (!req.snapshot_id().empty()) {
    Result<SnapshotInfo> one = driver_->store->GetSnapshot(req.snapshot_id());
    if (one.ok()) snaps.push_back(*one);
    else if (!one.status().IsNotFound()) return ToGrpcStatus(one.status());
  } else {
    CSI_ASSIGN_OR_RETURN(snaps, driver_->store->ListSnapshots());
  }
  if (!req.source_volume_id().empty()) {
    snaps.erase(std::remove_if(snaps.begin(), snaps.end(),
                               [&](const SnapshotInfo& s) {
                                 return s.source_volume_id != req.source_volume_id();
                               }),
                snaps.end());
  }
  std::vector<std::string> ids;
  for (const auto& s : snaps) ids.push_back(s.id);
  CSI_ASSIGN_OR_RETURN(size_t start, PageStart(req.starting_token(), ids));
  size_t end = snaps.size();
  if (req.max_entries() > 0) end = std::min(end, start + static_cast<size_t>(req.max_entries()));
  for (size_t i = start; i < end; ++i) *resp->add_entries()->mutable_snapshot() = ToCsiSnapshot(snaps[i]);
  if (end < snaps.size()) resp->set_next_token(kTokenPrefix + snaps[end].id);
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------
// Volumes: list, expand, validate, capacity, get
// ---------------------------------------------------------------------------------------

grpc::Status ControllerService::ListVols(const ListVolumesRequest& req, ListVolumesResponse* resp) {
  if (req.max_entries() < 0) return InvalidArgument("max_entries must not be negative");
  CSI_ASSIGN_OR_RETURN(std::vector<VolumeInfo> volumes, driver_->store->ListVolumes());
  // Image anchors are the driver's, not the CO's.
  volumes.erase(std::remove_if(volumes.begin(), volumes.end(),
                               [](const VolumeInfo& v) { return ImageImporter::IsAnchorName(v.name); }),
                volumes.end());
  std::vector<std::string> ids;
  for (const auto& v : volumes) ids.push_back(v.id);
  CSI_ASSIGN_OR_RETURN(size_t start, PageStart(req.starting_token(), ids));
  size_t end = volumes.size();
  if (req.max_entries() > 0) end = std::min(end, start + static_cast<size_t>(req.max_entries()));
  for (size_t i = start; i < end; ++i) {
    auto* entry = resp->add_entries();
    *entry->mutable_volume() = ToCsi(volumes[i]);
    *entry->mutable_status()->mutable_volume_condition() = Condition(volumes[i].id);
  }
  if (end < volumes.size()) resp->set_next_token(kTokenPrefix + volumes[end].id);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Expand(const ControllerExpandVolumeRequest& req,
                                       ControllerExpandVolumeResponse* resp) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (!req.has_capacity_range()) return InvalidArgument("capacity_range is required");
  const CapacityRange& range = req.capacity_range();
  if (range.required_bytes() < 0 || range.limit_bytes() < 0) {
    return InvalidArgument("capacity_range must not be negative (" + DescribeRange(range) + ")");
  }
  if (range.required_bytes() == 0 && range.limit_bytes() == 0) {
    return InvalidArgument("capacity_range: set required_bytes");
  }
  if (req.has_volume_capability()) CSI_RETURN_IF_GRPC_ERROR(CheckCapability(req.volume_capability()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  CSI_ASSIGN_OR_RETURN(VolumeInfo info, driver_->store->GetVolume(id));
  const uint64_t target = RoundUp(
      std::max<uint64_t>(info.size_bytes, static_cast<uint64_t>(range.required_bytes())),
      info.block_size);
  if (range.limit_bytes() > 0 && target > static_cast<uint64_t>(range.limit_bytes())) {
    return OutOfRange("volume " + id + " would be " + std::to_string(target) +
                      " bytes, more than limit_bytes " + std::to_string(range.limit_bytes()));
  }
  if (target > info.size_bytes) {
    CSI_ASSIGN_OR_RETURN(info, driver_->store->ResizeVolume(id, target));
  }
  resp->set_capacity_bytes(static_cast<int64_t>(info.size_bytes));
  // A filesystem always needs the node to grow it; a raw block volume only needs the
  // node when it is attached there (the device's size is fixed at attach time).
  const bool block = req.has_volume_capability() && req.volume_capability().has_block();
  resp->set_node_expansion_required(!block || driver_->devices->Find(id).has_value());
  return grpc::Status::OK;
}

grpc::Status ControllerService::Validate(const ValidateVolumeCapabilitiesRequest& req,
                                         ValidateVolumeCapabilitiesResponse* resp) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.volume_capabilities_size() == 0) return InvalidArgument("volume_capabilities is required");
  CSI_ASSIGN_OR_RETURN(VolumeInfo info, driver_->store->GetVolume(req.volume_id()));
  for (const auto& cap : req.volume_capabilities()) {
    grpc::Status st = CheckCapability(cap);
    if (!st.ok()) {
      resp->set_message(st.error_message());
      return grpc::Status::OK;
    }
  }
  Result<VolumeParams> params = ParseVolumeParameters(req.parameters(), driver_->devices->Name());
  if (!params.ok()) {
    resp->set_message(params.status().message());
    return grpc::Status::OK;
  }
  const auto ours = VolumeContext(info, driver_->options.node_id, driver_->devices->Name());
  for (const auto& [key, value] : req.volume_context()) {
    auto it = ours.find(key);
    if (it == ours.end() || it->second != value) {
      resp->set_message("volume_context key '" + key + "' does not match volume " + info.id);
      return grpc::Status::OK;
    }
  }
  auto* confirmed = resp->mutable_confirmed();
  *confirmed->mutable_volume_context() = req.volume_context();
  *confirmed->mutable_volume_capabilities() = req.volume_capabilities();
  *confirmed->mutable_parameters() = req.parameters();
  return grpc::Status::OK;
}

grpc::Status ControllerService::Capacity(const GetCapacityRequest& req, GetCapacityResponse* resp) {
  for (const auto& cap : req.volume_capabilities()) {
    if (!CheckCapability(cap).ok()) {  // cannot provision these at all: no capacity
      resp->set_available_capacity(0);
      return grpc::Status::OK;
    }
  }
  CSI_RETURN_IF_ERROR(ParseVolumeParameters(req.parameters(), driver_->devices->Name()).status());
  if (req.has_accessible_topology()) {
    auto it = req.accessible_topology().segments().find(kTopologyKey);
    if (it == req.accessible_topology().segments().end() || it->second != driver_->options.node_id) {
      resp->set_available_capacity(0);
      return grpc::Status::OK;
    }
  }
  CSI_ASSIGN_OR_RETURN(FsUsage usage, driver_->mounter.FilesystemUsage(driver_->options.store));
  resp->set_available_capacity(static_cast<int64_t>(usage.available_bytes));
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetVolume(const ControllerGetVolumeRequest& req,
                                          ControllerGetVolumeResponse* resp) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  CSI_ASSIGN_OR_RETURN(VolumeInfo info, driver_->store->GetVolume(req.volume_id()));
  *resp->mutable_volume() = ToCsi(info);
  *resp->mutable_status()->mutable_volume_condition() = Condition(info.id);
  if (driver_->node_state->Get(info.id)) {
    resp->mutable_status()->add_published_node_ids(driver_->options.node_id);
  }
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------
// RPC entry points
// ---------------------------------------------------------------------------------------

grpc::Status ControllerService::CreateVolume(grpc::ServerContext* context,
                                             const CreateVolumeRequest* req,
                                             CreateVolumeResponse* resp) {
  return RunRpc("CreateVolume", *req, [&] { return Create(context, *req, resp); });
}

grpc::Status ControllerService::DeleteVolume(grpc::ServerContext*, const DeleteVolumeRequest* req,
                                             DeleteVolumeResponse*) {
  return RunRpc("DeleteVolume", *req, [&] { return Delete(*req); });
}

grpc::Status ControllerService::ControllerPublishVolume(grpc::ServerContext*,
                                                        const ControllerPublishVolumeRequest* req,
                                                        ControllerPublishVolumeResponse*) {
  return RunRpc("ControllerPublishVolume", *req, [&] {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "ControllerPublishVolume: volumes are node-local, nothing to attach");
  });
}

grpc::Status ControllerService::ControllerUnpublishVolume(
    grpc::ServerContext*, const ControllerUnpublishVolumeRequest* req,
    ControllerUnpublishVolumeResponse*) {
  return RunRpc("ControllerUnpublishVolume", *req, [&] {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "ControllerUnpublishVolume: volumes are node-local, nothing to detach");
  });
}

grpc::Status ControllerService::ValidateVolumeCapabilities(
    grpc::ServerContext*, const ValidateVolumeCapabilitiesRequest* req,
    ValidateVolumeCapabilitiesResponse* resp) {
  return RunRpc("ValidateVolumeCapabilities", *req, [&] { return Validate(*req, resp); });
}

grpc::Status ControllerService::ListVolumes(grpc::ServerContext*, const ListVolumesRequest* req,
                                            ListVolumesResponse* resp) {
  return RunRpc("ListVolumes", *req, [&] { return ListVols(*req, resp); });
}

grpc::Status ControllerService::GetCapacity(grpc::ServerContext*, const GetCapacityRequest* req,
                                            GetCapacityResponse* resp) {
  return RunRpc("GetCapacity", *req, [&] { return Capacity(*req, resp); });
}

grpc::Status ControllerService::ControllerGetCapabilities(
    grpc::ServerContext*, const ControllerGetCapabilitiesRequest* req,
    ControllerGetCapabilitiesResponse* resp) {
  return RunRpc("ControllerGetCapabilities", *req, [&] {
    for (auto type : {ControllerServiceCapability::RPC::CREATE_DELETE_VOLUME,
                      ControllerServiceCapability::RPC::CREATE_DELETE_SNAPSHOT,
                      ControllerServiceCapability::RPC::CLONE_VOLUME,
                      ControllerServiceCapability::RPC::LIST_VOLUMES,
                      ControllerServiceCapability::RPC::LIST_SNAPSHOTS,
                      ControllerServiceCapability::RPC::GET_CAPACITY,
                      ControllerServiceCapability::RPC::EXPAND_VOLUME,
                      ControllerServiceCapability::RPC::GET_VOLUME,
                      ControllerServiceCapability::RPC::VOLUME_CONDITION,
                      ControllerServiceCapability::RPC::SINGLE_NODE_MULTI_WRITER,
                      ControllerServiceCapability::RPC::GET_SNAPSHOT}) {
      if (type == ControllerServiceCapability::RPC::EXPAND_VOLUME &&
          !driver_->options.controller_expansion) {
        continue;  // distributed deployment: NodeExpandVolume grows the volume
      }
      resp->add_capabilities()->mutable_rpc()->set_type(type);
    }
    return grpc::Status::OK;
  });
}

grpc::Status ControllerService::CreateSnapshot(grpc::ServerContext*,
                                               const CreateSnapshotRequest* req,
                                               CreateSnapshotResponse* resp) {
  return RunRpc("CreateSnapshot", *req, [&] { return Snapshot(*req, resp); });
}

grpc::Status ControllerService::DeleteSnapshot(grpc::ServerContext*,
                                               const DeleteSnapshotRequest* req,
                                               DeleteSnapshotResponse*) {
  return RunRpc("DeleteSnapshot", *req, [&] {
    if (req->snapshot_id().empty()) return InvalidArgument("snapshot_id is required");
    CSI_RETURN_IF_ERROR(driver_->store->DeleteSnapshot(req->snapshot_id()));
    return grpc::Status::OK;
  });
}

grpc::Status ControllerService::ListSnapshots(grpc::ServerContext*, const ListSnapshotsRequest* req,
                                              ListSnapshotsResponse* resp) {
  return RunRpc("ListSnapshots", *req, [&] { return ListSnaps(*req, resp); });
}

grpc::Status ControllerService::GetSnapshot(grpc::ServerContext*, const GetSnapshotRequest* req,
                                            GetSnapshotResponse* resp) {
  return RunRpc("GetSnapshot", *req, [&] {
    if (req->snapshot_id().empty()) return InvalidArgument("snapshot_id is required");
    CSI_ASSIGN_OR_RETURN(SnapshotInfo snap, driver_->store->GetSnapshot(req->snapshot_id()));
    *resp->mutable_snapshot() = ToCsiSnapshot(snap);
    return grpc::Status::OK;
  });
}

grpc::Status ControllerService::ControllerExpandVolume(grpc::ServerContext*,
                                                       const ControllerExpandVolumeRequest* req,
                                                       ControllerExpandVolumeResponse* resp) {
  return RunRpc("ControllerExpandVolume", *req, [&] { return Expand(*req, resp); });
}

grpc::Status ControllerService::ControllerGetVolume(grpc::ServerContext*,
                                                    const ControllerGetVolumeRequest* req,
                                                    ControllerGetVolumeResponse* resp) {
  return RunRpc("ControllerGetVolume", *req, [&] { return GetVolume(*req, resp); });
}

grpc::Status ControllerService::ControllerModifyVolume(grpc::ServerContext*,
                                                       const ControllerModifyVolumeRequest* req,
                                                       ControllerModifyVolumeResponse*) {
  return RunRpc("ControllerModifyVolume", *req, [&] {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "ControllerModifyVolume: no mutable parameters");
  });
}

}  // namespace stellarium::csi
