#include "daemon/control_service.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>

#include "api/grpc_status.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/assert.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "engine/pool/superblock.h"
#include "nbd/server.h"
#include "qos/settings.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {

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

}  // namespace

namespace internal {

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

grpc::Status Fail(grpc::ServerContext* ctx, const Status& status) {
  ctx->AddTrailingMetadata(api::kShaleErrorMetadataKey, std::string(StatusCodeName(status.code())));
  return api::ToGrpcStatus(status);
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

}  // namespace internal

using internal::Fail;
using internal::ToProto;

ControlService::ControlService(VolumeLifecycle* lifecycle, DaemonInfo info, nbd::NbdServer* nbd,
                               ClusterNode* cluster, ReplicatedVolumes* replicated)
    : lifecycle_(lifecycle),
      engine_(lifecycle->engine()),
      snapshots_(lifecycle->snapshots()),
      nbd_(nbd),
      qos_(lifecycle->qos()),
      cluster_(cluster),
      replicated_(replicated),
      info_(std::move(info)),
      started_(std::chrono::steady_clock::now()) {
  SHALE_CHECK(engine_ != nullptr && snapshots_ != nullptr,
              "ControlService needs an engine and a snapshot manager");
}

Status ControlService::AddSnapshotInfo(v1::Volume* volume, bool with_space) {
  Result<std::optional<snapshot::CloneInfo>> clone = snapshots_->GetCloneInfo(volume->name());
  if (!clone.ok()) return clone.status();
  if (*clone) internal::ToProto(**clone, volume->mutable_clone());
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
  resp->set_read_cache(options.device.cached_reads ? "page" : "none");
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
    for (const nbd::NbdListenerInfo& l : nbd_->Listeners()) {
      v1::NbdListener* out = nbd->add_listeners();
      out->set_transport(l.transport);
      out->set_address(l.address);
      out->set_tls(l.tls);
      out->set_client_certificates(l.client_certificates);
      out->set_authz(l.authz);
    }
  }
  AddClusterStatus(resp);
  if (info_.metrics_address) {
    v1::MetricsStatus* metrics = resp->mutable_metrics();
    metrics->set_enabled(true);
    metrics->set_address(info_.metrics_address());
    metrics->set_url("http://" + metrics->address() + "/metrics");
  }
  for (const PoolInfo& pool : engine_->ListPools()) {
    v1::Pool* out = resp->add_pools();
    ToProto(pool, out);
    AddCapacityInfo(out);
  }
  return grpc::Status::OK;
}

// ---------------------------------------------------------------------------------------------
// Pools

grpc::Status ControlService::CreatePool(grpc::ServerContext* ctx, const v1::CreatePoolRequest* req,
                                        v1::Pool* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
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
  AddCapacityInfo(resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListPools(grpc::ServerContext* /*ctx*/,
                                       const v1::ListPoolsRequest* /*req*/,
                                       v1::ListPoolsResponse* resp) {
  // The engine lists pools in name order (its map is sorted).
  for (const PoolInfo& pool : engine_->ListPools()) {
    v1::Pool* out = resp->add_pools();
    ToProto(pool, out);
    AddCapacityInfo(out);
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req,
                                     v1::Pool* resp) {
  Status valid = ValidateName("pool", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  Result<PoolInfo> pool = engine_->GetPool(req->name());
  if (!pool.ok()) return Fail(ctx, pool.status());
  ToProto(*pool, resp);
  AddCapacityInfo(resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeletePool(grpc::ServerContext* ctx, const v1::DeletePoolRequest* req,
                                        v1::DeletePoolResponse* /*resp*/) {
  Status valid = ValidateName("pool", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  if (Status st = lifecycle_->DeletePool(req->name(), req->force()); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::CheckPool(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                                       grpc::ServerWriter<v1::CheckPoolProgress>* writer) {
  return internal::StreamWork(this, &ControlService::CheckPoolWork, ctx, req, writer);
}

Status ControlService::CheckPoolWork(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                                     v1::CheckPoolResponse* resp, ProgressCounter* progress) {
  if (Status valid = ValidateName("pool", req->name()); !valid.ok()) return valid;
  // A client that goes away (Ctrl-C on `shale pool check`) stops the check (it changes nothing).
  PoolCheckOptions options;
  options.cancelled = [ctx] { return ctx->IsCancelled(); };
  if (progress != nullptr) {
    options.progress = [progress](uint64_t done, uint64_t total) { progress->Set(done, total); };
  }
  Result<PoolCheckReport> report = engine_->CheckPool(req->name(), options);
  if (!report.ok()) return report.status();
  resp->set_clean(report->clean());
  resp->set_referenced_clusters(report->referenced_clusters);
  resp->set_committed_clusters(report->committed_clusters);
  for (const std::string& problem : report->problems) resp->add_problems(problem);
  if (!report->clean()) {
    SHALE_LOG_WARN("pool check found problems", {"pool", req->name()},
                   {"problems", report->problems.size()});
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Volumes

grpc::Status ControlService::CreateVolume(grpc::ServerContext* ctx,
                                          const v1::CreateVolumeRequest* req, v1::Volume* resp) {
  VolumeSpec spec;
  spec.params.name = req->name();
  spec.params.size_bytes = req->size_bytes();
  spec.params.pool = req->pool();
  spec.params.read_only = req->read_only();
  spec.params.labels.insert(req->labels().begin(), req->labels().end());
  if (req->has_qos()) spec.qos = qos::SettingsFromMessage(req->qos());
  std::vector<std::string> advice;
  Result<VolumeInfo> volume = Status::Internal("not run");
  if (internal::WantsReplicas(*req)) {
    volume = internal::CreateReplicated(replicated_, spec, *req, &advice);
  } else {
    volume = lifecycle_->Create(spec, &advice);
  }
  if (!volume.ok()) return Fail(ctx, volume.status());
  ToProto(*volume, resp);
  for (std::string& line : advice) resp->add_warnings(std::move(line));
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
    if (it != clone_of.end()) internal::ToProto(*it->second, out->mutable_clone());
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::GetVolume(grpc::ServerContext* ctx, const v1::GetVolumeRequest* req,
                                       v1::Volume* resp) {
  Status valid = ValidateName("volume", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  if (Status st = DescribeVolume(req->name(), resp); !st.ok()) return Fail(ctx, st);
  AddReplicationInfo(resp);
  return grpc::Status::OK;
}

bool ControlService::MaybeReplicated(const std::string& name) const {
  return replicated_ != nullptr &&
         (replicated_->IsReplicated(name) || !lifecycle_->engine()->GetVolume(name).ok());
}

grpc::Status ControlService::ResizeVolume(grpc::ServerContext* ctx,
                                          const v1::ResizeVolumeRequest* req, v1::Volume* resp) {
  if (MaybeReplicated(req->name())) {
    // A replicated volume (also from a node holding no replica of it): its membership's size.
    Result<uint64_t> grown = replicated_->Resize(req->name(), req->size_bytes());
    if (grown.ok()) {
      if (Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(req->name()); local.ok()) {
        ToProto(*local, resp);
        AddReplicationInfo(resp);
      } else {
        resp->set_name(req->name());
      }
      resp->set_size_bytes(*grown);
      return grpc::Status::OK;
    }
    if (!grown.status().IsNotFound() || replicated_->IsReplicated(req->name())) {
      return Fail(ctx, grown.status());
    }
  }
  std::vector<std::string> advice;
  Result<VolumeInfo> volume =
      lifecycle_->Resize(req->name(), req->size_bytes(), {}, /*provisioned_bytes=*/0, &advice);
  if (!volume.ok()) return Fail(ctx, volume.status());
  ToProto(*volume, resp);
  for (std::string& line : advice) resp->add_warnings(std::move(line));
  AddExportInfo(resp);
  if (Status st = AddSnapshotInfo(resp, /*with_space=*/true); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeleteVolume(grpc::ServerContext* ctx,
                                          const v1::DeleteVolumeRequest* req,
                                          v1::DeleteVolumeResponse* /*resp*/) {
  // Through the lifecycle, so every layer's records of the volume go with it in one commit.
  const DeleteOptions options{.force = req->force(), .disconnect_timeout = kForceDisconnectTimeout};
  // (A replicated volume this node holds nothing of is deleted through the cluster.)
  const bool replicated = replicated_ != nullptr && (replicated_->IsReplicated(req->name()) ||
                                                     replicated_->IsElsewhere(req->name()));
  Status deleted = replicated ? replicated_->Delete(req->name(), options)
                              : lifecycle_->Delete(req->name(), options);
  if (!deleted.ok()) return Fail(ctx, deleted);
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
      out->set_tls_identity(c.tls);
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

}  // namespace shale::daemon
