// The CSI Controller service over core's Store: volumes (blank, from an image file or a
// directory tree under an import root, from an http(s) URL, from a snapshot, from a
// volume: clones are O(1) in core), snapshots, listing with paging, capacity,
// expansion, validation.
//
// CreateVolume translates the request into core's ProvisionRequest and calls Provision
// (core/provision.h), which owns sizing, the sources and the name-idempotency rule; the
// driver adds only its hooks (see Hooks()).
//
// Volumes from a URL go through the ImageImporter (csi/node/image_importer.h): the image is
// imported once per node on a background thread and every volume is a clone of it; a
// call whose deadline comes first answers ABORTED with the progress and its retry joins
// the same import. CA bundle and extra headers come from the CreateVolume secrets.
//
// Each call validates the request, takes the lock of the name or volume it is about
// (Driver::VolumeNameKey / SnapshotNameKey / VolumeKey), calls core and maps the status
// with ToGrpcStatus. Creates are idempotent by name: a repeat with compatible arguments
// returns the existing object, an incompatible one is ALREADY_EXISTS.
//
// Thread-safety: RPCs for different names and volumes run in parallel.
#pragma once

#include <memory>
#include <optional>

#include "core/provision.h"
#include "csi.grpc.pb.h"
#include "csi/driver.h"
#include "csi/node/image_importer.h"
#include "csi/volume_spec.h"

namespace stellarium::csi {

class NodeService;

class ControllerService final : public ::csi::v1::Controller::Service {
 public:
  // `node` flushes a volume staged on this node before it is snapshotted.
  ControllerService(Driver* driver, NodeService* node);

  // The node's URL imports (for the metrics).
  const node::ImageImporter& importer() const { return *importer_; }

  grpc::Status CreateVolume(grpc::ServerContext* context,
                            const ::csi::v1::CreateVolumeRequest* request,
                            ::csi::v1::CreateVolumeResponse* response) override;
  grpc::Status DeleteVolume(grpc::ServerContext* context,
                            const ::csi::v1::DeleteVolumeRequest* request,
                            ::csi::v1::DeleteVolumeResponse* response) override;
  grpc::Status ControllerPublishVolume(grpc::ServerContext* context,
                                       const ::csi::v1::ControllerPublishVolumeRequest* request,
                                       ::csi::v1::ControllerPublishVolumeResponse* response) override;
  grpc::Status ControllerUnpublishVolume(
      grpc::ServerContext* context, const ::csi::v1::ControllerUnpublishVolumeRequest* request,
      ::csi::v1::ControllerUnpublishVolumeResponse* response) override;
  grpc::Status ValidateVolumeCapabilities(
      grpc::ServerContext* context, const ::csi::v1::ValidateVolumeCapabilitiesRequest* request,
      ::csi::v1::ValidateVolumeCapabilitiesResponse* response) override;
  grpc::Status ListVolumes(grpc::ServerContext* context,
                           const ::csi::v1::ListVolumesRequest* request,
                           ::csi::v1::ListVolumesResponse* response) override;
  grpc::Status GetCapacity(grpc::ServerContext* context,
                           const ::csi::v1::GetCapacityRequest* request,
                           ::csi::v1::GetCapacityResponse* response) override;
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext* context, const ::csi::v1::ControllerGetCapabilitiesRequest* request,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override;
  grpc::Status CreateSnapshot(grpc::ServerContext* context,
                              const ::csi::v1::CreateSnapshotRequest* request,
                              ::csi::v1::CreateSnapshotResponse* response) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext* context,
                              const ::csi::v1::DeleteSnapshotRequest* request,
                              ::csi::v1::DeleteSnapshotResponse* response) override;
  grpc::Status ListSnapshots(grpc::ServerContext* context,
                             const ::csi::v1::ListSnapshotsRequest* request,
                             ::csi::v1::ListSnapshotsResponse* response) override;
  grpc::Status GetSnapshot(grpc::ServerContext* context,
                           const ::csi::v1::GetSnapshotRequest* request,
                           ::csi::v1::GetSnapshotResponse* response) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext* context,
                                      const ::csi::v1::ControllerExpandVolumeRequest* request,
                                      ::csi::v1::ControllerExpandVolumeResponse* response) override;
  grpc::Status ControllerGetVolume(grpc::ServerContext* context,
                                   const ::csi::v1::ControllerGetVolumeRequest* request,
                                   ::csi::v1::ControllerGetVolumeResponse* response) override;
  grpc::Status ControllerModifyVolume(grpc::ServerContext* context,
                                      const ::csi::v1::ControllerModifyVolumeRequest* request,
                                      ::csi::v1::ControllerModifyVolumeResponse* response) override;

 private:
  grpc::Status Create(grpc::ServerContext* context, const ::csi::v1::CreateVolumeRequest& req,
                      ::csi::v1::CreateVolumeResponse* resp);
  grpc::Status Delete(const ::csi::v1::DeleteVolumeRequest& req);
  grpc::Status Snapshot(const ::csi::v1::CreateSnapshotRequest& req,
                        ::csi::v1::CreateSnapshotResponse* resp);
  grpc::Status ListVols(const ::csi::v1::ListVolumesRequest& req,
                        ::csi::v1::ListVolumesResponse* resp);
  grpc::Status ListSnaps(const ::csi::v1::ListSnapshotsRequest& req,
                         ::csi::v1::ListSnapshotsResponse* resp);
  grpc::Status Expand(const ::csi::v1::ControllerExpandVolumeRequest& req,
                      ::csi::v1::ControllerExpandVolumeResponse* resp);
  grpc::Status Validate(const ::csi::v1::ValidateVolumeCapabilitiesRequest& req,
                        ::csi::v1::ValidateVolumeCapabilitiesResponse* resp);
  grpc::Status Capacity(const ::csi::v1::GetCapacityRequest& req,
                        ::csi::v1::GetCapacityResponse* resp);
  grpc::Status GetVolume(const ::csi::v1::ControllerGetVolumeRequest& req,
                         ::csi::v1::ControllerGetVolumeResponse* resp);

  // The request as core's ProvisionRequest (core/provision.h): the capacity range, the
  // parameters as attributes, the source. INVALID_ARGUMENT for a malformed source.
  Result<ProvisionRequest> ProvisionRequestOf(const ::csi::v1::CreateVolumeRequest& req,
                                              const VolumeParams& params) const;
  // What the driver adds to core's provisioning: flushing (and locking, in *source_lock)
  // a source volume staged on this node, confining image paths to the import roots, the
  // URL's image from the ImageImporter (`url_image`, fetched before the name lock).
  ProvisionHooks Hooks(const ::csi::v1::CreateVolumeRequest& req, const VolumeParams& params,
                       const std::optional<node::ImportedImage>& url_image,
                       node::LockTable::Guard* source_lock);
  ::csi::v1::Volume ToCsi(const VolumeInfo& info) const;
  ::csi::v1::VolumeCondition Condition(const std::string& volume_id) const;

  Driver* const driver_;
  NodeService* const node_;
  std::unique_ptr<node::ImageImporter> importer_;
};

}  // namespace stellarium::csi
