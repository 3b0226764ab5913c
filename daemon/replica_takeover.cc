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
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/changed_regions.h"
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
    ForgetSelfAttachLocked(name);  // attached for people now: the repair thread leaves it attached
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
  // A node without a replica serves the volume from the replicas elsewhere, through a
  // target-only anchor (docs/replication.md, "Targets on nodes without a replica").
  const bool diskless = m.Find(self) == nullptr;
  if (!diskless && !m.InSync(self)) {
    return Status::FailedPrecondition(
        "the replica of volume '" + name + "' on " + self +
        " is not in the in-sync set: it may miss acknowledged writes and cannot serve");
  }
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  if (!diskless && (!local.ok() || !local->labels.contains(replication::kReplicaUuidLabel))) {
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
  bool anchor_made = false;
  if (diskless) {
    SHALE_ASSIGN_OR_RETURN(anchor_made, MakeAnchor(name, m));
  }
  // A new term as the target begins here: until the target opened, this node's records of what
  // the replicas that are out missed count as unknown (the previous target holds them).
  if (Status st = RecordTermStart(name, kTermUnknown); !st.ok()) {
    if (anchor_made) RemoveAnchor(name, "the attach could not start");
    return st.WithContext("record the start of a term of " + name + " here");
  }
  const std::string old_target = m.target;
  const bool was_detached = m.detached;
  Result<cluster::VolumeRecord> moved =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (diskless ? next->Find(self) != nullptr : !next->InSync(self)) {
          return Status::FailedPrecondition(
              diskless ? "a replica of " + name + " was placed on " + self + " meanwhile"
                       : "the replica on " + self + " left the in-sync set meanwhile");
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
  if (!moved.ok()) {
    if (anchor_made) RemoveAnchor(name, "the attach was not recorded");
    return moved.status().WithContext("record the new target of " + name);
  }
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

Result<std::string> ReplicatedVolumes::Detach(const std::string& name, DetachFor by) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  const bool itself = by == DetachFor::kItself;
  if (!itself) {
    std::lock_guard lock(mu_);
    ForgetSelfAttachLocked(name);  // people's detach: nothing is left for the repair thread
  }
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  const std::string& self = options_.node_name;
  if (m.detached || m.target != self) {
    if (itself) {
      std::lock_guard lock(mu_);
      ForgetSelfAttachLocked(name);
    }
    if (m.detached) return "volume '" + name + "' is detached already";
    return Status::FailedPrecondition("volume '" + name + "' is attached on node " + m.target +
                                      ", not on " + self + "; detach it there");
  }
  std::shared_ptr<Target> target;
  {
    // One critical section: no NBD open or attach sees the target gone while it stays.
    std::lock_guard lock(mu_);
    if (itself && !caretaking_.contains(name)) {
      return Status::FailedPrecondition("volume '" + name + "' was attached on " + self +
                                        " by people meanwhile; it stays attached");
    }
    if (auto it = targets_.find(name); it != targets_.end()) {
      if (it->second.use_count() > 1) {
        return Status::Busy("volume '" + name + "' has clients on " + self +
                            "; disconnect them (unmount, detach the NBD device) first");
      }
      target = std::move(it->second);
      targets_.erase(it);
    }
  }
  const bool anchor = target != nullptr && !target->local_replica;
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
  {
    std::lock_guard lock(mu_);
    if (!done.ok()) {
      pending_[name] = "detach not recorded: " + done.status().ToString();  // reopened (retried)
      return done.status().WithContext("record the detach of " + name +
                                       " (the target opens here again)");
    }
    pending_.erase(name);
    pending_retry_.erase(name);
    if (!anchor) detached_.insert(name);
    ForgetSelfAttachLocked(name);
  }
  SHALE_LOG_INFO("volume detached", {"volume", name}, {"epoch", done->membership.epoch});
  // Nothing of the volume stays on a node without a replica (its changed regions go with the
  // anchor: the next target compares what it needs).
  if (anchor) RemoveAnchor(name, "detached");
  std::string holders;
  for (const std::string& n : done->membership.in_sync) {
    holders += (holders.empty() ? "" : ", ") + n;
  }
  return "volume '" + name + "' detached from " + self + "; `shale volume attach " + name +
         "` serves it on any node of the cluster (its in-sync replicas: " + holders + ")";
}

void ReplicatedVolumes::ForgetSelfAttachLocked(const std::string& name) {
  caretaking_.erase(name);
  detach_retries_.erase(name);
}

Result<std::string> ReplicatedVolumes::FinishTakeOver(const std::string& name, uint64_t epoch,
                                                      std::string result) {
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  const bool has_replica = local.ok() && !IsTargetOnly(*local);
  if (options_.raise_local_epoch && has_replica) {
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

namespace shale::daemon {

Result<bool> ReplicatedVolumes::MakeAnchor(const std::string& name, const cluster::Membership& m,
                                           const VolumeSpec* like) {
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  if (local.ok()) {
    if (IsTargetOnly(*local) && ReplicaUuidOf(*local) == m.uuid) return false;  // kept
    return Status::FailedPrecondition("node " + options_.node_name + " has a volume named '" +
                                      name +
                                      "' that is not this replicated volume's: delete or "
                                      "rename it to serve the replicated one here");
  }
  if (!local.status().IsNotFound()) return local.status();
  VolumeSpec spec;
  if (like != nullptr) {  // the caller's labels, QoS and frontend records; not its pool
    spec.params.labels = like->params.labels;
    spec.qos = like->qos;
    spec.records = like->records;
  }
  spec.params.name = name;
  spec.params.size_bytes = m.size_bytes;
  spec.params.labels[replication::kReplicaUuidLabel] = m.uuid;
  spec.params.labels[replication::kTargetOnlyLabel] = "true";
  spec.provisioned_bytes = 4096;  // it holds none of the data: it promises the pool nothing
  std::vector<std::string> advice;
  Result<VolumeInfo> made = lifecycle_->Create(spec, &advice);
  if (!made.ok()) return made.status().WithContext("create the target-only anchor of " + name);
  SHALE_LOG_INFO("target-only anchor created (this node holds no replica)", {"volume", name},
                 {"pool", made->pool});
  return true;
}

Result<VolumeInfo> ReplicatedVolumes::CreateAnchor(const VolumeSpec& like,
                                                   const cluster::Membership& m) {
  const std::string& name = like.params.name;
  SHALE_ASSIGN_OR_RETURN(const bool made, MakeAnchor(name, m, &like));
  if (!made) {
    return Status::AlreadyExists("volume '" + name + "' already exists (a target-only anchor)");
  }
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(name);
  if (!info.ok()) RemoveAnchor(name, "it could not be read back");
  return info;
}

void ReplicatedVolumes::RemoveAnchor(const std::string& name, const std::string& why) {
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  if (!local.ok() || !IsTargetOnly(*local)) return;
  DeleteOptions options;
  options.extra_records = replication::ChangedRegions::ForgetVolume;
  if (Status st = lifecycle_->Delete(name, options); !st.ok()) {
    // RemoveOrphans tries again.
    SHALE_LOG_WARN("target-only anchor not removed", {"volume", name}, {"why", why},
                   {"error", st.ToString()});
    return;
  }
  SHALE_LOG_INFO("target-only anchor removed", {"volume", name}, {"why", why});
}

Result<VolumeInfo> ReplicatedVolumes::RelabelAsAnchor(const std::string& name) {
  Result<VolumeInfo> relabelled =
      lifecycle_->SetLabels(name, {{replication::kTargetOnlyLabel, "true"}},
                            /*provisioned_bytes=*/4096, [](uint64_t volume_id, MetaBatch* batch) {
                              batch->Delete(replication::ReplicaStateKey(volume_id));
                            });
  if (!relabelled.ok()) {
    return relabelled.status().WithContext("make the local volume of " + name +
                                           " its target's anchor");
  }
  SHALE_LOG_WARN("local replica became the target-only anchor (this node holds no replica now)",
                 {"volume", name});
  return relabelled;
}

Status ReplicatedVolumes::ReleaseAnchorData(Target& target) {
  Volume& volume = target.handle->volume();
  volume.set_data_elsewhere(true);
  Result<Volume::SpaceUsage> usage = lifecycle_->engine()->GetVolumeUsage(target.name);
  if (!usage.ok() || usage->owned_bytes == 0) return usage.status();
  constexpr uint64_t kStep = 1ull << 30;
  for (uint64_t off = 0; off < target.size_bytes; off += kStep) {
    std::promise<Status> done;
    VolumeIo io;
    io.op = VolumeOp::kDiscard;
    io.offset = off;
    io.length = std::min(kStep, target.size_bytes - off);
    io.ctx = &done;
    io.done = [](VolumeIo* d) { static_cast<std::promise<Status>*>(d->ctx)->set_value(d->status); };
    target.reactor->Post([&] { volume.Submit(&io); });
    SHALE_RETURN_IF_ERROR(done.get_future().get().WithContext("release the anchor's data"));
  }
  SHALE_LOG_INFO("anchor released the data of the replica it was", {"volume", target.name},
                 {"bytes", usage->owned_bytes});
  return Status::Ok();
}

}  // namespace shale::daemon
