#include "cluster/node_registration.h"

#include <algorithm>
#include <utility>

#include "cluster/etcd_rpc.h"
#include "engine/common/log.h"

namespace shale::cluster {

using internal::TimeLeft;

NodeRegistration::NodeRegistration(std::shared_ptr<EtcdClient> client, std::string node,
                                   std::string live_key, std::string info_key, NodeInfo info,
                                   std::chrono::seconds ttl, ChangeCallback on_change)
    : client_(std::move(client)),
      node_(std::move(node)),
      live_key_(std::move(live_key)),
      info_key_(std::move(info_key)),
      ttl_(ttl),
      on_change_(std::move(on_change)),
      info_(std::move(info)) {}

NodeRegistration::~NodeRegistration() { Stop(); }

Status NodeRegistration::Start(Timeout timeout) {
  SHALE_RETURN_IF_ERROR(RegisterOnce(timeout));
  thread_ = std::thread([this] { Run(); });
  return Status::Ok();
}

Status NodeRegistration::RegisterOnce(Timeout timeout) {
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  std::lock_guard<std::mutex> write(write_mu_);
  SHALE_ASSIGN_OR_RETURN(const std::string value, EncodeNodeInfo(info_));
  const std::string context = "register node " + node_;
  Result<LeaseGrant> grant = client_->GrantLease(ttl_, TimeLeft(deadline));
  if (!grant.ok()) return grant.status().WithContext(context);
  Status s = client_->Put(info_key_, value, 0, TimeLeft(deadline)).status();
  if (s.ok()) s = client_->Put(live_key_, value, grant->id, TimeLeft(deadline)).status();
  if (!s.ok()) {
    // Best effort: an orphaned lease expires after its TTL anyway.
    client_->RevokeLease(grant->id, Timeout(500)).IgnoreError();
    return s.WithContext(context);
  }
  const int64_t id = grant->id;
  std::unique_ptr<LeaseKeepAlive> keepalive =
      client_->KeepAlive(id, grant->ttl, [this, id](const Status& why) { OnLost(id, why); });
  std::unique_ptr<LeaseKeepAlive> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    old = std::move(keepalive_);
    keepalive_ = std::move(keepalive);
    lease_ = id;
    registered_ = true;
  }
  SHALE_LOG_INFO("node registered in etcd", {"node", node_}, {"lease", id},
                 {"ttl_s", static_cast<int64_t>(grant->ttl.count())});
  return Status::Ok();
}

Status NodeRegistration::Update(const NodeInfo& info, Timeout timeout) {
  SHALE_ASSIGN_OR_RETURN(const std::string value, EncodeNodeInfo(info));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  std::lock_guard<std::mutex> write(write_mu_);
  info_ = info;
  int64_t lease = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (registered_) lease = lease_;
  }
  if (lease == 0) {
    return Status::Unavailable("node " + node_ +
                               " is not registered in etcd now (its lease was lost); the new "
                               "info is published when it registers again");
  }
  SHALE_RETURN_IF_ERROR(client_->Put(info_key_, value, 0, TimeLeft(deadline)).status());
  return client_->Put(live_key_, value, lease, TimeLeft(deadline)).status();
}

void NodeRegistration::OnLost(int64_t lease, const Status& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lease != lease_ || stopping_) return;
    registered_ = false;
    lost_reason_ = why;
  }
  cv_.notify_all();
}

void NodeRegistration::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !registered_; });
    if (stopping_) return;
    const Status why = lost_reason_;
    const int64_t old_lease = lease_;
    std::unique_ptr<LeaseKeepAlive> old = std::move(keepalive_);
    lock.unlock();
    old.reset();  // its thread has finished: it reported the loss
    SHALE_LOG_WARN("node registration lost; registering again", {"node", node_},
                   {"why", why.ToString()});
    if (on_change_) on_change_(false, why);
    internal::Backoff backoff(client_->options().backoff_initial, client_->options().backoff_max);
    while (true) {
      const Status s = RegisterOnce(kDefaultTimeout);
      if (s.ok()) break;
      SHALE_LOG_WARN("node registration failed; retrying", {"node", node_},
                     {"error", s.ToString()});
      lock.lock();
      cv_.wait_for(lock, backoff.Next(), [this] { return stopping_; });
      if (stopping_) return;
      lock.unlock();
    }
    // The old lease may still live in etcd (restarted etcds extend leases): it holds no key of
    // ours any more, so revoking it is only tidying up.
    client_->RevokeLease(old_lease, Timeout(500)).IgnoreError();
    if (on_change_) on_change_(true, Status::Ok());
    lock.lock();
  }
}

void NodeRegistration::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::unique_ptr<LeaseKeepAlive> keepalive;
  {
    std::lock_guard<std::mutex> lock(mu_);
    keepalive = std::move(keepalive_);
  }
}

Status NodeRegistration::Revoke(Timeout timeout) {
  Stop();
  int64_t lease = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    lease = lease_;
    lease_ = 0;
    registered_ = false;
  }
  if (lease == 0) return Status::Ok();
  Status s = client_->RevokeLease(lease, timeout);
  if (s.IsNotFound()) return Status::Ok();  // already expired
  return s;
}

bool NodeRegistration::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_;
}

int64_t NodeRegistration::lease() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_ ? lease_ : 0;
}

}  // namespace shale::cluster
