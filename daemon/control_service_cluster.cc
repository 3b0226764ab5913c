// ControlService: the cluster RPCs (issue 11, docs/replication.md): this node's part in the
// status answer and the node list, read from etcd through the daemon's ClusterNode; replicated
// volumes (create with --replicas, the replica list, the rebuild rate cap) through its
// ReplicatedVolumes.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "daemon/cluster_node.h"
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/replica_membership.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"

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
  // What each node serves and holds, from the volumes' membership records.
  std::map<std::string, std::vector<std::string>> targets, replicas;
  if (std::shared_ptr<cluster::ClusterStore> store = cluster_->store(); store != nullptr) {
    Result<std::vector<cluster::VolumeRecord>> volumes = store->ListVolumes();
    if (!volumes.ok()) return Fail(ctx, volumes.status());
    for (const cluster::VolumeRecord& v : *volumes) {
      if (!v.status.ok()) continue;
      if (!v.membership.detached) targets[v.membership.target].push_back(v.name);
      for (const cluster::ReplicaMember& r : v.membership.replicas) {
        replicas[r.node].push_back(v.name);
      }
    }
  }
  for (const cluster::NodeRecord& n : *nodes) {
    v1::Node* out = resp->add_nodes();
    out->set_name(n.name);
    out->set_state(n.up ? "up" : "down");
    out->set_local(n.name == cluster_->node_name());
    out->set_cordoned(n.cordoned);
    out->set_draining(n.draining);
    for (const auto& [key, value] : n.labels) (*out->mutable_labels())[key] = value;
    for (const std::string& v : targets[n.name]) out->add_targets(v);
    for (const std::string& v : replicas[n.name]) out->add_replicas(v);
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

Result<std::shared_ptr<cluster::ClusterStore>> ControlService::StoreForChange() const {
  if (cluster_ == nullptr) return NotInCluster();
  SHALE_RETURN_IF_ERROR(lifecycle_->CheckChangeGate());
  std::shared_ptr<cluster::ClusterStore> store = cluster_->store();
  if (store == nullptr) return Status::Unavailable("shaled is starting or stopping");
  return store;
}

grpc::Status ControlService::LabelNode(grpc::ServerContext* ctx, const v1::LabelNodeRequest* req,
                                       v1::LabelNodeResponse* resp) {
  Result<std::shared_ptr<cluster::ClusterStore>> store = StoreForChange();
  if (!store.ok()) return Fail(ctx, store.status());
  const Labels set(req->set().begin(), req->set().end());
  const std::vector<std::string> remove(req->remove().begin(), req->remove().end());
  for (const std::string& key : remove) {
    if (set.contains(key)) {
      return Fail(ctx, Status::InvalidArgument("label " + key + " is both set and removed"));
    }
  }
  Result<Labels> labels = (*store)->UpdateNodeLabels(req->node(), set, remove);
  if (!labels.ok()) return Fail(ctx, labels.status());
  std::string now;
  for (const auto& [key, value] : *labels) {
    (*resp->mutable_labels())[key] = value;
    now += (now.empty() ? "" : ",") + key + "=" + value;
  }
  SHALE_LOG_INFO("node labels changed", {"node", req->node()}, {"labels", now});
  return grpc::Status::OK;
}

grpc::Status ControlService::SetNodeCordon(grpc::ServerContext* ctx,
                                           const v1::SetNodeCordonRequest* req,
                                           v1::SetNodeCordonResponse* resp) {
  Result<std::shared_ptr<cluster::ClusterStore>> changing = StoreForChange();
  if (!changing.ok()) return Fail(ctx, changing.status());
  const std::shared_ptr<cluster::ClusterStore>& store = *changing;
  if (Status st = store->SetCordoned(req->node(), req->cordoned()); !st.ok()) return Fail(ctx, st);
  SHALE_LOG_INFO(req->cordoned() ? "node cordoned" : "node uncordoned", {"node", req->node()});
  resp->set_message(req->cordoned()
                        ? "node " + req->node() +
                              " cordoned: no new replica goes there (what it holds and serves "
                              "stays; `shale node uncordon " +
                              req->node() + "` undoes it)"
                        : "node " + req->node() + " uncordoned: new replicas may go there");
  return grpc::Status::OK;
}

namespace {

// Why the replica of `v` on the draining `node` is still there (docs/replication.md, "Drain").
std::string DrainWait(const std::string& volume, const cluster::Membership& m,
                      const std::string& node, const std::vector<cluster::NodeRecord>& nodes) {
  for (const cluster::ReplicaMember& r : m.replicas) {
    if (r.replaces == node) {
      return "being replaced by a replica on " + r.node + " (" +
             std::string(cluster::ReplicaStateName(r.state)) + ")";
    }
  }
  if (m.detached) {
    return "detached: the first up node of its in-sync set attaches it to replace this replica "
           "(within seconds; it detaches it again after)";
  }
  const bool target_up = std::any_of(nodes.begin(), nodes.end(),
                                     [&](const auto& n) { return n.name == m.target && n.up; });
  if (!target_up) return "its target " + m.target + " is down";
  // What the target's next attempt would find (it retries, with a backoff).
  Result<cluster::ReplicaPlacement> next = PlaceReplacement(nodes, m, m.target, node, volume);
  if (!next.ok())
    return "no node can take its replacement: " + std::string(next.status().message());
  return "its target " + m.target + " has not started replacing it yet (next: a replica on " +
         next->node + ")";
}

}  // namespace

grpc::Status ControlService::DrainNode(grpc::ServerContext* ctx, const v1::DrainNodeRequest* req,
                                       v1::DrainNodeResponse* resp) {
  Result<std::shared_ptr<cluster::ClusterStore>> changing = StoreForChange();
  if (!changing.ok()) return Fail(ctx, changing.status());
  const std::shared_ptr<cluster::ClusterStore>& store = *changing;
  const std::string& node = req->node();
  Result<std::vector<cluster::NodeRecord>> nodes = store->ListNodes();
  if (!nodes.ok()) return Fail(ctx, nodes.status());
  const bool was_draining = std::any_of(
      nodes->begin(), nodes->end(), [&](const auto& n) { return n.name == node && n.draining; });
  if (Status st = store->SetDraining(node); !st.ok()) return Fail(ctx, st);
  if (!was_draining) SHALE_LOG_INFO("node draining", {"node", node});
  Result<std::vector<cluster::VolumeRecord>> volumes = store->ListVolumes();
  if (!volumes.ok()) return Fail(ctx, volumes.status());
  for (const cluster::VolumeRecord& v : *volumes) {
    if (!v.status.ok() || v.membership.Find(node) == nullptr) continue;
    v1::DrainRemaining* left = resp->add_remaining();
    left->set_volume(v.name);
    left->set_why(DrainWait(v.name, v.membership, node, *nodes));
  }
  resp->set_drained(resp->remaining().empty());
  resp->set_message(
      resp->drained() ? "node " + node +
                            " is drained: it holds no replica (it stays cordoned; `shale node "
                            "uncordon " +
                            node + "` lets new replicas go there)"
                      : "node " + node + " is draining: " + std::to_string(resp->remaining_size()) +
                            " volume(s) still have a replica there");
  return grpc::Status::OK;
}

grpc::Status ControlService::ForgetNode(grpc::ServerContext* ctx, const v1::ForgetNodeRequest* req,
                                        v1::ForgetNodeResponse* resp) {
  Result<std::shared_ptr<cluster::ClusterStore>> changing = StoreForChange();
  if (!changing.ok()) return Fail(ctx, changing.status());
  const std::shared_ptr<cluster::ClusterStore>& store = *changing;
  const std::string& node = req->node();
  // A forgotten node is never replaced: its replicas must have moved first.
  Result<std::vector<cluster::VolumeRecord>> volumes = store->ListVolumes();
  if (!volumes.ok()) return Fail(ctx, volumes.status());
  std::string held;
  for (const cluster::VolumeRecord& v : *volumes) {
    if (v.status.ok() && v.membership.Find(node) != nullptr) {
      held += (held.empty() ? "" : ", ") + v.name;
    }
  }
  if (!held.empty()) {
    return Fail(ctx, Status::FailedPrecondition(
                         "node " + node + " still holds replicas of " + held +
                         ": wait until they are replaced (--replica-replace-after) or drain it "
                         "(shale node drain " +
                         node + ")"));
  }
  if (Status st = store->ForgetNode(node); !st.ok()) return Fail(ctx, st);
  SHALE_LOG_WARN("node forgotten", {"node", node});
  resp->set_message("node " + node + " forgotten: it is no longer listed");
  return grpc::Status::OK;
}

Result<VolumeInfo> internal::CreateReplicated(ReplicatedVolumes* replicated, const VolumeSpec& spec,
                                              const v1::CreateVolumeRequest& req,
                                              std::vector<std::string>* advice,
                                              ReplicatedSpec from) {
  if (replicated == nullptr) {
    return Status::FailedPrecondition(
        "--replicas " + std::to_string(req.replicas()) +
        " needs a shaled in a cluster (start it with --cluster-store, --node-name and "
        "--cluster-secret-file)");
  }
  ReplicatedSpec r = std::move(from);
  r.volume = spec;
  r.replicas = req.replicas() == 0 ? 1 : req.replicas();
  r.replica_nodes.assign(req.replica_nodes().begin(), req.replica_nodes().end());
  r.min_in_sync = req.min_in_sync() == 0 ? 1 : req.min_in_sync();
  r.node_selector = req.replica_node_selector();
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
  internal::ReplicasToProto(req->volume(), *report, resp);
  return grpc::Status::OK;
}

void internal::ReplicasToProto(const std::string& volume, const ReplicasReport& report,
                               v1::ListReplicasResponse* resp) {
  const cluster::Membership& m = report.membership;
  resp->set_volume(volume);
  resp->set_epoch(m.epoch);
  resp->set_target(m.target);
  resp->set_min_in_sync(m.min_in_sync);
  for (const std::string& n : m.in_sync) resp->add_in_sync(n);
  resp->set_fenced(report.fenced);
  resp->set_detached(m.detached);
  resp->set_node_selector(m.node_selector);
  for (const ReplicaReport& r : report.replicas) {
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
}

void ControlService::AddReplicationInfo(v1::Volume* volume) const {
  if (replicated_ == nullptr || !replicated_->IsReplicated(volume->name())) return;
  Result<ReplicasReport> report = replicated_->List(volume->name());
  if (!report.ok()) {
    volume->add_warnings("replication state unavailable: " + report.status().ToString());
    return;
  }
  internal::ReplicasToProto(volume->name(), *report, volume->mutable_replication());
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

namespace {

// The outcome of an attach or detach, with the membership as it is now.
grpc::Status Attachment(grpc::ServerContext* ctx, ReplicatedVolumes* replicated,
                        const std::string& volume, const Result<std::string>& done,
                        v1::VolumeAttachment* resp) {
  if (!done.ok()) return Fail(ctx, done.status());
  resp->set_message(*done);
  if (Result<ReplicasReport> report = replicated->List(volume); report.ok()) {
    resp->set_epoch(report->membership.epoch);
    resp->set_target(report->membership.target);
    resp->set_detached(report->membership.detached);
  }
  return grpc::Status::OK;
}

void ToProto(const RebuildRate& rate, const std::string& node, v1::RebuildQos* out) {
  out->set_node(node);
  out->set_rebuild_bps(rate.bps);
  for (const std::string& v : rate.running) out->add_rebuilding(v);
}

}  // namespace

grpc::Status ControlService::AttachVolume(grpc::ServerContext* ctx,
                                          const v1::AttachVolumeRequest* req,
                                          v1::VolumeAttachment* resp) {
  if (replicated_ == nullptr) return Fail(ctx, NotInCluster());
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  return Attachment(ctx, replicated_, req->volume(), replicated_->Attach(req->volume()), resp);
}

grpc::Status ControlService::DetachVolume(grpc::ServerContext* ctx,
                                          const v1::DetachVolumeRequest* req,
                                          v1::VolumeAttachment* resp) {
  if (replicated_ == nullptr) return Fail(ctx, NotInCluster());
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  return Attachment(ctx, replicated_, req->volume(), replicated_->Detach(req->volume()), resp);
}

grpc::Status ControlService::SetRebuildQos(grpc::ServerContext* ctx,
                                           const v1::SetRebuildQosRequest* req,
                                           v1::RebuildQos* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  if (replicated_ == nullptr || cluster_ == nullptr) return Fail(ctx, NotInCluster());
  ToProto(replicated_->SetRebuildRate(req->rebuild_bps()), cluster_->node_name(), resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::GetRebuildQos(grpc::ServerContext* ctx,
                                           const v1::GetRebuildQosRequest* /*req*/,
                                           v1::RebuildQos* resp) {
  if (replicated_ == nullptr || cluster_ == nullptr) return Fail(ctx, NotInCluster());
  ToProto(replicated_->GetRebuildRate(), cluster_->node_name(), resp);
  return grpc::Status::OK;
}

}  // namespace shale::daemon
