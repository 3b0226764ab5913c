// ClusterNode: this shaled as a member of a cluster (--cluster-store; docs/replication.md,
// "Cluster mode in shaled").
//
// Start() connects to etcd and registers the node (cluster::ClusterStore::RegisterNode):
// nodes/<name> under a lease of --node-lease-seconds, holding the replica address and every
// pool's free and capacity bytes, and node-info/<name> without a lease (so a node that is down
// is still listed). An etcd that cannot be reached fails Start() within kRegisterTimeout with an
// Unavailable error naming the endpoints: shaled exits 1 instead of running half-joined (its
// supervisor restarts it). Once registered, a lost lease is re-registered in the background.
// A refresh thread reads the pools every TTL/3 (at least 1 s) and publishes them when they
// changed. Stop() revokes the lease, so a node stopped cleanly is down at once; a killed one is
// down when its lease expires (the TTL).
//
// Threading: Start/Stop from the daemon's main thread; ListNodes and the accessors from any
// thread (the control API's).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_store.h"
#include "daemon/daemon.h"
#include "engine/common/result.h"

namespace shale {
class Engine;
}

namespace shale::daemon {

struct ClusterNodeOptions {
  std::string cluster_store;  // "etcd://HOST:PORT[,...]"
  std::string node_name;
  // What peers dial for replicas ("" without --replica-listen). A function, since a listener on
  // port 0 knows its address only once it is bound (it starts before this node registers).
  std::function<std::string()> replica_address;
  std::chrono::seconds lease{10};
  // Key prefix in etcd (tests use their own).
  std::string prefix = "/shale/v1/";
};

// What this node publishes: every pool of `engine` (at most NodeInfo::kMaxPools, by name).
cluster::NodeInfo DescribeNode(Engine& engine, std::string replica_address);

class ClusterNode final : public Frontend {
 public:
  // The whole of Start(): connecting, granting the lease and writing both keys.
  static constexpr std::chrono::seconds kRegisterTimeout{10};

  // `engine` must outlive the node.
  ClusterNode(Engine* engine, ClusterNodeOptions options);
  ~ClusterNode() override;  // Stop()s
  ClusterNode(const ClusterNode&) = delete;
  ClusterNode& operator=(const ClusterNode&) = delete;

  std::string_view name() const override { return "cluster"; }
  std::string endpoint() const override { return options_.cluster_store; }
  Status Start() override;
  void Stop() override;

  const std::string& node_name() const { return options_.node_name; }
  // The replica address this node published ("" when it runs no replica listener).
  std::string replica_address();
  // Its etcd lease is believed alive (false before Start() and after Stop()).
  bool registered();
  // Every node that ever registered (up or down), by name. FailedPrecondition before Start().
  Result<std::vector<cluster::NodeRecord>> ListNodes();
  // The store, for the volume records (ReplicatedVolumes); null before Start() and after Stop().
  // Holders keep it alive past Stop() (its calls then still reach etcd, without the lease).
  std::shared_ptr<cluster::ClusterStore> store();

 private:
  void RefreshLoop();

  Engine* const engine_;
  const ClusterNodeOptions options_;
  std::shared_ptr<cluster::ClusterStore> store_;  // set by Start, guarded by mu_
  std::string address_;                           // guarded by mu_

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;        // guarded by mu_
  cluster::NodeInfo published_;  // what the refresh thread last wrote (its thread only)
  std::thread refresher_;
};

}  // namespace shale::daemon
