#include "daemon/replica_membership.h"

#include <algorithm>
#include <cerrno>

#include "engine/common/log.h"
#include "engine/io/reactor.h"

namespace shale::daemon {

Result<cluster::ReplicaPlacement> PlaceReplacement(const std::vector<cluster::NodeRecord>& nodes,
                                                   const cluster::Membership& m,
                                                   const std::string& target_node,
                                                   const std::string& old,
                                                   const std::string& volume) {
  std::vector<std::string> candidates;
  for (const cluster::NodeRecord& n : nodes) {
    if (n.name != target_node && m.Find(n.name) == nullptr && !n.draining) {
      candidates.push_back(n.name);
    }
  }
  if (candidates.empty()) {
    return Status::FailedPrecondition("every other node holds a replica of " + volume +
                                      " already or is draining: no node can take one in place "
                                      "of " +
                                      old);
  }
  cluster::PlacementRequest request;
  request.local_node = target_node;
  request.size_bytes = m.size_bytes;
  request.replicas = 1;
  request.only_nodes = std::move(candidates);
  // The volume's node selector holds for the new replica too (validated with the record).
  SHALE_ASSIGN_OR_RETURN(request.selector, cluster::NodeSelector::Parse(m.node_selector));
  SHALE_ASSIGN_OR_RETURN(std::vector<cluster::ReplicaPlacement> placed,
                         cluster::PlaceReplicas(nodes, request));
  return placed.front();
}
namespace {

// A lost compare-and-swap is retried from the record etcd returned, at most this often (each
// retry means another writer changed the record meanwhile: rare, and bounded).
constexpr int kMaxSwapAttempts = 8;

cluster::ReplicaMember* FindMember(cluster::Membership* m, const std::string& node) {
  for (cluster::ReplicaMember& r : m->replicas) {
    if (r.node == node) return &r;
  }
  return nullptr;
}

}  // namespace

Result<cluster::VolumeRecord> EditMembership(cluster::ClusterStore* store,
                                             const std::string& volume,
                                             const MembershipEdit& edit) {
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store->GetVolume(volume));
  for (int attempt = 0;; ++attempt) {
    cluster::Membership next = record.membership;
    SHALE_ASSIGN_OR_RETURN(bool changed, edit(&next));
    if (!changed) return record;
    SHALE_RETURN_IF_ERROR(cluster::CheckMembershipTransition(record.membership, next));
    cluster::VolumeRecord current;
    Status swapped = store->CompareAndSwapVolume(volume, record.mod_revision, next, &current);
    if (swapped.ok()) return current;
    if (swapped.code() != StatusCode::kFailedPrecondition || attempt + 1 >= kMaxSwapAttempts) {
      return swapped.WithContext("change the membership of volume " + volume);
    }
    record = std::move(current);  // another writer won: recompute from what is there now
  }
}

MembershipEdit ReplicaLeaves(std::string node, std::string reason) {
  return
      [node = std::move(node), reason = std::move(reason)](cluster::Membership* m) -> Result<bool> {
        cluster::ReplicaMember* r = FindMember(m, node);
        if (r == nullptr) return false;  // removed (replaced) meanwhile: not in in_sync
        auto it = std::find(m->in_sync.begin(), m->in_sync.end(), node);
        if (it == m->in_sync.end()) return false;  // already out
        if (m->in_sync.size() == 1) {
          return Status::FailedPrecondition("node " + node + " is the last in-sync replica");
        }
        m->in_sync.erase(it);
        m->epoch += 1;
        r->state = cluster::ReplicaState::kFaulted;
        r->since_epoch = m->epoch;
        m->RecordChange(node + " left: " + reason);
        return true;
      };
}

MembershipEdit ReplicaJoins(std::string node) {
  return [node = std::move(node)](cluster::Membership* m) -> Result<bool> {
    cluster::ReplicaMember* r = FindMember(m, node);
    if (r == nullptr) return Status::NotFound("node " + node + " holds no replica of the volume");
    if (m->InSync(node)) return false;
    m->in_sync.push_back(node);
    m->epoch += 1;
    r->state = cluster::ReplicaState::kHealthy;
    r->since_epoch = m->epoch;
    m->RecordChange(node + " rebuilt");
    return true;
  };
}

MembershipEdit ReplicaRebuilding(std::string node) {
  return [node = std::move(node)](cluster::Membership* m) -> Result<bool> {
    cluster::ReplicaMember* r = FindMember(m, node);
    if (r == nullptr) return Status::NotFound("node " + node + " holds no replica of the volume");
    if (m->InSync(node) || r->state == cluster::ReplicaState::kRebuilding) return false;
    r->state = cluster::ReplicaState::kRebuilding;
    r->since_epoch = m->epoch;
    return true;
  };
}

MembershipEdit ReplicaAdded(std::string node, std::string replaces) {
  return [node = std::move(node),
          replaces = std::move(replaces)](cluster::Membership* m) -> Result<bool> {
    if (FindMember(m, node) != nullptr) {
      return Status::AlreadyExists("node " + node + " holds a replica of the volume already");
    }
    if (FindMember(m, replaces) == nullptr) {
      return Status::FailedPrecondition("node " + replaces + " holds no replica any more");
    }
    for (const cluster::ReplicaMember& r : m->replicas) {
      if (r.replaces == replaces) {
        return Status::FailedPrecondition("the replica on " + r.node + " replaces " + replaces +
                                          " already");
      }
    }
    if (m->replicas.size() >= cluster::Membership::kMaxReplicas) {
      return Status::FailedPrecondition("the volume has the most replicas a volume may have");
    }
    cluster::ReplicaMember added;
    added.node = node;
    added.state = cluster::ReplicaState::kRebuilding;
    added.since_epoch = m->epoch;
    added.replaces = replaces;
    m->replicas.push_back(std::move(added));
    return true;
  };
}

MembershipEdit ReplicaRemoved(std::string node, std::string reason) {
  return [node = std::move(node),
          reason = std::move(reason)](cluster::Membership* m) -> Result<bool> {
    auto it = std::find_if(m->replicas.begin(), m->replicas.end(),
                           [&](const cluster::ReplicaMember& r) { return r.node == node; });
    if (it == m->replicas.end()) return false;
    if (m->replicas.size() - 1 < m->min_in_sync) {
      return Status::FailedPrecondition("removing the replica on " + node +
                                        " would leave fewer replicas than --min-in-sync");
    }
    m->replicas.erase(it);
    for (cluster::ReplicaMember& r : m->replicas) {
      if (r.replaces == node) r.replaces.clear();
    }
    if (auto in = std::find(m->in_sync.begin(), m->in_sync.end(), node); in != m->in_sync.end()) {
      m->in_sync.erase(in);
      m->epoch += 1;
      m->RecordChange(node + " removed: " + reason);
    }
    return true;
  };
}

StoreMembership::StoreMembership(std::shared_ptr<cluster::ClusterStore> store, std::string volume,
                                 Reactor* reactor)
    : store_(std::move(store)), volume_(std::move(volume)), reactor_(reactor) {
  worker_ = std::thread([this] { Loop(); });
}

StoreMembership::~StoreMembership() { Stop(); }

void StoreMembership::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    jobs_.clear();
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void StoreMembership::ReplicaFailed(const std::string& node, const std::string& reason,
                                    std::function<void(Result<uint64_t>)> done) {
  SHALE_LOG_WARN("replica leaves the in-sync set", {"volume", volume_}, {"node", node},
                 {"reason", reason});
  Enqueue({ReplicaLeaves(node, reason), std::move(done)});
}

void StoreMembership::ReplicaRebuilt(const std::string& node,
                                     std::function<void(Result<uint64_t>)> done) {
  Enqueue({ReplicaJoins(node), std::move(done)});
}

void StoreMembership::Enqueue(Job job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;  // the layer is going away with this object
    jobs_.push_back(std::move(job));
  }
  cv_.notify_all();
}

void StoreMembership::Loop() {
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (stopping_) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    Result<cluster::VolumeRecord> record = EditMembership(store_.get(), volume_, job.edit);
    Result<uint64_t> epoch = record.ok() ? Result<uint64_t>(record->membership.epoch)
                                         : Result<uint64_t>(record.status());
    if (!epoch.ok()) {
      SHALE_LOG_ERROR("membership change not recorded", {"volume", volume_},
                      {"error", epoch.status().ToString()});
    }
    lock.lock();
    if (stopping_) return;
    reactor_->Post([done = std::move(job.done), epoch = std::move(epoch)] { done(epoch); });
  }
}

void UnreachableReplica::Submit(replication::ChildIo* child) {
  reactor_->Post([child, node = node_] {
    child->io.status = Status::FromErrno(ECONNRESET, "replica on " + node + " is not connected");
    child->done(child);
  });
}

}  // namespace shale::daemon
