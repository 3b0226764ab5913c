#include "replication/replica_client.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "engine/volume/volume_io.h"
#include "replication/replica_admin.h"

namespace shale::replication {

namespace {

enum Phase : uint8_t { kQueued = 1, kSending = 2, kSent = 3, kDone = 4 };

constexpr size_t kSendBatchRequests = 256;       // requests per writev
constexpr uint64_t kSendBatchBytes = 16 * kMiB;  // data bytes per writev
constexpr size_t kPostBatch = 64;                // completions per Reactor::Post

MsgType TypeOf(ReplicaOp op) {
  switch (op) {
    case ReplicaOp::kRead:
      return MsgType::kRead;
    case ReplicaOp::kWrite:
      return MsgType::kWrite;
    case ReplicaOp::kWriteZeroes:
      return MsgType::kWriteZeroes;
    case ReplicaOp::kDiscard:
      return MsgType::kDiscard;
    case ReplicaOp::kFlush:
      return MsgType::kFlush;
    case ReplicaOp::kHashRanges:
      return MsgType::kHashRanges;
    case ReplicaOp::kGetInfo:
      return MsgType::kGetInfo;
    case ReplicaOp::kSetGeneration:
      return MsgType::kSetGeneration;
    case ReplicaOp::kSnapshot:
      return MsgType::kSnapshot;
  }
  return MsgType::kFlush;
}

Status OutcomeStatus(ReplicaOutcome outcome, std::string_view why) {
  switch (outcome) {
    case ReplicaOutcome::kTimeout:
      return Status::FromErrno(ETIMEDOUT, why);
    case ReplicaOutcome::kConnectionLost:
      return Status::FromErrno(ECONNRESET, why);
    case ReplicaOutcome::kClosed:
      return Status::FromErrno(ESHUTDOWN, why);
    case ReplicaOutcome::kStaleEpoch:
      return Status::FromErrno(ESTALE, why);
    default:
      return Status::IoError(why);
  }
}

// Checks a request before it is queued; the message says what is wrong.
Status Validate(const ReplicaRequest& r, uint64_t size) {
  const uint32_t allowed = r.op == ReplicaOp::kWriteZeroes ? (kVolumeFua | kVolumeNoUnmap)
                           : (r.op == ReplicaOp::kWrite || r.op == ReplicaOp::kDiscard) ? kVolumeFua
                                                                                        : 0;
  if ((r.flags & ~allowed) != 0) return Status::InvalidArgument("flags not valid for the request");
  switch (r.op) {
    case ReplicaOp::kRead:
    case ReplicaOp::kWrite:
      if (r.buf == nullptr) return Status::InvalidArgument("READ/WRITE without a buffer");
      [[fallthrough]];
    case ReplicaOp::kWriteZeroes:
    case ReplicaOp::kDiscard:
      return CheckIo(TypeOf(r.op), r.offset, r.length, size);
    case ReplicaOp::kHashRanges:
      return CheckHashRanges({r.offset, r.length, r.region_size}, size);
    case ReplicaOp::kGetInfo:
      return r.offset % 4096 == 0 ? Status::Ok()
                                  : Status::InvalidArgument("GET_INFO offset not 4 KiB-aligned");
    case ReplicaOp::kSnapshot:
      if (r.snapshot_name.empty() || r.snapshot_name.size() > kMaxSnapshotNameLength) {
        return Status::InvalidArgument("snapshot name must be 1..128 bytes");
      }
      return Status::Ok();
    default:
      return Status::Ok();
  }
}

Status SendBytes(Connection* c, std::string_view bytes, Deadline deadline) {
  const ConstBuffer b = AsBytes(bytes);
  return c->Send(std::span(&b, 1), deadline);
}

}  // namespace

std::string_view ReplicaOutcomeName(ReplicaOutcome outcome) {
  switch (outcome) {
    case ReplicaOutcome::kOk:
      return "ok";
    case ReplicaOutcome::kError:
      return "error";
    case ReplicaOutcome::kStaleEpoch:
      return "stale-epoch";
    case ReplicaOutcome::kTimeout:
      return "timeout";
    case ReplicaOutcome::kConnectionLost:
      return "connection-lost";
    case ReplicaOutcome::kClosed:
      return "closed";
  }
  return "unknown";
}

bool IsStaleEpoch(const Status& s) { return !s.ok() && s.sys_errno() == ESTALE; }
bool IsConnectionLost(const Status& s) { return !s.ok() && s.sys_errno() == ECONNRESET; }

ReplicaClient::ReplicaClient(ReplicaClientOptions options)
    : options_(std::move(options)), epoch_(options_.epoch) {}

ReplicaClient::~ReplicaClient() {
  {
    std::lock_guard gate(flusher_->mu);  // waits for a flush running on the reactor
    flusher_->client = nullptr;          // later ones do nothing
  }
  Close();
}

Result<std::unique_ptr<ReplicaClient>> ReplicaClient::Connect(ReplicaClientOptions options) {
  if (options.transport == nullptr || options.completion_reactor == nullptr) {
    return Status::InvalidArgument("replica client needs a transport and a completion reactor");
  }
  if (!options.secret.valid()) return Status::InvalidArgument("replica client needs a secret");
  if (options.node_name.empty() || options.node_name.size() > kMaxNodeNameLength ||
      options.volume.empty() || options.volume.size() > kMaxVolumeNameLength) {
    return Status::InvalidArgument("replica client: node and volume names must be 1..128 bytes");
  }
  const std::string context = "replica " + options.address + " volume " + options.volume;
  const Deadline deadline = DeadlineIn(options.connect_timeout);
  std::unique_ptr<ReplicaClient> c(new ReplicaClient(std::move(options)));
  Result<std::unique_ptr<Connection>> conn =
      c->options_.transport->Connect(c->options_.address, deadline);
  if (!conn.ok()) return conn.status().WithContext(context);
  c->conn_ = std::move(conn).value();
  c->reader_ = std::make_unique<FrameReader>(c->conn_.get());
  if (Status st = c->Handshake(deadline); !st.ok()) {
    c->conn_->Shutdown();
    return st.WithContext(context);
  }
  c->direct_ = c->conn_->can_try_send();
  c->flusher_->client = c.get();
  c->sender_ = std::thread([p = c.get()] { p->SenderLoop(); });
  if (!c->StartRingReceiver()) c->receiver_ = std::thread([p = c.get()] { p->ReceiverLoop(); });
  return c;
}

// HELLO, AUTH both ways, OPEN.
Status ReplicaClient::Handshake(Deadline deadline) {
  SHALE_ASSIGN_OR_RETURN(const Hello hello,
                         AuthenticateToServer(conn_.get(), reader_.get(), options_.secret,
                                              options_.node_name, options_.address, deadline));
  server_node_ = hello.server_node;
  OpenRequest open;
  std::memcpy(open.volume_uuid.data(), options_.volume_uuid.bytes.data(), 16);
  open.size_bytes = options_.size_bytes;
  open.volume = options_.volume;
  std::string body;
  replication::Encode(open, &body);
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kOpen);
  h.epoch = epoch_.load();
  SHALE_RETURN_IF_ERROR(SendBytes(conn_.get(), EncodeFrame(h, body), deadline));
  SHALE_ASSIGN_OR_RETURN(const FrameReader::Frame f, reader_->Next(deadline));
  if (!f.header.is_reply() || f.header.msg() != MsgType::kOpen) {
    return Status::Corruption("replica protocol: expected the OPEN reply");
  }
  if (f.header.wire_status() != WireStatus::kOk) {
    ErrorReply e;
    SHALE_RETURN_IF_ERROR(Decode(f.payload, &e));
    return StatusFromWire(f.header.wire_status(), e.message);
  }
  SHALE_RETURN_IF_ERROR(Decode(f.payload, &open_));
  if (open_.size_bytes != options_.size_bytes) {
    return Status::Corruption("replica protocol: OPEN reply with another size");
  }
  return Status::Ok();
}

void ReplicaClient::SetEpoch(uint64_t epoch) { epoch_.store(epoch); }

bool ReplicaClient::failed() const {
  std::lock_guard lock(mu_);
  return failed_ || closing_;
}

Status ReplicaClient::failure() const {
  std::lock_guard lock(mu_);
  return failure_;
}

ReplicaClientStats ReplicaClient::stats() const {
  ReplicaClientStats s;
  s.requests = counters_.requests.load();
  s.timeouts = counters_.timeouts.load();
  s.late_replies = counters_.late.load();
  s.sends = counters_.sends.load();
  s.bytes_sent = counters_.bytes_sent.load();
  s.posts = counters_.posts.load();
  s.direct_sends = counters_.direct_sends.load();
  s.tails = counters_.tails.load();
  s.ring_receives = counters_.ring_receives.load();
  s.sender_wakeups = counters_.sender_wakeups.load();
  return s;
}

void ReplicaClient::Post(std::vector<ReplicaRequest*> done) {
  if (done.empty()) return;
  counters_.requests.fetch_add(done.size(), std::memory_order_relaxed);
  counters_.posts.fetch_add(1, std::memory_order_relaxed);
  options_.completion_reactor->Post([done = std::move(done)] {
    for (ReplicaRequest* r : done) r->done(r);
  });
}

void ReplicaClient::Submit(ReplicaRequest* r) {
  SHALE_CHECK(r->done != nullptr, "ReplicaRequest without done");
  r->outcome = ReplicaOutcome::kOk;
  r->status = Status::Ok();
  r->hashes.clear();
  r->internal.deferred = false;
  Status invalid = Validate(*r, open_.size_bytes);
  std::vector<ReplicaRequest*> done;
  {
    std::lock_guard lock(mu_);
    if (!invalid.ok() || closing_ || failed_ || queue_.size() >= options_.max_queued) {
      r->internal.phase = kDone;
      if (!invalid.ok()) {
        r->outcome = ReplicaOutcome::kError;
        r->status = std::move(invalid);
      } else if (closing_ || failed_) {
        r->outcome = closing_ ? ReplicaOutcome::kClosed : ReplicaOutcome::kConnectionLost;
        r->status = OutcomeStatus(r->outcome,
                                  failure_.ok() ? "replica client closed" : failure_.ToString());
      } else {
        r->outcome = ReplicaOutcome::kError;
        r->status = Status::Busy("replica client: too many requests queued");
      }
      done.push_back(r);
    } else {
      ReplicaRequest::Internal& in = r->internal;
      in.id = next_id_++;
      in.epoch = epoch_.load(std::memory_order_relaxed);
      in.deadline = SteadyClock::now() + options_.request_timeout;
      in.phase = kQueued;
      in.window_bytes = (r->op == ReplicaOp::kRead || r->op == ReplicaOp::kWrite) ? r->length
                        : r->op == ReplicaOp::kHashRanges                         ? r->region_size
                                                                                  : 0;
      queue_.push_back(r);
      live_.emplace(in.id, r);
      SendSoonLocked();
    }
  }
  Post(std::move(done));
}

// Queued requests go out: on the completion reactor, sent by the reactor itself at the end of
// this completion batch (FlushFromReactor); elsewhere, by the sender thread.
void ReplicaClient::SendSoonLocked() {
  if (direct_ && options_.completion_reactor->IsCurrent()) {
    if (!flush_deferred_) {
      flush_deferred_ = true;
      options_.completion_reactor->Defer([f = flusher_] {
        std::lock_guard gate(f->mu);
        if (f->client != nullptr) f->client->FlushFromReactor();
      });
    }
  } else if (sender_idle_) {
    send_cv_.notify_one();
  }
}

bool ReplicaClient::WindowOpenLocked(const ReplicaRequest* next) const {
  if (in_flight_ >= open_.max_requests_in_flight) return false;
  return in_flight_ == 0 ||
         bytes_in_flight_ + next->internal.window_bytes <= open_.max_bytes_in_flight;
}

// Builds r's frame: header and fixed payload into r->internal.wire, sealed with the checksum of
// the whole frame. Returns the number of iovecs written to iov (1 or 2).
size_t ReplicaClient::Encode(ReplicaRequest* r, ConstBuffer* iov) {
  ReplicaRequest::Internal& in = r->internal;
  uint8_t* p = in.wire.data() + kFrameHeaderSize;
  size_t fixed = 0;
  ConstBuffer tail;
  switch (r->op) {
    case ReplicaOp::kRead:
    case ReplicaOp::kWrite:
      std::memset(p, 0, sizeof(WireIoRange));
      PutU64(p + offsetof(WireIoRange, offset), r->offset);
      PutU32(p + offsetof(WireIoRange, length), static_cast<uint32_t>(r->length));
      fixed = sizeof(WireIoRange);
      if (r->op == ReplicaOp::kWrite) tail = ConstBuffer(r->buf, r->length);
      break;
    case ReplicaOp::kWriteZeroes:
    case ReplicaOp::kDiscard:
    case ReplicaOp::kGetInfo:
      PutU64(p + offsetof(WireZeroRange, offset), r->offset);
      PutU64(p + offsetof(WireZeroRange, length), r->length);
      fixed = sizeof(WireZeroRange);
      break;
    case ReplicaOp::kHashRanges:
      std::memset(p, 0, sizeof(WireHashRangesRequest));
      PutU64(p + offsetof(WireHashRangesRequest, offset), r->offset);
      PutU64(p + offsetof(WireHashRangesRequest, length), r->length);
      PutU32(p + offsetof(WireHashRangesRequest, region_size), r->region_size);
      fixed = sizeof(WireHashRangesRequest);
      break;
    case ReplicaOp::kSetGeneration:
      PutU64(p, r->generation);
      fixed = sizeof(WireSetGeneration);
      break;
    case ReplicaOp::kSnapshot:
      in.payload.clear();
      replication::Encode(SnapshotRequest{r->snapshot_name, r->snapshot_labels}, &in.payload);
      tail = AsBytes(in.payload);
      break;
    case ReplicaOp::kFlush:
      break;
  }
  FrameHeader h;
  h.type = static_cast<uint8_t>(TypeOf(r->op));
  h.flags = static_cast<uint16_t>(((r->flags & kVolumeFua) ? kFlagFua : 0) |
                                  ((r->flags & kVolumeNoUnmap) ? kFlagNoUnmap : 0));
  h.request_id = in.id;
  h.epoch = in.epoch;
  const HeaderBytes header = SealFrame(h, {ConstBuffer(p, fixed), tail});
  std::memcpy(in.wire.data(), header.data(), kFrameHeaderSize);
  in.wire_size = kFrameHeaderSize + fixed;
  iov[0] = ConstBuffer(in.wire.data(), in.wire_size);
  if (tail.empty()) return 1;
  iov[1] = tail;
  return 2;
}

void ReplicaClient::SenderLoop() {
  pthread_setname_np(pthread_self(), "repl-client-tx");
  std::unique_lock lock(mu_);
  while (true) {
    sender_idle_ = true;
    bool woken = false;  // the predicate's first evaluation is before any wait
    send_cv_.wait(lock, [&] {
      if (woken) counters_.sender_wakeups.fetch_add(1, std::memory_order_relaxed);
      woken = true;
      return closing_ || failed_ || !tail_.empty() ||
             (!direct_sending_ && !queue_.empty() && WindowOpenLocked(queue_.front()));
    });
    sender_idle_ = false;
    if (closing_ || failed_) break;
    std::vector<ReplicaRequest*> batch;
    std::vector<ConstBuffer> iov;
    if (!tail_.empty()) {  // the rest of the reactor's send comes first
      batch = std::move(tail_batch_);
      iov = std::move(tail_);
      tail_batch_.clear();
      tail_.clear();
      lock.unlock();
    } else {
      TakeBatchLocked(&batch);
      lock.unlock();
      iov = EncodeBatch(batch);
    }
    Status st = conn_->Send(iov, DeadlineIn(options_.request_timeout));
    counters_.sends.fetch_add(1, std::memory_order_relaxed);
    for (const ConstBuffer& b : iov) counters_.bytes_sent.fetch_add(b.size());
    lock.lock();
    std::vector<ReplicaRequest*> done;
    SentLocked(batch, &done);
    if (!st.ok() && !closing_) FailLocked(ReplicaOutcome::kConnectionLost, st, &done);
    lock.unlock();
    Post(std::move(done));
    lock.lock();
  }
  // A tail left by the reactor is never sent now: its requests failed with the connection.
  std::vector<ReplicaRequest*> done;
  SentLocked(tail_batch_, &done);
  tail_batch_.clear();
  tail_.clear();
  lock.unlock();
  Post(std::move(done));
}

void ReplicaClient::TakeBatchLocked(std::vector<ReplicaRequest*>* batch) {
  uint64_t bytes = 0;
  while (!queue_.empty() && WindowOpenLocked(queue_.front()) &&
         batch->size() < kSendBatchRequests && bytes < kSendBatchBytes) {
    ReplicaRequest* r = queue_.front();
    queue_.pop_front();
    r->internal.phase = kSending;
    ++in_flight_;
    bytes_in_flight_ += r->internal.window_bytes;
    bytes += r->internal.window_bytes;
    batch->push_back(r);
  }
}

std::vector<ConstBuffer> ReplicaClient::EncodeBatch(const std::vector<ReplicaRequest*>& batch) {
  std::vector<ConstBuffer> iov(2 * batch.size());
  size_t n = 0;
  for (ReplicaRequest* r : batch) n += Encode(r, &iov[n]);
  iov.resize(n);
  return iov;
}

// The sender no longer references the buffers of `batch`: requests finished meanwhile go to
// `done`, the others wait for their replies.
void ReplicaClient::SentLocked(const std::vector<ReplicaRequest*>& batch,
                               std::vector<ReplicaRequest*>* done) {
  for (ReplicaRequest* r : batch) {
    if (r->internal.deferred) {
      done->push_back(r);
    } else if (r->internal.phase == kSending) {
      r->internal.phase = kSent;
    }
  }
}

// On the completion reactor, at the end of the completion batch whose Submits queued requests:
// sends them with one non-blocking writev when no other send is under way, so a request needs
// no wake-up of the sender thread; what the socket does not take at once goes to the sender
// thread, which sends it before anything else.
void ReplicaClient::FlushFromReactor() {
  std::vector<ReplicaRequest*> batch;
  {
    std::lock_guard lock(mu_);
    flush_deferred_ = false;
    if (closing_ || failed_) return;
    if (!sender_idle_ || !tail_.empty()) return;  // the sender thread sends them after its own
    TakeBatchLocked(&batch);
    if (batch.empty()) return;  // the window is full: the sender thread sends them as it opens
    direct_sending_ = true;
  }
  const std::vector<ConstBuffer> iov = EncodeBatch(batch);
  size_t total = 0;
  for (const ConstBuffer& b : iov) total += b.size();
  const Result<size_t> sent = conn_->TrySend(iov);
  counters_.sends.fetch_add(1, std::memory_order_relaxed);
  counters_.direct_sends.fetch_add(1, std::memory_order_relaxed);
  counters_.bytes_sent.fetch_add(sent.ok() ? *sent : 0, std::memory_order_relaxed);
  std::vector<ReplicaRequest*> done;
  {
    std::lock_guard lock(mu_);
    direct_sending_ = false;
    if (sent.ok() && *sent < total && !closing_ && !failed_) {
      counters_.tails.fetch_add(1, std::memory_order_relaxed);
      tail_batch_ = std::move(batch);
      tail_ = BytesAfter(iov, *sent);
    } else {
      SentLocked(batch, &done);
      if (!sent.ok() && !closing_)
        FailLocked(ReplicaOutcome::kConnectionLost, sent.status(), &done);
    }
    if (!tail_.empty() || (!queue_.empty() && WindowOpenLocked(queue_.front()))) {
      send_cv_.notify_one();
    }
  }
  Post(std::move(done));
}

// Removes the request from the bookkeeping; nobody else finishes it afterwards.
ReplicaRequest* ReplicaClient::ClaimLocked(uint64_t id) {
  auto it = live_.find(id);
  if (it == live_.end()) return nullptr;
  ReplicaRequest* r = it->second;
  live_.erase(it);
  if (r->internal.phase == kQueued) {
    queue_.erase(std::find(queue_.begin(), queue_.end(), r));
  } else {
    const bool held_back = !queue_.empty() && !WindowOpenLocked(queue_.front());
    --in_flight_;
    bytes_in_flight_ -= r->internal.window_bytes;
    // Only requests the window held back need a sender now; the others are on their way (a
    // deferred FlushFromReactor, or the sender thread's own loop). Waking the sender thread at
    // every reply cost the target ~15 % of a core in futex wake-ups and lock hand-offs at 30k
    // replicated 4 KiB writes/s, and the woken thread raced the reactor to send.
    if (held_back && WindowOpenLocked(queue_.front())) SendSoonLocked();
  }
  return r;
}

// Sets the result of a claimed request and hands it to `done` (or, while the sender still
// references its buffers, to the sender).
void ReplicaClient::FinishLocked(ReplicaRequest* r, ReplicaOutcome outcome, Status status,
                                 std::vector<ReplicaRequest*>* done) {
  r->outcome = outcome;
  r->status = std::move(status);
  if (r->internal.phase == kSending) {
    r->internal.deferred = true;
  } else {
    done->push_back(r);
  }
  r->internal.phase = kDone;
}

void ReplicaClient::ExpireLocked(std::vector<ReplicaRequest*>* done) {
  const auto now = SteadyClock::now();
  while (!live_.empty() && live_.begin()->second->internal.deadline <= now) {
    ReplicaRequest* r = ClaimLocked(live_.begin()->first);
    counters_.timeouts.fetch_add(1, std::memory_order_relaxed);
    FinishLocked(
        r, ReplicaOutcome::kTimeout,
        OutcomeStatus(ReplicaOutcome::kTimeout,
                      "replica " + server_node_ + " (" + options_.address + "): no reply within " +
                          std::to_string(options_.request_timeout.count()) + " ms"),
        done);
  }
}

void ReplicaClient::FailLocked(ReplicaOutcome outcome, const Status& why,
                               std::vector<ReplicaRequest*>* done) {
  if (!failed_) {
    failed_ = true;
    failure_ = why;
  }
  while (!live_.empty()) {
    ReplicaRequest* r = ClaimLocked(live_.begin()->first);
    FinishLocked(r, outcome,
                 OutcomeStatus(outcome, "replica " + server_node_ + " (" + options_.address +
                                            "): " + why.ToString()),
                 done);
  }
  send_cv_.notify_all();
  conn_->Shutdown();
}

void ReplicaClient::ReceiverLoop() {
  pthread_setname_np(pthread_self(), "repl-client-rx");
  ReplicaRequest* claimed = nullptr;  // a READ whose data the reader receives into its buffer
  bool mismatch = false;              // a large reply that does not fit its request
  const FrameReader::DataSink sink = [&](const FrameHeader& h,
                                         std::span<const uint8_t>) -> uint8_t* {
    std::lock_guard lock(mu_);
    auto it = live_.find(h.request_id);
    if (it == live_.end()) return nullptr;  // a late reply: its data is discarded
    ReplicaRequest* r = it->second;
    if (r->op != ReplicaOp::kRead || r->length != h.payload_length ||
        r->internal.phase == kQueued) {
      mismatch = true;
      return nullptr;
    }
    claimed = ClaimLocked(h.request_id);
    return claimed->buf;
  };
  std::vector<ReplicaRequest*> done;
  Status why;
  while (true) {
    Deadline deadline;
    {
      std::lock_guard lock(mu_);
      ExpireLocked(&done);
      deadline = live_.empty() ? DeadlineIn(options_.request_timeout)
                               : live_.begin()->second->internal.deadline;
      if (claimed != nullptr) deadline = std::min(deadline, claimed->internal.deadline);
    }
    if (reader_->buffered() == 0 || done.size() >= kPostBatch) {
      Post(std::move(done));
      done.clear();
    }
    Result<FrameReader::Frame> f = reader_->Next(deadline, sink);
    if (!f.ok() && IsTimedOut(f.status())) {
      if (claimed == nullptr || SteadyClock::now() < claimed->internal.deadline) continue;
      why = Status::FromErrno(ETIMEDOUT, "a READ reply stalled inside its data");
    } else if (!f.ok()) {
      why = f.TakeStatus();
    } else if (mismatch) {
      why = Status::Corruption("replica protocol: a READ reply that does not fit its request");
    } else {
      why = HandleReply(*f, claimed, &done);
      claimed = nullptr;
      if (why.ok()) continue;
    }
    break;
  }
  std::lock_guard lock(mu_);
  if (claimed != nullptr) {
    FinishLocked(claimed, closing_ ? ReplicaOutcome::kClosed : ReplicaOutcome::kConnectionLost,
                 OutcomeStatus(ReplicaOutcome::kConnectionLost, why.ToString()), &done);
  }
  if (!closing_) {
    SHALE_LOG_WARN("replica connection lost", {"node", server_node_}, {"address", options_.address},
                   {"volume", options_.volume}, {"error", why.ToString()});
    FailLocked(ReplicaOutcome::kConnectionLost, why, &done);
  }
  // Posted under mu_ so Close() (which waits for this thread) sees every completion posted.
  Post(std::move(done));
}

// One reply frame. `claimed`: the READ whose data the reader received in place (or null).
Status ReplicaClient::HandleReply(const FrameReader::Frame& f, ReplicaRequest* claimed,
                                  std::vector<ReplicaRequest*>* done) {
  const FrameHeader& h = f.header;
  if (!h.is_reply()) return Status::Corruption("replica protocol: the server sent a request");
  if (f.direct) {
    std::lock_guard lock(mu_);
    if (claimed == nullptr) {
      counters_.late.fetch_add(1, std::memory_order_relaxed);
    } else {
      FinishLocked(claimed, ReplicaOutcome::kOk, Status::Ok(), done);
    }
    return Status::Ok();
  }
  ReplicaRequest* r;
  {
    std::lock_guard lock(mu_);
    auto it = live_.find(h.request_id);
    if (it == live_.end()) {
      if (h.request_id == 0 || h.request_id >= next_id_) {
        return Status::Corruption("replica protocol: reply to request " +
                                  std::to_string(h.request_id) + ", never sent");
      }
      counters_.late.fetch_add(1, std::memory_order_relaxed);
      return Status::Ok();
    }
    if (TypeOf(it->second->op) != h.msg() || it->second->internal.phase == kQueued) {
      return Status::Corruption("replica protocol: " + std::string(MsgTypeName(h.msg())) +
                                " reply does not match request " + std::to_string(h.request_id));
    }
    r = ClaimLocked(h.request_id);
  }
  ReplicaOutcome outcome = ReplicaOutcome::kOk;
  Status status;
  Status bad;  // the reply broke the protocol
  if (h.wire_status() != WireStatus::kOk) {
    ErrorReply e;
    bad = Decode(f.payload, &e);
    outcome = h.wire_status() == WireStatus::kStaleEpoch ? ReplicaOutcome::kStaleEpoch
                                                         : ReplicaOutcome::kError;
    status = StatusFromWire(h.wire_status(), e.message);
  } else if (r->op == ReplicaOp::kRead) {
    if (f.payload.size() == r->length) {
      std::memcpy(r->buf, f.payload.data(), f.payload.size());
    } else {
      bad = Status::Corruption("replica protocol: READ reply of the wrong length");
    }
  } else if (r->op == ReplicaOp::kHashRanges) {
    HashRangesReply m;
    bad = Decode(f.payload, &m);
    if (bad.ok() && m.hashes.size() != HashRegionCount({r->offset, r->length, r->region_size})) {
      bad = Status::Corruption("replica protocol: HASH_RANGES reply with the wrong count");
    }
    r->hashes = std::move(m.hashes);
  } else if (r->op == ReplicaOp::kGetInfo) {
    bad = Decode(f.payload, &r->info);
  } else if (r->op == ReplicaOp::kSetGeneration) {
    bad = Decode(f.payload, &r->state);
  }
  std::lock_guard lock(mu_);
  if (!bad.ok()) {
    FinishLocked(r, ReplicaOutcome::kConnectionLost,
                 OutcomeStatus(ReplicaOutcome::kConnectionLost, bad.ToString()), done);
    return bad;
  }
  FinishLocked(r, outcome, std::move(status), done);
  return Status::Ok();
}

void ReplicaClient::Close() {
  {
    std::lock_guard lock(mu_);
    if (closing_) return;
    closing_ = true;
    send_cv_.notify_all();
  }
  if (conn_) conn_->Shutdown();
  if (sender_.joinable()) sender_.join();
  if (receiver_.joinable()) receiver_.join();
  DetachRingReceiver();
  std::vector<ReplicaRequest*> done;
  {
    std::lock_guard lock(mu_);
    const bool was_failed = failed_;
    if (conn_) FailLocked(ReplicaOutcome::kClosed, Status::Aborted("replica client closed"), &done);
    failed_ = was_failed;
  }
  Post(std::move(done));
}

}  // namespace shale::replication
