// The daemon's side of a replicated volume's membership (docs/replication.md, "The epoch and
// generation rules"): StoreMembership implements replication::MembershipClient with compare-and-
// swap on the volume's key in etcd (cluster::ClusterStore), and UnreachableReplica stands in for a
// replica the target cannot reach (a slot of the ReplicationLayer in state out).
//
// Threading: the MembershipClient calls come on the volume's reactor; StoreMembership runs the
// etcd Txns on a worker thread of its own and posts each `done` to the reactor. Stop() (a control
// thread) joins the worker: afterwards no `done` is posted any more (requests still queued are
// dropped, so the layer they belong to must go too).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cluster/cluster_store.h"
#include "cluster/membership.h"
#include "cluster/placement.h"
#include "engine/common/result.h"
#include "replication/replication_layer.h"

namespace shale {
class Reactor;
}

namespace shale::daemon {

// One change of a membership record; returns false when nothing is to change (the record already
// says so).
using MembershipEdit = std::function<Result<bool>(cluster::Membership* membership)>;

// Where a replica taking the place of `old` in `m` goes (docs/replication.md, "Replacing a
// replica"): a node served by the target `target_node` that holds no replica of the volume, is
// not draining and meets the volume's node selector, by free capacity. FailedPrecondition saying
// why when none qualifies.
Result<cluster::ReplicaPlacement> PlaceReplacement(const std::vector<cluster::NodeRecord>& nodes,
                                                   const cluster::Membership& m,
                                                   const std::string& target_node,
                                                   const std::string& old,
                                                   const std::string& volume);

// Reads the volume's record, applies `edit`, and swaps it in (epoch rules checked), retrying a
// lost race a bounded number of times. Returns the record as it is in etcd afterwards. Blocking
// (etcd): control threads only.
Result<cluster::VolumeRecord> EditMembership(cluster::ClusterStore* store,
                                             const std::string& volume, const MembershipEdit& edit);

// The edits of the layer's two calls, also used at a target's start: `node` leaves in_sync
// (state faulted, epoch + 1, a history entry with `reason`; nothing to change when it holds no
// replica any more: it was removed), or joins it (healthy, epoch + 1).
MembershipEdit ReplicaLeaves(std::string node, std::string reason);
MembershipEdit ReplicaJoins(std::string node);
// `node` is being rebuilt (state rebuilding; epoch unchanged: in_sync does not change).
MembershipEdit ReplicaRebuilding(std::string node);
// Replacing a replica (docs/replication.md, "Replacing a replica"): a new replica on `node`,
// rebuilding, that `replaces` the one on that node (epoch unchanged); FailedPrecondition when
// `replaces` holds no replica any more or another replica replaces it already, AlreadyExists
// when `node` holds one. Then, once it is in sync, the replaced one goes: removed from the
// replicas (and from in_sync, epoch + 1, a history entry with `reason`); the new one no longer
// names it. Nothing to change when `node` holds no replica.
MembershipEdit ReplicaAdded(std::string node, std::string replaces);
MembershipEdit ReplicaRemoved(std::string node, std::string reason);

class StoreMembership final : public replication::MembershipClient {
 public:
  // `reactor` (the volume's) must outlive this object.
  StoreMembership(std::shared_ptr<cluster::ClusterStore> store, std::string volume,
                  Reactor* reactor);
  ~StoreMembership() override;  // Stop()s
  StoreMembership(const StoreMembership&) = delete;
  StoreMembership& operator=(const StoreMembership&) = delete;

  void ReplicaFailed(const std::string& node, const std::string& reason,
                     std::function<void(Result<uint64_t>)> done) override;
  void ReplicaRebuilt(const std::string& node, std::function<void(Result<uint64_t>)> done) override;
  // Joins the worker; queued requests are dropped without their `done`. Idempotent.
  void Stop();

 private:
  struct Job {
    MembershipEdit edit;
    std::function<void(Result<uint64_t>)> done;
  };
  void Enqueue(Job job);
  void Loop();

  const std::shared_ptr<cluster::ClusterStore> store_;
  const std::string volume_;
  Reactor* const reactor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;   // guarded by mu_
  bool stopping_ = false;  // guarded by mu_
  std::thread worker_;
};

// A replica the target could not connect to: every request fails (connection lost), it is
// always broken(). Only ever in state out, so the layer sends it nothing but SetEpoch.
class UnreachableReplica final : public replication::ReplicaTarget {
 public:
  UnreachableReplica(std::string node, Reactor* reactor)
      : node_(std::move(node)), reactor_(reactor) {}
  const std::string& node() const override { return node_; }
  bool local() const override { return false; }
  void Submit(replication::ChildIo* child) override;
  void SetEpoch(uint64_t) override {}
  bool broken() const override { return true; }
  void SubmitSetGeneration(replication::ChildIo* child, uint64_t) override { Submit(child); }

 private:
  const std::string node_;
  Reactor* const reactor_;
};

}  // namespace shale::daemon
