// ControlService: the cluster RPCs (issue 11, docs/replication.md): this node's part in the
// status answer and the node list, read from etcd through the daemon's ClusterNode; replicated
// volumes (create with --replicas, the replica list) through its ReplicatedVolumes.
#include "daemon/cluster_node.h"
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/replicated_volumes.h"

namespace shale::daemon {

using internal::Fail;

namespace {

Status NotInCluster() {
  return Status::FailedPrecondition(
      "this shaled is not in a cluster (start it with --cluster-store)");
}

}  // namespace

void ControlService::AddClusterStatus(v1::GetStatusResponse* resp) const {
  if (cluster_ == nullptr) return;
  v1::ClusterStatus* out = resp->mutable_cluster();
  out->set_store(cluster_->endpoint());
  out->set_node_name(cluster_->node_name());
  out->set_replica_address(cluster_->replica_address());
  out->set_registered(cluster_->registered());
}

grpc::Status ControlService::ListNodes(grpc::ServerContext* ctx,
                                       const v1::ListNodesRequest* /*req*/,
                                       v1::ListNodesResponse* resp) {
  if (cluster_ == nullptr) return Fail(ctx, NotInCluster());
  Result<std::vector<cluster::NodeRecord>> nodes = cluster_->ListNodes();
  if (!nodes.ok()) return Fail(ctx, nodes.status());
  for (const cluster::NodeRecord& n : *nodes) {
    v1::Node* out = resp->add_nodes();
    out->set_name(n.name);
    out->set_state(n.up ? "up" : "down");
    out->set_local(n.name == cluster_->node_name());
    if (!n.status.ok()) {
      out->set_error(std::string(n.status.message()));
      continue;
    }
    out->set_replica_address(n.info.replica_address);
    uint64_t free_bytes = 0;
    for (const cluster::PoolCapacity& p : n.info.pools) {
      v1::NodePool* pool = out->add_pools();
      pool->set_name(p.name);
      pool->set_free_bytes(p.free_bytes);
      pool->set_capacity_bytes(p.capacity_bytes);
      free_bytes += p.free_bytes;
    }
    out->set_free_bytes(free_bytes);
  }
  return grpc::Status::OK;
}

Result<VolumeInfo> internal::CreateReplicated(ReplicatedVolumes* replicated, const VolumeSpec& spec,
                                              const v1::CreateVolumeRequest& req,
                                              std::vector<std::string>* advice) {
  if (replicated == nullptr) {
    return Status::FailedPrecondition(
        "--replicas " + std::to_string(req.replicas()) +
        " needs a shaled in a cluster (start it with --cluster-store, --node-name and "
        "--cluster-secret-file)");
  }
  ReplicatedSpec r;
  r.volume = spec;
  r.replicas = req.replicas() == 0 ? 1 : req.replicas();
  r.replica_nodes.assign(req.replica_nodes().begin(), req.replica_nodes().end());
  r.min_in_sync = req.min_in_sync() == 0 ? 1 : req.min_in_sync();
  if (r.min_in_sync > r.replicas) {
    return Status::InvalidArgument("--min-in-sync " + std::to_string(r.min_in_sync) +
                                   " is more than --replicas " + std::to_string(r.replicas));
  }
  return replicated->Create(r, advice);
}

Status internal::RefuseIfReplicated(ReplicatedVolumes* replicated, const std::string& volume,
                                    const std::string& action) {
  if (replicated == nullptr || !replicated->IsReplicated(volume)) return Status::Ok();
  return Status::FailedPrecondition("cannot " + action + " replicated volume '" + volume +
                                    "': its replicas would not follow (not supported yet)");
}

grpc::Status ControlService::ListReplicas(grpc::ServerContext* ctx,
                                          const v1::ListReplicasRequest* req,
                                          v1::ListReplicasResponse* resp) {
  if (replicated_ == nullptr) return Fail(ctx, NotInCluster());
  Result<ReplicasReport> report = replicated_->List(req->volume());
  if (!report.ok()) return Fail(ctx, report.status());
  const cluster::Membership& m = report->membership;
  resp->set_volume(req->volume());
  resp->set_epoch(m.epoch);
  resp->set_target(m.target);
  resp->set_min_in_sync(m.min_in_sync);
  for (const std::string& n : m.in_sync) resp->add_in_sync(n);
  resp->set_fenced(report->fenced);
  for (const ReplicaReport& r : report->replicas) {
    v1::Replica* out = resp->add_replicas();
    out->set_node(r.node);
    out->set_state(r.state);
    out->set_generation(r.generation);
    out->set_local(r.local);
    out->set_rebuild_done_bytes(r.rebuild_done_bytes);
    out->set_rebuild_total_bytes(r.rebuild_total_bytes);
    out->set_rebuild_sent_bytes(r.rebuild_sent_bytes);
    out->set_rebuilds(r.rebuilds);
    out->set_last_error(r.last_error);
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::ForceRecoverVolume(grpc::ServerContext* ctx,
                                                const v1::ForceRecoverVolumeRequest* req,
                                                v1::ForceRecoverVolumeResponse* resp) {
  if (replicated_ == nullptr) return Fail(ctx, NotInCluster());
  Result<std::string> done = replicated_->ForceRecover(req->volume(), req->from_node());
  if (!done.ok()) return Fail(ctx, done.status());
  resp->set_message(*done);
  return grpc::Status::OK;
}

grpc::Status ControlService::TakeOverVolume(grpc::ServerContext* ctx,
                                            const v1::TakeOverVolumeRequest* req,
                                            v1::TakeOverVolumeResponse* resp) {
  if (replicated_ == nullptr) return Fail(ctx, NotInCluster());
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  Result<std::string> done = replicated_->TakeOver(req->volume(), req->force());
  if (!done.ok()) return Fail(ctx, done.status());
  resp->set_message(*done);
  if (Result<ReplicasReport> report = replicated_->List(req->volume()); report.ok()) {
    resp->set_epoch(report->membership.epoch);
  }
  return grpc::Status::OK;
}

}  // namespace shale::daemon
