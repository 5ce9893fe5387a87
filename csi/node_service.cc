#include "csi/node_service.h"

#include <spdlog/spdlog.h>

#include "csi/node/paths.h"
#include "csi/run_rpc.h"
#include "csi/status_map.h"
#include "csi/volume_spec.h"

namespace stellarium::csi {

using namespace ::csi::v1;
// From the node library (csi/node/).
using node::ExposureUsage;
using node::FsUsage;
using node::NewBlockDeviceExposure;
using node::NewRuntimeDescriptorExposure;
using node::NewVhostUserBlkExposure;
using node::NodeExposure;
using node::NodeExposures;
using node::NodePathRules;
using node::PublishedTarget;
using node::ResolveNodePath;
using node::ResolveUnderRoot;
using node::StagedVolume;

namespace {

std::string JoinTargets(const StagedVolume& v) {
  std::string out;
  for (const auto& [path, t] : v.targets) out += (out.empty() ? "" : ", ") + path;
  return out;
}

std::string FsTypeFor(const VolumeCapability& cap,
                      const google::protobuf::Map<std::string, std::string>& context,
                      const VolumeInfo& info) {
  if (cap.has_mount() && !cap.mount().fs_type().empty()) return cap.mount().fs_type();
  auto it = context.find(kCtxFsType);
  if (it != context.end() && !it->second.empty()) return it->second;
  auto attr = info.attributes.find(kParamFsType);
  if (attr != info.attributes.end() && !attr->second.empty()) return attr->second;
  return kDefaultFsType;
}

std::vector<std::string> MountFlags(const VolumeCapability& cap) {
  if (!cap.has_mount()) return {};
  return {cap.mount().mount_flags().begin(), cap.mount().mount_flags().end()};
}

// NodeGetVolumeStats and NodeExpandVolume: `path` must be where the volume is staged or
// published. Any other path, also one that is relative or cannot be resolved, is
// NOT_FOUND: the spec's code for a volume that is not at the path asked about.
Result<std::string> LocateVolumePath(const StagedVolume& record, const std::string& path,
                                     const std::string& kubelet_dir) {
  Result<std::string> resolved = ResolveUnderRoot("volume_path", path, kubelet_dir);
  if (resolved.ok() && (*resolved == record.staging_path || record.targets.count(*resolved))) {
    return *resolved;
  }
  return Status::NotFound("volume " + record.volume_id + " is not staged or published at " + path);
}

}  // namespace

NodeService::NodeService(Driver* driver) : driver_(driver) {
  Driver& d = *driver_;
  exposures_ = std::make_unique<NodeExposures>(
      d.devices->Name(), NewBlockDeviceExposure(d.devices.get(), &d.mounter),
      kExposureVhostUserBlk,
      NewVhostUserBlkExposure(d.store.get(), d.devices.get(), &d.mounter,
                              d.options.state_dir + "/vhost",
                              d.options.exposure_readahead_mib << 20),
      NewRuntimeDescriptorExposure(d.options.kata_direct_volume_dir));
  for (const StagedVolume& staged : d.node_state->List()) {
    Result<NodeExposure*> exposure = exposures_->For(staged.exposure);
    Status st = exposure.ok() ? (*exposure)->Restore(staged) : exposure.status();
    if (!st.ok()) {
      spdlog::error("volume {}: cannot restore its {} exposure: {}; NodeStageVolume will try "
                    "again", staged.volume_id, exposures_->Normalize(staged.exposure),
                    st.ToString());
    }
  }
}

NodeService::~NodeService() = default;

// ---------------------------------------------------------------------------------------
// Stage / unstage
// ---------------------------------------------------------------------------------------

grpc::Status NodeService::Stage(const NodeStageVolumeRequest& req) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.staging_target_path().empty()) return InvalidArgument("staging_target_path is required");
  if (!req.has_volume_capability()) return InvalidArgument("volume_capability is required");
  CSI_RETURN_IF_GRPC_ERROR(CheckCapability(req.volume_capability()));
  CSI_ASSIGN_OR_RETURN(
      const std::string staging,
      ResolveNodePath("staging_target_path", req.staging_target_path(), PathRules()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  CSI_ASSIGN_OR_RETURN(const VolumeInfo info, driver_->store->GetVolume(id));

  const VolumeCapability& cap = req.volume_capability();
  const bool block = cap.has_block();
  const auto mode = cap.access_mode().mode();
  const bool read_only = IsReadOnlyMode(mode);
  const std::string fs_type = block ? "" : FsTypeFor(cap, req.volume_context(), info);
  if (!block && fs_type != kDefaultFsType) {
    return InvalidArgument("fs_type '" + fs_type + "' is not supported (ext4 only)");
  }
  std::string wanted;  // "" = the node's default
  if (auto it = req.volume_context().find(kCtxExposure); it != req.volume_context().end()) {
    wanted = it->second;
  } else if (auto attr = info.attributes.find(kParamExposure); attr != info.attributes.end()) {
    wanted = attr->second;
  }
  Result<NodeExposure*> exposure = exposures_->For(wanted);
  if (!exposure.ok()) {
    return FailedPrecondition("volume " + id + " asks for exposure '" + wanted +
                              "', this node provides '" + driver_->devices->Name() + "' and '" +
                              kExposureVhostUserBlk + "'");
  }
  const std::vector<std::string> flags = MountFlags(cap);

  StagedVolume record;
  record.volume_id = id;
  record.staging_path = staging;
  record.block = block;
  record.fs_type = fs_type;
  record.mount_flags = flags;
  record.access_mode = mode;
  record.read_only = read_only;
  record.exposure = exposures_->Normalize(wanted);
  const std::optional<StagedVolume> existing = driver_->node_state->Get(id);
  if (existing) {
    if (existing->staging_path != staging) {
      return FailedPrecondition("volume " + id + " is already staged at " +
                                existing->staging_path);
    }
    if (existing->block != block || existing->fs_type != fs_type ||
        existing->read_only != read_only || existing->mount_flags != flags ||
        exposures_->Normalize(existing->exposure) != record.exposure) {
      return AlreadyExists("volume " + id + " is already staged at " + staging +
                           " with another volume capability or exposure");
    }
    record = *existing;
    record.exposure = exposures_->Normalize(wanted);
  }

  // Repeated stages repair what is missing (a mount lost in a reboot) and keep the rest.
  CSI_RETURN_IF_ERROR((*exposure)->Stage(&record));
  if (existing && *existing == record) return grpc::Status::OK;
  Status st = driver_->node_state->Put(record);
  if (!st.ok()) {
    if (!existing) {
      Status undo = (*exposure)->Unstage(record, /*recorded=*/true);
      if (!undo.ok()) spdlog::error("volume {}: rollback of stage failed: {}", id, undo.ToString());
    }
    return ToGrpcStatus(st);
  }
  return grpc::Status::OK;
}

grpc::Status NodeService::Unstage(const NodeUnstageVolumeRequest& req) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.staging_target_path().empty()) return InvalidArgument("staging_target_path is required");
  CSI_ASSIGN_OR_RETURN(
      const std::string staging,
      ResolveNodePath("staging_target_path", req.staging_target_path(), PathRules()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  auto record = driver_->node_state->Get(id);
  if (!record) {
    // Not staged, or a stage that died before recording: undo whatever is left.
    StagedVolume bare;
    bare.volume_id = id;
    bare.staging_path = staging;
    CSI_RETURN_IF_ERROR(exposures_->All()->Unstage(bare, /*recorded=*/false));
    return grpc::Status::OK;
  }
  if (record->staging_path != staging) {
    return FailedPrecondition("volume " + id + " is staged at " + record->staging_path + ", not " +
                              staging);
  }
  if (!record->targets.empty()) {
    return FailedPrecondition("volume " + id + " is still published at " + JoinTargets(*record) +
                              ": unpublish it first");
  }
  CSI_ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  CSI_RETURN_IF_ERROR(exposure->Unstage(*record, /*recorded=*/true));
  CSI_RETURN_IF_ERROR(driver_->node_state->Remove(id));
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------
// Publish / unpublish
// ---------------------------------------------------------------------------------------

grpc::Status NodeService::Publish(const NodePublishVolumeRequest& req) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.target_path().empty()) return InvalidArgument("target_path is required");
  if (req.staging_target_path().empty()) {
    return InvalidArgument("staging_target_path is required: this driver stages volumes");
  }
  if (!req.has_volume_capability()) return InvalidArgument("volume_capability is required");
  CSI_RETURN_IF_GRPC_ERROR(CheckCapability(req.volume_capability()));
  CSI_ASSIGN_OR_RETURN(const std::string target,
                       ResolveNodePath("target_path", req.target_path(), PathRules()));
  CSI_ASSIGN_OR_RETURN(
      const std::string staging,
      ResolveNodePath("staging_target_path", req.staging_target_path(), PathRules()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  CSI_RETURN_IF_ERROR(driver_->store->GetVolume(id).status());
  auto record = driver_->node_state->Get(id);
  if (!record) {
    return FailedPrecondition("volume " + id + " is not staged on this node: call "
                              "NodeStageVolume first");
  }
  if (record->staging_path != staging) {
    return FailedPrecondition("volume " + id + " is staged at " + record->staging_path + ", not " +
                              staging);
  }
  const VolumeCapability& cap = req.volume_capability();
  const bool block = cap.has_block();
  if (block != record->block) {
    return FailedPrecondition("volume " + id + " was staged for " +
                              (record->block ? "block" : "mount") + " access, not " +
                              (block ? "block" : "mount"));
  }
  const auto mode = cap.access_mode().mode();
  const bool read_only = req.readonly() || IsReadOnlyMode(mode);
  if (record->read_only && !read_only) {
    return FailedPrecondition("volume " + id + " is staged read-only: publish it read-only");
  }
  const std::vector<std::string> flags = MountFlags(cap);

  auto it = record->targets.find(target);
  const bool recorded = it != record->targets.end();
  if (recorded) {
    if (it->second.read_only != read_only || it->second.mount_flags != flags) {
      return AlreadyExists("volume " + id + " is already published at " + target +
                           " with other options");
    }
  } else if (!read_only && IsSingleWriterMode(mode)) {
    for (const auto& [path, t] : record->targets) {
      if (!t.read_only) {
        return FailedPrecondition("volume " + id + " (access mode " +
                                  VolumeCapability::AccessMode::Mode_Name(mode) +
                                  ") is already published read-write at " + path);
      }
    }
  }

  CSI_ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  // What the driver makes it takes away again, and nothing else (PublishedTarget::created).
  const bool created = recorded ? it->second.created : !driver_->mounter.Exists(target);
  const PublishedTarget how{read_only, flags, created};
  Status st = exposure->Publish(*record, target, how, recorded);
  if (st.ok() && !recorded) {
    record->targets[target] = how;
    st = driver_->node_state->Put(*record);
    if (!st.ok()) (void)exposure->Unpublish(*record, target, /*recorded=*/true);
  }
  if (!st.ok() && !recorded && created) (void)driver_->mounter.RemovePath(target);
  return ToGrpcStatus(st);
}

grpc::Status NodeService::Unpublish(const NodeUnpublishVolumeRequest& req) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.target_path().empty()) return InvalidArgument("target_path is required");
  CSI_ASSIGN_OR_RETURN(const std::string target,
                       ResolveNodePath("target_path", req.target_path(), PathRules()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  auto record = driver_->node_state->Get(id);
  const bool ours = record && record->targets.count(target) > 0;
  if (!ours) {
    // Nothing recorded: a volume that does not exist is NOT_FOUND (spec); otherwise
    // this is a repeat of an unpublish that already happened, or one that died before
    // recording: every exposure removes what is certainly this volume's, and the target
    // stays (the driver cannot tell it made it).
    CSI_RETURN_IF_ERROR(driver_->store->GetVolume(id).status());
    StagedVolume bare;
    bare.volume_id = id;
    CSI_RETURN_IF_ERROR(exposures_->All()->Unpublish(record ? *record : bare, target,
                                                     /*recorded=*/false));
    return grpc::Status::OK;
  }
  CSI_ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  CSI_RETURN_IF_ERROR(exposure->Unpublish(*record, target, /*recorded=*/true));
  if (record->targets[target].created) CSI_RETURN_IF_ERROR(driver_->mounter.RemovePath(target));
  record->targets.erase(target);
  CSI_RETURN_IF_ERROR(driver_->node_state->Put(*record));
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------
// Stats / expand / info
// ---------------------------------------------------------------------------------------

grpc::Status NodeService::Stats(const NodeGetVolumeStatsRequest& req,
                                NodeGetVolumeStatsResponse* resp) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.volume_path().empty()) return InvalidArgument("volume_path is required");
  // The spec's order: an unknown volume is NOT_FOUND whatever the path.
  const std::string& id = req.volume_id();
  CSI_RETURN_IF_ERROR(driver_->store->GetVolume(id).status());
  auto record = driver_->node_state->Get(id);
  if (!record) return NotFound("volume " + id + " is not staged on this node");
  CSI_ASSIGN_OR_RETURN(const std::string path,
                       LocateVolumePath(*record, req.volume_path(), driver_->options.kubelet_dir));
  if (!driver_->mounter.Exists(path)) return NotFound("volume_path " + path + " does not exist");

  CSI_ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  CSI_ASSIGN_OR_RETURN(const ExposureUsage u, exposure->Inspect(*record, path));
  auto* condition = resp->mutable_volume_condition();
  condition->set_abnormal(!u.abnormal.empty());
  condition->set_message(u.abnormal.empty() ? "ok" : u.abnormal);
  if (!u.filesystem) {
    auto* usage = resp->add_usage();
    usage->set_unit(VolumeUsage::BYTES);
    usage->set_total(static_cast<int64_t>(u.size_bytes));
    return grpc::Status::OK;
  }
  const FsUsage& fs = *u.filesystem;
  auto* bytes = resp->add_usage();
  bytes->set_unit(VolumeUsage::BYTES);
  bytes->set_total(static_cast<int64_t>(fs.total_bytes));
  bytes->set_available(static_cast<int64_t>(fs.available_bytes));
  bytes->set_used(static_cast<int64_t>(fs.used_bytes));
  auto* inodes = resp->add_usage();
  inodes->set_unit(VolumeUsage::INODES);
  inodes->set_total(static_cast<int64_t>(fs.total_inodes));
  inodes->set_available(static_cast<int64_t>(fs.free_inodes));
  inodes->set_used(static_cast<int64_t>(fs.used_inodes));
  return grpc::Status::OK;
}

grpc::Status NodeService::Expand(const NodeExpandVolumeRequest& req,
                                 NodeExpandVolumeResponse* resp) {
  if (req.volume_id().empty()) return InvalidArgument("volume_id is required");
  if (req.volume_path().empty()) return InvalidArgument("volume_path is required");
  if (req.has_volume_capability())
    CSI_RETURN_IF_GRPC_ERROR(CheckCapability(req.volume_capability()));
  const std::string& id = req.volume_id();
  auto lock = driver_->locks.Acquire(Driver::VolumeKey(id));
  CSI_ASSIGN_OR_RETURN(const VolumeInfo info, driver_->store->GetVolume(id));
  auto record = driver_->node_state->Get(id);
  if (!record) return NotFound("volume " + id + " is not staged on this node");
  CSI_RETURN_IF_ERROR(
      LocateVolumePath(*record, req.volume_path(), driver_->options.kubelet_dir).status());
  const int64_t required = req.capacity_range().required_bytes();
  const int64_t limit = req.capacity_range().limit_bytes();
  if (required < 0 || limit < 0) return InvalidArgument("capacity_range must not be negative");
  if (limit > 0 && required > limit) {
    return InvalidArgument("capacity_range: required_bytes exceeds limit_bytes");
  }
  VolumeInfo current = info;
  if (required > 0 && static_cast<uint64_t>(required) > info.size_bytes) {
    if (driver_->options.controller_expansion) {
      return OutOfRange("volume " + id + " is " + std::to_string(info.size_bytes) +
                        " bytes; grow it with ControllerExpandVolume before NodeExpandVolume");
    }
    // Distributed deployment (no controller expansion): the volume lives in this node's
    // store, so its metadata grows here, then the device and the file system.
    CSI_ASSIGN_OR_RETURN(current, driver_->store->ResizeVolume(id, static_cast<uint64_t>(required)));
  }
  if (limit > 0 && current.size_bytes > static_cast<uint64_t>(limit)) {
    return OutOfRange("volume " + id + " is " + std::to_string(current.size_bytes) +
                      " bytes, more than limit_bytes " + std::to_string(limit));
  }
  CSI_ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  CSI_ASSIGN_OR_RETURN(const uint64_t size, exposure->Expand(*record));
  resp->set_capacity_bytes(static_cast<int64_t>(size));
  return grpc::Status::OK;
}

NodePathRules NodeService::PathRules() const {
  return NodePathRules{driver_->options.kubelet_dir,
                       {driver_->options.state_dir, driver_->options.store}};
}

Status NodeService::FlushVolume(const std::string& volume_id) {
  auto record = driver_->node_state->Get(volume_id);
  if (!record) return Status::Ok();
  ASSIGN_OR_RETURN(NodeExposure* const exposure, exposures_->For(record->exposure));
  return exposure->Flush(*record);
}

// ---------------------------------------------------------------------------------------
// RPC entry points
// ---------------------------------------------------------------------------------------

grpc::Status NodeService::NodeStageVolume(grpc::ServerContext*, const NodeStageVolumeRequest* req,
                                          NodeStageVolumeResponse*) {
  return RunRpc("NodeStageVolume", *req, [&] { return Stage(*req); });
}

grpc::Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                            const NodeUnstageVolumeRequest* req,
                                            NodeUnstageVolumeResponse*) {
  return RunRpc("NodeUnstageVolume", *req, [&] { return Unstage(*req); });
}

grpc::Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                            const NodePublishVolumeRequest* req,
                                            NodePublishVolumeResponse*) {
  return RunRpc("NodePublishVolume", *req, [&] { return Publish(*req); });
}

grpc::Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                              const NodeUnpublishVolumeRequest* req,
                                              NodeUnpublishVolumeResponse*) {
  return RunRpc("NodeUnpublishVolume", *req, [&] { return Unpublish(*req); });
}

grpc::Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                             const NodeGetVolumeStatsRequest* req,
                                             NodeGetVolumeStatsResponse* resp) {
  return RunRpc("NodeGetVolumeStats", *req, [&] { return Stats(*req, resp); });
}

grpc::Status NodeService::NodeExpandVolume(grpc::ServerContext*,
                                           const NodeExpandVolumeRequest* req,
                                           NodeExpandVolumeResponse* resp) {
  return RunRpc("NodeExpandVolume", *req, [&] { return Expand(*req, resp); });
}

grpc::Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                              const NodeGetCapabilitiesRequest* req,
                                              NodeGetCapabilitiesResponse* resp) {
  return RunRpc("NodeGetCapabilities", *req, [&] {
    for (auto type : {NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME,
                      NodeServiceCapability::RPC::GET_VOLUME_STATS,
                      NodeServiceCapability::RPC::EXPAND_VOLUME,
                      NodeServiceCapability::RPC::VOLUME_CONDITION,
                      NodeServiceCapability::RPC::SINGLE_NODE_MULTI_WRITER}) {
      resp->add_capabilities()->mutable_rpc()->set_type(type);
    }
    return grpc::Status::OK;
  });
}

grpc::Status NodeService::NodeGetInfo(grpc::ServerContext*, const NodeGetInfoRequest* req,
                                      NodeGetInfoResponse* resp) {
  return RunRpc("NodeGetInfo", *req, [&] {
    resp->set_node_id(driver_->options.node_id);
    resp->set_max_volumes_per_node(driver_->options.max_volumes_per_node);
    (*resp->mutable_accessible_topology()->mutable_segments())[kTopologyKey] =
        driver_->options.node_id;
    return grpc::Status::OK;
  });
}

}  // namespace stellarium::csi
