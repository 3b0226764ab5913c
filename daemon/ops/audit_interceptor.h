// AuditInterceptorFactory: writes an audit record (audit_log.h) for every state-changing call of
// a gRPC service — the control API and the CSI driver — before its response goes out.
//
// A gRPC server interceptor: at POST_RECV_MESSAGE it keeps the request (as JSON, CSI secrets
// redacted) and who sent it (PeerRegistry: uid, gid, pid and command of the caller's process);
// at PRE_SEND_STATUS — before the status (and, for unary calls, the response, sent in the same
// batch) leaves — it appends the record with the call's result and waits for it to be durable.
// A call whose status is never sent (the client went away) is recorded when the call ends, with
// result "abandoned". Read-only calls (Get*, List*, Probe, Validate*, Check*, the CSI node and
// controller Get* calls, VerifySnapshot) are not recorded. Secrets never reach a record
// (RedactSecrets).
//
// The record names what the call is about: "volumes" (from the request's volume, name, source,
// volume_id, snapshot_id fields; "VOL@SNAP" counts for VOL), "pool", and for CSI "kubernetes"
// (PVC, VolumeSnapshot and pod names and namespaces from the sidecars' parameters and volume
// context, or from the labels the driver recorded on the volume).
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/ops/audit_log.h"
#include "daemon/ops/peer_acceptor.h"

namespace shale::daemon::ops {

// The labels of a volume (empty if there is none), for CSI calls that name only its id.
using VolumeLabelLookup =
    std::function<std::map<std::string, std::string>(const std::string& volume)>;

// Trailing metadata key of a response whose audit record could not be written (value: the
// error). The action happened; the CLI prints a warning. Equal to api::kAuditErrorMetadataKey
// (daemon.cc asserts it; daemon/ops does not depend on api/).
inline constexpr std::string_view kAuditErrorMetadataKey = "shale-audit-error";

// What a request is about (see above).
struct AuditTargets {
  std::vector<std::string> volumes;  // sorted, "VOL@SNAP" counted as VOL
  std::string pool;
};
AuditTargets FindAuditTargets(const nlohmann::json& request, std::string_view method);

// Replaces in place every value whose field name says it is secret (secret, password,
// credential, token, psk, private_key, access_key...) by "<redacted>", and the user info of
// every URL ("s3://KEY:SECRET@host") — records never hold secrets.
void RedactSecrets(nlohmann::json& j);

// Whether a fully qualified method ("/shale.v1.Control/CreateVolume") changes state.
bool IsAuditedMethod(std::string_view method);

class AuditInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `source` names the service in records ("control", "csi"). `log` and `peers` must outlive
  // the server; `labels` may be null.
  AuditInterceptorFactory(std::string source, AuditLog* log, const PeerRegistry* peers,
                          VolumeLabelLookup labels = nullptr)
      : source_(std::move(source)), log_(log), peers_(peers), labels_(std::move(labels)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  const std::string source_;
  AuditLog* const log_;
  const PeerRegistry* const peers_;
  const VolumeLabelLookup labels_;
};

}  // namespace shale::daemon::ops
