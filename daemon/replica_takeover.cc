// ReplicatedVolumes: moving a volume's target to another node that holds an in-sync replica, and
// fencing the old one (docs/replication.md, "Moving the target and fencing"); attaching and
// detaching a volume (docs/replication.md, "Attach and detach").
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
  if (m.target == options_.node_name && !m.detached) {
    return AlreadyHere(name, m, "taken over");
  }
  return MoveHere(name, m, force, "take it over");
}

Result<std::string> ReplicatedVolumes::Attach(const std::string& name) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  {
    std::lock_guard lock(mu_);
    caretaking_.erase(name);  // attached for people now: the repair thread leaves it attached
  }
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  if (m.target == options_.node_name && !m.detached) {
    Result<std::string> here = AlreadyHere(name, m, "attached");
    if (here.ok() || !here.status().IsAlreadyExists()) return here;
    return "volume '" + name + "' is attached on " + options_.node_name + " (epoch " +
           std::to_string(m.epoch) + ")";
  }
  return MoveHere(name, m, /*force=*/false, "attach it");
}

Result<std::string> ReplicatedVolumes::AlreadyHere(const std::string& name,
                                                   const cluster::Membership& m,
                                                   const std::string& verb) {
  const std::string& self = options_.node_name;
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
                        "volume '" + name + "' " + verb + " at epoch " + std::to_string(m.epoch));
}

Result<std::string> ReplicatedVolumes::MoveHere(const std::string& name,
                                                const cluster::Membership& m, bool force,
                                                const std::string& verb) {
  const std::string& self = options_.node_name;
  if (m.Find(self) == nullptr) {
    std::string holders;
    for (const std::string& n : m.in_sync) holders += (holders.empty() ? "" : ", ") + n;
    return Status::FailedPrecondition("node " + self + " holds no replica of volume '" + name +
                                      "'; " + verb + " on a node holding an in-sync replica (" +
                                      holders +
                                      "); a target on a node without a replica is not built yet");
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
  if (!force && !m.detached) {
    SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
    for (const cluster::NodeRecord& n : nodes) {
      if (n.name == m.target && n.up) {
        return Status::FailedPrecondition(
            "volume '" + name + "' is attached on node " + m.target +
            ", whose lease lives; detach it there (`shale volume detach " + name + "`), or " +
            verb + " once that node's lease expired" +
            (verb == "take it over" ? " (or with --force if you know it is dead)" : ""));
      }
    }
  }
  const std::string old_target = m.target;
  const bool was_detached = m.detached;
  Result<cluster::VolumeRecord> moved =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (!next->InSync(self)) {
          return Status::FailedPrecondition("the replica on " + self +
                                            " left the in-sync set meanwhile");
        }
        if (next->target != m.target || next->detached != was_detached) {
          return Status::Aborted("the target of " + name + " changed meanwhile (now " +
                                 next->target + (next->detached ? ", detached" : "") +
                                 "); look again");
        }
        next->target = self;
        next->detached = false;
        next->epoch += 1;
        next->RecordChange((was_detached
                                ? "attached on " + self + " (detached from " + old_target + ")"
                                : "target moved from " + old_target + " to " + self) +
                           (force ? " (forced)" : ""));
        return true;
      });
  if (!moved.ok()) return moved.status().WithContext("record the new target of " + name);
  const uint64_t epoch = moved->membership.epoch;
  {
    std::lock_guard lock(mu_);
    detached_.erase(name);
  }
  SHALE_LOG_WARN(was_detached ? "volume attached" : "volume taken over", {"volume", name},
                 {"from", old_target}, {"epoch", epoch}, {"forced", force ? 1 : 0});
  return FinishTakeOver(name, epoch,
                        "volume '" + name + "' " +
                            (was_detached ? "attached (detached from " + old_target + ")"
                                          : (verb == "attach it" ? "attached, taken over from "
                                                                 : "taken over from ") +
                                                old_target) +
                            " at epoch " + std::to_string(epoch));
}

Result<std::string> ReplicatedVolumes::Detach(const std::string& name) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  {
    std::lock_guard lock(mu_);
    caretaking_.erase(name);
  }
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  const std::string& self = options_.node_name;
  if (m.detached) return "volume '" + name + "' is detached already";
  if (m.target != self) {
    return Status::FailedPrecondition("volume '" + name + "' is attached on node " + m.target +
                                      ", not on " + self + "; detach it there");
  }
  std::shared_ptr<Target> target;
  {
    std::lock_guard lock(mu_);
    if (auto it = targets_.find(name); it != targets_.end()) {
      target = std::move(it->second);
      targets_.erase(it);
    }
  }
  if (target != nullptr && target.use_count() > 1) {
    std::lock_guard lock(mu_);
    targets_[name] = std::move(target);
    return Status::Busy("volume '" + name + "' has clients on " + self +
                        "; disconnect them (unmount, detach the NBD device) first");
  }
  target.reset();  // closes the target here: no writer on this node from now on
  Result<cluster::VolumeRecord> done =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (next->target != self) {
          return Status::Aborted("volume " + name + " moved to " + next->target + " meanwhile");
        }
        if (next->detached) return false;
        next->detached = true;  // no change of target or in_sync: the epoch stays
        return true;
      });
  std::lock_guard lock(mu_);
  if (!done.ok()) {
    pending_[name] = "detach not recorded: " + done.status().ToString();  // reopened (retried)
    return done.status().WithContext("record the detach of " + name +
                                     " (the target opens here again)");
  }
  pending_.erase(name);
  pending_retry_.erase(name);
  detached_.insert(name);
  SHALE_LOG_INFO("volume detached", {"volume", name}, {"epoch", done->membership.epoch});
  std::string holders;
  for (const std::string& n : done->membership.in_sync) {
    holders += (holders.empty() ? "" : ", ") + n;
  }
  return "volume '" + name + "' detached from " + self + "; `shale volume attach " + name +
         "` serves it on any node holding an in-sync replica (" + holders + ")";
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
