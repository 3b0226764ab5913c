// The Transport seam: TCP connections and listeners with deadlines and shutdown, FrameReader
// (frames in pieces, large data in place, timeouts mid-frame, truncation, bad checksums,
// garbage), and FaultTransport (cut, blackhole, drop, delay, reorder, partition, heal).
#include "replication/transport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>

#include "replication/ring_frames.h"

namespace shale::replication {
namespace {

using namespace std::chrono_literals;

std::string FlushFrame(uint64_t id) {
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kFlush);
  h.request_id = id;
  return EncodeFrame(h, "");
}

std::string WriteFrame(uint64_t id, size_t data_length, char fill) {
  std::string payload;
  Encode(IoRange{0, static_cast<uint32_t>(data_length)}, &payload);
  payload.append(data_length, fill);
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kWrite);
  h.request_id = id;
  return EncodeFrame(h, payload);
}

Status SendAll(Connection* c, std::string_view bytes) {
  const ConstBuffer b = AsBytes(bytes);
  return c->Send(std::span(&b, 1), DeadlineIn(5s));
}

// A connected pair of TCP connections over loopback.
struct Pair {
  TcpTransport tcp;
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Connection> client, server;

  explicit Pair(Transport* dial = nullptr) {
    listener = std::move(tcp.Listen("127.0.0.1:0")).value();
    std::thread accept([&] { server = std::move(listener->Accept(DeadlineIn(5s))).value(); });
    Result<std::unique_ptr<Connection>> c =
        (dial ? dial : &tcp)->Connect(listener->address(), DeadlineIn(5s));
    accept.join();
    EXPECT_TRUE(c.ok()) << c.status();
    client = std::move(c).value();
  }
};

TEST(ReplicaTransport, SplitHostPort) {
  std::string h, p;
  EXPECT_TRUE(SplitHostPort("127.0.0.1:7000", &h, &p).ok());
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, "7000");
  EXPECT_TRUE(SplitHostPort("[::1]:0", &h, &p).ok());
  EXPECT_EQ(h, "::1");
  EXPECT_TRUE(SplitHostPort("node-b.local:10810", &h, &p).ok());
  for (const char* bad :
       {"", "host", ":80", "host:", "host:99999", "host:8x", "::1:80", "[::1]80"}) {
    EXPECT_FALSE(SplitHostPort(bad, &h, &p).ok()) << bad;
  }
}

TEST(ReplicaTransport, TcpSendRecvDeadlinesAndShutdown) {
  Pair p;
  const std::string a = "hello ", b = "world";
  const ConstBuffer iov[] = {AsBytes(a), AsBytes(b)};
  ASSERT_TRUE(p.client->Send(iov, DeadlineIn(1s)).ok());
  std::string got;
  uint8_t buf[64];
  while (got.size() < 11) {
    Result<size_t> n = p.server->Recv(buf, DeadlineIn(1s));
    ASSERT_TRUE(n.ok()) << n.status();
    got.append(reinterpret_cast<char*>(buf), *n);
  }
  EXPECT_EQ(got, "hello world");
  // Nothing to read: a timeout, and the connection stays usable.
  const auto t0 = SteadyClock::now();
  Result<size_t> none = p.server->Recv(buf, DeadlineIn(50ms));
  EXPECT_TRUE(IsTimedOut(none.status())) << none.status();
  EXPECT_GE(SteadyClock::now() - t0, 45ms);
  // Shutdown from another thread wakes a blocked receive.
  std::thread waker([&] {
    std::this_thread::sleep_for(50ms);
    p.server->Shutdown();
  });
  Result<size_t> woken = p.server->Recv(buf, kNoDeadline);
  waker.join();
  EXPECT_TRUE(!woken.ok() || *woken == 0);
  // The peer sees the end of the stream.
  Result<size_t> eof = p.client->Recv(buf, DeadlineIn(1s));
  ASSERT_TRUE(eof.ok()) << eof.status();
  EXPECT_EQ(*eof, 0u);
  EXPECT_FALSE(SendAll(p.server.get(), "x").ok());
}

TEST(ReplicaTransport, ListenerAcceptTimesOutAndShutsDown) {
  TcpTransport tcp;
  auto l = std::move(tcp.Listen("127.0.0.1:0")).value();
  EXPECT_NE(l->address().find("127.0.0.1:"), std::string::npos);
  EXPECT_TRUE(IsTimedOut(l->Accept(DeadlineIn(20ms)).status()));
  std::thread t([&] {
    std::this_thread::sleep_for(30ms);
    l->Shutdown();
  });
  EXPECT_EQ(l->Accept(kNoDeadline).status().code(), StatusCode::kAborted);
  t.join();
  const std::string addr = l->address();
  l.reset();
  EXPECT_FALSE(tcp.Connect(addr, DeadlineIn(1s)).ok());  // refused
  EXPECT_FALSE(tcp.Listen("127.0.0.1").ok());
}

TEST(ReplicaTransport, FrameReaderFramesInPiecesAndLargeDataInPlace) {
  Pair p;
  std::string stream =
      FlushFrame(1) + WriteFrame(2, 4096, 'a') + WriteFrame(3, 1 << 20, 'b') + FlushFrame(4);
  std::thread sender([&] {
    // Dribble it out in odd pieces.
    for (size_t at = 0; at < stream.size();) {
      const size_t n = std::min<size_t>(stream.size() - at, 1 + (at * 7919) % 70000);
      ASSERT_TRUE(SendAll(p.client.get(), std::string_view(stream).substr(at, n)).ok());
      at += n;
    }
  });
  FrameReader reader(p.server.get());
  std::vector<uint8_t> big(1 << 20);
  size_t sink_calls = 0;
  auto sink = [&](const FrameHeader& h, std::span<const uint8_t> prefix) {
    ++sink_calls;
    EXPECT_EQ(h.request_id, 3u);
    EXPECT_EQ(prefix.size(), sizeof(WireIoRange));
    return big.data();
  };
  for (uint64_t id = 1; id <= 4; ++id) {
    Result<FrameReader::Frame> f = reader.Next(DeadlineIn(5s), sink);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->header.request_id, id);
    if (id == 2) {
      EXPECT_FALSE(f->direct);
      EXPECT_EQ(f->payload.size(), 16u + 4096);
      EXPECT_EQ(f->payload[16], 'a');
    }
    if (id == 3) {
      EXPECT_TRUE(f->direct);
      EXPECT_EQ(f->data.data(), big.data());
      EXPECT_EQ(f->data.size(), 1u << 20);
      EXPECT_EQ(big[12345], 'b');
    }
  }
  sender.join();
  EXPECT_EQ(sink_calls, 1u);
  // End of stream between frames.
  p.client->Shutdown();
  EXPECT_EQ(reader.Next(DeadlineIn(1s)).status().code(), StatusCode::kUnavailable);
}

// The ring receivers' parser: frames fed in odd pieces come out whole and in order (a 1 MiB one
// grows the buffer), a frame not all here is reported as partial, a bad checksum is refused.
// Feeds `stream` to `frames` in pieces of varying sizes (as receives complete) and calls
// `on_frame` with each whole frame; a parse error fails the test.
void FeedInPieces(RingFrames& frames, const std::string& stream,
                  const std::function<void(const RingFrames::Parsed&)>& on_frame) {
  for (size_t at = 0; at < stream.size();) {
    std::span<uint8_t> space = frames.Space();
    ASSERT_FALSE(space.empty());
    const size_t n = std::min({stream.size() - at, space.size(), 1 + (at * 7919) % 70000});
    std::memcpy(space.data(), stream.data() + at, n);
    frames.Received(n);
    at += n;
    while (true) {
      auto next = frames.Next();
      ASSERT_TRUE(next.ok()) << next.status();
      if (!next->has_value()) break;
      on_frame(**next);
    }
  }
}

TEST(ReplicaTransport, RingFramesInPiecesAndBadChecksums) {
  const std::string stream =
      FlushFrame(1) + WriteFrame(2, 4096, 'a') + WriteFrame(3, 1 << 20, 'b') + FlushFrame(4);
  RingFrames frames;
  std::vector<uint64_t> ids;
  FeedInPieces(frames, stream, [&](const RingFrames::Parsed& p) {
    const FrameReader::Frame& f = p.frame;
    ids.push_back(f.header.request_id);
    EXPECT_EQ(p.bytes.size(), kFrameHeaderSize + f.header.payload_length);
    if (f.header.request_id == 3) {
      EXPECT_EQ(f.payload.size(), 16u + (1 << 20));
      EXPECT_EQ(f.payload[16 + 12345], 'b');
    }
  });
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_FALSE(frames.partial());
  (void)frames.Space();
  EXPECT_GT(frames.buffer_bytes(), size_t{1} << 20) << "a 1 MiB frame's buffer is kept";

  // An 8 MiB frame grows the buffer; once it is consumed, the buffer goes back.
  const std::string big = WriteFrame(6, kMaxIoBytes, 'd');
  for (size_t at = 0; at < big.size();) {
    std::span<uint8_t> space = frames.Space();
    const size_t n = std::min(big.size() - at, space.size());
    std::memcpy(space.data(), big.data() + at, n);
    frames.Received(n);
    at += n;
    auto next = frames.Next();
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(next->has_value(), at == big.size());
  }
  EXPECT_GE(frames.buffer_bytes(), big.size());
  (void)frames.Space();
  EXPECT_EQ(frames.buffer_bytes(), FrameReader::kBufferBytes);

  std::string bad = WriteFrame(5, 4096, 'c');
  const std::string half = bad.substr(0, 100);
  std::memcpy(frames.Space().data(), half.data(), half.size());
  frames.Received(half.size());
  auto waiting = frames.Next();
  ASSERT_TRUE(waiting.ok());
  EXPECT_FALSE(waiting->has_value());
  EXPECT_TRUE(frames.partial()) << "a stream ending here ends inside a frame";
  bad[200] ^= 0x01;
  const std::string rest = bad.substr(100);
  std::memcpy(frames.Space().data(), rest.data(), rest.size());
  frames.Received(rest.size());
  EXPECT_EQ(frames.Next().status().code(), StatusCode::kCorruption);
}

// With a sink, a large data frame whose prefix arrived before its data is received in place:
// Space() is the rest of the sink's buffer; a small frame, one the sink declines and one that
// arrived whole in the buffer are parsed from the buffer as before; a bad checksum in data
// received in place is Corruption, and Abandon() hands the buffer back.
TEST(ReplicaTransport, RingFramesReceiveLargeDataInPlace) {
  std::vector<std::vector<uint8_t>> given;
  auto sink = [&](const FrameHeader& h, std::span<const uint8_t> prefix) -> uint8_t* {
    if (h.request_id == 4) return nullptr;  // declined: buffered whole
    EXPECT_EQ(prefix.size(), 16u);
    given.emplace_back(h.payload_length - prefix.size());
    return given.back().data();
  };
  RingFrames frames(sink);
  const std::string stream = WriteFrame(2, 4096, 'a') + WriteFrame(3, 1 << 20, 'b') +
                             WriteFrame(4, 1 << 20, 'c') + FlushFrame(5);
  std::vector<uint64_t> ids, direct;
  FeedInPieces(frames, stream, [&](const RingFrames::Parsed& p) {
    const FrameReader::Frame& f = p.frame;
    ids.push_back(f.header.request_id);
    if (!f.direct) return;
    direct.push_back(f.header.request_id);
    EXPECT_EQ(f.payload.size(), 16u);
    ASSERT_EQ(f.data.size(), size_t{1} << 20);
    EXPECT_EQ(f.data.data(), given.back().data()) << "the sink's buffer";
    EXPECT_EQ(std::count(f.data.begin(), f.data.end(), 'b'), 1 << 20);
    EXPECT_TRUE(p.bytes.empty());
  });
  EXPECT_EQ(ids, (std::vector<uint64_t>{2, 3, 4, 5}));
  EXPECT_EQ(direct, (std::vector<uint64_t>{3}));
  EXPECT_FALSE(frames.partial());
  EXPECT_EQ(frames.Abandon().first, nullptr);

  // A whole frame in one receive is parsed from the buffer (nothing left to receive in place).
  const std::string whole = WriteFrame(6, 128 << 10, 'w');
  std::memcpy(frames.Space().data(), whole.data(), whole.size());
  frames.Received(whole.size());
  auto one = frames.Next();
  ASSERT_TRUE(one.ok() && one->has_value());
  EXPECT_FALSE((*one)->frame.direct);

  std::string bad = WriteFrame(7, 1 << 20, 'e');
  bad[kFrameHeaderSize + 16 + 600000] ^= 0x01;
  for (size_t at = 0; at < bad.size();) {
    std::span<uint8_t> space = frames.Space();
    const size_t n = std::min(bad.size() - at, std::min<size_t>(space.size(), 65536));
    std::memcpy(space.data(), bad.data() + at, n);
    frames.Received(n);
    at += n;
    auto next = frames.Next();
    if (at < bad.size()) {
      ASSERT_TRUE(next.ok() && !next->has_value());
      EXPECT_TRUE(frames.partial());
    } else {
      EXPECT_EQ(next.status().code(), StatusCode::kCorruption);
    }
  }
  const auto [abandoned, size] = frames.Abandon();
  EXPECT_EQ(abandoned, given.back().data());
  EXPECT_EQ(size, size_t{1} << 20);
  EXPECT_FALSE(frames.partial());
}

TEST(ReplicaTransport, FrameReaderResumesAfterTimeoutsMidFrame) {
  Pair p;
  const std::string frame = WriteFrame(9, 256 << 10, 'z');
  FrameReader reader(p.server.get());
  std::vector<uint8_t> dst(256 << 10);
  auto sink = [&](const FrameHeader&, std::span<const uint8_t>) { return dst.data(); };
  // Half a header, then half the data: each call times out and keeps its progress.
  ASSERT_TRUE(SendAll(p.client.get(), frame.substr(0, 20)).ok());
  EXPECT_TRUE(IsTimedOut(reader.Next(DeadlineIn(20ms), sink).status()));
  ASSERT_TRUE(SendAll(p.client.get(), frame.substr(20, 100000)).ok());
  EXPECT_TRUE(IsTimedOut(reader.Next(DeadlineIn(20ms), sink).status()));
  ASSERT_TRUE(SendAll(p.client.get(), frame.substr(100020)).ok());
  Result<FrameReader::Frame> f = reader.Next(DeadlineIn(5s), sink);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->header.request_id, 9u);
  EXPECT_EQ(dst.back(), 'z');
}

TEST(ReplicaTransport, FrameReaderRejectsBadInput) {
  const std::string good = WriteFrame(1, 100000, 'q');
  std::string bad_sum = good;
  bad_sum[60000] ^= 1;
  std::string small_bad_sum = FlushFrame(5);
  small_bad_sum[16] ^= 1;  // request id: the header still decodes
  std::string oversized = FlushFrame(1);
  oversized[8] = oversized[9] = oversized[10] = oversized[11] = static_cast<char>(0xff);
  const std::string garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(40, 'x');
  struct Case {
    std::string bytes;
    bool truncate;
  };
  for (const Case& c :
       {Case{bad_sum, false}, Case{small_bad_sum, false}, Case{oversized, false},
        Case{garbage, false}, Case{good.substr(0, 5000), true}, Case{good.substr(0, 30), true}}) {
    Pair p;
    ASSERT_TRUE(SendAll(p.client.get(), c.bytes).ok());
    if (c.truncate) p.client->Shutdown();
    FrameReader reader(p.server.get());
    Result<FrameReader::Frame> f = reader.Next(DeadlineIn(5s));
    ASSERT_FALSE(f.ok());
    EXPECT_EQ(f.status().code(), StatusCode::kCorruption) << f.status();
  }
}

// --- FaultTransport -----------------------------------------------------------------------------

// Collects the request ids of frames arriving on `c` (a thread).
class Collector {
 public:
  explicit Collector(Connection* c) : reader_(c) {
    thread_ = std::thread([this] {
      while (true) {
        Result<FrameReader::Frame> f = reader_.Next(kNoDeadline);
        if (!f.ok()) break;
        std::lock_guard lock(mu_);
        ids_.push_back(f->header.request_id);
      }
    });
  }
  ~Collector() { thread_.join(); }
  std::vector<uint64_t> WaitFor(size_t n, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = SteadyClock::now() + timeout;
    while (SteadyClock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        if (ids_.size() >= n) return ids_;
      }
      std::this_thread::sleep_for(2ms);
    }
    std::lock_guard lock(mu_);
    return ids_;
  }

 private:
  FrameReader reader_;
  std::mutex mu_;
  std::vector<uint64_t> ids_;
  std::thread thread_;
};

TEST(ReplicaFaultTransport, DelayDropReorderAndHeal) {
  TcpTransport tcp;
  FaultTransport fault(&tcp);
  Pair p(&fault);
  const std::string addr = p.listener->address();
  Collector at_server(p.server.get());

  fault.Delay(addr, Direction::kToServer, 100ms);
  const auto t0 = SteadyClock::now();
  ASSERT_TRUE(SendAll(p.client.get(), FlushFrame(1) + FlushFrame(2)).ok());
  EXPECT_LT(SteadyClock::now() - t0, 50ms);  // Send does not wait for the delay
  EXPECT_EQ(at_server.WaitFor(2), (std::vector<uint64_t>{1, 2}));
  EXPECT_GE(SteadyClock::now() - t0, 95ms);

  fault.Heal(addr);
  fault.Drop(addr, Direction::kToServer, 2);
  ASSERT_TRUE(SendAll(p.client.get(), FlushFrame(3) + FlushFrame(4) + FlushFrame(5)).ok());
  EXPECT_EQ(at_server.WaitFor(3), (std::vector<uint64_t>{1, 2, 5}));
  EXPECT_EQ(fault.frames_lost(), 2u);

  fault.Reorder(addr, Direction::kToServer);
  ASSERT_TRUE(SendAll(p.client.get(), FlushFrame(6) + FlushFrame(7)).ok());
  EXPECT_EQ(at_server.WaitFor(5), (std::vector<uint64_t>{1, 2, 5, 7, 6}));

  // Replies (server -> client) are faulted at the dialing end too.
  fault.HealAll();
  fault.Blackhole(addr, Direction::kToClient);
  ASSERT_TRUE(SendAll(p.server.get(), FlushFrame(8)).ok());
  FrameReader reader(p.client.get());
  EXPECT_TRUE(IsTimedOut(reader.Next(DeadlineIn(100ms)).status()));
  fault.Heal(addr);
  ASSERT_TRUE(SendAll(p.server.get(), FlushFrame(9)).ok());
  Result<FrameReader::Frame> f = reader.Next(DeadlineIn(2s));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->header.request_id, 9u);  // 8 is lost for good
  p.client->Shutdown();
}

TEST(ReplicaFaultTransport, CutBreaksTheLinkAtOnce) {
  TcpTransport tcp;
  FaultTransport fault(&tcp);
  Pair p(&fault);
  const std::string addr = p.listener->address();
  FrameReader reader(p.client.get());
  std::thread cutter([&] {
    std::this_thread::sleep_for(50ms);
    fault.Cut(addr);
  });
  const auto t0 = SteadyClock::now();
  Result<FrameReader::Frame> f = reader.Next(DeadlineIn(5s));
  cutter.join();
  EXPECT_FALSE(f.ok());
  EXPECT_FALSE(IsTimedOut(f.status()));
  EXPECT_LT(SteadyClock::now() - t0, 1s);
  EXPECT_FALSE(SendAll(p.client.get(), FlushFrame(1)).ok());
  // The listening end sees the stream end too.
  uint8_t buf[16];
  Result<size_t> n = p.server->Recv(buf, DeadlineIn(2s));
  EXPECT_TRUE(!n.ok() || *n == 0);
  // New connections are refused until healed.
  EXPECT_FALSE(fault.Connect(addr, DeadlineIn(1s)).ok());
  fault.Heal(addr);
  std::thread accept([&] { (void)p.listener->Accept(DeadlineIn(2s)); });
  EXPECT_TRUE(fault.Connect(addr, DeadlineIn(2s)).ok());
  accept.join();
}

TEST(ReplicaFaultTransport, PartitionedConnectsHangToTheirDeadline) {
  TcpTransport tcp;
  FaultTransport fault(&tcp);
  auto l = std::move(tcp.Listen("127.0.0.1:0")).value();
  fault.Partition({l->address(), "10.0.0.1:1"});
  const auto t0 = SteadyClock::now();
  Result<std::unique_ptr<Connection>> c = fault.Connect(l->address(), DeadlineIn(100ms));
  EXPECT_TRUE(IsTimedOut(c.status())) << c.status();
  EXPECT_GE(SteadyClock::now() - t0, 95ms);
  fault.HealAll();
  EXPECT_TRUE(fault.Connect(l->address(), DeadlineIn(1s)).ok());
}

}  // namespace
}  // namespace shale::replication
