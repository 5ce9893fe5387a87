#include "csi/controller_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <sstream>

#include "core/provision.h"
#include "core/sources/http_source.h"
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
using node::LockTable;
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

// Logs an import's progress from local image files and trees every kProgressLogSeconds
// (URL imports log theirs in the ImageImporter).
ProgressFn ImportProgressLog(const std::string& name) {
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last = start;
  };
  auto state = std::make_shared<State>();
  return [name, state](const Progress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (now - state->last < std::chrono::seconds(node::kProgressLogSeconds)) return;
    state->last = now;
    const double secs = std::chrono::duration<double>(now - state->start).count();
    spdlog::info("volume {}: importing: {} of {} MiB read ({:.0f} MB/s)", name,
                 p.done_bytes >> 20, p.total_bytes ? std::to_string(p.total_bytes >> 20) : "?",
                 secs > 0 ? p.done_bytes / secs / 1e6 : 0.0);
  };
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
  CSI_ASSIGN_OR_RETURN(ProvisionRequest preq, ProvisionRequestOf(req, params));
  preq.progress = ImportProgressLog(req.name());
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
  LockTable::Guard source_lock;
  CSI_ASSIGN_OR_RETURN(
      ProvisionResult made,
      Provision(*driver_->store, preq, Hooks(req, params, url_image, &source_lock)));
  if (made.import) {
    const ImportSummary& sum = *made.import;
    spdlog::info("volume {} ({}): imported {} ({} bytes, {} new chunks, {} blocks: {} zero, {} "
                 "duplicate; {} bytes added in {:.2f} s{})",
                 made.volume.id, req.name(), params.image.empty() ? params.image_dir : params.image,
                 sum.raw_bytes, sum.new_chunks, sum.blocks, sum.zero_blocks, sum.duplicate_blocks,
                 sum.bytes_added, sum.seconds,
                 sum.reused_image ? ", image already known: cloned" : "");
  } else if (!made.existed && url_image) {
    spdlog::info("volume {} ({}): clone of image {} from url {}{}", made.volume.id, req.name(),
                 url_image->digest, RedactUrl(params.url),
                 url_image->downloaded ? "" : " (no download: the node had it)");
  }
  *resp->mutable_volume() = ToCsi(made.volume);
  return grpc::Status::OK;
}

ProvisionHooks ControllerService::Hooks(const CreateVolumeRequest& req, const VolumeParams& params,
                                        const std::optional<ImportedImage>& url_image,
                                        LockTable::Guard* source_lock) {
  ProvisionHooks hooks;
  hooks.before_volume_clone = [this, source_lock](const std::string& volume_id) {
    // A source in use on this node: its latest writes must be in the store first.
    *source_lock = driver_->locks.Acquire(Driver::VolumeKey(volume_id));
    return node_->FlushVolume(volume_id);
  };
  const std::string what = params.image_dir.empty() ? "parameter image" : "parameter imageDir";
  hooks.resolve_path = [this, what](const std::string& path) {
    return ResolveUnderAnyRoot(what, path, driver_->options.import_root);
  };
  const std::string url = "url " + RedactUrl(params.url);
  hooks.url_image = [&req, &url_image, url]() -> Result<ProvisionedImage> {
    if (!url_image) {
      // The volume existed before the import and was deleted since: start over.
      return Status::Aborted("volume " + req.name() + " from " + url + " changed meanwhile; retry");
    }
    return ProvisionedImage{url_image->digest, url_image->size_bytes, url_image->block_size};
  };
  hooks.clone_image = [this, url](const ::stellarium::CreateVolumeRequest& request,
                                  const std::string& digest) -> Result<VolumeInfo> {
    Result<VolumeInfo> v = importer_->CloneFrom(request, digest);
    if (!v.ok() && v.status().IsNotFound()) {
      return Status::Aborted(url +
                             ": its image was released while this volume was being made; retry");
    }
    return v;
  };
  return hooks;
}

Result<ProvisionRequest> ControllerService::ProvisionRequestOf(const CreateVolumeRequest& req,
                                                               const VolumeParams& params) const {
  ProvisionRequest p;
  p.name = req.name();
  p.required_bytes = static_cast<uint64_t>(req.capacity_range().required_bytes());
  p.limit_bytes = static_cast<uint64_t>(req.capacity_range().limit_bytes());
  p.block_size = params.block_size;
  p.attributes = params.ToAttributes();
  p.pad_to_block = true;
  p.scratch_dir = driver_->options.state_dir + "/tmp";
  if (req.has_volume_content_source()) {
    const auto& src = req.volume_content_source();
    if (src.has_snapshot()) {
      p.source.kind = SourceKind::kSnapshot;
      p.source.id = src.snapshot().snapshot_id();
    } else if (src.has_volume()) {
      p.source.kind = SourceKind::kVolume;
      p.source.id = src.volume().volume_id();
    } else {
      return Status::InvalidArgument("volume_content_source: set snapshot or volume");
    }
    if (p.source.id.empty())
      return Status::InvalidArgument("volume_content_source: the source id is empty");
    if (!params.image.empty() || !params.image_dir.empty() || !params.url.empty()) {
      return Status::InvalidArgument(
          "volume_content_source and the image/imageDir/url parameters are "
          "exclusive");
    }
  } else if (!params.url.empty()) {
    p.source.kind = SourceKind::kUrl;
    p.source.image.url = params.url;
  } else if (!params.image.empty()) {
    p.source.kind = SourceKind::kImageFile;
    p.source.image.path = params.image;
  } else if (!params.image_dir.empty()) {
    p.source.kind = SourceKind::kTree;
    p.source.tree_dir = params.image_dir;
    p.source.tree_label = kTreeImageLabel;
  }
  return p;
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
