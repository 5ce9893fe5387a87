// The CSI Identity service: who the driver is, what it offers, whether it is ready.
//
// Thread-safety: stateless apart from Driver, which is thread-safe.
#pragma once

#include "csi.grpc.pb.h"
#include "csi/driver.h"

namespace stellarium::csi {

class IdentityService final : public ::csi::v1::Identity::Service {
 public:
  explicit IdentityService(Driver* driver) : driver_(driver) {}

  grpc::Status GetPluginInfo(grpc::ServerContext* context,
                             const ::csi::v1::GetPluginInfoRequest* request,
                             ::csi::v1::GetPluginInfoResponse* response) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext* context,
                                     const ::csi::v1::GetPluginCapabilitiesRequest* request,
                                     ::csi::v1::GetPluginCapabilitiesResponse* response) override;
  // Ready once the store is open and the node's devices are recovered.
  grpc::Status Probe(grpc::ServerContext* context, const ::csi::v1::ProbeRequest* request,
                     ::csi::v1::ProbeResponse* response) override;

 private:
  Driver* const driver_;
};

}  // namespace stellarium::csi
