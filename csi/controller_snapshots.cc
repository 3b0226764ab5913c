// ControllerService: snapshots (CreateSnapshot, also backups to S3 through the class's
// parameters; DeleteSnapshot; ListSnapshots with paging). docs/csi.md.
#include <set>

#include "csi/backup_params.h"
#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/log.h"
#include "engine/engine.h"
#include "snapshot/snapshot_manager.h"

namespace shale::csi {

namespace v1 = ::csi::v1;

grpc::Status ControllerService::CreateSnapshot(grpc::ServerContext*,
                                               const v1::CreateSnapshotRequest* request,
                                               v1::CreateSnapshotResponse* response) {
  if (grpc::Status st = RequireFields("CreateSnapshot",
                                      {{"name", !request->name().empty()},
                                       {"source_volume_id", !request->source_volume_id().empty()}});
      !st.ok()) {
    return st;
  }
  snapshot::Labels labels = ToMap(request->parameters());
  Result<std::optional<backup::Target>> backup_to = TakeBackupParams(&labels);
  if (!backup_to.ok()) return ToGrpc(backup_to.status());
  if (*backup_to && lifecycle_->backups() == nullptr) {
    return Precondition("backupTo given but backups are not enabled in this shaled");
  }
  Status valid = snapshot::ValidateLabels(labels);
  if (!valid.ok()) {
    return Invalid("snapshot parameters become labels: " + std::string(valid.message()));
  }
  const std::string name = ShaleNameFor(request->name());
  std::lock_guard lock(mu_);
  snapshot::ListOptions lo;
  lo.with_space = false;
  auto all = snapshots_->List(lo);
  if (!all.ok()) return ToGrpc(all.status());
  for (const snapshot::SnapshotInfo& s : *all) {
    if (s.name != name) continue;
    if (s.volume != request->source_volume_id()) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          "snapshot name " + request->name() + " is taken by " + s.full_name());
    }
    FillCsiSnapshot(s, response->mutable_snapshot());
    return BackUp(s.full_name(), *backup_to, response);
  }
  auto volume = FindAnywhere(request->source_volume_id(), "source volume");
  if (!volume.ok()) return ToGrpc(volume.status());
  if (volume->pool.empty() && options_.remote_snapshots) {
    // A replicated volume this node holds none of: its snapshots are the copies on its replicas.
    for (const snapshot::SnapshotInfo& s : options_.remote_snapshots(volume->name)) {
      if (s.name != name) continue;
      FillCsiSnapshot(s, response->mutable_snapshot());
      return BackUp(s.full_name(), *backup_to, response);
    }
  }
  labels[std::string(kLabelManaged)] = "true";
  labels[std::string(kLabelCapacity)] = std::to_string(CsiCapacity(engine_, *volume));
  if (*backup_to) labels[std::string(kLabelBackupTo)] = (*backup_to)->location.ToString();
  snapshot::CreateSnapshotOptions o;
  o.labels = labels;
  auto created = lifecycle_->Snapshot(volume->name, name, o);
  if (!created.ok()) return ToGrpc(created.status().WithContext("snapshot " + volume->name));
  FillCsiSnapshot(*created, response->mutable_snapshot());
  return BackUp(created->full_name(), *backup_to, response);
}

grpc::Status ControllerService::BackUp(const std::string& ref,
                                       const std::optional<backup::Target>& to,
                                       v1::CreateSnapshotResponse* response) {
  if (!to) return grpc::Status::OK;
  // Ready once the upload has finished: the snapshotter calls again until then. A failed
  // backup is reported once; the next call starts it again.
  Result<backup::BackupJob> job = lifecycle_->backups()->EnsureBackup(ref, *to);
  if (!job.ok()) return ToGrpc(job.status().WithContext("back up " + ref));
  if (job->state == backup::BackupJob::State::kFailed) {
    return ToGrpc(job->error.WithContext("back up " + ref + " to " + to->location.ToString()));
  }
  response->mutable_snapshot()->set_ready_to_use(job->state == backup::BackupJob::State::kDone);
  return grpc::Status::OK;
}

grpc::Status ControllerService::DeleteSnapshot(grpc::ServerContext*,
                                               const v1::DeleteSnapshotRequest* request,
                                               v1::DeleteSnapshotResponse*) {
  if (grpc::Status st =
          RequireFields("DeleteSnapshot", {{"snapshot_id", !request->snapshot_id().empty()}});
      !st.ok()) {
    return st;
  }
  if (IsBackupHandle(request->snapshot_id())) {
    // A pre-provisioned backup with deletionPolicy Delete: the backup goes (and its chunks no
    // other backup uses).
    Result<backup::BackupRef> ref = backup::ParseBackupRef(request->snapshot_id());
    if (!ref.ok() || lifecycle_->backups() == nullptr) return grpc::Status::OK;
    auto gone = lifecycle_->backups()->Delete({ref->location, {}}, ref->id);
    if (!gone.ok() && !gone.status().IsNotFound()) return ToGrpc(gone.status());
    return grpc::Status::OK;
  }
  if (!snapshot::ParseSnapshotRef(request->snapshot_id()).ok()) return grpc::Status::OK;
  std::lock_guard lock(mu_);
  auto deleted = lifecycle_->DeleteSnapshot(request->snapshot_id());
  if (!deleted.ok() && !deleted.status().IsNotFound()) return ToGrpc(deleted.status());
  return grpc::Status::OK;
}

grpc::Status ControllerService::ListSnapshots(grpc::ServerContext*,
                                              const v1::ListSnapshotsRequest* request,
                                              v1::ListSnapshotsResponse* response) {
  std::string after;
  if (grpc::Status st = PageStart(request->max_entries(), request->starting_token(), &after);
      !st.ok()) {
    return st;
  }
  std::vector<snapshot::SnapshotInfo> snaps;
  if (IsBackupHandle(request->snapshot_id())) {
    auto m = ReadBackupHandle(lifecycle_->backups(), request->snapshot_id());
    if (!m.ok()) {
      if (m.status().IsNotFound() || m.status().code() == StatusCode::kInvalidArgument) {
        return grpc::Status::OK;
      }
      return ToGrpc(m.status());
    }
    if (request->source_volume_id().empty() || request->source_volume_id() == m->volume) {
      FillBackupSnapshot(*m, request->snapshot_id(), response->add_entries()->mutable_snapshot());
    }
    return grpc::Status::OK;
  }
  if (!request->snapshot_id().empty()) {
    if (!snapshot::ParseSnapshotRef(request->snapshot_id()).ok()) return grpc::Status::OK;
    // (A snapshot of a replicated volume this node holds no replica of: as its replicas hold it;
    // the snapshotter asks whichever node its VolumeSnapshotContent names, also after a drain.)
    auto s = lifecycle_->FindSnapshot(request->snapshot_id());
    if (!s.ok()) {
      if (s.status().IsNotFound()) return grpc::Status::OK;
      return ToGrpc(s.status());
    }
    if (!s->implicit &&
        (request->source_volume_id().empty() || s->volume == request->source_volume_id())) {
      snaps.push_back(*s);
    }
  } else {
    snapshot::ListOptions lo;
    lo.with_space = false;
    if (!request->source_volume_id().empty()) {
      if (!ValidateName("volume", request->source_volume_id()).ok()) return grpc::Status::OK;
      lo.volume = request->source_volume_id();
    }
    auto all = snapshots_->List(lo);
    if (!all.ok() && !all.status().IsNotFound()) return ToGrpc(all.status());
    if (all.ok()) snaps = std::move(all).value();
    // Of one replicated volume this node holds no replica of (none made here, or a drain moved
    // it away and left the older copies here): its replicas' copies too, the local ones first.
    if (!lo.volume.empty() && options_.remote_snapshots &&
        (snaps.empty() || engine_->GetVolume(lo.volume).status().IsNotFound())) {
      std::set<std::string> here;
      for (const snapshot::SnapshotInfo& s : snaps) here.insert(s.name);
      for (snapshot::SnapshotInfo& s : options_.remote_snapshots(lo.volume)) {
        if (!here.contains(s.name)) snaps.push_back(std::move(s));
      }
    }
  }
  response->set_next_token(Page(
      std::move(snaps), after, request->max_entries(),
      [](const snapshot::SnapshotInfo& s) { return s.full_name(); },
      [&](const snapshot::SnapshotInfo& s) {
        FillCsiSnapshot(s, response->add_entries()->mutable_snapshot());
      }));
  return grpc::Status::OK;
}

}  // namespace shale::csi
