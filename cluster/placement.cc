#include "cluster/placement.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "engine/common/units.h"

namespace shale::cluster {

namespace {

struct Candidate {
  const NodeRecord* node = nullptr;
  const PoolCapacity* pool = nullptr;  // the best pool
  bool local = false;
};

// The pool with the most free bytes (by name on a tie), or nullptr when the node has none.
const PoolCapacity* BestPool(const NodeInfo& info) {
  const PoolCapacity* best = nullptr;
  for (const PoolCapacity& p : info.pools) {
    if (best == nullptr || p.free_bytes > best->free_bytes ||
        (p.free_bytes == best->free_bytes && p.name < best->name)) {
      best = &p;
    }
  }
  return best;
}

// Why `n` cannot take a replica of `size` bytes, or "" when it can.
std::string WhyNot(const NodeRecord& n, const PoolCapacity* best, bool local, uint64_t size,
                   const NodeSelector& selector) {
  if (!n.status.ok()) return "its record in etcd is malformed";
  if (!n.up) return "it is down";
  if (n.cordoned) return "it is cordoned (shale node uncordon " + n.name + ")";
  if (!selector.Matches(n.labels)) {
    return "its labels do not meet the node selector (" + selector.Unmet(n.labels) + ")";
  }
  if (!local && n.info.replica_address.empty()) return "it runs no replica listener";
  if (best == nullptr) return "it has no pool";
  if (best->free_bytes < size) {
    return "its largest free space is " + FormatSize(best->free_bytes) + " (pool " + best->name +
           "), " + FormatSize(size) + " needed";
  }
  return "";
}

Status CheckRequest(const PlacementRequest& r) {
  if (r.size_bytes == 0) return Status::InvalidArgument("a replicated volume needs a size");
  if (r.replicas < 1 || r.replicas > Membership::kMaxReplicas) {
    return Status::InvalidArgument("--replicas must be 1.." +
                                   std::to_string(Membership::kMaxReplicas) + ", not " +
                                   std::to_string(r.replicas));
  }
  std::set<std::string_view> seen;
  for (const std::string& name : r.only_nodes) {
    SHALE_RETURN_IF_ERROR(ValidateName("node", name).WithContext("--replica-nodes"));
    if (!seen.insert(name).second) {
      return Status::InvalidArgument("--replica-nodes names node " + name + " twice");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<ReplicaPlacement>> PlaceReplicas(const std::vector<NodeRecord>& nodes,
                                                    const PlacementRequest& request) {
  SHALE_RETURN_IF_ERROR(CheckRequest(request));
  std::map<std::string_view, const NodeRecord*> by_name;
  for (const NodeRecord& n : nodes) by_name.emplace(n.name, &n);
  std::vector<const NodeRecord*> considered;
  if (request.only_nodes.empty()) {
    for (const auto& [name, n] : by_name) considered.push_back(n);
  } else {
    for (const std::string& name : request.only_nodes) {
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return Status::NotFound("--replica-nodes: node " + name +
                                " is not in the cluster (see `shale node list`)");
      }
      considered.push_back(it->second);
    }
  }

  std::vector<Candidate> able;
  std::string refused;
  for (const NodeRecord* n : considered) {
    const bool local = n->name == request.local_node;
    const PoolCapacity* best = n->status.ok() ? BestPool(n->info) : nullptr;
    const std::string why = WhyNot(*n, best, local, request.size_bytes, request.selector);
    if (why.empty()) {
      able.push_back({n, best, local});
    } else {
      refused += (refused.empty() ? "" : "; ") + n->name + ": " + why;
    }
  }
  std::sort(able.begin(), able.end(), [](const Candidate& a, const Candidate& b) {
    if (a.local != b.local) return a.local;
    if (a.pool->free_bytes != b.pool->free_bytes) return a.pool->free_bytes > b.pool->free_bytes;
    return a.node->name < b.node->name;
  });
  if (able.size() < request.replicas) {
    std::string names;
    for (const Candidate& c : able) names += (names.empty() ? "" : ", ") + c.node->name;
    return Status::FailedPrecondition(std::to_string(request.replicas) + " replicas need " +
                                      std::to_string(request.replicas) +
                                      " nodes that can take one; " + std::to_string(able.size()) +
                                      (able.empty() ? " can" : " can (" + names + ")") +
                                      (refused.empty() ? "" : "; not " + refused));
  }
  std::vector<ReplicaPlacement> out;
  for (uint32_t i = 0; i < request.replicas; ++i) {
    out.push_back({able[i].node->name, able[i].pool->name});
  }
  return out;
}

std::string WhyNotPlaced(const std::vector<NodeRecord>& nodes, const PlacementRequest& request,
                         std::string_view node) {
  if (!request.only_nodes.empty() && std::find(request.only_nodes.begin(), request.only_nodes.end(),
                                               node) == request.only_nodes.end()) {
    return "it is not among --replica-nodes";
  }
  for (const NodeRecord& n : nodes) {
    if (n.name != node) continue;
    const PoolCapacity* best = n.status.ok() ? BestPool(n.info) : nullptr;
    return WhyNot(n, best, n.name == request.local_node, request.size_bytes, request.selector);
  }
  return "it is not in the cluster";
}

Result<Membership> NewMembership(std::string uuid, uint64_t size_bytes, uint32_t min_in_sync,
                                 std::string target,
                                 const std::vector<ReplicaPlacement>& placement) {
  if (min_in_sync < 1 || min_in_sync > placement.size()) {
    return Status::InvalidArgument("--min-in-sync must be 1.." + std::to_string(placement.size()) +
                                   " (the number of replicas), not " + std::to_string(min_in_sync));
  }
  Membership m;
  m.uuid = std::move(uuid);
  m.size_bytes = size_bytes;
  m.min_in_sync = min_in_sync;
  m.epoch = 1;
  m.target = std::move(target);
  for (const ReplicaPlacement& p : placement) {
    m.replicas.push_back({p.node, ReplicaState::kHealthy, 1});
    m.in_sync.push_back(p.node);
  }
  m.RecordChange("created");
  SHALE_RETURN_IF_ERROR(m.Validate());
  return m;
}

}  // namespace shale::cluster
