// ClusterStore: Shale's records in etcd, in the vocabulary of docs/replication.md.
//
//   <prefix>nodes/<node>       NodeInfo JSON under the node's lease: present while the node is up
//   <prefix>node-info/<node>   the same JSON without a lease: the last known info of a node,
//                              so a node that is down is still listed (as down)
//   <prefix>cordoned/<node>    "cordoned" or "draining" (`shale node cordon|drain`)
//   <prefix>node-labels/<node> the node's labels, a JSON object (`shale node label`)
//   <prefix>volumes/<volume>   Membership JSON, changed only by compare-and-swap on mod_revision
//
// The prefix is "/shale/v1/" (tests use their own). Values read from etcd are decoded strictly: a
// malformed one is a Corruption error naming its key, never a crash.
//
// Threading: every method is thread-safe and blocks up to its timeout (default: the client's
// call timeout); use from control threads, never from a reactor. The node's registration runs a
// keep-alive thread and a re-registration thread; callbacks come from those and from watchers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/etcd_client.h"
#include "cluster/membership.h"
#include "cluster/node_record.h"
#include "engine/common/result.h"

namespace shale::cluster {

class NodeRegistration;

struct ClusterStoreOptions {
  std::string prefix = "/shale/v1/";    // starts and ends with '/'
  std::chrono::seconds node_lease{10};  // --node-lease-seconds
  // This node's registration was lost (registered == false: the lease expired or was revoked; the
  // node's key is gone or about to be) or is back under a new lease (registered == true). Called
  // on the registration's thread; must not call Deregister or destroy the store.
  std::function<void(bool registered, const Status& why)> on_registration_change;
};

struct NodeRecord {
  std::string name;
  NodeInfo info;          // valid when status is OK
  bool up = false;        // its lease lives (nodes/<node> exists)
  bool cordoned = false;  // `shale node cordon`: no new replica goes there (cordoned/<node>)
  // `shale node drain` (cordoned too): every replica on it is replaced elsewhere, then removed.
  bool draining = false;
  Labels labels;  // `shale node label`: what replica node selectors match
  Status status;  // Corruption when its stored value (info or labels) is malformed
};

struct VolumeRecord {
  std::string name;
  Membership membership;     // valid when status is OK
  int64_t mod_revision = 0;  // what a compare-and-swap compares against
  Status status;             // Corruption when its stored value is malformed (in lists)
};

// Watch updates: with reset, `changes` holds every record (none deleted) and replaces what the
// watcher knew; otherwise the changes since the previous update, in revision order.
struct VolumeChange {
  bool deleted = false;
  VolumeRecord record;  // name always; membership and mod_revision unless deleted
};
struct VolumeUpdate {
  bool reset = false;
  std::vector<VolumeChange> changes;
  int64_t revision = 0;
};
struct NodeUpdate {
  bool reset = false;
  std::vector<NodeRecord> changes;  // up == false: the node's lease ended (info empty)
  int64_t revision = 0;
};

class ClusterStore {
 public:
  // `client` is shared with the store's background threads.
  static Result<std::unique_ptr<ClusterStore>> Create(std::shared_ptr<EtcdClient> client,
                                                      ClusterStoreOptions options = {});
  // Stops the registration's threads; does not revoke the lease (the node's key expires after
  // the TTL, as after a crash). Deregister() first for a clean stop.
  ~ClusterStore();
  ClusterStore(const ClusterStore&) = delete;
  ClusterStore& operator=(const ClusterStore&) = delete;

  // ---- this node
  // Grants a lease of options.node_lease, writes nodes/<node> under it and node-info/<node>, and
  // keeps the lease alive. When the lease is lost the node registers again under a new lease as
  // soon as etcd answers (on_registration_change tells). InvalidArgument for a bad name or info,
  // FailedPrecondition when already registered, Unavailable when etcd cannot be reached (then
  // nothing is left behind and nothing retries: call again).
  Status RegisterNode(std::string_view node, const NodeInfo& info,
                      Timeout timeout = kDefaultTimeout);
  // Publishes new info (pool free bytes). The info is kept for re-registration even when this
  // fails: Unavailable while the registration is lost, FailedPrecondition when never registered.
  Status UpdateNodeInfo(const NodeInfo& info, Timeout timeout = kDefaultTimeout);
  // Stops the keep-alive and revokes the lease: the node is down at once (node-info stays).
  Status Deregister(Timeout timeout = kDefaultTimeout);
  // The node's lease is believed alive (renewed within its TTL).
  bool registered() const;
  // The lease the node's key is attached to, 0 when not registered.
  int64_t lease() const;

  // ---- nodes
  // Every node that ever registered and was not forgotten, up or down, by name.
  Result<std::vector<NodeRecord>> ListNodes(Timeout timeout = kDefaultTimeout);
  // `shale node cordon|uncordon` (docs/replication.md, "Cordon"): placement puts no new replica
  // on a cordoned node; what it holds and serves stays. A key without a lease
  // (cordoned/<node>), so it outlives the node's restarts. NotFound for a node that never
  // registered. Idempotent.
  Status SetCordoned(std::string_view node, bool cordoned, Timeout timeout = kDefaultTimeout);
  // `shale node drain` (docs/replication.md, "Drain"): the node is cordoned and draining (the
  // same key, value "draining"): the target of every volume with a replica there replaces it.
  // `uncordon` (SetCordoned false) ends the drain. NotFound for an unknown node. Idempotent.
  Status SetDraining(std::string_view node, Timeout timeout = kDefaultTimeout);
  // `shale node label NODE KEY=VALUE... KEY-...`: sets the labels in `set` and removes the keys
  // in `remove` (a key missing already is fine), in one compare-and-swap of node-labels/<node>
  // (retried on a concurrent change); returns the node's labels after the change. NotFound for
  // an unknown node, InvalidArgument for a bad label or more than kMaxLabels.
  Result<Labels> UpdateNodeLabels(std::string_view node, const Labels& set,
                                  const std::vector<std::string>& remove,
                                  Timeout timeout = kDefaultTimeout);
  // Removes a down node's last known info, cordon and labels. FailedPrecondition while it is up.
  Status ForgetNode(std::string_view node, Timeout timeout = kDefaultTimeout);
  // Up/down changes and info updates of nodes; the first update is a reset (nodes that are up).
  Result<std::unique_ptr<Watcher>> WatchNodes(std::function<void(const NodeUpdate&)> callback,
                                              Timeout timeout = kDefaultTimeout);

  // ---- volumes
  // NotFound when the volume has no record; Corruption when it is malformed.
  Result<VolumeRecord> GetVolume(std::string_view volume, Timeout timeout = kDefaultTimeout);
  // Writes the first record of a volume; returns its mod_revision. AlreadyExists when it has one.
  Result<int64_t> CreateVolume(std::string_view volume, const Membership& membership,
                               Timeout timeout = kDefaultTimeout);
  // Replaces the record if its mod_revision is still `expected_mod_revision`. OK: *current is the
  // new record (with its new mod_revision). FailedPrecondition: another writer won; *current is
  // the record now in etcd, so the caller can recompute and retry. NotFound when deleted;
  // InvalidArgument when `next` is invalid; Unavailable when etcd cannot be reached (if the write
  // may have happened, the store reads the key again to tell). The caller checks the epoch rules
  // (CheckMembershipTransition) against the record it read.
  Status CompareAndSwapVolume(std::string_view volume, int64_t expected_mod_revision,
                              const Membership& next, VolumeRecord* current,
                              Timeout timeout = kDefaultTimeout);
  // Deletes the record; with expected_mod_revision > 0 only if unchanged (FailedPrecondition
  // otherwise). NotFound when there is none.
  Status DeleteVolume(std::string_view volume, int64_t expected_mod_revision = 0,
                      Timeout timeout = kDefaultTimeout);
  // Every volume record, by name (malformed ones with a Corruption status).
  Result<std::vector<VolumeRecord>> ListVolumes(Timeout timeout = kDefaultTimeout);
  // Changes of volume records; the first update is a reset (every record).
  Result<std::unique_ptr<Watcher>> WatchVolumes(std::function<void(const VolumeUpdate&)> callback,
                                                Timeout timeout = kDefaultTimeout);

  // The keys, for tools and tests.
  std::string NodeKey(std::string_view node) const;
  std::string NodeInfoKey(std::string_view node) const;
  std::string CordonKey(std::string_view node) const;
  std::string NodeLabelsKey(std::string_view node) const;
  std::string VolumeKey(std::string_view volume) const;

 private:
  ClusterStore(std::shared_ptr<EtcdClient> client, ClusterStoreOptions options);
  size_t VolumeNameOffset() const;
  // NotFound unless node-info/<node> exists (the node registered once and was not forgotten).
  Status CheckNodeKnown(std::string_view node, Timeout timeout);
  // Writes cordoned/<node> = value, or deletes it for an empty value.
  Status PutCordon(std::string_view node, std::string_view value, Timeout timeout);

  std::shared_ptr<EtcdClient> client_;
  const ClusterStoreOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<NodeRegistration> registration_;  // guarded by mu_
  bool registering_ = false;                        // guarded by mu_
};

}  // namespace shale::cluster
