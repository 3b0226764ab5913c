// Helpers shared by the ControlService handler files (control_service.cc for status, pools,
// volumes and exports; control_service_snapshots.cc for snapshots and clones). Not part of the
// service's interface.
#pragma once

#include <grpcpp/grpcpp.h>

#include "api/control.pb.h"
#include "daemon/control_service.h"
#include "daemon/lifecycle/capacity.h"
#include "daemon/progress_stream.h"
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

// A volume with --replicas (control_service_cluster.cc); `replicated` null outside cluster mode.
// With `source` ("VOLUME@SNAP"): a replicated clone of that snapshot (`clone create --replicas`).
Result<VolumeInfo> CreateReplicated(ReplicatedVolumes* replicated, const VolumeSpec& spec,
                                    const v1::CreateVolumeRequest& req,
                                    std::vector<std::string>* advice,
                                    const std::string& source = "");
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
