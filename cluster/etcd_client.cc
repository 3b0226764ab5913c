#include "cluster/etcd_client.h"

#include <algorithm>
#include <utility>

#include "cluster/etcd_rpc.h"

namespace shale::cluster {

using internal::DeadlineAfter;

Result<std::unique_ptr<EtcdClient>> EtcdClient::Create(std::string_view endpoints,
                                                       EtcdClientOptions options) {
  SHALE_ASSIGN_OR_RETURN(std::vector<EtcdEndpoint> parsed, ParseEtcdEndpoints(endpoints));
  if (options.call_timeout.count() <= 0 || options.attempt_timeout.count() <= 0 ||
      options.max_attempts <= 0 || options.backoff_initial.count() <= 0 ||
      options.backoff_max < options.backoff_initial || options.range_page <= 0 ||
      options.stream_keepalive < std::chrono::seconds(5)) {
    return Status::InvalidArgument(
        "etcd client options: timeouts, attempts and pages must be > 0, and stream keepalive "
        "at least 5 s (etcd refuses more frequent pings)");
  }
  auto rpc = std::make_shared<internal::EtcdRpc>(std::move(parsed), std::move(options));
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(rpc)));
}

EtcdClient::EtcdClient(std::shared_ptr<internal::EtcdRpc> rpc) : rpc_(std::move(rpc)) {}

EtcdClient::~EtcdClient() = default;

const std::string& EtcdClient::endpoints() const { return rpc_->names(); }
const EtcdClientOptions& EtcdClient::options() const { return rpc_->options(); }

Result<RangeResult> EtcdClient::Range(std::string_view key, const RangeOptions& options,
                                      Timeout timeout) {
  return rpc_->Range(key, options, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Result<RangeResult> EtcdClient::RangeAll(std::string_view prefix, Timeout timeout) {
  return rpc_->RangeAll(prefix, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Result<std::optional<KeyValue>> EtcdClient::Get(std::string_view key, Timeout timeout) {
  SHALE_ASSIGN_OR_RETURN(RangeResult range, Range(key, {}, timeout));
  if (range.kvs.empty()) return std::optional<KeyValue>();
  return std::optional<KeyValue>(std::move(range.kvs.front()));
}

Result<int64_t> EtcdClient::Put(std::string_view key, std::string_view value, int64_t lease,
                                Timeout timeout) {
  return rpc_->Put(key, value, lease, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Result<int64_t> EtcdClient::Delete(std::string_view key, bool prefix, Timeout timeout) {
  return rpc_->Delete(key, prefix, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Result<TxnResult> EtcdClient::Txn(const TxnRequest& request, Timeout timeout) {
  return rpc_->Txn(request, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Status EtcdClient::Compact(int64_t revision, Timeout timeout) {
  return rpc_->Compact(revision, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Result<LeaseGrant> EtcdClient::GrantLease(std::chrono::seconds ttl, Timeout timeout) {
  if (ttl.count() <= 0) return Status::InvalidArgument("etcd lease TTL must be at least 1 s");
  return rpc_->GrantLease(ttl, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

Status EtcdClient::RevokeLease(int64_t id, Timeout timeout) {
  return rpc_->RevokeLease(id, DeadlineAfter(timeout, rpc_->options().call_timeout));
}

std::unique_ptr<LeaseKeepAlive> EtcdClient::KeepAlive(int64_t id, std::chrono::seconds ttl,
                                                      LeaseKeepAlive::LostCallback on_lost) {
  return internal::StartKeepAlive(rpc_, id, std::max(ttl, std::chrono::seconds(1)),
                                  std::move(on_lost));
}

Result<std::unique_ptr<Watcher>> EtcdClient::Watch(std::string_view prefix, int64_t start_revision,
                                                   Watcher::Callback callback, Timeout timeout) {
  if (start_revision < 0) return Status::InvalidArgument("etcd watch: negative start revision");
  std::optional<RangeResult> initial;
  if (start_revision == 0) {
    SHALE_ASSIGN_OR_RETURN(initial, RangeAll(prefix, timeout));
  }
  return internal::StartWatcher(rpc_, std::string(prefix), start_revision, std::move(initial),
                                std::move(callback));
}

}  // namespace shale::cluster
