#include "csi/daemon/control_service.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>

#include "csi/daemon/control_service_internal.h"
#include "csi/nbd/server.h"
#include "engine/common/assert.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "engine/pool/superblock.h"
#include "snapshot/snapshot_manager.h"

namespace shale {

namespace {

// Names are validated on lookups too: "invalid name" says more than "not found" for `a/b`.

Status CheckDevicePath(std::string_view path) {
  if (path.empty()) return Status::InvalidArgument("pool needs a device path");
  if (path.size() > kMaxDevicePathLength) {
    return Status::InvalidArgument("device path is " + std::to_string(path.size()) +
                                   " bytes long; the limit is " +
                                   std::to_string(kMaxDevicePathLength));
  }
  if (path.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("device path contains a NUL byte");
  }
  // The daemon's working directory means nothing to a remote caller.
  if (path.front() != '/') {
    return Status::InvalidArgument("device path '" + std::string(path) + "' must be absolute");
  }
  return Status::Ok();
}

v1::PoolState ToProtoState(const std::string& state) {
  if (state == "online") return v1::POOL_STATE_ONLINE;
  if (state == "error") return v1::POOL_STATE_ERROR;
  return v1::POOL_STATE_UNSPECIFIED;
}

void ToProto(const PoolInfo& in, v1::Pool* out) {
  out->set_name(in.name);
  out->set_uuid(in.uuid);
  out->set_device_path(in.device_path);
  out->set_state(ToProtoState(in.state));
  out->set_error(in.error);
  out->set_capacity_bytes(in.capacity_bytes);
  out->set_used_bytes(in.used_bytes);
  out->set_free_bytes(in.free_bytes);
  out->set_cluster_size(in.cluster_size);
  out->set_cluster_count(in.cluster_count);
  out->set_volume_count(in.volume_count);
  out->set_backend(in.backend);
}

}  // namespace

namespace control_internal {

grpc::Status Fail(grpc::ServerContext* ctx, const Status& status) {
  ctx->AddTrailingMetadata(kShaleErrorMetadataKey, std::string(StatusCodeName(status.code())));
  return ToGrpcStatus(status);
}

void ToProto(const VolumeInfo& in, v1::Volume* out) {
  out->set_name(in.name);
  out->set_pool(in.pool);
  out->set_id(in.id);
  out->set_size_bytes(in.size_bytes);
  out->set_allocated_bytes(in.allocated_bytes);
  out->set_read_only(in.read_only);
  out->set_created_unix_ns(in.created_unix_ns);
  out->set_open_count(in.open_count);
  out->mutable_labels()->insert(in.labels.begin(), in.labels.end());
  v1::VolumeStats* stats = out->mutable_stats();
  stats->set_reads(in.reads);
  stats->set_writes(in.writes);
  stats->set_bytes_read(in.bytes_read);
  stats->set_bytes_written(in.bytes_written);
  stats->set_flushes(in.flushes);
  stats->set_errors(in.errors);
}

}  // namespace control_internal

using control_internal::Fail;
using control_internal::ToProto;

grpc::StatusCode ToGrpcCode(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return grpc::StatusCode::OK;
    case StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case StatusCode::kNoSpace:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case StatusCode::kFailedPrecondition:
    case StatusCode::kBusy:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case StatusCode::kOutOfRange:
      return grpc::StatusCode::OUT_OF_RANGE;
    case StatusCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case StatusCode::kNotSupported:
      return grpc::StatusCode::UNIMPLEMENTED;
    case StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case StatusCode::kIoError:
    case StatusCode::kCorruption:
    case StatusCode::kAborted:
    case StatusCode::kInternal:
      return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::INTERNAL;
}

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
}

Status ValidateLabel(std::string_view key, std::string_view value) {
  if (key.empty()) return Status::InvalidArgument("label key must not be empty");
  if (key.size() > kMaxLabelKeyLength) {
    return Status::InvalidArgument("label key is " + std::to_string(key.size()) +
                                   " bytes long; the limit is " +
                                   std::to_string(kMaxLabelKeyLength));
  }
  if (!std::isalnum(static_cast<unsigned char>(key.front()))) {
    return Status::InvalidArgument("label key '" + std::string(key) +
                                   "' must start with a letter or digit");
  }
  for (char c : key) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
          c == '/')) {
      return Status::InvalidArgument("label key '" + std::string(key) +
                                     "' may contain only letters, digits, '.', '_', '-' and '/'");
    }
  }
  if (value.size() > kMaxLabelValueLength) {
    return Status::InvalidArgument("value of label '" + std::string(key) + "' is " +
                                   std::to_string(value.size()) + " bytes long; the limit is " +
                                   std::to_string(kMaxLabelValueLength));
  }
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return Status::InvalidArgument("value of label '" + std::string(key) +
                                     "' contains a control character");
    }
  }
  return Status::Ok();
}

ControlService::ControlService(Engine* engine, snapshot::SnapshotManager* snapshots,
                               DaemonInfo info, nbd::NbdServer* nbd, qos::QosManager* qos)
    : engine_(engine),
      snapshots_(snapshots),
      nbd_(nbd),
      qos_(qos),
      info_(std::move(info)),
      started_(std::chrono::steady_clock::now()) {
  SHALE_CHECK(engine_ != nullptr && snapshots_ != nullptr,
              "ControlService needs an engine and a snapshot manager");
}

std::string ControlService::DescribeNbdClients(const std::string& name) const {
  if (nbd_ == nullptr) return "";
  std::string clients;
  size_t count = 0;
  for (const nbd::NbdClientInfo& c : nbd_->Clients()) {
    if (c.export_name != name) continue;
    if (++count <= 8) clients += (clients.empty() ? "" : ", ") + c.transport + " " + c.peer;
  }
  if (count == 0) return "";
  if (count > 8) clients += ", ...";
  return std::to_string(count) + " connected NBD client(s): " + clients;
}

Status ControlService::ExplainBusy(const Status& status, const std::string& kind,
                                   const std::string& name, const std::string& action,
                                   bool force_hint) const {
  if (status.code() != StatusCode::kBusy) return status;
  const std::string clients = DescribeNbdClients(name);
  if (clients.empty()) return status;
  return Status::Busy(kind + " '" + name + "' has " + clients + "; disconnect them" +
                      (force_hint ? ", or use --force to disconnect them and " + action
                                  : " before you " + action + " it"));
}

Status ControlService::AddSnapshotInfo(v1::Volume* volume, bool with_space) {
  Result<std::optional<snapshot::CloneInfo>> clone = snapshots_->GetCloneInfo(volume->name());
  if (!clone.ok()) return clone.status();
  if (*clone) control_internal::ToProto(**clone, volume->mutable_clone());
  if (!with_space) return Status::Ok();
  Result<snapshot::VolumeSpace> space = snapshots_->GetVolumeSpace(volume->name());
  if (!space.ok()) return space.status();
  v1::VolumeSpace* out = volume->mutable_space();
  out->set_owned_bytes(space->owned_bytes);
  out->set_shared_bytes(space->shared_bytes);
  out->set_written_bytes(space->written_bytes);
  out->set_snapshot_count(space->snapshot_count);
  out->set_snapshot_data_bytes(space->snapshot_data_bytes);
  out->set_snapshot_exclusive_bytes(space->snapshot_exclusive_bytes);
  return Status::Ok();
}

Status ControlService::DescribeVolume(const std::string& name, v1::Volume* out) {
  Result<VolumeInfo> volume = engine_->GetVolume(name);
  if (!volume.ok()) return volume.status();
  ToProto(*volume, out);
  AddExportInfo(out);
  SHALE_RETURN_IF_ERROR(AddQosInfo(out));
  return AddSnapshotInfo(out, /*with_space=*/true);
}

namespace {

// (export URI, connected clients) of export `name`.
std::pair<std::string, uint32_t> ExportFacts(const nbd::NbdServer* nbd, const std::string& name) {
  if (nbd == nullptr) return {"", 0};
  uint32_t clients = 0;
  for (const nbd::NbdClientInfo& c : nbd->Clients()) {
    if (c.export_name == name) ++clients;
  }
  return {nbd->ExportUri(name), clients};
}

}  // namespace

void ControlService::AddExportInfo(v1::Volume* volume) const {
  if (nbd_ == nullptr) return;
  auto [uri, clients] = ExportFacts(nbd_, volume->name());
  volume->set_export_uri(uri);
  volume->set_nbd_clients(clients);
}

void ControlService::AddExportInfo(v1::Snapshot* snapshot) const {
  if (nbd_ == nullptr) return;
  auto [uri, clients] = ExportFacts(nbd_, snapshot->name());
  snapshot->set_export_uri(uri);
  snapshot->set_nbd_clients(clients);
}

grpc::Status ControlService::GetStatus(grpc::ServerContext* /*ctx*/,
                                       const v1::GetStatusRequest* /*req*/,
                                       v1::GetStatusResponse* resp) {
  const EngineOptions& options = engine_->options();
  resp->set_version(info_.version);
  resp->set_data_dir(options.data_dir);
  resp->set_uptime_seconds(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_)
          .count()));
  resp->set_reactors(static_cast<uint32_t>(engine_->reactors().size()));
  resp->set_io_backend(std::string(IoBackendName(options.device.backend)));
  resp->set_pool_count(static_cast<uint32_t>(engine_->ListPools().size()));
  resp->set_volume_count(static_cast<uint32_t>(engine_->ListVolumes().size()));
  resp->set_control_endpoint(info_.control_endpoint);
  resp->set_pid(static_cast<uint32_t>(getpid()));
  if (nbd_ != nullptr) {
    v1::NbdStatus* nbd = resp->mutable_nbd();
    nbd->set_enabled(true);
    nbd->set_tcp_address(nbd_->tcp_address());
    nbd->set_unix_socket(nbd_->unix_socket());
    nbd->set_connections(static_cast<uint32_t>(nbd_->Clients().size()));
    nbd->set_max_connections(nbd_->max_connections());
  }
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------------
// Pools

grpc::Status ControlService::CreatePool(grpc::ServerContext* ctx, const v1::CreatePoolRequest* req,
                                        v1::Pool* resp) {
  Status valid = ValidateName("pool", req->name());
  if (valid.ok()) valid = CheckDevicePath(req->device_path());
  if (valid.ok() && req->cluster_size() != 0) valid = ValidateClusterSize(req->cluster_size());
  if (!valid.ok()) return Fail(ctx, valid);

  CreatePoolParams params;
  params.name = req->name();
  params.device_path = req->device_path();
  params.size_bytes = req->size_bytes();
  if (req->cluster_size() != 0) params.cluster_size = req->cluster_size();
  params.force = req->force();
  Result<PoolInfo> pool = engine_->CreatePool(params);
  if (!pool.ok()) return Fail(ctx, pool.status());
  ToProto(*pool, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListPools(grpc::ServerContext* /*ctx*/,
                                       const v1::ListPoolsRequest* /*req*/,
                                       v1::ListPoolsResponse* resp) {
  // The engine lists pools in name order (its map is sorted).
  for (const PoolInfo& pool : engine_->ListPools()) ToProto(pool, resp->add_pools());
  return grpc::Status::OK;
}

grpc::Status ControlService::GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req,
                                     v1::Pool* resp) {
  Status valid = ValidateName("pool", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  Result<PoolInfo> pool = engine_->GetPool(req->name());
  if (!pool.ok()) return Fail(ctx, pool.status());
  ToProto(*pool, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeletePool(grpc::ServerContext* ctx, const v1::DeletePoolRequest* req,
                                        v1::DeletePoolResponse* /*resp*/) {
  Status valid = ValidateName("pool", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  // With force its volumes go too; their QoS records go with the pool's metadata, and the
  // QoS layer forgets them afterwards.
  std::vector<std::string> volumes;
  for (const VolumeInfo& v : engine_->ListVolumes()) {
    if (v.pool == req->name()) volumes.push_back(v.name);
  }
  Status deleted = engine_->DeletePool(req->name(), req->force());
  if (!deleted.ok()) return Fail(ctx, deleted);
  for (const std::string& v : volumes) ForgetQos(v);
  return grpc::Status::OK;
}

grpc::Status ControlService::CheckPool(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                                       v1::CheckPoolResponse* resp) {
  Status valid = ValidateName("pool", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  Result<PoolCheckReport> report = engine_->CheckPool(req->name());
  if (!report.ok()) return Fail(ctx, report.status());
  resp->set_clean(report->clean());
  resp->set_referenced_clusters(report->referenced_clusters);
  resp->set_committed_clusters(report->committed_clusters);
  for (const std::string& problem : report->problems) resp->add_problems(problem);
  if (!report->clean()) {
    SHALE_LOG_WARN("pool check found problems", {"pool", req->name()},
                   {"problems", report->problems.size()});
  }
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------------
// Volumes

grpc::Status ControlService::CreateVolume(grpc::ServerContext* ctx,
                                          const v1::CreateVolumeRequest* req, v1::Volume* resp) {
  Status valid = ValidateName("volume", req->name());
  if (valid.ok() && req->size_bytes() == 0) {
    valid = Status::InvalidArgument("volume size must be greater than 0");
  }
  if (valid.ok() && !req->pool().empty()) valid = ValidateName("pool", req->pool());
  if (valid.ok() && static_cast<size_t>(req->labels_size()) > kMaxLabels) {
    valid = Status::InvalidArgument("a volume takes at most " + std::to_string(kMaxLabels) +
                                    " labels, got " + std::to_string(req->labels_size()));
  }
  if (valid.ok()) {
    for (const auto& [key, value] : req->labels()) {
      valid = ValidateLabel(key, value);
      if (!valid.ok()) break;
    }
  }
  if (valid.ok()) valid = ValidateCreateQos(*req);
  if (!valid.ok()) return Fail(ctx, valid);

  CreateVolumeParams params;
  params.name = req->name();
  params.size_bytes = req->size_bytes();
  params.pool = req->pool();
  params.read_only = req->read_only();
  params.labels.insert(req->labels().begin(), req->labels().end());
  Result<VolumeInfo> volume = engine_->CreateVolume(params);
  if (!volume.ok()) return Fail(ctx, volume.status());
  if (Status st = ApplyCreateQos(*req, volume->name); !st.ok()) return Fail(ctx, st);
  ToProto(*volume, resp);
  AddExportInfo(resp);
  if (Status st = AddQosInfo(resp); !st.ok()) return Fail(ctx, st);
  if (Status st = AddSnapshotInfo(resp, /*with_space=*/true); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListVolumes(grpc::ServerContext* ctx,
                                         const v1::ListVolumesRequest* req,
                                         v1::ListVolumesResponse* resp) {
  if (!req->pool().empty()) {
    Status valid = ValidateName("pool", req->pool());
    if (!valid.ok()) return Fail(ctx, valid);
    // An unknown pool is an error rather than an empty list: it is most likely a typo.
    Result<PoolInfo> pool = engine_->GetPool(req->pool());
    if (!pool.ok()) return Fail(ctx, pool.status());
  }
  // Clone provenance for every volume from one scan; space is left to GetVolume (it reads every
  // snapshot's mappings).
  Result<std::vector<snapshot::CloneInfo>> clones = snapshots_->ListClones();
  if (!clones.ok()) return Fail(ctx, clones.status());
  std::map<std::string, const snapshot::CloneInfo*> clone_of;
  for (const snapshot::CloneInfo& c : *clones) clone_of[c.volume] = &c;
  for (const VolumeInfo& volume : engine_->ListVolumes()) {
    if (!req->pool().empty() && volume.pool != req->pool()) continue;
    v1::Volume* out = resp->add_volumes();
    ToProto(volume, out);
    AddExportInfo(out);
    auto it = clone_of.find(volume.name);
    if (it != clone_of.end()) control_internal::ToProto(*it->second, out->mutable_clone());
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::GetVolume(grpc::ServerContext* ctx, const v1::GetVolumeRequest* req,
                                       v1::Volume* resp) {
  Status valid = ValidateName("volume", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  if (Status st = DescribeVolume(req->name(), resp); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::ResizeVolume(grpc::ServerContext* ctx,
                                          const v1::ResizeVolumeRequest* req, v1::Volume* resp) {
  Status valid = ValidateName("volume", req->name());
  if (valid.ok() && req->size_bytes() == 0) {
    valid = Status::InvalidArgument("volume size must be greater than 0");
  }
  // The engine rounds up to whole blocks before its range check; keep that from wrapping.
  if (valid.ok() && req->size_bytes() > UINT64_MAX - kBlockSize) {
    valid = Status::InvalidArgument("volume size " + std::to_string(req->size_bytes()) +
                                    " is too large");
  }
  if (!valid.ok()) return Fail(ctx, valid);
  Result<VolumeInfo> volume = engine_->ResizeVolume(req->name(), req->size_bytes());
  if (!volume.ok()) return Fail(ctx, volume.status());
  ToProto(*volume, resp);
  AddExportInfo(resp);
  if (Status st = AddSnapshotInfo(resp, /*with_space=*/true); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeleteVolume(grpc::ServerContext* ctx,
                                          const v1::DeleteVolumeRequest* req,
                                          v1::DeleteVolumeResponse* /*resp*/) {
  Status valid = ValidateName("volume", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  const std::string& name = req->name();
  // Through the snapshot layer, so its records about the volume (clone provenance, an implicit
  // source snapshot no other clone needs) go with it.
  Status deleted;
  if (req->force() && nbd_ != nullptr) {
    SuspendQos(name);
    deleted = nbd_->WithExportClosed(name, kForceDisconnectTimeout,
                                     [&] { return snapshots_->DeleteVolume(name); });
    if (!deleted.ok()) ResumeQos(name);
    if (deleted.ok()) {
      SHALE_LOG_INFO("volume deleted after disconnecting its NBD clients", {"volume", name});
    }
  } else {
    deleted = snapshots_->DeleteVolume(name);
  }
  deleted = ExplainBusy(deleted, "volume", name, "delete", /*force_hint=*/true);
  if (!deleted.ok()) return Fail(ctx, deleted);
  ForgetQos(name);
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------------
// Exports

grpc::Status ControlService::ListExports(grpc::ServerContext* ctx,
                                         const v1::ListExportsRequest* /*req*/,
                                         v1::ListExportsResponse* resp) {
  if (nbd_ == nullptr) return grpc::Status::OK;
  const std::vector<nbd::NbdClientInfo> clients = nbd_->Clients();
  uint32_t handshaking = 0;
  for (const nbd::NbdClientInfo& c : clients) {
    if (c.export_name.empty()) ++handshaking;
  }
  resp->set_handshaking(handshaking);
  auto add_clients = [&](const std::string& name, v1::Export* e) {
    for (const nbd::NbdClientInfo& c : clients) {
      if (c.export_name != name) continue;
      v1::NbdClient* out = e->add_clients();
      out->set_id(c.id);
      out->set_transport(c.transport);
      out->set_peer(c.peer);
      out->set_connected_unix_ns(c.connected_unix_ns);
      out->set_requests(c.requests);
      out->set_bytes_read(c.bytes_read);
      out->set_bytes_written(c.bytes_written);
      out->set_errors(c.errors);
    }
  };
  std::vector<v1::Export> exports;
  for (const VolumeInfo& volume : engine_->ListVolumes()) {
    v1::Export& e = exports.emplace_back();
    e.set_name(volume.name);
    e.set_uri(nbd_->ExportUri(volume.name));
    e.set_size_bytes(volume.size_bytes);
    e.set_read_only(volume.read_only);
    add_clients(volume.name, &e);
  }
  // Every snapshot is a read-only export; implicit ones are listed only while a client reads one.
  Result<std::vector<snapshot::SnapshotInfo>> snaps =
      snapshots_->List({.include_implicit = true, .with_space = false});
  if (!snaps.ok()) return Fail(ctx, snaps.status());
  for (const snapshot::SnapshotInfo& snap : *snaps) {
    const std::string name = snap.full_name();
    v1::Export e;
    e.set_name(name);
    e.set_uri(nbd_->ExportUri(name));
    e.set_size_bytes(snap.size_bytes);
    e.set_read_only(true);
    e.set_snapshot(true);
    add_clients(name, &e);
    if (snap.implicit && e.clients().empty()) continue;
    exports.push_back(std::move(e));
  }
  std::sort(exports.begin(), exports.end(),
            [](const v1::Export& a, const v1::Export& b) { return a.name() < b.name(); });
  for (v1::Export& e : exports) *resp->add_exports() = std::move(e);
  return grpc::Status::OK;
}

}  // namespace shale
