// EtcdClient: a blocking client of etcd's v3 gRPC API (KV, Lease, Watch) for control threads.
//
// Every call has a deadline (its `timeout`, or EtcdClientOptions::call_timeout) that covers
// retries and failover: it fails over to the next endpoint when one cannot serve the request
// (unreachable, no leader, timed out), backs off between rounds, and gives up with an Unavailable
// error naming the endpoints when the deadline passes or the attempts run out. Errors that etcd
// itself answers (lease not found, compacted revision, request too large) are returned at once.
//
// Retries never apply a transaction twice: a Txn is only sent on a connected channel, and when
// it fails after it may have reached etcd it is not retried: it returns Unavailable("outcome
// unknown ..."), and the caller re-reads (ClusterStore does). Range, Put, DeleteRange and the
// lease calls are retried (their effect does not depend on how often they run).
//
// Threading: every method is thread-safe. Calls block (up to their deadline): use them from
// control threads, never from a reactor. Keep-alives and watches run on a thread of their own
// each and call back from it. The handles they return must be destroyed before the client.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/endpoints.h"
#include "cluster/etcd_types.h"
#include "engine/common/result.h"

namespace shale::cluster {

namespace internal {
class EtcdRpc;
}  // namespace internal

struct EtcdClientOptions {
  Timeout call_timeout{5000};                    // deadline of a call, retries included
  Timeout attempt_timeout{2000};                 // one attempt on one endpoint
  int max_attempts = 16;                         // attempts of one call over all endpoints
  Timeout backoff_initial{50};                   // pause after a round of failed attempts,
  Timeout backoff_max{1000};                     // doubling up to this
  Timeout stream_keepalive{10000};               // HTTP/2 pings on an open watch/keep-alive
  size_t max_response_bytes = 64 * 1024 * 1024;  // a larger response fails the call
  int64_t range_page = 1000;                     // keys per request of RangeAll
};

// Renews one lease in the background. Destroying it stops renewing (the lease is not revoked:
// it expires after its TTL). Created by EtcdClient::KeepAlive.
class LeaseKeepAlive {
 public:
  // Called at most once, on the keep-alive's thread, when the lease is lost: etcd answered that it
  // no longer exists (NotFound), or no renewal succeeded within its TTL (Unavailable). Renewal
  // stops then. The callback must not destroy this LeaseKeepAlive.
  using LostCallback = std::function<void(const Status& why)>;

  virtual ~LeaseKeepAlive() = default;
  virtual int64_t id() const = 0;
  // True once the lease is known lost (the callback has run or is running).
  virtual bool lost() const = 0;
};

// A watch of a key prefix, delivering updates on its own thread. Destroying it stops the watch
// (waits for a callback in progress). Created by EtcdClient::Watch.
class Watcher {
 public:
  // Called on the watcher's thread, one update at a time, in revision order. A slow callback slows
  // the watch (etcd's stream is flow-controlled), nothing queues up without bound. The callback
  // must not destroy the Watcher.
  using Callback = std::function<void(const WatchUpdate&)>;

  virtual ~Watcher() = default;
  // Everything up to this revision has been delivered.
  virtual int64_t revision() const = 0;
};

class EtcdClient {
 public:
  // Parses `endpoints` ("etcd://HOST:PORT[,HOST:PORT...]", InvalidArgument when malformed) and
  // sets up one channel per endpoint. Does not contact etcd: the first call does.
  static Result<std::unique_ptr<EtcdClient>> Create(std::string_view endpoints,
                                                    EtcdClientOptions options = {});
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // "etcd://a:1,b:2", as error messages name it.
  const std::string& endpoints() const;
  const EtcdClientOptions& options() const;

  // Keys in [key, key+1) or, with options.prefix, every key starting with `key`.
  Result<RangeResult> Range(std::string_view key, const RangeOptions& options = {},
                            Timeout timeout = kDefaultTimeout);
  // Every key under `prefix` at one revision, read in pages of options().range_page keys. The
  // timeout covers all pages.
  Result<RangeResult> RangeAll(std::string_view prefix, Timeout timeout = kDefaultTimeout);
  // One key, or nullopt when it does not exist.
  Result<std::optional<KeyValue>> Get(std::string_view key, Timeout timeout = kDefaultTimeout);
  // Writes `value` (attached to `lease` unless 0); returns the revision of the write.
  Result<int64_t> Put(std::string_view key, std::string_view value, int64_t lease = 0,
                      Timeout timeout = kDefaultTimeout);
  // Deletes the key (or every key under the prefix); returns how many were deleted.
  Result<int64_t> Delete(std::string_view key, bool prefix = false,
                         Timeout timeout = kDefaultTimeout);
  // Runs the transaction; FailedPrecondition never: a failed compare is `succeeded == false`.
  Result<TxnResult> Txn(const TxnRequest& request, Timeout timeout = kDefaultTimeout);
  // Discards the history before `revision` (watches that need it get a reset).
  Status Compact(int64_t revision, Timeout timeout = kDefaultTimeout);

  // Grants a lease of `ttl`; etcd raises a TTL below its minimum (see LeaseGrant::ttl).
  Result<LeaseGrant> GrantLease(std::chrono::seconds ttl, Timeout timeout = kDefaultTimeout);
  // Revokes the lease (its keys are deleted). NotFound when it does not exist (any more).
  Status RevokeLease(int64_t id, Timeout timeout = kDefaultTimeout);
  // Renews lease `id` (of time-to-live `ttl`) every ttl/3 over a bidirectional stream, failing
  // over between endpoints, until the handle is destroyed or the lease is lost.
  std::unique_ptr<LeaseKeepAlive> KeepAlive(int64_t id, std::chrono::seconds ttl,
                                            LeaseKeepAlive::LostCallback on_lost);

  // Watches every key under `prefix`. With start_revision 0 the first update is a reset (the
  // prefix as read now; this read happens before Watch returns, so an unreachable etcd fails it
  // with Unavailable). Otherwise updates start with the events of start_revision. After a lost
  // connection the watch resumes after the last delivered revision; when etcd compacted that
  // history away, the watcher reads the prefix again and delivers a reset.
  Result<std::unique_ptr<Watcher>> Watch(std::string_view prefix, int64_t start_revision,
                                         Watcher::Callback callback,
                                         Timeout timeout = kDefaultTimeout);

 private:
  explicit EtcdClient(std::shared_ptr<internal::EtcdRpc> rpc);
  std::shared_ptr<internal::EtcdRpc> rpc_;
};

}  // namespace shale::cluster
