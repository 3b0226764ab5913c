// ControlService: the cluster RPCs (issue 11, docs/replication.md): this node's part in the
// status answer and the node list, read from etcd through the daemon's ClusterNode.
#include "daemon/cluster_node.h"
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"

namespace shale::daemon {

using internal::Fail;

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
  if (cluster_ == nullptr) {
    return Fail(ctx, Status::FailedPrecondition(
                         "this shaled is not in a cluster (start it with --cluster-store)"));
  }
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

}  // namespace shale::daemon
