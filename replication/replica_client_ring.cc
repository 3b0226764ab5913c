// ReplicaClient: replies received on the completion reactor's own io_uring (plain TCP only).
//
// Without this, a receiver thread blocks in recv(), parses the replies and posts them to the
// reactor: two thread wake-ups per batch of replies. Here the reactor keeps one IORING_OP_RECV
// armed on (a dup of) the connection's socket; its completion parses every whole reply in the
// buffer, finishes them and runs their done() right there (docs/format/replica-protocol.md,
// "Reactor receives"). A READ reply's data is copied from the buffer into the request's buffer
// (the thread receiver receives large data in place; remote reads are the rare case: the local
// replica serves reads when it is in sync).
//
// Lifetime: the receiver is shared by the client and by itself while a receive is in flight or
// a timer is armed. The client's Close() shuts the socket down (the receive completes at once)
// and detaches the receiver under its mutex, waiting for a completion that is running; from
// then on the receiver only frees itself. done() callbacks run outside that mutex, so they may
// close or destroy the client.
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/replica_client.h"
#include "replication/ring_frames.h"

namespace shale::replication {

class ReplicaClient::RingReceiver final : public CompletionHandler,
                                          public std::enable_shared_from_this<RingReceiver> {
 public:
  RingReceiver(ReplicaClient* client, Reactor* reactor, int fd, std::string peer)
      : client_(client), reactor_(reactor), fd_(fd), peer_(std::move(peer)) {
    const auto timeout =
        std::chrono::duration_cast<std::chrono::nanoseconds>(client->options_.request_timeout);
    // Requests time out within an eighth of the timeout after their deadline.
    expire_period_ns_ =
        static_cast<uint64_t>(std::clamp<int64_t>(timeout.count() / 8, 5'000'000, 250'000'000));
  }
  ~RingReceiver() { ::close(fd_); }

  // On the reactor.
  void Start() {
    Arm();
    ArmTimer();
  }

  // Any thread: from now on the client is never touched (waits for a completion running).
  void Detach() {
    std::lock_guard lock(mu_);
    client_ = nullptr;
  }

  void OnCompletion(int32_t res, uint32_t /*cqe_flags*/) override {
    std::shared_ptr<RingReceiver> keep = std::move(self_);  // this lives through the call
    std::vector<ReplicaRequest*> done;
    bool go_on = false;
    {
      std::lock_guard lock(mu_);
      if (client_ != nullptr) {
        go_on = Received(res, &done);
        client_->counters_.requests.fetch_add(done.size(), std::memory_order_relaxed);
      }
    }
    for (ReplicaRequest* r : done) r->done(r);
    if (go_on) Arm();
  }

 private:
  void Arm() {
    const std::span<uint8_t> space = frames_.Space();
    io_uring_sqe* sqe = reactor_->PrepareSqe(this);
    io_uring_prep_recv(sqe, fd_, space.data(), space.size(), 0);
    self_ = shared_from_this();
  }

  void ArmTimer() {
    reactor_->AddTimer(expire_period_ns_, [self = shared_from_this()] {
      std::vector<ReplicaRequest*> done;
      {
        std::lock_guard lock(self->mu_);
        if (self->client_ == nullptr) return;
        self->client_->RingExpire(&done);
        self->client_->counters_.requests.fetch_add(done.size(), std::memory_order_relaxed);
      }
      for (ReplicaRequest* r : done) r->done(r);
      self->ArmTimer();
    });
  }

  // Under mu_ with the client attached: takes `res` bytes (or the error) and finishes the
  // requests whose replies are whole. False once the connection is unusable.
  bool Received(int32_t res, std::vector<ReplicaRequest*>* done) {
    if (res == -EAGAIN || res == -EINTR) return true;
    if (res <= 0) {
      Status why = Status::Unavailable("the replica " + peer_ + " ended the connection");
      if (res < 0) {
        why = Status::FromErrno(-res, "receive from " + peer_);
      } else if (frames_.partial()) {
        why = Status::Corruption("replica protocol: truncated frame (the stream ended inside it)");
      }
      client_->RingFailed(why, done);
      return false;
    }
    client_->counters_.ring_receives.fetch_add(1, std::memory_order_relaxed);
    frames_.Received(static_cast<size_t>(res));
    while (true) {
      Result<std::optional<RingFrames::Parsed>> next = frames_.Next();
      Status st = next.ok() ? Status::Ok() : next.status();
      if (st.ok() && !next->has_value()) break;
      if (st.ok()) st = client_->HandleReply((*next)->frame, nullptr, done);
      if (!st.ok()) {
        client_->RingFailed(st, done);
        return false;
      }
    }
    client_->RingExpire(done);
    return true;
  }

  std::mutex mu_;
  ReplicaClient* client_;  // guarded by mu_; null once detached
  Reactor* const reactor_;
  const int fd_;  // a dup of the connection's socket: valid until the last completion
  const std::string peer_;
  uint64_t expire_period_ns_ = 0;
  RingFrames frames_;
  std::shared_ptr<RingReceiver> self_;  // set while a receive is in flight
};

bool ReplicaClient::StartRingReceiver() {
  if (!direct_ || conn_->native_fd() < 0 || reader_->buffered() != 0) return false;
  const int fd = ::fcntl(conn_->native_fd(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return false;  // the receiver thread then
  ring_ = std::make_shared<RingReceiver>(this, options_.completion_reactor, fd, conn_->peer());
  options_.completion_reactor->Post([ring = ring_] { ring->Start(); });
  return true;
}

void ReplicaClient::DetachRingReceiver() {
  if (ring_) ring_->Detach();
}

void ReplicaClient::RingFailed(const Status& why, std::vector<ReplicaRequest*>* done) {
  std::lock_guard lock(mu_);
  if (!closing_ && !failed_) {
    SHALE_LOG_WARN("replica connection lost", {"node", server_node_}, {"address", options_.address},
                   {"volume", options_.volume}, {"error", why.ToString()});
  }
  FailLocked(closing_ ? ReplicaOutcome::kClosed : ReplicaOutcome::kConnectionLost, why, done);
}

void ReplicaClient::RingExpire(std::vector<ReplicaRequest*>* done) {
  std::lock_guard lock(mu_);
  ExpireLocked(done);
}

}  // namespace shale::replication
