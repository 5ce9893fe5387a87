#include "csi/identity_service.h"

#include "csi/run_rpc.h"

namespace stellarium::csi {

using namespace ::csi::v1;

grpc::Status IdentityService::GetPluginInfo(grpc::ServerContext*, const GetPluginInfoRequest* req,
                                            GetPluginInfoResponse* resp) {
  return RunRpc("GetPluginInfo", *req, [&] {
    resp->set_name(driver_->options.driver_name);
    resp->set_vendor_version(STELLARIUM_VERSION);
    (*resp->mutable_manifest())["exposure"] = driver_->devices->Name();
    return grpc::Status::OK;
  });
}

grpc::Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                                    const GetPluginCapabilitiesRequest* req,
                                                    GetPluginCapabilitiesResponse* resp) {
  return RunRpc("GetPluginCapabilities", *req, [&] {
    for (auto type : {PluginCapability::Service::CONTROLLER_SERVICE,
                      PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS}) {
      resp->add_capabilities()->mutable_service()->set_type(type);
    }
    // The filesystem grows while mounted (resize2fs online).
    resp->add_capabilities()->mutable_volume_expansion()->set_type(
        PluginCapability::VolumeExpansion::ONLINE);
    return grpc::Status::OK;
  });
}

grpc::Status IdentityService::Probe(grpc::ServerContext*, const ProbeRequest* req,
                                    ProbeResponse* resp) {
  return RunRpc("Probe", *req, [&] {
    resp->mutable_ready()->set_value(driver_->ready.load() && driver_->store != nullptr);
    return grpc::Status::OK;
  });
}

}  // namespace stellarium::csi
