#include "nbd/connection.h"

#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <span>
#include <string_view>
#include <utility>

#include "engine/common/log.h"
#include "engine/io/block_device.h"
#include "engine/io/reactor.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace shale::nbd {

namespace {

// Write payloads with at least this much still to come are received straight into the
// request's buffer (no copy through the receive buffer).
constexpr uint64_t kDirectRecvThreshold = 64 * kKiB;
// Sends of at least this many bytes (and direct receives) are punted to io_uring's workers.
constexpr uint64_t kAsyncCopyThreshold = 64 * kKiB;
// iovecs per SENDMSG (the kernel's IOV_MAX is 1024).
constexpr size_t kMaxIov = 512;
// One NBD_CMD_BLOCK_STATUS looks at most this far and returns at most this many extents;
// clients ask again from where the reply ended (the protocol allows short replies).
constexpr uint64_t kMaxBlockStatusSpan = 1 * kGiB;
constexpr size_t kMaxBlockStatusExtents = 2048;
// Buffers a connection keeps for reuse (power-of-two size classes, 4 KiB .. 32 MiB).
constexpr uint64_t kMaxCachedBufferBytes = 32 * kMiB;
constexpr int kBufferClasses = 14;

// Calls a Connection member for one kind of SQE completion.
template <typename Owner>
class MemberHandler final : public CompletionHandler {
 public:
  using Fn = void (Owner::*)(int32_t res);
  MemberHandler(Owner* owner, Fn fn) : owner_(owner), fn_(fn) {}
  void OnCompletion(int32_t res, uint32_t /*flags*/) override { (owner_->*fn_)(res); }

 private:
  Owner* owner_;
  Fn fn_;
};

// Aligned I/O buffers of one connection, recycled by power-of-two size class.
class BufferCache {
 public:
  // A buffer of at least `len` bytes (4 KiB-aligned); *cap receives its real size.
  AlignedBuffer Get(uint64_t len, uint64_t* cap) {
    const int c = ClassOf(len);
    *cap = ClassSize(c);
    if (!free_[c].empty()) {
      AlignedBuffer b = std::move(free_[c].back());
      free_[c].pop_back();
      cached_ -= *cap;
      return b;
    }
    return AllocateAligned(*cap);
  }
  void Put(AlignedBuffer buf, uint64_t cap) {
    if (!buf || cached_ + cap > kMaxCachedBufferBytes) return;  // freed
    free_[ClassOf(cap)].push_back(std::move(buf));
    cached_ += cap;
  }

 private:
  static int ClassOf(uint64_t len) {
    int c = 0;
    while (c + 1 < kBufferClasses && ClassSize(c) < len) ++c;
    return c;
  }
  static uint64_t ClassSize(int c) { return (4 * kKiB) << c; }

  std::vector<AlignedBuffer> free_[kBufferClasses];
  uint64_t cached_ = 0;
};

class ConnectionImpl;

// One request of the transmission phase, from its header to the end of its reply.
struct Request {
  ConnectionImpl* conn = nullptr;
  RequestHeader h;
  VolumeIo io;
  uint8_t hdr[kOffsetDataHeaderSize];
  uint32_t hdr_len = 0;
  std::string extra;  // variable-size reply bytes (error chunk, block status), after hdr
  AlignedBuffer buf;  // read data / write payload
  uint64_t buf_cap = 0;
  uint32_t data_len = 0;  // bytes of buf sent after hdr and extra (read data)
  uint64_t charged = 0;   // counted against the connection's in-flight bytes

  uint64_t reply_size() const { return hdr_len + extra.size() + data_len; }
};

// The state machine behind Connection (connection.h states its contract and lifetime).
class ConnectionImpl final : public Connection {
 public:
  ConnectionImpl(ConnectionHost* host, uint64_t id, int fd, Reactor* reactor,
                 std::shared_ptr<ConnStats> stats)
      : host_(host),
        options_(host->options()),
        id_(id),
        fd_(fd),
        reactor_(reactor),
        stats_(std::move(stats)),
        rbuf_(AllocateAligned(kRecvBufferSize)) {}

  // On the accept reactor.
  void Start() override {
    hs_ = std::make_unique<Handshake>(options_.handshake);
    AppendGreeting(&hs_out_);
    const auto timeout = options_.handshake_timeout;
    timer_ = reactor_->AddTimer(
        static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count()),
        [this] { OnHandshakeTimeout(); });
    HsPump();
  }

  // Any thread, registry lock held. Stops reading (`hard`: also sending), so in-flight
  // requests finish and the connection closes.
  void RequestClose(bool hard) override {
    close_requested_.store(true, std::memory_order_release);
    shutdown(fd_, hard ? SHUT_RDWR : SHUT_RD);
  }

 private:
  enum class Phase { kHandshake, kTransmission };
  enum class RecvState { kHeader, kPayload, kSkip };

  // ------------------------------------------------------------------------------------------
  // Handshake

  void HsPump() {
    if (read_closed_ || close_requested_.load(std::memory_order_acquire)) return StopReading();
    if (hs_sent_ < hs_out_.size()) {
      if (!send_in_flight_) PostHandshakeSend();
      return;
    }
    hs_out_.clear();
    hs_sent_ = 0;
    while (true) {
      switch (hs_->state()) {
        case Handshake::State::kReading: {
          const size_t used = hs_->Consume({rbuf_.get() + rpos_, rend_ - rpos_}, &hs_out_);
          rpos_ += used;
          if (!hs_out_.empty()) return PostHandshakeSend();
          if (hs_->state() != Handshake::State::kReading) continue;
          return PostRecv();
        }
        case Handshake::State::kNeedExport:
          return StartLookup();
        case Handshake::State::kNeedExportList:
          return StartList();
        case Handshake::State::kDone:
          return EnterTransmission();
        case Handshake::State::kClosed:
          SHALE_LOG_DEBUG("nbd handshake ended", {"conn", id_}, {"reason", hs_->close_reason()});
          return StopReading();
      }
    }
  }

  void PostHandshakeSend() {
    io_uring_sqe* sqe = reactor_->PrepareSqe(&send_handler_);
    io_uring_prep_send(sqe, fd_, hs_out_.data() + hs_sent_, hs_out_.size() - hs_sent_,
                       MSG_NOSIGNAL);
    send_in_flight_ = true;
  }

  void OnHandshakeTimeout() {
    timer_ = 0;
    if (phase_ != Phase::kHandshake) return;
    SHALE_LOG_INFO("nbd handshake timed out", {"conn", id_},
                   {"options", hs_ ? hs_->options_handled() : 0});
    Abort();
  }

  void StartLookup() {
    lookup_pending_ = true;
    Reactor* home = reactor_;
    std::string name = hs_->export_name();
    host_->PostToWorker([this, home, name] {
      auto result = std::make_shared<Result<std::unique_ptr<Export>>>(host_->OpenExport(name));
      home->Post([this, result] { OnLookupDone(std::move(*result)); });
    });
  }

  void OnLookupDone(Result<std::unique_ptr<Export>> result) {
    lookup_pending_ = false;
    if (read_closed_ || close_requested_.load(std::memory_order_acquire)) {
      if (result.ok()) host_->ReleaseExport(std::move(result).value());
      return StopReading();
    }
    if (!result.ok()) {
      hs_->ProvideExport(result.status(), &hs_out_);
    } else {
      std::unique_ptr<Export> exp = std::move(result).value();
      hs_->ProvideExport(
          ExportInfo{exp->name(), exp->size_bytes(), exp->read_only(), exp->description()},
          &hs_out_);
      if (hs_->state() == Handshake::State::kDone) {
        // Registered before the client can see the ACK: once it has, `shale export list` and
        // `volume delete` know about it.
        host_->SetExportName(id_, exp->name());
        export_ = std::move(exp);
      } else {
        host_->ReleaseExport(std::move(exp));  // NBD_OPT_INFO only describes it
      }
    }
    HsPump();
  }

  void StartList() {
    lookup_pending_ = true;
    Reactor* home = reactor_;
    host_->PostToWorker([this, home] {
      auto names = std::make_shared<std::vector<std::string>>(host_->ListExports());
      home->Post([this, names] {
        lookup_pending_ = false;
        if (read_closed_ || close_requested_.load(std::memory_order_acquire)) return StopReading();
        hs_->ProvideExportList(*names, &hs_out_);
        HsPump();
      });
    });
  }

  // The handshake output is flushed and nothing is in flight: move to the export's reactor.
  void EnterTransmission() {
    if (timer_ != 0) {
      reactor_->CancelTimer(timer_);
      timer_ = 0;
    }
    const Session& session = hs_->session();
    params_ = session.params;
    structured_ = session.structured_replies;
    SHALE_LOG_DEBUG("nbd client connected", {"conn", id_}, {"export", export_->name()},
                    {"structured", structured_}, {"block_status", session.block_status},
                    {"via", session.via_export_name ? "NBD_OPT_EXPORT_NAME" : "NBD_OPT_GO"});
    hs_.reset();
    phase_ = Phase::kTransmission;
    Reactor* target = export_->reactor();
    if (target == reactor_) return Process();
    moving_ = true;
    reactor_ = target;
    target->Post([this] {
      moving_ = false;
      Process();
    });
  }

  // ------------------------------------------------------------------------------------------
  // Receiving requests

  bool CanAdmit() const {
    return in_flight_ < options_.max_requests_in_flight &&
           in_flight_bytes_ < options_.max_bytes_in_flight;
  }

  // Parses and starts every request whose bytes are in the receive buffer, then receives more
  // (unless the connection is at its in-flight bound or stops reading).
  void Process() {
    while (true) {
      if (read_closed_ || close_requested_.load(std::memory_order_acquire)) return StopReading();
      const size_t avail = rend_ - rpos_;
      switch (recv_state_) {
        case RecvState::kSkip: {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(avail, skip_left_));
          rpos_ += n;
          skip_left_ -= n;
          if (skip_left_ > 0) return PostRecv();
          recv_state_ = RecvState::kHeader;
          break;
        }
        case RecvState::kPayload: {
          Request* r = payload_req_;
          const uint64_t need = r->h.length - payload_got_;
          const size_t n = static_cast<size_t>(std::min<uint64_t>(avail, need));
          std::memcpy(r->buf.get() + payload_got_, rbuf_.get() + rpos_, n);
          rpos_ += n;
          payload_got_ += n;
          if (payload_got_ == r->h.length) {
            payload_req_ = nullptr;
            recv_state_ = RecvState::kHeader;
            SubmitIo(r);
            break;
          }
          if (need - n >= kDirectRecvThreshold) return PostDirectRecv();
          return PostRecv();
        }
        case RecvState::kHeader: {
          if (!CanAdmit()) {
            backpressured_ = true;  // resumed when replies drain (OnSend)
            return;
          }
          if (avail < kRequestHeaderSize) return PostRecv();
          RequestHeader h;
          if (!DecodeRequestHeader(std::span<const uint8_t, kRequestHeaderSize>(rbuf_.get() + rpos_,
                                                                                kRequestHeaderSize),
                                   &h)) {
            SHALE_LOG_INFO("nbd client sent a request with a bad magic; disconnecting",
                           {"conn", id_});
            return Abort();
          }
          rpos_ += kRequestHeaderSize;
          HandleRequest(h);
          break;
        }
      }
    }
  }

  void HandleRequest(const RequestHeader& h) {
    const RequestCheck check = CheckRequest(h, params_);
    if (check.action == RequestCheck::Action::kDisconnect) {
      SHALE_LOG_DEBUG("nbd client disconnects", {"conn", id_});
      read_closed_ = true;  // NBD_CMD_DISC: finish what is in flight, then close
      return;
    }
    Request* r = NewRequest(h);
    switch (check.action) {
      case RequestCheck::Action::kError:
        SHALE_LOG_DEBUG("nbd request refused", {"conn", id_}, {"command", CommandName(h.type)},
                        {"flags", h.flags}, {"offset", h.offset}, {"length", h.length},
                        {"reason", check.reason});
        if (check.payload > 0) {
          recv_state_ = RecvState::kSkip;
          skip_left_ = check.payload;
        }
        return ReplyError(r, check.error, check.reason);
      case RequestCheck::Action::kReply:
        return ReplyOk(r);
      default:
        break;
    }
    VolumeIo& io = r->io;
    io.offset = h.offset;
    io.length = h.length;
    switch (h.type) {
      case kCmdRead:
        io.op = VolumeOp::kRead;
        AttachBuffer(r, h.length);
        return SubmitIo(r);
      case kCmdWrite:
        io.op = VolumeOp::kWrite;
        if (h.flags & kCmdFlagFua) io.flags |= kVolumeFua;
        AttachBuffer(r, h.length);
        payload_req_ = r;
        payload_got_ = 0;
        recv_state_ = RecvState::kPayload;
        return;
      case kCmdFlush:
        io.op = VolumeOp::kFlush;
        return SubmitIo(r);
      case kCmdTrim:
        io.op = VolumeOp::kDiscard;
        if (h.flags & kCmdFlagFua) io.flags |= kVolumeFua;
        return SubmitIo(r);
      case kCmdWriteZeroes:
        io.op = VolumeOp::kWriteZeroes;
        if (h.flags & kCmdFlagFua) io.flags |= kVolumeFua;
        if (h.flags & kCmdFlagNoHole) io.flags |= kVolumeNoUnmap;
        return SubmitIo(r);
      case kCmdBlockStatus:
        return BlockStatus(r);
      default:
        // CheckRequest executes only the commands above.
        return ReplyError(r, kEinval, "unknown command");
    }
  }

  void AttachBuffer(Request* r, uint32_t length) {
    r->buf = cache_.Get(length, &r->buf_cap);
    r->charged += length;
    in_flight_bytes_ += length;
  }

  void SubmitIo(Request* r) {
    r->io.buf = r->buf.get();
    r->io.done = &ConnectionImpl::OnIoDone;
    r->io.ctx = r;
    ++volume_ios_;
    export_->Submit(&r->io);
  }

  static void OnIoDone(VolumeIo* io) {
    auto* r = static_cast<Request*>(io->ctx);
    r->conn->OnIoComplete(r);
  }

  void OnIoComplete(Request* r) {
    --volume_ios_;
    if (!r->io.status.ok()) {
      SHALE_LOG_DEBUG("nbd request failed", {"conn", id_}, {"command", CommandName(r->h.type)},
                      {"offset", r->h.offset}, {"length", r->h.length},
                      {"error", r->io.status.ToString()});
      ReplyError(r, NbdErrorFromStatus(r->io.status), r->io.status.message());
    } else {
      ReplyOk(r);
    }
    MaybeFinish();
  }

  void BlockStatus(Request* r) {
    const RequestHeader& h = r->h;
    const uint64_t span = std::min<uint64_t>(h.length, kMaxBlockStatusSpan);
    const size_t max_extents = (h.flags & kCmdFlagReqOne) ? 1 : kMaxBlockStatusExtents;
    const std::vector<Volume::Extent> extents =
        export_->QueryAllocation(h.offset, span, max_extents);
    if (extents.empty()) return ReplyError(r, kEio, "no allocation information");
    std::vector<BlockDescriptor> descriptors;
    descriptors.reserve(extents.size());
    for (const Volume::Extent& e : extents) {
      descriptors.push_back(
          {static_cast<uint32_t>(e.length), e.zero ? kStateHole | kStateZero : 0});
    }
    AppendBlockStatusChunk(&r->extra, h.handle, kBaseAllocationContextId, descriptors);
    stats_->requests.fetch_add(1, std::memory_order_relaxed);
    QueueReply(r);
  }

  void PostRecv() {
    if (recv_in_flight_) return;
    // Keep the unparsed tail (a partial header or option) at the start of the buffer.
    if (rpos_ == rend_) {
      rpos_ = rend_ = 0;
    } else if (rpos_ > 0) {
      std::memmove(rbuf_.get(), rbuf_.get() + rpos_, rend_ - rpos_);
      rend_ -= rpos_;
      rpos_ = 0;
    }
    SHALE_CHECK(rend_ < kRecvBufferSize, "receive buffer full without a complete unit");
    io_uring_sqe* sqe = reactor_->PrepareSqe(&recv_handler_);
    io_uring_prep_recv(sqe, fd_, rbuf_.get() + rend_, kRecvBufferSize - rend_, 0);
    recv_in_flight_ = true;
    recv_direct_ = false;
  }

  // Receives the rest of a write payload straight into the request's buffer.
  void PostDirectRecv() {
    SHALE_CHECK(!recv_in_flight_ && rpos_ == rend_, "direct receive with data pending");
    rpos_ = rend_ = 0;
    Request* r = payload_req_;
    io_uring_sqe* sqe = reactor_->PrepareSqe(&recv_handler_);
    io_uring_prep_recv(sqe, fd_, r->buf.get() + payload_got_, r->h.length - payload_got_,
                       MSG_WAITALL);
    sqe->flags |= IOSQE_ASYNC;  // a large copy: off the reactor thread, like large sends
    recv_in_flight_ = true;
    recv_direct_ = true;
  }

  void OnRecv(int32_t res) {
    recv_in_flight_ = false;
    if (res == -EINTR || res == -EAGAIN) {
      return recv_direct_ ? PostDirectRecv() : PostRecv();
    }
    if (res <= 0) {
      if (res < 0 && res != -ECONNRESET && !close_requested_.load(std::memory_order_acquire)) {
        SHALE_LOG_DEBUG("nbd receive failed", {"conn", id_}, {"error", ErrnoText(-res)});
      }
      if (payload_req_ != nullptr) {
        // The client left in the middle of a write: it was never started; drop it.
        SHALE_LOG_DEBUG("nbd client disconnected mid-request", {"conn", id_});
        Request* r = payload_req_;
        payload_req_ = nullptr;
        Release(r);
      }
      read_closed_ = true;
      return StopReading();
    }
    if (recv_direct_) {
      payload_got_ += static_cast<uint64_t>(res);
      if (payload_got_ < payload_req_->h.length) return PostDirectRecv();
      Request* r = payload_req_;
      payload_req_ = nullptr;
      recv_state_ = RecvState::kHeader;
      SubmitIo(r);
      return Process();
    }
    rend_ += static_cast<size_t>(res);
    if (phase_ == Phase::kHandshake) return HsPump();
    Process();
  }

  // No more requests will be read; close once everything in flight is done.
  void StopReading() {
    read_closed_ = true;
    MaybeFinish();
  }

  // Hard disconnect: nothing more is read or sent.
  void Abort() {
    read_closed_ = true;
    send_failed_ = true;
    shutdown(fd_, SHUT_RDWR);  // completes our RECV/SEND in flight
    MaybeFinish();
  }

  // ------------------------------------------------------------------------------------------
  // Replies

  Request* NewRequest(const RequestHeader& h) {
    Request* r;
    if (!free_requests_.empty()) {
      r = free_requests_.back();
      free_requests_.pop_back();
    } else {
      r = new Request();
      r->conn = this;
    }
    r->h = h;
    r->io = VolumeIo{};
    r->hdr_len = 0;
    r->extra.clear();
    r->data_len = 0;
    r->charged = 0;
    ++in_flight_;
    return r;
  }

  void ReplyOk(Request* r) {
    const RequestHeader& h = r->h;
    if (h.type == kCmdRead && structured_) {
      if (h.length == 0) {
        EncodeStructuredHeader(
            std::span<uint8_t, kStructuredHeaderSize>(r->hdr, kStructuredHeaderSize),
            kReplyFlagDone, kReplyTypeNone, h.handle, 0);
        r->hdr_len = kStructuredHeaderSize;
      } else {
        EncodeOffsetDataHeader(r->hdr, h.handle, h.offset, h.length, /*done=*/true);
        r->hdr_len = kOffsetDataHeaderSize;
        r->data_len = h.length;
      }
    } else {
      EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize>(r->hdr, kSimpleReplySize), h.handle,
                        0);
      r->hdr_len = kSimpleReplySize;
      if (h.type == kCmdRead) r->data_len = h.length;
    }
    stats_->requests.fetch_add(1, std::memory_order_relaxed);
    if (h.type == kCmdRead) stats_->bytes_read.fetch_add(h.length, std::memory_order_relaxed);
    if (h.type == kCmdWrite) stats_->bytes_written.fetch_add(h.length, std::memory_order_relaxed);
    QueueReply(r);
  }

  void ReplyError(Request* r, uint32_t error, std::string_view message) {
    if (structured_) {
      AppendErrorChunk(&r->extra, r->h.handle, error, message);
    } else {
      EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize>(r->hdr, kSimpleReplySize), r->h.handle,
                        error);
      r->hdr_len = kSimpleReplySize;
    }
    stats_->requests.fetch_add(1, std::memory_order_relaxed);
    stats_->errors.fetch_add(1, std::memory_order_relaxed);
    QueueReply(r);
  }

  void QueueReply(Request* r) {
    if (send_failed_) return Release(r);
    replies_.push_back(r);
    // Replies completed in the same reactor turn go out in one SENDMSG.
    if (!send_in_flight_ && !flush_scheduled_) {
      flush_scheduled_ = true;
      reactor_->Defer([this] {
        flush_scheduled_ = false;
        FlushReplies();
        MaybeFinish();
      });
    }
  }

  void FlushReplies() {
    if (send_in_flight_ || replies_.empty() || send_failed_) return;
    size_t n = 0;
    size_t skip = head_sent_;
    for (Request* r : replies_) {
      if (n + 3 > kMaxIov) break;
      const std::pair<const void*, size_t> pieces[3] = {
          {r->hdr, r->hdr_len}, {r->extra.data(), r->extra.size()}, {r->buf.get(), r->data_len}};
      for (const auto& [base, len] : pieces) {
        if (len <= skip) {
          skip -= len;
          continue;
        }
        iov_[n].iov_base = const_cast<uint8_t*>(static_cast<const uint8_t*>(base) + skip);
        iov_[n].iov_len = len - skip;
        skip = 0;
        ++n;
      }
    }
    msg_ = msghdr{};
    msg_.msg_iov = iov_;
    msg_.msg_iovlen = n;
    size_t bytes = 0;
    for (size_t i = 0; i < n; ++i) bytes += iov_[i].iov_len;
    io_uring_sqe* sqe = reactor_->PrepareSqe(&send_handler_);
    // MSG_WAITALL: io_uring finishes a partial send itself instead of a turn of our loop.
    io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL | MSG_WAITALL);
    // Copying a large reply into the socket is the expensive part: io_uring's own workers do
    // it, in parallel with this reactor's device work (docs/nbd.md); small replies go inline.
    if (bytes >= kAsyncCopyThreshold) sqe->flags |= IOSQE_ASYNC;
    send_in_flight_ = true;
  }

  void OnSend(int32_t res) {
    send_in_flight_ = false;
    if (res == -EINTR || res == -EAGAIN) res = 0;  // nothing sent: try again below
    if (res < 0) {
      if (res != -EPIPE && res != -ECONNRESET) {
        SHALE_LOG_DEBUG("nbd send failed", {"conn", id_}, {"error", ErrnoText(-res)});
      }
      send_failed_ = true;
      read_closed_ = true;
      shutdown(fd_, SHUT_RDWR);
      while (!replies_.empty()) {
        Request* r = replies_.front();
        replies_.pop_front();
        Release(r);
      }
      head_sent_ = 0;
      return MaybeFinish();
    }
    if (phase_ == Phase::kHandshake) {
      hs_sent_ += static_cast<size_t>(res);
      return HsPump();
    }
    size_t left = static_cast<size_t>(res);
    while (left > 0 && !replies_.empty()) {
      Request* r = replies_.front();
      const size_t rest = r->reply_size() - head_sent_;
      if (left < rest) {
        head_sent_ += left;
        break;
      }
      left -= rest;
      head_sent_ = 0;
      replies_.pop_front();
      Release(r);
    }
    FlushReplies();
    if (backpressured_ && CanAdmit()) {
      backpressured_ = false;
      Process();
    }
    MaybeFinish();
  }

  void Release(Request* r) {
    --in_flight_;
    in_flight_bytes_ -= r->charged;
    if (r->buf) cache_.Put(std::move(r->buf), r->buf_cap);
    r->buf.reset();
    r->extra.clear();
    if (r->extra.capacity() > 4096) r->extra.shrink_to_fit();
    free_requests_.push_back(r);
  }

  // ------------------------------------------------------------------------------------------
  // Closing

  void MaybeFinish() {
    if (!read_closed_ || finish_scheduled_) return;
    if (recv_in_flight_ || send_in_flight_ || flush_scheduled_ || lookup_pending_ || moving_ ||
        volume_ios_ > 0) {
      return;
    }
    if (!replies_.empty() && !send_failed_) return FlushReplies();
    if (phase_ == Phase::kHandshake && hs_sent_ < hs_out_.size() && !send_failed_) {
      return PostHandshakeSend();  // e.g. the ACK of NBD_OPT_ABORT
    }
    finish_scheduled_ = true;
    reactor_->Defer([this] { Finish(); });
  }

  void Finish() {
    if (timer_ != 0) {
      reactor_->CancelTimer(timer_);
      timer_ = 0;
    }
    while (!replies_.empty()) {
      Release(replies_.front());
      replies_.pop_front();
    }
    if (payload_req_ != nullptr) Release(payload_req_);
    for (Request* r : free_requests_) delete r;
    free_requests_.clear();
    SHALE_CHECK(in_flight_ == 0, "connection closing with requests in flight");
    // Release first: once unregistered, Stop() may stop the worker that does the release.
    if (export_) {
      SHALE_LOG_DEBUG("nbd client disconnected", {"conn", id_}, {"export", export_->name()});
      host_->ReleaseExport(std::move(export_));
    }
    // Unregister before close(): other threads shut the fd down only while it is registered.
    host_->Unregister(id_);
    close(fd_);
    delete this;
  }

  ConnectionHost* const host_;
  const NbdServerOptions& options_;  // the host's: read on every request, without a virtual call
  const uint64_t id_;
  const int fd_;
  Reactor* reactor_;  // the reactor the connection lives on now
  std::shared_ptr<ConnStats> stats_;
  Phase phase_ = Phase::kHandshake;
  std::atomic<bool> close_requested_{false};

  MemberHandler<ConnectionImpl> recv_handler_{this, &ConnectionImpl::OnRecv};
  MemberHandler<ConnectionImpl> send_handler_{this, &ConnectionImpl::OnSend};

  // Receive buffer: [rpos_, rend_) holds bytes not yet consumed.
  AlignedBuffer rbuf_;
  size_t rpos_ = 0, rend_ = 0;
  bool recv_in_flight_ = false;
  bool recv_direct_ = false;
  bool read_closed_ = false;  // no more requests will be read
  bool send_failed_ = false;  // nothing more can be sent
  bool finish_scheduled_ = false;

  // Handshake.
  std::unique_ptr<Handshake> hs_;
  std::string hs_out_;
  size_t hs_sent_ = 0;
  uint64_t timer_ = 0;
  bool lookup_pending_ = false;
  bool moving_ = false;

  // Transmission.
  std::unique_ptr<Export> export_;
  SessionParams params_;
  bool structured_ = false;
  RecvState recv_state_ = RecvState::kHeader;
  Request* payload_req_ = nullptr;  // the write whose payload is being received
  uint64_t payload_got_ = 0;
  uint64_t skip_left_ = 0;
  uint32_t in_flight_ = 0;        // requests received and not yet fully replied to
  uint64_t in_flight_bytes_ = 0;  // their data buffers
  uint32_t volume_ios_ = 0;       // submitted to the export, not yet done
  bool backpressured_ = false;
  std::vector<Request*> free_requests_;
  BufferCache cache_;

  // Replies in order; the first head_sent_ bytes of the front one are already sent.
  std::deque<Request*> replies_;
  size_t head_sent_ = 0;
  bool send_in_flight_ = false;
  bool flush_scheduled_ = false;
  iovec iov_[kMaxIov];
  msghdr msg_{};
};

}  // namespace

Connection* Connection::Create(ConnectionHost* host, uint64_t id, int fd, Reactor* reactor,
                               std::shared_ptr<ConnStats> stats) {
  return new ConnectionImpl(host, id, fd, reactor, std::move(stats));
}

}  // namespace shale::nbd
