#include "csi/backup_params.h"

#include <google/protobuf/util/time_util.h>

#include <algorithm>

#include "csi/params.h"

namespace shale::csi {

bool IsBackupHandle(std::string_view snapshot_id) { return snapshot_id.starts_with("s3://"); }

Result<std::optional<backup::Target>> TakeBackupParams(std::map<std::string, std::string>* params) {
  auto take = [&](std::string_view key) -> std::optional<std::string> {
    auto it = params->find(std::string(key));
    if (it == params->end()) return std::nullopt;
    std::string v = it->second;
    params->erase(it);
    return v;
  };
  std::optional<std::string> to = take(kParamBackupTo);
  std::optional<std::string> endpoint = take(kParamBackupEndpoint);
  std::optional<std::string> region = take(kParamBackupRegion);
  if (!to) {
    if (endpoint || region) {
      return Status::InvalidArgument("backupEndpoint/backupRegion given without backupTo");
    }
    return std::optional<backup::Target>();
  }
  Result<backup::Location> where = backup::ParseLocation(*to);
  if (!where.ok()) return where.status().WithContext("parameter backupTo");
  backup::Target t{*where, {endpoint.value_or(""), region.value_or("")}};
  SHALE_RETURN_IF_ERROR(t.endpoint.Validate().WithContext("parameter backupEndpoint/backupRegion"));
  return std::optional<backup::Target>(t);
}

Result<backup::Manifest> ReadBackupHandle(backup::BackupManager* backups, std::string_view handle) {
  if (backups == nullptr)
    return Status::FailedPrecondition("backups are not enabled in this shaled");
  SHALE_ASSIGN_OR_RETURN(backup::BackupRef ref, backup::ParseBackupRef(handle));
  return backups->Get({ref.location, {}}, ref.id);
}

void FillBackupSnapshot(const backup::Manifest& m, std::string_view handle,
                        ::csi::v1::Snapshot* out) {
  out->set_snapshot_id(std::string(handle));
  out->set_source_volume_id(m.volume);
  uint64_t capacity = m.size_bytes;
  auto it = m.labels.find(std::string(kLabelCapacity));
  if (it != m.labels.end()) {
    char* end = nullptr;
    const uint64_t v = std::strtoull(it->second.c_str(), &end, 10);
    if (end != nullptr && *end == '\0' && v > 0) capacity = std::min(v, m.size_bytes);
  }
  out->set_size_bytes(static_cast<int64_t>(capacity));
  *out->mutable_creation_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(
      static_cast<int64_t>(m.snapshot_created_unix_ns));
  out->set_ready_to_use(true);
}

}  // namespace shale::csi
