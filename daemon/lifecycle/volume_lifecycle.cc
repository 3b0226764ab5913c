#include "daemon/lifecycle/volume_lifecycle.h"

#include <algorithm>
#include <cstdio>

#include "engine/common/block.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"
#include "qos/qos_manager.h"
#include "snapshot/names.h"

namespace shale::daemon {
namespace {

constexpr std::string_view kFrontendNamespace = "frontend";
constexpr size_t kMaxFrontendNameLength = 32;
constexpr size_t kMaxFrontendRecordBytes = 64 * 1024;

std::string Hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return std::string(buf, 16);
}

// Every frontend record of volume `volume_id`: [hex16(id) "/", hex16(id) "0") ('0' follows '/').
std::pair<std::string, std::string> FrontendRecordRange(uint64_t volume_id) {
  return {keys::Extension(kFrontendNamespace, Hex16(volume_id) + "/"),
          keys::Extension(kFrontendNamespace, Hex16(volume_id) + "0")};
}

Status CheckSize(uint64_t size_bytes) {
  if (size_bytes == 0) return Status::InvalidArgument("volume size must be greater than 0");
  // The engine rounds up to whole blocks before its range check; keep that from wrapping.
  if (size_bytes > UINT64_MAX - kBlockSize) {
    return Status::InvalidArgument("volume size " + std::to_string(size_bytes) + " is too large");
  }
  // The engine's limit (kMaxVolumeSize, engine_internal.h), checked here too so that a size no
  // volume can have is refused as such, before the overcommit check could name it.
  constexpr uint64_t kMaxVolumeSize = uint64_t{256} << 40;
  if (size_bytes > kMaxVolumeSize) {
    return Status::InvalidArgument("volume size " + FormatSize(size_bytes) +
                                   " exceeds the maximum of " + FormatSize(kMaxVolumeSize));
  }
  return Status::Ok();
}

}  // namespace

std::string FrontendRecordKey(uint64_t volume_id, std::string_view frontend) {
  return keys::Extension(kFrontendNamespace, Hex16(volume_id) + "/" + std::string(frontend));
}

VolumeLifecycle::VolumeLifecycle(Engine* engine, snapshot::SnapshotManager* snapshots,
                                 qos::QosManager* qos)
    : engine_(engine), snapshots_(snapshots), qos_(qos), capacity_(engine) {}

std::string VolumeLifecycle::ResolvePool(std::string_view pool) const {
  if (!pool.empty()) return std::string(pool);
  const std::vector<PoolInfo> pools = engine_->ListPools();
  for (const PoolInfo& p : pools) {
    if (p.name == engine_->options().default_pool_name) return p.name;
  }
  return pools.size() == 1 ? pools[0].name : std::string();
}

Status VolumeLifecycle::CheckSpecQos(const std::optional<qos::QosSettings>& settings) const {
  if (!settings) return Status::Ok();
  if (qos_ == nullptr) return Status::FailedPrecondition("QoS is not enabled in this shaled");
  return settings->Validate();
}

Status VolumeLifecycle::CheckRecords(const std::vector<FrontendRecord>& records) {
  for (const FrontendRecord& r : records) {
    if (r.frontend.empty() || r.frontend.size() > kMaxFrontendNameLength) {
      return Status::InvalidArgument("frontend record name '" + r.frontend + "' must be 1.." +
                                     std::to_string(kMaxFrontendNameLength) + " bytes");
    }
    for (char c : r.frontend) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
        return Status::InvalidArgument("frontend record name '" + r.frontend +
                                       "' may contain only a-z, 0-9 and '-'");
      }
    }
    if (r.value.size() > kMaxFrontendRecordBytes) {
      return Status::InvalidArgument("frontend record of '" + r.frontend + "' is " +
                                     std::to_string(r.value.size()) + " bytes; the limit is " +
                                     std::to_string(kMaxFrontendRecordBytes));
    }
  }
  return Status::Ok();
}

void VolumeLifecycle::AddRecords(const std::optional<qos::QosSettings>& settings,
                                 const std::vector<FrontendRecord>& records, uint64_t volume_id,
                                 std::string_view name, MetaBatch* batch) {
  if (settings) {
    // Validated by CheckSpecQos before the engine was called.
    qos::QosManager::AddVolumeRecord(*settings, volume_id, name, batch).IgnoreError();
  }
  for (const FrontendRecord& r : records) {
    batch->Put(FrontendRecordKey(volume_id, r.frontend), r.value);
  }
}

void VolumeLifecycle::AdoptQos(const VolumeInfo& volume,
                               const std::optional<qos::QosSettings>& settings) {
  if (qos_ != nullptr && settings)
    qos_->AdoptVolume(volume.name, volume.pool, volume.id, *settings);
}

Status VolumeLifecycle::ExplainBusy(const Status& status, const std::string& kind,
                                    const std::string& name, const std::string& action,
                                    bool force_hint) const {
  if (status.code() != StatusCode::kBusy) return status;
  ExportGate* gate = gate_.load();
  const std::string clients = gate != nullptr ? gate->DescribeClients(name) : std::string();
  if (clients.empty()) return status;
  return Status::Busy(kind + " '" + name + "' has " + clients + "; disconnect them" +
                      (force_hint ? ", or use --force to disconnect them and " + action
                                  : " before you " + action + " it"));
}

Result<VolumeInfo> VolumeLifecycle::Create(const VolumeSpec& spec,
                                           std::vector<std::string>* advice) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("volume", spec.params.name));
  SHALE_RETURN_IF_ERROR(CheckSize(spec.params.size_bytes));
  if (!spec.params.pool.empty()) SHALE_RETURN_IF_ERROR(ValidateName("pool", spec.params.pool));
  SHALE_RETURN_IF_ERROR(ValidateLabels(spec.params.labels));
  SHALE_RETURN_IF_ERROR(CheckSpecQos(spec.qos));
  SHALE_RETURN_IF_ERROR(CheckRecords(spec.records));
  const uint64_t promised =
      spec.provisioned_bytes != 0
          ? spec.provisioned_bytes
          : (spec.params.read_only ? 0 : RoundUpToBlock(spec.params.size_bytes));
  const std::string pool = ResolvePool(spec.params.pool);
  std::lock_guard provision(provision_mu_);
  if (Result<PoolInfo> info = engine_->GetPool(pool); info.ok() && info->state == "online") {
    SHALE_RETURN_IF_ERROR(capacity_.CheckProvision(
        pool, promised,
        "volume '" + spec.params.name + "' (" + FormatSize(promised) + " provisioned)"));
  }
  Result<VolumeInfo> volume =
      engine_->CreateVolume(spec.params, [&](uint64_t volume_id, MetaBatch* batch) {
        AddRecords(spec.qos, spec.records, volume_id, spec.params.name, batch);
        CapacityPolicy::AddPromiseRecord(volume_id, promised, batch);
      });
  if (!volume.ok()) return volume.status();
  capacity_.AdoptPromise(volume->pool, volume->id, promised);
  AdoptQos(*volume, spec.qos);
  if (advice != nullptr) *advice = capacity_.Advice(volume->pool, promised);
  return volume;
}

Result<snapshot::CloneResult> VolumeLifecycle::Clone(const CloneSpec& spec,
                                                     std::vector<std::string>* advice) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("volume", spec.name));
  if (spec.size_bytes != 0) SHALE_RETURN_IF_ERROR(CheckSize(spec.size_bytes));
  SHALE_RETURN_IF_ERROR(ValidateLabels(spec.labels));
  SHALE_RETURN_IF_ERROR(CheckSpecQos(spec.qos));
  SHALE_RETURN_IF_ERROR(CheckRecords(spec.records));
  // The pool and size the clone will have: its source's.
  std::string pool;
  uint64_t size = spec.size_bytes;
  if (Result<snapshot::SnapshotRef> ref = snapshot::ParseSnapshotRef(spec.source); ref.ok()) {
    Result<std::vector<snapshot::SnapshotInfo>> snaps =
        snapshots_->List({.volume = ref->volume, .include_implicit = true, .with_space = false});
    if (snaps.ok()) {
      for (const snapshot::SnapshotInfo& s : *snaps) {
        if (s.name != ref->snapshot) continue;
        pool = s.pool;
        size = std::max(size, s.size_bytes);
      }
    }
  } else if (Result<VolumeInfo> source = engine_->GetVolume(spec.source); source.ok()) {
    pool = source->pool;
    size = std::max(size, source->size_bytes);
  }
  const uint64_t promised = spec.provisioned_bytes != 0
                                ? spec.provisioned_bytes
                                : (spec.read_only ? 0 : RoundUpToBlock(size));
  std::lock_guard provision(provision_mu_);
  if (!pool.empty()) {
    SHALE_RETURN_IF_ERROR(capacity_.CheckProvision(
        pool, promised, "clone '" + spec.name + "' (" + FormatSize(promised) + " provisioned)"));
  }
  snapshot::CloneOptions options;
  options.read_only = spec.read_only;
  options.labels = spec.labels;
  options.size_bytes = spec.size_bytes;
  options.extra = [&](uint64_t volume_id, MetaBatch* batch) {
    AddRecords(spec.qos, spec.records, volume_id, spec.name, batch);
    CapacityPolicy::AddPromiseRecord(volume_id, promised, batch);
  };
  Result<snapshot::CloneResult> clone = snapshots_->Clone(spec.source, spec.name, options);
  if (!clone.ok()) return clone.status();
  capacity_.AdoptPromise(clone->volume.pool, clone->volume.id, promised);
  AdoptQos(clone->volume, spec.qos);
  if (advice != nullptr) *advice = capacity_.Advice(clone->volume.pool, promised);
  return clone;
}

Result<VolumeInfo> VolumeLifecycle::Resize(std::string_view name, uint64_t size_bytes,
                                           const std::vector<FrontendRecord>& records,
                                           uint64_t provisioned_bytes,
                                           std::vector<std::string>* advice) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  SHALE_RETURN_IF_ERROR(CheckSize(size_bytes));
  SHALE_RETURN_IF_ERROR(CheckRecords(records));
  std::lock_guard provision(provision_mu_);
  SHALE_ASSIGN_OR_RETURN(VolumeInfo current, engine_->GetVolume(name));
  const uint64_t before = capacity_.Promised(current);
  // A shrink is refused by the engine; its promise must not shrink meanwhile either.
  const uint64_t after =
      provisioned_bytes != 0
          ? provisioned_bytes
          : (current.read_only ? 0 : std::max(current.size_bytes, RoundUpToBlock(size_bytes)));
  if (after > before) {
    SHALE_RETURN_IF_ERROR(capacity_.CheckProvision(current.pool, after - before,
                                                   "volume '" + std::string(name) + "' grown to " +
                                                       FormatSize(after) + " provisioned (" +
                                                       FormatSize(after - before) + " more)"));
  }
  VolumeRecords extra = [&](uint64_t volume_id, MetaBatch* batch) {
    AddRecords(std::nullopt, records, volume_id, name, batch);
    CapacityPolicy::AddPromiseRecord(volume_id, after, batch);
  };
  Result<VolumeInfo> resized = engine_->ResizeVolume(name, size_bytes, extra);
  if (!resized.ok()) return resized;
  capacity_.AdoptPromise(resized->pool, resized->id, after);
  if (advice != nullptr && after > before) {
    *advice = capacity_.Advice(resized->pool, after - before);
  }
  return resized;
}

Result<VolumeInfo> VolumeLifecycle::SetLabels(std::string_view name,
                                              const std::map<std::string, std::string>& labels,
                                              uint64_t provisioned_bytes,
                                              const VolumeRecords& extra) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  std::lock_guard provision(provision_mu_);
  SHALE_ASSIGN_OR_RETURN(VolumeInfo current, engine_->GetVolume(name));
  const uint64_t before = capacity_.Promised(current);
  const uint64_t after = provisioned_bytes != 0 ? provisioned_bytes : before;
  if (after > before) {
    SHALE_RETURN_IF_ERROR(capacity_.CheckProvision(
        current.pool, after - before,
        "volume '" + std::string(name) + "' promised " + FormatSize(after)));
  }
  Result<VolumeInfo> set =
      engine_->SetVolumeLabels(name, labels, [&](uint64_t volume_id, MetaBatch* batch) {
        CapacityPolicy::AddPromiseRecord(volume_id, after, batch);
        if (extra) extra(volume_id, batch);
      });
  if (set.ok()) capacity_.AdoptPromise(set->pool, set->id, after);
  return set;
}

Status VolumeLifecycle::Delete(std::string_view name_view, const DeleteOptions& options) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name_view));
  const std::string name(name_view);
  SHALE_ASSIGN_OR_RETURN(VolumeInfo volume, engine_->GetVolume(name));
  auto run = [&] {
    return snapshots_->DeleteVolume(name, [&](uint64_t volume_id, MetaBatch* batch) {
      qos::QosManager::DeleteVolumeRecord(volume_id, batch);
      CapacityPolicy::DeletePromiseRecord(volume_id, batch);
      auto [begin, end] = FrontendRecordRange(volume_id);
      batch->DeleteRange(begin, end);
      if (options.extra_records) options.extra_records(volume_id, batch);
    });
  };
  Status deleted;
  ExportGate* gate = gate_.load();
  if (options.force && gate != nullptr) {
    // Requests held at a low rate would outlast the disconnect timeout: lift the volume's
    // limits while its clients drain, put them back if the delete fails.
    const bool suspended = qos_ != nullptr && qos_->SuspendLimits(name).ok();
    deleted = gate->WithExportClosed(name, options.disconnect_timeout, run);
    if (!deleted.ok() && suspended) qos_->ResumeLimits(name);
    if (deleted.ok()) {
      SHALE_LOG_INFO("volume deleted after disconnecting its clients", {"volume", name});
    }
  } else {
    deleted = run();
  }
  SHALE_RETURN_IF_ERROR(ExplainBusy(deleted, "volume", name, "delete", /*force_hint=*/true));
  if (qos_ != nullptr) qos_->ForgetVolume(name, volume.id);
  capacity_.ForgetPromise(volume.pool, volume.id);
  return Status::Ok();
}

Status VolumeLifecycle::DeletePool(std::string_view name, bool force) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("pool", name));
  // With force its volumes go too; their records go with the pool's metadata.
  std::vector<VolumeInfo> volumes;
  for (const VolumeInfo& v : engine_->ListVolumes()) {
    if (v.pool == name) volumes.push_back(v);
  }
  SHALE_RETURN_IF_ERROR(engine_->DeletePool(name, force));
  if (qos_ != nullptr) {
    for (const VolumeInfo& v : volumes) qos_->ForgetVolume(v.name, v.id);
  }
  capacity_.ForgetPool(std::string(name));
  return Status::Ok();
}

Result<PoolInfo> VolumeLifecycle::ExpandPool(std::string_view name, uint64_t size_bytes) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("pool", name));
  SHALE_ASSIGN_OR_RETURN(PoolInfo pool, engine_->ExpandPool(name, size_bytes));
  capacity_.Evaluate();  // a pool that was above a threshold may be below it now
  return pool;
}

Result<CapacitySettings> VolumeLifecycle::SetPoolCapacity(std::string_view name,
                                                          const CapacitySettingsUpdate& update) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("pool", name));
  SHALE_ASSIGN_OR_RETURN(CapacitySettings settings, capacity_.Update(name, update));
  capacity_.Evaluate();
  return settings;
}

Status VolumeLifecycle::SetProvisioned(const VolumeInfo& volume, uint64_t bytes) {
  SHALE_ASSIGN_OR_RETURN(VolumeInfo current, engine_->GetVolume(volume.name));
  if (current.id != volume.id || current.pool != volume.pool) {
    return Status::NotFound("volume '" + volume.name + "' was deleted meanwhile");
  }
  MetaBatch batch;
  CapacityPolicy::AddPromiseRecord(volume.id, bytes, &batch);
  SHALE_RETURN_IF_ERROR(engine_->WriteRecords(volume.pool, std::move(batch)));
  capacity_.AdoptPromise(volume.pool, volume.id, bytes);
  return Status::Ok();
}

Result<snapshot::SnapshotInfo> VolumeLifecycle::Snapshot(
    std::string_view volume, std::string_view name,
    const snapshot::CreateSnapshotOptions& options) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  if (SnapshotReplication* r = snapshot_replication_.load(); r != nullptr) {
    SHALE_ASSIGN_OR_RETURN(std::optional<snapshot::SnapshotInfo> taken,
                           r->Snapshot(volume, name, options));
    if (taken.has_value()) return std::move(taken).value();
  }
  return snapshots_->Create(volume, name, options);
}

Result<snapshot::SnapshotInfo> VolumeLifecycle::FindSnapshot(std::string_view ref) {
  Result<snapshot::SnapshotInfo> local = snapshots_->Get(ref);
  SnapshotReplication* r = snapshot_replication_.load();
  if (local.ok() || !local.status().IsNotFound() || r == nullptr) return local;
  Result<snapshot::SnapshotRef> parsed = snapshot::ParseSnapshotRef(ref);
  if (!parsed.ok()) return local;
  Result<snapshot::SnapshotInfo> remote = r->RemoteSnapshot(parsed->volume, parsed->snapshot);
  return remote.ok() || !remote.status().IsNotFound() ? remote : local;
}

Result<snapshot::DeleteSnapshotResult> VolumeLifecycle::DeleteSnapshot(
    std::string_view ref, const DeleteOptions& options) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_ASSIGN_OR_RETURN(snapshot::SnapshotRef parsed, snapshot::ParseSnapshotRef(ref));
  // The canonical spelling is the export name NBD clients used.
  const std::string name = parsed.ToString();
  SnapshotReplication* replication = snapshot_replication_.load();
  std::optional<snapshot::SnapshotInfo> before;
  if (replication != nullptr) {
    if (Result<snapshot::SnapshotInfo> got = snapshots_->Get(name); got.ok()) before = *got;
  }
  Result<snapshot::DeleteSnapshotResult> result = Status::Internal("not run");
  auto run = [&] {
    result = snapshots_->Delete(name);
    return result.status();
  };
  Status deleted;
  ExportGate* gate = gate_.load();
  if (options.force && gate != nullptr) {
    deleted = gate->WithExportClosed(name, options.disconnect_timeout, run);
  } else {
    deleted = run();
  }
  if (deleted.IsNotFound() && replication != nullptr) {
    // A replicated volume's snapshot asked of a node without a replica: the copies are elsewhere.
    SHALE_ASSIGN_OR_RETURN(bool elsewhere,
                           replication->DeleteCopiesElsewhere(parsed.volume, parsed.snapshot));
    if (elsewhere) return snapshot::DeleteSnapshotResult{};
  }
  SHALE_RETURN_IF_ERROR(ExplainBusy(deleted, "snapshot", name, "delete", /*force_hint=*/true));
  if (before.has_value()) replication->SnapshotDeleted(*before);
  return result;
}

Status VolumeLifecycle::Revert(std::string_view volume, std::string_view snapshot) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  Status reverted = snapshots_->Revert(volume, snapshot);
  return ExplainBusy(reverted, "volume", std::string(volume), "revert", /*force_hint=*/false);
}

Result<std::optional<std::string>> VolumeLifecycle::GetFrontendRecord(const VolumeInfo& volume,
                                                                      std::string_view frontend) {
  return engine_->GetRecord(volume.pool, FrontendRecordKey(volume.id, frontend));
}

Status VolumeLifecycle::PutFrontendRecord(const VolumeInfo& volume, std::string_view frontend,
                                          std::string_view value) {
  SHALE_RETURN_IF_ERROR(CheckRecords({FrontendRecord{std::string(frontend), std::string(value)}}));
  // The volume must still be the one described: a record of an id no volume has is never read,
  // but there is no reason to leave one.
  SHALE_ASSIGN_OR_RETURN(VolumeInfo current, engine_->GetVolume(volume.name));
  if (current.id != volume.id || current.pool != volume.pool) {
    return Status::NotFound("volume '" + volume.name + "' was deleted meanwhile");
  }
  MetaBatch batch;
  batch.Put(FrontendRecordKey(volume.id, frontend), value);
  return engine_->WriteRecords(volume.pool, std::move(batch));
}

}  // namespace shale::daemon
