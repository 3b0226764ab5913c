// ReplicatedVolumes::Create: a new replicated volume, empty, a clone of a snapshot or of this
// node's volume, or a restore of a backup (docs/replication.md, "Creating a replicated volume"
// and "Replicated clones and restores").
#include <algorithm>

#include "backup/backup_manager.h"
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

// Why this node cannot take a replica of the volume `request` places.
std::string LocalRefusal(const std::vector<cluster::NodeRecord>& nodes,
                         const cluster::PlacementRequest& request) {
  std::string why = cluster::WhyNotPlaced(nodes, request, request.local_node);
  return why.empty() ? "it was not placed" : why;
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

void ReplicatedVolumes::StartFromLocalCopy(const std::string& what, cluster::Membership* m) {
  // Only the local replica is known to hold the data (a clone, a restore): the others (clones of
  // their node's copy of the snapshot, or empty) are stale, so the first target compares every
  // region with them (hash by hash, sending what differs) before they join.
  for (cluster::ReplicaMember& r : m->replicas) {
    if (r.node == options_.node_name) continue;
    r.state = cluster::ReplicaState::kStale;
    r.since_epoch = m->epoch;
  }
  m->in_sync = {options_.node_name};
  m->history.clear();
  m->RecordChange("created from " + what + " (the other replicas are compared with " +
                  options_.node_name + "'s at the first attach)");
}

Result<uint64_t> ReplicatedVolumes::SourceSize(const ReplicatedSpec& spec) {
  if (!spec.source.empty() && !spec.backup.empty()) {
    return Status::InvalidArgument("a volume comes from a snapshot, a volume or a backup, not " +
                                   spec.source + " and " + spec.backup);
  }
  if (!spec.backup.empty()) {
    backup::BackupManager* backups = lifecycle_->backups();
    if (backups == nullptr)
      return Status::FailedPrecondition("backups are not enabled in this shaled");
    SHALE_ASSIGN_OR_RETURN(backup::BackupRef ref, backup::ParseBackupRef(spec.backup));
    SHALE_ASSIGN_OR_RETURN(backup::Manifest manifest,
                           backups->Get({ref.location, spec.backup_endpoint}, ref.id));
    return manifest.size_bytes;
  }
  if (spec.source.empty()) return uint64_t{0};
  if (spec.source.find('@') != std::string::npos) {
    // A replicated clone starts from this node's copy of the snapshot (docs/replication.md,
    // "Replicated clones and restores").
    Result<snapshot::SnapshotInfo> snap = lifecycle_->snapshots()->Get(spec.source);
    if (!snap.ok()) {
      return snap.status().IsNotFound()
                 ? Status::FailedPrecondition("node " + options_.node_name +
                                              " holds no copy of snapshot " + spec.source +
                                              ": create the clone on a node that holds one")
                 : snap.status();
    }
    return snap->size_bytes;
  }
  // A live volume: this node's own, not a replica (one of a replicated volume may be behind its
  // others, and its target may be writing it from another node right now).
  if (Result<cluster::VolumeRecord> r = store_->GetVolume(spec.source); r.ok()) {
    return Status::InvalidArgument("volume " + spec.source +
                                   " is replicated: clone one of its snapshots instead (shale "
                                   "snapshot create " +
                                   spec.source + "@SNAP, then clone " + spec.source + "@SNAP)");
  } else if (!r.status().IsNotFound()) {
    return r.status();
  }
  Result<VolumeInfo> vol = lifecycle_->engine()->GetVolume(spec.source);
  if (!vol.ok()) {
    return vol.status().IsNotFound()
               ? Status::FailedPrecondition("node " + options_.node_name + " holds no volume " +
                                            spec.source + ": create the clone on its node")
               : vol.status();
  }
  return vol->size_bytes;
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
    if (spec.backup.empty()) return lifecycle_->Create(local, advice);
    // A restore takes as long as the data does; interrupted by a crash, the half-restored
    // replica is deleted at the next start (VolumeLifecycle::RecoverRestores).
    return lifecycle_->Restore({.backup = spec.backup,
                                .endpoint = spec.backup_endpoint,
                                .volume = std::move(local),
                                .progress = spec.restore_progress});
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
  SHALE_ASSIGN_OR_RETURN(const uint64_t source_size, SourceSize(spec));
  const uint64_t size =
      std::max(RoundUpToBlock(spec.volume.params.size_bytes), RoundUpToBlock(source_size));
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  cluster::PlacementRequest request{options_.node_name, size, spec.replicas, spec.replica_nodes,
                                    selector};
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::ReplicaPlacement> placement,
                         cluster::PlaceReplicas(nodes, request));
  // A node that cannot take a replica (cordoned, full, not meeting the selector, not among
  // --replica-nodes) still creates an empty volume: every replica goes elsewhere and this node
  // serves it through a target-only anchor (docs/replication.md, "Volumes held elsewhere"). A clone
  // or a restore starts from this node's copy: it needs a replica.
  const bool local_replica = placement.front().node == options_.node_name;
  if (!local_replica && (!spec.source.empty() || !spec.backup.empty())) {
    return Status::FailedPrecondition(
        "this node (" + options_.node_name + ") cannot take a replica (" +
        LocalRefusal(nodes, request) + "), and a replicated " +
        (spec.backup.empty() ? "clone" : "restore") +
        " starts from this node's copy: create it on a node that can take one");
  }
  const Uuid uuid = Uuid::Random();
  SHALE_ASSIGN_OR_RETURN(cluster::Membership membership,
                         cluster::NewMembership(uuid.ToString(), size, spec.min_in_sync,
                                                options_.node_name, placement));
  membership.node_selector = request.selector.ToString();
  membership.labels = spec.volume.params.labels;
  if (spec.volume.qos.has_value()) membership.qos = QosToMembership(spec.volume.qos->Normalized());
  const bool from_snapshot = spec.source.find('@') != std::string::npos;
  if (!spec.backup.empty()) {
    StartFromLocalCopy("backup " + spec.backup, &membership);
  } else if (!spec.source.empty()) {
    StartFromLocalCopy((from_snapshot ? "snapshot " : "volume ") + spec.source, &membership);
  }
  // Other nodes may hold a copy of a snapshot, never this node's volume or the backup: their
  // replicas of those start empty.
  SHALE_RETURN_IF_ERROR(PlaceRemote(name, membership, nodes, from_snapshot ? spec.source : ""));
  Result<VolumeInfo> volume =
      local_replica ? CreateLocalReplica(spec, uuid, size, placement.front().pool, advice)
                    : CreateAnchor(spec.volume, membership);
  if (!volume.ok()) {
    DeleteRemote(name, membership, /*ignore_unreachable=*/true).IgnoreError();
    return volume.status();
  }
  if (Result<int64_t> made = store_->CreateVolume(name, membership); !made.ok()) {
    if (local_replica) {
      lifecycle_->Delete(name).IgnoreError();
    } else {
      RemoveAnchor(name, "the membership was not recorded");
    }
    DeleteRemote(name, membership, /*ignore_unreachable=*/true).IgnoreError();
    return made.status().WithContext("record the membership of " + name + " in etcd");
  }
  SHALE_LOG_INFO("replicated volume created", {"volume", name}, {"replicas", spec.replicas},
                 {"uuid", uuid.ToString()}, {"source", spec.source}, {"backup", spec.backup},
                 {"local_replica", local_replica ? 1 : 0});
  if (!local_replica && advice != nullptr) {
    std::string holders;
    for (const cluster::ReplicaPlacement& p : placement) {
      holders += (holders.empty() ? "" : ", ") + p.node;
    }
    advice->push_back("node " + options_.node_name + " holds no replica (" +
                      LocalRefusal(nodes, request) +
                      "): it serves the volume from the replicas on " + holders +
                      ", and every read crosses the network");
  }
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
