#include "daemon/cluster_node.h"

#include <algorithm>
#include <utility>

#include "cluster/etcd_client.h"
#include "engine/common/log.h"
#include "engine/engine.h"

namespace shale::daemon {

namespace {

// How long Stop() may take to revoke the lease; after it the key expires with the TTL.
constexpr std::chrono::seconds kDeregisterTimeout{3};

std::chrono::seconds RefreshPeriod(std::chrono::seconds lease) {
  return std::max(std::chrono::seconds(1), lease / 3);
}

}  // namespace

cluster::NodeInfo DescribeNode(Engine& engine, std::string replica_address) {
  cluster::NodeInfo info;
  info.replica_address = std::move(replica_address);
  std::vector<PoolInfo> pools = engine.ListPools();
  std::sort(pools.begin(), pools.end(),
            [](const PoolInfo& a, const PoolInfo& b) { return a.name < b.name; });
  for (const PoolInfo& p : pools) {
    if (info.pools.size() == cluster::NodeInfo::kMaxPools) break;
    // A pool that is not online offers nothing: listed, with no free bytes.
    const uint64_t free_bytes = p.state == "online" ? std::min(p.free_bytes, p.capacity_bytes) : 0;
    info.pools.push_back({p.name, free_bytes, p.capacity_bytes});
  }
  return info;
}

ClusterNode::ClusterNode(Engine* engine, ClusterNodeOptions options)
    : engine_(engine), options_(std::move(options)) {}

ClusterNode::~ClusterNode() { Stop(); }

Status ClusterNode::Start() {
  const std::string context = "join the cluster at " + options_.cluster_store;
  cluster::EtcdClientOptions client_options;
  client_options.call_timeout = kRegisterTimeout;
  Result<std::unique_ptr<cluster::EtcdClient>> client =
      cluster::EtcdClient::Create(options_.cluster_store, client_options);
  if (!client.ok()) return client.status().WithContext(context);
  cluster::ClusterStoreOptions store_options;
  store_options.prefix = options_.prefix;
  store_options.node_lease = options_.lease;
  const std::string node = options_.node_name;
  store_options.on_registration_change = [node](bool registered, const Status& why) {
    if (registered) {
      SHALE_LOG_INFO("node registered in etcd again", {"node", node});
    } else {
      SHALE_LOG_WARN("node registration in etcd lost", {"node", node}, {"why", why.ToString()});
    }
  };
  Result<std::unique_ptr<cluster::ClusterStore>> store = cluster::ClusterStore::Create(
      std::shared_ptr<cluster::EtcdClient>(std::move(client).value()), std::move(store_options));
  if (!store.ok()) return store.status().WithContext(context);

  const std::string address = options_.replica_address ? options_.replica_address() : "";
  published_ = DescribeNode(*engine_, address);
  SHALE_RETURN_IF_ERROR((*store)
                            ->RegisterNode(options_.node_name, published_, kRegisterTimeout)
                            .WithContext(context));
  {
    std::lock_guard<std::mutex> lock(mu_);
    store_ = std::move(store).value();
    address_ = address;
    stopping_ = false;
  }
  refresher_ = std::thread([this] { RefreshLoop(); });
  SHALE_LOG_INFO("joined the cluster", {"node", options_.node_name},
                 {"etcd", options_.cluster_store}, {"replica_address", address},
                 {"lease_s", static_cast<int64_t>(options_.lease.count())});
  return Status::Ok();
}

void ClusterNode::RefreshLoop() {
  const std::chrono::seconds period = RefreshPeriod(options_.lease);
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stopping_; })) {
    std::shared_ptr<cluster::ClusterStore> store = store_;
    lock.unlock();
    cluster::NodeInfo now = DescribeNode(*engine_, published_.replica_address);
    if (!(now == published_)) {
      // Bounded by the client's call timeout; an etcd away now is tried again next period
      // (the registration keeps the info for when it registers again).
      Status s = store->UpdateNodeInfo(now, std::chrono::duration_cast<cluster::Timeout>(period));
      if (s.ok()) {
        published_ = std::move(now);
      } else {
        SHALE_LOG_WARN("could not publish this node's pools in etcd", {"node", options_.node_name},
                       {"error", s.ToString()});
      }
    }
    lock.lock();
  }
}

void ClusterNode::Stop() {
  std::shared_ptr<cluster::ClusterStore> store;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    store = store_;
  }
  cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
  if (store == nullptr) return;
  // Down at once for the others, rather than after the TTL.
  if (Status s = store->Deregister(kDeregisterTimeout); !s.ok()) {
    SHALE_LOG_WARN("could not revoke this node's lease; it expires with its TTL",
                   {"node", options_.node_name}, {"error", s.ToString()});
  } else {
    SHALE_LOG_INFO("left the cluster", {"node", options_.node_name});
  }
  std::lock_guard<std::mutex> lock(mu_);
  store_.reset();
}

Result<std::vector<cluster::NodeRecord>> ClusterNode::ListNodes() {
  std::shared_ptr<cluster::ClusterStore> store;
  {
    std::lock_guard<std::mutex> lock(mu_);
    store = store_;
  }
  if (store == nullptr) {
    return Status::FailedPrecondition("node " + options_.node_name + " is not in the cluster");
  }
  return store->ListNodes();
}

std::string ClusterNode::replica_address() {
  std::lock_guard<std::mutex> lock(mu_);
  return address_;
}

bool ClusterNode::registered() {
  std::lock_guard<std::mutex> lock(mu_);
  return store_ != nullptr && store_->registered();
}

std::shared_ptr<cluster::ClusterStore> ClusterNode::store() {
  std::lock_guard<std::mutex> lock(mu_);
  return store_;
}

}  // namespace shale::daemon
