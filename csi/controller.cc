// Controller service of csi.shale.io (docs/csi.md, "Controller").
#include <google/protobuf/util/time_util.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "csi/backup_params.h"
#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/block.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"
#include "qos/qos_manager.h"
#include "snapshot/snapshot_manager.h"

namespace shale::csi {

namespace v1 = ::csi::v1;

namespace {

// Where versions before the lifecycle service kept a CSI volume's record: keyed by name, and
// not removed by `shale volume delete` (docs/lifecycle.md, "Upgrading a data dir").
constexpr std::string_view kLegacyRecordNamespace = "csi";
constexpr std::string_view kLegacyRecordPrefix = "volume/";

std::optional<uint64_t> ParseU64(const std::string& text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// A capacity label (kLabelCapacity) of a volume or snapshot, capped at its engine size.
uint64_t LabelledCapacity(const std::map<std::string, std::string>& labels, uint64_t size_bytes) {
  auto it = labels.find(std::string(kLabelCapacity));
  if (it != labels.end()) {
    if (auto v = ParseU64(it->second)) return std::min(*v, size_bytes);
  }
  return size_bytes;
}

}  // namespace

std::optional<CsiRecord> ReadCsiRecord(Engine* engine, const VolumeInfo& info) {
  auto rec = engine->GetRecord(info.pool, daemon::FrontendRecordKey(info.id, kCsiRecordFrontend));
  if (!rec.ok() || !rec->has_value()) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(**rec, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  CsiRecord out;
  if (j.contains("csi_name") && j["csi_name"].is_string()) out.csi_name = j["csi_name"];
  if (j.contains("capacity") && j["capacity"].is_number_unsigned()) out.capacity = j["capacity"];
  if (j.contains("source") && j["source"].is_string()) out.source = j["source"];
  return out;
}

std::string EncodeCsiRecord(const CsiRecord& record) {
  nlohmann::json j;
  j["csi_name"] = record.csi_name;
  j["capacity"] = record.capacity;
  j["source"] = record.source;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

uint64_t CsiCapacity(Engine* engine, const VolumeInfo& info) {
  std::optional<CsiRecord> rec = ReadCsiRecord(engine, info);
  // A replica of a replicated volume has no headroom: its engine size is the capacity, also
  // after the volume grew through another node (which does not change this node's record).
  if (rec && rec->capacity > 0 && info.labels.contains(std::string(kReplicaUuidLabel))) {
    return std::max(rec->capacity, info.size_bytes);
  }
  if (rec && rec->capacity > 0) return rec->capacity;
  return LabelledCapacity(info.labels, info.size_bytes);
}

bool IsMissingVolume(const Status& status) {
  return status.IsNotFound() || status.code() == StatusCode::kInvalidArgument;
}

Result<VolumeInfo> FindVolume(Engine* engine, const std::string& id, std::string_view what) {
  Result<VolumeInfo> info = engine->GetVolume(id);
  if (!info.ok() && IsMissingVolume(info.status())) {
    return Status::NotFound(std::string(what) + " " + id + " not found");
  }
  return info;
}

// What the controller knows about a volume beyond the engine's VolumeInfo.
struct ControllerService::Impl {
  static void FillVolume(const DriverOptions& options, Engine* engine, const VolumeInfo& info,
                         v1::Volume* out) {
    out->set_volume_id(info.name);
    out->set_capacity_bytes(static_cast<int64_t>(CsiCapacity(engine, info)));
    if (info.read_only) (*out->mutable_volume_context())["readOnly"] = "true";
    if (!info.pool.empty()) (*out->mutable_volume_context())["pool"] = info.pool;
    // A replicated volume is served on any node of the cluster (its target runs where the pod
    // does, from the replicas wherever they are): no accessible topology, which CSI reads as
    // "equally accessible from every node". A read-only clone of a replicated volume's snapshot
    // is served on any node holding a copy of it; others on this node.
    std::vector<std::string> nodes;
    const bool replicated = options.replica_nodes && !options.replica_nodes(info.name).empty();
    auto clone_of = info.labels.find(std::string(kLabelCloneOf));
    if (auto it = info.labels.find(std::string(kLabelCloneNodes));
        it != info.labels.end() && clone_of != info.labels.end()) {
      for (size_t at = 0; at <= it->second.size();) {
        const size_t comma = std::min(it->second.find(',', at), it->second.size());
        if (comma > at) nodes.push_back(it->second.substr(at, comma - at));
        at = comma + 1;
      }
      (*out->mutable_volume_context())[std::string(kContextCloneOf)] = clone_of->second;
    }
    if (replicated) return;
    if (nodes.empty()) nodes.push_back(options.node_id);
    for (const std::string& node : nodes) {
      (*out->mutable_accessible_topology()->Add()->mutable_segments())[std::string(kTopologyKey)] =
          node;
    }
  }

  static void FillCondition(const DriverOptions& options, Engine* engine, const VolumeInfo& info,
                            v1::VolumeCondition* out) {
    if (info.pool.empty() && options.cluster_volume) {
      // Held by other nodes: the condition is its replicas' as the cluster records them.
      Result<DriverOptions::ClusterVolume> c = options.cluster_volume(info.name);
      out->set_abnormal(!c.ok() || c->in_sync < c->replicas);
      out->set_message(
          !c.ok() ? "the cluster's record cannot be read: " + c.status().ToString()
                  : std::to_string(c->in_sync) + " of " + std::to_string(c->replicas) +
                        " replicas in sync" +
                        (c->served_by.empty() ? ", detached" : ", served by " + c->served_by));
      return;
    }
    auto pool = engine->GetPool(info.pool);
    if (!pool.ok() || pool->state != "online") {
      out->set_abnormal(true);
      out->set_message("pool " + info.pool + " is not online" +
                       (pool.ok() && !pool->error.empty() ? ": " + pool->error : std::string()));
    } else if (info.errors > 0) {
      out->set_abnormal(true);
      out->set_message(std::to_string(info.errors) + " I/O errors since the daemon started");
    } else {
      out->set_abnormal(false);
      out->set_message("volume is healthy");
    }
  }
};

google::protobuf::Timestamp TimestampOf(uint64_t unix_ns) {
  return google::protobuf::util::TimeUtil::NanosecondsToTimestamp(static_cast<int64_t>(unix_ns));
}

void FillCsiSnapshot(const snapshot::SnapshotInfo& s, v1::Snapshot* out) {
  out->set_snapshot_id(s.full_name());
  out->set_source_volume_id(s.volume);
  out->set_size_bytes(static_cast<int64_t>(LabelledCapacity(s.labels, s.size_bytes)));
  *out->mutable_creation_time() = TimestampOf(s.created_unix_ns);
  // Redirect-on-write: a snapshot is complete at its cut once its commit is durable (Create may
  // answer before that; the snapshotter calls again: docs/snapshots.md, "Freeze latency"). The
  // digest is extra.
  out->set_ready_to_use(s.durable);
  // A member of a group snapshot (docs/csi.md, "GroupController").
  if (auto g = s.labels.find(std::string(daemon::kGroupLabel)); g != s.labels.end()) {
    out->set_group_snapshot_id(g->second);
  }
}

ControllerService::ControllerService(const DriverOptions& options,
                                     daemon::VolumeLifecycle* lifecycle)
    : options_(options),
      lifecycle_(lifecycle),
      engine_(lifecycle->engine()),
      snapshots_(lifecycle->snapshots()),
      qos_(lifecycle->qos()) {}

Status ControllerService::UpgradeRecords() {
  for (const PoolInfo& pool : engine_->ListPools()) {
    if (pool.state != "online") continue;
    const std::string prefix = keys::Extension(kLegacyRecordNamespace, kLegacyRecordPrefix);
    std::vector<std::pair<std::string, std::string>> legacy;  // (key, value)
    SHALE_RETURN_IF_ERROR(
        engine_->ScanRecords(pool.name, prefix, [&](std::string_view key, std::string_view value) {
          legacy.emplace_back(std::string(key), std::string(value));
          return true;
        }));
    for (const auto& [key, value] : legacy) {
      const std::string volume = key.substr(prefix.size());
      Result<VolumeInfo> info = engine_->GetVolume(volume);
      // Only a volume CSI made carries the fingerprint; a record next to any other volume of
      // that name was left by a CSI volume deleted through the CLI.
      const bool ours = info.ok() && info->pool == pool.name &&
                        info->labels.count(std::string(kLabelFingerprint)) > 0;
      if (ours) {
        SHALE_RETURN_IF_ERROR(lifecycle_->PutFrontendRecord(*info, kCsiRecordFrontend, value));
      }
      MetaBatch batch;
      batch.Delete(key);
      SHALE_RETURN_IF_ERROR(engine_->WriteRecords(pool.name, std::move(batch)));
      SHALE_LOG_INFO(ours ? "csi: record upgraded" : "csi: stale record removed",
                     {"pool", pool.name}, {"volume", volume});
    }
  }
  // Volumes of older versions count their engine size (capacity plus expansion headroom)
  // toward the pool's overcommit limit: record their CSI capacity instead, once.
  for (const VolumeInfo& info : engine_->ListVolumes()) {
    if (info.labels.count(std::string(kLabelFingerprint)) == 0) continue;
    const uint64_t capacity = info.read_only ? 0 : CsiCapacity(engine_, info);
    if (lifecycle_->capacity()->Promised(info) == capacity) continue;
    SHALE_RETURN_IF_ERROR(lifecycle_->SetProvisioned(info, capacity));
  }
  return Status::Ok();
}

namespace {

// What CreateVolume decided from the request alone, before it looks at existing volumes.
struct CreatePlan {
  std::map<std::string, std::string> params;  // StorageClass parameters
  VolumeParams vp;
  std::string name;    // the engine volume's name (ShaleNameFor)
  std::string source;  // "snapshot:ID", "volume:ID" or ""
  bool has_source = false;
  bool read_only = false;
  std::string fingerprint;
  int64_t required = 0;
  int64_t limit = 0;
};

// Where a clone starts and what it must hold.
struct SourcePlan {
  std::string clone_from;    // "VOLUME@SNAP" or a live volume
  std::string restore_from;  // a backup handle "s3://BUCKET/PREFIX/ID" (restored, not cloned)
  uint64_t minimum = 0;      // the source's CSI capacity
  uint64_t engine_size = 0;
  std::string pool;
  std::string copies_on;    // a replicated volume's snapshot: the nodes holding a copy ("a,b,c")
  std::string snapshot_of;  // a snapshot source: the volume it was taken of
};

// The content source as recorded ("snapshot:ID" / "volume:ID"); INVALID_ARGUMENT without an id.
grpc::Status SourceOf(const v1::CreateVolumeRequest& request, std::string* source) {
  if (!request.has_volume_content_source()) return grpc::Status::OK;
  const auto& src = request.volume_content_source();
  if (src.has_snapshot()) {
    if (src.snapshot().snapshot_id().empty()) return Invalid("snapshot source without an id");
    *source = "snapshot:" + src.snapshot().snapshot_id();
  } else if (src.has_volume()) {
    if (src.volume().volume_id().empty()) return Invalid("volume source without an id");
    *source = "volume:" + src.volume().volume_id();
  } else {
    return Invalid("volume_content_source without a snapshot or volume");
  }
  return grpc::Status::OK;
}

// Topology: this node is the only place a volume can live (RESOURCE_EXHAUSTED otherwise).
grpc::Status CheckRequisiteTopology(const v1::CreateVolumeRequest& request,
                                    const std::string& node_id) {
  if (!request.has_accessibility_requirements() ||
      request.accessibility_requirements().requisite().empty()) {
    return grpc::Status::OK;
  }
  for (const auto& topo : request.accessibility_requirements().requisite()) {
    auto it = topo.segments().find(std::string(kTopologyKey));
    if (it != topo.segments().end() && it->second == node_id) return grpc::Status::OK;
  }
  return grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      "no requisite topology names this node (" + std::string(kTopologyKey) + "=" + node_id + ")");
}

// Validates the request and decides names, source, read-only and the fingerprint.
grpc::Status PlanCreate(const v1::CreateVolumeRequest& request, const std::string& node_id,
                        bool has_qos_manager, CreatePlan* plan) {
  if (grpc::Status st = RequireFields(
          "CreateVolume", {{"name", !request.name().empty()},
                           {"volume_capabilities", !request.volume_capabilities().empty()}});
      !st.ok()) {
    return st;
  }
  plan->params = ToMap(request.parameters());
  Result<VolumeParams> parsed = ParseVolumeParams(plan->params);
  if (!parsed.ok()) return ToGrpc(parsed.status());
  plan->vp = std::move(parsed).value();
  // VolumeAttributesClass parameters at creation: QoS only, taking precedence.
  if (!request.mutable_parameters().empty()) {
    Status st =
        ApplyQosParams(ToMap(request.mutable_parameters()), &plan->vp.qos, &plan->vp.has_qos);
    if (!st.ok()) return ToGrpc(st);
  }
  if (plan->vp.has_qos && !has_qos_manager) {
    return Precondition("QoS parameters given but this shaled has no QoS manager");
  }
  if (grpc::Status st = SourceOf(request, &plan->source); !st.ok()) return st;
  plan->has_source = request.has_volume_content_source();
  // Read-only: asked for, or implied by a clone only ever read by many pods.
  bool all_multi_reader = true;
  for (const auto& cap : request.volume_capabilities()) {
    if (cap.access_mode().mode() != v1::VolumeCapability::AccessMode::MULTI_NODE_READER_ONLY) {
      all_multi_reader = false;
    }
  }
  if (plan->vp.read_only_clone && !plan->has_source) {
    return Invalid("readOnlyClone=true needs a volume content source (a snapshot or a volume)");
  }
  // A volume restored from a backup is written by the restore: never read-only in the engine
  // (pods still get it read-only through their access mode).
  const bool from_backup = plan->source.starts_with("snapshot:s3://");
  if (from_backup && plan->vp.read_only_clone) {
    return Invalid("readOnlyClone=true does not apply to a restore from a backup");
  }
  plan->read_only =
      plan->has_source && !from_backup && (plan->vp.read_only_clone || all_multi_reader);
  for (const auto& cap : request.volume_capabilities()) {
    Status st = CheckCapability(cap, plan->read_only);
    if (!st.ok()) return ToGrpc(st);
  }
  if (grpc::Status st = CheckRequisiteTopology(request, node_id); !st.ok()) return st;
  plan->name = ShaleNameFor(request.name());
  std::map<std::string, std::string> fp_params = plan->params;
  for (const auto& [k, v] : request.mutable_parameters()) fp_params["mutable:" + k] = v;
  plan->fingerprint = Fingerprint(request.name(), fp_params, plan->source, plan->read_only);
  plan->required = request.capacity_range().required_bytes();
  plan->limit = request.capacity_range().limit_bytes();
  return grpc::Status::OK;
}

// The clone's source: a frozen image ("VOLUME@SNAP") or the live volume, and its capacity.
grpc::Status ResolveSource(Engine* engine, snapshot::SnapshotManager* snapshots,
                           backup::BackupManager* backups, const v1::CreateVolumeRequest& request,
                           const CreatePlan& plan, SourcePlan* out) {
  const auto& src = request.volume_content_source();
  if (src.has_snapshot() && IsBackupHandle(src.snapshot().snapshot_id())) {
    auto manifest = ReadBackupHandle(backups, src.snapshot().snapshot_id());
    if (!manifest.ok()) {
      if (manifest.status().IsNotFound()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, std::string(manifest.status().message()));
      }
      return ToGrpc(manifest.status());
    }
    v1::Snapshot described;
    FillBackupSnapshot(*manifest, src.snapshot().snapshot_id(), &described);
    out->restore_from = src.snapshot().snapshot_id();
    out->minimum = static_cast<uint64_t>(described.size_bytes());
    out->engine_size = manifest->size_bytes;
    out->pool = plan.vp.pool;
    return grpc::Status::OK;
  }
  if (src.has_snapshot()) {
    auto snap = snapshots->Get(src.snapshot().snapshot_id());
    if (!snap.ok()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "source snapshot " + src.snapshot().snapshot_id() +
                              " not found: " + std::string(snap.status().message()));
    }
    out->clone_from = snap->full_name();
    out->snapshot_of = snap->volume;
    if (auto it = snap->labels.find(daemon::kSnapshotReplicasLabel); it != snap->labels.end()) {
      out->copies_on = it->second;
    }
    out->minimum = LabelledCapacity(snap->labels, snap->size_bytes);
    out->engine_size = snap->size_bytes;
    out->pool = snap->pool;
  } else {
    auto vol = FindVolume(engine, src.volume().volume_id(), "source volume");
    if (!vol.ok()) return ToGrpc(vol.status());
    out->clone_from = vol->name;
    out->minimum = CsiCapacity(engine, *vol);
    out->engine_size = vol->size_bytes;
    out->pool = vol->pool;
  }
  if (!plan.vp.pool.empty() && plan.vp.pool != out->pool) {
    return Invalid("parameter pool=" + plan.vp.pool + " differs from the source's pool " +
                   out->pool + " (clones live in their source's pool)");
  }
  return grpc::Status::OK;
}

// A repeated CreateVolume of an existing volume: the same volume when the fingerprint and the
// capacity fit (completing a record an upgraded volume lost), ALREADY_EXISTS otherwise.
grpc::Status CreateExisting(Engine* engine, daemon::VolumeLifecycle* lifecycle,
                            const v1::CreateVolumeRequest& request, const CreatePlan& plan,
                            const VolumeInfo& existing, bool local = true) {
  auto it = existing.labels.find(std::string(kLabelFingerprint));
  if (it == existing.labels.end() || it->second != plan.fingerprint) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "volume " + plan.name + " exists with different parameters or source");
  }
  const uint64_t capacity = CsiCapacity(engine, existing);
  if ((plan.required > 0 && capacity < static_cast<uint64_t>(plan.required)) ||
      (plan.limit > 0 && capacity > static_cast<uint64_t>(plan.limit))) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "volume " + plan.name + " exists with capacity " +
                            std::to_string(capacity) + " outside the requested range");
  }
  if (local && !ReadCsiRecord(engine, existing)) {
    lifecycle
        ->PutFrontendRecord(existing, kCsiRecordFrontend,
                            EncodeCsiRecord({request.name(), capacity, plan.source}))
        .IgnoreError();
  }
  return grpc::Status::OK;
}

// A replicated volume (StorageClass replicas > 1) through the cluster (DriverOptions).
Status CreateReplicated(const DriverOptions& options, const v1::CreateVolumeRequest& request,
                        const CreatePlan& plan, const SourcePlan& src, uint64_t capacity,
                        const std::map<std::string, std::string>& labels,
                        const std::vector<daemon::FrontendRecord>& records,
                        const std::optional<qos::QosSettings>& qos) {
  const std::string wanted = "parameter replicas=" + std::to_string(plan.vp.replicas);
  if (!options.create_replicated) {
    return Status::InvalidArgument(wanted + " needs shaled in cluster mode (--cluster-store)");
  }
  // Replicas only on the requisite nodes when the CO names some (this node is among them; it
  // need not take one: it then holds none of the volume, which is created detached).
  std::vector<std::string> nodes;
  if (request.has_accessibility_requirements()) {
    for (const auto& topo : request.accessibility_requirements().requisite()) {
      auto it = topo.segments().find(std::string(kTopologyKey));
      if (it != topo.segments().end()) nodes.push_back(it->second);
    }
  }
  // No expansion headroom: every replica's engine size is the capacity, so each node's NodeStage
  // sees the same device size without the CSI record (which lives with this node's replica).
  daemon::VolumeSpec spec{
      .params = {.name = plan.name,
                 .size_bytes = (capacity + kBlockSize - 1) / kBlockSize * kBlockSize,
                 .pool = plan.vp.pool,
                 .labels = labels},
      .qos = qos,
      .records = records,
      .provisioned_bytes = capacity};
  Status made = options.create_replicated({.spec = spec,
                                           .replicas = plan.vp.replicas,
                                           .nodes = nodes,
                                           .node_selector = plan.vp.replica_node_selector,
                                           .source = plan.has_source ? src.clone_from : "",
                                           .backup = src.restore_from});
  if (made.code() == StatusCode::kFailedPrecondition) {
    // Too few nodes qualify (spec: RESOURCE_EXHAUSTED, "unable to provision in topology").
    return Status::NoSpace(std::string(made.message()));
  }
  return made;
}

}  // namespace

Result<VolumeInfo> ControllerService::FindAnywhere(const std::string& id, std::string_view what) {
  Result<VolumeInfo> info = FindVolume(engine_, id, what);
  if (info.ok() || !info.status().IsNotFound() || !options_.cluster_volume ||
      !ValidateName("volume", id).ok()) {
    return info;
  }
  Result<DriverOptions::ClusterVolume> c = options_.cluster_volume(id);
  if (!c.ok()) return c.status().IsNotFound() ? info.status() : c.status();
  VolumeInfo out;
  out.name = id;
  out.size_bytes = c->size_bytes;
  out.labels = std::move(c->labels);
  // A replicated volume has no expansion headroom: its size is its capacity, also after it grew.
  out.labels[std::string(kLabelCapacity)] = std::to_string(c->size_bytes);
  return out;
}

grpc::Status ControllerService::CreateVolume(grpc::ServerContext*,
                                             const v1::CreateVolumeRequest* request,
                                             v1::CreateVolumeResponse* response) {
  CreatePlan plan;
  if (grpc::Status st = PlanCreate(*request, options_.node_id, qos_ != nullptr, &plan); !st.ok()) {
    return st;
  }
  auto respond = [&](const VolumeInfo& info) {
    Impl::FillVolume(options_, engine_, info, response->mutable_volume());
    if (plan.has_source) {
      *response->mutable_volume()->mutable_content_source() = request->volume_content_source();
    }
    return grpc::Status::OK;
  };

  std::lock_guard lock(mu_);
  if (auto existing = engine_->GetVolume(plan.name); existing.ok()) {
    grpc::Status st = CreateExisting(engine_, lifecycle_, *request, plan, *existing);
    return st.ok() ? respond(*existing) : st;
  } else if (!existing.status().IsNotFound()) {
    return ToGrpc(existing.status());
  } else if (Result<VolumeInfo> elsewhere = FindAnywhere(plan.name); elsewhere.ok()) {
    // A replicated volume this node holds none of (created here without a replica, a retry).
    grpc::Status st = CreateExisting(engine_, lifecycle_, *request, plan, *elsewhere, false);
    return st.ok() ? respond(*elsewhere) : st;
  } else if (!elsewhere.status().IsNotFound() && plan.vp.replicas > 1) {
    // The cluster's record of a replicated volume cannot be read now (etcd unreachable): a
    // retry that would find its volume must not be answered ALREADY_EXISTS; the provisioner
    // asks again. (A local volume does not need the cluster.)
    return ToGrpc(elsewhere.status());
  }
  SourcePlan src;
  if (plan.has_source) {
    if (grpc::Status st =
            ResolveSource(engine_, snapshots_, lifecycle_->backups(), *request, plan, &src);
        !st.ok()) {
      return st;
    }
  }
  Result<uint64_t> capacity = SizeForRange(plan.required, plan.limit, src.minimum);
  if (!capacity.ok()) return ToGrpc(capacity.status());
  const uint64_t engine_size = std::max(EngineSizeFor(*capacity), src.engine_size);
  std::map<std::string, std::string> labels = plan.vp.provenance;
  labels[std::string(kLabelFingerprint)] = plan.fingerprint;
  labels[std::string(kLabelCapacity)] = std::to_string(*capacity);

  // The volume, its QoS settings and its CSI record commit together (docs/lifecycle.md).
  const std::vector<daemon::FrontendRecord> records = {
      {std::string(kCsiRecordFrontend),
       EncodeCsiRecord({request->name(), *capacity, plan.source})}};
  std::optional<qos::QosSettings> qos;
  if (plan.vp.has_qos) qos = plan.vp.qos;
  Result<VolumeInfo> created = Status::Internal("unreachable");
  if (plan.vp.replicas > 1) {
    Status made = CreateReplicated(options_, *request, plan, src, *capacity, labels, records, qos);
    created = made.ok() ? FindAnywhere(plan.name) : Result<VolumeInfo>(made);
  } else if (!plan.has_source) {
    // The PVC's capacity, not the engine size (which has expansion headroom), counts toward
    // the pool's overcommit limit.
    created = lifecycle_->Create({.params = {.name = plan.name,
                                             .size_bytes = engine_size,
                                             .pool = plan.vp.pool,
                                             .labels = labels},
                                  .qos = qos,
                                  .records = records,
                                  .provisioned_bytes = *capacity});
  } else if (!src.restore_from.empty()) {
    // Restores take as long as the data does; a provisioner retry waits on mu_ and then finds
    // the complete volume (a crash meanwhile: shaled deletes the half-restored volume at start).
    daemon::RestoreSpec spec;
    spec.backup = src.restore_from;
    spec.volume = {.params = {.name = plan.name,
                              .size_bytes = engine_size,
                              .pool = plan.vp.pool,
                              .labels = labels},
                   .qos = qos,
                   .records = records,
                   .provisioned_bytes = *capacity};
    created = lifecycle_->Restore(spec);
  } else {
    if (plan.read_only && src.copies_on.empty() && !src.snapshot_of.empty() &&
        options_.replica_nodes) {
      // A replica's copy of the snapshot may carry no label (a target's own copy does; so do the
      // copies a target without a replica takes): the nodes
      // holding a replica of its volume now (one that was out then has no copy: NodeStage
      // there is NOT_FOUND, naming the snapshot).
      std::string nodes;
      for (const std::string& n : options_.replica_nodes(src.snapshot_of)) {
        nodes += (nodes.empty() ? "" : ",") + n;
      }
      src.copies_on = nodes;
    }
    if (plan.read_only && !src.copies_on.empty()) {
      // Served on every node holding a copy of the snapshot: each stages its own clone of it.
      labels[std::string(kLabelCloneNodes)] = src.copies_on;
      labels[std::string(kLabelCloneOf)] = src.clone_from;
    }
    auto clone = lifecycle_->Clone({.source = src.clone_from,
                                    .name = plan.name,
                                    .read_only = plan.read_only,
                                    .labels = labels,
                                    .size_bytes = engine_size,
                                    .qos = qos,
                                    .records = records,
                                    .provisioned_bytes = plan.read_only ? 0 : *capacity});
    created = clone.ok() ? Result<VolumeInfo>(clone->volume) : Result<VolumeInfo>(clone.status());
  }
  if (!created.ok()) {
    Status st = created.status();
    if (st.code() == StatusCode::kNotFound && !plan.vp.pool.empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "pool " + plan.vp.pool + " not found: " + std::string(st.message()));
    }
    return ToGrpc(st.WithContext("create volume " + plan.name));
  }
  return respond(*created);
}

grpc::Status ControllerService::DeleteVolume(grpc::ServerContext*,
                                             const v1::DeleteVolumeRequest* request,
                                             v1::DeleteVolumeResponse*) {
  if (grpc::Status st =
          RequireFields("DeleteVolume", {{"volume_id", !request->volume_id().empty()}});
      !st.ok()) {
    return st;
  }
  std::lock_guard lock(mu_);
  // (A replicated volume this node holds none of is deleted through the cluster.)
  auto info = FindAnywhere(request->volume_id());
  if (!info.ok()) {
    // Gone already (or never a valid id): deleting is idempotent.
    if (IsMissingVolume(info.status())) return grpc::Status::OK;
    return ToGrpc(info.status());
  }
  // Through the lifecycle: the volume's QoS settings and CSI record go in the same commit.
  Status st =
      options_.delete_volume ? options_.delete_volume(info->name) : lifecycle_->Delete(info->name);
  if (!st.ok() && !st.IsNotFound()) {
    if (st.code() == StatusCode::kBusy) {
      return Precondition("volume " + info->name +
                          " is in use (attached on the node?): " + std::string(st.message()));
    }
    return ToGrpc(st);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::ValidateVolumeCapabilities(
    grpc::ServerContext*, const v1::ValidateVolumeCapabilitiesRequest* request,
    v1::ValidateVolumeCapabilitiesResponse* response) {
  if (grpc::Status st =
          RequireFields("ValidateVolumeCapabilities",
                        {{"volume_id", !request->volume_id().empty()},
                         {"volume_capabilities", !request->volume_capabilities().empty()}});
      !st.ok()) {
    return st;
  }
  auto info = FindAnywhere(request->volume_id());
  if (!info.ok()) return ToGrpc(info.status());
  for (const auto& cap : request->volume_capabilities()) {
    Status st = CheckCapability(cap, info->read_only);
    if (!st.ok()) {
      response->set_message(std::string(st.message()));
      return grpc::Status::OK;
    }
  }
  if (!request->parameters().empty()) {
    auto parsed = ParseVolumeParams(ToMap(request->parameters()));
    if (!parsed.ok()) {
      response->set_message(std::string(parsed.status().message()));
      return grpc::Status::OK;
    }
  }
  auto* confirmed = response->mutable_confirmed();
  *confirmed->mutable_volume_context() = request->volume_context();
  *confirmed->mutable_volume_capabilities() = request->volume_capabilities();
  *confirmed->mutable_parameters() = request->parameters();
  *confirmed->mutable_mutable_parameters() = request->mutable_parameters();
  return grpc::Status::OK;
}

grpc::Status ControllerService::ListVolumes(grpc::ServerContext*,
                                            const v1::ListVolumesRequest* request,
                                            v1::ListVolumesResponse* response) {
  std::string after;
  if (grpc::Status st = PageStart(request->max_entries(), request->starting_token(), &after);
      !st.ok()) {
    return st;
  }
  response->set_next_token(Page(
      engine_->ListVolumes(), after, request->max_entries(),
      [](const VolumeInfo& v) { return v.name; },
      [&](const VolumeInfo& v) {
        auto* entry = response->add_entries();
        Impl::FillVolume(options_, engine_, v, entry->mutable_volume());
        Impl::FillCondition(options_, engine_, v,
                            entry->mutable_status()->mutable_volume_condition());
      }));
  return grpc::Status::OK;
}

grpc::Status ControllerService::GetCapacity(grpc::ServerContext*,
                                            const v1::GetCapacityRequest* request,
                                            v1::GetCapacityResponse* response) {
  for (const auto& cap : request->volume_capabilities()) {
    Status st = CheckCapability(cap, /*read_only=*/false);
    // A capability this driver cannot serve has no capacity (not an error: spec).
    if (!st.ok() && !IsReaderOnlyMode(cap.access_mode().mode())) return grpc::Status::OK;
  }
  auto parsed = ParseVolumeParams(ToMap(request->parameters()));
  if (!parsed.ok()) return ToGrpc(parsed.status());
  if (request->has_accessible_topology()) {
    auto it = request->accessible_topology().segments().find(std::string(kTopologyKey));
    if (it == request->accessible_topology().segments().end() || it->second != options_.node_id) {
      return grpc::Status::OK;  // 0: no space of this node is reachable from there
    }
  }
  std::string pool = parsed->pool;
  if (pool.empty()) {
    std::vector<PoolInfo> pools = engine_->ListPools();
    bool has_default = false;
    for (const PoolInfo& p : pools) has_default |= p.name == engine_->options().default_pool_name;
    if (has_default) {
      pool = engine_->options().default_pool_name;
    } else if (pools.size() == 1) {
      pool = pools[0].name;
    } else {
      return Invalid("parameter pool is required: this node has " + std::to_string(pools.size()) +
                     " pools and none is named " + engine_->options().default_pool_name);
    }
  }
  auto info = engine_->GetPool(pool);
  if (!info.ok()) {
    if (info.status().IsNotFound()) return Invalid("pool " + pool + " not found");
    return ToGrpc(info.status());
  }
  // Volumes are thin: what can still be provisioned is what the pool's overcommit limit leaves
  // (docs/operations.md, "Capacity"); without a limit, the free space.
  uint64_t available = 0;
  uint64_t largest = kMaxVolumeSize;
  if (info->state == "online") {
    auto capacity = lifecycle_->capacity()->Describe(pool);
    if (!capacity.ok()) return ToGrpc(capacity.status());
    if (capacity->provisionable_bytes == UINT64_MAX) {
      available = info->free_bytes;
    } else {
      available = capacity->provisionable_bytes;
      largest = std::min(largest, available);
    }
  } else {
    largest = 0;
  }
  response->set_available_capacity(static_cast<int64_t>(std::min<uint64_t>(available, INT64_MAX)));
  response->mutable_maximum_volume_size()->set_value(static_cast<int64_t>(largest));
  response->mutable_minimum_volume_size()->set_value(static_cast<int64_t>(kSizeGranularity));
  return grpc::Status::OK;
}

grpc::Status ControllerService::ControllerGetCapabilities(
    grpc::ServerContext*, const v1::ControllerGetCapabilitiesRequest*,
    v1::ControllerGetCapabilitiesResponse* response) {
  using Rpc = v1::ControllerServiceCapability::RPC;
  for (Rpc::Type t :
       {Rpc::CREATE_DELETE_VOLUME, Rpc::LIST_VOLUMES, Rpc::GET_CAPACITY,
        Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS, Rpc::CLONE_VOLUME, Rpc::EXPAND_VOLUME,
        Rpc::VOLUME_CONDITION, Rpc::GET_VOLUME, Rpc::SINGLE_NODE_MULTI_WRITER}) {
    response->add_capabilities()->mutable_rpc()->set_type(t);
  }
  if (qos_ != nullptr) {
    response->add_capabilities()->mutable_rpc()->set_type(Rpc::MODIFY_VOLUME);
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::ControllerExpandVolume(
    grpc::ServerContext*, const v1::ControllerExpandVolumeRequest* request,
    v1::ControllerExpandVolumeResponse* response) {
  if (grpc::Status st = RequireFields("ControllerExpandVolume",
                                      {{"volume_id", !request->volume_id().empty()},
                                       {"capacity_range", request->has_capacity_range()}});
      !st.ok()) {
    return st;
  }
  if (options_.expand_replicated) {
    // A replicated volume grows through the cluster, whichever node answers.
    Result<uint64_t> size = SizeForRange(request->capacity_range().required_bytes(),
                                         request->capacity_range().limit_bytes(), 0);
    if (!size.ok()) return ToGrpc(size.status());
    Result<uint64_t> grown = options_.expand_replicated(request->volume_id(), *size);
    if (grown.ok()) {
      response->set_capacity_bytes(static_cast<int64_t>(*grown));
      response->set_node_expansion_required(true);  // the filesystem, at the next NodeStage
      return grpc::Status::OK;
    }
    if (!IsMissingVolume(grown.status())) {
      // Busy (clients on the node serving it) is a precondition for the CO too: it retries.
      return grown.status().code() == StatusCode::kBusy ? Precondition(grown.status().ToString())
                                                        : ToGrpc(grown.status());
    }
  }
  std::lock_guard lock(mu_);
  auto info = FindVolume(engine_, request->volume_id());
  if (!info.ok()) return ToGrpc(info.status());
  const uint64_t current = CsiCapacity(engine_, *info);
  Result<uint64_t> wanted = SizeForRange(request->capacity_range().required_bytes(),
                                         request->capacity_range().limit_bytes(), current);
  if (!wanted.ok()) return ToGrpc(wanted.status());
  if (*wanted > current) {
    if (info->read_only) {
      return Precondition("volume " + info->name + " is a read-only clone and cannot grow");
    }
    // Keep the CSI name and source of the existing record; only the capacity changes, in the
    // same commit as the engine size.
    CsiRecord record = ReadCsiRecord(engine_, *info).value_or(CsiRecord{info->name, 0, ""});
    if (record.csi_name.empty()) record.csi_name = info->name;
    record.capacity = *wanted;
    auto resized =
        lifecycle_->Resize(info->name, std::max(EngineSizeFor(*wanted), info->size_bytes),
                           {{std::string(kCsiRecordFrontend), EncodeCsiRecord(record)}}, *wanted);
    if (!resized.ok()) return ToGrpc(resized.status());
  }
  response->set_capacity_bytes(static_cast<int64_t>(std::max(*wanted, current)));
  // The node grows its attachment (loop size limit) and, for mounts, the filesystem.
  response->set_node_expansion_required(true);
  return grpc::Status::OK;
}

grpc::Status ControllerService::ControllerGetVolume(grpc::ServerContext*,
                                                    const v1::ControllerGetVolumeRequest* request,
                                                    v1::ControllerGetVolumeResponse* response) {
  if (grpc::Status st =
          RequireFields("ControllerGetVolume", {{"volume_id", !request->volume_id().empty()}});
      !st.ok()) {
    return st;
  }
  auto info = FindAnywhere(request->volume_id());
  if (!info.ok()) return ToGrpc(info.status());
  Impl::FillVolume(options_, engine_, *info, response->mutable_volume());
  Impl::FillCondition(options_, engine_, *info,
                      response->mutable_status()->mutable_volume_condition());
  return grpc::Status::OK;
}

grpc::Status ControllerService::ControllerModifyVolume(
    grpc::ServerContext*, const v1::ControllerModifyVolumeRequest* request,
    v1::ControllerModifyVolumeResponse*) {
  if (grpc::Status st =
          RequireFields("ControllerModifyVolume",
                        {{"volume_id", !request->volume_id().empty()},
                         {"mutable_parameters", !request->mutable_parameters().empty()}});
      !st.ok()) {
    return st;
  }
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return ToGrpc(gate);
  if (qos_ == nullptr) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this shaled has no QoS manager");
  }
  if (options_.replicated_qos && options_.set_replicated_qos) {
    // A replicated volume's QoS lives in the cluster, whichever node answers.
    Result<qos::QosSettings> replicated = options_.replicated_qos(request->volume_id());
    if (replicated.ok()) {
      qos::QosSettings settings = *replicated;
      bool any = false;
      Status st = ApplyQosParams(ToMap(request->mutable_parameters()), &settings, &any);
      if (!st.ok()) return ToGrpc(st);
      return ToGrpc(options_.set_replicated_qos(request->volume_id(), settings));
    }
    if (!IsMissingVolume(replicated.status())) return ToGrpc(replicated.status());
  }
  std::lock_guard lock(mu_);
  auto current = qos_->Get(request->volume_id());
  if (!current.ok()) {
    if (IsMissingVolume(current.status())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "volume " + request->volume_id() + " not found");
    }
    return ToGrpc(current.status());
  }
  qos::QosSettings settings = *current;
  bool any = false;
  Status st = ApplyQosParams(ToMap(request->mutable_parameters()), &settings, &any);
  if (!st.ok()) return ToGrpc(st);
  return ToGrpc(qos_->Set(request->volume_id(), settings));
}

}  // namespace shale::csi
