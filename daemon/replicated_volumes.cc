#include "daemon/replicated_volumes.h"

#include <algorithm>
#include <future>

#include "cluster/placement.h"
#include "daemon/cluster_node.h"
#include "daemon/replica_membership.h"
#include "daemon/replicated_target.h"
#include "engine/common/block.h"
#include "engine/common/log.h"
#include "engine/common/uuid.h"
#include "engine/io/reactor.h"
#include "engine/pool/pool.h"
#include "qos/qos_manager.h"
#include "replication/activity_log.h"
#include "replication/changed_regions.h"
#include "replication/rebuilder.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"

namespace shale::daemon {

using replication::MemberState;
using SteadyTime = std::chrono::steady_clock::time_point;

namespace {

constexpr auto kRepairTick = std::chrono::milliseconds(500);
constexpr auto kFirstBackoff = std::chrono::milliseconds(500);
constexpr auto kMaxBackoff = std::chrono::seconds(8);
// How long a target's teardown waits for a rebuild window in flight to end.
constexpr auto kRebuildDrain = std::chrono::seconds(30);
// How often the repair thread looks for orphaned replicas (after the look at start) and, when
// this node serves no target, lists the nodes (for detached volumes to replace replicas of).
constexpr auto kScanPeriod = std::chrono::seconds(10);

// The generation a replica holds: the epoch under which it last was a member of in_sync.
uint64_t GenerationOf(const cluster::Membership& m, const cluster::ReplicaMember& r) {
  if (m.InSync(r.node)) return m.epoch;
  for (auto it = m.history.rbegin(); it != m.history.rend(); ++it) {
    if (std::find(it->in_sync.begin(), it->in_sync.end(), r.node) != it->in_sync.end()) {
      return it->epoch;
    }
  }
  return r.since_epoch > 0 ? r.since_epoch - 1 : 0;
}

replication::ChangedRegions::CommitFn PoolCommit(Pool* pool) {
  return [pool](MetaBatch batch, std::function<void(Status)> done) {
    CommitPipeline::Request req;
    req.batch = std::move(batch);
    req.flush_device = false;
    req.done = [done = std::move(done)](const Status& st) { done(st); };
    pool->pipeline().Submit(std::move(req));
  };
}

}  // namespace

ReplicatedVolumes::Target::~Target() {
  // No membership change completes from now on; a rebuild's window in flight ends first (it
  // holds the layer and the changed regions).
  if (membership) membership->Stop();
  if (reactor != nullptr) {
    reactor->RunSync([this] {
      if (rebuilder && rebuild_running) rebuilder->Cancel();
    });
    const auto deadline = std::chrono::steady_clock::now() + kRebuildDrain;
    bool running = true;
    while (running && std::chrono::steady_clock::now() < deadline) {
      reactor->RunSync([&] { running = rebuild_running; });
      if (running) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    reactor->RunSync([this] { rebuilder.reset(); });
  }
  layer.reset();  // closes the remote clients: here, never on the reactor
  if (reactor != nullptr) reactor->RunSync([] {});  // completions posted meanwhile ran
  DrainActivityLog();
  changed.reset();
  membership.reset();
  handle.reset();
}

// On the reactor.
void ReplicatedVolumes::Target::RebuildDone(const std::string& node, Status status) {
  rebuild_running = false;
  const replication::Rebuilder::Progress progress = rebuilder->progress();
  auto record = [this, node, progress](const Status& st) {
    std::lock_guard lock(mu);
    NodeRepair& r = repair[node];
    r.Ended(progress);
    repairing.clear();
    if (st.ok()) {
      ++r.rebuilds;
      r.backoff = kFirstBackoff;
      r.last_error.clear();
    } else {
      r.last_error = st.ToString();
      r.next_try = std::chrono::steady_clock::now() + r.backoff;
      r.backoff = std::min<std::chrono::milliseconds>(r.backoff * 2, kMaxBackoff);
    }
  };
  if (!status.ok()) {
    SHALE_LOG_WARN("rebuild failed", {"volume", name}, {"node", node},
                   {"error", status.ToString()});
    record(status);
    return;
  }
  SHALE_LOG_INFO("rebuild done, joining", {"volume", name}, {"node", node},
                 {"bytes_sent", progress.sent_bytes}, {"bytes_total", progress.total_bytes});
  layer->Join(node, [this, node, record](Status joined) {
    if (joined.ok()) {
      SHALE_LOG_INFO("replica in sync again", {"volume", name}, {"node", node});
    } else {
      SHALE_LOG_WARN("rebuilt replica not joined; the rebuild is retried", {"volume", name},
                     {"node", node}, {"error", joined.ToString()});
    }
    record(joined);
  });
}

std::string ReplicatedVolumes::Target::SourceFor(const std::string& node) const {
  if (local_replica) return local_node;
  for (const replication::ReplicaStatus& s : layer->Replicas()) {
    if (s.node != node && s.state == MemberState::kInSync) return s.node;
  }
  return "";
}

ReplicatedVolumes::ReplicatedVolumes(VolumeLifecycle* lifecycle, ClusterNode* cluster,
                                     ReplicatedVolumesOptions options)
    : lifecycle_(lifecycle),
      cluster_(cluster),
      options_(std::move(options)),
      transport_(options_.transport),
      rebuild_bps_(options_.rebuild_bps) {}

ReplicatedVolumes::~ReplicatedVolumes() { Stop(); }

std::string ReplicatedVolumes::endpoint() const {
  return "targets of replicated volumes on " + options_.node_name;
}

Status ReplicatedVolumes::Start() {
  store_ = cluster_->store();
  if (store_ == nullptr) return Status::FailedPrecondition("the cluster node is not started");
  for (const VolumeInfo& v : lifecycle_->engine()->ListVolumes()) {
    if (ReplicaUuidOf(v).empty() || RemoveIfOrphan(v, store_->GetVolume(v.name))) continue;
    Result<std::shared_ptr<Target>> target = OpenTarget(v.name);
    if (!target.ok() && !target.status().IsNotFound()) {
      PendingFailed(v.name, target.status());  // logged; retried by the repair thread
    }
    std::lock_guard lock(mu_);
    if (target.ok()) {
      targets_[v.name] = std::move(target).value();
    } else if (!target.status().IsNotFound()) {
      pending_[v.name] = target.status().ToString();  // I/O is refused meanwhile
    }
  }
  WatchQos();
  repair_ = std::thread([this] { RepairLoop(); });
  started_.store(true);
  lifecycle_->SetSnapshotReplication(this);
  return Status::Ok();
}

void ReplicatedVolumes::Stop() {
  lifecycle_->SetSnapshotReplication(nullptr);
  started_.store(false);
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (repair_.joinable()) repair_.join();
  std::unique_ptr<cluster::Watcher> watch;
  {
    std::lock_guard lock(mu_);
    watch.swap(qos_watch_);
  }
  watch.reset();  // its callback takes mu_
  std::map<std::string, std::shared_ptr<Target>> targets;
  {
    std::lock_guard lock(mu_);
    targets.swap(targets_);
  }
  targets.clear();  // those QoS (NBD clients) still holds go with them
}

std::shared_ptr<ReplicatedVolumes::Target> ReplicatedVolumes::Find(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = targets_.find(name);
  return it == targets_.end() ? nullptr : it->second;
}

bool ReplicatedVolumes::IsReplicated(const std::string& name) {
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(name);
  return info.ok() && !ReplicaUuidOf(*info).empty();
}

bool ReplicatedVolumes::IsElsewhere(const std::string& name) {
  if (store_ == nullptr) return false;
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(name);
  if (info.ok() || !info.status().IsNotFound()) return false;
  return store_->GetVolume(name).ok();
}

std::vector<std::string> ReplicatedVolumes::HoldersElsewhere(const std::string& name) {
  std::vector<std::string> nodes;
  if (store_ == nullptr) return nodes;
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(name);
  if (info.ok() ? !IsTargetOnly(*info) : !info.status().IsNotFound()) return nodes;
  if (Result<cluster::VolumeRecord> r = store_->GetVolume(name); r.ok()) {
    for (const cluster::ReplicaMember& m : r->membership.replicas) nodes.push_back(m.node);
  }
  return nodes;
}

std::vector<std::string> ReplicatedVolumes::ReplicaNodes(const std::string& name) {
  std::vector<std::string> nodes;
  if (store_ == nullptr) return nodes;
  // A local volume of that name must be a replica (or an anchor); none: the cluster's, if any.
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(name);
  if (info.ok() ? ReplicaUuidOf(*info).empty() : !info.status().IsNotFound()) return nodes;
  if (Result<cluster::VolumeRecord> r = store_->GetVolume(name); r.ok()) {
    for (const cluster::ReplicaMember& m : r->membership.replicas) nodes.push_back(m.node);
  }
  return nodes;
}

Result<std::shared_ptr<VolumeLayer>> ReplicatedVolumes::LowerLayer(Volume& volume) {
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(volume.name());
  if (!info.ok() || info->id != volume.id() || ReplicaUuidOf(*info).empty()) {
    return std::shared_ptr<VolumeLayer>();
  }
  if (!started_.load()) {
    return Status::Unavailable("replicated volume '" + volume.name() +
                               "': its target is not open (shaled is starting or stopping)");
  }
  std::lock_guard lock(mu_);
  if (auto it = targets_.find(volume.name()); it != targets_.end()) {
    const std::shared_ptr<Target>& t = it->second;
    return std::shared_ptr<VolumeLayer>(t, t->layer.get());  // keeps the whole target alive
  }
  if (auto it = pending_.find(volume.name()); it != pending_.end()) {
    return Status::Unavailable("replicated volume '" + volume.name() +
                               "': its target is not open yet: " + it->second);
  }
  if (detached_.contains(volume.name())) {
    return Status::FailedPrecondition(
        "replicated volume '" + volume.name() + "' is not attached on this node (detached here); " +
        "`shale volume attach " + volume.name() + "` serves it here unless another node has it");
  }
  return Status::Unavailable("volume '" + volume.name() +
                             "' is a replica held for another node's target; use the target");
}

Result<std::unique_ptr<replication::ReplicaClient>> ReplicatedVolumes::Connect(
    const Target& target, const std::string& address, uint64_t epoch) {
  replication::ReplicaClientOptions o;
  o.address = address;
  o.node_name = options_.node_name;
  o.secret = options_.secret;
  o.volume = target.name;
  o.volume_uuid = target.uuid;
  o.size_bytes = target.size_bytes;
  o.epoch = epoch;
  o.transport = transport_;
  o.completion_reactor = target.reactor;
  o.connect_timeout = options_.connect_timeout;
  o.request_timeout = options_.replica_timeout;
  return replication::ReplicaClient::Connect(std::move(o));
}

Status ReplicatedVolumes::CheckServesHere(const std::string& name, const Uuid& uuid,
                                          const cluster::Membership& m, bool local_replica) {
  if (m.target != options_.node_name) {
    return Status::NotFound("volume " + name + " is served by " + m.target);
  }
  if (m.detached) {
    std::lock_guard lock(mu_);
    detached_.insert(name);
    return Status::NotFound("volume " + name + " is detached");
  }
  if (m.uuid != uuid.ToString()) {
    return Status::FailedPrecondition("the membership of volume " + name + " names uuid " + m.uuid +
                                      ", the local replica " + uuid.ToString());
  }
  if (!local_replica) {
    // A target without a replica here serves from the in-sync replicas elsewhere (ownership
    // alone lets it serve: rule 6 governs the sources, and there is always one in in_sync).
    if (m.Find(options_.node_name) != nullptr) {
      return Status::FailedPrecondition("volume " + name + " has a replica on " +
                                        options_.node_name +
                                        " now, but this node's volume is "
                                        "a target-only anchor");
    }
    return Status::Ok();
  }
  if (!m.InSync(options_.node_name)) {
    return Status::FailedPrecondition(
        "the local replica of volume " + name + " is not in the in-sync set (" +
        std::to_string(m.in_sync.size()) + " other node(s) are; it holds generation " +
        std::to_string(LocalGeneration(name)) + " of epoch " + std::to_string(m.epoch) +
        "): it refuses to serve until one of them serves the volume");
  }
  return Status::Ok();
}

// OpenTarget: what each replica that is not in sync must have compared when it returns.
Status ReplicatedVolumes::MarkReturning(Target& target, const VolumeInfo& info,
                                        const cluster::Membership& m) {
  Target* const t = &target;
  const bool local_replica = t->local_replica;
  const std::string& name = t->name;
  // A stale replica (after force-recover) may hold writes the others never saw, anywhere: every
  // region is compared with it (hash by hash) before it joins again. One that was out (or being
  // rebuilt) when the target stopped may hold writes in flight then: the activity log's regions.
  // One being replaced is never reconnected; the repair thread finishes its replacement.
  // What a replica that is out missed is recorded by the target it left under: this node's
  // records are complete for one that left during this node's term as the target; one that left
  // before (under another node) gets everything compared.
  SHALE_ASSIGN_OR_RETURN(const uint64_t term, TermStart(info));
  for (const cluster::ReplicaMember& r : m.replicas) {
    if (!r.replaces.empty()) t->being_replaced.insert(r.replaces);
    const bool out = r.node != options_.node_name && !m.InSync(r.node) &&
                     r.state != cluster::ReplicaState::kStale;
    if (out && (term == kTermUnknown || r.since_epoch <= term)) {
      SHALE_RETURN_IF_ERROR(MarkAllFor(*t, r.node));
    } else if (out && (t->activity->kept_before() || !local_replica)) {
      // (A target-only anchor opened for the first time knows nothing of what the previous
      // target changed: everything is compared.)
      SHALE_RETURN_IF_ERROR(MarkForResync(*t, r.node));
    }
    if (r.state != cluster::ReplicaState::kStale) continue;
    std::promise<Status> marked;
    t->reactor->Post([&, node = r.node] {
      t->changed->Mark({node}, 0, m.size_bytes, [&](Status st) { marked.set_value(st); });
    });
    SHALE_RETURN_IF_ERROR(marked.get_future().get());
  }
  if (term == kTermUnknown) SHALE_RETURN_IF_ERROR(RecordTermStart(name, m.epoch));
  return Status::Ok();
}

Result<std::shared_ptr<ReplicatedVolumes::Target>> ReplicatedVolumes::OpenTarget(
    const std::string& name) {
  Engine* engine = lifecycle_->engine();
  SHALE_ASSIGN_OR_RETURN(VolumeInfo info, engine->GetVolume(name));
  SHALE_ASSIGN_OR_RETURN(Uuid uuid, Uuid::Parse(ReplicaUuidOf(info)));
  Result<cluster::VolumeRecord> record = store_->GetVolume(name);
  if (!record.ok()) return record.status().WithContext("membership of volume " + name);
  const cluster::Membership& m = record->membership;
  bool local_replica = !IsTargetOnly(info);
  if (local_replica && m.target == options_.node_name && !m.detached && m.uuid == uuid.ToString() &&
      m.Find(options_.node_name) == nullptr) {
    // This node's replica was replaced while it served the volume (a drain), and the target
    // stopped before its volume became the anchor: that change is finished now.
    SHALE_ASSIGN_OR_RETURN(info, RelabelAsAnchor(name));
    local_replica = false;
  }
  SHALE_RETURN_IF_ERROR(CheckServesHere(name, uuid, m, local_replica));
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  SHALE_RETURN_IF_ERROR(PrepareLocalReplica(info, m));
  auto t = std::make_shared<Target>();
  t->name = name;
  t->uuid = uuid;
  t->size_bytes = m.size_bytes;
  t->local_node = options_.node_name;
  t->local_replica = local_replica;
  SHALE_ASSIGN_OR_RETURN(t->handle, engine->OpenVolume(name));
  t->reactor = t->handle->reactor();
  SHALE_ASSIGN_OR_RETURN(t->changed, replication::ChangedRegions::Load(
                                         engine, info.pool, info.id, m.size_bytes, t->reactor,
                                         PoolCommit(t->handle->volume().pool())));
  SHALE_ASSIGN_OR_RETURN(t->activity, replication::ActivityLog::Load(
                                          engine, info.pool, info.id, m.size_bytes, t->reactor,
                                          PoolCommit(t->handle->volume().pool())));
  t->membership = std::make_unique<StoreMembership>(store_, name, t->reactor);

  std::vector<std::pair<std::shared_ptr<replication::ReplicaTarget>, MemberState>> members;
  std::vector<std::pair<std::string, std::string>> lost;  // in in_sync, unreachable: node, why
  for (const cluster::ReplicaMember& r : m.replicas) {
    if (r.node == options_.node_name) {
      members.emplace_back(
          std::make_shared<replication::LocalReplica>(r.node, &t->handle->volume()),
          MemberState::kInSync);
      continue;
    }
    std::string why = "not in the in-sync set";
    if (m.InSync(r.node)) {
      const cluster::NodeRecord* n = FindNode(nodes, r.node);
      why = n == nullptr || !n->up ? "node is down" : "";
      if (why.empty()) {
        Result<std::unique_ptr<replication::ReplicaClient>> client =
            Connect(*t, n->info.replica_address, m.epoch);
        if (client.ok()) {
          members.emplace_back(
              std::make_shared<replication::RemoteReplica>(r.node, std::move(client).value()),
              MemberState::kInSync);
          continue;
        }
        if (replication::IsStaleEpoch(client.status())) {
          return Status::FailedPrecondition("volume " + name + " is fenced: replica on " + r.node +
                                            " has a newer epoch than " + std::to_string(m.epoch));
        }
        why = client.status().ToString();
      }
      lost.emplace_back(r.node, why);
    }
    members.emplace_back(std::make_shared<UnreachableReplica>(r.node, t->reactor),
                         MemberState::kOut);
  }
  // A target without a replica serves only from an in-sync replica it reached (the membership it
  // read may be older than a force-recover that ran meanwhile: the next attempt reads it again).
  if (!local_replica && std::none_of(members.begin(), members.end(), [](const auto& member) {
        return member.second == MemberState::kInSync;
      })) {
    return Status::FailedPrecondition("volume " + name +
                                      ": no in-sync replica reachable (this node holds none)");
  }
  SHALE_RETURN_IF_ERROR(MarkReturning(*t, info, m));
  uint64_t epoch = m.epoch;
  for (const auto& [node, why] : lost) {
    // It may have missed writes in flight when the target stopped: the activity log's regions
    // (everything allocated without a log) are compared with it (hash by hash) when it returns,
    // and it leaves in_sync before any I/O.
    SHALE_RETURN_IF_ERROR(MarkForResync(*t, node));
    Result<cluster::VolumeRecord> left = EditMembership(
        store_.get(), name, ReplicaLeaves(node, "unreachable when the target started: " + why));
    if (!left.ok()) return left.status();
    epoch = left->membership.epoch;
    SHALE_LOG_WARN("replica unreachable at target start; left the in-sync set", {"volume", name},
                   {"node", node}, {"why", why}, {"epoch", epoch});
  }
  replication::ReplicationLayer::Options lo;
  lo.min_in_sync = m.min_in_sync;
  lo.epoch = epoch;
  lo.membership_timeout = options_.replica_timeout;
  t->layer = std::make_unique<replication::ReplicationLayer>(
      t->reactor, name, m.size_bytes, t->changed.get(), t->membership.get(), lo);
  t->reactor->RunSync([&] {
    for (auto& [target, state] : members) t->layer->SetReplica(target, state);
  });
  SHALE_RETURN_IF_ERROR(ResyncAfterRestart(t));
  if (local_replica) SHALE_RETURN_IF_ERROR(PersistLocalGeneration(*t, info));
  // An anchor that was this node's replica (a drain) may still hold its data: released here
  // (only space: a failure is logged and the target serves all the same).
  if (!local_replica) {
    if (Status st = ReleaseAnchorData(*t); !st.ok()) {
      SHALE_LOG_WARN("anchor keeps the data of the replica it was (retried at the next open)",
                     {"volume", name}, {"error", st.ToString()});
    }
  }
  SHALE_LOG_INFO("target of replicated volume open", {"volume", name}, {"epoch", epoch},
                 {"replicas", m.replicas.size()}, {"unreachable", lost.size()},
                 {"local_replica", local_replica ? 1 : 0});
  return t;
}

Status ReplicatedVolumes::DeleteRemote(const std::string& name,
                                       const cluster::Membership& membership,
                                       bool ignore_unreachable) {
  SHALE_ASSIGN_OR_RETURN(Uuid uuid, Uuid::Parse(membership.uuid));
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  for (const cluster::ReplicaMember& r : membership.replicas) {
    if (r.node == options_.node_name) continue;
    const cluster::NodeRecord* n = FindNode(nodes, r.node);
    Status st;
    if (n == nullptr || !n->up) {
      st = Status::Unavailable("node " + r.node + " is down");
    } else {
      replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                             options_.secret, transport_, options_.connect_timeout};
      st = replication::DeleteReplica(admin, {name, uuid, membership.size_bytes, ""},
                                      membership.epoch);
    }
    if (st.ok()) continue;
    if (!ignore_unreachable) {
      return st.WithContext("delete the replica of " + name + " on node " + r.node);
    }
    SHALE_LOG_WARN("replica left behind on a node that could not be reached", {"volume", name},
                   {"node", r.node}, {"error", st.ToString()});
  }
  return Status::Ok();
}

Status ReplicatedVolumes::Delete(const std::string& name, const DeleteOptions& options) {
  Result<VolumeInfo> found = lifecycle_->engine()->GetVolume(name);
  if (!found.ok() && found.status().IsNotFound() && store_ != nullptr) {
    return DeleteElsewhere(name);  // (NotFound when the cluster has no such volume either)
  }
  SHALE_ASSIGN_OR_RETURN(VolumeInfo info, std::move(found));
  Result<cluster::VolumeRecord> record = store_->GetVolume(name);
  if (!record.ok() && !record.status().IsNotFound()) return record.status();
  if (record.ok() && record->membership.target != options_.node_name &&
      !record->membership.detached) {
    return Status::FailedPrecondition("volume '" + name + "' is a replica held for node " +
                                      record->membership.target + "; delete it there");
  }
  std::shared_ptr<Target> target;
  {
    std::lock_guard lock(mu_);
    if (auto it = targets_.find(name); it != targets_.end()) {
      target = std::move(it->second);
      targets_.erase(it);
    }
    pending_.erase(name);
    pending_retry_.erase(name);
    detached_.erase(name);
  }
  if (target != nullptr && target.use_count() > 1 && !options.force) {
    std::lock_guard lock(mu_);
    targets_[name] = std::move(target);
    return Status::Busy("volume '" + name +
                        "' has clients; disconnect them, or use --force to disconnect them "
                        "and delete");
  }
  target.reset();  // its connections to the replicas close (or with the last client)
  DeleteOptions local = options;
  local.extra_records = replication::ChangedRegions::ForgetVolume;
  Status deleted = lifecycle_->Delete(name, local);
  if (!deleted.ok()) {
    Result<std::shared_ptr<Target>> reopened = OpenTarget(name);
    std::lock_guard lock(mu_);
    if (reopened.ok()) {
      targets_[name] = std::move(reopened).value();
    } else {
      pending_[name] = reopened.status().ToString();
    }
    return deleted;
  }
  if (!record.ok()) return Status::Ok();
  SHALE_RETURN_IF_ERROR(DeleteRemote(name, record->membership, /*ignore_unreachable=*/true));
  Status gone = store_->DeleteVolume(name);
  if (!gone.ok() && !gone.IsNotFound()) {
    return gone.WithContext("volume deleted; remove its membership key in etcd");
  }
  SHALE_LOG_INFO("replicated volume deleted", {"volume", name}, {"id", info.id});
  return Status::Ok();
}

Result<ReplicasReport> ReplicatedVolumes::List(const std::string& name) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  ReplicasReport report;
  report.membership = record.membership;
  std::shared_ptr<Target> target = Find(name);
  std::vector<replication::ReplicaStatus> live;
  if (target != nullptr) {
    target->reactor->RunSync([&] {
      live = target->layer->Replicas();
      report.fenced = target->layer->fenced();
    });
  }
  for (const cluster::ReplicaMember& r : record.membership.replicas) {
    ReplicaReport out;
    out.node = r.node;
    out.state = std::string(cluster::ReplicaStateName(r.state));
    out.generation = GenerationOf(record.membership, r);
    out.local = r.node == record.membership.target;
    for (const replication::ReplicaStatus& s : live) {
      if (s.node != r.node) continue;
      if (s.state == MemberState::kRebuilding || s.state == MemberState::kJoining) {
        out.state = "rebuilding";
      } else if ((s.state == MemberState::kOut || s.state == MemberState::kLeaving) &&
                 r.state != cluster::ReplicaState::kStale) {
        out.state = "faulted";
      }
      out.last_error = s.last_error;
    }
    if (target != nullptr) {
      std::lock_guard lock(target->mu);
      auto it = target->repair.find(r.node);
      if (it != target->repair.end()) {
        out.rebuild_done_bytes = it->second.progress.done_bytes;
        out.rebuild_total_bytes = it->second.progress.total_bytes;
        out.rebuild_sent_bytes = it->second.progress.sent_bytes;
        out.rebuilds = it->second.rebuilds;
        if (!it->second.last_error.empty()) out.last_error = it->second.last_error;
      }
    }
    report.replicas.push_back(std::move(out));
  }
  if (target != nullptr) {
    // The running rebuild's figures, live.
    target->reactor->RunSync([&] {
      if (!target->rebuilder || !target->rebuild_running) return;
      const replication::Rebuilder::Progress p = target->rebuilder->progress();
      for (ReplicaReport& r : report.replicas) {
        if (r.node != target->rebuilder->target()) continue;
        r.rebuild_done_bytes = p.done_bytes;
        r.rebuild_total_bytes = p.total_bytes;
        r.rebuild_sent_bytes = p.sent_bytes;
      }
    });
  }
  return report;
}

Result<std::string> ReplicatedVolumes::ForceRecover(const std::string& name,
                                                    const std::string& from) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  if (m.target != options_.node_name) {
    return Status::FailedPrecondition("volume '" + name + "' is served by node " + m.target +
                                      "; run force-recover there");
  }
  // A target with a replica serves from it: the recovery starts from it. One without (a
  // target-only anchor here) serves from whichever replica is recovered.
  Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
  const bool anchor = local.ok() && IsTargetOnly(*local);
  if (from != options_.node_name && !anchor) {
    return Status::InvalidArgument("--from must name the target's own node (" + options_.node_name +
                                   "): the target serves from its replica");
  }
  const cluster::ReplicaMember* member = m.Find(from);
  if (member == nullptr) {
    return Status::InvalidArgument("node " + from + " holds no replica of volume '" + name + "'");
  }
  if (m.InSync(from)) {
    return Status::FailedPrecondition(
        "node " + from + " is in sync already (in_sync: " + std::to_string(m.in_sync.size()) +
        " replica(s)); nothing to recover");
  }
  // The history keeps 16 changes; the local replica's persisted generation is exact.
  const uint64_t generation =
      anchor ? GenerationOf(m, *member) : std::max(GenerationOf(m, *member), LocalGeneration(name));
  std::string others;
  for (const std::string& n : m.in_sync) others += (others.empty() ? "" : ", ") + n;
  const std::string lost = "writes acknowledged after epoch " + std::to_string(generation) +
                           " (up to epoch " + std::to_string(m.epoch) + ", held by " + others +
                           ") may be lost";
  Result<cluster::VolumeRecord> recovered =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (next->epoch != m.epoch) {
          return Status::Aborted("the membership changed meanwhile; look again");
        }
        next->epoch += 1;
        next->in_sync = {from};
        for (cluster::ReplicaMember& r : next->replicas) {
          r.state =
              r.node == from ? cluster::ReplicaState::kHealthy : cluster::ReplicaState::kStale;
          r.since_epoch = next->epoch;
        }
        next->RecordChange("force-recover from " + from + ": " + lost);
        return true;
      });
  if (!recovered.ok()) return recovered.status();
  SHALE_LOG_WARN("volume force-recovered", {"volume", name}, {"from", from},
                 {"epoch", recovered->membership.epoch}, {"lost", lost});
  {
    std::lock_guard lock(mu_);
    pending_[name] = "force-recovered: opening";
    pending_retry_.erase(name);  // at once, not after the backoff
  }
  OpenPending();
  return "volume '" + name + "' recovered from " + from + " at epoch " +
         std::to_string(recovered->membership.epoch) + ": " + lost +
         "; the other replicas are stale until rebuilt from " + from;
}

void ReplicatedVolumes::RepairLoop() {
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, kRepairTick, [this] { return stopping_; })) {
    std::vector<std::shared_ptr<Target>> targets;
    for (const auto& [name, t] : targets_) targets.push_back(t);
    const bool pending = !pending_.empty();
    lock.unlock();
    if (pending) OpenPending();
    // The node list every tick while this node serves targets; otherwise only for the slower
    // scans (etcd load: three Range calls per list).
    const auto now = std::chrono::steady_clock::now();
    const bool scan = now >= next_scan_;
    if (scan) next_scan_ = now + kScanPeriod;
    Result<std::vector<cluster::NodeRecord>> nodes = Status::Unavailable("not listed in this tick");
    if (!targets.empty() || scan) nodes = cluster_->ListNodes();
    std::map<std::string, std::string> doomed;
    if (nodes.ok()) {
      doomed = DoomedNodes(*nodes);
      for (const std::shared_ptr<Target>& t : targets) RepairTarget(t, *nodes, doomed);
    }
    targets.clear();  // a target deleted meanwhile goes here, on this thread
    if (nodes.ok()) CareForDetached(*nodes, doomed);
    if (scan) RemoveOrphans();
    if (scan) WatchQos();  // when it could not start before
    ApplyDueQos();
    lock.lock();
  }
}

void ReplicatedVolumes::OpenPending() {
  std::vector<std::string> names;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, why] : pending_) names.push_back(name);
  }
  for (const std::string& name : names) {
    if (!PendingDue(name)) continue;
    {
      std::lock_guard lock(mu_);
      if (resizing_.contains(name)) continue;  // Resize opens it again itself
      // One open at a time per volume (force-recover opens at once while the repair thread may
      // be retrying with the membership it read before).
      if (!opening_.insert(name).second) continue;
    }
    Result<std::shared_ptr<Target>> target = OpenTarget(name);
    if (!target.ok() && !target.status().IsNotFound()) PendingFailed(name, target.status());
    std::lock_guard lock(mu_);
    opening_.erase(name);
    if (!pending_.contains(name)) continue;  // deleted meanwhile
    if (target.ok() || target.status().IsNotFound()) pending_retry_.erase(name);
    if (target.ok()) {
      pending_.erase(name);
      targets_[name] = std::move(target).value();
    } else if (target.status().IsNotFound()) {
      pending_.erase(name);
    } else {
      pending_[name] = target.status().ToString();
    }
  }
}

void ReplicatedVolumes::RepairTarget(const std::shared_ptr<Target>& target,
                                     const std::vector<cluster::NodeRecord>& nodes,
                                     const std::map<std::string, std::string>& doomed) {
  std::vector<replication::ReplicaStatus> live;
  bool fenced = false;
  target->reactor->RunSync([&] {
    live = target->layer->Replicas();
    fenced = target->layer->fenced();
  });
  if (fenced) return;  // another target took the volume over
  if (ReplaceStep(target, live, doomed, nodes)) return;
  for (const replication::ReplicaStatus& s : live) {
    {
      std::lock_guard lock(target->mu);
      if (target->being_replaced.contains(s.node)) continue;
    }
    if (!s.local && s.state == MemberState::kRebuilding && RetryRebuild(target, s.node)) return;
    if (s.local || s.state != MemberState::kOut || doomed.contains(s.node)) continue;
    const cluster::NodeRecord* n = FindNode(nodes, s.node);
    if (n == nullptr || !n->up || !n->status.ok() || n->info.replica_address.empty()) continue;
    {
      std::lock_guard lock(target->mu);
      if (!target->repairing.empty()) return;  // one rebuild at a time per volume
      if (std::chrono::steady_clock::now() < target->repair[s.node].next_try) continue;
      target->repairing = s.node;
    }
    Reconnect(target, s.node, n->info.replica_address);
    return;
  }
}

void ReplicatedVolumes::Reconnect(const std::shared_ptr<Target>& target, const std::string& node,
                                  const std::string& address) {
  auto fail = [&](const Status& st) {
    std::lock_guard lock(target->mu);
    NodeRepair& r = target->repair[node];
    r.last_error = st.ToString();
    r.next_try = std::chrono::steady_clock::now() + r.backoff;
    r.backoff = std::min<std::chrono::milliseconds>(r.backoff * 2, kMaxBackoff);
    target->repairing.clear();
  };
  uint64_t epoch = 0;
  target->reactor->RunSync([&] { epoch = target->layer->epoch(); });
  Result<std::unique_ptr<replication::ReplicaClient>> client = Connect(*target, address, epoch);
  if (!client.ok()) return fail(client.status().WithContext("reconnect to " + address));
  // Recorded for `replica list` (in_sync does not change, so neither does the epoch).
  Result<cluster::VolumeRecord> marked =
      EditMembership(store_.get(), target->name, ReplicaRebuilding(node));
  if (!marked.ok()) return fail(marked.status());
  auto remote = std::make_shared<replication::RemoteReplica>(node, std::move(client).value());
  std::shared_ptr<replication::ReplicaTarget> old;
  bool started = false;
  target->reactor->RunSync([&] {
    for (const replication::ReplicaStatus& s : target->layer->Replicas()) {
      if (s.node != node || s.state != MemberState::kOut) continue;
      old = target->layer->Target(node);
      target->layer->SetReplica(remote, MemberState::kRebuilding);
      StartRebuilder(*target, node);
      started = true;
    }
  });
  old.reset();  // a replaced RemoteReplica closes here, not on the reactor
  if (!started) {
    remote.reset();
    return fail(Status::Aborted("replica state changed meanwhile"));
  }
  SHALE_LOG_INFO("replica reconnected, rebuilding", {"volume", target->name}, {"node", node},
                 {"epoch", epoch});
}

// On the reactor: a Rebuilder for `node` (kRebuilding in the layer) from the local replica (or,
// on a node without one, from an in-sync remote replica).
void ReplicatedVolumes::StartRebuilder(Target& target, const std::string& node) {
  replication::Rebuilder::Options ro;
  ro.bps = rebuild_bps_.load(std::memory_order_relaxed);
  // Each copy window is a unit of the pool's background class: under contention the rebuild
  // gets the background weight's share next to the clients, all of the device when they idle.
  // (Without a local replica the copy touches no device of this node: no admission.)
  if (qos::QosManager* qos = lifecycle_->qos(); qos != nullptr && target.local_replica) {
    ro.admission = qos->OpenPoolAdmission(target.handle->volume().pool()->name(), target.reactor);
  }
  const std::string source = target.SourceFor(node);
  if (source.empty()) {
    // Retried after the node's backoff (RetryRebuild), once some replica is in sync again.
    std::lock_guard lock(target.mu);
    NodeRepair& r = target.repair[node];
    r.last_error = "no in-sync replica to rebuild from";
    r.next_try = std::chrono::steady_clock::now() + r.backoff;
    r.backoff = std::min<std::chrono::milliseconds>(r.backoff * 2, kMaxBackoff);
    target.repairing.clear();
    return;
  }
  target.rebuilder.reset();
  target.rebuilder = std::make_unique<replication::Rebuilder>(
      target.reactor, target.layer.get(), target.changed.get(), source, node, ro);
  target.rebuild_running = true;
  Target* t = &target;
  target.rebuilder->Start([t, node](Status st) { t->RebuildDone(node, std::move(st)); });
}

// A replica still kRebuilding whose rebuild (or join) failed while the replica did not: no
// reconnect is needed, the rebuild starts again (after the node's backoff) from what is left
// marked. Without this it would stay `rebuilding` forever (its connection never fails).
bool ReplicatedVolumes::RetryRebuild(const std::shared_ptr<Target>& target,
                                     const std::string& node) {
  {
    std::lock_guard lock(target->mu);
    if (!target->repairing.empty()) return true;  // one rebuild at a time per volume
    if (std::chrono::steady_clock::now() < target->repair[node].next_try) return false;
    target->repairing = node;
  }
  bool started = false;
  target->reactor->RunSync([&] {
    for (const replication::ReplicaStatus& s : target->layer->Replicas()) {
      if (s.node != node || s.state != MemberState::kRebuilding || target->rebuild_running) {
        continue;
      }
      StartRebuilder(*target, node);
      started = true;
    }
  });
  if (!started) {
    std::lock_guard lock(target->mu);
    target->repairing.clear();
    return false;
  }
  SHALE_LOG_INFO("rebuild retried", {"volume", target->name}, {"node", node});
  return true;
}

// The backoff of targets that cannot open (cascading failure, etcd down, a peer refusing): the
// same per-node doubling as the repair loop, and one log line per change of the reason.
bool ReplicatedVolumes::PendingDue(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = pending_retry_.find(name);
  return it == pending_retry_.end() || std::chrono::steady_clock::now() >= it->second.next_try;
}

void ReplicatedVolumes::PendingFailed(const std::string& name, const Status& why) {
  std::lock_guard lock(mu_);
  PendingRetry& r = pending_retry_[name];
  r.next_try = std::chrono::steady_clock::now() + r.backoff;
  r.backoff = std::min<std::chrono::milliseconds>(r.backoff * 2, kMaxBackoff);
  const std::string reason = why.ToString();
  if (reason == r.logged) return;
  r.logged = reason;
  SHALE_LOG_WARN("target of a replicated volume not open; retrying with backoff", {"volume", name},
                 {"error", reason});
}
Reactor* ReplicatedVolumes::ReactorOf(const Target& t) { return t.reactor; }
replication::ReplicationLayer* ReplicatedVolumes::LayerOf(const Target& t) { return t.layer.get(); }
const Uuid& ReplicatedVolumes::UuidOf(const Target& t) { return t.uuid; }

}  // namespace shale::daemon
