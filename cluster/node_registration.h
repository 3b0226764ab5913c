// Internal to cluster/ (ClusterStore's half that runs in the background): one node's
// registration. A lease of `ttl`, the node's live key under it and its info key, a keep-alive,
// and a thread that registers again under a new lease when the lease is lost.
//
// Threading: thread-safe. The change callback runs on the re-registration thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/node_record.h"
#include "engine/common/result.h"

namespace shale::cluster {

class NodeRegistration {
 public:
  using ChangeCallback = std::function<void(bool registered, const Status& why)>;

  NodeRegistration(std::shared_ptr<EtcdClient> client, std::string node, std::string live_key,
                   std::string info_key, NodeInfo info, std::chrono::seconds ttl,
                   ChangeCallback on_change);
  // Stops the threads; does not revoke the lease.
  ~NodeRegistration();
  NodeRegistration(const NodeRegistration&) = delete;
  NodeRegistration& operator=(const NodeRegistration&) = delete;

  // The first registration (synchronous); then the re-registration thread starts.
  Status Start(Timeout timeout);
  Status Update(const NodeInfo& info, Timeout timeout);
  // Stops the threads and revokes the lease.
  Status Revoke(Timeout timeout);
  bool registered() const;
  int64_t lease() const;

 private:
  // Grants a lease, writes both keys, starts the keep-alive. Serialized with Update by write_mu_,
  // so an update never re-attaches the key to a lease that was just replaced.
  Status RegisterOnce(Timeout timeout);
  void OnLost(int64_t lease, const Status& why);
  void Run();
  void Stop();

  const std::shared_ptr<EtcdClient> client_;
  const std::string node_;
  const std::string live_key_;
  const std::string info_key_;
  const std::chrono::seconds ttl_;
  const ChangeCallback on_change_;

  std::mutex write_mu_;  // held across the etcd writes of RegisterOnce and Update
  NodeInfo info_;        // guarded by write_mu_

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t lease_ = 0;                          // guarded by mu_
  bool registered_ = false;                    // guarded by mu_
  bool stopping_ = false;                      // guarded by mu_
  Status lost_reason_;                         // guarded by mu_
  std::unique_ptr<LeaseKeepAlive> keepalive_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace shale::cluster
