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
#include "engine/io/receive_low_water.h"
#include "nbd/connection_parts.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/tls_channel.h"

namespace shale::nbd {

namespace {

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
                 std::shared_ptr<ConnStats> stats, bool tcp)
      : host_(host),
        options_(host->options()),
        id_(id),
        fd_(fd),
        tls_offered_(tcp && options_.tls != nullptr),
        check_authz_(tcp && options_.authz != nullptr),
        reactor_(reactor),
        stats_(std::move(stats)),
        rbuf_(AllocateAligned(kRecvBufferSize)),
        low_water_(tcp) {}

  // On the accept reactor.
  void Start() override {
    hs_ = std::make_unique<Handshake>(options_.handshake, tls_offered_);
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
          if (!Allowed(hs_->export_name())) {
            // Decided by name alone, before any lookup: the client cannot tell whether it exists.
            hs_->ProvideExport(Status::PermissionDenied("export '" + hs_->export_name() +
                                                        "' is not permitted for " + ClientName()),
                               &hs_out_);
            continue;
          }
          return StartLookup();
        case Handshake::State::kNeedExportList:
          return StartList();
        case Handshake::State::kStartTls:
          return StartTls();
        case Handshake::State::kDone:
          return EnterTransmission();
        case Handshake::State::kClosed:
          SHALE_LOG_DEBUG("nbd handshake ended", {"conn", id_}, {"reason", hs_->close_reason()});
          return StopReading();
      }
    }
  }

  void PostHandshakeSend() {
    if (tls_ != nullptr && tls_->ready) {
      const iovec plain{hs_out_.data() + hs_sent_, hs_out_.size() - hs_sent_};
      return TlsSend(&plain, 1);
    }
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

  std::string ClientName() const {
    return tls_ != nullptr && tls_->ready ? tls_->identity() : "a client without TLS";
  }

  // TLS clients see and open only what --nbd-tls-authz grants them (UNIX socket clients: all).
  bool Allowed(const std::string& name) const {
    if (!check_authz_) return true;
    return tls_ != nullptr && tls_->ready && options_.authz->Allows(tls_->peer_names(), name);
  }

  void StartList() {
    lookup_pending_ = true;
    Reactor* home = reactor_;
    host_->PostToWorker([this, home] {
      auto names = std::make_shared<std::vector<std::string>>(host_->ListExports());
      if (check_authz_) std::erase_if(*names, [this](const std::string& n) { return !Allowed(n); });
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
    recv_direct_ = false;
    if (tls_ != nullptr && tls_->ready) return PostTlsRecv();
    low_water_.Reset(fd_);
    io_uring_sqe* sqe = reactor_->PrepareSqe(&recv_handler_);
    io_uring_prep_recv(sqe, fd_, rbuf_.get() + rend_, kRecvBufferSize - rend_, 0);
    recv_in_flight_ = true;
    recv_direct_ = false;
  }

  // Receives the rest of a write payload straight into the request's buffer, completing once it
  // is all there (or with what was there already), not at each segment: docs/nbd.md, "Receive".
  void PostDirectRecv() {
    SHALE_CHECK(!recv_in_flight_ && rpos_ == rend_, "direct receive with data pending");
    rpos_ = rend_ = 0;
    if (tls_ != nullptr && tls_->ready) {
      recv_direct_ = true;  // decrypted straight into the request's buffer
      return PostTlsRecv();
    }
    Request* r = payload_req_;
    const uint64_t rest = r->h.length - payload_got_;
    io_uring_sqe* sqe = reactor_->PrepareSqe(&recv_handler_);
    io_uring_prep_recv(sqe, fd_, r->buf.get() + payload_got_, rest, low_water_.ForRest(fd_, rest));
    sqe->flags |= IOSQE_ASYNC;  // a large copy: off the reactor thread, like large sends
    recv_in_flight_ = true;
    recv_direct_ = true;
  }

  void OnRecv(int32_t res) {
    recv_in_flight_ = false;
    if (res == -EINTR || res == -EAGAIN) {
      if (tls_ != nullptr) return PostCipherRecv();
      return recv_direct_ ? PostDirectRecv() : PostRecv();
    }
    if (tls_ != nullptr) return OnCipherRecv(res);
    Delivered(res);
  }

  // `res` bytes of the NBD stream arrived (in rbuf_, or in the payload buffer for a direct
  // receive), or the stream ended (0) or failed (< 0).
  void Delivered(int32_t res) {
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
    if (tls_ != nullptr && tls_->ready) return TlsSend(iov_, n);
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
    if (res >= 0 && tls_ != nullptr) {
      // Ciphertext went out: go on with the batch, or account for the plaintext it carried.
      size_t plain = 0;
      if (!tls_->Sent(static_cast<size_t>(res), &plain)) return PostTlsSend();
      if (tls_->handshaking || tls_->bye_sent) return OnTlsRecordsSent();
      res = static_cast<int32_t>(plain);
    }
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
  // TLS (docs/security.md). The handshake's computation runs on the server's TLS worker, one
  // step per client flight (the connection does no I/O meanwhile); records are encrypted and
  // decrypted here, on the reactor, in bounded pieces (TlsChannel).

  // NBD_OPT_STARTTLS was acknowledged and the ACK sent: the rest of the stream is TLS.
  void StartTls() {
    Result<std::unique_ptr<TlsChannel>> channel =
        TlsChannel::Start(options_.tls, {rbuf_.get() + rpos_, rend_ - rpos_});
    if (!channel.ok()) {
      SHALE_LOG_WARN("nbd TLS session could not be created", {"conn", id_},
                     {"error", channel.status().ToString()});
      return Abort();
    }
    tls_ = std::move(channel).value();
    rpos_ = rend_ = 0;
    StartTlsStep();
  }

  void StartTlsStep() {
    tls_->step_pending = true;
    Reactor* home = reactor_;
    tls::Session* session = &tls_->session();
    host_->PostToTlsWorker([this, home, session] {
      auto result = std::make_shared<Result<bool>>(session->Handshake());
      home->Post([this, result] { OnTlsStep(*result); });
    });
  }

  void OnTlsStep(const Result<bool>& result) {
    tls_->step_pending = false;
    if (read_closed_ || close_requested_.load(std::memory_order_acquire)) return StopReading();
    if (!result.ok()) {
      // Refused before any option was read inside TLS: no export data has moved.
      SHALE_LOG_INFO("nbd TLS handshake refused", {"conn", id_},
                     {"error", result.status().ToString()});
      tls_->failed = true;
    }
    tls_->TakeSessionOutput();  // the handshake's records, or the alert explaining a refusal
    if (!tls_->unsent().empty()) return PostTlsSend();
    OnTlsRecordsSent();
  }

  // Handshake records (or the close_notify) are out.
  void OnTlsRecordsSent() {
    if (tls_->bye_sent) return MaybeFinish();
    if (tls_->failed) return Abort();
    if (!tls_->session().handshake_done()) return PostCipherRecv();
    tls_->Established();
    host_->SetTlsIdentity(id_, tls_->identity());
    SHALE_LOG_DEBUG("nbd TLS established", {"conn", id_}, {"peer", tls_->identity()},
                    {"session", tls_->session().Description()});
    hs_->TlsEstablished();
    HsPump();
  }

  // Receives ciphertext into the session's input buffer.
  void PostCipherRecv() {
    const std::span<uint8_t> space = tls_->session().InputSpace();
    // A write's payload: wait for the rest of its records (up to the room), not each segment.
    const uint64_t left = recv_direct_ ? payload_req_->h.length - payload_got_ : 0;
    low_water_.Set(fd_, std::min(tls_->session().CiphertextStillToCome(left), space.size()));
    io_uring_sqe* sqe = reactor_->PrepareSqe(&recv_handler_);
    io_uring_prep_recv(sqe, fd_, space.data(), space.size(), 0);
    recv_in_flight_ = true;
  }

  void OnCipherRecv(int32_t res) {
    if (res < 0) return Delivered(res);
    if (res == 0) {
      tls_->session().InputClosed();
    } else {
      tls_->session().InputReceived(static_cast<size_t>(res));
    }
    if (tls_->ready) return TlsDeliver();
    if (res == 0) return Delivered(0);  // the client left mid-handshake
    StartTlsStep();
  }

  // The NBD stream wants bytes: decrypt what is buffered (a deferred task, so the work per turn
  // is bounded), or receive more ciphertext.
  void PostTlsRecv() {
    if (!tls_->session().ReadReady()) return PostCipherRecv();
    recv_in_flight_ = true;  // a "receive" from the session's buffer is pending
    reactor_->Defer([this] { TlsDeliver(); });
  }

  void TlsDeliver() {
    recv_in_flight_ = false;
    if (read_closed_ || close_requested_.load(std::memory_order_acquire)) return Delivered(0);
    std::span<uint8_t> dst{rbuf_.get() + rend_, kRecvBufferSize - rend_};
    if (recv_direct_) {
      const uint64_t left = payload_req_->h.length - payload_got_;
      dst = {payload_req_->buf.get() + payload_got_,
             static_cast<size_t>(std::min<uint64_t>(left, kTlsDecryptBudget))};
    }
    Result<size_t> n = tls_->session().Read(dst);
    if (!n.ok()) {
      SHALE_LOG_INFO("nbd TLS record refused; disconnecting", {"conn", id_},
                     {"error", n.status().ToString()});
      return Delivered(-EPROTO);
    }
    if (*n > 0) return Delivered(static_cast<int32_t>(*n));
    if (tls_->session().eof()) return Delivered(0);
    PostCipherRecv();
  }

  // Encrypts (a bounded part of) the plaintext of `iov` and sends the records.
  void TlsSend(const iovec* iov, size_t n) {
    Status st = tls_->Encrypt(iov, n);
    if (!st.ok()) {
      SHALE_LOG_INFO("nbd TLS send failed", {"conn", id_}, {"error", st.ToString()});
      return OnSend(-EPROTO);
    }
    PostTlsSend();
  }

  void PostTlsSend() {
    const std::span<const uint8_t> out = tls_->unsent();
    io_uring_sqe* sqe = reactor_->PrepareSqe(&send_handler_);
    io_uring_prep_send(sqe, fd_, out.data(), out.size(), MSG_NOSIGNAL | MSG_WAITALL);
    if (out.size() >= kAsyncCopyThreshold) sqe->flags |= IOSQE_ASYNC;
    send_in_flight_ = true;
  }

  // ------------------------------------------------------------------------------------------
  // Closing

  void MaybeFinish() {
    if (!read_closed_ || finish_scheduled_) return;
    if (recv_in_flight_ || send_in_flight_ || flush_scheduled_ || lookup_pending_ || moving_ ||
        volume_ios_ > 0 || (tls_ != nullptr && tls_->step_pending)) {
      return;
    }
    if (!replies_.empty() && !send_failed_) return FlushReplies();
    if (phase_ == Phase::kHandshake && hs_sent_ < hs_out_.size() && !send_failed_) {
      return PostHandshakeSend();  // e.g. the ACK of NBD_OPT_ABORT
    }
    if (tls_ != nullptr && tls_->ready && !tls_->bye_sent && !send_failed_) {
      // The protocol: close the TLS session, then the connection (close_notify).
      tls_->bye_sent = true;
      tls_->session().Close();
      tls_->TakeSessionOutput();
      if (!tls_->unsent().empty()) return PostTlsSend();
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
  const bool tls_offered_;  // TCP with --nbd-tls-*: FORCEDTLS
  const bool check_authz_;  // TCP with --nbd-tls-authz
  Reactor* reactor_;        // the reactor the connection lives on now
  std::shared_ptr<ConnStats> stats_;
  Phase phase_ = Phase::kHandshake;
  std::atomic<bool> close_requested_{false};

  MemberHandler<ConnectionImpl> recv_handler_{this, &ConnectionImpl::OnRecv};
  MemberHandler<ConnectionImpl> send_handler_{this, &ConnectionImpl::OnSend};

  // Receive buffer: [rpos_, rend_) holds bytes not yet consumed.
  AlignedBuffer rbuf_;
  size_t rpos_ = 0, rend_ = 0;
  bool recv_in_flight_ = false, recv_direct_ = false;
  ReceiveLowWater low_water_;  // the rest of a large write's payload while it arrives, else 1
  bool read_closed_ = false;   // no more requests will be read
  bool send_failed_ = false;   // nothing more can be sent
  bool finish_scheduled_ = false;

  // Handshake.
  std::unique_ptr<Handshake> hs_;
  std::string hs_out_;
  size_t hs_sent_ = 0;
  uint64_t timer_ = 0;
  bool lookup_pending_ = false, moving_ = false;

  // Transmission.
  std::unique_ptr<Export> export_;
  SessionParams params_;
  bool structured_ = false;
  RecvState recv_state_ = RecvState::kHeader;
  Request* payload_req_ = nullptr;  // the write whose payload is being received
  uint64_t payload_got_ = 0, skip_left_ = 0;
  uint32_t in_flight_ = 0;        // requests received and not yet fully replied to
  uint64_t in_flight_bytes_ = 0;  // their data buffers
  uint32_t volume_ios_ = 0;       // submitted to the export, not yet done
  bool backpressured_ = false;
  std::vector<Request*> free_requests_;
  BufferCache cache_{kMaxCachedBufferBytes};

  // Replies in order; the first head_sent_ bytes of the front one are already sent.
  std::deque<Request*> replies_;
  size_t head_sent_ = 0;
  bool send_in_flight_ = false, flush_scheduled_ = false;
  iovec iov_[kMaxIov];
  msghdr msg_{};

  // TLS: null until NBD_OPT_STARTTLS (always null on the UNIX socket).
  std::unique_ptr<TlsChannel> tls_;
};

}  // namespace

Connection* Connection::Create(ConnectionHost* host, uint64_t id, int fd, Reactor* reactor,
                               std::shared_ptr<ConnStats> stats, bool tcp) {
  return new ConnectionImpl(host, id, fd, reactor, std::move(stats), tcp);
}

}  // namespace shale::nbd
