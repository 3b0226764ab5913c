// ReplicatedVolumes::Create: a new replicated volume, empty or a clone of a replicated volume's
// snapshot (docs/replication.md, "Creating a replicated volume" and "Replicated clones").
#include <algorithm>

#include "cluster/placement.h"
#include "daemon/cluster_node.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/block.h"
#include "engine/common/log.h"
#include "replication/replica_admin.h"
#include "replication/replica_server.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {

namespace {

// Why `local` cannot take a replica of the volume `request` places (the answer of placing one
// replica on it alone).
std::string LocalRefusal(const std::vector<cluster::NodeRecord>& nodes,
                         cluster::PlacementRequest request) {
  request.replicas = 1;
  const bool named =
      request.only_nodes.empty() || std::find(request.only_nodes.begin(), request.only_nodes.end(),
                                              request.local_node) != request.only_nodes.end();
  if (!named) return "it is not among --replica-nodes";
  request.only_nodes = {request.local_node};
  Result<std::vector<cluster::ReplicaPlacement>> alone = cluster::PlaceReplicas(nodes, request);
  return alone.ok() ? "it was not placed" : std::string(alone.status().message());
}

}  // namespace

Status ReplicatedVolumes::PlaceRemote(const std::string& name,
                                      const cluster::Membership& membership,
                                      const std::vector<cluster::NodeRecord>& nodes,
                                      const std::string& source) {
  SHALE_ASSIGN_OR_RETURN(Uuid uuid, Uuid::Parse(membership.uuid));
  std::vector<const cluster::NodeRecord*> placed;
  Status failed;
  for (const cluster::ReplicaMember& r : membership.replicas) {
    if (r.node == options_.node_name) continue;
    const cluster::NodeRecord* n = FindNode(nodes, r.node);
    replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                           options_.secret, transport_, options_.connect_timeout};
    // From a snapshot: a clone of that node's copy if it holds one (cheap: compared with the
    // target's at the first attach), else an empty replica (filled by that comparison).
    Result<replication::ReplicaStat> made =
        replication::CreateReplica(admin, {name, uuid, membership.size_bytes, "", source}, 1);
    if (!source.empty() && !made.ok() && made.status().IsNotFound()) {
      made = replication::CreateReplica(admin, {name, uuid, membership.size_bytes, ""}, 1);
    }
    if (!made.ok()) {
      failed = made.status().WithContext("create the replica of " + name + " on node " + r.node +
                                         " (" + n->info.replica_address + ")");
      break;
    }
    placed.push_back(n);
  }
  if (failed.ok()) return Status::Ok();
  for (const cluster::NodeRecord* n : placed) {  // undo: nothing is left behind
    replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                           options_.secret, transport_, options_.connect_timeout};
    Status undone = replication::DeleteReplica(admin, {name, uuid, membership.size_bytes, ""}, 1);
    if (!undone.ok()) {
      SHALE_LOG_WARN("could not remove a replica placed by a failed create", {"volume", name},
                     {"node", n->name}, {"error", undone.ToString()});
    }
  }
  return failed;
}

void ReplicatedVolumes::StartFromLocalCopy(const std::string& source, cluster::Membership* m) {
  // Only the local clone is known to hold the snapshot's data: the others (clones of their
  // node's copy, or empty) are stale, so the first target compares every region with them (hash
  // by hash, sending what differs) before they join.
  for (cluster::ReplicaMember& r : m->replicas) {
    if (r.node == options_.node_name) continue;
    r.state = cluster::ReplicaState::kStale;
    r.since_epoch = m->epoch;
  }
  m->in_sync = {options_.node_name};
  m->history.clear();
  m->RecordChange("created from snapshot " + source + " (the other replicas are compared with " +
                  options_.node_name + "'s at the first attach)");
}

Result<VolumeInfo> ReplicatedVolumes::CreateLocalReplica(const ReplicatedSpec& spec,
                                                         const Uuid& uuid, uint64_t size,
                                                         const std::string& pool,
                                                         std::vector<std::string>* advice) {
  if (spec.source.empty()) {
    VolumeSpec local = spec.volume;
    local.params.size_bytes = size;
    local.params.labels[replication::kReplicaUuidLabel] = uuid.ToString();
    if (local.params.pool.empty()) local.params.pool = pool;
    return lifecycle_->Create(local, advice);
  }
  CloneSpec clone;
  clone.source = spec.source;
  clone.name = spec.volume.params.name;
  clone.labels = spec.volume.params.labels;
  clone.labels[replication::kReplicaUuidLabel] = uuid.ToString();
  clone.size_bytes = size;
  clone.qos = spec.volume.qos;
  clone.records = spec.volume.records;
  clone.provisioned_bytes = spec.volume.provisioned_bytes;
  SHALE_ASSIGN_OR_RETURN(snapshot::CloneResult made, lifecycle_->Clone(clone, advice));
  return made.volume;
}

Result<VolumeInfo> ReplicatedVolumes::Create(const ReplicatedSpec& spec,
                                             std::vector<std::string>* advice) {
  const std::string& name = spec.volume.params.name;
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (spec.volume.params.read_only) {
    return Status::InvalidArgument("a replicated volume cannot be read-only");
  }
  Result<cluster::NodeSelector> parsed = cluster::NodeSelector::Parse(spec.node_selector);
  if (!parsed.ok()) return parsed.status().WithContext("--replica-node-selector");
  const cluster::NodeSelector selector = std::move(parsed).value();
  if (lifecycle_->engine()->GetVolume(name).ok()) {
    return Status::AlreadyExists("volume '" + name + "' already exists");
  }
  if (Result<cluster::VolumeRecord> existing = store_->GetVolume(name); existing.ok()) {
    return Status::AlreadyExists("volume '" + name + "' already exists in the cluster (target " +
                                 existing->membership.target + ")");
  } else if (!existing.status().IsNotFound()) {
    return existing.status();
  }
  uint64_t size = RoundUpToBlock(spec.volume.params.size_bytes);
  if (!spec.source.empty()) {
    // A replicated clone starts from this node's copy of the snapshot (docs/replication.md,
    // "Replicated clones").
    Result<snapshot::SnapshotInfo> snap = lifecycle_->snapshots()->Get(spec.source);
    if (!snap.ok()) {
      return snap.status().IsNotFound()
                 ? Status::FailedPrecondition("node " + options_.node_name +
                                              " holds no copy of snapshot " + spec.source +
                                              ": create the clone on a node that holds one")
                 : snap.status();
    }
    size = std::max(size, snap->size_bytes);
  }
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  cluster::PlacementRequest request{options_.node_name, size, spec.replicas, spec.replica_nodes,
                                    selector};
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::ReplicaPlacement> placement,
                         cluster::PlaceReplicas(nodes, request));
  if (placement.front().node != options_.node_name) {
    return Status::FailedPrecondition(
        "this node (" + options_.node_name +
        ") must hold a replica of the volumes it creates and serves, and cannot take one: " +
        LocalRefusal(nodes, request));
  }
  const Uuid uuid = Uuid::Random();
  SHALE_ASSIGN_OR_RETURN(cluster::Membership membership,
                         cluster::NewMembership(uuid.ToString(), size, spec.min_in_sync,
                                                options_.node_name, placement));
  membership.node_selector = request.selector.ToString();
  if (spec.volume.qos.has_value()) membership.qos = QosToMembership(spec.volume.qos->Normalized());
  if (!spec.source.empty()) StartFromLocalCopy(spec.source, &membership);
  SHALE_RETURN_IF_ERROR(PlaceRemote(name, membership, nodes, spec.source));
  Result<VolumeInfo> volume = CreateLocalReplica(spec, uuid, size, placement.front().pool, advice);
  if (!volume.ok()) {
    DeleteRemote(name, membership, /*ignore_unreachable=*/true).IgnoreError();
    return volume.status();
  }
  if (Result<int64_t> made = store_->CreateVolume(name, membership); !made.ok()) {
    lifecycle_->Delete(name).IgnoreError();
    DeleteRemote(name, membership, /*ignore_unreachable=*/true).IgnoreError();
    return made.status().WithContext("record the membership of " + name + " in etcd");
  }
  SHALE_LOG_INFO("replicated volume created", {"volume", name}, {"replicas", spec.replicas},
                 {"uuid", uuid.ToString()}, {"source", spec.source});
  Result<std::shared_ptr<Target>> target = OpenTarget(name);
  std::lock_guard lock(mu_);
  if (target.ok()) {
    targets_[name] = std::move(target).value();
  } else {
    pending_[name] = target.status().ToString();
    if (advice != nullptr) {
      advice->push_back("the target is not open yet (retried): " + target.status().ToString());
    }
  }
  return volume;
}

}  // namespace shale::daemon
