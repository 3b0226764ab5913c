// Helpers shared by the ControlService handler files (control_service.cc for status, pools,
// volumes and exports; control_service_snapshots.cc for snapshots and clones). Not part of the
// service's interface.
#pragma once

#include <grpcpp/grpcpp.h>

#include "api/control.pb.h"
#include "daemon/control_service.h"
#include "daemon/lifecycle/capacity.h"
#include "daemon/progress_stream.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/status.h"
#include "engine/engine.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {
class ReplicatedVolumes;
struct ReplicasReport;
struct VolumeSpec;
}  // namespace shale::daemon

namespace shale::daemon::internal {

// Every error leaves the service through here: the one conversion, plus the trailing metadata
// that marks it as shaled's own.
grpc::Status Fail(grpc::ServerContext* ctx, const Status& status);

// A streaming long operation (progress_stream.h) from its *Work method: progress messages
// {progress: {done, total}} while it runs, then {progress, result} as the last message; an error
// becomes the call's status through Fail.
template <typename Request, typename Response, typename Message>
grpc::Status StreamWork(ControlService* service,
                        Status (ControlService::*work)(grpc::ServerContext*, const Request*,
                                                       Response*, ProgressCounter*),
                        grpc::ServerContext* ctx, const Request* req,
                        grpc::ServerWriter<Message>* writer) {
  const Status st = StreamOperation<Message>(
      writer, ControlService::kProgressInterval,
      [&](ProgressCounter& progress, Message* last) {
        Status done = (service->*work)(ctx, req, last->mutable_result(), &progress);
        // The last message says where it ended too: a short operation sends no other.
        last->mutable_progress()->set_done(progress.done());
        last->mutable_progress()->set_total(progress.total());
        return done;
      },
      [](uint64_t done, uint64_t total, Message* m) {
        m->mutable_progress()->set_done(done);
        m->mutable_progress()->set_total(total);
      });
  return st.ok() ? grpc::Status::OK : Fail(ctx, st);
}

// Whether a request that makes a volume (CreateVolume, CloneVolume, RestoreBackup) asks for a
// replicated one: any of its replica fields set.
template <typename Request>
bool WantsReplicas(const Request& req) {
  return req.replicas() > 1 || req.replica_nodes_size() > 0 || req.min_in_sync() > 0 ||
         !req.replica_node_selector().empty();
}
// The replica fields of such a request, as the CreateVolumeRequest CreateReplicated takes.
template <typename Request>
v1::CreateVolumeRequest ReplicaFieldsOf(const Request& req) {
  v1::CreateVolumeRequest out;
  out.set_replicas(req.replicas());
  out.mutable_replica_nodes()->CopyFrom(req.replica_nodes());
  out.set_min_in_sync(req.min_in_sync());
  out.set_replica_node_selector(req.replica_node_selector());
  return out;
}

// A volume with --replicas (control_service_cluster.cc); `replicated` null outside cluster mode.
// `from`: where its data comes from (ReplicatedSpec's source, backup and their options; the
// rest is filled from `spec` and `req`): a clone (`clone create --replicas`), a restore
// (`backup restore --replicas`).
Result<VolumeInfo> CreateReplicated(ReplicatedVolumes* replicated, const VolumeSpec& spec,
                                    const v1::CreateVolumeRequest& req,
                                    std::vector<std::string>* advice, ReplicatedSpec from = {});
// FailedPrecondition for an operation the replicas of a volume would not follow (resize,
// revert); OK for a volume that is not replicated (or outside cluster mode).
Status RefuseIfReplicated(ReplicatedVolumes* replicated, const std::string& volume,
                          const std::string& action);
// `shale replica list`'s answer (also a replicated volume's `replication` in `volume show`).
void ReplicasToProto(const std::string& volume, const ReplicasReport& report,
                     v1::ListReplicasResponse* out);

void ToProto(const PoolInfo& in, v1::Pool* out);
void ToProto(const VolumeInfo& in, v1::Volume* out);
// A pool's thresholds, overcommit limit and fill level (control_service_ops.cc).
void AddCapacity(const PoolCapacity& in, v1::Pool* out);
void ToProto(const snapshot::CloneInfo& in, v1::CloneInfo* out);
void ToProto(const snapshot::SnapshotInfo& in, v1::Snapshot* out);

}  // namespace shale::daemon::internal
