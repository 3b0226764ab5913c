// ReplicatedVolumes: the QoS of a replicated volume follows it (docs/replication.md, "QoS of a
// replicated volume").
//
//   the membership's `qos` holds the settings (set fields only); `shale qos set` and CSI
//   ControllerModifyVolume, from any node, change it by compare-and-swap
//   -> the node serving the volume applies them to its local replica's QoS (QosManager::Set):
//      at once when the change was made there, when its target opens, and otherwise when the
//      watch on the volume records tells it (within a repair tick)
//   nodes that do not serve the volume keep whatever their replica last had; it is never used.
#include "daemon/replica_membership.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "qos/qos_manager.h"

namespace shale::daemon {

std::map<std::string, uint64_t> QosToMembership(const qos::QosSettings& settings) {
  std::map<std::string, uint64_t> out;
  for (const qos::SettingsField& f : qos::kSettingsFields) {
    if (settings.*(f.field) > 0) out[f.name] = static_cast<uint64_t>(settings.*(f.field));
  }
  return out;
}

Result<qos::QosSettings> QosFromMembership(const std::map<std::string, uint64_t>& fields) {
  qos::QosSettings settings;
  for (const auto& [name, value] : fields) {
    const qos::SettingsField* found = nullptr;
    for (const qos::SettingsField& f : qos::kSettingsFields) {
      if (name == f.name) found = &f;
    }
    if (found == nullptr) return Status::InvalidArgument("unknown QoS field '" + name + "'");
    settings.*(found->field) = static_cast<int64_t>(value);
  }
  SHALE_RETURN_IF_ERROR(settings.Validate());
  return settings;
}

Status ReplicatedVolumes::SetQos(const std::string& name, const qos::QosSettings& settings) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  SHALE_RETURN_IF_ERROR(settings.Validate());
  const std::map<std::string, uint64_t> fields = QosToMembership(settings.Normalized());
  SHALE_ASSIGN_OR_RETURN(
      cluster::VolumeRecord record,
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (next->qos == fields) return false;
        next->qos = fields;  // no change of in_sync or target: the epoch stays
        return true;
      }));
  SHALE_LOG_INFO("qos of replicated volume set", {"volume", name},
                 {"qos", settings.Normalized().ToString()},
                 {"served_by", record.membership.detached ? "" : record.membership.target});
  if (Find(name) != nullptr) ApplyQos(name, record.membership.qos);
  return Status::Ok();
}

Result<qos::QosSettings> ReplicatedVolumes::GetQos(const std::string& name) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  SHALE_ASSIGN_OR_RETURN(qos::QosSettings settings, QosFromMembership(record.membership.qos));
  return settings.Normalized();
}

void ReplicatedVolumes::ApplyQos(const std::string& name,
                                 const std::map<std::string, uint64_t>& fields) {
  qos::QosManager* qos = lifecycle_->qos();
  if (qos == nullptr) return;
  Result<qos::QosSettings> want = QosFromMembership(fields);
  if (!want.ok()) {
    SHALE_LOG_WARN("qos of replicated volume not applied", {"volume", name},
                   {"error", want.status().ToString()});
    return;
  }
  Result<qos::QosSettings> have = qos->Get(name);
  if (have.ok() && *have == want->Normalized()) return;
  if (Status st = qos->Set(name, *want); !st.ok()) {
    SHALE_LOG_WARN("qos of replicated volume not applied", {"volume", name},
                   {"error", st.ToString()});
    return;
  }
  SHALE_LOG_INFO("qos of replicated volume applied", {"volume", name},
                 {"qos", want->Normalized().ToString()});
}

Status ReplicatedVolumes::PrepareLocalReplica(const VolumeInfo& info,
                                              const cluster::Membership& m) {
  SHALE_RETURN_IF_ERROR(GrowLocalReplica(info, m.size_bytes));
  ApplyQos(info.name, m.qos);
  return Status::Ok();
}

void ReplicatedVolumes::WatchQos() {
  {
    std::lock_guard lock(mu_);
    if (qos_watch_ != nullptr || stopping_) return;
  }
  Result<std::unique_ptr<cluster::Watcher>> watch =
      store_->WatchVolumes([this](const cluster::VolumeUpdate& update) {
        std::lock_guard lock(mu_);
        for (const cluster::VolumeChange& c : update.changes) {
          if (!c.deleted && c.record.status.ok() && targets_.contains(c.record.name)) {
            qos_due_[c.record.name] = c.record.membership.qos;
          }
        }
      });
  if (!watch.ok()) {
    SHALE_LOG_WARN("watch of volume records not started (QoS changes made on other nodes wait)",
                   {"error", watch.status().ToString()});
    return;
  }
  std::lock_guard lock(mu_);
  qos_watch_ = std::move(watch).value();
}

void ReplicatedVolumes::ApplyDueQos() {
  std::map<std::string, std::map<std::string, uint64_t>> due;
  {
    std::lock_guard lock(mu_);
    due.swap(qos_due_);
  }
  for (const auto& [name, fields] : due) {
    if (Find(name) != nullptr) ApplyQos(name, fields);
  }
}

}  // namespace shale::daemon
