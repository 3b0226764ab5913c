// ControlService: the shale.v1.Control gRPC service (csi/proto/control.proto) on top of an Engine.
//
// It validates every request field before the engine sees it (a request the CLI would never
// send still gets INVALID_ARGUMENT, never a crash), calls the Engine, and converts results to
// proto messages. This file is the one place where shale::StatusCode becomes a gRPC code; every
// error also carries the kShaleErrorMetadataKey trailer (csi/common/control_api.h).
//
// Threading: the gRPC server calls the handlers from its thread pool, concurrently; the Engine
// serializes control operations itself, so the service keeps no mutable state.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

#include "csi/common/control_api.h"
#include "csi/proto/control.grpc.pb.h"
#include "engine/common/status.h"

namespace shale {

class Engine;
namespace nbd {
class NbdServer;
}

// Maps a Shale status to a gRPC status carrying the same message.
grpc::StatusCode ToGrpcCode(StatusCode code);
grpc::Status ToGrpcStatus(const Status& status);

// Limits on request fields that the engine does not bound itself.
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelKeyLength = 128;
inline constexpr size_t kMaxLabelValueLength = 256;
inline constexpr size_t kMaxDevicePathLength = 4095;  // PATH_MAX without the NUL

// Label keys: 1..128 bytes of [A-Za-z0-9._/-] starting with a letter or digit; values: up to
// 256 bytes without control characters.
Status ValidateLabel(std::string_view key, std::string_view value);

class ControlService final : public v1::Control::Service {
 public:
  // Facts about the daemon reported by GetStatus.
  struct DaemonInfo {
    std::string version;
    std::string control_endpoint;  // "unix:///..."
  };

  // `engine` (and `nbd`, the NBD server, if any) must outlive the service (the daemon stops the
  // gRPC server before the NBD server and the engine). Without `nbd`, volumes show no export
  // and ListExports lists none.
  ControlService(Engine* engine, DaemonInfo info, nbd::NbdServer* nbd = nullptr);
  ControlService(const ControlService&) = delete;
  ControlService& operator=(const ControlService&) = delete;

  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest* req,
                         v1::GetStatusResponse* resp) override;

  grpc::Status CreatePool(grpc::ServerContext* ctx, const v1::CreatePoolRequest* req,
                          v1::Pool* resp) override;
  grpc::Status ListPools(grpc::ServerContext* ctx, const v1::ListPoolsRequest* req,
                         v1::ListPoolsResponse* resp) override;
  grpc::Status GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req,
                       v1::Pool* resp) override;
  grpc::Status DeletePool(grpc::ServerContext* ctx, const v1::DeletePoolRequest* req,
                          v1::DeletePoolResponse* resp) override;
  grpc::Status CheckPool(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                         v1::CheckPoolResponse* resp) override;

  grpc::Status CreateVolume(grpc::ServerContext* ctx, const v1::CreateVolumeRequest* req,
                            v1::Volume* resp) override;
  grpc::Status ListVolumes(grpc::ServerContext* ctx, const v1::ListVolumesRequest* req,
                           v1::ListVolumesResponse* resp) override;
  grpc::Status GetVolume(grpc::ServerContext* ctx, const v1::GetVolumeRequest* req,
                         v1::Volume* resp) override;
  grpc::Status ResizeVolume(grpc::ServerContext* ctx, const v1::ResizeVolumeRequest* req,
                            v1::Volume* resp) override;
  grpc::Status DeleteVolume(grpc::ServerContext* ctx, const v1::DeleteVolumeRequest* req,
                            v1::DeleteVolumeResponse* resp) override;

  grpc::Status ListExports(grpc::ServerContext* ctx, const v1::ListExportsRequest* req,
                           v1::ListExportsResponse* resp) override;

  // How long `volume delete --force` waits for NBD clients to let go of the volume.
  static constexpr std::chrono::seconds kForceDisconnectTimeout{30};

 private:
  void AddExportInfo(v1::Volume* volume) const;

  Engine* const engine_;
  nbd::NbdServer* const nbd_;
  const DaemonInfo info_;
  const std::chrono::steady_clock::time_point started_;
};

}  // namespace shale
