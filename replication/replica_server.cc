#include "replication/replica_server.h"

#include <pthread.h>

#include <algorithm>
#include <bit>
#include <condition_variable>
#include <cstdlib>
#include <cstring>

#include "engine/common/log.h"
#include "engine/common/uuid.h"
#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "replication/replica_server_conn.h"
#include "replication/replica_state.h"

namespace shale::replication {

using replica_server_internal::NameThread;

namespace {

constexpr size_t kBatchRequests = 64;           // requests per Reactor::Post
constexpr uint64_t kHashChunkBytes = 1 * kMiB;  // HASH_RANGES reads this much at a time

uint32_t VolumeFlags(uint16_t wire_flags) {
  uint32_t f = 0;
  if (wire_flags & kFlagFua) f |= kVolumeFua;
  if (wire_flags & kFlagNoUnmap) f |= kVolumeNoUnmap;
  return f;
}

}  // namespace

// --- persisted state -----------------------------------------------------------------------------

std::string ReplicaStateKey(uint64_t volume_id) {
  std::string k;
  keys::AppendU64(k, volume_id);
  return keys::Extension(kReplicaStateNamespace, k);
}

std::string EncodeReplicaState(const ReplicaState& s) {
  std::string out(sizeof(WireReplicaState), '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  PutU32(p + offsetof(WireReplicaState, version), 1);
  PutU64(p + offsetof(WireReplicaState, epoch), s.epoch);
  PutU64(p + offsetof(WireReplicaState, generation), s.generation);
  return out;
}

Result<ReplicaState> DecodeReplicaState(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (bytes.size() != sizeof(WireReplicaState) ||
      GetU32(p + offsetof(WireReplicaState, version)) != 1 ||
      GetU32(p + offsetof(WireReplicaState, reserved)) != 0) {
    return Status::Corruption("replica state record: bad size or version");
  }
  ReplicaState s;
  s.epoch = GetU64(p + offsetof(WireReplicaState, epoch));
  s.generation = GetU64(p + offsetof(WireReplicaState, generation));
  if (s.generation > s.epoch) return Status::Corruption("replica state: generation above epoch");
  return s;
}

Result<ReplicaState> LoadReplicaState(Engine* engine, std::string_view pool, uint64_t volume_id) {
  SHALE_ASSIGN_OR_RETURN(std::optional<std::string> rec,
                         engine->GetRecord(pool, ReplicaStateKey(volume_id)));
  if (!rec) return ReplicaState{};
  return DecodeReplicaState(*rec);
}

// --- a connection --------------------------------------------------------------------------------

using replica_server_internal::Request;

namespace {

void OnVolumeIoDone(VolumeIo* io) {
  auto* r = static_cast<Request*>(io->ctx);
  if (!io->status.ok()) return r->conn->ReplyStatus(r, io->status);
  r->status = WireStatus::kOk;
  r->reply_data = r->hdr.msg() == MsgType::kRead;
  r->conn->QueueReply(r);
}

void OnHashRead(VolumeIo* io) {
  auto* r = static_cast<Request*>(io->ctx);
  if (!io->status.ok()) return r->conn->ReplyStatus(r, io->status);
  // The chunk read holds whole regions (the last one of the range may be shorter).
  const uint32_t region = r->hash.region_size;
  for (uint64_t at = 0; at < io->length; at += region) {
    r->hashes.hashes.push_back(
        HashContent128(r->data + at, std::min<uint64_t>(region, io->length - at)));
    ++r->hash_index;
  }
  r->conn->HashStep(r);
}

}  // namespace

// On the volume's reactor.
void ReplicaServer::Conn::Dispatch(Request* r) {
  const uint64_t fence = state->fence.load(std::memory_order_acquire);
  if (r->hdr.epoch < fence) {
    server->counters_.stale.fetch_add(1, std::memory_order_relaxed);
    return Reply(r, WireStatus::kStaleEpoch,
                 "epoch " + std::to_string(r->hdr.epoch) + " is older than the replica's " +
                     std::to_string(fence));
  }
  switch (r->hdr.msg()) {
    case MsgType::kHashRanges:
      return HashStep(r);
    case MsgType::kGetInfo:
      return GetInfo(r);
    default:
      break;
  }
  VolumeIo& io = r->io;
  io.ctx = r;
  io.done = OnVolumeIoDone;
  io.flags = VolumeFlags(r->hdr.flags);
  io.buf = r->data;
  switch (r->hdr.msg()) {
    case MsgType::kRead:
      io.op = VolumeOp::kRead;
      break;
    case MsgType::kWrite:
      io.op = VolumeOp::kWrite;
      break;
    case MsgType::kWriteZeroes:
      io.op = VolumeOp::kWriteZeroes;
      break;
    case MsgType::kDiscard:
      io.op = VolumeOp::kDiscard;
      break;
    default:
      io.op = VolumeOp::kFlush;
      break;
  }
  volume->Submit(&io);
}

// On the volume's reactor: reads and hashes the regions one after the other.
void ReplicaServer::Conn::HashStep(Request* r) {
  const uint32_t count = HashRegionCount(r->hash);
  if (r->hash_index == count) {
    r->status = WireStatus::kOk;
    r->payload.clear();
    Encode(r->hashes, &r->payload);
    return QueueReply(r);
  }
  const uint64_t at = r->hash.offset + uint64_t{r->hash_index} * r->hash.region_size;
  const uint64_t end = r->hash.offset + r->hash.length;
  VolumeIo& io = r->io;
  io = VolumeIo{};
  io.op = VolumeOp::kRead;
  io.offset = at;
  io.length = std::min<uint64_t>(r->data_size, end - at);
  io.buf = r->data;
  io.io_class = IoClass::kBackground;
  io.ctx = r;
  io.done = OnHashRead;
  volume->Submit(&io);
}

// On the volume's reactor.
void ReplicaServer::Conn::GetInfo(Request* r) {
  InfoReply m;
  m.size_bytes = volume->size_bytes();
  m.allocated_bytes = volume->allocated_bytes();
  m.epoch = state->fence.load(std::memory_order_acquire);
  m.generation = state->generation.load(std::memory_order_acquire);
  m.next_offset = std::min(r->info.offset, m.size_bytes);
  const uint64_t length = std::min(r->info.length, m.size_bytes - m.next_offset);
  if (length > 0) {
    uint64_t pos = m.next_offset;
    for (const Volume::Extent& e :
         volume->QueryAllocation(m.next_offset, length, kMaxInfoExtents)) {
      const uint64_t len = std::min(e.length, m.size_bytes - pos);
      if (!e.zero && len > 0) {
        if (!m.allocated.empty() && m.allocated.back().first + m.allocated.back().second == pos) {
          m.allocated.back().second += len;
        } else {
          m.allocated.emplace_back(pos, len);
        }
      }
      pos += len;
      if (pos >= m.size_bytes) break;
    }
    m.next_offset = pos;
  }
  r->status = WireStatus::kOk;
  r->payload.clear();
  Encode(m, &r->payload);
  QueueReply(r);
}

void ReplicaServer::Conn::Flush(std::vector<Request*>* batch) {
  if (batch->empty()) return;
  reactor->Post([this, b = std::move(*batch)] {
    for (Request* r : b) Dispatch(r);
  });
  batch->clear();
}

// SET_GENERATION and SNAPSHOT: run here, on the receiver thread (they may block).
Status ReplicaServer::Conn::HandleControl(const FrameReader::Frame& f,
                                          std::vector<Request*>* batch) {
  const FrameHeader& h = f.header;
  Request* r = nullptr;
  switch (h.msg()) {
    case MsgType::kSetGeneration: {
      SetGenerationRequest m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      r = NewRequest(h, 0);
      Status st = state->SetGeneration(m.generation, h.epoch, volume_name);
      if (!st.ok()) {
        Reply(r, st.sys_errno() == ESTALE ? WireStatus::kStaleEpoch : WireStatusFromStatus(st),
              st.message());
        return Status::Ok();
      }
      Encode(StateReply{state->fence.load(), state->generation.load()}, &r->payload);
      QueueReply(r);
      return Status::Ok();
    }
    case MsgType::kSnapshot: {
      SnapshotRequest m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      r = NewRequest(h, 0);
      if (h.epoch < state->fence.load()) {
        Reply(r, WireStatus::kStaleEpoch, "stale epoch");
      } else if (!server->options_.snapshot) {
        Reply(r, WireStatus::kNotSupported, "this replica server takes no snapshots");
      } else {
        // At this point of the connection's stream: every earlier request has completed.
        Flush(batch);
        {
          std::unique_lock lock(mu);
          room_cv.wait(lock, [&] { return in_flight == 1 || send_failed; });
        }
        const Status st = server->options_.snapshot(volume_name, m.name, m.labels);
        ReplyStatus(r, st);
      }
      return Status::Ok();
    }
    default:
      return Status::Corruption("unexpected frame type");
  }
}

// One request frame (after OPEN). Errors close the connection (the frame broke the protocol);
// a request that is well formed but wrong gets an error reply.
Status ReplicaServer::Conn::HandleFrame(const FrameReader::Frame& f, uint8_t* data,
                                        std::vector<Request*>* batch) {
  const FrameHeader& h = f.header;
  const MsgType t = h.msg();
  if (h.is_reply() || t == MsgType::kHello || t == MsgType::kAuth || t == MsgType::kOpen) {
    return Status::Corruption("unexpected " + std::string(MsgTypeName(t)) +
                              (h.is_reply() ? " reply" : "") + " after OPEN");
  }
  if (h.epoch > state->fence.load(std::memory_order_acquire)) {
    Flush(batch);
    // This connection's earlier requests carry the older epoch and are checked on the reactor
    // when they run: they must run before the fence rises, or this target's own writes would be
    // refused as if another target had taken the volume over (seen under ASan: a target fenced
    // itself right after a replica's leave or join raised its epoch). Epoch changes are rare.
    {
      std::unique_lock lock(mu);
      room_cv.wait(lock, [&] { return in_flight == 0 || send_failed; });
    }
    if (Status st = state->Raise(h.epoch, volume_name); !st.ok()) {
      SHALE_LOG_ERROR("replica: persisting an epoch failed", {"volume", volume_name},
                      {"error", st.ToString()});
      if (data) buffers.Put(data, h.payload_length - sizeof(WireIoRange));
      ReplyStatus(NewRequest(h, 0), st);
      return Status::Ok();
    }
  }
  const uint64_t size = volume->size_bytes();
  Request* r = nullptr;
  Status check;
  switch (t) {
    case MsgType::kRead: {
      IoRange m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      check = CheckIo(t, m.offset, m.length, size);
      r = NewRequest(h, check.ok() ? m.length : 0);
      r->io.offset = m.offset;
      r->io.length = m.length;
      break;
    }
    case MsgType::kWrite: {
      IoRange m;
      const size_t data_length = h.payload_length - sizeof(WireIoRange);
      const std::span<const uint8_t> prefix =
          f.direct ? f.payload : f.payload.first(sizeof(WireIoRange));
      if (Status st = DecodeWrite(prefix, data_length, &m); !st.ok()) {
        if (data) buffers.Put(data, data_length);
        return st;
      }
      check = CheckIo(t, m.offset, m.length, size);
      r = new Request;
      r->conn = this;
      r->hdr = h;
      r->data_size = data_length;
      r->data = data != nullptr ? data : buffers.Get(data_length);
      if (data == nullptr)
        std::memcpy(r->data, f.payload.data() + sizeof(WireIoRange), data_length);
      {
        std::lock_guard lock(mu);
        ++in_flight;
        bytes_in_flight += data_length;
      }
      r->io.offset = m.offset;
      r->io.length = m.length;
      break;
    }
    case MsgType::kWriteZeroes:
    case MsgType::kDiscard: {
      ZeroRange m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      check = CheckIo(t, m.offset, m.length, size);
      r = NewRequest(h, 0);
      r->io.offset = m.offset;
      r->io.length = m.length;
      break;
    }
    case MsgType::kFlush:
      r = NewRequest(h, 0);
      break;
    case MsgType::kHashRanges: {
      HashRangesRequest m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      check = CheckHashRanges(m, size);
      // Read in chunks of whole regions, up to kHashChunkBytes (or one region if larger).
      uint64_t chunk = 0;
      if (check.ok()) {
        const uint64_t whole = uint64_t{HashRegionCount(m)} * m.region_size;
        chunk = std::min(whole, std::max<uint64_t>(m.region_size, kHashChunkBytes / m.region_size *
                                                                      m.region_size));
      }
      r = NewRequest(h, chunk);
      r->hash = m;
      break;
    }
    case MsgType::kGetInfo: {
      InfoRequest m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      if (m.offset % 4096 != 0)
        check = Status::InvalidArgument("GET_INFO offset not 4 KiB-aligned");
      r = NewRequest(h, 0);
      r->info = m;
      break;
    }
    case MsgType::kSetGeneration:
    case MsgType::kSnapshot:
      return HandleControl(f, batch);
    default:
      return Status::Corruption("unexpected frame type");
  }
  if (!check.ok()) {
    ReplyStatus(r, check);
    return Status::Ok();
  }
  batch->push_back(r);
  if (batch->size() >= kBatchRequests) Flush(batch);
  return Status::Ok();
}

// The request loop: frames in, batches to the reactor, until the stream ends or breaks.
void ReplicaServer::Conn::ServeRequests(FrameReader* reader) {
  std::vector<Request*> batch;
  uint8_t* direct = nullptr;  // a WRITE's data buffer, taken by the sink
  size_t direct_size = 0;
  const FrameReader::DataSink sink = [&](const FrameHeader& h, std::span<const uint8_t>) {
    direct_size = h.payload_length - sizeof(WireIoRange);
    direct = buffers.Get(direct_size);
    return direct;
  };
  while (true) {
    {
      std::unique_lock lock(mu);
      if (in_flight >= server->options_.max_requests_in_flight ||
          bytes_in_flight >= server->options_.max_bytes_in_flight) {
        lock.unlock();
        Flush(&batch);
        lock.lock();
        room_cv.wait(lock, [&] {
          return (in_flight < server->options_.max_requests_in_flight &&
                  bytes_in_flight < server->options_.max_bytes_in_flight) ||
                 send_failed;
        });
      }
    }
    direct = nullptr;
    Result<FrameReader::Frame> f = reader->Next(kNoDeadline, sink);
    Status st = f.ok() ? HandleFrame(*f, direct, &batch) : f.status();
    if (!f.ok() && direct != nullptr) buffers.Put(direct, direct_size);
    if (!st.ok()) {
      if (st.code() == StatusCode::kCorruption) {
        server->counters_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
        SHALE_LOG_WARN("replica connection closed: bad frame", {"peer", peer},
                       {"volume", volume_name}, {"error", st.ToString()});
      } else if (!server->stopping_.load()) {
        SHALE_LOG_INFO("replica connection closed", {"peer", peer}, {"volume", volume_name},
                       {"reason", st.ToString()});
      }
      break;
    }
    if (reader->buffered() == 0) Flush(&batch);
  }
  Flush(&batch);
}

// --- the server ----------------------------------------------------------------------------------

ReplicaServer::ReplicaServer(Engine* engine, Transport* transport, ReplicaServerOptions options)
    : engine_(engine), transport_(transport), options_(std::move(options)) {}

ReplicaServer::~ReplicaServer() { Stop(); }

Status ReplicaServer::Start() {
  SHALE_CHECK(!started_, "ReplicaServer::Start called twice");
  if (!options_.secret.valid()) return Status::InvalidArgument("replica server needs a secret");
  if (options_.node_name.empty() || options_.node_name.size() > kMaxNodeNameLength) {
    return Status::InvalidArgument("replica server needs a node name of 1..128 bytes");
  }
  if (options_.max_connections == 0 || options_.max_requests_in_flight == 0 ||
      options_.max_bytes_in_flight == 0) {
    return Status::InvalidArgument("replica server limits must not be zero");
  }
  SHALE_ASSIGN_OR_RETURN(listener_, transport_->Listen(options_.listen_address));
  address_ = listener_->address();
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  SHALE_LOG_INFO("replica server listening", {"address", address_}, {"node", options_.node_name});
  return Status::Ok();
}

void ReplicaServer::Stop() {
  if (!started_ || stopping_.exchange(true)) return;
  listener_->Shutdown();
  accept_thread_.join();
  std::vector<std::unique_ptr<Conn>> conns;
  {
    std::lock_guard lock(mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) c->connection->Shutdown();
  for (auto& c : conns) c->receiver.join();  // each drains its requests first
  listener_.reset();
  SHALE_LOG_INFO("replica server stopped", {"address", address_});
}

std::string ReplicaServer::address() const { return address_; }

ReplicaServerStats ReplicaServer::stats() const {
  ReplicaServerStats s;
  s.connections_accepted = counters_.accepted.load();
  s.connections_refused = counters_.refused.load();
  s.auth_failures = counters_.auth_failures.load();
  s.protocol_errors = counters_.protocol_errors.load();
  s.requests = counters_.requests.load();
  s.stale_epoch_replies = counters_.stale.load();
  s.direct_reply_sends = counters_.direct_sends.load();
  s.reply_tails = counters_.tails.load();
  s.writes_received_in_place = counters_.writes_in_place.load();
  std::lock_guard lock(mu_);
  for (const auto& c : conns_) s.connections_active += !c->finished.load();
  return s;
}

void ReplicaServer::ReapFinished() {
  std::vector<std::unique_ptr<Conn>> done;
  {
    std::lock_guard lock(mu_);
    auto it = std::partition(conns_.begin(), conns_.end(),
                             [](const auto& c) { return !c->finished.load(); });
    std::move(it, conns_.end(), std::back_inserter(done));
    conns_.erase(it, conns_.end());
  }
  for (auto& c : done) c->receiver.join();
}

void ReplicaServer::AcceptLoop() {
  NameThread("repl-accept");
  while (!stopping_.load()) {
    Result<std::unique_ptr<Connection>> c = listener_->Accept(DeadlineIn(std::chrono::seconds(1)));
    ReapFinished();
    if (!c.ok()) {
      if (IsTimedOut(c.status())) continue;
      if (stopping_.load()) break;
      SHALE_LOG_WARN("replica server: accept failed", {"error", c.status().ToString()});
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    std::lock_guard lock(mu_);
    if (conns_.size() >= options_.max_connections) {
      counters_.refused.fetch_add(1);
      SHALE_LOG_WARN("replica server: connection refused, at the limit", {"peer", (*c)->peer()},
                     {"limit", options_.max_connections});
      continue;  // closed as it goes out of scope
    }
    counters_.accepted.fetch_add(1);
    auto conn = std::make_unique<Conn>();
    conn->server = this;
    conn->peer = (*c)->peer();
    conn->connection = std::move(c).value();
    Conn* raw = conn.get();
    conns_.push_back(std::move(conn));
    raw->receiver = std::thread([this, raw] { Serve(raw); });
  }
}

namespace {

Status SendBytes(Connection* c, std::string_view bytes, Deadline deadline) {
  const ConstBuffer b = AsBytes(bytes);
  return c->Send(std::span(&b, 1), deadline);
}

}  // namespace

Result<bool> ReplicaServer::Handshake(Conn* c, FrameReader* reader, Deadline deadline) {
  SHALE_ASSIGN_OR_RETURN(const Nonce nonce, RandomNonce());
  ServerHandshake hs(options_.secret, options_.node_name, nonce, options_.max_requests_in_flight,
                     options_.max_bytes_in_flight);
  SHALE_RETURN_IF_ERROR(SendBytes(c->connection.get(), hs.HelloFrame(), deadline));
  SHALE_ASSIGN_OR_RETURN(const FrameReader::Frame f, reader->Next(deadline));
  std::string reply;
  const Status st = hs.OnAuth(f.header, f.payload, &reply);
  if (!reply.empty()) {
    const Status sent = SendBytes(c->connection.get(), reply, deadline);
    if (st.ok() && !sent.ok()) return sent;
  }
  if (st.code() == StatusCode::kPermissionDenied) {
    counters_.auth_failures.fetch_add(1);
    SHALE_LOG_WARN("replica peer refused: it did not prove the cluster secret", {"peer", c->peer},
                   {"claimed_node", hs.client_node()});
    return false;
  }
  SHALE_RETURN_IF_ERROR(st);
  c->client_node = hs.client_node();
  return true;
}

Result<bool> ReplicaServer::Open(Conn* c, FrameReader* reader, Deadline deadline) {
  // Placement requests first (any number up to kMaxAdminRequests), then OPEN or the end.
  constexpr int kMaxAdminRequests = 64;
  FrameReader::Frame f;
  for (int n = 0;; ++n) {
    Result<FrameReader::Frame> next = reader->Next(deadline);
    if (!next.ok()) {
      if (n > 0 && next.status().code() == StatusCode::kUnavailable) return false;  // done
      return next.status();
    }
    f = *next;
    if (f.header.is_reply() || !IsAdmin(f.header.msg())) break;
    if (n == kMaxAdminRequests) return Status::Corruption("too many placement requests");
    SHALE_RETURN_IF_ERROR(Admin(c->connection.get(), c->peer, c->client_node, f, deadline));
  }
  if (f.header.is_reply() || f.header.msg() != MsgType::kOpen) {
    return Status::Corruption("expected OPEN, got " + std::string(MsgTypeName(f.header.msg())));
  }
  OpenRequest m;
  SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
  c->volume_name = m.volume;
  FrameHeader rh;
  rh.type = static_cast<uint8_t>(MsgType::kOpen) | kReplyBit;
  rh.request_id = f.header.request_id;
  const auto refuse = [&](WireStatus s, const std::string& why) -> Result<bool> {
    SHALE_LOG_WARN("replica OPEN refused", {"peer", c->peer}, {"node", c->client_node},
                   {"volume", m.volume}, {"status", WireStatusName(s)}, {"reason", why});
    if (s == WireStatus::kStaleEpoch) counters_.stale.fetch_add(1);
    rh.status = static_cast<uint32_t>(s);
    std::string body;
    Encode(ErrorReply{why}, &body);
    SHALE_RETURN_IF_ERROR(SendBytes(c->connection.get(), EncodeFrame(rh, body), deadline));
    return false;
  };
  Result<VolumeInfo> info = engine_->GetVolume(m.volume);
  if (!info.ok()) return refuse(WireStatusFromStatus(info.status()), info.status().ToString());
  Uuid want;
  want.bytes = m.volume_uuid;
  const auto label = info->labels.find(kReplicaUuidLabel);
  if (label == info->labels.end()) {
    return refuse(WireStatus::kNotFound, "volume '" + m.volume + "' is not a replica (no label " +
                                             kReplicaUuidLabel + ")");
  }
  if (info->labels.contains(kTargetOnlyLabel)) {
    return refuse(WireStatus::kNotFound, "volume '" + m.volume +
                                             "' holds no replica here: this node serves it "
                                             "from the replicas on other nodes");
  }
  const Result<Uuid> have = Uuid::Parse(label->second);
  if (!have.ok() || !(*have == want)) {
    return refuse(WireStatus::kInvalid, "volume '" + m.volume + "' is a replica of " +
                                            label->second + ", not of " + want.ToString());
  }
  // A larger volume is a replicated volume grown while this replica was closed
  // (docs/replication.md, "Growing a replicated volume"): it grows once the epoch is checked. A
  // smaller one never is.
  if (info->size_bytes > m.size_bytes || m.size_bytes % 4096 != 0) {
    return refuse(WireStatus::kInvalid, "replica size " + std::to_string(info->size_bytes) +
                                            " differs from the volume's " +
                                            std::to_string(m.size_bytes));
  }
  Result<std::shared_ptr<VolumeState>> state = StateOf(info->pool, info->id);
  if (!state.ok()) return refuse(WireStatus::kIoError, state.status().ToString());
  c->state = *state;
  const uint64_t fence = c->state->fence.load();
  if (f.header.epoch < fence) {
    return refuse(WireStatus::kStaleEpoch, "epoch " + std::to_string(f.header.epoch) +
                                               " is older than the replica's " +
                                               std::to_string(fence));
  }
  if (Status st = c->state->Raise(f.header.epoch, m.volume); !st.ok()) {
    return refuse(WireStatus::kIoError, st.ToString());
  }
  if (info->size_bytes < m.size_bytes) {
    Result<VolumeInfo> grown = engine_->ResizeVolume(m.volume, m.size_bytes);
    if (!grown.ok()) return refuse(WireStatusFromStatus(grown.status()), grown.status().ToString());
    SHALE_LOG_INFO("replica grown", {"volume", m.volume}, {"from", info->size_bytes},
                   {"to", m.size_bytes}, {"node", c->client_node});
  }
  Result<std::shared_ptr<VolumeHandle>> handle = engine_->OpenVolume(m.volume);
  if (!handle.ok())
    return refuse(WireStatusFromStatus(handle.status()), handle.status().ToString());
  c->handle = std::move(handle).value();
  c->volume = &c->handle->volume();
  c->reactor = c->handle->reactor();
  OpenReply r;
  r.size_bytes = c->volume->size_bytes();
  r.generation = c->state->generation.load();
  r.epoch = c->state->fence.load();
  r.max_requests_in_flight = options_.max_requests_in_flight;
  r.max_bytes_in_flight = options_.max_bytes_in_flight;
  std::string body;
  Encode(r, &body);
  SHALE_RETURN_IF_ERROR(SendBytes(c->connection.get(), EncodeFrame(rh, body), deadline));
  SHALE_LOG_INFO("replica opened", {"peer", c->peer}, {"node", c->client_node},
                 {"volume", m.volume}, {"epoch", r.epoch}, {"generation", r.generation});
  return true;
}

Result<std::shared_ptr<ReplicaServer::VolumeState>> ReplicaServer::StateOf(const std::string& pool,
                                                                           uint64_t volume_id) {
  std::lock_guard lock(mu_);
  std::erase_if(states_, [](const auto& e) { return e.second.expired(); });
  std::weak_ptr<VolumeState>& slot = states_[{pool, volume_id}];
  if (std::shared_ptr<VolumeState> s = slot.lock()) return s;
  SHALE_ASSIGN_OR_RETURN(const ReplicaState persisted, LoadReplicaState(engine_, pool, volume_id));
  auto s = std::make_shared<VolumeState>();
  s->engine = engine_;
  s->pool = pool;
  s->volume_id = volume_id;
  s->persisted = persisted;
  s->fence.store(persisted.epoch);
  s->generation.store(persisted.generation);
  s->on_raised = &options_.on_epoch_raised;
  slot = s;
  return s;
}

Status ReplicaServer::RaiseEpoch(const std::string& volume, uint64_t epoch) {
  SHALE_ASSIGN_OR_RETURN(VolumeInfo info, engine_->GetVolume(volume));
  if (!info.labels.contains(kReplicaUuidLabel) || info.labels.contains(kTargetOnlyLabel)) {
    return Status::InvalidArgument("volume '" + volume + "' is not a replica");
  }
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeState> state, StateOf(info.pool, info.id));
  return state->Raise(epoch, volume);
}

// The receiver thread of a connection, from HELLO to teardown.
void ReplicaServer::Serve(Conn* c) {
  NameThread("repl-recv");
  FrameReader reader(c->connection.get());
  const Deadline deadline = DeadlineIn(options_.handshake_timeout);
  Result<bool> ready = Handshake(c, &reader, deadline);
  if (ready.ok() && *ready) ready = Open(c, &reader, deadline);
  if (!ready.ok()) {
    const bool protocol = ready.status().code() == StatusCode::kCorruption;
    if (protocol) counters_.protocol_errors.fetch_add(1);
    SHALE_LOG_WARN(protocol ? "replica connection closed: bad frame" : "replica handshake failed",
                   {"peer", c->peer}, {"error", ready.status().ToString()});
  } else if (*ready) {
    c->direct_replies = c->connection->can_try_send();
    c->sender = std::thread([c] { c->SenderLoop(); });
    if (c->StartRing(reader)) {
      c->ServeRing();
    } else {
      c->ServeRequests(&reader);
    }
  }
  c->connection->Shutdown();
  if (c->sender.joinable()) {
    std::unique_lock lock(c->mu);
    c->room_cv.wait(lock, [c] { return c->in_flight == 0; });
    c->sender_stop = true;
    c->send_cv.notify_one();
    lock.unlock();
    c->sender.join();
  }
  c->handle.reset();  // may take the engine's control lock: never on a reactor
  c->finished.store(true);
}

}  // namespace shale::replication
