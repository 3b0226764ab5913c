// libFuzzer target for the replica protocol's frame parser and handshake (replication/).
//
// The input is a byte stream as a peer would send it, preceded by one control byte:
//   bits 0-5  how many bytes arrive per receive (1..64), so headers and payloads come in pieces
//   bit 6     fix checksums: before parsing, every frame the stream walks to gets its correct
//             XXH3 checksum, so the fuzzer reaches the payload decoders (without it, almost
//             every mutation dies at the checksum, which is exercised too)
//   bit 7     large data (>= 64 KiB) goes to a caller's buffer (else it is discarded)
// The stream is read by FrameReader (replication/transport.h) over a fake connection that also
// times out now and then (the reader must resume), and by ParseFrame over the whole buffer; both
// must see the same frames. Every frame is checked against its header's bounds, its payload is
// decoded as its type says and, when that succeeds, re-encoded to the same bytes; decoded
// requests go through the server's semantic checks. The first frames are also fed to both sides
// of the authentication handshake. A violated invariant aborts.
//
// Built with -fsanitize=fuzzer by `scripts/build --fuzz` (tests/fuzz/CMakeLists.txt); the same
// entry point runs over the seed corpus in the normal build (replica_frame_corpus_test).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "replication/auth.h"
#include "replication/protocol.h"
#include "replication/transport.h"

namespace shale::replication {
namespace {

#define FUZZ_CHECK(cond)                                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "replica fuzz invariant failed at line %d: %s\n", __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

constexpr uint64_t kVolumeSize = 1 << 30;

// Delivers the input `chunk` bytes at a time; every third call of an odd chunk size times out
// first. Then the end of the stream.
class FakeConnection final : public Connection {
 public:
  FakeConnection(const std::vector<uint8_t>& data, size_t chunk) : data_(data), chunk_(chunk) {}
  Status Send(std::span<const ConstBuffer>, Deadline) override { return Status::Ok(); }
  Result<size_t> Recv(std::span<uint8_t> buf, Deadline) override {
    if (chunk_ % 2 == 1 && ++calls_ % 3 == 0) return TimedOut("fake");
    const size_t n = std::min({buf.size(), chunk_, data_.size() - pos_});
    if (n == 0) return size_t{0};  // the end (memcpy must not see an empty input's null data)
    std::memcpy(buf.data(), data_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  void Shutdown() override {}
  const std::string& peer() const override { return peer_; }

 private:
  const std::vector<uint8_t>& data_;
  const size_t chunk_;
  size_t pos_ = 0;
  uint64_t calls_ = 0;
  const std::string peer_ = "fuzz";
};

void FixChecksums(std::vector<uint8_t>* s) {
  size_t pos = 0;
  while (s->size() - pos >= kFrameHeaderSize) {
    uint8_t* h = s->data() + pos;
    const uint32_t len = GetU32(h + offsetof(WireFrameHeader, payload_length));
    if (len > s->size() - pos - kFrameHeaderSize) return;
    const std::span<const uint8_t, kFrameHeaderSize> header(h, kFrameHeaderSize);
    PutU64(h + offsetof(WireFrameHeader, checksum),
           FrameChecksum(header, {std::span<const uint8_t>(h + kFrameHeaderSize, len)}));
    pos += kFrameHeaderSize + len;
  }
}

template <typename T>
void RoundTrip(std::span<const uint8_t> payload) {
  T m;
  if (!Decode(payload, &m).ok()) return;
  std::string again;
  Encode(m, &again);
  FUZZ_CHECK(again.size() == payload.size());
  FUZZ_CHECK(std::memcmp(again.data(), payload.data(), payload.size()) == 0);
}

void CheckRequest(const FrameHeader& h, std::span<const uint8_t> payload, size_t data_size) {
  switch (h.msg()) {
    case MsgType::kHello:
      return RoundTrip<Hello>(payload);
    case MsgType::kAuth:
      return RoundTrip<AuthRequest>(payload);
    case MsgType::kOpen:
      return RoundTrip<OpenRequest>(payload);
    case MsgType::kRead: {
      IoRange r;
      if (Decode(payload, &r).ok()) {
        FUZZ_CHECK(r.length >= 1 && r.length <= kMaxIoBytes);
        if (CheckIo(MsgType::kRead, r.offset, r.length, kVolumeSize).ok()) {
          FUZZ_CHECK(r.offset + r.length <= kVolumeSize && r.offset % kIoAlignment == 0);
        }
      }
      return RoundTrip<IoRange>(payload);
    }
    case MsgType::kWrite: {
      IoRange r;
      if (DecodeWrite(payload.first(sizeof(WireIoRange)), data_size, &r).ok()) {
        FUZZ_CHECK(r.length == data_size);
        (void)CheckIo(MsgType::kWrite, r.offset, r.length, kVolumeSize);
      }
      return;
    }
    case MsgType::kWriteZeroes:
    case MsgType::kDiscard: {
      ZeroRange r;
      if (Decode(payload, &r).ok() && CheckIo(h.msg(), r.offset, r.length, kVolumeSize).ok()) {
        FUZZ_CHECK(r.length > 0 && r.offset + r.length <= kVolumeSize);
      }
      return RoundTrip<ZeroRange>(payload);
    }
    case MsgType::kHashRanges: {
      HashRangesRequest r;
      if (Decode(payload, &r).ok() && CheckHashRanges(r, kVolumeSize).ok()) {
        const uint32_t n = HashRegionCount(r);
        FUZZ_CHECK(n >= 1 && n <= kMaxHashRegions);
        FUZZ_CHECK(r.offset + r.length <= kVolumeSize);
      }
      return RoundTrip<HashRangesRequest>(payload);
    }
    case MsgType::kGetInfo:
      return RoundTrip<InfoRequest>(payload);
    case MsgType::kSetGeneration:
      return RoundTrip<SetGenerationRequest>(payload);
    case MsgType::kSnapshot:
      return RoundTrip<SnapshotRequest>(payload);
    case MsgType::kFlush:
      FUZZ_CHECK(payload.empty());
      return;
    case MsgType::kCreateReplica: {
      CreateReplicaRequest r;
      if (Decode(payload, &r).ok()) {
        FUZZ_CHECK(!r.volume.empty() && r.volume.size() <= kMaxVolumeNameLength);
        FUZZ_CHECK(r.pool.size() <= kMaxPoolNameLength && r.size_bytes > 0);
        FUZZ_CHECK(r.source.empty() || (r.source.size() <= kMaxSourceLength &&
                                        r.source.find('@') != std::string::npos));
      }
      return RoundTrip<CreateReplicaRequest>(payload);
    }
    case MsgType::kDeleteReplica:
    case MsgType::kStatReplica:
    case MsgType::kListSnapshots:
      return RoundTrip<ReplicaRef>(payload);
    case MsgType::kSnapshotDigest:
    case MsgType::kDeleteSnapshot:
    case MsgType::kTakeSnapshot:
      return RoundTrip<SnapshotRef>(payload);
  }
}

void CheckReply(const FrameHeader& h, std::span<const uint8_t> payload) {
  if (h.status != 0) return RoundTrip<ErrorReply>(payload);
  switch (h.msg()) {
    case MsgType::kAuth:
      return RoundTrip<AuthReply>(payload);
    case MsgType::kOpen:
      return RoundTrip<OpenReply>(payload);
    case MsgType::kHashRanges:
      return RoundTrip<HashRangesReply>(payload);
    case MsgType::kGetInfo:
      return RoundTrip<InfoReply>(payload);
    case MsgType::kSetGeneration:
      return RoundTrip<StateReply>(payload);
    case MsgType::kCreateReplica:
    case MsgType::kStatReplica:
      return RoundTrip<ReplicaStat>(payload);
    case MsgType::kSnapshotDigest:
      return RoundTrip<SnapshotDigest>(payload);
    case MsgType::kListSnapshots:
      return RoundTrip<SnapshotList>(payload);
    case MsgType::kRead:
      FUZZ_CHECK(!payload.empty() && payload.size() <= kMaxIoBytes);
      return;
    default:
      FUZZ_CHECK(payload.empty());
      return;
  }
}

// Both sides of the handshake, fed the first frames.
void RunHandshake(size_t index, const FrameHeader& h, std::span<const uint8_t> payload,
                  ServerHandshake* server, ClientHandshake* client, bool* client_saw_hello) {
  std::string out;
  if (index == 0) {
    const Status st = server->OnAuth(h, payload, &out);
    if (st.ok() || st.code() == StatusCode::kPermissionDenied) {
      auto reply = ParseFrame(AsBytes(out));
      FUZZ_CHECK(reply.ok() && reply->has_value() && (*reply)->size == out.size());
      FUZZ_CHECK((*reply)->header.msg() == MsgType::kAuth && (*reply)->header.is_reply());
      FUZZ_CHECK(((*reply)->header.status == 0) == st.ok());
    } else {
      FUZZ_CHECK(out.empty());
    }
    *client_saw_hello = client->OnHello(h, payload, &out).ok();
    if (*client_saw_hello) {
      auto auth = ParseFrame(AsBytes(out));
      FUZZ_CHECK(auth.ok() && auth->has_value());
      FUZZ_CHECK((*auth)->header.msg() == MsgType::kAuth && !(*auth)->header.is_reply());
    }
  } else if (index == 1 && *client_saw_hello) {
    const Status st = client->OnAuthReply(h, payload);
    // Nobody but the holder of the secret can produce a valid server proof.
    FUZZ_CHECK(!st.ok() || h.wire_status() == WireStatus::kOk);
  }
}

}  // namespace

// Runs one input; returns how many frames the reader returned (the corpus test checks seeds).
size_t RunReplicaFrameInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = (data[0] & 0x3f) + 1;
  const bool fix = (data[0] & 0x40) != 0;
  const bool sink_buffer = (data[0] & 0x80) != 0;
  std::vector<uint8_t> stream(data + 1, data + size);
  if (fix) FixChecksums(&stream);

  // The reference: whole frames out of the buffer.
  std::vector<FrameHeader> expected;
  size_t pos = 0;
  bool clean_end = true;
  while (true) {
    auto f = ParseFrame(std::span(stream).subspan(pos));
    if (!f.ok()) {
      clean_end = false;
      break;
    }
    if (!f->has_value()) break;
    expected.push_back((*f)->header);
    pos += (*f)->size;
  }

  const ClusterSecret secret = *ClusterSecret::FromBytes("fuzzing-cluster-secret");
  Nonce nonce{};
  ServerHandshake server(secret, "server", nonce, 16, 1 << 20);
  ClientHandshake client(secret, "client", nonce);
  bool client_saw_hello = false;

  FakeConnection conn(stream, chunk);
  FrameReader reader(&conn);
  std::vector<uint8_t> data_buffer;
  const FrameReader::DataSink sink = [&](const FrameHeader& h, std::span<const uint8_t> prefix) {
    FUZZ_CHECK(DataOffset(h).has_value() && *DataOffset(h) == prefix.size());
    data_buffer.assign(h.payload_length - prefix.size(), 0);
    return sink_buffer ? data_buffer.data() : nullptr;
  };
  size_t frames = 0;
  while (true) {
    Result<FrameReader::Frame> f = reader.Next(kNoDeadline, sink);
    if (!f.ok() && IsTimedOut(f.status())) continue;
    if (!f.ok()) {
      // The reader stops where the reference stopped: at the end, or at the same bad frame.
      FUZZ_CHECK(frames == expected.size());
      FUZZ_CHECK(clean_end ? (f.status().code() == StatusCode::kUnavailable ||
                              f.status().code() == StatusCode::kCorruption)
                           : f.status().code() == StatusCode::kCorruption);
      if (f.status().code() == StatusCode::kUnavailable) FUZZ_CHECK(pos == stream.size());
      break;
    }
    FUZZ_CHECK(frames < expected.size());
    const FrameHeader& h = f->header;
    FUZZ_CHECK(h.request_id == expected[frames].request_id && h.type == expected[frames].type &&
               h.checksum == expected[frames].checksum);
    const auto [min, max] = PayloadBounds(h.type, h.status);
    FUZZ_CHECK(h.payload_length >= min && h.payload_length <= max && max <= kMaxPayload);
    size_t data_size = 0;
    if (f->direct) {
      FUZZ_CHECK(DataOffset(h).has_value() && f->payload.size() == *DataOffset(h));
      data_size = h.payload_length - f->payload.size();
      FUZZ_CHECK(data_size >= FrameReader::kDirectDataBytes);
      FUZZ_CHECK(f->data.size() == (sink_buffer ? data_size : 0));
    } else {
      FUZZ_CHECK(f->payload.size() == h.payload_length);
      if (h.msg() == MsgType::kWrite && !h.is_reply()) data_size = h.payload_length - 16;
    }
    if (h.is_reply()) {
      if (!f->direct) CheckReply(h, f->payload);
    } else {
      CheckRequest(h, f->payload, data_size);
    }
    RunHandshake(frames, h, f->payload, &server, &client, &client_saw_hello);
    ++frames;
  }
  return frames;
}

}  // namespace shale::replication

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shale::replication::RunReplicaFrameInput(data, size);
  return 0;
}
