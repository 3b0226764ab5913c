// ReplicaServer and ReplicaClient over real TCP loopback against an Engine on a file pool:
// I/O of every kind, many requests in flight and out-of-order completion, epoch fencing that
// survives restarts, OPEN checks, authentication failures, bad frames of every kind (the server
// closes that connection, logs it, and keeps serving the others), bounded connections, the
// handshake timeout, Stop with requests in flight, and faults from FaultTransport (a cut link
// fails requests with connection loss, a delay past the timeout gives the timeout error).
#include "replication/replica_server.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "engine/io/socket_testing.h"
#include "engine/volume/volume_io.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"

namespace shale::replication {
namespace {

using namespace std::chrono_literals;

constexpr char kSecret[] = "replica-test-cluster-secret";
constexpr uint64_t kVolSize = 64 * kMiB;

ClusterSecret Secret(const std::string& s = kSecret) { return *ClusterSecret::FromBytes(s); }

std::vector<uint8_t> Pattern(size_t len, uint64_t seed) {
  std::vector<uint8_t> v(len);
  std::mt19937_64 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// A request with its own buffer and a promise fulfilled by done().
struct Op {
  ReplicaRequest r;
  std::vector<uint8_t> buf;
  std::promise<void> finished;
  std::future<void> future = finished.get_future();
  int order = -1;  // completion order, when a counter is given
  std::atomic<int>* counter = nullptr;

  Op(ReplicaOp op, uint64_t offset, uint64_t length, uint32_t flags = 0) {
    r.op = op;
    r.offset = offset;
    r.length = length;
    r.flags = flags;
    r.ctx = this;
    r.done = [](ReplicaRequest* req) {
      auto* self = static_cast<Op*>(req->ctx);
      if (self->counter) self->order = self->counter->fetch_add(1);
      self->finished.set_value();
    };
    if (op == ReplicaOp::kRead || op == ReplicaOp::kWrite) {
      buf.resize(length);
      r.buf = buf.data();
    }
  }
  bool Wait(std::chrono::milliseconds t = 20s) {
    return future.wait_for(t) == std::future_status::ready;
  }
};

// Every log line of the process from its first use on (added once, while nothing else logs:
// the sinks of a logger are not safe to change while other threads log).
class LogCapture final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  static LogCapture& Get() {
    static LogCapture* capture = [] {
      auto sink = std::make_shared<LogCapture>();
      spdlog::default_logger()->sinks().push_back(sink);
      return sink.get();
    }();
    return *capture;
  }
  std::string text() {
    std::lock_guard lock(mutex_);
    return text_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    text_.append(msg.payload.data(), msg.payload.size());
    text_.push_back('\n');
  }
  void flush_() override {}

 private:
  std::string text_;
};

// Holds every reactor of an engine (each runs a task that waits) until Release() or the end of
// its scope, also when a test fails on the way: nothing the engine serves makes progress meanwhile.
class ReactorHold {
 public:
  explicit ReactorHold(Engine* engine) : reactors_(engine->reactors().size()) {
    for (const auto& r : engine->reactors()) {
      r->Post([s = state_] {
        std::unique_lock lock(s->mu);
        ++s->held;
        s->cv.notify_all();
        s->cv.wait(lock, [&] { return s->released; });
      });
    }
  }
  ~ReactorHold() { Release(); }
  bool WaitHeld(std::chrono::milliseconds timeout) {
    std::unique_lock lock(state_->mu);
    return state_->cv.wait_for(lock, timeout, [&] { return state_->held == reactors_; });
  }
  void Release() {
    std::lock_guard lock(state_->mu);
    state_->released = true;
    state_->cv.notify_all();
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    size_t held = 0;
    bool released = false;
  };
  const std::shared_ptr<State> state_ = std::make_shared<State>();
  const size_t reactors_;
};

class ReplicaServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/shale-replica-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
    uuid_ = Uuid::Random();
    OpenEngine();
    ASSERT_TRUE(engine_
                    ->CreateVolume({.name = "vol",
                                    .size_bytes = kVolSize,
                                    .labels = {{kReplicaUuidLabel, uuid_.ToString()}}})
                    .ok());
    ASSERT_TRUE(engine_->CreateVolume({.name = "plain", .size_bytes = kVolSize}).ok());
    auto reactor = Reactor::Start({.name = "target"});
    ASSERT_TRUE(reactor.ok()) << reactor.status();
    reactor_ = std::move(reactor).value();
    StartServer();
  }
  void TearDown() override {
    server_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
    reactor_.reset();
    std::filesystem::remove_all(dir_);
  }

  void OpenEngine() {
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 256 * kMiB;
    options.reactors = 2;
    options.commit_interval_ms = 100;
    auto engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
  }

  void StartServer(ReplicaServerOptions o = {}) {
    o.listen_address = "127.0.0.1:0";
    o.node_name = "node-b";
    o.secret = Secret();
    server_ = std::make_unique<ReplicaServer>(engine_.get(), &tcp_, std::move(o));
    const Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
  }

  ReplicaClientOptions ClientOptions(uint64_t epoch) {
    ReplicaClientOptions o;
    o.address = server_->address();
    o.node_name = "node-a";
    o.secret = Secret();
    o.volume = "vol";
    o.volume_uuid = uuid_;
    o.size_bytes = kVolSize;
    o.epoch = epoch;
    o.transport = &fault_;
    o.completion_reactor = reactor_.get();
    return o;
  }
  // A client over plain TCP, where the reactors send and receive themselves (the fault-injecting
  // transport never sends without waiting and keeps the receiver thread).
  std::unique_ptr<ReplicaClient> ConnectPlainTcp(ReplicaClientOptions o) {
    o.transport = &tcp_;
    auto connected = ReplicaClient::Connect(std::move(o));
    EXPECT_TRUE(connected.ok()) << connected.status();
    return connected.ok() ? std::move(connected).value() : nullptr;
  }
  // Client options for a replica placed with `spec`.
  ReplicaClientOptions SpecOptions(const ReplicaSpec& spec, uint64_t epoch) {
    ReplicaClientOptions o = ClientOptions(epoch);
    o.volume = spec.volume;
    o.volume_uuid = spec.uuid;
    o.size_bytes = spec.size_bytes;
    return o;
  }
  std::unique_ptr<ReplicaClient> Connect(uint64_t epoch = 1,
                                         std::chrono::milliseconds timeout = 5000ms) {
    ReplicaClientOptions o = ClientOptions(epoch);
    o.request_timeout = timeout;
    auto c = ReplicaClient::Connect(std::move(o));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  // Submits on the target's reactor, as the replication layer does.
  void Submit(ReplicaClient* c, Op* op) {
    reactor_->Post([c, op] { c->Submit(&op->r); });
  }
  // One op per size, the i-th at offset i * stride, all submitted in one reactor turn, waited
  // for and expected to succeed; WRITEs carry Pattern(size, seed + i).
  // `sent` (optional) runs once the batch is submitted, before the wait.
  std::vector<std::unique_ptr<Op>> RunBatch(ReplicaClient* c, ReplicaOp op,
                                            const std::vector<uint64_t>& sizes, uint64_t stride,
                                            uint64_t seed,
                                            const std::function<void()>& sent = nullptr) {
    std::vector<std::unique_ptr<Op>> ops;
    for (size_t i = 0; i < sizes.size(); ++i) {
      ops.push_back(std::make_unique<Op>(op, i * stride, sizes[i]));
      if (op == ReplicaOp::kWrite) ops.back()->buf = Pattern(sizes[i], seed + i);
      ops.back()->r.buf = ops.back()->buf.data();
    }
    reactor_->Post([&] {
      for (auto& x : ops) c->Submit(&x->r);
    });
    if (sent) sent();
    for (auto& x : ops) {
      EXPECT_TRUE(x->Wait());
      EXPECT_EQ(x->r.outcome, ReplicaOutcome::kOk) << x->r.status;
    }
    return ops;
  }
  ReplicaOutcome Do(ReplicaClient* c, Op* op) {
    Submit(c, op);
    EXPECT_TRUE(op->Wait());
    return op->r.outcome;
  }
  void WriteAt(ReplicaClient* c, uint64_t offset, const std::vector<uint8_t>& data) {
    Op w(ReplicaOp::kWrite, offset, data.size());
    w.buf = data;
    w.r.buf = w.buf.data();
    ASSERT_EQ(Do(c, &w), ReplicaOutcome::kOk) << w.r.status;
  }
  std::vector<uint8_t> ReadAt(ReplicaClient* c, uint64_t offset, size_t length) {
    Op r(ReplicaOp::kRead, offset, length);
    EXPECT_EQ(Do(c, &r), ReplicaOutcome::kOk) << r.r.status;
    return r.buf;
  }
  // The server still serves: a fresh client writes and reads back.
  void ExpectServing() {
    auto c = Connect(CurrentEpoch());
    ASSERT_NE(c, nullptr);
    const auto data = Pattern(8192, 77);
    WriteAt(c.get(), 32 * kMiB, data);
    EXPECT_EQ(ReadAt(c.get(), 32 * kMiB, 8192), data);
  }
  uint64_t CurrentEpoch() {
    auto info = engine_->GetVolume("vol");
    return LoadReplicaState(engine_.get(), info->pool, info->id)->epoch;
  }

  // A connection that completed HELLO/AUTH/OPEN by hand, for sending frames by hand.
  // The payload of an OPEN of the test's volume.
  std::string OpenPayload() const {
    OpenRequest open;
    open.volume_uuid = uuid_.bytes;
    open.size_bytes = kVolSize;
    open.volume = "vol";
    std::string body;
    Encode(open, &body);
    return body;
  }
  // A WRITE of 4 KiB of `fill` at `offset`, at the current epoch: its header and payload.
  FrameHeader WriteHeader(uint64_t id) {
    FrameHeader h;
    h.type = static_cast<uint8_t>(MsgType::kWrite);
    h.request_id = id;
    h.epoch = CurrentEpoch();
    return h;
  }
  static std::string WritePayload(uint64_t offset, char fill) {
    std::string body;
    Encode(IoRange{offset, 4096}, &body);
    body.append(4096, fill);
    return body;
  }
  std::unique_ptr<Connection> RawOpened() {
    auto conn = std::move(tcp_.Connect(server_->address(), DeadlineIn(5s))).value();
    FrameReader reader(conn.get());
    ClientHandshake hs(Secret(), "raw", *RandomNonce());
    auto hello = reader.Next(DeadlineIn(5s));
    EXPECT_TRUE(hello.ok()) << hello.status();
    std::string auth;
    EXPECT_TRUE(hs.OnHello(hello->header, hello->payload, &auth).ok());
    EXPECT_TRUE(Send(conn.get(), auth).ok());
    auto reply = reader.Next(DeadlineIn(5s));
    EXPECT_TRUE(hs.OnAuthReply(reply->header, reply->payload).ok());
    FrameHeader h;
    h.type = static_cast<uint8_t>(MsgType::kOpen);
    h.epoch = CurrentEpoch();
    EXPECT_TRUE(Send(conn.get(), EncodeFrame(h, OpenPayload())).ok());
    auto opened = reader.Next(DeadlineIn(5s));
    EXPECT_TRUE(opened.ok() && opened->header.status == 0);
    return conn;
  }
  static Status Send(Connection* c, std::string_view bytes) {
    const ConstBuffer b = AsBytes(bytes);
    return c->Send(std::span(&b, 1), DeadlineIn(5s));
  }
  // True once the server closed `c` (after answering whatever it answered).
  static bool ClosedByServer(Connection* c, std::chrono::milliseconds within = 5s) {
    const Deadline deadline = DeadlineIn(within);
    uint8_t buf[4096];
    while (SteadyClock::now() < deadline) {
      Result<size_t> n = c->Recv(buf, deadline);
      if (!n.ok()) return !IsTimedOut(n.status());
      if (*n == 0) return true;
    }
    return false;
  }

  std::string dir_;
  Uuid uuid_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Reactor> reactor_;
  TcpTransport tcp_;
  FaultTransport fault_{&tcp_};
  std::unique_ptr<ReplicaServer> server_;
};

// --- I/O ----------------------------------------------------------------------------------------

TEST_F(ReplicaServiceTest, ReadWriteFlushDiscardZeroes) {
  auto c = Connect(3);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->server_node(), "node-b");
  EXPECT_EQ(c->opened().size_bytes, kVolSize);
  EXPECT_EQ(c->opened().epoch, 3u);

  const auto a = Pattern(1 * kMiB, 1);
  WriteAt(c.get(), 0, a);
  EXPECT_EQ(ReadAt(c.get(), 0, a.size()), a);
  // Large (8 MiB: data received in place on both sides), small and unaligned-to-4K requests.
  const auto big = Pattern(kMaxIoBytes, 2);
  WriteAt(c.get(), 16 * kMiB, big);
  EXPECT_EQ(ReadAt(c.get(), 16 * kMiB, big.size()), big);
  const auto small = Pattern(512, 3);
  WriteAt(c.get(), 8 * kMiB + 512, small);
  EXPECT_EQ(ReadAt(c.get(), 8 * kMiB + 512, 512), small);
  Op fua(ReplicaOp::kWrite, 4096, 4096, kVolumeFua);
  EXPECT_EQ(Do(c.get(), &fua), ReplicaOutcome::kOk);
  Op flush(ReplicaOp::kFlush, 0, 0);
  EXPECT_EQ(Do(c.get(), &flush), ReplicaOutcome::kOk) << flush.r.status;

  Op discard(ReplicaOp::kDiscard, 0, 65536);
  EXPECT_EQ(Do(c.get(), &discard), ReplicaOutcome::kOk) << discard.r.status;
  EXPECT_EQ(ReadAt(c.get(), 0, 65536), std::vector<uint8_t>(65536, 0));
  Op zeroes(ReplicaOp::kWriteZeroes, 65536, 65536, kVolumeNoUnmap | kVolumeFua);
  EXPECT_EQ(Do(c.get(), &zeroes), ReplicaOutcome::kOk) << zeroes.r.status;
  auto rest = ReadAt(c.get(), 0, 1 * kMiB);
  EXPECT_EQ(std::vector<uint8_t>(rest.begin(), rest.begin() + 131072),
            std::vector<uint8_t>(131072, 0));
  EXPECT_TRUE(std::equal(rest.begin() + 131072, rest.end(), a.begin() + 131072));

  // HASH_RANGES: XXH3-128 of each region, as the client would compute it locally.
  Op hash(ReplicaOp::kHashRanges, 16 * kMiB, 8 * kMiB);
  hash.r.region_size = 1 * kMiB;
  ASSERT_EQ(Do(c.get(), &hash), ReplicaOutcome::kOk) << hash.r.status;
  ASSERT_EQ(hash.r.hashes.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(hash.r.hashes[i], HashContent128(big.data() + i * kMiB, kMiB)) << i;
  }
  // Small regions, read in larger chunks by the server; the range may end inside a region.
  Op blocks(ReplicaOp::kHashRanges, 16 * kMiB, 4 * kMiB - 512);
  blocks.r.region_size = 4096;
  ASSERT_EQ(Do(c.get(), &blocks), ReplicaOutcome::kOk) << blocks.r.status;
  ASSERT_EQ(blocks.r.hashes.size(), 1024u);
  for (size_t i = 0; i < 1024; ++i) {
    const size_t len = i == 1023 ? 4096 - 512 : 4096;
    ASSERT_EQ(blocks.r.hashes[i], HashContent128(big.data() + i * 4096, len)) << i;
  }
  // GET_INFO: size, epoch, allocated ranges (the discarded 64 KiB is a hole).
  Op info(ReplicaOp::kGetInfo, 0, kVolSize);
  ASSERT_EQ(Do(c.get(), &info), ReplicaOutcome::kOk) << info.r.status;
  EXPECT_EQ(info.r.info.size_bytes, kVolSize);
  EXPECT_EQ(info.r.info.epoch, 3u);
  EXPECT_EQ(info.r.info.next_offset, kVolSize);
  ASSERT_FALSE(info.r.info.allocated.empty());
  EXPECT_EQ(info.r.info.allocated.front().first, 65536u);
  EXPECT_EQ(info.r.info.allocated.back(), std::make_pair(16 * kMiB, 8 * kMiB));

  // Errors the replica reports: out of range, unaligned (checked by the client first).
  Op past(ReplicaOp::kWriteZeroes, kVolSize, 4096);
  EXPECT_EQ(Do(c.get(), &past), ReplicaOutcome::kError);
  EXPECT_EQ(past.r.status.code(), StatusCode::kOutOfRange);
  Op odd(ReplicaOp::kRead, 100, 512);
  EXPECT_EQ(Do(c.get(), &odd), ReplicaOutcome::kError);
  Op snap(ReplicaOp::kSnapshot, 0, 0);
  snap.r.snapshot_name = "s1";
  EXPECT_EQ(Do(c.get(), &snap), ReplicaOutcome::kError);  // no snapshot handler
  EXPECT_EQ(snap.r.status.code(), StatusCode::kNotSupported);
  c->Close();
  EXPECT_GT(engine_->GetVolume("vol")->writes, 0u);
}

TEST_F(ReplicaServiceTest, ManyInFlightCompleteOutOfOrder) {
  server_.reset();
  StartServer({.max_requests_in_flight = 16, .max_bytes_in_flight = 4 * kMiB});
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->opened().max_requests_in_flight, 16u);
  // A slow request first (1024 sequential device reads and hashes), then many quick ones.
  for (uint64_t off = 0; off < 32 * kMiB; off += kMaxIoBytes)
    WriteAt(c.get(), off, Pattern(kMaxIoBytes, off));
  std::atomic<int> order{0};
  std::vector<std::unique_ptr<Op>> ops;
  ops.push_back(std::make_unique<Op>(ReplicaOp::kHashRanges, 0, 32 * kMiB));
  ops.back()->r.region_size = 32 * kKiB;
  for (int i = 0; i < 400; ++i) {
    const uint64_t off = 40 * kMiB + uint64_t(i) * 8192;
    ops.push_back(std::make_unique<Op>(i % 2 ? ReplicaOp::kRead : ReplicaOp::kWrite, off, 8192));
    if (i % 2 == 0) ops.back()->buf = Pattern(8192, i);
    ops.back()->r.buf = ops.back()->buf.data();
  }
  reactor_->Post([&] {
    for (auto& op : ops) {
      op->counter = &order;
      c->Submit(&op->r);
    }
  });
  for (auto& op : ops) {
    ASSERT_TRUE(op->Wait());
    EXPECT_EQ(op->r.outcome, ReplicaOutcome::kOk) << op->r.status;
  }
  EXPECT_GT(ops.front()->order, 0) << "the slow request completed first";
  for (int i = 0; i < 400; i += 2) {
    EXPECT_EQ(ReadAt(c.get(), 40 * kMiB + uint64_t(i) * 8192, 8192), Pattern(8192, i));
  }
  EXPECT_EQ(ops.front()->r.hashes.size(), 1024u);
}

// Over plain TCP the reactors send themselves (no sender-thread hop): requests queued in one
// completion batch go out with one non-blocking writev at its end, replies likewise. Batches far
// larger than the socket takes at once leave a tail that the sender thread finishes before
// anything else: the streams stay intact both ways (every write lands, every read returns its
// data, in any order of completion).
TEST_F(ReplicaServiceTest, TheReactorsSendThemselvesAndTheSenderThreadsFinishTheirTails) {
  std::unique_ptr<ReplicaClient> c = ConnectPlainTcp(ClientOptions(1));
  ASSERT_NE(c, nullptr);
  constexpr uint64_t kLen = kMaxIoBytes;  // 8 MiB
  const std::vector<uint64_t> sizes(6, kLen);
  // The replica's reactors are held while the writes go out, so that the socket takes no more
  // than its buffers hold (a replica reading as fast as the batch is written, on a busy machine,
  // could take it all) and the sender thread must finish the batch.
  ReactorHold hold(engine_.get());
  ASSERT_TRUE(hold.WaitHeld(20s));
  (void)RunBatch(c.get(), ReplicaOp::kWrite, sizes, kLen, 900, [&] {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (c->stats().tails == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    hold.Release();
  });
  const std::vector<std::unique_ptr<Op>> reads =
      RunBatch(c.get(), ReplicaOp::kRead, sizes, kLen, 900);
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_TRUE(reads[i]->buf == Pattern(kLen, 900 + i)) << "read " << i;
  }
  const ReplicaClientStats cs = c->stats();
  EXPECT_GT(cs.direct_sends, 0u);
  EXPECT_GT(cs.tails, 0u) << "48 MiB in one batch: the socket took a part";
  const ReplicaServerStats ss = server_->stats();
  EXPECT_GT(ss.direct_reply_sends, 0u);
  EXPECT_GT(ss.reply_tails, 0u) << "8 MiB read replies: the socket took a part";
}

// Small writes kept in flight from the completion reactor, as the replication layer keeps them:
// the reactor sends every one itself and the sender thread sleeps throughout. (Before, every reply
// woke it to look at the window: ~15 % of a core in futex wake-ups and lock hand-offs on the target
// at 30k replicated 4 KiB writes/s, and the woken thread raced the reactor to send.)
TEST_F(ReplicaServiceTest, ASteadyStreamOfSmallWritesNeverWakesTheSenderThread) {
  std::unique_ptr<ReplicaClient> c = ConnectPlainTcp(ClientOptions(1));
  ASSERT_NE(c, nullptr);
  constexpr size_t kDepth = 8;
  constexpr size_t kTotal = 3000;
  struct Stream {
    ReplicaClient* client = nullptr;
    std::vector<uint8_t> data = Pattern(4096, 31);
    std::vector<ReplicaRequest> requests = std::vector<ReplicaRequest>(kTotal);
    size_t submitted = 0;  // on the reactor only
    std::atomic<size_t> finished{0};
    std::atomic<size_t> failed{0};
    std::promise<void> all;
    void SubmitNext() {
      ReplicaRequest& r = requests[submitted];
      r.op = ReplicaOp::kWrite;
      r.offset = (submitted % 1024) * 4096;
      r.length = 4096;
      r.buf = data.data();
      r.ctx = this;
      r.done = [](ReplicaRequest* req) {
        auto* self = static_cast<Stream*>(req->ctx);
        if (req->outcome != ReplicaOutcome::kOk) self->failed.fetch_add(1);
        if (self->submitted < kTotal) self->SubmitNext();  // on the reactor, as the layer does
        if (self->finished.fetch_add(1) + 1 == kTotal) self->all.set_value();
      };
      ++submitted;
      client->Submit(&r);
    }
  } stream;
  stream.client = c.get();
  std::future<void> all = stream.all.get_future();
  reactor_->Post([&] {
    for (size_t i = 0; i < kDepth; ++i) stream.SubmitNext();
  });
  ASSERT_EQ(all.wait_for(60s), std::future_status::ready)
      << stream.finished.load() << " of " << kTotal << " finished";
  EXPECT_EQ(stream.failed.load(), 0u);
  const ReplicaClientStats cs = c->stats();
  // The sender thread may legitimately find work a few times: its first look at the queue can
  // come late (a loaded machine starts it after the first Submits), and a futex wait may return
  // spuriously between a Submit and the reactor's deferred flush. A wake-up per reply is kTotal
  // wake-ups and (measured with the per-reply notify put back) ~70 thread sends.
  EXPECT_LT(cs.sends - cs.direct_sends, kTotal / 300) << "the sender thread raced the reactor";
  EXPECT_EQ(cs.tails, 0u);
  EXPECT_LT(cs.sender_wakeups, kTotal / 100) << "the sender thread was woken for nothing";
}

// On plain TCP the client's reactor receives the replies on its own ring: no receiver thread
// and no Reactor::Post; replies of every size arrive whole (a 1 MiB READ reply grows the
// buffer), a request the replica does not answer in time times out on the reactor's timer, and a
// server that goes away fails the client.
TEST_F(ReplicaServiceTest, TheReactorReceivesTheRepliesItself) {
  ReplicaClientOptions o = ClientOptions(1);
  o.request_timeout = 500ms;
  std::unique_ptr<ReplicaClient> c = ConnectPlainTcp(std::move(o));
  ASSERT_NE(c, nullptr);
  const std::vector<uint64_t> sizes = {4096, kMiB, 65536, 512, 3 * kMiB, 8192};
  (void)RunBatch(c.get(), ReplicaOp::kWrite, sizes, 4 * kMiB, 70);
  const std::vector<std::unique_ptr<Op>> reads =
      RunBatch(c.get(), ReplicaOp::kRead, sizes, 4 * kMiB, 70);
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_TRUE(reads[i]->buf == Pattern(sizes[i], 70 + i)) << "read " << i;
  }
  const ReplicaClientStats cs = c->stats();
  EXPECT_GT(cs.ring_receives, 0u);
  // (A reply that beats the sender thread's send of its request's tail is completed by that
  // thread through Reactor::Post: `posts` need not be 0.)
  EXPECT_EQ(cs.requests, 2 * sizes.size());

  // The replica's volume reactor held past the timeout: the reactor's timer expires the request.
  auto vol = engine_->OpenVolume("vol");
  ASSERT_TRUE(vol.ok()) << vol.status();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  (*vol)->reactor()->Post([released] { released.wait_for(10s); });
  Op slow(ReplicaOp::kFlush, 0, 0);
  const auto t0 = SteadyClock::now();
  EXPECT_EQ(Do(c.get(), &slow), ReplicaOutcome::kTimeout);
  EXPECT_LT(SteadyClock::now() - t0, 5s);
  release.set_value();

  // The server goes away: the stream's end fails the client.
  server_->Stop();
  const Deadline deadline = DeadlineIn(10s);
  while (!c->failed() && SteadyClock::now() < deadline) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(c->failed());
  Op after(ReplicaOp::kFlush, 0, 0);
  EXPECT_EQ(Do(c.get(), &after), ReplicaOutcome::kConnectionLost);
  c.reset();  // the receiver frees itself after its last completion (ASan checks the rest)
}

// --- epochs -------------------------------------------------------------------------------------

// A target's own requests sent before one that raises its epoch (after a replica's leave or join
// the target's next requests carry the new epoch) are never refused as stale: only another
// connection's older requests are. Writes at epoch 1 wait on the volume's reactor (held by the
// test) while writes at epoch 2 arrive behind them; the epoch must not rise before the first
// ones ran (before the fix it did: they were refused, and the target fenced itself). The reactor
// is released once epoch 2 is persisted, or after 1 s.
TEST_F(ReplicaServiceTest, ARaiseOnTheSameConnectionNeverRefusesTheRequestsBeforeIt) {
  auto c = Connect(1);
  ASSERT_NE(c, nullptr);
  auto vol = engine_->OpenVolume("vol");
  ASSERT_TRUE(vol.ok()) << vol.status();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  (*vol)->reactor()->Post([released] { released.wait(); });
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < 64; ++i) {
    ops.push_back(std::make_unique<Op>(ReplicaOp::kWrite, uint64_t(i) * 4096, 4096));
    ops.back()->buf = Pattern(4096, i);
    ops.back()->r.buf = ops.back()->buf.data();
  }
  reactor_->Post([&] {
    for (int i = 0; i < 64; ++i) {
      if (i == 32) c->SetEpoch(2);
      c->Submit(&ops[static_cast<size_t>(i)]->r);
    }
  });
  bool raised_early = false;
  for (const auto until = std::chrono::steady_clock::now() + 1000ms;
       !raised_early && std::chrono::steady_clock::now() < until;) {
    raised_early = CurrentEpoch() == 2;
    if (!raised_early) std::this_thread::sleep_for(5ms);  // polling, bounded by `until`
  }
  release.set_value();
  EXPECT_FALSE(raised_early) << "epoch 2 persisted while epoch-1 requests were still waiting";
  for (auto& op : ops) {
    ASSERT_TRUE(op->Wait());
    EXPECT_EQ(op->r.outcome, ReplicaOutcome::kOk) << op->r.status;
  }
  EXPECT_EQ(CurrentEpoch(), 2u);
}

TEST_F(ReplicaServiceTest, OlderEpochIsFencedAndTheFenceSurvivesRestarts) {
  auto old_target = Connect(5);
  ASSERT_NE(old_target, nullptr);
  WriteAt(old_target.get(), 0, Pattern(4096, 1));
  auto new_target = Connect(6);
  ASSERT_NE(new_target, nullptr);
  EXPECT_EQ(CurrentEpoch(), 6u);  // persisted before OPEN returned

  Op stale(ReplicaOp::kWrite, 0, 4096);
  EXPECT_EQ(Do(old_target.get(), &stale), ReplicaOutcome::kStaleEpoch);
  EXPECT_TRUE(IsStaleEpoch(stale.r.status)) << stale.r.status;
  Op stale_read(ReplicaOp::kRead, 0, 4096);
  EXPECT_EQ(Do(old_target.get(), &stale_read), ReplicaOutcome::kStaleEpoch);
  EXPECT_FALSE(old_target->failed()) << "STALE_EPOCH is not a connection failure";
  WriteAt(new_target.get(), 0, Pattern(4096, 2));
  EXPECT_EQ(ReadAt(new_target.get(), 0, 4096), Pattern(4096, 2));

  // A request carrying a newer epoch raises (and persists) it first.
  new_target->SetEpoch(8);
  Op gen(ReplicaOp::kSetGeneration, 0, 0);
  gen.r.generation = 7;
  ASSERT_EQ(Do(new_target.get(), &gen), ReplicaOutcome::kOk) << gen.r.status;
  EXPECT_EQ(gen.r.state.epoch, 8u);
  EXPECT_EQ(gen.r.state.generation, 7u);
  Op too_new(ReplicaOp::kSetGeneration, 0, 0);
  too_new.r.generation = 9;
  EXPECT_EQ(Do(new_target.get(), &too_new), ReplicaOutcome::kError);

  // Restart the server and the whole engine: the fence holds.
  old_target.reset();
  new_target.reset();
  server_.reset();
  ASSERT_TRUE(engine_->Shutdown().ok());
  engine_.reset();
  OpenEngine();
  StartServer();
  ReplicaClientOptions o = ClientOptions(7);
  auto refused = ReplicaClient::Connect(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(IsStaleEpoch(refused.status())) << refused.status();
  auto again = Connect(8);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->opened().generation, 7u);
  EXPECT_EQ(again->opened().epoch, 8u);
  EXPECT_EQ(ReadAt(again.get(), 0, 4096), Pattern(4096, 2));
  EXPECT_GE(server_->stats().stale_epoch_replies, 1u);
}

TEST_F(ReplicaServiceTest, OpenChecksTheVolume) {
  auto fails = [&](auto edit) {
    ReplicaClientOptions o = ClientOptions(1);
    edit(o);
    auto c = ReplicaClient::Connect(o);
    EXPECT_FALSE(c.ok());
    return c.ok() ? Status::Ok() : c.status();
  };
  EXPECT_TRUE(fails([](auto& o) { o.volume = "missing"; }).IsNotFound());
  EXPECT_TRUE(fails([](auto& o) { o.volume = "plain"; }).IsNotFound());  // not a replica
  EXPECT_EQ(fails([](auto& o) { o.volume_uuid = Uuid::Random(); }).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fails([](auto& o) { o.size_bytes = kVolSize / 2; }).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fails([](auto& o) { o.size_bytes = kVolSize + 100; }).code(),
            StatusCode::kInvalidArgument);
  ExpectServing();
}

// A target-only anchor (a target on a node without a replica) carries the uuid label but is no
// replica: no target may open it, place it, delete it or raise its epoch through the service.
TEST_F(ReplicaServiceTest, ATargetOnlyAnchorIsNeverServedAsAReplica) {
  const Uuid uuid = Uuid::Random();
  ASSERT_TRUE(engine_
                  ->CreateVolume({.name = "anchor",
                                  .size_bytes = kVolSize,
                                  .labels = {{kReplicaUuidLabel, uuid.ToString()},
                                             {kTargetOnlyLabel, "true"}}})
                  .ok());
  const ReplicaSpec spec{"anchor", uuid, kVolSize, ""};
  auto open = ReplicaClient::Connect(SpecOptions(spec, 1));
  ASSERT_FALSE(open.ok());
  EXPECT_TRUE(open.status().IsNotFound()) << open.status();
  EXPECT_NE(open.status().ToString().find("holds no replica here"), std::string::npos)
      << open.status();
  const ReplicaAdminOptions admin{server_->address(), "node-a", Secret(), &tcp_};
  EXPECT_EQ(CreateReplica(admin, spec, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DeleteReplica(admin, spec, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->RaiseEpoch("anchor", 5).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine_->GetVolume("anchor").ok()) << "left as it was";
  ExpectServing();
}

TEST_F(ReplicaServiceTest, OpenWithALargerSizeGrowsTheReplicaOnlyUnderAValidEpoch) {
  {
    auto first = Connect(5);
    ASSERT_NE(first, nullptr);
  }
  // An older epoch is refused before anything changes.
  ReplicaClientOptions stale = ClientOptions(4);
  stale.size_bytes = kVolSize * 2;
  auto refused = ReplicaClient::Connect(stale);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(IsStaleEpoch(refused.status())) << refused.status();
  EXPECT_EQ(engine_->GetVolume("vol").value().size_bytes, kVolSize);
  // The volume grew while the replica was closed: the target's OPEN grows it.
  ReplicaClientOptions grown = ClientOptions(6);
  grown.size_bytes = kVolSize * 2;
  auto c = ReplicaClient::Connect(grown);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->opened().size_bytes, kVolSize * 2);
  EXPECT_EQ(engine_->GetVolume("vol").value().size_bytes, kVolSize * 2);
  // The new end reads as zeros.
  EXPECT_EQ(ReadAt(c->get(), kVolSize * 2 - 4096, 4096), std::vector<uint8_t>(4096, 0));
}

// --- bad peers ----------------------------------------------------------------------------------

TEST_F(ReplicaServiceTest, WrongSecretIsRefusedLoggedAndNeverLeaked) {
  LogCapture& log = LogCapture::Get();  // first, while nothing else logs
  auto good = Connect();
  ASSERT_NE(good, nullptr);
  ReplicaClientOptions o = ClientOptions(1);
  o.secret = Secret("a-wrong-secret-of-an-intruder");
  auto c = ReplicaClient::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status();
  // (The server counts the failure before it logs it: wait for both.)
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while ((server_->stats().auth_failures == 0 ||
          log.text().find("did not prove the cluster secret") == std::string::npos) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(server_->stats().auth_failures, 1u);
  const std::string text = log.text();
  EXPECT_NE(text.find("did not prove the cluster secret"), std::string::npos) << text;
  EXPECT_EQ(text.find(kSecret), std::string::npos);
  EXPECT_EQ(text.find("a-wrong-secret"), std::string::npos);
  // A server with another secret: the client refuses it as well.
  ReplicaServer other(engine_.get(), &tcp_,
                      {.listen_address = "127.0.0.1:0",
                       .node_name = "evil",
                       .secret = Secret("some-other-cluster-secret")});
  ASSERT_TRUE(other.Start().ok());
  o = ClientOptions(1);
  o.address = other.address();
  EXPECT_EQ(ReplicaClient::Connect(o).status().code(), StatusCode::kPermissionDenied);
  // The authenticated connection never noticed.
  WriteAt(good.get(), 0, Pattern(4096, 5));
}

TEST_F(ReplicaServiceTest, BadFramesCloseOnlyTheirConnection) {
  auto good = Connect();
  ASSERT_NE(good, nullptr);
  const std::string write = WritePayload(0, 'w');
  const FrameHeader wh = WriteHeader(1);
  const std::string frame = EncodeFrame(wh, write);
  std::string bad_checksum = frame;
  bad_checksum[100] ^= 0x01;
  std::string oversized = frame.substr(0, kFrameHeaderSize);
  PutU32(reinterpret_cast<uint8_t*>(oversized.data()) + 8, 64 << 20);
  const std::string garbage(300, '\x5a');
  FrameHeader reply = wh;
  reply.type |= kReplyBit;
  const std::string a_reply = EncodeFrame(reply, "");
  std::string unknown_type = EncodeFrame(wh, write);
  unknown_type[5] = 42;

  uint64_t errors = server_->stats().protocol_errors;
  for (const std::string& bytes : {bad_checksum, oversized, garbage, a_reply, unknown_type}) {
    auto raw = RawOpened();
    ASSERT_TRUE(Send(raw.get(), bytes).ok());
    EXPECT_TRUE(ClosedByServer(raw.get()));
    ++errors;
    for (int i = 0; i < 200 && server_->stats().protocol_errors < errors; ++i) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(server_->stats().protocol_errors, errors);
  }
  // A truncated frame: the stream ends inside it.
  {
    auto raw = RawOpened();
    ASSERT_TRUE(Send(raw.get(), frame.substr(0, 1000)).ok());
    raw->Shutdown();
    ++errors;
    for (int i = 0; i < 200 && server_->stats().protocol_errors < errors; ++i) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(server_->stats().protocol_errors, errors);
  }
  // Garbage instead of AUTH.
  {
    auto raw = std::move(tcp_.Connect(server_->address(), DeadlineIn(5s))).value();
    ASSERT_TRUE(Send(raw.get(), "GET / HTTP/1.0\r\n\r\n" + std::string(64, ' ')).ok());
    EXPECT_TRUE(ClosedByServer(raw.get()));
  }
  // Through all of it the good connection kept working, and new ones are served.
  WriteAt(good.get(), 4096, Pattern(4096, 9));
  EXPECT_EQ(ReadAt(good.get(), 4096, 4096), Pattern(4096, 9));
  ExpectServing();
}

// A large WRITE arriving in pieces is received in place (its data straight into the request's
// buffer once its prefix arrived): whole, it lands; with a bad checksum, or cut off inside its
// data, it closes only its connection (and, under ASan, leaks nothing).
TEST_F(ReplicaServiceTest, ALargeWriteArrivingInPiecesIsReceivedInPlaceAndChecked) {
  auto Big = [&](uint64_t id, uint64_t offset, char fill) {
    std::string body;
    Encode(IoRange{offset, 1 * kMiB}, &body);
    body.append(1 * kMiB, fill);
    return EncodeFrame(WriteHeader(id), body);
  };
  // Pieces: the header alone, then the prefix and some data, then the rest in two sends, each
  // delivered before the next (the receive completes in between with whatever it got, and then
  // waits for the rest of the data: SO_RCVLOWAT).
  auto SendInPieces = [&](Connection* c, const std::string& frame) {
    for (auto [at, len] : {std::pair<size_t, size_t>{0, kFrameHeaderSize},
                           {kFrameHeaderSize, 40000},
                           {kFrameHeaderSize + 40000, 300000},
                           {kFrameHeaderSize + 340000, std::string::npos}}) {
      if (at >= frame.size()) break;
      if (!Send(c, std::string_view(frame).substr(at, len)).ok()) return false;
      if (!testutil::WaitDelivered(c->native_fd())) return false;
    }
    return true;
  };
  {
    auto raw = RawOpened();
    const std::string frame = Big(7, 2 * kMiB, 'q');
    ASSERT_TRUE(SendInPieces(raw.get(), frame));
    FrameReader reader(raw.get());
    auto reply = reader.Next(DeadlineIn(5s));
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->header.request_id, 7u);
    EXPECT_EQ(reply->header.status, 0u);
    EXPECT_EQ(server_->stats().writes_received_in_place, 1u);
  }
  auto good = Connect();
  ASSERT_NE(good, nullptr);
  EXPECT_EQ(ReadAt(good.get(), 2 * kMiB, 1 * kMiB), std::vector<uint8_t>(1 * kMiB, 'q'));

  uint64_t errors = server_->stats().protocol_errors;
  std::string corrupt = Big(8, 4 * kMiB, 'z');
  corrupt[kFrameHeaderSize + 700000] ^= 0x01;  // inside the data received in place
  std::string cut = Big(9, 4 * kMiB, 'z').substr(0, kFrameHeaderSize + 500000);
  for (const std::string& bytes : {corrupt, cut}) {
    auto raw = RawOpened();
    ASSERT_TRUE(SendInPieces(raw.get(), bytes));
    if (bytes.size() == cut.size()) raw->Shutdown();
    EXPECT_TRUE(ClosedByServer(raw.get()));
    ++errors;
    for (int i = 0; i < 200 && server_->stats().protocol_errors < errors; ++i) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(server_->stats().protocol_errors, errors);
  }
  EXPECT_EQ(ReadAt(good.get(), 4 * kMiB, 1 * kMiB), std::vector<uint8_t>(1 * kMiB, 0))
      << "neither landed";
  ExpectServing();
}

// The volume's reactor receives on its ring and hands a frame that may block (here one that
// raises the epoch) to the connection's thread. When the thread refuses it (an OPEN after OPEN),
// nothing the ring buffered after it runs: a WRITE sent in the same segment never lands, as with
// the thread's own receiver.
TEST_F(ReplicaServiceTest, NothingAfterARefusedHandedOverFrameRuns) {
  auto good = Connect();
  ASSERT_NE(good, nullptr);
  FrameHeader oh;
  oh.type = static_cast<uint8_t>(MsgType::kOpen);
  oh.epoch = CurrentEpoch() + 1;  // above the fence: handed to the thread
  const uint64_t errors = server_->stats().protocol_errors;
  auto raw = RawOpened();
  ASSERT_TRUE(Send(raw.get(), EncodeFrame(oh, OpenPayload()) +
                                  EncodeFrame(WriteHeader(2), WritePayload(8192, 'x')))
                  .ok());
  EXPECT_TRUE(ClosedByServer(raw.get()));
  for (int i = 0; i < 200 && server_->stats().protocol_errors <= errors; ++i) {
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(server_->stats().protocol_errors, errors + 1);
  // The WRITE would land within microseconds of the refusal; watch the block for a while.
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(ReadAt(good.get(), 8192, 4096), std::vector<uint8_t>(4096, 0)) << "round " << i;
    std::this_thread::sleep_for(10ms);
  }
  ExpectServing();
}

TEST_F(ReplicaServiceTest, ConnectionsAndHandshakesAreBounded) {
  server_.reset();
  StartServer({.max_connections = 2, .handshake_timeout = 300ms});
  auto a = std::move(tcp_.Connect(server_->address(), DeadlineIn(5s))).value();
  auto b = std::move(tcp_.Connect(server_->address(), DeadlineIn(5s))).value();
  for (int i = 0; i < 200 && server_->stats().connections_accepted < 2; ++i) {
    std::this_thread::sleep_for(5ms);
  }
  auto c = std::move(tcp_.Connect(server_->address(), DeadlineIn(5s))).value();
  EXPECT_TRUE(ClosedByServer(c.get(), 2s));  // over the limit: closed at once
  EXPECT_EQ(server_->stats().connections_refused, 1u);
  // Silent peers are closed at the handshake timeout.
  const auto t0 = SteadyClock::now();
  EXPECT_TRUE(ClosedByServer(a.get(), 3s));
  EXPECT_TRUE(ClosedByServer(b.get(), 3s));
  EXPECT_LT(SteadyClock::now() - t0, 2s);
  for (int i = 0; i < 400 && server_->stats().connections_active > 0; ++i) {
    std::this_thread::sleep_for(5ms);
  }
  ExpectServing();
}

// --- faults -------------------------------------------------------------------------------------

TEST_F(ReplicaServiceTest, CutLinkFailsRequestsWithConnectionLossWithinTheTimeout) {
  auto c = Connect(1, 3000ms);
  ASSERT_NE(c, nullptr);
  fault_.Blackhole(server_->address(), Direction::kToClient);  // requests in flight, no replies
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < 32; ++i) {
    ops.push_back(std::make_unique<Op>(ReplicaOp::kWrite, uint64_t(i) * 4096, 4096));
    Submit(c.get(), ops.back().get());
  }
  std::this_thread::sleep_for(100ms);
  const auto t0 = SteadyClock::now();
  fault_.Cut(server_->address());
  for (auto& op : ops) {
    ASSERT_TRUE(op->Wait());
    EXPECT_EQ(op->r.outcome, ReplicaOutcome::kConnectionLost) << op->r.status;
    EXPECT_TRUE(IsConnectionLost(op->r.status)) << op->r.status;
  }
  EXPECT_LT(SteadyClock::now() - t0, 1s);
  EXPECT_TRUE(c->failed());
  Op later(ReplicaOp::kRead, 0, 4096);
  EXPECT_EQ(Do(c.get(), &later), ReplicaOutcome::kConnectionLost);
  fault_.HealAll();
  ExpectServing();
}

TEST_F(ReplicaServiceTest, DelayPastTheTimeoutGivesTheTimeoutError) {
  auto c = Connect(1, 200ms);
  ASSERT_NE(c, nullptr);
  WriteAt(c.get(), 0, Pattern(4096, 1));
  fault_.Delay(server_->address(), Direction::kToClient, 600ms);
  Op slow(ReplicaOp::kRead, 0, 4096);
  const auto t0 = SteadyClock::now();
  EXPECT_EQ(Do(c.get(), &slow), ReplicaOutcome::kTimeout) << slow.r.status;
  const auto took = SteadyClock::now() - t0;
  EXPECT_GE(took, 190ms);
  EXPECT_LT(took, 550ms);
  EXPECT_TRUE(IsTimedOut(slow.r.status));
  // A timeout does not break the connection: the late reply is dropped, later requests work.
  fault_.HealAll();
  for (int i = 0; i < 100 && c->stats().late_replies == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(c->stats().late_replies, 1u);
  EXPECT_EQ(ReadAt(c.get(), 0, 4096), Pattern(4096, 1));
  // A request lost on the way out times out the same way.
  fault_.Drop(server_->address(), Direction::kToServer, 1);
  Op lost(ReplicaOp::kFlush, 0, 0);
  EXPECT_EQ(Do(c.get(), &lost), ReplicaOutcome::kTimeout);
  EXPECT_FALSE(c->failed());
}

TEST_F(ReplicaServiceTest, ReorderedFramesStillMatch) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  fault_.Reorder(server_->address(), Direction::kBoth);
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < 64; ++i) {
    ops.push_back(std::make_unique<Op>(ReplicaOp::kWrite, uint64_t(i) * 4096, 4096));
    ops.back()->buf = Pattern(4096, 100 + i);
    ops.back()->r.buf = ops.back()->buf.data();
    Submit(c.get(), ops.back().get());
  }
  for (auto& op : ops) {
    ASSERT_TRUE(op->Wait());
    EXPECT_EQ(op->r.outcome, ReplicaOutcome::kOk) << op->r.status;
  }
  for (int i = 0; i < 64; ++i)
    EXPECT_EQ(ReadAt(c.get(), uint64_t(i) * 4096, 4096), Pattern(4096, 100 + i));
}

TEST_F(ReplicaServiceTest, PartitionedReplicaCannotBeOpened) {
  fault_.Partition({server_->address()});
  ReplicaClientOptions o = ClientOptions(1);
  o.connect_timeout = 200ms;
  const auto t0 = SteadyClock::now();
  auto c = ReplicaClient::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(IsTimedOut(c.status())) << c.status();
  EXPECT_LT(SteadyClock::now() - t0, 1s);
}

// --- shutdown -----------------------------------------------------------------------------------

TEST_F(ReplicaServiceTest, StopAndCloseWithRequestsInFlight) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  std::vector<std::unique_ptr<Op>> ops;
  for (int i = 0; i < 200; ++i) {
    ops.push_back(std::make_unique<Op>(ReplicaOp::kWrite, uint64_t(i) * 65536, 65536));
    Submit(c.get(), ops.back().get());
  }
  server_->Stop();
  for (auto& op : ops) {
    ASSERT_TRUE(op->Wait());
    EXPECT_TRUE(op->r.outcome == ReplicaOutcome::kOk ||
                op->r.outcome == ReplicaOutcome::kConnectionLost)
        << ReplicaOutcomeName(op->r.outcome);
  }
  // Nothing in flight and every handle released once Stop returned.
  EXPECT_EQ(engine_->GetVolume("vol")->open_count, 0u);
  EXPECT_EQ(server_->stats().connections_active, 0u);

  // Close() fails what is unfinished with kClosed.
  StartServer();
  auto d = Connect();
  ASSERT_NE(d, nullptr);
  fault_.Blackhole(server_->address(), Direction::kToClient);
  Op pending(ReplicaOp::kFlush, 0, 0);
  Submit(d.get(), &pending);
  std::this_thread::sleep_for(50ms);
  d->Close();
  ASSERT_TRUE(pending.Wait());
  EXPECT_EQ(pending.r.outcome, ReplicaOutcome::kClosed);
  Op after(ReplicaOp::kFlush, 0, 0);
  EXPECT_EQ(Do(d.get(), &after), ReplicaOutcome::kClosed);
}

// --- cost per request (run by hand)
// ----------------------------------------------------------------

// --- placement ------------------------------------------------------------------------------

TEST_F(ReplicaServiceTest, CreateReplicaIsIdempotentAndPersistsTheEpoch) {
  const ReplicaAdminOptions admin{server_->address(), "node-a", Secret(), &tcp_};
  const ReplicaSpec spec{"placed", Uuid::Random(), 32 * kMiB, ""};
  Result<ReplicaStat> made = CreateReplica(admin, spec, 4);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_TRUE(made->created);
  EXPECT_EQ(made->size_bytes, 32 * kMiB);
  EXPECT_EQ(made->epoch, 4u);
  EXPECT_EQ(made->generation, 0u);
  auto info = engine_->GetVolume("placed");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->labels.at(kReplicaUuidLabel), spec.uuid.ToString());
  EXPECT_EQ(LoadReplicaState(engine_.get(), info->pool, info->id)->epoch, 4u);

  // Again (a retried placement): the same replica, not a new one; a newer epoch is persisted.
  Result<ReplicaStat> again = CreateReplica(admin, spec, 5);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->epoch, 5u);
  EXPECT_EQ(engine_->GetVolume("placed")->id, info->id);
  // An older epoch is fenced, another uuid or size is refused, a non-replica is never taken.
  EXPECT_TRUE(IsStaleEpoch(CreateReplica(admin, spec, 3).status()));
  ReplicaSpec other = spec;
  other.uuid = Uuid::Random();
  EXPECT_EQ(CreateReplica(admin, other, 5).status().code(), StatusCode::kInvalidArgument);
  other = spec;
  other.size_bytes = 16 * kMiB;
  EXPECT_EQ(CreateReplica(admin, other, 5).status().code(), StatusCode::kInvalidArgument);
  other = spec;
  other.volume = "plain";
  EXPECT_EQ(CreateReplica(admin, other, 5).status().code(), StatusCode::kInvalidArgument);
  other = spec;
  other.pool = "no-such-pool";
  EXPECT_FALSE(CreateReplica(admin, other, 5).ok());

  // The placed replica serves: OPEN at its epoch, I/O, STAT sees the allocation.
  auto c = ReplicaClient::Connect(SpecOptions(spec, 5));
  ASSERT_TRUE(c.ok()) << c.status();
  const auto data = Pattern(65536, 5);
  WriteAt(c->get(), 4 * kMiB, data);
  EXPECT_EQ(ReadAt(c->get(), 4 * kMiB, data.size()), data);
  (*c)->Close();
  Result<ReplicaStat> stat = StatReplica(admin, spec);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_GE(stat->allocated_bytes, data.size());
  EXPECT_EQ(stat->epoch, 5u);
  other.volume = "missing";
  EXPECT_EQ(StatReplica(admin, other).status().code(), StatusCode::kNotFound);
}

TEST_F(ReplicaServiceTest, DeleteReplicaIsIdempotentFencedAndSparesOtherVolumes) {
  const ReplicaAdminOptions admin{server_->address(), "node-a", Secret(), &tcp_};
  const ReplicaSpec spec{"doomed", Uuid::Random(), 8 * kMiB, ""};
  ASSERT_TRUE(CreateReplica(admin, spec, 6).ok());
  // Not a replica of this uuid, not a replica at all, an older epoch: nothing is deleted.
  ReplicaSpec other = spec;
  other.uuid = Uuid::Random();
  EXPECT_EQ(DeleteReplica(admin, other, 6).code(), StatusCode::kInvalidArgument);
  other = spec;
  other.volume = "plain";
  EXPECT_EQ(DeleteReplica(admin, other, 6).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine_->GetVolume("plain").ok());
  EXPECT_TRUE(IsStaleEpoch(DeleteReplica(admin, spec, 5)));
  ASSERT_TRUE(engine_->GetVolume("doomed").ok());
  // Open: refused (Unavailable), still there.
  auto c = ReplicaClient::Connect(SpecOptions(spec, 6));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(DeleteReplica(admin, spec, 6).code(), StatusCode::kUnavailable);
  (*c)->Close();
  c->reset();
  // Closed: deleted (the server releases the volume when the connection ends; bounded wait).
  Status st;
  for (int i = 0; i < 100; ++i) {
    st = DeleteReplica(admin, spec, 6);
    if (st.code() != StatusCode::kUnavailable) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(engine_->GetVolume("doomed").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(DeleteReplica(admin, spec, 6).ok());  // again: nothing to do
  // Placement with the wrong secret is refused like any other request.
  const ReplicaAdminOptions wrong{server_->address(), "node-x", Secret("another-secret-entirely"),
                                  &tcp_};
  EXPECT_EQ(CreateReplica(wrong, spec, 7).status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->GetVolume("doomed").status().code(), StatusCode::kNotFound);
}

TEST_F(ReplicaServiceTest, PlacementFramesAfterOpenCloseTheConnection) {
  auto conn = RawOpened();
  std::string body;
  Encode(ReplicaRef{uuid_.bytes, "vol"}, &body);
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kDeleteReplica);
  h.request_id = 9;
  h.epoch = CurrentEpoch();
  ASSERT_TRUE(Send(conn.get(), EncodeFrame(h, body)).ok());
  EXPECT_TRUE(ClosedByServer(conn.get()));
  EXPECT_TRUE(engine_->GetVolume("vol").ok());
  ExpectServing();
}

// Throughput and CPU per request of client + server + engine in this process, at a fixed queue
// depth; the figures in docs/format/replica-protocol.md come from it:
//   build/tests/replication_test --gtest_also_run_disabled_tests
//       --gtest_filter='*DISABLED_CostPerRequest*'
TEST_F(ReplicaServiceTest, DISABLED_CostPerRequest) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  struct Run {
    size_t size;
    int depth;
    int total;
  };
  for (const Run run : {Run{4096, 32, 40000}, Run{4096, 1, 5000}, Run{1 << 20, 8, 1000}}) {
    std::vector<std::unique_ptr<Op>> slots;
    std::atomic<int> submitted{0}, completed{0};
    std::promise<void> all;
    struct Ctx {
      ReplicaClient* client;
      Reactor* reactor;
      std::atomic<int>* submitted;
      std::atomic<int>* completed;
      int total;
      size_t size;
      std::promise<void>* all;
    } ctx{c.get(), reactor_.get(), &submitted, &completed, run.total, run.size, &all};
    // Submits the next write of the run from r (false: the run is fully submitted).
    static constexpr auto kNext = [](ReplicaRequest* r) {
      auto* x = static_cast<Ctx*>(r->ctx);
      const int n = x->submitted->fetch_add(1);
      if (n >= x->total) return;
      r->offset = (uint64_t(n) * x->size * 7919) % (kVolSize - x->size) / 4096 * 4096;
      x->client->Submit(r);
    };
    for (int i = 0; i < run.depth; ++i) {
      slots.push_back(std::make_unique<Op>(ReplicaOp::kWrite, 0, run.size));
      slots.back()->r.ctx = &ctx;
      slots.back()->r.done = [](ReplicaRequest* r) {  // on the reactor, as in a target
        auto* x = static_cast<Ctx*>(r->ctx);
        EXPECT_EQ(r->outcome, ReplicaOutcome::kOk);
        if (x->completed->fetch_add(1) + 1 == x->total) x->all->set_value();
        kNext(r);
      };
    }
    rusage before{}, after{};
    getrusage(RUSAGE_SELF, &before);
    const auto t0 = SteadyClock::now();
    reactor_->Post([&] {
      for (auto& slot : slots) kNext(&slot->r);
    });
    all.get_future().wait();
    const double secs = std::chrono::duration<double>(SteadyClock::now() - t0).count();
    getrusage(RUSAGE_SELF, &after);
    const auto cpu = [](const rusage& u) {
      return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
             double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
    };
    const ReplicaClientStats st = c->stats();
    std::printf(
        "%zu B writes QD %d: %.0f IOPS, %.1f MB/s, %.1f us CPU per request (whole "
        "process: client, server, engine), %.2f requests per writev so far\n",
        run.size, run.depth, run.total / secs, run.total * double(run.size) / secs / 1e6,
        (cpu(after) - cpu(before)) / run.total * 1e6,
        double(st.requests) / double(std::max<uint64_t>(st.sends, 1)));
  }
}

}  // namespace
}  // namespace shale::replication
