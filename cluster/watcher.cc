// The watcher: one thread per watch, one bidirectional Watch stream at a time, resumed after the
// last delivered revision; a full re-read (a reset) when etcd compacted the history it needs.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "cluster/etcd_rpc.h"
#include "cluster/etcd_stream.h"
#include "engine/common/log.h"

namespace shale::cluster::internal {
namespace {

namespace pb = etcdserverpb;
using Stream = BoundedStream<pb::WatchRequest, pb::WatchResponse>;

class WatcherImpl final : public Watcher {
 public:
  WatcherImpl(std::shared_ptr<EtcdRpc> rpc, std::string prefix, int64_t start_revision,
              std::optional<RangeResult> initial, Callback callback)
      : rpc_(std::move(rpc)),
        prefix_(std::move(prefix)),
        next_(start_revision),
        callback_(std::move(callback)) {
    thread_ = std::thread([this, initial = std::move(initial)]() mutable {
      if (initial.has_value()) DeliverReset(std::move(*initial));
      Run();
    });
  }

  ~WatcherImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (stream_ != nullptr) stream_->Cancel();
    }
    cv_.notify_all();
    thread_.join();
  }

  int64_t revision() const override { return delivered_.load(std::memory_order_acquire); }

 private:
  enum class End { kStopped, kBroken, kCompacted };

  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }

  bool SleepFor(Timeout pause) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, pause, [this] { return stopping_; });
    return !stopping_;
  }

  bool Register(Stream* stream) {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ = stream;
    return !stopping_;
  }

  void DeliverReset(RangeResult range) {
    WatchUpdate update;
    update.reset = true;
    update.revision = range.revision;
    update.kvs = std::move(range.kvs);
    next_ = range.revision + 1;
    callback_(update);
    delivered_.store(update.revision, std::memory_order_release);
  }

  // Reads the whole prefix again and delivers it as a reset; false when that failed.
  bool Reread() {
    Result<RangeResult> range =
        rpc_->RangeAll(prefix_, DeadlineAfter(kDefaultTimeout, rpc_->options().call_timeout));
    if (!range.ok()) {
      SHALE_LOG_WARN("etcd watch: re-read failed", {"prefix", prefix_},
                     {"error", range.status().ToString()});
      return false;
    }
    DeliverReset(std::move(range).value());
    return true;
  }

  void Run() {
    Backoff backoff(rpc_->options().backoff_initial, rpc_->options().backoff_max);
    bool need_reset = false;
    while (!Stopping()) {
      if (need_reset) {
        if (Reread()) {
          need_reset = false;
          continue;
        }
      } else {
        bool progressed = false;
        const size_t endpoint = rpc_->Preferred();
        const End end = WatchOn(endpoint, &progressed);
        if (end == End::kStopped) break;
        if (progressed) backoff.Reset();
        if (end == End::kCompacted) {
          need_reset = true;
          continue;
        }
        rpc_->Failed(endpoint);
      }
      if (!SleepFor(backoff.Next())) break;
    }
    Register(nullptr);
  }

  // One stream on `endpoint`, from next_ on, until it breaks, the history is compacted or the
  // watcher stops. *progressed: some events were delivered.
  End WatchOn(size_t endpoint, bool* progressed) {
    Stream stream;
    if (!Register(&stream)) return End::kStopped;
    const Deadline setup = SteadyClock::now() + rpc_->options().attempt_timeout;
    const End end = rpc_->AwaitConnected(endpoint, setup, [this] { return Stopping(); })
                        ? Pump(stream, rpc_->at(endpoint), setup, progressed)
                        : End::kBroken;
    Register(nullptr);
    const grpc::Status status = stream.Close();
    if (end == End::kBroken && !Stopping()) {
      SHALE_LOG_WARN("etcd watch: stream ended, resuming", {"prefix", prefix_},
                     {"endpoint", rpc_->at(endpoint).endpoint.Address()}, {"next_revision", next_},
                     {"error", status.error_message()});
    }
    return Stopping() ? End::kStopped : end;
  }

  End Pump(Stream& stream, Connection& c, Deadline setup, bool* progressed) {
    if (!stream.Start(
            [&](grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
              return c.watch->PrepareAsyncWatch(ctx, cq);
            },
            setup)) {
      return End::kBroken;
    }
    pb::WatchRequest request;
    pb::WatchCreateRequest* create = request.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(PrefixEnd(prefix_));
    create->set_start_revision(next_);
    if (!stream.Write(request, setup)) return End::kBroken;
    while (true) {
      pb::WatchResponse response;
      // No deadline while idle: Cancel() ends the read, and HTTP/2 pings end a dead connection.
      const auto read = stream.Read(&response, SteadyClock::now() + std::chrono::hours(1));
      if (read == Stream::ReadResult::kTimeout) continue;
      if (read == Stream::ReadResult::kClosed) return End::kBroken;
      if (response.compact_revision() > 0) {
        SHALE_LOG_INFO("etcd watch: history compacted, reading again", {"prefix", prefix_},
                       {"wanted_revision", next_},
                       {"compacted_revision", response.compact_revision()});
        return End::kCompacted;
      }
      if (response.canceled()) {
        SHALE_LOG_WARN("etcd watch: cancelled by etcd", {"prefix", prefix_},
                       {"reason", response.cancel_reason()});
        return End::kBroken;
      }
      if (response.events_size() == 0) continue;  // created, or progress
      WatchUpdate update;
      update.events.reserve(static_cast<size_t>(response.events_size()));
      for (const mvccpb::Event& e : response.events()) update.events.push_back(FromProto(e));
      update.revision = update.events.back().kv.mod_revision;
      next_ = update.revision + 1;
      callback_(update);
      delivered_.store(update.revision, std::memory_order_release);
      *progressed = true;
    }
  }

  std::shared_ptr<EtcdRpc> rpc_;
  const std::string prefix_;
  int64_t next_;  // watcher thread only: the first revision not delivered yet
  Callback callback_;
  std::atomic<int64_t> delivered_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;     // guarded by mu_
  Stream* stream_ = nullptr;  // guarded by mu_
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Watcher> StartWatcher(std::shared_ptr<EtcdRpc> rpc, std::string prefix,
                                      int64_t start_revision, std::optional<RangeResult> initial,
                                      Watcher::Callback callback) {
  return std::make_unique<WatcherImpl>(std::move(rpc), std::move(prefix), start_revision,
                                       std::move(initial), std::move(callback));
}

}  // namespace shale::cluster::internal
