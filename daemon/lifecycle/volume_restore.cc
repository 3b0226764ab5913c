// VolumeLifecycle::Restore and RecoverRestores: a volume created from a backup in S3
// (docs/backup.md, "Restoring"), with the marker that makes an interrupted restore undoable.
#include <nlohmann/json.hpp>

#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/log.h"

namespace shale::daemon {

namespace {

std::string RestoreRecord(std::string_view state, const std::string& backup,
                          const std::string& digest) {
  nlohmann::ordered_json j;
  j["state"] = state;
  j["backup"] = backup;
  j["digest"] = digest;
  return j.dump();
}

}  // namespace

Result<VolumeInfo> VolumeLifecycle::Restore(const RestoreSpec& spec) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  backup::BackupManager* backups = backups_.load();
  if (backups == nullptr)
    return Status::FailedPrecondition("backups are not enabled in this shaled");
  SHALE_ASSIGN_OR_RETURN(backup::BackupRef ref, backup::ParseBackupRef(spec.backup));
  SHALE_RETURN_IF_ERROR(ValidateName("volume", spec.volume.params.name));
  const backup::Target target{ref.location, spec.endpoint};
  if (engine_->GetVolume(spec.volume.params.name).ok()) {
    return Status::AlreadyExists("volume " + spec.volume.params.name + " already exists");
  }
  SHALE_ASSIGN_OR_RETURN(backup::Manifest manifest, backups->Get(target, ref.id));
  VolumeSpec vs = spec.volume;
  if (vs.params.size_bytes < manifest.size_bytes) vs.params.size_bytes = manifest.size_bytes;
  const std::string url = ref.ToString();
  vs.params.labels["backup.shale.io/source"] = url;
  vs.params.labels["backup.shale.io/digest"] = manifest.digest;
  vs.records.push_back(
      {std::string(kRestoreRecordFrontend), RestoreRecord("restoring", url, manifest.digest)});
  SHALE_ASSIGN_OR_RETURN(VolumeInfo created, Create(vs));
  SHALE_LOG_INFO("restore started", {"backup", url}, {"volume", created.name});

  Status st = [&]() -> Status {
    SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> handle, engine_->OpenVolume(created.name));
    return backups->RestoreInto(handle, manifest, target, {.progress = spec.progress});
  }();
  if (st.ok()) {
    st = PutFrontendRecord(created, kRestoreRecordFrontend,
                           RestoreRecord("restored", url, manifest.digest));
  }
  if (!st.ok()) {
    Status undone = Delete(created.name, {.force = true});
    if (!undone.ok()) {
      SHALE_LOG_ERROR("restore failed and its volume could not be deleted (retried at start)",
                      {"volume", created.name}, {"error", undone.ToString()});
      return st.WithContext("restore of " + url + " into " + created.name +
                            " failed (the volume is deleted at the next start)");
    }
    return st.WithContext("restore of " + url + " into " + created.name +
                          " failed (the volume was deleted)");
  }
  SHALE_LOG_INFO("restore finished", {"backup", url}, {"volume", created.name},
                 {"digest", manifest.digest});
  return engine_->GetVolume(created.name);
}

Status VolumeLifecycle::RecoverRestores() {
  for (const VolumeInfo& v : engine_->ListVolumes()) {
    Result<std::optional<std::string>> rec = GetFrontendRecord(v, kRestoreRecordFrontend);
    if (!rec.ok() || !rec->has_value()) continue;
    nlohmann::json j = nlohmann::json::parse(**rec, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || j.value("state", "") != "restoring") continue;
    SHALE_LOG_WARN("deleting a volume whose restore was interrupted", {"volume", v.name},
                   {"backup", j.value("backup", "")});
    SHALE_RETURN_IF_ERROR(
        Delete(v.name, {.force = true}).WithContext("delete half-restored volume " + v.name));
  }
  return Status::Ok();
}

}  // namespace shale::daemon
