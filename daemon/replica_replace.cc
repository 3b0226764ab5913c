// Replacing a replica (docs/replication.md, "Replacing a replica"): the repair thread of a
// volume's target places a new replica on another node in place of one whose node is draining
// (`shale node drain`) or has been down longer than --replica-replace-after, rebuilds it whole,
// and once it is in sync removes the replaced one (from the membership first, then from the
// layer, then from its node when that node is up). Also the caretaker of detached volumes and
// the removal of orphaned replicas (named by no membership any more).
#include <algorithm>
#include <future>
#include <set>

#include "cluster/placement.h"
#include "daemon/cluster_node.h"
#include "daemon/replica_membership.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/changed_regions.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"

namespace shale::daemon {

using replication::MemberState;

namespace {

constexpr auto kReplaceFirstBackoff = std::chrono::seconds(1);
constexpr auto kReplaceMaxBackoff = std::chrono::seconds(30);
// How long the removal from the layer waits for the replaced replica to settle (a leave being
// recorded) before it is retried at the next tick.
constexpr auto kRemoveSettle = std::chrono::seconds(10);
// How often the repair thread looks for detached volumes with a replica to replace.
constexpr auto kCarePeriod = std::chrono::seconds(2);

// A replica younger than this is never an orphan: it may be being placed (its membership is
// written after every replica exists, seconds later).
constexpr uint64_t kOrphanMinAgeNs = 10ull * 1000 * 1000 * 1000;
bool IsReplaced(const cluster::Membership& m, const std::string& node) {
  return std::any_of(m.replicas.begin(), m.replicas.end(),
                     [&](const cluster::ReplicaMember& r) { return r.replaces == node; });
}

}  // namespace

std::map<std::string, std::string> ReplicatedVolumes::DoomedNodes(
    const std::vector<cluster::NodeRecord>& nodes) {
  const auto now = std::chrono::steady_clock::now();
  std::map<std::string, std::string> doomed;
  for (const cluster::NodeRecord& n : nodes) {
    if (n.draining) doomed[n.name] = "node " + n.name + " is drained";
    if (n.up) {
      down_since_.erase(n.name);
      continue;
    }
    const auto since = down_since_.try_emplace(n.name, now).first->second;
    if (options_.replace_after.count() > 0 && now - since >= options_.replace_after) {
      const auto secs = std::chrono::duration_cast<std::chrono::seconds>(now - since).count();
      doomed.try_emplace(n.name, "node " + n.name + " has been down for " + std::to_string(secs) +
                                     " s (--replica-replace-after)");
    }
  }
  for (auto it = down_since_.begin(); it != down_since_.end();) {  // forgotten nodes
    it = FindNode(nodes, it->first) == nullptr ? down_since_.erase(it) : std::next(it);
  }
  return doomed;
}

bool ReplicatedVolumes::ReplaceStep(const std::shared_ptr<Target>& target,
                                    const std::vector<replication::ReplicaStatus>& live,
                                    const std::map<std::string, std::string>& doomed,
                                    const std::vector<cluster::NodeRecord>& nodes) {
  bool wanted = false;
  {
    std::lock_guard lock(target->mu);
    wanted = !target->being_replaced.empty();
  }
  // The target's own replica goes only when its node drains (it is up: it serves).
  const cluster::NodeRecord* self = FindNode(nodes, options_.node_name);
  const bool self_draining = self != nullptr && self->draining;
  for (const replication::ReplicaStatus& s : live) {
    wanted = wanted || (s.local ? self_draining : doomed.contains(s.node));
  }
  if (!wanted) return false;
  Result<cluster::VolumeRecord> record = store_->GetVolume(target->name);
  if (!record.ok()) return false;  // etcd: the next tick
  const cluster::Membership& m = record->membership;
  {
    std::lock_guard lock(target->mu);
    target->being_replaced.clear();
    for (const cluster::ReplicaMember& r : m.replicas) {
      if (!r.replaces.empty()) target->being_replaced.insert(r.replaces);
    }
  }
  for (const cluster::ReplicaMember& r : m.replicas) {
    if (!r.replaces.empty() && m.InSync(r.node)) {
      FinishReplace(target, r.replaces, r.node, nodes);
      return true;
    }
  }
  {
    std::lock_guard lock(target->mu);
    if (!target->repairing.empty()) return false;  // one rebuild at a time per volume
  }
  for (const cluster::ReplicaMember& r : m.replicas) {
    auto why = doomed.find(r.node);
    const bool own = r.node == options_.node_name;
    if ((own && (!self_draining || !target->local_replica)) || why == doomed.end() ||
        IsReplaced(m, r.node)) {
      continue;
    }
    {
      std::lock_guard lock(target->mu);
      if (std::chrono::steady_clock::now() < target->repair[r.node].replace_next_try) continue;
    }
    Status started = StartReplace(target, m, r.node, why->second, nodes);
    if (started.ok()) return true;
    std::lock_guard lock(target->mu);
    NodeRepair& rep = target->repair[r.node];
    rep.replace_next_try = std::chrono::steady_clock::now() + rep.replace_backoff;
    rep.replace_backoff = std::min<std::chrono::milliseconds>(
        std::max<std::chrono::milliseconds>(rep.replace_backoff * 2, kReplaceFirstBackoff),
        kReplaceMaxBackoff);
    if (started.ToString() != rep.replace_error) {
      rep.replace_error = started.ToString();
      SHALE_LOG_WARN("replica not replaced yet; retrying with backoff", {"volume", target->name},
                     {"node", r.node}, {"why", why->second}, {"error", rep.replace_error});
    }
  }
  return false;
}

Status ReplicatedVolumes::StartReplace(const std::shared_ptr<Target>& target,
                                       const cluster::Membership& m, const std::string& old,
                                       const std::string& why,
                                       const std::vector<cluster::NodeRecord>& nodes) {
  const std::string& name = target->name;
  SHALE_ASSIGN_OR_RETURN(cluster::ReplicaPlacement placed,
                         PlaceReplacement(nodes, m, options_.node_name, old, name));
  const std::string node = placed.node;
  const cluster::NodeRecord* n = FindNode(nodes, node);
  replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                         options_.secret, transport_, options_.connect_timeout};
  const replication::ReplicaSpec spec{name, target->uuid, m.size_bytes, ""};
  Result<replication::ReplicaStat> made = replication::CreateReplica(admin, spec, m.epoch);
  if (!made.ok()) return made.status().WithContext("create a replica of " + name + " on " + node);
  auto undo = [&](const Status& why_not) {
    std::promise<Status> dropped;
    target->reactor->Post(
        [&] { target->changed->Drop(node, [&](Status st) { dropped.set_value(st); }); });
    (void)dropped.get_future().get();
    Status deleted = replication::DeleteReplica(admin, spec, m.epoch);
    if (!deleted.ok()) {
      SHALE_LOG_WARN("could not remove a replica placed by a failed replacement", {"volume", name},
                     {"node", node}, {"error", deleted.ToString()});
    }
    return why_not;
  };
  // Every region is marked for it before the store names it: a target restarted meanwhile
  // rebuilds it whole, never from the activity log alone.
  std::promise<Status> marked;
  target->reactor->Post([&] {
    target->changed->Mark({node}, 0, m.size_bytes, [&](Status st) { marked.set_value(st); });
  });
  if (Status st = marked.get_future().get(); !st.ok()) {
    return undo(st.WithContext("mark the regions of the new replica"));
  }
  {
    std::lock_guard lock(target->mu);
    if (!target->repairing.empty()) return undo(Status::Aborted("a rebuild started meanwhile"));
    target->repairing = node;
  }
  Result<cluster::VolumeRecord> added = EditMembership(store_.get(), name, ReplicaAdded(node, old));
  if (!added.ok()) {
    std::lock_guard lock(target->mu);
    target->repairing.clear();
    return undo(added.status());
  }
  {
    std::lock_guard lock(target->mu);
    target->being_replaced.insert(old);
  }
  SHALE_LOG_WARN("replacing a replica", {"volume", name}, {"replaced", old}, {"by", node},
                 {"why", why});
  uint64_t epoch = 0;
  target->reactor->RunSync([&] { epoch = target->layer->epoch(); });
  Result<std::unique_ptr<replication::ReplicaClient>> client =
      Connect(*target, n->info.replica_address, epoch);
  std::shared_ptr<replication::ReplicaTarget> remote;
  if (client.ok()) {
    remote = std::make_shared<replication::RemoteReplica>(node, std::move(client).value());
  } else {
    remote = std::make_shared<UnreachableReplica>(node, target->reactor);
  }
  target->reactor->RunSync([&] {
    target->layer->SetReplica(remote, client.ok() ? MemberState::kRebuilding : MemberState::kOut);
    if (client.ok()) StartRebuilder(*target, node);
  });
  if (!client.ok()) {  // the repair thread reconnects it like any replica that is out
    std::lock_guard lock(target->mu);
    target->repairing.clear();
    target->repair[node].last_error = client.status().ToString();
  }
  return Status::Ok();
}

Status ReplicatedVolumes::RemoveFromLayer(Target& target, const std::string& node, uint64_t epoch,
                                          std::shared_ptr<replication::ReplicaTarget>* gone) {
  Status out = Status::Unavailable("not tried");
  const auto deadline = std::chrono::steady_clock::now() + kRemoveSettle;
  while (!out.ok() && !out.IsNotFound() && std::chrono::steady_clock::now() < deadline) {
    std::promise<Status> done;
    target.reactor->RunSync([&] {
      if (epoch > target.layer->epoch()) target.layer->SetEpoch(epoch);
      if (gone != nullptr && *gone == nullptr) *gone = target.layer->Target(node);
      target.layer->RemoveReplica(node, [&](Status st) { done.set_value(st); });
    });
    out = done.get_future().get();
    if (!out.ok() && !out.IsNotFound()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return out;
}

void ReplicatedVolumes::FinishReplace(const std::shared_ptr<Target>& target, const std::string& old,
                                      const std::string& by,
                                      const std::vector<cluster::NodeRecord>& nodes) {
  const std::string& name = target->name;
  Result<cluster::VolumeRecord> removed =
      EditMembership(store_.get(), name, ReplicaRemoved(old, "replaced by " + by));
  if (!removed.ok()) {
    SHALE_LOG_WARN("replaced replica not removed yet", {"volume", name}, {"node", old},
                   {"error", removed.status().ToString()});
    return;
  }
  const cluster::Membership& m = removed->membership;
  if (old == options_.node_name) {
    FinishLocalReplace(*target, m, by);
    return;
  }
  // Out of the layer (a replica that was in sync keeps getting writes until here: more than
  // the store asks for, never fewer). One that is leaving settles first.
  std::shared_ptr<replication::ReplicaTarget> gone;
  const Status out = RemoveFromLayer(*target, old, m.epoch, &gone);
  if (!out.ok() && !out.IsNotFound()) {
    SHALE_LOG_ERROR("replaced replica still in the target's layer", {"volume", name}, {"node", old},
                    {"error", out.ToString()});
  }
  if (auto* remote = dynamic_cast<replication::RemoteReplica*>(gone.get()); remote != nullptr) {
    remote->client().Close();  // requests in flight fail; the layer ignores them now
  }
  gone.reset();
  const cluster::NodeRecord* n = FindNode(nodes, old);
  if (n != nullptr && n->up && n->status.ok() && !n->info.replica_address.empty()) {
    replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                           options_.secret, transport_, options_.connect_timeout};
    Status deleted =
        replication::DeleteReplica(admin, {name, target->uuid, m.size_bytes, ""}, m.epoch);
    if (!deleted.ok()) {
      SHALE_LOG_WARN("replaced replica left on its node (removed at its next start)",
                     {"volume", name}, {"node", old}, {"error", deleted.ToString()});
    }
  }
  {
    std::lock_guard lock(target->mu);
    target->being_replaced.erase(old);
    target->repair.erase(old);
  }
  SHALE_LOG_INFO("replica replaced", {"volume", name}, {"removed", old}, {"by", by},
                 {"epoch", m.epoch});
}

void ReplicatedVolumes::FinishLocalReplace(Target& target, const cluster::Membership& m,
                                           const std::string& by) {
  const std::string& name = target.name;
  const std::string& self = options_.node_name;
  // Out of the layer first (the store no longer names it: the others have every write), so that
  // nothing reads or writes it once it is an anchor.
  const Status out = RemoveFromLayer(target, self, m.epoch, nullptr);
  if (!out.ok() && !out.IsNotFound()) {
    // It stays in the layer (it gets every write: more than the store asks for); the target's
    // next open makes it the anchor (OpenTarget).
    SHALE_LOG_ERROR("replaced local replica still in the target's layer", {"volume", name},
                    {"error", out.ToString()});
    return;
  }
  target.reactor->RunSync([&] { target.local_replica = false; });
  target.handle->volume().set_data_elsewhere(true);
  {
    std::lock_guard lock(target.mu);
    target.being_replaced.erase(self);
  }
  SHALE_LOG_INFO("replica replaced", {"volume", name}, {"removed", self}, {"by", by},
                 {"epoch", m.epoch});
  // A failure here leaves a replica-labelled volume the membership does not name: the target's
  // next open finishes the change, as after a crash.
  Result<VolumeInfo> relabelled = RelabelAsAnchor(name);
  if (!relabelled.ok()) {
    SHALE_LOG_ERROR("replaced local replica not made the anchor yet (done at the next open)",
                    {"volume", name}, {"error", relabelled.status().ToString()});
    return;
  }
  if (Status st = ReleaseAnchorData(target); !st.ok()) {
    SHALE_LOG_WARN("anchor keeps the data of the replica it was (released at the next open)",
                   {"volume", name}, {"error", st.ToString()});
  }
}

bool ReplicatedVolumes::RemoveIfOrphan(const VolumeInfo& v,
                                       const Result<cluster::VolumeRecord>& record) {
  std::string why;
  if (!record.ok()) {
    if (!record.status().IsNotFound()) return false;  // etcd: keep it
    why = "the volume has no membership any more (deleted while this node was away)";
  } else if (record->membership.uuid != ReplicaUuidOf(v)) {
    why = "the volume's membership names another uuid (deleted and created again)";
  } else if (IsTargetOnly(v)) {
    // A target-only anchor lives while this node serves the volume.
    if (record->membership.target == options_.node_name && !record->membership.detached) {
      return false;
    }
    why = record->membership.detached
              ? "a target-only anchor of a volume detached since"
              : "a target-only anchor of a volume served by " + record->membership.target +
                    " since (taken over while this node was away)";
  } else if (record->membership.target == options_.node_name && !record->membership.detached) {
    // The volume this node serves: a replica a drain replaced becomes the target's anchor at its
    // open (OpenTarget), never an orphan.
    return false;
  } else if (record->membership.Find(options_.node_name) == nullptr) {
    why = "the membership no longer names this node (its replica was replaced)";
  } else {
    return false;
  }
  // A replica being placed right now has no membership yet: only older ones are orphans.
  const uint64_t now_ns =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  if (now_ns < v.created_unix_ns + kOrphanMinAgeNs) return false;
  DeleteOptions options;
  options.extra_records = [](uint64_t volume_id, MetaBatch* batch) {
    replication::ChangedRegions::ForgetVolume(volume_id, batch);
    batch->Delete(replication::ReplicaStateKey(volume_id));
  };
  Status deleted = lifecycle_->Delete(v.name, options);
  if (!deleted.ok()) {
    SHALE_LOG_WARN("orphaned replica not removed", {"volume", v.name}, {"why", why},
                   {"error", deleted.ToString()});
    return false;
  }
  SHALE_LOG_WARN("orphaned replica removed", {"volume", v.name}, {"why", why});
  return true;
}

void ReplicatedVolumes::RemoveOrphans() {
  std::vector<VolumeInfo> held;
  for (VolumeInfo& v : lifecycle_->engine()->ListVolumes()) {
    std::lock_guard lock(mu_);
    if (!ReplicaUuidOf(v).empty() && !targets_.contains(v.name) && !pending_.contains(v.name)) {
      held.push_back(std::move(v));
    }
  }
  if (held.empty()) return;
  Result<std::vector<cluster::VolumeRecord>> records = store_->ListVolumes();  // one Range
  if (!records.ok()) return;
  std::map<std::string, const cluster::VolumeRecord*> by_name;
  std::set<std::string> unreadable;
  for (const cluster::VolumeRecord& r : *records) {
    if (r.status.ok()) {
      by_name[r.name] = &r;
    } else {
      unreadable.insert(r.name);
    }
  }
  for (const VolumeInfo& v : held) {
    // A record this node cannot read (written by a newer shaled during an upgrade, or damaged)
    // says nothing about whether the replica is needed: it stays.
    if (unreadable.contains(v.name)) continue;
    auto it = by_name.find(v.name);
    (void)RemoveIfOrphan(v, it == by_name.end()
                                ? Result<cluster::VolumeRecord>(Status::NotFound("no record"))
                                : Result<cluster::VolumeRecord>(*it->second));
  }
}

void ReplicatedVolumes::CareForDetached(const std::vector<cluster::NodeRecord>& nodes,
                                        const std::map<std::string, std::string>& doomed) {
  std::set<std::string> caring;
  {
    std::lock_guard lock(mu_);
    caring = caretaking_;
  }
  const auto now = std::chrono::steady_clock::now();
  if ((doomed.empty() && caring.empty()) || now < next_care_) return;
  next_care_ = now + kCarePeriod;
  Result<std::vector<cluster::VolumeRecord>> volumes = store_->ListVolumes();
  if (!volumes.ok()) return;
  std::set<std::string> listed;
  for (const cluster::VolumeRecord& v : *volumes) {
    if (!v.status.ok()) continue;
    listed.insert(v.name);
    const cluster::Membership& m = v.membership;
    const bool needs = std::any_of(m.replicas.begin(), m.replicas.end(), [&](const auto& r) {
      return !r.replaces.empty() || (r.node != options_.node_name && doomed.contains(r.node));
    });
    if (caring.contains(v.name)) {
      if (needs) continue;
      Result<std::string> detached = Detach(v.name, DetachFor::kItself);
      if (detached.ok()) {
        SHALE_LOG_INFO("the volume is detached again", {"volume", v.name});
      } else {
        DetachLater(v.name, "attached to replace a replica", detached.status());
      }
      continue;
    }
    if (!needs || !m.detached) continue;
    // The caretaker: the first node of in_sync that is up and stays.
    std::string caretaker;
    for (const std::string& n : m.in_sync) {
      const cluster::NodeRecord* rec = FindNode(nodes, n);
      if (rec != nullptr && rec->up && !doomed.contains(n)) {
        caretaker = n;
        break;
      }
    }
    if (caretaker != options_.node_name) continue;
    if (Status attached = AttachForItself(v.name); !attached.ok()) {
      SHALE_LOG_WARN("detached volume not attached to replace a replica", {"volume", v.name},
                     {"error", attached.ToString()});
      continue;
    }
    SHALE_LOG_INFO("detached volume attached here to replace a replica; detached again after",
                   {"volume", v.name});
  }
  std::lock_guard lock(mu_);
  // Volumes gone from the cluster (not those added since the list was read).
  for (const std::string& name : caring) {
    if (!listed.contains(name)) ForgetSelfAttachLocked(name);
  }
}

}  // namespace shale::daemon
