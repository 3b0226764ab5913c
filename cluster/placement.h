// Where the replicas of a new volume go (issue 11: `shale volume create NAME --size S
// --replicas N [--replica-nodes a,b,c] [--min-in-sync M]`): a pure function of the node list, so
// the rules are unit-tested without etcd or daemons.
//
// Rules: one replica per node. A node can take one when it is up, its record is well formed, it
// runs a replica listener (the local node needs none: its replica is local), and one of its pools
// has at least the volume's size free (a replica ends up fully written by a rebuild, so thin
// provisioning is not counted on). The local node comes first when it can take one, then the
// others by the free bytes of their best pool (most first; by name on a tie); each replica goes
// to its node's best pool. --replica-nodes restricts the candidates to the nodes named (each must
// be known); a node selector (node_selector.h) leaves out the nodes whose labels do not meet it.
// Fewer candidates than replicas is FailedPrecondition naming, for every node left
// out, why.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/cluster_store.h"
#include "cluster/membership.h"
#include "cluster/node_selector.h"
#include "engine/common/result.h"

namespace shale::cluster {

struct PlacementRequest {
  std::string local_node;               // the node creating the volume (its target)
  uint64_t size_bytes = 0;              // > 0
  uint32_t replicas = 1;                // 1..Membership::kMaxReplicas
  std::vector<std::string> only_nodes;  // --replica-nodes; empty: every node
  NodeSelector selector;                // --replica-node-selector; empty: every node
};

struct ReplicaPlacement {
  std::string node;
  std::string pool;  // the node's pool with the most free bytes

  bool operator==(const ReplicaPlacement&) const = default;
};

// The nodes for `request.replicas` replicas, in placement order (see above). InvalidArgument for
// a bad request (zero size, replica count out of range, a repeated or invalid name in
// only_nodes), NotFound for a node in only_nodes that never registered, FailedPrecondition when
// fewer than `replicas` nodes can take one.
Result<std::vector<ReplicaPlacement>> PlaceReplicas(const std::vector<NodeRecord>& nodes,
                                                    const PlacementRequest& request);

// Why `node` cannot take a replica of the volume `request` places ("it is cordoned (…)", "it is
// not among --replica-nodes", …), or "" when it can (whether or not it would be chosen).
std::string WhyNotPlaced(const std::vector<NodeRecord>& nodes, const PlacementRequest& request,
                         std::string_view node);

// The first membership record of a new volume placed on `placement`, served by `target` (the
// node where it was created; it need not hold a replica): epoch 1, every replica healthy and in
// sync (a new volume has no data to copy), history holding the creation. InvalidArgument when
// min_in_sync is not 1..replicas (or the record is otherwise invalid).
Result<Membership> NewMembership(std::string uuid, uint64_t size_bytes, uint32_t min_in_sync,
                                 std::string target,
                                 const std::vector<ReplicaPlacement>& placement);

}  // namespace shale::cluster
