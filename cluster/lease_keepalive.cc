// The lease keep-alive: one thread per lease, one bidirectional LeaseKeepAlive stream at a time.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include "cluster/etcd_rpc.h"
#include "cluster/etcd_stream.h"
#include "engine/common/log.h"

namespace shale::cluster::internal {
namespace {

namespace pb = etcdserverpb;
using Stream = BoundedStream<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>;

std::string LeaseName(int64_t id) {
  std::ostringstream os;
  os << std::hex << id;
  return os.str();
}

class KeepAliveImpl final : public LeaseKeepAlive {
 public:
  KeepAliveImpl(std::shared_ptr<EtcdRpc> rpc, int64_t id, std::chrono::seconds ttl,
                LostCallback on_lost)
      : rpc_(std::move(rpc)), id_(id), ttl_(ttl), on_lost_(std::move(on_lost)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~KeepAliveImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (stream_ != nullptr) stream_->Cancel();
    }
    cv_.notify_all();
    thread_.join();
  }

  int64_t id() const override { return id_; }
  bool lost() const override { return lost_.load(std::memory_order_acquire); }

 private:
  // Sleeps until `until`; false when the keep-alive is being destroyed.
  bool SleepUntil(Deadline until) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, until, [this] { return stopping_; });
    return !stopping_;
  }

  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }

  // Makes `stream` the one Cancel() reaches; false when stopping.
  bool Register(Stream* stream) {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ = stream;
    return !stopping_;
  }

  void Lose(const Status& why) {
    lost_.store(true, std::memory_order_release);
    SHALE_LOG_WARN("etcd lease lost", {"lease", LeaseName(id_)}, {"why", why.ToString()});
    if (on_lost_) on_lost_(why);
  }

  // One renewal on `stream` (started on demand); the lease's new TTL, 0 when etcd says it is gone,
  // or -1 when the stream failed (`error` says how).
  int64_t Renew(std::unique_ptr<Stream>& stream, size_t endpoint, Deadline deadline,
                std::string* error) {
    if (stream == nullptr) {
      stream = std::make_unique<Stream>();
      if (!Register(stream.get())) return -1;
      if (!rpc_->AwaitConnected(endpoint, deadline, [this] { return Stopping(); })) {
        return Broken(stream, endpoint, error);
      }
      Connection& c = rpc_->at(endpoint);
      const bool started = stream->Start(
          [&](grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
            return c.lease->PrepareAsyncLeaseKeepAlive(ctx, cq);
          },
          deadline);
      if (!started) return Broken(stream, endpoint, error);
    }
    pb::LeaseKeepAliveRequest request;
    request.set_id(id_);
    pb::LeaseKeepAliveResponse response;
    if (!stream->Write(request, deadline) ||
        stream->Read(&response, deadline) != Stream::ReadResult::kOk) {
      return Broken(stream, endpoint, error);
    }
    return std::max<int64_t>(0, response.ttl());
  }

  int64_t Broken(std::unique_ptr<Stream>& stream, size_t endpoint, std::string* error) {
    Register(nullptr);
    const grpc::Status status = stream->Close();
    stream.reset();
    *error = rpc_->at(endpoint).endpoint.Address() + ": " +
             (status.ok() || status.error_code() == grpc::StatusCode::CANCELLED
                  ? std::string("not connected or no answer in time")
                  : status.error_message());
    rpc_->Failed(endpoint);
    return -1;
  }

  void Run() {
    const auto ttl = std::chrono::duration_cast<std::chrono::milliseconds>(ttl_);
    // Conservative: the lease was granted before this point.
    Deadline expiry = SteadyClock::now() + ttl;
    Deadline next = SteadyClock::now() + ttl / 3;
    Backoff backoff(rpc_->options().backoff_initial, rpc_->options().backoff_max);
    std::unique_ptr<Stream> stream;
    size_t endpoint = rpc_->Preferred();
    std::string error = "none yet";
    while (SleepUntil(std::min(next, expiry))) {
      const Deadline sent = SteadyClock::now();
      if (sent >= expiry) {
        Lose(Status::Unavailable("etcd lease " + LeaseName(id_) + " was not renewed within its " +
                                 std::to_string(ttl_.count()) + " s TTL: etcd unreachable at " +
                                 rpc_->names() + " (last error: " + error + ")"));
        break;
      }
      if (stream == nullptr) endpoint = rpc_->Preferred();
      const int64_t granted =
          Renew(stream, endpoint, std::min(expiry, sent + rpc_->options().attempt_timeout), &error);
      if (granted == 0) {
        Lose(Status::NotFound("etcd lease " + LeaseName(id_) + " expired or was revoked"));
        break;
      }
      if (granted < 0) {
        next = SteadyClock::now() + backoff.Next();
        continue;
      }
      backoff.Reset();
      const auto renewed =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::seconds(granted));
      expiry = sent + renewed;
      next = sent + renewed / 3;
    }
    Register(nullptr);
  }

  std::shared_ptr<EtcdRpc> rpc_;
  const int64_t id_;
  const std::chrono::seconds ttl_;
  LostCallback on_lost_;
  std::atomic<bool> lost_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;     // guarded by mu_
  Stream* stream_ = nullptr;  // guarded by mu_: the stream Cancel() reaches
  std::thread thread_;
};

}  // namespace

std::unique_ptr<LeaseKeepAlive> StartKeepAlive(std::shared_ptr<EtcdRpc> rpc, int64_t id,
                                               std::chrono::seconds ttl,
                                               LeaseKeepAlive::LostCallback on_lost) {
  return std::make_unique<KeepAliveImpl>(std::move(rpc), id, ttl, std::move(on_lost));
}

}  // namespace shale::cluster::internal
