// Internal to cluster/: the channels to etcd's endpoints, failover, the retry loop of unary calls
// and the conversions between etcd's protobuf messages and etcd_types.h. EtcdClient, the lease
// keep-alive and the watcher share one EtcdRpc (shared_ptr: a background thread may outlive the
// client's last call by a little while it stops).
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/endpoints.h"
#include "cluster/etcd_client.h"
#include "cluster/etcd_types.h"
#include "engine/common/result.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace shale::cluster::internal {

using SteadyClock = std::chrono::steady_clock;
using Deadline = SteadyClock::time_point;

// gRPC takes deadlines on the system clock.
std::chrono::system_clock::time_point ToSystemClock(Deadline deadline);
// now + timeout, or now + `fallback` when timeout is zero.
Deadline DeadlineAfter(Timeout timeout, Timeout fallback);
// What is left of `deadline`, at least 1 ms (a zero Timeout would mean "the default").
Timeout TimeLeft(Deadline deadline);
std::string Millis(SteadyClock::duration d);

// One etcd member: its channel and the stubs of the services Shale uses.
struct Connection {
  EtcdEndpoint endpoint;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch;
};

// Doubling pauses with jitter, capped; Reset() after a success.
class Backoff {
 public:
  Backoff(Timeout initial, Timeout max);
  Timeout Next();
  void Reset() { next_ = initial_; }

 private:
  Timeout initial_;
  Timeout max_;
  Timeout next_;
  std::minstd_rand rng_;
};

// Whether a failed call may have been sent to etcd.
enum class Retry {
  kAlways,     // the call is harmless to repeat: retry on any endpoint failure
  kIfNotSent,  // send only on a connected channel; a failure after sending is "outcome unknown"
};

class EtcdRpc {
 public:
  EtcdRpc(std::vector<EtcdEndpoint> endpoints, EtcdClientOptions options);

  const std::string& names() const { return names_; }
  const EtcdClientOptions& options() const { return options_; }
  size_t size() const { return connections_.size(); }
  Connection& at(size_t i) { return connections_[i]; }
  // The endpoint to try first: the last one that worked.
  size_t Preferred() const { return preferred_.load(std::memory_order_relaxed); }
  // Endpoint i could not serve: move on to the next one (if i is still the preferred one).
  void Failed(size_t i);
  // Waits until endpoint i's channel is connected (true) or `until` passes (false). Waiting here,
  // rather than sleeping, is what drives the channel's reconnection: gRPC makes progress on a
  // connection attempt only while some thread waits on the channel or on one of its calls.
  // `cancelled`, when given, is checked every 100 ms and ends the wait (false).
  bool AwaitConnected(size_t i, Deadline until, const std::function<bool()>& cancelled = {});

  Result<RangeResult> Range(std::string_view key, const RangeOptions& options, Deadline deadline);
  Result<RangeResult> RangeAll(std::string_view prefix, Deadline deadline);
  Result<int64_t> Put(std::string_view key, std::string_view value, int64_t lease,
                      Deadline deadline);
  Result<int64_t> Delete(std::string_view key, bool prefix, Deadline deadline);
  Result<TxnResult> Txn(const TxnRequest& request, Deadline deadline);
  Status Compact(int64_t revision, Deadline deadline);
  Result<LeaseGrant> GrantLease(std::chrono::seconds ttl, Deadline deadline);
  Status RevokeLease(int64_t id, Deadline deadline);

 private:
  // Runs `fn(connection, context)` on the preferred endpoint and fails over until it succeeds, etcd
  // answers an error that another endpoint would answer too, or the deadline / attempts run out.
  template <typename Fn>
  Status Call(std::string_view what, Retry retry, Deadline deadline, Fn&& fn);
  // Waits until endpoint i's channel is connected; false as soon as it fails to connect.
  bool ConnectOrFail(size_t i, Deadline deadline);

  EtcdClientOptions options_;
  std::vector<Connection> connections_;
  std::string names_;
  std::atomic<size_t> preferred_{0};
};

// Whether a gRPC error means "this endpoint cannot serve now; another one might".
bool IsEndpointFailure(const grpc::Status& status);
// A Status for an error etcd answered (or for a transport failure), naming the operation.
Status FromGrpc(std::string_view what, const std::string& endpoint, const grpc::Status& status);

KeyValue FromProto(const mvccpb::KeyValue& kv);
WatchEvent FromProto(const mvccpb::Event& event);
RangeResult FromProto(const etcdserverpb::RangeResponse& response);

}  // namespace shale::cluster::internal

namespace shale::cluster::internal {

// The background halves of EtcdClient::KeepAlive and EtcdClient::Watch (lease_keepalive.cc,
// watcher.cc). `initial`, when set, is delivered first as a reset and the watch starts after it.
std::unique_ptr<LeaseKeepAlive> StartKeepAlive(std::shared_ptr<EtcdRpc> rpc, int64_t id,
                                               std::chrono::seconds ttl,
                                               LeaseKeepAlive::LostCallback on_lost);
std::unique_ptr<Watcher> StartWatcher(std::shared_ptr<EtcdRpc> rpc, std::string prefix,
                                      int64_t start_revision, std::optional<RangeResult> initial,
                                      Watcher::Callback callback);

}  // namespace shale::cluster::internal
