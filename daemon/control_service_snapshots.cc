// ControlService handlers for snapshots and clones: thin, validating wrappers around
// snapshot::SnapshotManager (docs/snapshots.md, "User-level semantics").
#include <sys/stat.h>

#include <algorithm>
#include <set>
#include <string_view>
#include <utility>

#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "snapshot/names.h"

namespace shale::daemon {

using internal::Fail;
using internal::ToProto;

namespace {

v1::DigestState ToProtoDigestState(snapshot::DigestState state) {
  switch (state) {
    case snapshot::DigestState::kPending:
      return v1::DIGEST_STATE_PENDING;
    case snapshot::DigestState::kReady:
      return v1::DIGEST_STATE_READY;
    case snapshot::DigestState::kFailed:
      return v1::DIGEST_STATE_FAILED;
  }
  return v1::DIGEST_STATE_UNSPECIFIED;
}

// "VOLUME@SNAP" fields: the snapshot layer's parser names what is wrong ("missing '@'", ...).
Status CheckSnapshotRef(std::string_view ref) { return snapshot::ParseSnapshotRef(ref).status(); }

// Stream files live on shaled's host; the daemon's working directory means nothing to a caller.
Status CheckStreamPath(std::string_view path) {
  if (path.empty()) return Status::InvalidArgument("stream file path must not be empty");
  if (path.size() > kMaxStreamPathLength) {
    return Status::InvalidArgument("stream file path is " + std::to_string(path.size()) +
                                   " bytes long; the limit is " +
                                   std::to_string(kMaxStreamPathLength));
  }
  if (path.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("stream file path contains a NUL byte");
  }
  if (path.front() != '/') {
    return Status::InvalidArgument("stream file path '" + std::string(path) +
                                   "' must be absolute (it is a path on shaled's host)");
  }
  return Status::Ok();
}

}  // namespace

namespace internal {

void ToProto(const snapshot::CloneInfo& in, v1::CloneInfo* out) {
  out->set_volume(in.volume);
  out->set_source(in.source);
  out->set_source_volume(in.source_volume);
  out->set_source_snapshot(in.source_snapshot);
  out->set_implicit_source(in.implicit_source);
  out->set_source_exists(in.source_exists);
  out->set_read_only(in.read_only);
  out->set_source_digest(in.source_digest);
  out->set_created_unix_ns(in.created_unix_ns);
  out->set_detached(in.detached);
  out->set_detached_unix_ns(in.detached_unix_ns);
}

void ToProto(const snapshot::SnapshotInfo& in, v1::Snapshot* out) {
  out->set_name(in.full_name());
  out->set_volume(in.volume);
  out->set_snapshot(in.name);
  out->set_pool(in.pool);
  out->set_volume_exists(in.source_volume_live);
  out->set_size_bytes(in.size_bytes);
  out->set_created_unix_ns(in.created_unix_ns);
  out->mutable_labels()->insert(in.labels.begin(), in.labels.end());
  out->set_implicit(in.implicit);
  out->set_implicit_for(in.implicit_for);
  out->set_digest_state(ToProtoDigestState(in.digest_state));
  out->set_digest(in.digest);
  out->set_digest_error(in.digest_error);
  out->set_digest_done_bytes(in.digest_done_bytes);
  out->set_digest_total_bytes(in.digest_total_bytes);
  out->set_data_bytes(in.data_bytes);
  out->set_exclusive_bytes(in.exclusive_bytes);
  out->set_shared_bytes(in.shared_bytes);
  for (const std::string& clone : in.clones) out->add_clones(clone);
  out->set_commit_pending(!in.durable);
}

}  // namespace internal

// ---------------------------------------------------------------------------------------------
// Snapshots

grpc::Status ControlService::CreateSnapshot(grpc::ServerContext* ctx,
                                            const v1::CreateSnapshotRequest* req,
                                            v1::Snapshot* resp) {
  Labels labels(req->labels().begin(), req->labels().end());
  Status valid = ValidateName("volume", req->volume());
  if (valid.ok()) valid = ValidateName("snapshot", req->name());
  if (!valid.ok()) return Fail(ctx, valid);
  Result<snapshot::SnapshotInfo> snap = lifecycle_->Snapshot(req->volume(), req->name(),
                                                             {.labels = std::move(labels),
                                                              .wait_digest = req->wait_digest(),
                                                              .wait_durable = req->wait_durable()});
  if (!snap.ok()) return Fail(ctx, snap.status());
  ToProto(*snap, resp);
  AddExportInfo(resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListSnapshots(grpc::ServerContext* ctx,
                                           const v1::ListSnapshotsRequest* req,
                                           v1::ListSnapshotsResponse* resp) {
  if (!req->volume().empty()) {
    Status valid = ValidateName("volume", req->volume());
    if (!valid.ok()) return Fail(ctx, valid);
  }
  // A volume that no longer exists may still have snapshots, so an unknown name is not an
  // error here: it lists what there is.
  Result<std::vector<snapshot::SnapshotInfo>> snaps = snapshots_->List(
      {.volume = req->volume(), .include_implicit = req->include_implicit(), .with_space = true});
  if (!snaps.ok()) return Fail(ctx, snaps.status());
  for (const snapshot::SnapshotInfo& snap : *snaps) {
    v1::Snapshot* out = resp->add_snapshots();
    ToProto(snap, out);
    AddExportInfo(out);
  }
  // Volumes this node serves without a replica: their snapshots are their replicas' copies
  // (a copy this node kept from when it held a replica is listed once, as the local one).
  if (replicated_ != nullptr) {
    std::set<std::string> local;
    for (const snapshot::SnapshotInfo& snap : *snaps) local.insert(snap.full_name());
    bool added = false;
    for (const snapshot::SnapshotInfo& snap : replicated_->RemoteSnapshots(req->volume())) {
      if (local.contains(snap.full_name())) continue;
      ToProto(snap, resp->add_snapshots());  // (not exported here: no local copy)
      added = true;
    }
    if (added) {
      std::stable_sort(resp->mutable_snapshots()->begin(), resp->mutable_snapshots()->end(),
                       [](const v1::Snapshot& x, const v1::Snapshot& y) {
                         return std::make_pair(std::string_view(x.volume()), x.created_unix_ns()) <
                                std::make_pair(std::string_view(y.volume()), y.created_unix_ns());
                       });
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::GetSnapshot(grpc::ServerContext* ctx,
                                         const v1::GetSnapshotRequest* req, v1::Snapshot* resp) {
  if (Status valid = CheckSnapshotRef(req->name()); !valid.ok()) return Fail(ctx, valid);
  Result<snapshot::SnapshotInfo> snap = snapshots_->Get(req->name());
  if (!snap.ok() && snap.status().IsNotFound() && replicated_ != nullptr) {
    // A replicated volume this node holds no replica of: its snapshots are on the replicas.
    const std::string volume = req->name().substr(0, req->name().find('@'));
    for (const snapshot::SnapshotInfo& remote : replicated_->RemoteSnapshots(volume)) {
      if (remote.full_name() != req->name()) continue;
      ToProto(remote, resp);  // as an in-sync replica holds it (not exported here)
      return grpc::Status::OK;
    }
    std::string holders;
    for (const std::string& n : replicated_->HoldersElsewhere(volume)) {
      holders += (holders.empty() ? "" : ", ") + n;
    }
    if (!holders.empty()) {
      return Fail(ctx, Status::NotFound("snapshot '" + req->name() +
                                        "' is not on this node, which holds no replica of "
                                        "replicated volume '" +
                                        volume + "': its snapshots' copies are on " + holders +
                                        " (look there)"));
    }
  }
  if (!snap.ok()) return Fail(ctx, snap.status());
  ToProto(*snap, resp);
  AddExportInfo(resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeleteSnapshot(grpc::ServerContext* ctx,
                                            const v1::DeleteSnapshotRequest* req,
                                            v1::DeleteSnapshotResponse* resp) {
  Result<snapshot::DeleteSnapshotResult> result = lifecycle_->DeleteSnapshot(
      req->name(), {.force = req->force(), .disconnect_timeout = kForceDisconnectTimeout});
  if (!result.ok()) return Fail(ctx, result.status());
  for (const std::string& clone : result->still_read_by) resp->add_still_read_by(clone);
  return grpc::Status::OK;
}

grpc::Status ControlService::VerifySnapshot(grpc::ServerContext* ctx,
                                            const v1::VerifySnapshotRequest* req,
                                            v1::VerifySnapshotResponse* resp) {
  if (Status valid = CheckSnapshotRef(req->name()); !valid.ok()) return Fail(ctx, valid);
  Result<std::string> digest = snapshots_->Verify(req->name());
  if (!digest.ok()) return Fail(ctx, digest.status());
  resp->set_name(snapshot::ParseSnapshotRef(req->name())->ToString());
  resp->set_digest(*digest);
  if (replicated_ == nullptr) return grpc::Status::OK;
  // A replicated volume's snapshot: every copy its label lists must hash the same.
  Result<snapshot::SnapshotInfo> snap = snapshots_->Get(req->name());
  if (!snap.ok()) return Fail(ctx, snap.status());
  std::string bad;
  for (const ReplicaDigest& d : replicated_->VerifyReplicas(*snap)) {
    v1::ReplicaSnapshotDigest* out = resp->add_replicas();
    out->set_node(d.node);
    out->set_digest(d.digest);
    if (!d.status.ok()) out->set_error(d.status.ToString());
    if (!d.status.ok() || d.digest != *digest) {
      bad += (bad.empty() ? "" : "; ") + d.node + ": " +
             (d.status.ok() ? "digest " + d.digest : d.status.ToString());
    }
  }
  if (!bad.empty()) {
    return Fail(ctx, Status::Corruption("snapshot " + resp->name() + " has digest " + *digest +
                                        " on this node, but not on every replica: " + bad));
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::ExportSnapshot(
    grpc::ServerContext* ctx, const v1::ExportSnapshotRequest* req,
    grpc::ServerWriter<v1::ExportSnapshotProgress>* writer) {
  return internal::StreamWork(this, &ControlService::ExportSnapshotWork, ctx, req, writer);
}

Status ControlService::ExportSnapshotWork(grpc::ServerContext* ctx,
                                          const v1::ExportSnapshotRequest* req,
                                          v1::ExportSnapshotResponse* resp,
                                          ProgressCounter* progress) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return gate;
  Status valid = CheckSnapshotRef(req->name());
  if (valid.ok()) valid = CheckStreamPath(req->path());
  if (valid.ok() && !req->base().empty()) valid = CheckSnapshotRef(req->base());
  if (!valid.ok()) return valid;
  // A client that goes away (Ctrl-C on `shale snapshot export`) cancels the export: shaled
  // stops at the next piece and removes the partial file.
  snapshot::ExportOptions options{.base = req->base(),
                                  .overwrite = req->overwrite(),
                                  .cancelled = [ctx] { return ctx->IsCancelled(); }};
  if (progress != nullptr) {
    options.progress = [progress](uint64_t done, uint64_t total) { progress->Set(done, total); };
  }
  Result<snapshot::ExportResult> exported = snapshots_->Export(req->name(), req->path(), options);
  if (!exported.ok()) {
    Status st = exported.status();
    if (st.code() == StatusCode::kAlreadyExists) {
      st = Status::AlreadyExists(std::string(st.message()) +
                                 "; choose another file or overwrite it (--overwrite)");
    }
    return st;
  }
  resp->set_name(exported->snapshot);
  resp->set_path(req->path());
  resp->set_base(exported->base);
  resp->set_content_compared(exported->content_compared);
  resp->set_stream_bytes(exported->stream_bytes);
  resp->set_data_bytes(exported->data_bytes);
  resp->set_records(exported->records);
  resp->set_digest(exported->digest);
  return Status::Ok();
}

grpc::Status ControlService::ImportSnapshot(
    grpc::ServerContext* ctx, const v1::ImportSnapshotRequest* req,
    grpc::ServerWriter<v1::ImportSnapshotProgress>* writer) {
  return internal::StreamWork(this, &ControlService::ImportSnapshotWork, ctx, req, writer);
}

Status ControlService::ImportSnapshotWork(grpc::ServerContext* ctx,
                                          const v1::ImportSnapshotRequest* req,
                                          v1::ImportSnapshotResponse* resp,
                                          ProgressCounter* progress) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return gate;
  Status valid = CheckStreamPath(req->path());
  if (valid.ok()) valid = ValidateName("volume", req->volume());
  if (valid.ok() && !req->pool().empty()) valid = ValidateName("pool", req->pool());
  if (!valid.ok()) return valid;
  // Likewise for an import: it is undone like any failed import.
  snapshot::ImportOptions options{.pool = req->pool(),
                                  .cancelled = [ctx] { return ctx->IsCancelled(); }};
  struct stat st {};
  if (progress != nullptr && stat(req->path().c_str(), &st) == 0 && st.st_size > 0) {
    const auto size = static_cast<uint64_t>(st.st_size);
    options.progress = [progress, size](uint64_t read) { progress->Set(read, size); };
  }
  Result<snapshot::ImportResult> imported = snapshots_->Import(req->path(), req->volume(), options);
  if (!imported.ok()) return imported.status();
  // The importer reports per record; the end of the stream (its trailer) counts too.
  if (progress != nullptr) progress->Set(imported->stream_bytes, imported->stream_bytes);
  ToProto(imported->snapshot, resp->mutable_snapshot());
  AddExportInfo(resp->mutable_snapshot());
  resp->set_incremental(imported->incremental);
  resp->set_created_volume(imported->created_volume);
  resp->set_stream_bytes(imported->stream_bytes);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Clones, revert, flatten

grpc::Status ControlService::CloneVolume(grpc::ServerContext* ctx,
                                         const v1::CloneVolumeRequest* req, v1::Volume* resp) {
  Status valid = req->source().find('@') != std::string::npos
                     ? CheckSnapshotRef(req->source())
                     : ValidateName("source volume", req->source());
  if (!valid.ok()) return Fail(ctx, valid);
  std::vector<std::string> advice;
  if (internal::WantsReplicas(*req)) {
    // A replicated clone of a snapshot, or of this node's volume (docs/replication.md,
    // "Replicated clones and restores").
    if (req->read_only()) {
      return Fail(ctx, Status::InvalidArgument("a replicated clone cannot be --read-only"));
    }
    VolumeSpec volume;
    volume.params.name = req->name();
    volume.params.labels.insert(req->labels().begin(), req->labels().end());
    ReplicatedSpec from;
    from.source = req->source();
    Result<VolumeInfo> made = internal::CreateReplicated(
        replicated_, volume, internal::ReplicaFieldsOf(*req), &advice, std::move(from));
    if (!made.ok()) return Fail(ctx, made.status());
  } else {
    CloneSpec spec;
    spec.source = req->source();
    spec.name = req->name();
    spec.read_only = req->read_only();
    spec.labels.insert(req->labels().begin(), req->labels().end());
    Result<snapshot::CloneResult> clone = lifecycle_->Clone(spec, &advice);
    if (!clone.ok()) return Fail(ctx, clone.status());
  }
  if (Status st = DescribeVolume(req->name(), resp); !st.ok()) return Fail(ctx, st);
  for (std::string& line : advice) resp->add_warnings(std::move(line));
  return grpc::Status::OK;
}

grpc::Status ControlService::ListClones(grpc::ServerContext* ctx,
                                        const v1::ListClonesRequest* /*req*/,
                                        v1::ListClonesResponse* resp) {
  Result<std::vector<snapshot::CloneInfo>> clones = snapshots_->ListClones();
  if (!clones.ok()) return Fail(ctx, clones.status());
  std::sort(clones->begin(), clones->end(),
            [](const snapshot::CloneInfo& a, const snapshot::CloneInfo& b) {
              return a.volume < b.volume;
            });
  for (const snapshot::CloneInfo& c : *clones) ToProto(c, resp->add_clones());
  return grpc::Status::OK;
}

grpc::Status ControlService::RevertVolume(grpc::ServerContext* ctx,
                                          const v1::RevertVolumeRequest* req, v1::Volume* resp) {
  Status valid = ValidateName("volume", req->name());
  if (valid.ok()) {
    if (req->snapshot().empty()) {
      valid = Status::InvalidArgument("revert needs the snapshot to return to");
    } else if (req->snapshot().find('@') != std::string::npos) {
      valid = CheckSnapshotRef(req->snapshot());
    } else {
      valid = ValidateName("snapshot", req->snapshot());
    }
  }
  if (valid.ok()) valid = internal::RefuseIfReplicated(replicated_, req->name(), "revert");
  if (!valid.ok()) return Fail(ctx, valid);
  Status reverted = lifecycle_->Revert(req->name(), req->snapshot());
  if (!reverted.ok()) return Fail(ctx, reverted);
  if (Status st = DescribeVolume(req->name(), resp); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::FlattenVolume(grpc::ServerContext* ctx,
                                           const v1::FlattenVolumeRequest* req,
                                           grpc::ServerWriter<v1::FlattenVolumeProgress>* writer) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  if (Status valid = ValidateName("volume", req->name()); !valid.ok()) return Fail(ctx, valid);
  // The progress callback runs on the volume's reactor and must not block: it only stores. A
  // client that goes away only stops the messages: the flatten runs to its end (it cannot stop
  // halfway).
  const std::string name = req->name();
  Status st = StreamOperation<v1::FlattenVolumeProgress>(
      writer, kProgressInterval,
      [&](ProgressCounter& progress, v1::FlattenVolumeProgress* last) {
        Status flattened = snapshots_->Flatten(
            name, [&](uint64_t done, uint64_t total) { progress.Set(done, total); });
        if (!flattened.ok()) return flattened;
        SHALE_LOG_INFO("volume flattened (control API)", {"volume", name},
                       {"clusters", progress.total()});
        last->set_done_clusters(progress.total());
        last->set_total_clusters(progress.total());
        last->set_finished(true);
        return Status::Ok();
      },
      [](uint64_t done, uint64_t total, v1::FlattenVolumeProgress* m) {
        m->set_done_clusters(done);
        m->set_total_clusters(total);
      });
  return st.ok() ? grpc::Status::OK : Fail(ctx, st);
}

}  // namespace shale::daemon
