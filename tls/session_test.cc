#include "tls/session.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <thread>

#include "tls/fd_stream.h"
#include "tls/testing.h"

namespace shale::tls {
namespace {

using testing::CertSpec;
using testing::Pki;

// One PKI for the whole suite (certtool is not free): two CAs, a server, clients of each CA.
class TlsSessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!testing::HaveTools()) return;
    char tmpl[] = "/tmp/shale-tls-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = new std::string(tmpl);
    Pki pki(*dir_ + "/pki");
    ASSERT_TRUE(pki.MakeCa("ca").ok());
    ASSERT_TRUE(pki.MakeCa("other-ca").ok());
    ASSERT_TRUE(pki.MakeCert("ca", "server",
                             {.cn = "localhost", .dns = {"localhost"}, .ips = {"127.0.0.1"}})
                    .ok());
    ASSERT_TRUE(
        pki.MakeCert("ca", "alice", {.cn = "alice", .dns = {"alice.example"}, .ips = {"10.1.2.3"}})
            .ok());
    ASSERT_TRUE(pki.MakeCert("other-ca", "mallory", {.cn = "alice"}).ok());
    ASSERT_TRUE(pki.ServerDir("ca", "server", *dir_ + "/srv").ok());
    ASSERT_TRUE(pki.ServerDir("", "server", *dir_ + "/srv-nocheck").ok());
    ASSERT_TRUE(pki.ClientDir("ca", "alice", *dir_ + "/alice").ok());
    ASSERT_TRUE(pki.ClientDir("ca", "", *dir_ + "/anon").ok());
    ASSERT_TRUE(pki.ClientDir("ca", "mallory", *dir_ + "/mallory").ok());
    ASSERT_TRUE(pki.ClientDir("other-ca", "", *dir_ + "/wrong-trust").ok());
    ASSERT_TRUE(pki.MutualDir("ca", "server", *dir_ + "/node-a").ok());
    ASSERT_TRUE(pki.MutualDir("ca", "alice", *dir_ + "/node-b").ok());
    ASSERT_TRUE(pki.MutualDir("other-ca", "mallory", *dir_ + "/node-x").ok());
    ASSERT_TRUE(testing::MakePskFile(*dir_ + "/keys.psk", "alice").ok());
    ASSERT_TRUE(testing::MakePskFile(*dir_ + "/keys.psk", "bob").ok());
    ASSERT_TRUE(testing::MakePskFile(*dir_ + "/other.psk", "alice").ok());
  }
  static void TearDownTestSuite() {
    if (dir_ == nullptr) return;
    std::error_code ec;
    std::filesystem::remove_all(*dir_, ec);
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (dir_ == nullptr) GTEST_SKIP() << "certtool/psktool (Debian gnutls-bin) are not installed";
  }

  static std::string D(const std::string& rel) { return *dir_ + "/" + rel; }

  static std::shared_ptr<const Credentials> Load(Result<std::shared_ptr<const Credentials>> r) {
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : nullptr;
  }

  static std::unique_ptr<Session> Make(std::shared_ptr<const Credentials> c, Role role) {
    Result<std::unique_ptr<Session>> s = Session::Create(std::move(c), role);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  // Moves bytes between the two sessions until both finished their handshake or one failed.
  // Returns the client's and the server's results.
  static std::pair<Status, Status> Pump(Session& client, Session& server) {
    Status cs, ss;
    bool cdone = false, sdone = false;
    for (int round = 0; round < 32 && !(cdone && sdone); ++round) {
      if (cs.ok() && !cdone) {
        Result<bool> r = client.Handshake();
        if (!r.ok()) cs = r.status();
        cdone = r.ok() && *r;
      }
      server.AppendInput(client.output());
      client.OutputSent(client.output().size());
      if (ss.ok() && !sdone) {
        Result<bool> r = server.Handshake();
        if (!r.ok()) ss = r.status();
        sdone = r.ok() && *r;
      }
      client.AppendInput(server.output());
      server.OutputSent(server.output().size());
      if (!cs.ok() && !ss.ok()) break;
      if ((!cs.ok() || !ss.ok()) && round > 4) break;
    }
    if (cs.ok() && !cdone) cs = Status::Aborted("client handshake did not finish");
    if (ss.ok() && !sdone) ss = Status::Aborted("server handshake did not finish");
    return {cs, ss};
  }

  // Sends `data` from one session to the other and reads it back.
  static std::string Transfer(Session& from, Session& to, const std::string& data) {
    EXPECT_TRUE(from.Write({reinterpret_cast<const uint8_t*>(data.data()), data.size()}).ok());
    to.AppendInput(from.output());
    from.OutputSent(from.output().size());
    std::string got(data.size() + 16, '\0');
    size_t n = 0;
    while (to.ReadReady() && n < got.size()) {
      Result<size_t> r = to.Read({reinterpret_cast<uint8_t*>(got.data()) + n, got.size() - n});
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok() || *r == 0) break;
      n += *r;
    }
    got.resize(n);
    return got;
  }

  static std::string* dir_;
};

std::string* TlsSessionTest::dir_ = nullptr;

TEST_F(TlsSessionTest, PskHandshakeIdentifiesTheUserAndCarriesData) {
  auto server = Make(Load(Credentials::PskServerFile(D("keys.psk"))), Role::kServer);
  auto client = Make(Load(Credentials::PskClientFile(D("keys.psk"), "bob")), Role::kClient);
  auto [cs, ss] = Pump(*client, *server);
  ASSERT_TRUE(cs.ok()) << cs.ToString() << " / server: " << ss.ToString();
  ASSERT_TRUE(ss.ok()) << ss.ToString();
  EXPECT_EQ(server->peer().psk_username, "bob");
  EXPECT_EQ(server->peer().Names(), std::vector<std::string>{"psk:bob"});
  EXPECT_EQ(server->peer().ToString(), "psk:bob");
  EXPECT_NE(server->Description().find("TLS1."), std::string::npos) << server->Description();
  // AES-128-GCM, the cheapest AEAD per byte here, not GnuTLS's ChaCha20 preference on VMs
  // (credentials.cc).
  EXPECT_NE(server->Description().find("(AES-128-GCM)"), std::string::npos)
      << server->Description();
  EXPECT_EQ(Transfer(*client, *server, "hello server"), "hello server");
  EXPECT_EQ(Transfer(*server, *client, "hello client"), "hello client");
}

TEST_F(TlsSessionTest, WrongPskKeyOrUnknownUserIsRefused) {
  auto creds = Load(Credentials::PskServerFile(D("keys.psk")));
  {
    auto server = Make(creds, Role::kServer);
    auto client = Make(Load(Credentials::PskClientFile(D("other.psk"), "alice")), Role::kClient);
    auto [cs, ss] = Pump(*client, *server);
    EXPECT_FALSE(cs.ok() && ss.ok());
    EXPECT_FALSE(server->handshake_done());
  }
  {
    auto server = Make(creds, Role::kServer);
    auto client = Make(Load(Credentials::PskClient("carol", std::string(32, 'k'))), Role::kClient);
    auto [cs, ss] = Pump(*client, *server);
    EXPECT_FALSE(ss.ok());
    EXPECT_FALSE(server->handshake_done());
  }
}

TEST_F(TlsSessionTest, X509ClientCertificateIsVerifiedAndNamed) {
  auto server_creds = Load(Credentials::X509ServerDir(D("srv")));
  ASSERT_TRUE(server_creds->requires_peer_certificate());
  auto server = Make(server_creds, Role::kServer);
  auto client = Make(Load(Credentials::X509ClientDir(D("alice"), "localhost")), Role::kClient);
  auto [cs, ss] = Pump(*client, *server);
  ASSERT_TRUE(cs.ok()) << cs.ToString() << " / server: " << ss.ToString();
  ASSERT_TRUE(ss.ok()) << ss.ToString();
  const PeerIdentity& peer = server->peer();
  EXPECT_TRUE(peer.certificate);
  EXPECT_EQ(peer.common_name, "alice");
  EXPECT_NE(peer.subject.find("CN=alice"), std::string::npos) << peer.subject;
  const std::vector<std::string> names = peer.Names();
  for (const char* want : {"cn:alice", "dns:alice.example", "ip:10.1.2.3"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }
  EXPECT_NE(server->Description().find("(AES-128-GCM)"), std::string::npos)
      << server->Description();
  EXPECT_EQ(Transfer(*client, *server, "data"), "data");
}

TEST_F(TlsSessionTest, X509RefusesMissingUntrustedAndMisnamedCertificates) {
  auto server_creds = Load(Credentials::X509ServerDir(D("srv")));
  struct Case {
    const char* what;
    std::string dir;
    std::string host;
  };
  const Case cases[] = {
      {"no client certificate", D("anon"), "localhost"},
      {"client certificate from another CA", D("mallory"), "localhost"},
      {"server certificate from a CA the client does not trust", D("wrong-trust"), "localhost"},
      {"server certificate for another host name", D("alice"), "db.example"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto server = Make(server_creds, Role::kServer);
    auto client = Make(Load(Credentials::X509ClientDir(c.dir, c.host)), Role::kClient);
    auto [cs, ss] = Pump(*client, *server);
    EXPECT_FALSE(cs.ok() && ss.ok());
    EXPECT_FALSE(server->handshake_done() && client->handshake_done());
    // Nothing was decrypted on either side.
    EXPECT_FALSE(server->ReadReady() && server->handshake_done());
  }
}

TEST_F(TlsSessionTest, X509WithoutCaAsksNoClientCertificate) {
  auto server_creds = Load(Credentials::X509ServerDir(D("srv-nocheck")));
  EXPECT_FALSE(server_creds->requires_peer_certificate());
  auto server = Make(server_creds, Role::kServer);
  auto client = Make(Load(Credentials::X509ClientDir(D("anon"), "127.0.0.1")), Role::kClient);
  auto [cs, ss] = Pump(*client, *server);
  ASSERT_TRUE(cs.ok()) << cs.ToString() << " / server: " << ss.ToString();
  ASSERT_TRUE(ss.ok()) << ss.ToString();
  EXPECT_FALSE(server->peer().certificate);
  EXPECT_EQ(server->peer().ToString(), "anonymous");
  EXPECT_TRUE(server->peer().Names().empty());
}

// The replica transport's hook: both ends present certificates of the cluster CA; a peer with a
// certificate of another CA is refused, whichever side it is on.
TEST_F(TlsSessionTest, MutualPeersOfOneCaConnectAndAnotherCaIsRefused) {
  auto a = Load(Credentials::X509MutualDir(D("node-a")));
  auto b = Load(Credentials::X509MutualDir(D("node-b")));
  auto x = Load(Credentials::X509MutualDir(D("node-x")));
  ASSERT_TRUE(a->CanServe(Role::kServer) && a->CanServe(Role::kClient));
  {
    auto server = Make(a, Role::kServer);
    auto client = Make(b, Role::kClient);
    auto [cs, ss] = Pump(*client, *server);
    ASSERT_TRUE(cs.ok()) << cs.ToString() << " / server: " << ss.ToString();
    ASSERT_TRUE(ss.ok()) << ss.ToString();
    EXPECT_EQ(server->peer().common_name, "alice");
    EXPECT_EQ(client->peer().common_name, "localhost");
  }
  for (bool intruder_is_client : {true, false}) {
    SCOPED_TRACE(intruder_is_client ? "intruder connects" : "intruder accepts");
    auto server = Make(intruder_is_client ? a : x, Role::kServer);
    auto client = Make(intruder_is_client ? x : a, Role::kClient);
    auto [cs, ss] = Pump(*client, *server);
    EXPECT_FALSE(cs.ok() && ss.ok());
    Session& honest = intruder_is_client ? *server : *client;
    EXPECT_FALSE(honest.handshake_done());
  }
}

TEST_F(TlsSessionTest, GarbageInsteadOfAClientHelloFailsCleanly) {
  auto server = Make(Load(Credentials::PskServerFile(D("keys.psk"))), Role::kServer);
  std::mt19937 rng(7);
  std::string garbage(4096, '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  garbage[0] = 0x16;  // looks like a handshake record for a moment
  server->AppendInput({reinterpret_cast<const uint8_t*>(garbage.data()), garbage.size()});
  Result<bool> r = server->Handshake();
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(server->Handshake().ok());  // stays failed
}

TEST_F(TlsSessionTest, GatheredWritesMakeFullRecordsAndArriveIntact) {
  auto server = Make(Load(Credentials::PskServerFile(D("keys.psk"))), Role::kServer);
  auto client = Make(Load(Credentials::PskClientFile(D("keys.psk"), "alice")), Role::kClient);
  auto [cs, ss] = Pump(*client, *server);
  ASSERT_TRUE(cs.ok() && ss.ok());
  // NBD-like replies: a 16-byte header, then data of various sizes, 1 MiB among them.
  std::string expect;
  std::vector<std::string> parts;
  std::mt19937 rng(1);
  for (size_t len : {16u, 4096u, 16u, 1u << 20, 16u, 512u, 16u, 70000u}) {
    std::string p(len, '\0');
    for (char& c : p) c = static_cast<char>(rng());
    expect += p;
    parts.push_back(std::move(p));
  }
  std::vector<iovec> iov;
  for (auto& p : parts) iov.push_back({p.data(), p.size()});
  ASSERT_TRUE(server->WriteGather(iov).ok());
  // Overhead stays small: no record is wasted on a 16-byte header alone.
  const size_t records = expect.size() / 16384 + 2;
  EXPECT_LT(server->output().size(), expect.size() + records * 64);
  // Deliver the ciphertext in odd-sized pieces, as a socket would.
  std::string got;
  std::string out(server->output().begin(), server->output().end());
  server->OutputSent(out.size());
  for (size_t pos = 0; pos < out.size();) {
    const size_t n = std::min<size_t>(out.size() - pos, 7001);
    client->AppendInput({reinterpret_cast<const uint8_t*>(out.data()) + pos, n});
    pos += n;
    std::string buf(100000, '\0');
    while (client->ReadReady()) {
      Result<size_t> r = client->Read({reinterpret_cast<uint8_t*>(buf.data()), buf.size()});
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      if (*r == 0) break;
      got.append(buf, 0, *r);
    }
  }
  EXPECT_EQ(got.size(), expect.size());
  EXPECT_TRUE(got == expect);
}

TEST_F(TlsSessionTest, CloseNotifyEndsTheStream) {
  auto server = Make(Load(Credentials::PskServerFile(D("keys.psk"))), Role::kServer);
  auto client = Make(Load(Credentials::PskClientFile(D("keys.psk"), "alice")), Role::kClient);
  auto [cs, ss] = Pump(*client, *server);
  ASSERT_TRUE(cs.ok() && ss.ok());
  client->Close();
  server->AppendInput(client->output());
  uint8_t buf[16];
  Result<size_t> r = server->Read(buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 0u);
  EXPECT_TRUE(server->eof());
}

TEST_F(TlsSessionTest, FdStreamOverASocketPair) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  auto server_creds = Load(Credentials::X509MutualDir(D("node-a")));
  auto client_creds = Load(Credentials::X509MutualDir(D("node-b")));
  std::string received;
  Status server_status;
  std::thread server([&] {
    auto s = FdStream::Handshake(fds[1], server_creds, Role::kServer, std::chrono::seconds(10));
    if (!s.ok()) {
      server_status = s.status();
      return;
    }
    received.resize(300000);
    server_status = (*s)->RecvExact({reinterpret_cast<uint8_t*>(received.data()), received.size()},
                                    std::chrono::seconds(10));
    if (server_status.ok()) {
      const std::string ack = "ok";
      server_status = (*s)->Send({reinterpret_cast<const uint8_t*>(ack.data()), ack.size()},
                                 std::chrono::seconds(10));
    }
  });
  auto c = FdStream::Handshake(fds[0], client_creds, Role::kClient, std::chrono::seconds(10));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->peer().common_name, "localhost");
  std::string data(300000, 'x');
  ASSERT_TRUE((*c)->Send({reinterpret_cast<const uint8_t*>(data.data()), data.size()},
                         std::chrono::seconds(10))
                  .ok());
  uint8_t ack[2];
  EXPECT_TRUE((*c)->RecvExact(ack, std::chrono::seconds(10)).ok());
  server.join();
  EXPECT_TRUE(server_status.ok()) << server_status.ToString();
  EXPECT_EQ(received, data);
  close(fds[0]);
  close(fds[1]);
}

TEST_F(TlsSessionTest, FdStreamHandshakeTimesOutOnASilentPeer) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  auto creds = Load(Credentials::PskClientFile(D("keys.psk"), "alice"));
  const auto start = std::chrono::steady_clock::now();
  auto c = FdStream::Handshake(fds[0], creds, Role::kClient, std::chrono::milliseconds(300));
  EXPECT_FALSE(c.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace shale::tls
