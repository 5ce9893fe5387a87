// The CSI Node service: stage (block device + global mount under the staging path),
// publish (bind mount at the workload's target path), stats and expansion, for the
// Mount (ext4) and Block access types.
//
// How a volume is made usable (a kernel block device mounted for pods, a vhost-user-blk
// socket and runtime descriptors for microVMs) is NodeExposure's business
// (csi/node/node_exposure.h), picked by the volume's `exposure`; this class keeps the CSI
// rules: request checks, idempotency, error codes. What is staged and published is
// recorded in NodeState so every call is idempotent, also across driver restarts.
// Calls for one volume hold its lock (Driver::VolumeKey).
//
// Thread-safety: RPCs for different volumes run in parallel.
#pragma once

#include <memory>

#include "csi.grpc.pb.h"
#include "csi/driver.h"
#include "csi/node/node_exposure.h"
#include "csi/node/paths.h"

namespace stellarium::csi {

class NodeService final : public ::csi::v1::Node::Service {
 public:
  // Builds the exposures over the driver's store, block devices and mounter, and
  // restores what staged volumes need from this process (a vhost-user-blk back-end is
  // served again on its socket, so a VMM reconnects). A volume that cannot be restored
  // is logged; NodeStageVolume for it tries again.
  explicit NodeService(Driver* driver);
  // Stops the vhost-user-blk back-ends (their sockets are removed; Restore serves them
  // again at the next start).
  ~NodeService() override;

  grpc::Status NodeStageVolume(grpc::ServerContext* context,
                               const ::csi::v1::NodeStageVolumeRequest* request,
                               ::csi::v1::NodeStageVolumeResponse* response) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext* context,
                                 const ::csi::v1::NodeUnstageVolumeRequest* request,
                                 ::csi::v1::NodeUnstageVolumeResponse* response) override;
  grpc::Status NodePublishVolume(grpc::ServerContext* context,
                                 const ::csi::v1::NodePublishVolumeRequest* request,
                                 ::csi::v1::NodePublishVolumeResponse* response) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext* context,
                                   const ::csi::v1::NodeUnpublishVolumeRequest* request,
                                   ::csi::v1::NodeUnpublishVolumeResponse* response) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext* context,
                                  const ::csi::v1::NodeGetVolumeStatsRequest* request,
                                  ::csi::v1::NodeGetVolumeStatsResponse* response) override;
  grpc::Status NodeExpandVolume(grpc::ServerContext* context,
                                const ::csi::v1::NodeExpandVolumeRequest* request,
                                ::csi::v1::NodeExpandVolumeResponse* response) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext* context,
                                   const ::csi::v1::NodeGetCapabilitiesRequest* request,
                                   ::csi::v1::NodeGetCapabilitiesResponse* response) override;
  grpc::Status NodeGetInfo(grpc::ServerContext* context,
                           const ::csi::v1::NodeGetInfoRequest* request,
                           ::csi::v1::NodeGetInfoResponse* response) override;

  // Makes every write made through a staged volume's device visible in the store
  // (flushes the mounted filesystem, then the device). OK when not staged here.
  // REQUIRES: the caller holds Driver::VolumeKey(volume_id). Used before a snapshot.
  Status FlushVolume(const std::string& volume_id);

 private:
  grpc::Status Stage(const ::csi::v1::NodeStageVolumeRequest& req);
  grpc::Status Unstage(const ::csi::v1::NodeUnstageVolumeRequest& req);
  grpc::Status Publish(const ::csi::v1::NodePublishVolumeRequest& req);
  grpc::Status Unpublish(const ::csi::v1::NodeUnpublishVolumeRequest& req);
  grpc::Status Stats(const ::csi::v1::NodeGetVolumeStatsRequest& req,
                     ::csi::v1::NodeGetVolumeStatsResponse* resp);
  grpc::Status Expand(const ::csi::v1::NodeExpandVolumeRequest& req,
                      ::csi::v1::NodeExpandVolumeResponse* resp);
  // Where staging and target paths may be (csi/node/paths.h): below --kubelet-dir, away
  // from the kubelet's plugin directories and from the driver's state directory and store.
  node::NodePathRules PathRules() const;

  Driver* const driver_;
  std::unique_ptr<node::NodeExposures> exposures_;
};

}  // namespace stellarium::csi
