// SnapshotManager::CreateGroup: snapshots of several volumes taken at one instant (group
// snapshots; docs/snapshots.md, "Group snapshots").
#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "snapshot/digest.h"
#include "snapshot/records.h"
#include "snapshot/snapshot_manager.h"

namespace shale::snapshot {

Result<std::vector<SnapshotInfo>> SnapshotManager::CreateGroup(
    const std::vector<std::string>& volumes, std::string_view name,
    const CreateSnapshotOptions& options, const GroupRecords& extra,
    const std::map<std::string, Labels>& member_labels) {
  SHALE_RETURN_IF_ERROR(ValidateName("snapshot", name));
  SHALE_RETURN_IF_ERROR(ValidateLabels(options.labels));
  for (const auto& [volume, labels] : member_labels) SHALE_RETURN_IF_ERROR(ValidateLabels(labels));
  if (volumes.empty()) return Status::InvalidArgument("a group snapshot needs a volume");
  Lock lock(mu_);
  std::vector<VolumeInfo> infos;
  std::vector<SnapshotRecord> recs;
  const uint64_t now = Clock::Real()->WallNanos();
  for (const std::string& volume : volumes) {
    SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
    SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(volume));
    SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
    const SnapshotRef ref{vol.name, std::string(name)};
    SHALE_ASSIGN_OR_RETURN(auto existing, LookupLocked(ref));
    if (existing) {
      return Status::AlreadyExists("snapshot '" + ref.ToString() + "' already exists");
    }
    SnapshotRecord rec;
    rec.set_volume(vol.name);
    rec.set_name(std::string(name));
    rec.set_source_volume_id(vol.id);
    rec.set_created_unix_ns(now);
    for (const auto& [k, v] : options.labels) (*rec.mutable_labels())[k] = v;
    if (auto own = member_labels.find(volume); own != member_labels.end()) {
      for (const auto& [k, v] : own->second) (*rec.mutable_labels())[k] = v;
    }
    rec.set_digest_state(DIGEST_PENDING);
    rec.set_digest_version(kDigestVersion);
    infos.push_back(std::move(vol));
    recs.push_back(std::move(rec));
  }
  // Each member's record commits with its pool's part of the freeze.
  auto images = engine_->FreezeVolumes(
      volumes, [&](std::string_view pool, const std::vector<uint64_t>& ids, MetaBatch* batch) {
        for (size_t i = 0; i < infos.size(); ++i) {
          if (infos[i].pool != pool) continue;
          recs[i].set_image_id(ids[i]);
          batch->Put(SnapshotKey(recs[i].volume() + "@" + recs[i].name()),
                     recs[i].SerializeAsString());
        }
        if (extra) extra(pool, batch);
      });
  if (!images.ok()) {
    return images.status().WithContext("group snapshot '" + std::string(name) + "'");
  }
  std::vector<SnapshotInfo> out;
  for (size_t i = 0; i < infos.size(); ++i) {
    SHALE_CHECK(recs[i].image_id() == (*images)[i], "group member image mismatch");
    Found found{infos[i].pool, recs[i].volume() + "@" + recs[i].name(), recs[i]};
    EnqueueDigestLocked(found);
    SHALE_ASSIGN_OR_RETURN(SnapshotInfo info, DescribeLocked(found, false, {}));
    out.push_back(std::move(info));
  }
  SHALE_LOG_INFO("group snapshot created", {"name", std::string(name)},
                 {"members", static_cast<uint64_t>(out.size())});
  return out;
}

}  // namespace shale::snapshot
