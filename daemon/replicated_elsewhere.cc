// ReplicatedVolumes: replicated volumes asked of a node that holds none of them (no replica, no
// anchor): their membership, deleting them, and snapshots of them (docs/replication.md,
// "Volumes held elsewhere"). CSI's controller runs on whichever node Kubernetes picks, which need
// not hold a replica of the volume it is asked about.
#include <chrono>
#include <map>
#include <thread>

#include "daemon/cluster_node.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "replication/replica_admin.h"
#include "replication/replica_server.h"

namespace shale::daemon {

Result<cluster::Membership> ReplicatedVolumes::MembershipOf(const std::string& name) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  return std::move(record.membership);
}

Status ReplicatedVolumes::DeleteElsewhere(const std::string& name) {
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  if (!m.detached) {
    SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
    const cluster::NodeRecord* target = FindNode(nodes, m.target);
    if (target != nullptr && target->up) {
      return Status::FailedPrecondition("volume '" + name + "' is attached on node " + m.target +
                                        ", whose lease lives; detach it there (`shale volume "
                                        "detach " +
                                        name + "`), then delete it from any node");
    }
  }
  // The membership goes first, and only as it was read: from here no node can attach the
  // volume, and a node that attached it meanwhile keeps it (Aborted). A replica left behind (its
  // node down) is removed by that node as an orphan when it returns.
  if (Status gone = store_->DeleteVolume(name, record.mod_revision); !gone.ok()) {
    if (gone.code() == StatusCode::kFailedPrecondition) {
      return Status::Aborted("volume '" + name +
                             "' changed meanwhile (attached or edited by another node); look "
                             "again and retry");
    }
    return gone.WithContext("remove the membership of " + name + " in etcd");
  }
  if (Status st = DeleteRemote(name, m, /*ignore_unreachable=*/true); !st.ok()) {
    SHALE_LOG_WARN("replicas of a deleted volume left to their nodes' orphan scan",
                   {"volume", name}, {"error", st.ToString()});
  }
  SHALE_LOG_INFO("replicated volume deleted from a node holding none of it", {"volume", name},
                 {"uuid", m.uuid}, {"was_attached_on", m.detached ? "" : m.target});
  return Status::Ok();
}

Result<std::vector<snapshot::SnapshotInfo>> ReplicatedVolumes::ListCopies(
    const std::string& volume, const Uuid& uuid, uint64_t size,
    const std::vector<std::string>& in_sync) {
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  Status last = Status::Unavailable("no in-sync replica of " + volume + " is up");
  // Every up in-sync replica's list, merged by name: a replica rebuilt or placed after a
  // snapshot was taken does not hold that snapshot (docs/replication.md), the others do.
  std::map<std::string, snapshot::SnapshotInfo> merged;
  bool answered = false;
  for (const std::string& node : in_sync) {
    const cluster::NodeRecord* n = FindNode(nodes, node);
    if (n == nullptr || !n->up || n->info.replica_address.empty()) continue;
    replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                           options_.secret, transport_, options_.connect_timeout};
    Result<replication::SnapshotList> listed =
        replication::ListReplicaSnapshots(admin, {volume, uuid, size, ""});
    if (!listed.ok()) {
      last = listed.status().WithContext("node " + node);
      continue;
    }
    answered = true;
    for (replication::SnapshotEntry& e : listed->snapshots) {
      if (merged.contains(e.name)) continue;
      snapshot::SnapshotInfo info;
      info.volume = volume;
      info.name = std::move(e.name);
      info.source_volume_live = true;
      info.size_bytes = e.size_bytes;
      info.created_unix_ns = e.created_unix_ns;
      info.labels = std::move(e.labels);
      info.digest_state =
          e.digest.empty() ? snapshot::DigestState::kPending : snapshot::DigestState::kReady;
      info.digest = std::move(e.digest);
      merged.emplace(info.name, std::move(info));
    }
  }
  if (!answered) return last;
  std::vector<snapshot::SnapshotInfo> out;
  for (auto& [name, info] : merged) out.push_back(std::move(info));
  return out;
}

Result<std::string> ReplicatedVolumes::DetachWhenIdle(const std::string& name,
                                                      std::chrono::milliseconds timeout,
                                                      DetachFor by) {
  // Busy for a moment while the target's first resync (or a client's close) still holds it.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  Result<std::string> detached = Detach(name, by);
  while (!detached.ok() && detached.status().code() == StatusCode::kBusy &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    detached = Detach(name, by);
  }
  return detached;
}

Result<std::optional<snapshot::SnapshotInfo>> ReplicatedVolumes::SnapshotHeldElsewhere(
    const std::string& volume, const cluster::Membership& m, const std::string& name,
    const snapshot::CreateSnapshotOptions& options) {
  if (!m.detached && m.target != options_.node_name) {
    // Served by another node: it takes the snapshot on every in-sync replica.
    VolumeInfo like;
    like.name = volume;
    like.size_bytes = m.size_bytes;
    like.labels[replication::kReplicaUuidLabel] = m.uuid;
    return SnapshotOnTarget(like, m, name, options.labels);
  }
  if (!m.detached) {
    return Status::Unavailable("volume '" + volume + "' is being opened on " + options_.node_name +
                               "; retry");
  }
  // Detached: served here for the snapshot (from the replicas, through an anchor), which is
  // taken on every in-sync replica, then detached again: nothing of it stays on this node.
  SHALE_RETURN_IF_ERROR(AttachForItself(volume).WithContext("attach for the snapshot"));
  Result<std::optional<snapshot::SnapshotInfo>> taken = Snapshot(volume, name, options);
  DetachItself(volume, "attached for a snapshot");
  return taken;
}

Status ReplicatedVolumes::AttachForItself(const std::string& volume) {
  SHALE_RETURN_IF_ERROR(Attach(volume).status());
  std::lock_guard lock(mu_);
  caretaking_.insert(volume);
  return Status::Ok();
}

void ReplicatedVolumes::DetachItself(const std::string& volume, const std::string& why) {
  Result<std::string> detached =
      DetachWhenIdle(volume, std::chrono::seconds(10), DetachFor::kItself);
  if (!detached.ok()) DetachLater(volume, why, detached.status());
}

void ReplicatedVolumes::DetachLater(const std::string& volume, const std::string& why,
                                    const Status& failed) {
  std::lock_guard lock(mu_);
  // Moved, deleted or attached by people meanwhile: nothing is this node's to detach any more.
  if (failed.code() == StatusCode::kFailedPrecondition || failed.IsNotFound() ||
      !caretaking_.contains(volume)) {
    ForgetSelfAttachLocked(volume);
    SHALE_LOG_INFO("volume not detached again: it is no longer this node's to detach",
                   {"volume", volume}, {"why", why}, {"reason", failed.ToString()});
    return;
  }
  // Still in caretaking_ (Detach leaves it there when it fails): the repair thread retries.
  if (!detach_retries_.insert(volume).second) return;  // logged at the first failure
  SHALE_LOG_WARN("volume not detached yet; the repair thread retries every 2 s", {"volume", volume},
                 {"why", why}, {"error", failed.ToString()});
}

}  // namespace shale::daemon
