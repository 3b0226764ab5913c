// ReplicaServer::Conn: requests received on the volume's reactor's own io_uring (plain TCP).
//
// Without this, the connection's receiver thread blocks in recv(), parses the requests and posts
// them to the volume's reactor: two thread wake-ups per batch. Here the reactor keeps one
// IORING_OP_RECV armed on (a dup of) the socket; its completion parses every whole request in the
// buffer and dispatches it to the volume right there, in stream order
// (docs/format/replica-protocol.md, "Reactor receives"). A small WRITE's data is copied from the
// buffer into a request buffer; a large one's (64 KiB or more) rest is received straight into its
// request buffer once its prefix arrived (RingFrames' sink), as the thread does.
//
// What may block stays on the receiver thread: a frame that raises the epoch (it waits for the
// connection's requests in flight, then persists the epoch), SET_GENERATION and SNAPSHOT. The
// ring hands such a frame over whole and stops parsing until the thread has run it and posted
// Resume — so the stream's order holds. At the in-flight bounds the ring stops receiving (TCP
// backpressure, as the thread does) until a request's end makes room.
//
// Lifetime: the ring keeps itself alive while a receive is in flight. It ends on the stream's
// end, an error or a bad frame: it shuts the connection down and sets `ring_ended`, after which
// it never touches the connection again; the receiver thread waits for that, then drains the
// requests in flight as before.
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <cstring>

#include "engine/io/receive_low_water.h"
#include "replication/replica_server_conn.h"
#include "replication/ring_frames.h"

namespace shale::replication {

class ReplicaServer::Conn::RingReceiver final : public CompletionHandler,
                                                public std::enable_shared_from_this<RingReceiver> {
 public:
  RingReceiver(Conn* c, int fd) : c_(c), fd_(fd), frames_(DataSink(c)) {}
  ~RingReceiver() { ::close(fd_); }

  // On the reactor: parses what is buffered (unless paused again), then receives.
  void Resume() {
    if (ended_ || armed_) return;  // (armed: that receive's completion parses)
    if (stopped_) return End();
    paused_ = false;
    if (!Parse()) return End();
    if (!paused_) Arm();
  }

  // On the reactor: the receiver thread refused a frame handed to it. Nothing buffered after it
  // runs (the thread's own receiver would not have read it either): the stream ends here.
  void Stop() {
    stopped_ = true;
    if (!ended_ && !armed_) End();
  }

  void OnCompletion(int32_t res, uint32_t /*cqe_flags*/) override {
    std::shared_ptr<RingReceiver> keep = std::move(self_);  // this lives through the call
    armed_ = false;
    if (ended_) return;
    if (stopped_) return End();
    if (res == -EAGAIN || res == -EINTR) return Arm();
    if (res == 0 && frames_.partial()) {
      BadFrame(
          Status::Corruption("replica protocol: truncated frame (the stream ended inside it)"));
      return End();
    }
    if (res <= 0) {
      if (!c_->server->stopping_.load()) {
        const Status why = res == 0 ? Status::Unavailable("connection closed by " + c_->peer)
                                    : Status::FromErrno(-res, "receive from " + c_->peer);
        SHALE_LOG_INFO("replica connection closed", {"peer", c_->peer}, {"volume", c_->volume_name},
                       {"reason", why.ToString()});
      }
      return End();
    }
    frames_.Received(static_cast<size_t>(res));
    if (!Parse()) return End();
    if (!paused_) Arm();
  }

 private:
  void Arm() {
    const std::span<uint8_t> space = frames_.Space();
    low_water_.Set(fd_, frames_.in_direct() ? space.size() : 1);
    io_uring_sqe* sqe = c_->reactor->PrepareSqe(this);
    io_uring_prep_recv(sqe, fd_, space.data(), space.size(), 0);
    armed_ = true;
    self_ = shared_from_this();
  }

  // A large WRITE's data goes straight into its request buffer, unless the frame raises the
  // epoch (the receiver thread runs those, from the frame's bytes).
  static FrameReader::DataSink DataSink(Conn* c) {
    return [c](const FrameHeader& h, std::span<const uint8_t> prefix) -> uint8_t* {
      if (h.is_reply() || h.msg() != MsgType::kWrite ||
          h.epoch > c->state->fence.load(std::memory_order_acquire)) {
        return nullptr;
      }
      return c->buffers.Get(h.payload_length - prefix.size());
    };
  }

  // The stream is over: from here on the connection is never touched.
  void End() {
    const auto [data, size] = frames_.Abandon();  // (no receive is in flight into it)
    c_->buffers.Put(data, size);
    ended_ = true;
    c_->connection->Shutdown();
    std::lock_guard lock(c_->mu);
    c_->ring_ended = true;
    c_->control_cv.notify_one();
  }

  bool BadFrame(const Status& st) {
    c_->server->counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    SHALE_LOG_WARN("replica connection closed: bad frame", {"peer", c_->peer},
                   {"volume", c_->volume_name}, {"error", st.ToString()});
    return false;
  }

  // Dispatches every whole request buffered; pauses at a frame for the receiver thread or at
  // the in-flight bounds. False: the stream broke (logged).
  bool Parse() {
    std::vector<Request*> batch;
    while (!paused_) {
      Result<std::optional<RingFrames::Parsed>> next = frames_.Next();
      if (!next.ok()) return BadFrame(next.status());
      if (!next->has_value()) break;
      const FrameReader::Frame& f = (*next)->frame;
      const FrameHeader& h = f.header;
      const MsgType t = h.msg();
      if (f.direct && h.epoch > c_->state->fence.load(std::memory_order_acquire)) {
        // (The sink took none such, and a fence never falls.)
        c_->buffers.Put(f.data.data(), f.data.size());
        return BadFrame(Status::Internal("a received-in-place frame raises the epoch"));
      }
      if (!f.direct && !h.is_reply() &&
          (t == MsgType::kSetGeneration || t == MsgType::kSnapshot ||
           h.epoch > c_->state->fence.load(std::memory_order_acquire))) {
        // May block: the receiver thread runs it; parsing waits for its Resume.
        const std::span<const uint8_t> bytes = (*next)->bytes;
        std::lock_guard lock(c_->mu);
        c_->control.emplace_back(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        c_->control_cv.notify_one();
        paused_ = true;
        break;
      }
      if (f.direct) c_->server->counters_.writes_in_place.fetch_add(1, std::memory_order_relaxed);
      Status st = c_->HandleFrame(f, f.direct ? f.data.data() : nullptr, &batch);
      // One at a time, in stream order (HandleFrame may have answered it already).
      for (Request* r : batch) c_->Dispatch(r);
      batch.clear();
      if (!st.ok()) {
        if (st.code() == StatusCode::kCorruption) return BadFrame(st);
        SHALE_LOG_INFO("replica connection closed", {"peer", c_->peer}, {"volume", c_->volume_name},
                       {"reason", st.ToString()});
        return false;
      }
    }
    if (!paused_) {
      std::lock_guard lock(c_->mu);
      if (!c_->HasRoomLocked()) {
        c_->ring_waiting_room = true;
        paused_ = true;
      }
    }
    return true;
  }

  Conn* const c_;  // valid until End()
  const int fd_;   // a dup of the connection's socket: valid until the last completion
  RingFrames frames_;
  bool paused_ = false;  // waiting for the receiver thread or for room
  bool armed_ = false;   // a receive is in flight
  bool ended_ = false;
  ReceiveLowWater low_water_{/*tcp=*/true};  // the rest of a large WRITE's data, else 1
  bool stopped_ = false;                     // Stop(): end at the next chance
  std::shared_ptr<RingReceiver> self_;       // set while a receive is in flight
};

bool ReplicaServer::Conn::StartRing(const FrameReader& reader) {
  if (!direct_replies || connection->native_fd() < 0 || reader.buffered() != 0) return false;
  const int fd = ::fcntl(connection->native_fd(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return false;  // serve on the thread then
  ring = std::make_shared<RingReceiver>(this, fd);
  reactor->Post([r = ring] { r->Resume(); });
  return true;
}

void ReplicaServer::Conn::ResumeRing() {
  reactor->Post([r = ring] { r->Resume(); });
}

void ReplicaServer::Conn::ServeRing() {
  std::unique_lock lock(mu);
  while (true) {
    control_cv.wait(lock, [&] { return !control.empty() || ring_ended; });
    if (control.empty()) break;  // the ring ended
    const std::string bytes = std::move(control.front());
    control.pop_front();
    lock.unlock();
    FrameReader::Frame f;
    const std::span<const uint8_t, kFrameHeaderSize> hb(
        reinterpret_cast<const uint8_t*>(bytes.data()), kFrameHeaderSize);
    Status st = DecodeHeader(hb, &f.header);
    f.payload =
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()) + kFrameHeaderSize,
                                 bytes.size() - kFrameHeaderSize);
    std::vector<Request*> batch;
    if (st.ok()) st = HandleFrame(f, nullptr, &batch);
    Flush(&batch);
    if (!st.ok()) {
      if (st.code() == StatusCode::kCorruption) {
        server->counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
      }
      SHALE_LOG_WARN("replica connection closed: bad frame", {"peer", peer},
                     {"volume", volume_name}, {"error", st.ToString()});
      connection->Shutdown();
      reactor->Post([r = ring] { r->Stop(); });  // what the ring buffered after it never runs
    } else {
      ResumeRing();
    }
    lock.lock();
  }
}

}  // namespace shale::replication
