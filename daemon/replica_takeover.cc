// ReplicatedVolumes: moving a volume's target to another node that holds an in-sync replica, and
// fencing the old one (docs/replication.md, "Moving the target and fencing").
//
//   new node: Txn (target := this node, epoch + 1; only from a member of in_sync)
//             -> its replica server persists the new epoch for the local replica (the old
//                target's requests to it get STALE_EPOCH from now on)
//             -> the target opens: every replica it reaches persists the new epoch at OPEN
//   old node: its replica server, raising the epoch of its replica, tells ReplicatedVolumes
//             (FenceLocal) before it answers that OPEN: the old target's layer is fenced, so its
//             local writes (which bypass the replica server) stop too. A partitioned old target
//             is fenced by the first STALE_EPOCH a replica answers.
#include "daemon/cluster_node.h"
#include "daemon/replica_membership.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"

namespace shale::daemon {

void ReplicatedVolumes::FenceLocal(const std::string& volume, uint64_t epoch) {
  std::shared_ptr<Target> target = Find(volume);
  if (target == nullptr) return;
  replication::ReplicationLayer* layer = LayerOf(*target);
  ReactorOf(*target)->RunSync([&] { layer->FenceAt(epoch); });
}

Result<std::string> ReplicatedVolumes::TakeOver(const std::string& name, bool force) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  const std::string& self = options_.node_name;
  if (m.Find(self) == nullptr) {
    return Status::FailedPrecondition("node " + self + " holds no replica of volume '" + name +
                                      "'");
  }
  if (m.target == self) {
    if (Find(name) != nullptr) {
      return Status::AlreadyExists("node " + self + " is the target of volume '" + name +
                                   "' already (epoch " + std::to_string(m.epoch) + ")");
    }
    {
      std::lock_guard lock(mu_);
      if (auto it = pending_.find(name); it != pending_.end()) {
        return Status::Unavailable("node " + self + " is the target of volume '" + name +
                                   "' and is opening it: " + it->second);
      }
    }
    // Moved here by an earlier take-over that could not finish: finish it (no second epoch).
    return FinishTakeOver(name, m.epoch,
                          "volume '" + name + "' taken over at epoch " + std::to_string(m.epoch));
  }
  if (!m.InSync(self)) {
    return Status::FailedPrecondition(
        "the replica of volume '" + name + "' on " + self +
        " is not in the in-sync set: it may miss acknowledged writes and cannot serve");
  }
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  if (!local.ok() || !local->labels.contains(replication::kReplicaUuidLabel)) {
    return Status::FailedPrecondition("node " + self + " has no local replica of volume '" + name +
                                      "'");
  }
  if (!force) {
    SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
    for (const cluster::NodeRecord& n : nodes) {
      if (n.name == m.target && n.up) {
        return Status::FailedPrecondition(
            "volume '" + name + "' is served by node " + m.target +
            ", whose lease lives; take it over once that node is down, or with --force if you "
            "know it is dead");
      }
    }
  }
  const std::string old_target = m.target;
  Result<cluster::VolumeRecord> moved =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (!next->InSync(self)) {
          return Status::FailedPrecondition("the replica on " + self +
                                            " left the in-sync set meanwhile");
        }
        if (next->target != m.target) {
          return Status::Aborted("the target of " + name + " changed meanwhile (now " +
                                 next->target + "); look again");
        }
        next->target = self;
        next->epoch += 1;
        next->RecordChange("target moved from " + old_target + " to " + self +
                           (force ? " (forced)" : ""));
        return true;
      });
  if (!moved.ok()) return moved.status().WithContext("record the new target of " + name);
  const uint64_t epoch = moved->membership.epoch;
  SHALE_LOG_WARN("volume taken over", {"volume", name}, {"from", old_target}, {"epoch", epoch},
                 {"forced", force ? 1 : 0});
  return FinishTakeOver(
      name, epoch,
      "volume '" + name + "' taken over from " + old_target + " at epoch " + std::to_string(epoch));
}

Result<std::string> ReplicatedVolumes::FinishTakeOver(const std::string& name, uint64_t epoch,
                                                      std::string result) {
  if (options_.raise_local_epoch) {
    // Before the target opens: the old target could still write to the local replica.
    if (Status st = options_.raise_local_epoch(name, epoch); !st.ok()) {
      return st.WithContext("volume " + name + " moved to " + options_.node_name + " at epoch " +
                            std::to_string(epoch) +
                            ", but fencing its local replica failed (run take-over again)");
    }
  }
  Result<std::shared_ptr<Target>> target = OpenTarget(name);
  std::lock_guard lock(mu_);
  if (target.ok()) {
    pending_.erase(name);
    targets_[name] = std::move(target).value();
  } else {
    pending_[name] = target.status().ToString();
    result += "; the target is not open yet (retried): " + target.status().ToString();
  }
  return result;
}

}  // namespace shale::daemon
