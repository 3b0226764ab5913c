// Control API: group snapshots (docs/lifecycle.md, "Group snapshots"), through the lifecycle.
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"

namespace shale::daemon {

using internal::Fail;

namespace {

// The group with the members that are gone since (deleted on their own) listed as missing.
void ToProto(const GroupSnapshotInfo& g, VolumeLifecycle* lifecycle, v1::GroupSnapshot* out) {
  out->set_name(g.name);
  out->set_id(g.id);
  out->set_pool(g.pool);
  for (const std::string& v : g.volumes) out->add_volumes(v);
  for (const std::string& s : g.snapshots) {
    out->add_snapshots(s);
    if (lifecycle->FindSnapshot(s).status().IsNotFound()) out->add_missing(s);
  }
  out->mutable_labels()->insert(g.labels.begin(), g.labels.end());
  out->set_created_unix_ns(g.created_unix_ns);
}

}  // namespace

grpc::Status ControlService::CreateGroupSnapshot(grpc::ServerContext* ctx,
                                                 const v1::CreateGroupSnapshotRequest* req,
                                                 v1::GroupSnapshot* resp) {
  GroupSnapshotSpec spec;
  spec.name = req->name();
  spec.volumes.assign(req->volumes().begin(), req->volumes().end());
  spec.labels = Labels(req->labels().begin(), req->labels().end());
  Result<GroupSnapshotInfo> g = lifecycle_->CreateGroupSnapshot(spec);
  if (!g.ok()) return Fail(ctx, g.status());
  ToProto(*g, lifecycle_, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::ListGroupSnapshots(grpc::ServerContext* ctx,
                                                const v1::ListGroupSnapshotsRequest*,
                                                v1::ListGroupSnapshotsResponse* resp) {
  Result<std::vector<GroupSnapshotInfo>> groups = lifecycle_->ListGroupSnapshots();
  if (!groups.ok()) return Fail(ctx, groups.status());
  for (const GroupSnapshotInfo& g : *groups) ToProto(g, lifecycle_, resp->add_groups());
  return grpc::Status::OK;
}

grpc::Status ControlService::GetGroupSnapshot(grpc::ServerContext* ctx,
                                              const v1::GetGroupSnapshotRequest* req,
                                              v1::GroupSnapshot* resp) {
  Result<GroupSnapshotInfo> g = lifecycle_->GetGroupSnapshot(req->name());
  if (!g.ok()) return Fail(ctx, g.status());
  ToProto(*g, lifecycle_, resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::DeleteGroupSnapshot(grpc::ServerContext* ctx,
                                                 const v1::DeleteGroupSnapshotRequest* req,
                                                 v1::DeleteGroupSnapshotResponse*) {
  Status deleted = lifecycle_->DeleteGroupSnapshot(
      req->name(), {.force = req->force(), .disconnect_timeout = kForceDisconnectTimeout});
  if (!deleted.ok()) return Fail(ctx, deleted);
  return grpc::Status::OK;
}

}  // namespace shale::daemon
