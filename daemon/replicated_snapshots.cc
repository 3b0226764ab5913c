// ReplicatedVolumes: snapshots of replicated volumes (docs/replication.md, "Snapshots of
// replicated volumes"). The target quiesces the volume (ReplicationLayer::Quiesce: new writes
// wait, those in flight drain, bounded), takes the snapshot on its local replica and sends
// SNAPSHOT(name) to every in-sync remote replica on the connections that carry the writes, then
// resumes. All or none: a replica that fails it undoes the others. The snapshot's labels record
// the nodes that hold it, for `snapshot verify` (SNAPSHOT_DIGEST) and delete (DELETE_SNAPSHOT).
#include <chrono>
#include <future>

#include "daemon/cluster_node.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/replica_admin.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"
#include "snapshot/names.h"

namespace shale::daemon {

using replication::MemberState;

namespace {

// TAKE_SNAPSHOT: the node serving the volume quiesces it and snapshots every in-sync replica.
constexpr auto kTakeSnapshotTimeout = std::chrono::seconds(60);

// A digest is recomputed from every block of the snapshot: generous, a verify may be long.
constexpr auto kDigestTimeout = std::chrono::minutes(30);

std::vector<std::string> SplitNodes(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string JoinNodes(const std::vector<std::string>& nodes) {
  std::string out;
  for (const std::string& n : nodes) out += (out.empty() ? "" : ",") + n;
  return out;
}

}  // namespace

Status ReplicatedVolumes::NotServedHere(const std::string& volume) {
  std::string where = "it is served by another node; take the snapshot on its target";
  if (Result<cluster::VolumeRecord> r = store_->GetVolume(volume); r.ok()) {
    const cluster::Membership& m = r->membership;
    if (!m.detached) {
      where = "it is served by node " + m.target + "; take the snapshot on its target";
    } else {
      // Detached, and this node holds no in-sync replica (else it would attach it itself).
      std::string holders;
      for (const std::string& n : m.in_sync) holders += (holders.empty() ? "" : ", ") + n;
      where =
          "it is detached and this node holds no in-sync replica; take the snapshot on a "
          "node that does (" +
          holders + ")";
    }
  }
  return Status::FailedPrecondition("volume '" + volume +
                                    "' is replicated and its target here is not open: " + where);
}

std::shared_future<void> ReplicatedVolumes::StartQuiesce(Target& target) {
  auto quiet = std::make_shared<std::promise<void>>();
  std::shared_future<void> done = quiet->get_future().share();
  replication::ReplicationLayer* layer = LayerOf(target);
  ReactorOf(target)->RunSync([&] { layer->Quiesce([quiet] { quiet->set_value(); }); });
  return done;
}

void ReplicatedVolumes::ResumeTarget(Target& target) {
  replication::ReplicationLayer* layer = LayerOf(target);
  ReactorOf(target)->RunSync([&] { layer->Resume(); });
}

std::chrono::steady_clock::time_point ReplicatedVolumes::QuiesceDeadline() const {
  return std::chrono::steady_clock::now() + options_.replica_timeout * 2 + std::chrono::seconds(1);
}

Result<Labels> ReplicatedVolumes::FinishQuiesce(Target& target, const std::string& volume,
                                                const std::shared_future<void>& quiet,
                                                std::chrono::steady_clock::time_point deadline) {
  if (quiet.wait_until(deadline) != std::future_status::ready) {
    return Status::Unavailable(
        "snapshot of '" + volume + "': writes in flight did not drain within " +
        std::to_string((options_.replica_timeout * 2).count() + 1000) + " ms");
  }
  std::vector<std::string> holders;
  if (target.local_replica) holders.push_back(options_.node_name);
  bool fenced = false;
  replication::ReplicationLayer* layer = LayerOf(target);
  ReactorOf(target)->RunSync([&] {
    fenced = layer->fenced();
    for (const replication::ReplicaStatus& s : layer->Replicas()) {
      if (!s.local && s.state == MemberState::kInSync) holders.push_back(s.node);
    }
  });
  if (fenced) {
    return Status::Unavailable("volume '" + volume + "' was taken over by another target");
  }
  return Labels{{kSnapshotReplicasLabel, JoinNodes(holders)},
                {kSnapshotVolumeUuidLabel, UuidOf(target).ToString()}};
}

std::future<replication::ReplicationLayer::SnapshotResults> ReplicatedVolumes::StartCopies(
    Target& target, const std::string& name, const Labels& labels) {
  auto remote = std::make_shared<std::promise<replication::ReplicationLayer::SnapshotResults>>();
  auto done = remote->get_future();
  replication::ReplicationLayer* layer = LayerOf(target);
  ReactorOf(target)->RunSync([&] {
    layer->SnapshotRemotes(name, labels,
                           [remote](replication::ReplicationLayer::SnapshotResults r) {
                             remote->set_value(std::move(r));
                           });
  });
  return done;
}

namespace {

// The first failed copy of `results`, naming its replica.
Status FirstFailure(const replication::ReplicationLayer::SnapshotResults& results) {
  for (const auto& [node, st] : results) {
    if (!st.ok()) return st.WithContext("snapshot on replica " + node);
  }
  return Status::Ok();
}

}  // namespace

Result<std::optional<snapshot::SnapshotInfo>> ReplicatedVolumes::SnapshotOnTarget(
    const VolumeInfo& local, const cluster::Membership& m, const std::string& name,
    const Labels& labels) {
  const std::string ref = local.name + "@" + name;
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  const cluster::NodeRecord* n = FindNode(nodes, m.target);
  if (n == nullptr || !n->up || n->info.replica_address.empty()) {
    return Status::Unavailable("volume '" + local.name + "' is served by node " + m.target +
                               ", which cannot be reached now; take the snapshot there");
  }
  SHALE_ASSIGN_OR_RETURN(Uuid uuid, Uuid::Parse(ReplicaUuidOf(local)));
  replication::ReplicaAdminOptions admin{n->info.replica_address, options_.node_name,
                                         options_.secret, transport_, kTakeSnapshotTimeout};
  Status taken =
      replication::TakeSnapshotOnTarget(admin, {local.name, uuid, m.size_bytes, ""}, name, labels);
  if (!taken.ok()) return taken.WithContext("snapshot " + ref + " taken by node " + m.target);
  Result<snapshot::SnapshotInfo> copy = lifecycle_->snapshots()->Get(ref);
  if (!copy.ok() && m.Find(options_.node_name) == nullptr) {
    // This node holds no replica: the answer is an in-sync replica's copy.
    Result<std::vector<snapshot::SnapshotInfo>> copies =
        ListCopies(local.name, uuid, m.size_bytes, m.in_sync);
    if (copies.ok()) {
      for (snapshot::SnapshotInfo& c : *copies) {
        if (c.name == name) return std::optional<snapshot::SnapshotInfo>(std::move(c));
      }
    }
  }
  if (!copy.ok()) {
    return Status::FailedPrecondition("snapshot " + ref + " was taken by node " + m.target +
                                      ", which serves the volume, but this node holds no copy "
                                      "(its replica is not in sync); look it up there");
  }
  SHALE_LOG_INFO("snapshot taken by the node serving the volume", {"snapshot", ref},
                 {"target", m.target});
  return std::optional<snapshot::SnapshotInfo>(std::move(copy).value());
}

Result<std::optional<snapshot::SnapshotInfo>> ReplicatedVolumes::Snapshot(
    std::string_view volume_view, std::string_view name_view,
    const snapshot::CreateSnapshotOptions& options) {
  const std::string volume(volume_view), name(name_view);
  Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(volume);
  if (!info.ok() && info.status().IsNotFound() && store_ != nullptr) {
    // Maybe a replicated volume this node holds none of.
    Result<cluster::VolumeRecord> record = store_->GetVolume(volume);
    if (record.ok()) return SnapshotHeldElsewhere(volume, record->membership, name, options);
    if (!record.status().IsNotFound()) return record.status();
  }
  if (!info.ok() || !info->labels.contains(replication::kReplicaUuidLabel)) {
    return std::optional<snapshot::SnapshotInfo>();  // not replicated: as usual
  }
  std::shared_ptr<Target> target = Find(volume);
  if (target == nullptr) {
    // A detached volume (no node serves it; CSI creates them so) is attached here for the
    // snapshot when this node holds an in-sync replica, then detached again.
    Result<cluster::VolumeRecord> record = store_->GetVolume(volume);
    if (record.ok() && !record->membership.detached &&
        record->membership.target != options_.node_name) {
      // Served by another node: it takes the snapshot (on every in-sync replica, this node's
      // copy included when it is one of them).
      return SnapshotOnTarget(*info, record->membership, name, options.labels);
    }
    if (!record.ok() || !record->membership.detached ||
        !record->membership.InSync(options_.node_name)) {
      return NotServedHere(volume);
    }
    SHALE_RETURN_IF_ERROR(AttachForItself(volume).WithContext("attach for the snapshot"));
    Result<std::optional<snapshot::SnapshotInfo>> taken = Snapshot(volume, name, options);
    DetachItself(volume, "attached for a snapshot");
    return taken;
  }
  if (!target->local_replica) {
    std::lock_guard snapshot_lock(snapshot_mu_);
    return SnapshotFromRemotes(*target, volume, name, options);
  }
  const std::string ref = volume + "@" + name;
  if (lifecycle_->snapshots()->Get(ref).ok()) {
    return Status::AlreadyExists("snapshot '" + ref + "' already exists");
  }
  // One snapshot at a time per daemon: a layer has one quiesce at a time.
  std::lock_guard snapshot_lock(snapshot_mu_);
  // Quiesce, bounded: writes in flight end within the replica timeout (or their replica fails).
  std::shared_future<void> quiet = StartQuiesce(*target);
  Result<Labels> labels = FinishQuiesce(*target, volume, quiet, QuiesceDeadline());
  if (!labels.ok()) {
    ResumeTarget(*target);
    return labels.status();
  }
  snapshot::CreateSnapshotOptions local = options;
  local.wait_digest = false;  // never while writes wait
  // Durable before the copies start: a replicated snapshot is acknowledged only once every
  // replica holds it durably.
  local.wait_durable = true;
  for (const auto& [k, v] : *labels) local.labels[k] = v;
  Result<snapshot::SnapshotInfo> taken = lifecycle_->snapshots()->Create(volume, name, local);
  if (!taken.ok()) {
    ResumeTarget(*target);
    return taken.status();
  }
  // The copies carry the replication labels too (the holders, the volume's uuid): deleted
  // through any of their nodes, the others go as well, also once the volume itself is gone.
  const Status failed = FirstFailure(StartCopies(*target, name, *labels).get());
  ResumeTarget(*target);
  if (!failed.ok()) {
    // All or none: the copies taken are removed again.
    lifecycle_->snapshots()->Delete(ref).status().IgnoreError();
    SnapshotDeleted(*taken);
    SHALE_LOG_WARN("snapshot of a replicated volume failed on a replica; undone", {"snapshot", ref},
                   {"error", failed.ToString()});
    return failed;
  }
  SHALE_LOG_INFO("snapshot of a replicated volume taken", {"snapshot", ref},
                 {"replicas", local.labels[kSnapshotReplicasLabel]});
  if (options.wait_digest) {
    SHALE_ASSIGN_OR_RETURN(snapshot::SnapshotInfo waited, lifecycle_->snapshots()->WaitDigest(ref));
    return std::optional<snapshot::SnapshotInfo>(std::move(waited));
  }
  return std::optional<snapshot::SnapshotInfo>(std::move(taken).value());
}

// The replicated members of a group snapshot, quiesced while it lives (docs/replication.md,
// "Group snapshots of replicated volumes").
class ReplicatedVolumes::GroupHoldImpl final : public SnapshotReplication::GroupHold {
 public:
  GroupHoldImpl(ReplicatedVolumes* owner, std::unique_lock<std::mutex> lock)
      : owner_(owner), lock_(std::move(lock)) {}
  ~GroupHoldImpl() override {
    for (const std::shared_ptr<Target>& t : quiesced_) ResumeTarget(*t);
  }
  GroupHoldImpl(const GroupHoldImpl&) = delete;
  GroupHoldImpl& operator=(const GroupHoldImpl&) = delete;

  // Quiesces every member at once, then waits for all (one deadline).
  Status Quiesce(const std::vector<std::pair<std::string, std::shared_ptr<Target>>>& members) {
    std::vector<std::shared_future<void>> quiet;
    for (const auto& [volume, target] : members) {
      quiet.push_back(owner_->StartQuiesce(*target));
      quiesced_.push_back(target);
      if (!target->local_replica) remote_only_.insert(volume);
    }
    const auto deadline = owner_->QuiesceDeadline();
    for (size_t i = 0; i < members.size(); ++i) {
      SHALE_ASSIGN_OR_RETURN(
          labels_[members[i].first],
          owner_->FinishQuiesce(*members[i].second, members[i].first, quiet[i], deadline));
    }
    return Status::Ok();
  }
  const std::map<std::string, Labels>& MemberLabels() const override { return labels_; }
  const std::set<std::string>& RemoteOnly() const override { return remote_only_; }
  Status SnapshotRemotes(const std::string& name, const Labels& labels) override {
    std::vector<std::future<replication::ReplicationLayer::SnapshotResults>> copies;
    for (const std::shared_ptr<Target>& t : quiesced_) {
      if (t->local_replica) {
        copies.push_back(owner_->StartCopies(*t, name));
        continue;
      }
      // No local member: the copies carry what its snapshot would (as SnapshotFromRemotes).
      Labels member = labels;
      for (const auto& [k, v] : labels_[t->name]) member[k] = v;
      copies.push_back(owner_->StartCopies(*t, name, member));
    }
    Status failed;
    for (auto& c : copies) {
      const Status st = FirstFailure(c.get());
      if (failed.ok()) failed = st;
    }
    return failed;
  }

 private:
  ReplicatedVolumes* const owner_;
  std::unique_lock<std::mutex> lock_;  // snapshot_mu_: a layer has one quiesce at a time
  std::vector<std::shared_ptr<Target>> quiesced_;
  std::map<std::string, Labels> labels_;
  std::set<std::string> remote_only_;
};

Result<std::unique_ptr<SnapshotReplication::GroupHold>> ReplicatedVolumes::HoldGroup(
    const std::vector<std::string>& volumes) {
  std::vector<std::pair<std::string, std::shared_ptr<Target>>> members;
  for (const std::string& volume : volumes) {
    Result<VolumeInfo> info = lifecycle_->engine()->GetVolume(volume);
    if (!info.ok() || !info->labels.contains(replication::kReplicaUuidLabel)) continue;
    std::shared_ptr<Target> target = Find(volume);
    if (target == nullptr) {
      return NotServedHere(volume).WithContext(
          "a group snapshot's replicated volumes are served by the node that takes it (attach "
          "them on one node)");
    }
    members.emplace_back(volume, std::move(target));
  }
  if (members.empty()) return std::unique_ptr<SnapshotReplication::GroupHold>();
  auto hold = std::make_unique<GroupHoldImpl>(this, std::unique_lock(snapshot_mu_));
  SHALE_RETURN_IF_ERROR(hold->Quiesce(members));  // on error `hold` resumes them all
  return std::unique_ptr<SnapshotReplication::GroupHold>(std::move(hold));
}

// For each remote node a snapshot's label lists: `fn(node, admin options, spec)`, or the reason
// it cannot be reached.
namespace {

template <typename Fn>
void ForEachRemoteCopy(const snapshot::SnapshotInfo& snap, const std::string& self,
                       ClusterNode* cluster, const replication::ReplicaAdminOptions& base, Fn fn) {
  auto nodes_label = snap.labels.find(kSnapshotReplicasLabel);
  auto uuid_label = snap.labels.find(kSnapshotVolumeUuidLabel);
  if (nodes_label == snap.labels.end() || uuid_label == snap.labels.end()) return;
  Result<Uuid> uuid = Uuid::Parse(uuid_label->second);
  Result<std::vector<cluster::NodeRecord>> nodes = cluster->ListNodes();
  for (const std::string& node : SplitNodes(nodes_label->second)) {
    if (node == self) continue;
    const cluster::NodeRecord* record = nullptr;
    if (nodes.ok()) {
      for (const cluster::NodeRecord& n : *nodes) record = n.name == node ? &n : record;
    }
    if (!uuid.ok() || record == nullptr || !record->up || record->info.replica_address.empty()) {
      fn(node, nullptr, replication::ReplicaSpec{},
         !uuid.ok()   ? uuid.status()
         : nodes.ok() ? Status::Unavailable("node " + node + " is down")
                      : nodes.status());
      continue;
    }
    replication::ReplicaAdminOptions admin = base;
    admin.address = record->info.replica_address;
    fn(node, &admin, replication::ReplicaSpec{snap.volume, *uuid, snap.size_bytes, ""},
       Status::Ok());
  }
}

}  // namespace

void ReplicatedVolumes::SnapshotDeleted(const snapshot::SnapshotInfo& deleted) {
  if (!deleted.labels.contains(kSnapshotReplicasLabel)) return;  // not a replicated one
  uint64_t epoch = 0;
  if (Result<cluster::VolumeRecord> r = store_->GetVolume(deleted.volume); r.ok()) {
    epoch = r->membership.epoch;
  }
  const replication::ReplicaAdminOptions base{"", options_.node_name, options_.secret, transport_,
                                              options_.connect_timeout};
  ForEachRemoteCopy(deleted, options_.node_name, cluster_, base,
                    [&](const std::string& node, const replication::ReplicaAdminOptions* admin,
                        const replication::ReplicaSpec& spec, Status st) {
                      if (admin != nullptr) {
                        st = replication::DeleteReplicaSnapshot(*admin, spec, deleted.name, epoch);
                      }
                      if (st.ok()) return;
                      // It stays there; a later snapshot of that name replaces it.
                      SHALE_LOG_WARN("snapshot copy left on a replica",
                                     {"snapshot", deleted.full_name()}, {"node", node},
                                     {"error", st.ToString()});
                    });
}

std::vector<ReplicaDigest> ReplicatedVolumes::VerifyReplicas(const snapshot::SnapshotInfo& snap) {
  std::vector<ReplicaDigest> out;
  replication::ReplicaAdminOptions base{
      "", options_.node_name, options_.secret, transport_,
      std::chrono::duration_cast<std::chrono::milliseconds>(kDigestTimeout)};
  ForEachRemoteCopy(snap, options_.node_name, cluster_, base,
                    [&](const std::string& node, const replication::ReplicaAdminOptions* admin,
                        const replication::ReplicaSpec& spec, const Status& st) {
                      ReplicaDigest d{node, "", st};
                      if (admin != nullptr) {
                        Result<std::string> got =
                            replication::SnapshotDigestOf(*admin, spec, snap.name);
                        if (got.ok()) d.digest = *got;
                        d.status = got.status();
                      }
                      out.push_back(std::move(d));
                    });
  return out;
}

void ReplicatedVolumes::ServeReplicaSnapshots(VolumeLifecycle* lifecycle, RecordedUuidFn recorded,
                                              replication::ReplicaServerOptions* options) {
  options->snapshot = [lifecycle](const std::string& volume, const std::string& name,
                                  const Labels& labels) {
    SHALE_RETURN_IF_ERROR(lifecycle->CheckChangeGate());
    snapshot::SnapshotManager* snapshots = lifecycle->snapshots();
    const std::string ref = volume + "@" + name;
    if (snapshots->Get(ref).ok()) {
      // A copy a failed delete left behind: the target's newer snapshot of that name wins.
      SHALE_LOG_WARN("replica snapshot replaced", {"snapshot", ref});
      SHALE_RETURN_IF_ERROR(snapshots->Delete(ref).status());
    }
    // Durable before the answer: the target acknowledges a replicated snapshot once every copy
    // survives a crash.
    Result<snapshot::SnapshotInfo> taken =
        snapshots->Create(volume, name, {.labels = labels, .wait_durable = true});
    if (taken.ok()) SHALE_LOG_INFO("replica snapshot taken", {"snapshot", ref});
    return taken.status();
  };
  options->list_snapshots =
      [lifecycle](const std::string& volume) -> Result<std::vector<replication::SnapshotEntry>> {
    SHALE_ASSIGN_OR_RETURN(std::vector<snapshot::SnapshotInfo> listed,
                           lifecycle->snapshots()->List({.volume = volume, .with_space = false}));
    std::vector<replication::SnapshotEntry> out;
    for (snapshot::SnapshotInfo& s : listed) {
      out.push_back({s.name, s.created_unix_ns, s.size_bytes,
                     s.digest_state == snapshot::DigestState::kReady ? s.digest : "",
                     std::move(s.labels)});
    }
    return out;
  };
  options->snapshot_digest = [lifecycle](const std::string& volume, const std::string& name) {
    return lifecycle->snapshots()->Verify(volume + "@" + name);
  };
  // DELETE_SNAPSHOT's deletion of this node's copy (missing: OK), logged.
  auto delete_copy = [lifecycle](const std::string& ref) -> Status {
    SHALE_RETURN_IF_ERROR(lifecycle->CheckChangeGate());
    Status st = lifecycle->snapshots()->Delete(ref).status();
    if (st.IsNotFound()) return Status::Ok();
    if (st.ok()) SHALE_LOG_INFO("replica snapshot deleted", {"snapshot", ref});
    return st;
  };
  options->delete_snapshot = [delete_copy](const std::string& volume, const std::string& name) {
    return delete_copy(volume + "@" + name);
  };
  // A nil uuid: the sender knows the volume only by name (its record is gone, with the holders
  // it named); the copy goes only if no volume of its uuid is left in the cluster.
  options->delete_snapshot_of_deleted = [lifecycle, delete_copy, recorded](
                                            const std::string& volume, const std::string& name,
                                            const Uuid& uuid) -> Status {
    const std::string ref = volume + "@" + name;
    Result<snapshot::SnapshotInfo> copy = lifecycle->snapshots()->Get(ref);
    if (copy.status().IsNotFound()) {
      return uuid.IsNil() ? Status::NotFound("no copy of snapshot '" + ref + "' here")
                          : Status::Ok();
    }
    SHALE_RETURN_IF_ERROR(copy.status());
    auto of = copy->labels.find(kSnapshotVolumeUuidLabel);
    if (of == copy->labels.end()) {
      return Status::FailedPrecondition("snapshot '" + ref +
                                        "' is not a copy of a replicated volume's snapshot");
    }
    if (!uuid.IsNil() && of->second != uuid.ToString()) {
      return Status::FailedPrecondition("snapshot '" + ref + "' is not known as a copy of volume " +
                                        uuid.ToString());
    }
    if (uuid.IsNil()) {
      Result<std::optional<std::string>> live = recorded(volume);
      if (!live.ok()) return live.status().WithContext("read the volume record of " + volume);
      const Result<Uuid> copy_of = Uuid::Parse(of->second);
      bool still_there = false;
      if (live->has_value()) {
        const Result<Uuid> recorded_uuid = Uuid::Parse(**live);
        still_there = !recorded_uuid.ok() || !copy_of.ok() || *recorded_uuid == *copy_of;
      }
      if (!copy_of.ok() || still_there) {
        return Status::FailedPrecondition("snapshot '" + ref + "' is a copy of volume " +
                                          of->second + ", which still exists");
      }
    }
    return delete_copy(ref);
  };
  // TAKE_SNAPSHOT from another node: the snapshot as `shale snapshot create` here would take
  // it, which goes through this node's target (refused when it does not serve the volume).
  options->take_snapshot = [lifecycle](const std::string& volume, const std::string& name,
                                       const Labels& labels) -> Status {
    return lifecycle->Snapshot(volume, name, {.labels = labels}).status();
  };
  // A replica of a replicated clone: this node's clone of its copy of the snapshot.
  options->clone_snapshot = [lifecycle](const std::string& source, const std::string& volume,
                                        const Labels& labels) -> Result<VolumeInfo> {
    CloneSpec spec;
    spec.source = source;
    spec.name = volume;
    spec.labels = labels;
    SHALE_ASSIGN_OR_RETURN(snapshot::CloneResult made, lifecycle->Clone(spec));
    return made.volume;
  };
}

// A target without a local replica (docs/replication.md, "Targets on nodes without a replica"):
// the copies on the in-sync replicas are the snapshot, each carrying its labels (no copy here
// does). Caller holds snapshot_mu_.
Result<std::optional<snapshot::SnapshotInfo>> ReplicatedVolumes::SnapshotFromRemotes(
    Target& target, const std::string& volume, const std::string& name,
    const snapshot::CreateSnapshotOptions& options) {
  const std::string ref = volume + "@" + name;
  snapshot::SnapshotInfo info;
  info.volume = volume;
  info.name = name;
  info.size_bytes = target.size_bytes;
  info.source_volume_live = true;
  std::vector<std::string> in_sync;
  ReactorOf(target)->RunSync([&] {
    for (const replication::ReplicaStatus& s : LayerOf(target)->Replicas()) {
      if (s.state == MemberState::kInSync) in_sync.push_back(s.node);
    }
  });
  info.labels = {{kSnapshotReplicasLabel, JoinNodes(in_sync)},
                 {kSnapshotVolumeUuidLabel, UuidOf(target).ToString()}};
  // A snapshot of that name exists when a replica holds a copy (the first one reachable says).
  const replication::ReplicaAdminOptions probe{
      "", options_.node_name, options_.secret, transport_,
      std::chrono::duration_cast<std::chrono::milliseconds>(kDigestTimeout)};
  bool probed = false;
  Status exists;
  ForEachRemoteCopy(info, options_.node_name, cluster_, probe,
                    [&](const std::string&, const replication::ReplicaAdminOptions* admin,
                        const replication::ReplicaSpec& spec, const Status&) {
                      if (admin == nullptr || probed) return;
                      probed = true;
                      exists = replication::SnapshotDigestOf(*admin, spec, name).status();
                    });
  if (probed && exists.ok()) return Status::AlreadyExists("snapshot '" + ref + "' already exists");
  if (probed && !exists.IsNotFound()) return exists.WithContext("look for snapshot " + ref);

  std::shared_future<void> quiet = StartQuiesce(target);
  Result<Labels> labels = FinishQuiesce(target, volume, quiet, QuiesceDeadline());
  if (!labels.ok()) {
    ResumeTarget(target);
    return labels.status();
  }
  for (const auto& [k, v] : options.labels) info.labels[k] = v;
  for (const auto& [k, v] : *labels) info.labels[k] = v;
  info.created_unix_ns =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  const Status failed = FirstFailure(StartCopies(target, name, info.labels).get());
  ResumeTarget(target);
  if (!failed.ok()) {
    SnapshotDeleted(info);  // all or none: the copies taken go again
    SHALE_LOG_WARN("snapshot of a replicated volume failed on a replica; undone", {"snapshot", ref},
                   {"error", failed.ToString()});
    return failed;
  }
  SHALE_LOG_INFO("snapshot of a replicated volume taken on its replicas (no local copy)",
                 {"snapshot", ref}, {"replicas", info.labels[kSnapshotReplicasLabel]});
  if (options.wait_digest) {
    for (const ReplicaDigest& d : VerifyReplicas(info)) {
      if (d.status.ok() && !d.digest.empty()) {
        info.digest = d.digest;
        info.digest_state = snapshot::DigestState::kReady;
        break;
      }
    }
  }
  return std::optional<snapshot::SnapshotInfo>(std::move(info));
}

Result<bool> ReplicatedVolumes::DeleteCopiesElsewhere(const std::string& volume,
                                                      const std::string& name) {
  if (store_ == nullptr) return false;
  // Only where this node holds no replica (its own copy would have been found).
  if (Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(volume);
      local.ok() && !IsTargetOnly(*local)) {
    return false;
  }
  Result<cluster::VolumeRecord> record = store_->GetVolume(volume);
  if (record.status().IsNotFound()) return DeleteCopiesOfDeletedVolume(volume, name);
  SHALE_RETURN_IF_ERROR(record.status());
  const cluster::Membership& m = record->membership;
  std::vector<std::string> holders;
  for (const cluster::ReplicaMember& r : m.replicas) holders.push_back(r.node);
  snapshot::SnapshotInfo copies;
  copies.volume = volume;
  copies.name = name;
  copies.size_bytes = m.size_bytes;
  copies.labels = {{kSnapshotReplicasLabel, JoinNodes(holders)},
                   {kSnapshotVolumeUuidLabel, m.uuid}};
  SnapshotDeleted(copies);  // DELETE_SNAPSHOT is idempotent: a replica without a copy is fine
  SHALE_LOG_INFO("snapshot of a replicated volume deleted on its replicas",
                 {"snapshot", volume + "@" + name}, {"replicas", JoinNodes(holders)});
  return true;
}

Result<std::optional<std::string>> ReplicatedVolumes::RecordedUuid(const std::string& volume) {
  // (store_ is set before started_, read after it.)
  if (!started_.load()) return Status::Unavailable("this node's cluster part is not started yet");
  Result<cluster::VolumeRecord> record = store_->GetVolume(volume);
  if (record.status().IsNotFound()) return std::optional<std::string>();
  SHALE_RETURN_IF_ERROR(record.status());
  return std::optional<std::string>(record->membership.uuid);
}

Result<bool> ReplicatedVolumes::DeleteCopiesOfDeletedVolume(const std::string& volume,
                                                            const std::string& name) {
  // The volume's record, and with it the list of its replicas, went with the volume; its
  // snapshots' copies did not. Every node is asked; each deletes only a copy of a volume the
  // cluster no longer has (DELETE_SNAPSHOT with a nil uuid, docs/format/replica-protocol.md).
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::NodeRecord> nodes, cluster_->ListNodes());
  std::vector<std::string> deleted;
  std::string unanswered;  // node: why, for one log line
  for (const cluster::NodeRecord& n : nodes) {
    if (n.name == options_.node_name) continue;
    Status st = Status::Unavailable("down");
    if (n.up && !n.info.replica_address.empty()) {
      const replication::ReplicaAdminOptions admin{n.info.replica_address, options_.node_name,
                                                   options_.secret, transport_,
                                                   options_.connect_timeout};
      st = replication::DeleteCopyOfDeletedVolume(admin, volume, name);
    }
    if (st.ok()) {
      deleted.push_back(n.name);
    } else if (!st.IsNotFound() && st.code() != StatusCode::kFailedPrecondition) {
      // (A copy a node must keep — a local volume's snapshot, a live volume's — is no error.)
      unanswered += (unanswered.empty() ? "" : "; ") + n.name + ": " + st.ToString();
    }
  }
  if (!unanswered.empty()) {
    SHALE_LOG_WARN("nodes that may hold a copy of a deleted volume's snapshot did not delete it",
                   {"snapshot", volume + "@" + name}, {"nodes", unanswered});
  }
  if (deleted.empty()) return false;
  SHALE_LOG_INFO("snapshot of a deleted replicated volume deleted on the nodes holding it",
                 {"snapshot", volume + "@" + name}, {"nodes", JoinNodes(deleted)});
  return true;
}

Result<snapshot::SnapshotInfo> ReplicatedVolumes::RemoteSnapshot(const std::string& volume,
                                                                 const std::string& name) {
  for (snapshot::SnapshotInfo& s : RemoteSnapshots(volume)) {
    if (s.volume == volume && s.name == name) return std::move(s);
  }
  return Status::NotFound("snapshot '" + volume + "@" + name + "' not found");
}

std::vector<snapshot::SnapshotInfo> ReplicatedVolumes::RemoteSnapshots(const std::string& volume) {
  std::vector<snapshot::SnapshotInfo> out;
  auto add = [&](const std::string& name, const Result<std::vector<snapshot::SnapshotInfo>>& got) {
    if (!got.ok()) {
      SHALE_LOG_WARN("snapshots of a volume held elsewhere not listed", {"volume", name},
                     {"error", got.status().ToString()});
      return;
    }
    out.insert(out.end(), got->begin(), got->end());
  };
  bool served = false;
  for (const std::shared_ptr<Target>& t : Targets()) {
    if (t->local_replica || !(volume.empty() || t->name == volume)) continue;
    served = true;
    std::vector<std::string> in_sync;
    t->reactor->RunSync([&] {
      for (const replication::ReplicaStatus& r : t->layer->Replicas()) {
        if (r.state == MemberState::kInSync) in_sync.push_back(r.node);
      }
    });
    add(t->name, ListCopies(t->name, t->uuid, t->size_bytes, in_sync));
  }
  // A volume named here that this node holds none of (not even an anchor): its in-sync replicas.
  if (served || volume.empty() || store_ == nullptr ||
      !lifecycle_->engine()->GetVolume(volume).status().IsNotFound()) {
    return out;
  }
  Result<cluster::VolumeRecord> record = store_->GetVolume(volume);
  if (!record.ok()) return out;
  const cluster::Membership& m = record->membership;
  Result<Uuid> uuid = Uuid::Parse(m.uuid);
  if (uuid.ok()) add(volume, ListCopies(volume, *uuid, m.size_bytes, m.in_sync));
  return out;
}

}  // namespace shale::daemon
