// ReplicatedVolumes::Target: one open target of a replicated volume and the repair thread's
// bookkeeping of its replicas (private to replicated_volumes.cc and replicated_resync.cc).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/cluster_store.h"
#include "daemon/replica_membership.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/uuid.h"
#include "nbd/export.h"
#include "replication/activity_log.h"
#include "replication/changed_regions.h"
#include "replication/rebuilder.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"

namespace shale::daemon {

// The uuid label of a local replica volume ("" for a volume that is no replica).
inline std::string ReplicaUuidOf(const VolumeInfo& info) {
  auto it = info.labels.find(replication::kReplicaUuidLabel);
  return it == info.labels.end() ? std::string() : it->second;
}

// Whether a local volume carrying the uuid label is only the anchor of a target on a node
// without a replica (docs/replication.md, "Targets on nodes without a replica").
static_assert(std::string_view(replication::kTargetOnlyLabel) == nbd::kTargetOnlyLabel);
inline bool IsTargetOnly(const VolumeInfo& info) {
  return info.labels.contains(replication::kTargetOnlyLabel);
}

// The record of node `name` in `nodes`, or nullptr.
inline const cluster::NodeRecord* FindNode(const std::vector<cluster::NodeRecord>& nodes,
                                           const std::string& name) {
  for (const cluster::NodeRecord& n : nodes) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

// Per remote node: the repair thread's bookkeeping (guarded by Target::mu).
struct NodeRepair {
  // Records a rebuild or resync that ended (well or not).
  void Ended(const replication::Rebuilder::Progress& p) {
    progress = p;
    done_total += p.done_bytes;
    sent_total += p.sent_bytes;
  }

  std::chrono::steady_clock::time_point next_try{};
  std::chrono::milliseconds backoff{500};     // kFirstBackoff
  replication::Rebuilder::Progress progress;  // of the last rebuild or resync that ended
  // Summed over every rebuild and resync that ended since the target opened (the metrics).
  uint64_t done_total = 0, sent_total = 0;
  uint32_t rebuilds = 0;
  std::string last_error;
  // Replacing this node's replica (replica_replace.cc): the next attempt after a failed one.
  std::chrono::steady_clock::time_point replace_next_try{};
  std::chrono::milliseconds replace_backoff{0};
  std::string replace_error;  // the last failure logged
};

struct ReplicatedVolumes::Target {
  std::string name;
  Uuid uuid;
  uint64_t size_bytes = 0;
  std::string local_node;
  // False for a target on a node without a replica: `handle` is then the target-only anchor
  // (kTargetOnlyLabel; it holds no data), every member is remote, and rebuilds, resyncs and
  // reads use an in-sync remote replica. Turns false while the target runs when its own replica
  // is replaced (a drain of this node: FinishLocalReplace), never back.
  std::atomic<bool> local_replica{true};
  std::shared_ptr<VolumeHandle> handle;
  Reactor* reactor = nullptr;
  std::unique_ptr<replication::ChangedRegions> changed;
  std::unique_ptr<replication::ActivityLog> activity;
  std::unique_ptr<StoreMembership> membership;
  std::unique_ptr<replication::ReplicationLayer> layer;
  // The rebuild in progress (on the reactor; at most one per target).
  std::unique_ptr<replication::Rebuilder> rebuilder;
  bool rebuild_running = false;  // on the reactor
  std::string repairing;         // the node being rebuilt or joined; guarded by mu
  std::mutex mu;
  std::map<std::string, NodeRepair> repair;  // guarded by mu
  // Nodes whose replica another one replaces (the membership's `replaces`): never reconnected
  // or rebuilt, removed once the new one is in sync; guarded by mu.
  std::set<std::string> being_replaced;

  ~Target();
  // On the reactor: the replica a rebuild or resync of `node` copies from — the local one, or
  // (without one) the first in-sync remote other than `node`; "" when there is none.
  std::string SourceFor(const std::string& node) const;
  void RebuildDone(const std::string& node, Status status);
  // Waits (bounded) for the activity log's record update in flight, then destroys it.
  void DrainActivityLog();
};

}  // namespace shale::daemon
