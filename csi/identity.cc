#include <unistd.h>

#include <climits>

#include "api/grpc_status.h"
#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"

namespace shale::csi {

namespace v1 = ::csi::v1;

grpc::Status ToGrpc(const Status& status) { return api::ToGrpcStatus(status); }

grpc::Status RequireFields(std::string_view rpc, std::initializer_list<RequiredField> fields) {
  for (const RequiredField& f : fields) {
    if (!f.present) return Invalid(std::string(rpc) + ": " + std::string(f.name) + " is required");
  }
  return grpc::Status::OK;
}

bool IsReaderOnlyMode(v1::VolumeCapability::AccessMode::Mode mode) {
  return mode == v1::VolumeCapability::AccessMode::SINGLE_NODE_READER_ONLY ||
         mode == v1::VolumeCapability::AccessMode::MULTI_NODE_READER_ONLY;
}

Status CheckCapability(const v1::VolumeCapability& cap, bool read_only) {
  if (!cap.has_access_mode()) {
    return Status::InvalidArgument("volume capability without access_mode");
  }
  if (cap.access_type_case() == v1::VolumeCapability::ACCESS_TYPE_NOT_SET) {
    return Status::InvalidArgument("volume capability without access type (block or mount)");
  }
  using Mode = v1::VolumeCapability::AccessMode;
  switch (cap.access_mode().mode()) {
    case Mode::SINGLE_NODE_WRITER:
    case Mode::SINGLE_NODE_SINGLE_WRITER:
    case Mode::SINGLE_NODE_MULTI_WRITER:
      if (read_only) {
        return Status::InvalidArgument(
            "access mode " + Mode::Mode_Name(cap.access_mode().mode()) +
            " needs a writable volume; this one is a read-only clone (use "
            "MULTI_NODE_READER_ONLY or SINGLE_NODE_READER_ONLY)");
      }
      break;
    case Mode::SINGLE_NODE_READER_ONLY:
    case Mode::MULTI_NODE_READER_ONLY:
      break;
    case Mode::MULTI_NODE_SINGLE_WRITER:
    case Mode::MULTI_NODE_MULTI_WRITER:
      return Status::InvalidArgument("access mode " + Mode::Mode_Name(cap.access_mode().mode()) +
                                     " is not supported: a Shale volume is writable from one "
                                     "node only");
    default:
      return Status::InvalidArgument("volume capability without a known access mode");
  }
  if (cap.has_mount()) {
    const std::string& fs = cap.mount().fs_type();
    if (!fs.empty() && fs != "ext4" && fs != "xfs") {
      return Status::InvalidArgument("fsType \"" + fs + "\" is not supported (ext4 or xfs)");
    }
  }
  return Status::Ok();
}

std::string DefaultNodeId() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "localhost";
  return host;
}

grpc::Status IdentityService::GetPluginInfo(grpc::ServerContext*, const v1::GetPluginInfoRequest*,
                                            v1::GetPluginInfoResponse* response) {
  response->set_name(std::string(kDriverName));
  response->set_vendor_version(options_.version);
  return grpc::Status::OK;
}

grpc::Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                                    const v1::GetPluginCapabilitiesRequest*,
                                                    v1::GetPluginCapabilitiesResponse* response) {
  response->add_capabilities()->mutable_service()->set_type(
      v1::PluginCapability::Service::CONTROLLER_SERVICE);
  response->add_capabilities()->mutable_service()->set_type(
      v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  response->add_capabilities()->mutable_volume_expansion()->set_type(
      v1::PluginCapability::VolumeExpansion::ONLINE);
  // Exactly the services this endpoint serves (CsiEndpoint registers them from the same flags).
  if (options_.group_controller) {
    response->add_capabilities()->mutable_service()->set_type(
        v1::PluginCapability::Service::GROUP_CONTROLLER_SERVICE);
  }
  if (options_.snapshot_metadata) {
    response->add_capabilities()->mutable_service()->set_type(
        v1::PluginCapability::Service::SNAPSHOT_METADATA_SERVICE);
  }
  return grpc::Status::OK;
}

grpc::Status IdentityService::Probe(grpc::ServerContext*, const v1::ProbeRequest*,
                                    v1::ProbeResponse* response) {
  // The endpoint starts only after the engine and the NBD server are up: serving means ready.
  response->mutable_ready()->set_value(true);
  return grpc::Status::OK;
}

}  // namespace shale::csi
