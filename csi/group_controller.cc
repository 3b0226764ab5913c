// GroupController of csi.shale.io: group snapshots (docs/csi.md, "GroupController"). Every
// member is frozen at one instant by the lifecycle service (Engine::FreezeVolumes); a group's id
// is its Shale name, each member's id "VOLUME@GROUP" (an ordinary snapshot: a clone source).
#include <algorithm>

#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "snapshot/snapshot_manager.h"

namespace shale::csi {

namespace v1 = ::csi::v1;

namespace {

// The group as CSI describes it; ready once every member exists.
void FillGroup(daemon::VolumeLifecycle* lifecycle, const daemon::GroupSnapshotInfo& g,
               v1::VolumeGroupSnapshot* out) {
  out->set_group_snapshot_id(g.name);
  *out->mutable_creation_time() = TimestampOf(g.created_unix_ns);
  bool ready = true;
  for (const std::string& member : g.snapshots) {
    // (A member of a volume served here without a replica: as its replicas hold it.)
    Result<snapshot::SnapshotInfo> s = lifecycle->FindSnapshot(member);
    if (!s.ok()) {
      ready = false;
      continue;
    }
    FillCsiSnapshot(*s, out->add_snapshots());
  }
  out->set_ready_to_use(ready);
}

// The CO names the members it knows; a list that is not the group's is INVALID_ARGUMENT.
grpc::Status CheckMembers(const daemon::GroupSnapshotInfo& g,
                          const google::protobuf::RepeatedPtrField<std::string>& ids) {
  if (ids.empty()) return grpc::Status::OK;
  std::vector<std::string> given(ids.begin(), ids.end()), members = g.snapshots;
  std::sort(given.begin(), given.end());
  std::sort(members.begin(), members.end());
  if (given != members) {
    return Invalid("snapshot_ids do not match the members of group snapshot " + g.name);
  }
  return grpc::Status::OK;
}

}  // namespace

grpc::Status GroupControllerService::GroupControllerGetCapabilities(
    grpc::ServerContext*, const v1::GroupControllerGetCapabilitiesRequest*,
    v1::GroupControllerGetCapabilitiesResponse* response) {
  response->add_capabilities()->mutable_rpc()->set_type(
      v1::GroupControllerServiceCapability::RPC::CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT);
  return grpc::Status::OK;
}

grpc::Status GroupControllerService::CreateVolumeGroupSnapshot(
    grpc::ServerContext*, const v1::CreateVolumeGroupSnapshotRequest* request,
    v1::CreateVolumeGroupSnapshotResponse* response) {
  if (grpc::Status st =
          RequireFields("CreateVolumeGroupSnapshot",
                        {{"name", !request->name().empty()},
                         {"source_volume_ids", request->source_volume_ids_size() > 0}});
      !st.ok()) {
    return st;
  }
  daemon::GroupSnapshotSpec spec;
  spec.name = ShaleNameFor(request->name());
  spec.volumes.assign(request->source_volume_ids().begin(), request->source_volume_ids().end());
  spec.labels = ToMap(request->parameters());
  spec.labels[std::string(kLabelManaged)] = "true";
  if (Status valid = ValidateLabels(spec.labels); !valid.ok()) {
    return Invalid("group snapshot parameters become labels: " + std::string(valid.message()));
  }
  for (const std::string& v : spec.volumes) {
    if (v.empty()) return Invalid("CreateVolumeGroupSnapshot: an empty source volume id");
  }
  auto g = lifecycle_->CreateGroupSnapshot(spec);
  if (!g.ok()) {
    if (g.status().code() == StatusCode::kAlreadyExists) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, std::string(g.status().message()));
    }
    return ToGrpc(g.status().WithContext("group snapshot " + request->name()));
  }
  FillGroup(lifecycle_, *g, response->mutable_group_snapshot());
  return grpc::Status::OK;
}

grpc::Status GroupControllerService::GetVolumeGroupSnapshot(
    grpc::ServerContext*, const v1::GetVolumeGroupSnapshotRequest* request,
    v1::GetVolumeGroupSnapshotResponse* response) {
  if (grpc::Status st = RequireFields(
          "GetVolumeGroupSnapshot", {{"group_snapshot_id", !request->group_snapshot_id().empty()}});
      !st.ok()) {
    return st;
  }
  auto g = lifecycle_->GetGroupSnapshot(request->group_snapshot_id());
  if (!g.ok()) {
    // An id no group can have (not even a valid name) is as unknown as a missing one.
    if (g.status().IsNotFound() || g.status().code() == StatusCode::kInvalidArgument) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "group snapshot " + request->group_snapshot_id() + " not found");
    }
    return ToGrpc(g.status());
  }
  if (grpc::Status st = CheckMembers(*g, request->snapshot_ids()); !st.ok()) return st;
  FillGroup(lifecycle_, *g, response->mutable_group_snapshot());
  return grpc::Status::OK;
}

grpc::Status GroupControllerService::DeleteVolumeGroupSnapshot(
    grpc::ServerContext*, const v1::DeleteVolumeGroupSnapshotRequest* request,
    v1::DeleteVolumeGroupSnapshotResponse*) {
  if (grpc::Status st =
          RequireFields("DeleteVolumeGroupSnapshot",
                        {{"group_snapshot_id", !request->group_snapshot_id().empty()}});
      !st.ok()) {
    return st;
  }
  auto g = lifecycle_->GetGroupSnapshot(request->group_snapshot_id());
  if (!g.ok()) {
    // Deleting what is not there succeeds (the spec's idempotency).
    if (g.status().IsNotFound() || g.status().code() == StatusCode::kInvalidArgument) {
      return grpc::Status::OK;
    }
    return ToGrpc(g.status());
  }
  if (grpc::Status st = CheckMembers(*g, request->snapshot_ids()); !st.ok()) return st;
  Status deleted = lifecycle_->DeleteGroupSnapshot(g->name);
  if (!deleted.ok() && !deleted.IsNotFound()) return ToGrpc(deleted);
  return grpc::Status::OK;
}

}  // namespace shale::csi
