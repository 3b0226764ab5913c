#include "cluster/etcd_rpc.h"

#include <algorithm>
#include <utility>

namespace shale::cluster::internal {
namespace pb = etcdserverpb;

std::chrono::system_clock::time_point ToSystemClock(Deadline deadline) {
  const auto left = deadline - SteadyClock::now();
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(left);
}

Deadline DeadlineAfter(Timeout timeout, Timeout fallback) {
  return SteadyClock::now() + (timeout.count() > 0 ? timeout : fallback);
}

Timeout TimeLeft(Deadline deadline) {
  return std::max(std::chrono::duration_cast<Timeout>(deadline - SteadyClock::now()), Timeout(1));
}

std::string Millis(SteadyClock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

Backoff::Backoff(Timeout initial, Timeout max)
    : initial_(initial), max_(max), next_(initial), rng_(std::random_device{}()) {}

Timeout Backoff::Next() {
  const Timeout current = next_;
  next_ = std::min(max_, next_ * 2);
  // Up to +25% jitter, so clients that failed together do not come back together.
  const auto quarter = std::max<int64_t>(1, current.count() / 4);
  return current + Timeout(std::uniform_int_distribution<int64_t>(0, quarter)(rng_));
}

namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const EtcdEndpoint& endpoint,
                                           const EtcdClientOptions& options) {
  grpc::ChannelArguments args;
  // Pings only while a stream (watch, keep-alive) is open: etcd closes connections that ping
  // without one, or more often than every 5 s (--grpc-keepalive-min-time).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.stream_keepalive.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
              static_cast<int>(std::max<int64_t>(1000, options.stream_keepalive.count() / 2)));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Come back quickly after an etcd restart (gRPC's defaults back off up to 120 s).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // This client's connections are its own (no subchannel shared with another client).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_response_bytes));
  return grpc::CreateCustomChannel(endpoint.Address(), grpc::InsecureChannelCredentials(), args);
}

std::string GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
      return "unavailable";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "deadline exceeded";
    case grpc::StatusCode::CANCELLED:
      return "cancelled";
    default:
      return "gRPC code " + std::to_string(static_cast<int>(code));
  }
}

void ToProto(const TxnOp& op, pb::RequestOp* out) {
  switch (op.type) {
    case TxnOp::Type::kRange: {
      pb::RangeRequest* r = out->mutable_request_range();
      r->set_key(op.key);
      if (op.prefix) r->set_range_end(PrefixEnd(op.key));
      break;
    }
    case TxnOp::Type::kPut: {
      pb::PutRequest* r = out->mutable_request_put();
      r->set_key(op.key);
      r->set_value(op.value);
      r->set_lease(op.lease);
      break;
    }
    case TxnOp::Type::kDelete: {
      pb::DeleteRangeRequest* r = out->mutable_request_delete_range();
      r->set_key(op.key);
      if (op.prefix) r->set_range_end(PrefixEnd(op.key));
      break;
    }
  }
}

void ToProto(const Compare& c, pb::Compare* out) {
  out->set_key(c.key);
  switch (c.op) {
    case Compare::Op::kEqual:
      out->set_result(pb::Compare::EQUAL);
      break;
    case Compare::Op::kNotEqual:
      out->set_result(pb::Compare::NOT_EQUAL);
      break;
    case Compare::Op::kGreater:
      out->set_result(pb::Compare::GREATER);
      break;
    case Compare::Op::kLess:
      out->set_result(pb::Compare::LESS);
      break;
  }
  switch (c.target) {
    case Compare::Target::kVersion:
      out->set_target(pb::Compare::VERSION);
      out->set_version(c.number);
      break;
    case Compare::Target::kCreateRevision:
      out->set_target(pb::Compare::CREATE);
      out->set_create_revision(c.number);
      break;
    case Compare::Target::kModRevision:
      out->set_target(pb::Compare::MOD);
      out->set_mod_revision(c.number);
      break;
    case Compare::Target::kValue:
      out->set_target(pb::Compare::VALUE);
      out->set_value(c.value);
      break;
    case Compare::Target::kLease:
      out->set_target(pb::Compare::LEASE);
      out->set_lease(c.number);
      break;
  }
}

TxnOpResult OpResultFromProto(const pb::ResponseOp& op) {
  TxnOpResult r;
  if (op.has_response_range()) {
    r.type = TxnOp::Type::kRange;
    r.range = FromProto(op.response_range());
  } else if (op.has_response_put()) {
    r.type = TxnOp::Type::kPut;
  } else if (op.has_response_delete_range()) {
    r.type = TxnOp::Type::kDelete;
    r.deleted = op.response_delete_range().deleted();
  }
  return r;
}

}  // namespace

KeyValue FromProto(const mvccpb::KeyValue& kv) {
  return KeyValue{kv.key(),          kv.value(),   kv.create_revision(),
                  kv.mod_revision(), kv.version(), kv.lease()};
}

WatchEvent FromProto(const mvccpb::Event& event) {
  WatchEvent e;
  e.type =
      event.type() == mvccpb::Event::DELETE ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
  e.kv = FromProto(event.kv());
  return e;
}

RangeResult FromProto(const pb::RangeResponse& response) {
  RangeResult r;
  r.kvs.reserve(static_cast<size_t>(response.kvs_size()));
  for (const mvccpb::KeyValue& kv : response.kvs()) r.kvs.push_back(FromProto(kv));
  r.more = response.more();
  r.count = response.count();
  r.revision = response.header().revision();
  return r;
}

bool IsEndpointFailure(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

Status FromGrpc(std::string_view what, const std::string& endpoint, const grpc::Status& status) {
  const std::string msg =
      "etcd " + std::string(what) + " at " + endpoint + ": " + status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::OK:
      return Status::Ok();
    case grpc::StatusCode::NOT_FOUND:
      return Status::NotFound(msg);
    case grpc::StatusCode::INVALID_ARGUMENT:
      return Status::InvalidArgument(msg);
    case grpc::StatusCode::OUT_OF_RANGE:
      return Status::OutOfRange(msg);
    case grpc::StatusCode::FAILED_PRECONDITION:
      return Status::FailedPrecondition(msg);
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return Status::PermissionDenied(msg);
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:  // etcd's quota or rate limit
    case grpc::StatusCode::CANCELLED:
      return Status::Unavailable(msg);
    default:
      return Status::Internal(msg + " (" + GrpcCodeName(status.error_code()) + ")");
  }
}

EtcdRpc::EtcdRpc(std::vector<EtcdEndpoint> endpoints, EtcdClientOptions options)
    : options_(std::move(options)), names_(FormatEtcdEndpoints(endpoints)) {
  for (EtcdEndpoint& ep : endpoints) {
    Connection c;
    c.channel = MakeChannel(ep, options_);
    c.kv = pb::KV::NewStub(c.channel);
    c.lease = pb::Lease::NewStub(c.channel);
    c.watch = pb::Watch::NewStub(c.channel);
    c.endpoint = std::move(ep);
    connections_.push_back(std::move(c));
  }
}

void EtcdRpc::Failed(size_t i) {
  size_t expected = i;
  preferred_.compare_exchange_strong(expected, (i + 1) % connections_.size(),
                                     std::memory_order_relaxed);
}

bool EtcdRpc::AwaitConnected(size_t i, Deadline until, const std::function<bool()>& cancelled) {
  grpc::Channel& channel = *connections_[i].channel;
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_SHUTDOWN || (cancelled && cancelled())) return false;
    const Deadline now = SteadyClock::now();
    if (now >= until) return false;
    const Deadline slice =
        cancelled ? std::min(until, now + std::chrono::milliseconds(100)) : until;
    channel.WaitForStateChange(state, ToSystemClock(slice));
    state = channel.GetState(/*try_to_connect=*/true);
  }
  return true;
}

bool EtcdRpc::ConnectOrFail(size_t i, Deadline deadline) {
  grpc::Channel& channel = *connections_[i].channel;
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) return false;
    if (!channel.WaitForStateChange(state, ToSystemClock(deadline))) return false;
    state = channel.GetState(/*try_to_connect=*/true);
  }
  return true;
}

template <typename Fn>
Status EtcdRpc::Call(std::string_view what, Retry retry, Deadline deadline, Fn&& fn) {
  const Deadline start = SteadyClock::now();
  Backoff backoff(options_.backoff_initial, options_.backoff_max);
  grpc::Status last;
  std::string last_endpoint;
  int attempts = 0;
  size_t failed_in_round = 0;
  while (attempts < options_.max_attempts) {
    const Deadline now = SteadyClock::now();
    if (now >= deadline) break;
    ++attempts;
    const size_t i = Preferred();
    Connection& c = connections_[i];
    const Deadline attempt_deadline = std::min(deadline, now + options_.attempt_timeout);
    grpc::Status s;
    if (retry == Retry::kIfNotSent && !ConnectOrFail(i, attempt_deadline)) {
      s = grpc::Status(grpc::StatusCode::UNAVAILABLE, "cannot connect");
    } else {
      grpc::ClientContext context;
      context.set_deadline(ToSystemClock(attempt_deadline));
      s = fn(c, context);
      if (s.ok()) return Status::Ok();
      if (!IsEndpointFailure(s)) return FromGrpc(what, c.endpoint.Address(), s);
      if (retry == Retry::kIfNotSent) {
        Failed(i);
        return Status::Unavailable("etcd " + std::string(what) + ": outcome unknown: " +
                                   c.endpoint.Address() + " failed after the request was sent (" +
                                   s.error_message() + "); read the key again to find out");
      }
    }
    last = s;
    last_endpoint = c.endpoint.Address();
    Failed(i);
    if (++failed_in_round >= connections_.size()) {
      // Every endpoint failed once: pause, but on a channel, so that it reconnects meanwhile
      // (and the pause ends as soon as it does).
      failed_in_round = 0;
      AwaitConnected(Preferred(), std::min(deadline, SteadyClock::now() + backoff.Next()));
    }
  }
  return Status::Unavailable("etcd " + std::string(what) + ": etcd unreachable at " + names_ +
                             " (" + std::to_string(attempts) + " attempts in " +
                             Millis(SteadyClock::now() - start) + "); last error from " +
                             last_endpoint + ": " + GrpcCodeName(last.error_code()) + ": " +
                             last.error_message());
}

Result<RangeResult> EtcdRpc::Range(std::string_view key, const RangeOptions& options,
                                   Deadline deadline) {
  pb::RangeRequest request;
  request.set_key(std::string(key));
  if (options.prefix) request.set_range_end(PrefixEnd(std::string(key)));
  request.set_limit(options.limit);
  request.set_revision(options.revision);
  request.set_keys_only(options.keys_only);
  request.set_count_only(options.count_only);
  pb::RangeResponse response;
  SHALE_RETURN_IF_ERROR(
      Call("range", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.kv->Range(&ctx, request, &response);
      }));
  return FromProto(response);
}

Result<RangeResult> EtcdRpc::RangeAll(std::string_view prefix, Deadline deadline) {
  const std::string end = PrefixEnd(std::string(prefix));
  // A compaction between two pages makes the pinned revision unreadable: start over (bounded).
  Status last;
  for (int round = 0; round < 3; ++round) {
    RangeResult all;
    std::string from(prefix);
    Status s;
    while (true) {
      pb::RangeRequest request;
      request.set_key(from);
      request.set_range_end(end);
      request.set_limit(options_.range_page);
      request.set_revision(all.revision);
      pb::RangeResponse response;
      s = Call("range", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.kv->Range(&ctx, request, &response);
      });
      if (!s.ok()) break;
      if (all.revision == 0) all.revision = response.header().revision();
      for (const mvccpb::KeyValue& kv : response.kvs()) all.kvs.push_back(FromProto(kv));
      if (!response.more() || response.kvs_size() == 0) break;
      from = response.kvs(response.kvs_size() - 1).key() + std::string(1, '\0');
    }
    if (s.ok()) {
      all.count = static_cast<int64_t>(all.kvs.size());
      return all;
    }
    if (s.code() != StatusCode::kOutOfRange) return s;
    last = std::move(s);
  }
  return last;
}

Result<int64_t> EtcdRpc::Put(std::string_view key, std::string_view value, int64_t lease,
                             Deadline deadline) {
  pb::PutRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  request.set_lease(lease);
  pb::PutResponse response;
  SHALE_RETURN_IF_ERROR(
      Call("put", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.kv->Put(&ctx, request, &response);
      }));
  return response.header().revision();
}

Result<int64_t> EtcdRpc::Delete(std::string_view key, bool prefix, Deadline deadline) {
  pb::DeleteRangeRequest request;
  request.set_key(std::string(key));
  if (prefix) request.set_range_end(PrefixEnd(std::string(key)));
  pb::DeleteRangeResponse response;
  SHALE_RETURN_IF_ERROR(
      Call("delete", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.kv->DeleteRange(&ctx, request, &response);
      }));
  return response.deleted();
}

Result<TxnResult> EtcdRpc::Txn(const TxnRequest& txn, Deadline deadline) {
  pb::TxnRequest request;
  for (const Compare& c : txn.compares) ToProto(c, request.add_compare());
  for (const TxnOp& op : txn.then_ops) ToProto(op, request.add_success());
  for (const TxnOp& op : txn.else_ops) ToProto(op, request.add_failure());
  pb::TxnResponse response;
  SHALE_RETURN_IF_ERROR(
      Call("txn", Retry::kIfNotSent, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.kv->Txn(&ctx, request, &response);
      }));
  TxnResult result;
  result.succeeded = response.succeeded();
  result.revision = response.header().revision();
  for (const pb::ResponseOp& op : response.responses())
    result.results.push_back(OpResultFromProto(op));
  return result;
}

Status EtcdRpc::Compact(int64_t revision, Deadline deadline) {
  pb::CompactionRequest request;
  request.set_revision(revision);
  pb::CompactionResponse response;
  return Call("compact", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
    return c.kv->Compact(&ctx, request, &response);
  });
}

Result<LeaseGrant> EtcdRpc::GrantLease(std::chrono::seconds ttl, Deadline deadline) {
  pb::LeaseGrantRequest request;
  request.set_ttl(ttl.count());
  pb::LeaseGrantResponse response;
  SHALE_RETURN_IF_ERROR(
      Call("lease grant", Retry::kAlways, deadline, [&](Connection& c, grpc::ClientContext& ctx) {
        return c.lease->LeaseGrant(&ctx, request, &response);
      }));
  if (!response.error().empty() || response.id() == 0) {
    return Status::Unavailable("etcd lease grant: " + (response.error().empty()
                                                           ? std::string("no lease id returned")
                                                           : response.error()));
  }
  return LeaseGrant{response.id(), std::chrono::seconds(response.ttl())};
}

Status EtcdRpc::RevokeLease(int64_t id, Deadline deadline) {
  pb::LeaseRevokeRequest request;
  request.set_id(id);
  pb::LeaseRevokeResponse response;
  return Call("lease revoke", Retry::kAlways, deadline,
              [&](Connection& c, grpc::ClientContext& ctx) {
                return c.lease->LeaseRevoke(&ctx, request, &response);
              });
}

}  // namespace shale::cluster::internal
