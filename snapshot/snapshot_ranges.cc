// SnapshotManager: block metadata of snapshots — allocated ranges and changed ranges between
// two snapshots of a volume (the CSI SnapshotMetadata service; docs/csi.md).
#include "snapshot/records.h"
#include "snapshot/snapshot_manager.h"
#include "snapshot/volume_scan.h"

namespace shale::snapshot {

Result<SnapshotManager::Ranges> SnapshotManager::AllocatedRanges(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  std::shared_ptr<VolumeHandle> view;
  Ranges out;
  {
    Lock lock(mu_);
    SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
    SHALE_ASSIGN_OR_RETURN(ImageInfo image, engine_->GetImage(found.pool, found.rec.image_id()));
    out.size_bytes = image.size_bytes;
    // The view keeps the snapshot from being deleted while its map is read.
    SHALE_ASSIGN_OR_RETURN(view, engine_->OpenImage(found.pool, found.rec.image_id()));
  }
  SHALE_ASSIGN_OR_RETURN(std::vector<AllocationRun> runs, QueryRuns(*view, 0, out.size_bytes));
  for (const AllocationRun& run : runs) {
    if (run.zero || run.length == 0) continue;
    if (!out.ranges.empty() && out.ranges.back().first + out.ranges.back().second == run.offset) {
      out.ranges.back().second += run.length;
    } else {
      out.ranges.emplace_back(run.offset, run.length);
    }
  }
  return out;
}

Result<SnapshotManager::Ranges> SnapshotManager::ChangedRanges(std::string_view base,
                                                               std::string_view target) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef b, ParseSnapshotRef(base));
  SHALE_ASSIGN_OR_RETURN(SnapshotRef t, ParseSnapshotRef(target));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(Found older, FindLocked(b));
  SHALE_ASSIGN_OR_RETURN(Found newer, FindLocked(t));
  if (older.pool != newer.pool || older.rec.source_volume_id() != newer.rec.source_volume_id()) {
    return Status::InvalidArgument("snapshots " + older.key + " and " + newer.key +
                                   " are not of the same volume");
  }
  SHALE_ASSIGN_OR_RETURN(ImageInfo image, engine_->GetImage(newer.pool, newer.rec.image_id()));
  Ranges out;
  out.size_bytes = image.size_bytes;
  if (older.rec.image_id() == newer.rec.image_id()) return out;
  if (older.rec.created_unix_ns() > newer.rec.created_unix_ns()) {
    return Status::InvalidArgument("base snapshot " + older.key + " was taken after " + newer.key);
  }
  auto changed = engine_->ChangedRanges(newer.pool, older.rec.image_id(), newer.rec.image_id());
  if (!changed.ok()) {
    if (changed.status().code() == StatusCode::kInvalidArgument) {
      return Status::FailedPrecondition(
          "snapshot " + older.key + " is not in the history of " + newer.key +
          " (the volume was reverted past it); read all of " + newer.key + " instead");
    }
    return changed.status();
  }
  out.ranges = std::move(changed).value();
  return out;
}

}  // namespace shale::snapshot
