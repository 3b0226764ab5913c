// TlsTransport over real TCP on 127.0.0.1 with certificates made by GnuTLS's certtool
// (tls/testing.h): peers of one CA exchange frames both ways at once; a certificate of another
// CA is refused on the server side and on the client side, and so is a peer without one; a
// stalled handshake and garbage are cut within the handshake timeout while a good peer is
// served meanwhile; ReplicaServer and ReplicaClient work over it end to end; the cluster TLS
// directory is checked (missing files, key mode). Skipped, with the reason, without certtool.
#include "replication/tls_transport.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"
#include "tls/credentials.h"
#include "tls/testing.h"

namespace shale::replication {
namespace {

using namespace std::chrono_literals;
using Creds = std::shared_ptr<const tls::Credentials>;

constexpr char kSecret[] = "replica-tls-test-cluster-secret";
constexpr uint64_t kVolSize = 64 * kMiB;

// Certificates for the whole test program (certtool takes a while per key):
//   node-a, node-b     of CA "ca", each trusting "ca"
//   stranger           a certificate of "other-ca" (CN node-b) that trusts "ca": as a client
//                      the server side must refuse it, as a server the client side must
//   anonymous          trusts "ca", has no certificate
struct Material {
  std::string dir;
  std::string skip;  // why the tests cannot run
  Creds a, b, stranger, anonymous;

  // Made once per test program; the directory goes when the program exits.
  static Material& Get() {
    static Material m;
    static const bool made = (m.Make(), true);
    (void)made;
    return m;
  }
  ~Material() {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  std::string Dir(const std::string& name) const { return dir + "/" + name; }

 private:
  void Make() {
    if (!tls::testing::HaveTools()) {
      skip = "certtool/psktool not installed (Debian package gnutls-bin)";
      return;
    }
    std::string tmpl = "/tmp/shale-replica-tls-XXXXXX";
    dir = mkdtemp(tmpl.data());
    tls::testing::Pki pki(dir + "/pki");
    Status st = pki.MakeCa("ca");
    if (st.ok()) st = pki.MakeCa("other-ca");
    if (st.ok()) st = pki.MakeCert("ca", "node-a", {.cn = "node-a"});
    if (st.ok()) st = pki.MakeCert("ca", "node-b", {.cn = "node-b"});
    if (st.ok()) st = pki.MakeCert("other-ca", "stranger", {.cn = "node-b"});
    if (st.ok()) st = pki.MutualDir("ca", "node-a", Dir("node-a"));
    if (st.ok()) st = pki.MutualDir("ca", "node-b", Dir("node-b"));
    if (st.ok()) st = pki.MutualDir("ca", "stranger", Dir("stranger"));
    if (st.ok()) st = pki.ClientDir("ca", "", Dir("anonymous"));
    if (!st.ok()) {
      skip = "making certificates failed: " + st.ToString();
      return;
    }
    a = Load(LoadClusterTlsDir(Dir("node-a")));
    b = Load(LoadClusterTlsDir(Dir("node-b")));
    stranger = Load(LoadClusterTlsDir(Dir("stranger")));
    anonymous = Load(tls::Credentials::X509ClientDir(Dir("anonymous"), ""));
  }
  Creds Load(Result<Creds> c) {
    if (!c.ok() && skip.empty()) skip = "loading credentials failed: " + c.status().ToString();
    return c.ok() ? *c : nullptr;
  }
};

std::string WriteFrame(uint64_t id, size_t data_length, char fill) {
  std::string payload;
  Encode(IoRange{0, static_cast<uint32_t>(data_length)}, &payload);
  payload.append(data_length, fill);
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kWrite);
  h.request_id = id;
  return EncodeFrame(h, payload);
}

Status SendAll(Connection* c, std::string_view bytes, Deadline deadline = DeadlineIn(10s)) {
  const ConstBuffer b = AsBytes(bytes);
  return c->Send(std::span(&b, 1), deadline);
}

// Receives until the stream ends or fails: OK(bytes) at a clean end, the error otherwise,
// IsTimedOut if it stays open until `within` passed.
Result<std::string> Drain(Connection* c, std::chrono::milliseconds within = 5s) {
  const Deadline deadline = DeadlineIn(within);
  std::string got;
  uint8_t buf[4096];
  while (true) {
    Result<size_t> n = c->Recv(buf, deadline);
    if (!n.ok()) return n.status();
    if (*n == 0) return got;
    got.append(reinterpret_cast<char*>(buf), *n);
  }
}

class ReplicaTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!m_.skip.empty()) GTEST_SKIP() << m_.skip;
  }

  // The server's end (accepted on another thread, which runs its handshake with a Send of no
  // bytes), how that handshake ended, and the client's Connect result.
  struct Pair {
    std::unique_ptr<Listener> listener;
    std::unique_ptr<Connection> server;
    Status server_handshake = Status::Internal("not accepted");
    Result<std::unique_ptr<Connection>> client = Status::Internal("not connected");
  };
  Pair Connected(Transport* server_side, Transport* client_side) {
    Pair p;
    Result<std::unique_ptr<Listener>> l = server_side->Listen("127.0.0.1:0");
    EXPECT_TRUE(l.ok()) << l.status();
    if (!l.ok()) return p;
    p.listener = std::move(l).value();
    std::thread accept([&] {
      Result<std::unique_ptr<Connection>> c = p.listener->Accept(DeadlineIn(10s));
      EXPECT_TRUE(c.ok()) << c.status();
      if (!c.ok()) return;
      p.server = std::move(c).value();
      p.server_handshake = p.server->Send({}, DeadlineIn(10s));
    });
    p.client = client_side->Connect(p.listener->address(), DeadlineIn(10s));
    accept.join();
    return p;
  }

  Material& m_ = Material::Get();
  TcpTransport tcp_;
};

// Sends `frames` WRITE frames of varied sizes (one above TlsTransport's send slice) on `c`.
Status SendFrames(Connection* c, int frames, char base) {
  constexpr size_t kSizes[] = {100, 4096, 70000, 300000, 1 << 20};
  for (int i = 0; i < frames; ++i) {
    const std::string f =
        WriteFrame(i, kSizes[i % std::size(kSizes)], static_cast<char>(base + i % 7));
    SHALE_RETURN_IF_ERROR(SendAll(c, f));
  }
  return Status::Ok();
}

// Receives and checks what SendFrames sent; returns how many frames arrived intact.
int ReceiveFrames(Connection* c, int frames, char base) {
  FrameReader reader(c);
  std::vector<uint8_t> sink_buf;
  const auto sink = [&](const FrameHeader& h, std::span<const uint8_t> prefix) {
    sink_buf.resize(h.payload_length - prefix.size());
    return sink_buf.data();
  };
  int good = 0;
  for (int i = 0; i < frames; ++i) {
    Result<FrameReader::Frame> f = reader.Next(DeadlineIn(20s), sink);
    if (!f.ok()) {
      ADD_FAILURE() << "frame " << i << ": " << f.status();
      return good;
    }
    std::span<const uint8_t> data = f->direct ? f->data : f->payload.subspan(sizeof(IoRange));
    const char fill = static_cast<char>(base + i % 7);
    const bool same = std::all_of(data.begin(), data.end(),
                                  [&](uint8_t x) { return static_cast<char>(x) == fill; });
    if (f->header.request_id == static_cast<uint64_t>(i) && !data.empty() && same) ++good;
  }
  return good;
}

TEST_F(ReplicaTlsTest, PeersOfOneCaExchangeFramesBothWaysConcurrently) {
  TlsTransport server_side(&tcp_, m_.a), client_side(&tcp_, m_.b);
  Pair p = Connected(&server_side, &client_side);
  ASSERT_TRUE(p.client.ok()) << p.client.status();
  ASSERT_TRUE(p.server_handshake.ok()) << p.server_handshake;
  Connection* client = p.client->get();
  Connection* server = p.server.get();

  // Each end sends and receives at once, on two threads: four threads on one session pair.
  constexpr int kFrames = 40;
  std::atomic<int> to_server{0}, to_client{0};
  Status client_sent, server_sent;
  std::thread t1([&] { client_sent = SendFrames(client, kFrames, 'a'); });
  std::thread t2([&] { server_sent = SendFrames(server, kFrames, 'A'); });
  std::thread t3([&] { to_server = ReceiveFrames(server, kFrames, 'a'); });
  std::thread t4([&] { to_client = ReceiveFrames(client, kFrames, 'A'); });
  t1.join();
  t2.join();
  t3.join();
  t4.join();
  EXPECT_TRUE(client_sent.ok()) << client_sent;
  EXPECT_TRUE(server_sent.ok()) << server_sent;
  EXPECT_EQ(to_server.load(), kFrames);
  EXPECT_EQ(to_client.load(), kFrames);

  // Nothing pending: a receive times out and the connection stays usable.
  uint8_t buf[64];
  EXPECT_TRUE(IsTimedOut(server->Recv(buf, DeadlineIn(50ms)).status()));
  ASSERT_TRUE(SendAll(client, "still there").ok());
  Result<size_t> n = server->Recv(buf, DeadlineIn(5s));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), *n), "still there");

  // Shutdown from another thread ends a receive blocked without a deadline; the peer sees the
  // end of the stream.
  std::thread waker([&] {
    std::this_thread::sleep_for(50ms);
    server->Shutdown();
  });
  const auto t0 = SteadyClock::now();
  Result<size_t> woken = server->Recv(buf, kNoDeadline);
  waker.join();
  EXPECT_TRUE(!woken.ok() || *woken == 0);
  EXPECT_LT(SteadyClock::now() - t0, 5s);
  Result<std::string> rest = Drain(client);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(*rest, "");
}

TEST_F(ReplicaTlsTest, TheWireCarriesTlsNotTheProtocol) {
  // A TLS client dialing a plain listener: its first bytes are a TLS handshake record.
  TlsTransport client_side(&tcp_, m_.b, {.handshake_timeout = 500ms});
  auto listener = std::move(tcp_.Listen("127.0.0.1:0")).value();
  std::unique_ptr<Connection> server;
  std::thread accept([&] { server = std::move(listener->Accept(DeadlineIn(10s))).value(); });
  const auto t0 = SteadyClock::now();
  Result<std::unique_ptr<Connection>> c = client_side.Connect(listener->address(), DeadlineIn(10s));
  accept.join();
  EXPECT_FALSE(c.ok()) << "a plain peer never completes the handshake";
  EXPECT_LT(SteadyClock::now() - t0, 5s) << "bounded by the handshake timeout";
  uint8_t buf[16];
  Result<size_t> n = server->Recv(buf, DeadlineIn(1s));
  ASSERT_TRUE(n.ok() && *n >= 3) << n.status();
  EXPECT_EQ(buf[0], 0x16) << "TLS record type: handshake";
  EXPECT_EQ(buf[1], 0x03) << "TLS record version";
}

TEST_F(ReplicaTlsTest, ACertificateOfAnotherCaIsRefusedByTheServer) {
  TlsTransport server_side(&tcp_, m_.a), client_side(&tcp_, m_.stranger);
  Pair p = Connected(&server_side, &client_side);
  ASSERT_NE(p.server, nullptr);
  // The server's handshake fails on the stranger's certificate; nothing it sent is read.
  EXPECT_EQ(p.server_handshake.code(), StatusCode::kPermissionDenied) << p.server_handshake;
  if (p.client.ok()) SendAll(p.client->get(), "hello").IgnoreError();
  Result<std::string> got = Drain(p.server.get());
  ASSERT_FALSE(got.ok()) << "the server read '" << *got << "'";
  EXPECT_EQ(got.status().code(), StatusCode::kPermissionDenied) << got.status();
  // TLS 1.3: the client finishes first, then learns of the refusal from its first receive.
  if (p.client.ok()) {
    Result<std::string> answer = Drain(p.client->get());
    EXPECT_TRUE(!answer.ok() || answer->empty()) << "the client got '" << *answer << "'";
  }
}

TEST_F(ReplicaTlsTest, AServerCertificateOfAnotherCaIsRefusedByTheClient) {
  TlsTransport server_side(&tcp_, m_.stranger), client_side(&tcp_, m_.b);
  Pair p = Connected(&server_side, &client_side);
  ASSERT_FALSE(p.client.ok()) << "the client must not trust another CA's server";
  EXPECT_EQ(p.client.status().code(), StatusCode::kPermissionDenied) << p.client.status();
  EXPECT_FALSE(p.server_handshake.ok()) << "the server's handshake fails too";
}

TEST_F(ReplicaTlsTest, APeerWithoutACertificateIsRefused) {
  TlsTransport server_side(&tcp_, m_.a), client_side(&tcp_, m_.anonymous);
  Pair p = Connected(&server_side, &client_side);
  ASSERT_NE(p.server, nullptr);
  EXPECT_EQ(p.server_handshake.code(), StatusCode::kPermissionDenied) << p.server_handshake;
  if (p.client.ok()) SendAll(p.client->get(), "hello").IgnoreError();
  Result<std::string> got = Drain(p.server.get());
  ASSERT_FALSE(got.ok()) << "the server read '" << *got << "'";
  EXPECT_EQ(got.status().code(), StatusCode::kPermissionDenied) << got.status();
  EXPECT_NE(got.status().message().find("TLS handshake"), std::string::npos) << got.status();
}

TEST_F(ReplicaTlsTest, TransportsCheckTheirCredentials) {
  // Client-only credentials cannot serve.
  TlsTransport anonymous(&tcp_, m_.anonymous);
  EXPECT_EQ(anonymous.Listen("127.0.0.1:0").status().code(), StatusCode::kInvalidArgument);
  TlsTransport none(&tcp_, nullptr);
  EXPECT_FALSE(none.Listen("127.0.0.1:0").ok());
  EXPECT_FALSE(none.Connect("127.0.0.1:1", DeadlineIn(1s)).ok());
}

TEST_F(ReplicaTlsTest, ClusterTlsDirIsChecked) {
  const std::string bad = m_.dir + "/bad";
  Result<Creds> missing_dir = LoadClusterTlsDir(bad);
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_NE(missing_dir.status().message().find(bad), std::string::npos) << missing_dir.status();

  std::filesystem::create_directories(bad);
  for (const char* f : {"ca.crt", "tls.crt", "tls.key"}) {
    std::filesystem::copy_file(m_.Dir("node-a") + "/" + f, bad + "/" + f,
                               std::filesystem::copy_options::overwrite_existing);
  }
  ASSERT_EQ(chmod((bad + "/tls.key").c_str(), 0600), 0);
  EXPECT_TRUE(LoadClusterTlsDir(bad).ok());

  ASSERT_EQ(chmod((bad + "/tls.key").c_str(), 0644), 0);
  Result<Creds> open_key = LoadClusterTlsDir(bad);
  ASSERT_FALSE(open_key.ok());
  EXPECT_EQ(open_key.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(open_key.status().message().find("mode 0600 (it is 0644)"), std::string::npos)
      << open_key.status();

  ASSERT_EQ(chmod((bad + "/tls.key").c_str(), 0600), 0);
  std::filesystem::remove(bad + "/ca.crt");
  Result<Creds> no_ca = LoadClusterTlsDir(bad);
  ASSERT_FALSE(no_ca.ok());
  EXPECT_NE(no_ca.status().message().find("ca.crt"), std::string::npos) << no_ca.status();

  std::filesystem::copy_file(m_.Dir("node-a") + "/ca.crt", bad + "/ca.crt");
  { std::ofstream(bad + "/tls.key", std::ios::trunc) << "not a key\n"; }
  Result<Creds> garbage_key = LoadClusterTlsDir(bad);
  ASSERT_FALSE(garbage_key.ok());
  EXPECT_NE(garbage_key.status().message().find("tls.key"), std::string::npos)
      << garbage_key.status();
}

// An Engine and a ReplicaServer over TLS with node-a's certificate, as shaled runs them with
// --cluster-tls-dir. The server's own handshake timeout (HELLO to OPEN) is long, so the cuts
// seen here come from the TLS handshake timeout.
class ReplicaTlsServerTest : public ReplicaTlsTest {
 protected:
  static constexpr auto kHandshake = 3s;

  void SetUp() override {
    ReplicaTlsTest::SetUp();
    if (IsSkipped()) return;
    std::string tmpl = "/tmp/shale-replica-tls-engine-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 256 * kMiB;
    options.reactors = 1;
    options.commit_interval_ms = 100;
    auto engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    auto reactor = Reactor::Start({.name = "target"});
    ASSERT_TRUE(reactor.ok()) << reactor.status();
    reactor_ = std::move(reactor).value();
    server_tls_ = std::make_unique<TlsTransport>(
        &tcp_, m_.a, TlsTransportOptions{.handshake_timeout = kHandshake});
    ReplicaServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.node_name = "node-a";
    o.secret = Secret();
    o.handshake_timeout = 60s;
    server_ = std::make_unique<ReplicaServer>(engine_.get(), server_tls_.get(), std::move(o));
    const Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
  }
  void TearDown() override {
    server_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
    reactor_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  static ClusterSecret Secret() { return *ClusterSecret::FromBytes(kSecret); }
  ReplicaAdminOptions Admin(Transport* t) {
    return {
        .address = server_->address(), .node_name = "node-b", .secret = Secret(), .transport = t};
  }

  // One request on the target's reactor, waited for.
  ReplicaOutcome Do(ReplicaClient* c, ReplicaOp op, uint64_t offset, std::vector<uint8_t>* buf) {
    struct Op {
      ReplicaRequest r;
      std::promise<void> done;
    } op_state;
    op_state.r.op = op;
    op_state.r.offset = offset;
    op_state.r.length = buf->size();
    op_state.r.buf = buf->data();
    op_state.r.ctx = &op_state;
    op_state.r.done = [](ReplicaRequest* r) { static_cast<Op*>(r->ctx)->done.set_value(); };
    std::future<void> finished = op_state.done.get_future();
    reactor_->Post([c, &op_state] { c->Submit(&op_state.r); });
    EXPECT_EQ(finished.wait_for(20s), std::future_status::ready);
    EXPECT_EQ(op_state.r.outcome, ReplicaOutcome::kOk) << op_state.r.status;
    return op_state.r.outcome;
  }

  // Places `spec` through `transport`, writes and reads back through a ReplicaClient.
  void PlaceWriteAndRead(Transport* transport, const ReplicaSpec& spec) {
    Result<ReplicaStat> created = CreateReplica(Admin(transport), spec, 1);
    ASSERT_TRUE(created.ok()) << created.status();
    EXPECT_TRUE(created->created);
    ReplicaClientOptions o;
    o.address = server_->address();
    o.node_name = "node-b";
    o.secret = Secret();
    o.volume = spec.volume;
    o.volume_uuid = spec.uuid;
    o.size_bytes = spec.size_bytes;
    o.epoch = 1;
    o.transport = transport;
    o.completion_reactor = reactor_.get();
    Result<std::unique_ptr<ReplicaClient>> client = ReplicaClient::Connect(std::move(o));
    ASSERT_TRUE(client.ok()) << client.status();
    std::mt19937_64 rng(7);
    for (size_t length : {size_t{4096}, size_t{kMiB}}) {
      std::vector<uint8_t> data(length);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      ASSERT_EQ(Do(client->get(), ReplicaOp::kWrite, 4 * kMiB, &data), ReplicaOutcome::kOk);
      std::vector<uint8_t> back(length);
      ASSERT_EQ(Do(client->get(), ReplicaOp::kRead, 4 * kMiB, &back), ReplicaOutcome::kOk);
      EXPECT_EQ(back, data) << length << " bytes read back differ";
    }
    (*client)->Close();
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<TlsTransport> server_tls_;
  std::unique_ptr<ReplicaServer> server_;
};

TEST_F(ReplicaTlsServerTest, ReplicasArePlacedWrittenAndReadOnlyByPeersOfTheCa) {
  TlsTransport good(&tcp_, m_.b), stranger(&tcp_, m_.stranger);
  const ReplicaSpec spec{.volume = "rep", .uuid = Uuid::Random(), .size_bytes = kVolSize};

  // The right secret does not help without a certificate of the CA, nor without TLS.
  EXPECT_FALSE(CreateReplica(Admin(&stranger), spec, 1).ok());
  EXPECT_FALSE(CreateReplica(Admin(&tcp_), spec, 1).ok());
  EXPECT_FALSE(engine_->GetVolume("rep").ok()) << "nothing was placed";

  PlaceWriteAndRead(&good, spec);

  EXPECT_FALSE(StatReplica(Admin(&stranger), spec).ok());
  EXPECT_FALSE(DeleteReplica(Admin(&stranger), spec, 1).ok());
  EXPECT_TRUE(engine_->GetVolume("rep").ok()) << "the stranger deleted nothing";
  Result<ReplicaStat> stat = StatReplica(Admin(&good), spec);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->epoch, 1u);
  EXPECT_EQ(stat->size_bytes, kVolSize);
  ASSERT_TRUE(DeleteReplica(Admin(&good), spec, 1).ok());
  EXPECT_FALSE(engine_->GetVolume("rep").ok());
  // The refused peers never reached the challenge on the secret.
  EXPECT_EQ(server_->stats().auth_failures, 0u);
}

TEST_F(ReplicaTlsServerTest, StalledAndGarbageHandshakesAreCutWhileAGoodPeerIsServed) {
  const auto t0 = SteadyClock::now();
  const std::string address = server_->address();
  auto dial = [&] {
    Result<std::unique_ptr<Connection>> c = tcp_.Connect(address, DeadlineIn(5s));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  };
  std::unique_ptr<Connection> silent = dial();  // connects and says nothing
  std::unique_ptr<Connection> half = dial();    // the start of a ClientHello, then nothing
  std::unique_ptr<Connection> garbage = dial();
  ASSERT_TRUE(silent && half && garbage);
  ASSERT_TRUE(SendAll(half.get(), std::string("\x16\x03\x01\x01\x00\x01", 6)).ok());
  std::string noise(512, '\0');
  std::mt19937_64 rng(11);
  for (char& ch : noise) ch = static_cast<char>(rng());
  noise[0] = 0x17;  // not a handshake record
  ASSERT_TRUE(SendAll(garbage.get(), noise).ok());

  // Garbage ends its connection at once (an alert, then the end of the stream).
  Result<std::string> cut = Drain(garbage.get(), 2s);
  EXPECT_FALSE(IsTimedOut(cut.status())) << "garbage was not cut";

  // Meanwhile a good peer is served: neither the stalls nor the garbage hold the listener.
  TlsTransport good(&tcp_, m_.b);
  PlaceWriteAndRead(&good, {.volume = "busy", .uuid = Uuid::Random(), .size_bytes = kVolSize});
  const auto served = SteadyClock::now() - t0;
  uint8_t buf[64];
  if (served < kHandshake - 500ms) {
    EXPECT_TRUE(IsTimedOut(silent->Recv(buf, DeadlineIn(10ms)).status()))
        << "cut before the handshake timeout";
    EXPECT_TRUE(IsTimedOut(half->Recv(buf, DeadlineIn(10ms)).status()))
        << "cut before the handshake timeout";
  } else {
    ADD_FAILURE() << "the good peer took " << served.count() / 1000000 << " ms";
  }

  // The stalled handshakes are cut at the handshake timeout, not later.
  for (Connection* stalled : {silent.get(), half.get()}) {
    Result<std::string> end = Drain(stalled, kHandshake + 5s);
    EXPECT_FALSE(IsTimedOut(end.status())) << "a stalled handshake was never cut";
    const auto took = SteadyClock::now() - t0;
    EXPECT_GE(took, kHandshake - 100ms);
    EXPECT_LT(took, kHandshake + 5s);
  }
  EXPECT_EQ(server_->stats().auth_failures, 0u);
}

}  // namespace
}  // namespace shale::replication
