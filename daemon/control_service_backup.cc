// ControlService handlers for backups to S3: thin, validating wrappers around
// backup::BackupManager (reads, backups, verify, garbage collection) and the lifecycle's
// Restore (which creates the volume). docs/backup.md.
#include <chrono>

#include "backup/backup_manager.h"
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "snapshot/names.h"

namespace shale::daemon {

using internal::Fail;

namespace {

// What a backup RPC works on: the manager, the place and, for one backup, its id.
struct BackupRequest {
  backup::BackupManager* backups = nullptr;
  backup::Target target;
  std::string id;
};

// `t` names a place ("s3://BUCKET/PREFIX"), or one backup ("s3://BUCKET/PREFIX/ID") when
// `one_backup`; FailedPrecondition when this shaled has no backup manager.
Status Resolve(VolumeLifecycle* lifecycle, const v1::S3Target& t, bool one_backup,
               BackupRequest* out) {
  out->backups = lifecycle->backups();
  if (out->backups == nullptr) {
    return Status::FailedPrecondition("backups are not enabled in this shaled");
  }
  if (one_backup) {
    SHALE_ASSIGN_OR_RETURN(backup::BackupRef ref, backup::ParseBackupRef(t.url()));
    out->target.location = ref.location;
    out->id = ref.id;
  } else {
    SHALE_ASSIGN_OR_RETURN(out->target.location, backup::ParseLocation(t.url()));
  }
  out->target.endpoint = {t.endpoint(), t.region()};
  return out->target.endpoint.Validate();
}

void ToProto(const backup::Manifest& m, const backup::Location& where, v1::Backup* out) {
  out->set_id(m.id);
  out->set_url(where.ToString() + "/" + m.id);
  out->set_volume(m.volume);
  out->set_snapshot(m.snapshot);
  out->set_created_unix_ns(m.created_unix_ns);
  out->set_size_bytes(m.size_bytes);
  out->set_digest(m.digest);
  out->mutable_labels()->insert(m.labels.begin(), m.labels.end());
  out->set_base(m.base);
  out->set_snapshot_created_unix_ns(m.snapshot_created_unix_ns);
  out->set_chunk_count(m.chunk_count);
  out->set_stored_bytes(m.stored_bytes);
  out->set_data_bytes(m.data_bytes);
  out->set_uploaded_chunks(m.uploaded_chunks);
  out->set_uploaded_bytes(m.uploaded_bytes);
  out->set_read_bytes(m.read_bytes);
  out->set_host(m.provenance.host);
  out->set_shale_version(m.provenance.shale_version);
  out->set_pool(m.provenance.pool);
}

void ToProto(const backup::GcResult& r, v1::GcBackupsResponse* out) {
  for (const std::string& id : r.deleted) out->add_deleted(id);
  out->set_chunks_deleted(r.chunks_deleted);
  out->set_bytes_freed(r.bytes_freed);
  out->set_chunks_kept(r.chunks_kept);
  out->set_sweep_deferred(r.sweep_deferred);
  out->set_deferred_reason(r.deferred_reason);
}

// Streams progress at most every 250 ms (and the first report at once); stops the operation
// when the client went away.
class ProgressStream {
 public:
  ProgressStream(grpc::ServerContext* ctx, grpc::ServerWriter<v1::BackupProgress>* writer)
      : ctx_(ctx), writer_(writer) {}
  backup::ProgressFn Fn() {
    return [this](const backup::Progress& p) {
      if (ctx_->IsCancelled()) return false;
      const auto now = std::chrono::steady_clock::now();
      if (sent_ && now - last_ < ControlService::kProgressInterval) return true;
      sent_ = true;
      last_ = now;
      v1::BackupProgress m;
      m.set_phase(p.phase);
      m.set_done_bytes(p.done_bytes);
      m.set_total_bytes(p.total_bytes);
      m.set_uploaded_bytes(p.uploaded_bytes);
      m.set_chunks_done(p.chunks_done);
      m.set_chunks_total(p.chunks_total);
      writer_->Write(m);
      return true;
    };
  }

 private:
  grpc::ServerContext* const ctx_;
  grpc::ServerWriter<v1::BackupProgress>* const writer_;
  bool sent_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

grpc::Status ControlService::CreateBackup(grpc::ServerContext* ctx,
                                          const v1::CreateBackupRequest* req,
                                          grpc::ServerWriter<v1::BackupProgress>* writer) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  BackupRequest b;
  Status st = snapshot::ParseSnapshotRef(req->snapshot()).status();
  if (st.ok()) st = Resolve(lifecycle_, req->to(), false, &b);
  if (!st.ok()) return Fail(ctx, st);
  ProgressStream progress(ctx, writer);
  Result<backup::CreateResult> r = b.backups->Create(
      req->snapshot(), b.target, {.full = req->full(), .progress = progress.Fn()});
  if (!r.ok()) return Fail(ctx, r.status());
  v1::BackupProgress last;
  last.set_phase("done");
  last.set_finished(true);
  ToProto(r->manifest, b.target.location, last.mutable_backup());
  last.mutable_run()->set_full_reason(r->full_reason);
  last.mutable_run()->set_reused_chunks(r->reused_chunks);
  last.mutable_run()->set_zero_chunks(r->zero_chunks);
  last.mutable_run()->set_requests(r->requests);
  last.mutable_run()->set_bytes_sent(r->bytes_sent);
  writer->Write(last);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListBackups(grpc::ServerContext* ctx,
                                         const v1::ListBackupsRequest* req,
                                         v1::ListBackupsResponse* resp) {
  BackupRequest b;
  if (Status st = Resolve(lifecycle_, req->place(), false, &b); !st.ok()) return Fail(ctx, st);
  Result<std::vector<backup::Manifest>> list = b.backups->List(b.target, req->volume());
  if (!list.ok()) return Fail(ctx, list.status());
  for (const backup::Manifest& m : *list) ToProto(m, b.target.location, resp->add_backups());
  return grpc::Status::OK;
}

grpc::Status ControlService::GetBackup(grpc::ServerContext* ctx, const v1::GetBackupRequest* req,
                                       v1::Backup* resp) {
  BackupRequest b;
  if (Status st = Resolve(lifecycle_, req->backup(), true, &b); !st.ok()) return Fail(ctx, st);
  Result<backup::Manifest> m = b.backups->Get(b.target, b.id);
  if (!m.ok()) return Fail(ctx, m.status());
  ToProto(*m, b.target.location, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::VerifyBackup(grpc::ServerContext* ctx,
                                          const v1::VerifyBackupRequest* req,
                                          grpc::ServerWriter<v1::BackupProgress>* writer) {
  BackupRequest b;
  if (Status st = Resolve(lifecycle_, req->backup(), true, &b); !st.ok()) return Fail(ctx, st);
  ProgressStream progress(ctx, writer);
  Result<backup::VerifyResult> r = b.backups->Verify(b.target, b.id, progress.Fn());
  if (!r.ok()) return Fail(ctx, r.status());
  v1::BackupProgress last;
  last.set_phase("done");
  last.set_finished(true);
  last.set_digest(r->digest);
  last.set_chunks_done(r->chunks_checked);
  ToProto(r->manifest, b.target.location, last.mutable_backup());
  writer->Write(last);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeleteBackup(grpc::ServerContext* ctx,
                                          const v1::DeleteBackupRequest* req,
                                          v1::GcBackupsResponse* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  BackupRequest b;
  if (Status st = Resolve(lifecycle_, req->backup(), true, &b); !st.ok()) return Fail(ctx, st);
  Result<backup::GcResult> r = b.backups->Delete(b.target, b.id);
  if (!r.ok()) return Fail(ctx, r.status());
  ToProto(*r, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::PruneBackups(grpc::ServerContext* ctx,
                                          const v1::PruneBackupsRequest* req,
                                          v1::GcBackupsResponse* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  BackupRequest b;
  if (Status st = Resolve(lifecycle_, req->place(), false, &b); !st.ok()) return Fail(ctx, st);
  Result<backup::GcResult> r = b.backups->Prune(b.target, req->keep(), req->volume());
  if (!r.ok()) return Fail(ctx, r.status());
  ToProto(*r, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::RestoreBackup(grpc::ServerContext* ctx,
                                           const v1::RestoreBackupRequest* req,
                                           grpc::ServerWriter<v1::BackupProgress>* writer) {
  Status st = ValidateName("volume", req->volume());
  if (st.ok() && !req->pool().empty()) st = ValidateName("pool", req->pool());
  BackupRequest b;
  if (st.ok()) st = Resolve(lifecycle_, req->backup(), true, &b);
  if (!st.ok()) return Fail(ctx, st);
  ProgressStream progress(ctx, writer);
  RestoreSpec spec;
  spec.backup = req->backup().url();
  spec.endpoint = b.target.endpoint;
  spec.volume.params.name = req->volume();
  spec.volume.params.pool = req->pool();
  spec.progress = progress.Fn();
  Result<VolumeInfo> restored = [&]() -> Result<VolumeInfo> {
    if (!internal::WantsReplicas(*req)) return lifecycle_->Restore(spec);
    ReplicatedSpec from;
    from.backup = spec.backup;
    from.backup_endpoint = spec.endpoint;
    from.restore_progress = spec.progress;
    return internal::CreateReplicated(replicated_, spec.volume, internal::ReplicaFieldsOf(*req),
                                      nullptr, std::move(from));
  }();
  if (!restored.ok()) return Fail(ctx, restored.status());
  v1::BackupProgress last;
  last.set_phase("done");
  last.set_finished(true);
  if (Status d = DescribeVolume(restored->name, last.mutable_volume()); !d.ok()) {
    return Fail(ctx, d);
  }
  last.set_digest(restored->labels.count("backup.shale.io/digest") != 0
                      ? restored->labels.at("backup.shale.io/digest")
                      : std::string());
  writer->Write(last);
  return grpc::Status::OK;
}

}  // namespace shale::daemon
