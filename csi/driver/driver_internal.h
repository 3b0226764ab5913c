// Helpers shared by the driver's service files; not part of its interface.
#pragma once

#include <grpcpp/grpcpp.h>

#include <map>
#include <string>

#include "csi/proto/csi.pb.h"
#include "engine/common/status.h"

namespace shale {
class Engine;
struct VolumeInfo;
}  // namespace shale

namespace shale::csi {

// The CSI capacity of a volume: the driver's record, else the capacity label set at creation,
// else the engine size (volumes not made through CSI have no expansion headroom).
uint64_t CsiCapacity(Engine* engine, const VolumeInfo& info);

// The one place where a Shale status becomes a CSI gRPC status (docs/csi.md, "Errors").
grpc::Status ToGrpc(const Status& status);
inline grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// Access modes Shale serves (all on this one node). Writers need a writable volume.
bool IsReaderOnlyMode(::csi::v1::VolumeCapability::AccessMode::Mode mode);
// InvalidArgument for a capability without access mode/type, an unknown or multi-node writer
// mode, an unsupported fsType; and for writer modes when `read_only`.
Status CheckCapability(const ::csi::v1::VolumeCapability& cap, bool read_only);

inline std::map<std::string, std::string> ToMap(
    const google::protobuf::Map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

}  // namespace shale::csi
