// NBD over TLS with the real clients of the Debian packages (docs/security.md): qemu-io with
// --object tls-creds-psk / tls-creds-x509, nbdinfo and nbdcopy with nbds:// URIs, reading and
// writing; clients without credentials, with the wrong key, with an untrusted certificate or not
// trusting the server are refused before any export data moves; NBD_OPT_LIST and NBD_OPT_GO
// before NBD_OPT_STARTTLS get NBD_REP_ERR_TLS_REQD (raw protocol); per-export authorization by
// certificate name; `shale status` and `export list` show the TLS state.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "nbd/wire_testing.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/tls_setup.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

#define REQUIRE_TOOLS()                                                                           \
  for (const char* tool : {"qemu-io", "nbdinfo", "nbdcopy", "certtool", "psktool"}) {             \
    if (FindProgram(tool).empty()) {                                                              \
      GTEST_SKIP() << tool << " is not installed (scripts/deps installs qemu-utils, libnbd-bin, " \
                   << "gnutls-bin)";                                                              \
    }                                                                                             \
  }

CommandResult Tool(const std::vector<std::string>& argv, int timeout_s = 120) {
  return RunProcess(argv, {.timeout = std::chrono::seconds(timeout_s)});
}

std::vector<std::string> Cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class NbdTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_TOOLS();
    ASSERT_TRUE(MakeTlsMaterial(h_.root(), &tls_));
  }

  // shaled with TLS on 127.0.0.1:0 and volumes "data" (64M) and "other" (16M).
  void Start(const std::vector<std::string>& tls_flags) {
    ASSERT_TRUE(h_.StartDaemon(Cat({"--nbd-listen", "127.0.0.1:0"}, tls_flags)));
    address_ = h_.NbdAddress();
    ASSERT_FALSE(address_.empty());
    for (const auto& [name, size] : {std::pair{"data", "64M"}, std::pair{"other", "16M"}}) {
      CommandResult r = h_.Shale({"volume", "create", name, "--size", size});
      ASSERT_EQ(r.exit_code, 0) << r.Describe();
    }
  }
  void StartPsk() { Start({"--nbd-tls-psk-file", tls_.psk_file()}); }
  void StartX509(const std::vector<std::string>& extra = {}) {
    Start(Cat({"--nbd-tls-x509-dir", tls_.server_dir()}, extra));
  }

  std::string PskUri(const std::string& user, const std::string& file, const std::string& name) {
    return "nbds://" + user + "@" + address_ + "/" + name + "?tls-psk-file=" + file;
  }
  std::string X509Uri(const std::string& who, const std::string& name) {
    return "nbds://" + address_ + "/" + name + "?tls-certificates=" + tls_.client_dir(who);
  }
  std::vector<std::string> QemuIoPsk(const std::string& dir, const std::string& name) {
    return Cat({"qemu-io"},
               QemuIoTls("tls-creds-psk,id=tls0,endpoint=client,username=alice,dir=" + dir,
                         address_, name));
  }
  std::vector<std::string> QemuIoX509(const std::string& who, const std::string& name) {
    return Cat({"qemu-io"},
               QemuIoTls("tls-creds-x509,id=tls0,endpoint=client,dir=" + tls_.client_dir(who),
                         address_, name));
  }
  CommandResult QemuIo(std::vector<std::string> argv, const std::vector<std::string>& cmds) {
    argv[0] = FindProgram("qemu-io");
    for (const std::string& c : cmds) argv.insert(argv.end(), {"-c", c});
    return Tool(argv);
  }

  // Reads and writes of volume `name` so far, from `shale volume show`.
  std::pair<uint64_t, uint64_t> Io(const std::string& name) {
    const nlohmann::json j = h_.Shale({"volume", "show", name, "-o", "json"}).Json();
    return {j["stats"]["reads"].get<uint64_t>(), j["stats"]["writes"].get<uint64_t>()};
  }

  // A file of `size` random bytes.
  std::string RandomFile(const std::string& name, size_t size, unsigned seed) {
    const std::string path = h_.root() + "/" + name;
    std::string data(size, '\0');
    std::mt19937 rng(seed);
    for (char& c : data) c = static_cast<char>(rng());
    std::ofstream(path, std::ios::binary) << data;
    return path;
  }

  Harness h_;
  TlsMaterial tls_;
  std::string address_;
};

// Bad TLS settings stop shaled at start with one line naming the flag (nothing is served
// half-configured); a good start logs what each NBD listener requires, and plain TCP
// (--nbd-insecure-tcp) logs a warning.
TEST_F(NbdTlsTest, BadTlsSettingsStopShaledAndTheLogSaysWhatEachListenerRequires) {
  auto run = [&](const std::vector<std::string>& flags) {
    return Tool(Cat({ShaledBinary(), "--data-dir", h_.root() + "/bad-data", "--log-file",
                     h_.root() + "/bad.log", "--nbd-listen", "127.0.0.1:0"},
                    flags),
                60);
  };
  CommandResult no_dir = run({"--nbd-tls-x509-dir", h_.root() + "/no-such-dir"});
  ExpectOneLineError(no_dir, "--nbd-tls-x509-dir", "shaled: ");
  EXPECT_EQ(no_dir.exit_code, 1) << no_dir.Describe();
  CommandResult no_psk = run({"--nbd-tls-psk-file", h_.root() + "/no-such.psk"});
  ExpectOneLineError(no_psk, "--nbd-tls-psk-file", "shaled: ");
  EXPECT_EQ(no_psk.exit_code, 1) << no_psk.Describe();
  // Per-export authorization names clients by certificate: without a CA to verify them, refused.
  const std::string no_ca = h_.root() + "/server-no-ca";
  std::filesystem::copy(tls_.server_dir(), no_ca);
  std::filesystem::remove(no_ca + "/ca-cert.pem");
  const std::string authz = h_.root() + "/authz.json";
  std::ofstream(authz) << "cn:alice data\n";
  CommandResult no_client_ca = run({"--nbd-tls-x509-dir", no_ca, "--nbd-tls-authz", authz});
  ExpectOneLineError(no_client_ca, "--nbd-tls-authz needs client certificates", "shaled: ");
  EXPECT_EQ(no_client_ca.exit_code, 1) << no_client_ca.Describe();
  CommandResult plain = run({});
  ExpectOneLineError(plain, "--nbd-insecure-tcp", "shaled: ");

  StartX509();
  const std::string log = h_.DaemonLog();
  EXPECT_NE(log.find("msg=\"nbd listener open\" transport=tcp"), std::string::npos) << log;
  EXPECT_NE(log.find("access=\"TLS required: "), std::string::npos) << log;
  EXPECT_EQ(log.find("--nbd-insecure-tcp"), std::string::npos) << "no warning with TLS: " << log;

  Harness insecure;
  ASSERT_TRUE(insecure.StartDaemon({"--nbd-listen", "127.0.0.1:0", "--nbd-insecure-tcp"}));
  const std::string plain_log = insecure.DaemonLog();
  EXPECT_NE(plain_log.find("level=warning"), std::string::npos) << plain_log;
  EXPECT_NE(plain_log.find("NBD TCP listener without TLS (--nbd-insecure-tcp)"), std::string::npos)
      << plain_log;
  EXPECT_NE(plain_log.find("access=\"no TLS: open to anyone who can connect\""), std::string::npos)
      << plain_log;
}

TEST_F(NbdTlsTest, PskWithQemuIoNbdinfoAndNbdcopy) {
  StartPsk();
  const nlohmann::json status = h_.Shale({"status", "-o", "json"}).Json();
  ASSERT_EQ(status["nbd"]["listeners"].size(), 2u);
  EXPECT_EQ(status["nbd"]["listeners"][0]["tls"], "psk");
  EXPECT_NE(h_.Shale({"status"}).out.find("nbds://" + address_ + "/VOLUME — TLS required (psk)"),
            std::string::npos);
  EXPECT_EQ(h_.Shale({"volume", "show", "data", "-o", "json"}).Json()["export_uri"],
            "nbds://" + address_ + "/data");

  CommandResult w = QemuIo(QemuIoPsk(tls_.psk_dir(), "data"),
                           {"write -P 0xab 0 1M", "write -P 0xcd 63M 1M", "flush"});
  ASSERT_EQ(w.exit_code, 0) << w.Describe();
  CommandResult r = QemuIo(QemuIoPsk(tls_.psk_dir(), "data"),
                           {"read -P 0xab 0 1M", "read -P 0xcd 63M 1M", "read -P 0 2M 1M"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;

  CommandResult info =
      Tool({FindProgram("nbdinfo"), "--json", PskUri("bob", tls_.psk_file(), "data")});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  EXPECT_EQ(info.Json()["exports"][0]["export-size"], 64 * kMiB);
  EXPECT_EQ(info.Json()["TLS"], true);

  // nbdcopy both ways through TLS (4 connections each).
  const std::string in = RandomFile("in.img", 16 * kMiB, 1);
  CommandResult up =
      Tool({FindProgram("nbdcopy"), "--flush", in, PskUri("alice", tls_.psk_file(), "other")});
  ASSERT_EQ(up.exit_code, 0) << up.Describe();
  const std::string out = h_.root() + "/out.img";
  CommandResult down =
      Tool({FindProgram("nbdcopy"), PskUri("alice", tls_.psk_file(), "other"), out});
  ASSERT_EQ(down.exit_code, 0) << down.Describe();
  EXPECT_TRUE(ReadTextFile(in) == ReadTextFile(out)) << "nbdcopy round trip differs";
}

TEST_F(NbdTlsTest, X509WithQemuIoNbdinfoAndNbdcopy) {
  StartX509();
  const nlohmann::json l = h_.Shale({"status", "-o", "json"}).Json()["nbd"]["listeners"][0];
  EXPECT_EQ(l["tls"], "x509");
  EXPECT_EQ(l["client_certificates"], true);

  CommandResult w = QemuIo(QemuIoX509("alice", "data"), {"write -P 0x5a 4096 3M", "flush"});
  ASSERT_EQ(w.exit_code, 0) << w.Describe();
  CommandResult r = QemuIo(QemuIoX509("bob", "data"), {"read -P 0x5a 4096 3M"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;

  CommandResult info = Tool({FindProgram("nbdinfo"), "--list", "--json", X509Uri("alice", "")});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  EXPECT_EQ(info.Json()["exports"].size(), 2u);

  const std::string in = RandomFile("in.img", 8 * kMiB, 2);
  CommandResult up = Tool({FindProgram("nbdcopy"), "--flush", in, X509Uri("alice", "other")});
  ASSERT_EQ(up.exit_code, 0) << up.Describe();
  const std::string out = h_.root() + "/out.img";
  CommandResult down = Tool({FindProgram("nbdcopy"), X509Uri("bob", "other"), out});
  ASSERT_EQ(down.exit_code, 0) << down.Describe();
  CommandResult cmp = Tool({"/usr/bin/cmp", "-n", std::to_string(8 * kMiB), in, out});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
}

TEST_F(NbdTlsTest, ClientsWithoutGoodCredentialsAreRefusedBeforeAnyDataMoves) {
  StartX509();
  const std::string nbdinfo = FindProgram("nbdinfo");
  const std::string plain = "nbd://" + address_ + "/data";
  const std::vector<std::pair<std::string, CommandResult>> refused = {
      {"no TLS at all", Tool({nbdinfo, plain})},
      {"no client certificate", Tool({nbdinfo, X509Uri("anonymous", "data")})},
      {"certificate from another CA", Tool({nbdinfo, X509Uri("mallory", "data")})},
      {"qemu-io without TLS", QemuIo({"qemu-io", "-f", "raw", plain}, {"read 0 4k"})},
      {"qemu-io with an untrusted certificate",
       QemuIo(QemuIoX509("mallory", "data"), {"read 0 4k"})},
  };
  for (const auto& [what, result] : refused) {
    EXPECT_NE(result.exit_code, 0) << what << ": " << result.Describe();
  }
  // The server's certificate is not trusted by a client of another CA either.
  std::filesystem::create_directories(h_.root() + "/distrust");
  std::filesystem::copy_file(tls_.dir + "/pki/other-ca/ca-cert.pem",
                             h_.root() + "/distrust/ca-cert.pem");
  CommandResult distrust =
      Tool({nbdinfo, "nbds://" + address_ + "/data?tls-certificates=" + h_.root() + "/distrust"});
  EXPECT_NE(distrust.exit_code, 0) << distrust.Describe();
  // Not one byte of a volume was read or written.
  EXPECT_EQ(Io("data"), std::make_pair(uint64_t{0}, uint64_t{0}));
  EXPECT_TRUE(h_.Shale({"export", "list", "-o", "json"}).Json()["exports"][0]["clients"].empty());
  EXPECT_NE(h_.DaemonLog().find("nbd TLS handshake refused"), std::string::npos);
}

TEST_F(NbdTlsTest, WrongPskKeyIsRefused) {
  StartPsk();
  CommandResult info =
      Tool({FindProgram("nbdinfo"), PskUri("alice", tls_.wrong_psk_file(), "data")});
  EXPECT_NE(info.exit_code, 0) << info.Describe();
  CommandResult unknown =
      Tool({FindProgram("nbdinfo"), PskUri("carol", tls_.wrong_psk_file(), "data")});
  EXPECT_NE(unknown.exit_code, 0) << unknown.Describe();
  CommandResult qemu = QemuIo(QemuIoPsk(tls_.wrong_psk_dir(), "data"), {"read 0 4k"});
  EXPECT_NE(qemu.exit_code, 0) << qemu.Describe();
  EXPECT_EQ(Io("data"), std::make_pair(uint64_t{0}, uint64_t{0}));
}

// The raw protocol: before NBD_OPT_STARTTLS every option but STARTTLS and ABORT gets
// NBD_REP_ERR_TLS_REQD, and nothing about the exports is said.
TEST_F(NbdTlsTest, ListAndGoBeforeStartTlsGetTlsRequired) {
  StartPsk();
  using nbd::wire_testing::GetU32s;
  using nbd::wire_testing::GetU64s;
  using nbd::wire_testing::U16;
  using nbd::wire_testing::U32;
  using nbd::wire_testing::U64;
  const int fd = nbd::wire_testing::ConnectTcp(address_, 30);
  ASSERT_GE(fd, 0);
  auto greeting = nbd::wire_testing::RecvExact(fd, 18);
  ASSERT_TRUE(greeting.has_value());
  const auto opt = [](uint32_t option, const std::string& data) {
    return U64(0x49484156454F5054ull) + U32(option) + U32(static_cast<uint32_t>(data.size())) +
           data;
  };
  // Flags, NBD_OPT_LIST (3), NBD_OPT_GO (7) for "data", NBD_OPT_INFO (6).
  const std::string go = U32(4) + "data" + U16(0);
  ASSERT_TRUE(nbd::wire_testing::SendAll(fd, U32(3) + opt(3, "") + opt(7, go) + opt(6, go)));
  for (uint32_t option : {3u, 7u, 6u}) {
    auto h = nbd::wire_testing::RecvExact(fd, 20);
    ASSERT_TRUE(h.has_value()) << option;
    EXPECT_EQ(GetU64s(*h, 0), 0x0003e889045565a9ull);
    EXPECT_EQ(GetU32s(*h, 8), option);
    EXPECT_EQ(GetU32s(*h, 12), 0x80000005u) << "NBD_REP_ERR_TLS_REQD for option " << option;
    auto message = nbd::wire_testing::RecvExact(fd, GetU32s(*h, 16));
    ASSERT_TRUE(message.has_value());
    EXPECT_EQ(message->find("data"), std::string::npos) << "nothing about exports: " << *message;
  }
  // NBD_OPT_STARTTLS (5) is acknowledged.
  ASSERT_TRUE(nbd::wire_testing::SendAll(fd, opt(5, "")));
  auto ack = nbd::wire_testing::RecvExact(fd, 20);
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(GetU32s(*ack, 12), 1u) << "NBD_REP_ACK";
  close(fd);
  // NBD_OPT_EXPORT_NAME (1) cannot be refused with an error: the server hangs up.
  auto raw = NbdRawClient::Tcp(address_);
  ASSERT_NE(raw, nullptr);
  EXPECT_FALSE(raw->Go("data").has_value());
  EXPECT_EQ(Io("data"), std::make_pair(uint64_t{0}, uint64_t{0}));
}

TEST_F(NbdTlsTest, ACertificateAllowedOneVolumeCannotOpenOrListAnother) {
  const std::string authz = h_.root() + "/authz.conf";
  std::ofstream(authz) << "# which certificate may open which volume\n"
                       << "cn:alice  data\n"
                       << "dns:bob.example  other\n";
  StartX509({"--nbd-tls-authz", authz});
  EXPECT_EQ(h_.Shale({"status", "-o", "json"}).Json()["nbd"]["listeners"][0]["authz"], true);
  const std::string nbdinfo = FindProgram("nbdinfo");
  CommandResult list = Tool({nbdinfo, "--list", "--json", X509Uri("alice", "")});
  ASSERT_EQ(list.exit_code, 0) << list.Describe();
  const nlohmann::json exports = list.Json()["exports"];
  ASSERT_EQ(exports.size(), 1u) << list.out;
  EXPECT_EQ(exports[0]["export-name"], "data");
  EXPECT_NE(Tool({nbdinfo, X509Uri("alice", "other")}).exit_code, 0);
  CommandResult q = QemuIo(QemuIoX509("alice", "other"), {"read 0 4k"});
  EXPECT_NE(q.exit_code, 0) << q.Describe();
  CommandResult ok = QemuIo(QemuIoX509("alice", "data"), {"write -P 1 0 64k"});
  EXPECT_EQ(ok.exit_code, 0) << ok.Describe();
  // bob is named by his certificate's DNS name.
  CommandResult bob = Tool({nbdinfo, "--list", "--json", X509Uri("bob", "")});
  ASSERT_EQ(bob.exit_code, 0) << bob.Describe();
  ASSERT_EQ(bob.Json()["exports"].size(), 1u);
  EXPECT_EQ(bob.Json()["exports"][0]["export-name"], "other");
  EXPECT_EQ(Io("other"), std::make_pair(uint64_t{0}, uint64_t{0}));
}

TEST_F(NbdTlsTest, ExportListShowsTheTlsIdentityOfEachClient) {
  StartPsk();
  std::vector<std::string> argv = QemuIoPsk(tls_.psk_dir(), "data");
  argv[0] = FindProgram("qemu-io");
  argv.insert(argv.end(), {"-c", "sleep 30000"});
  ChildProcess holder(argv, h_.root() + "/qemu-io.log");
  ASSERT_TRUE(WaitFor([&] {
    const nlohmann::json j = h_.Shale({"export", "list", "-o", "json"}).Json();
    for (const auto& e : j["exports"]) {
      for (const auto& c : e["clients"]) {
        if (c["tls_identity"] == "psk:alice") return true;
      }
    }
    return false;
  })) << holder.Log();
  EXPECT_NE(h_.Shale({"export", "list"}).out.find("(TLS psk:alice)"), std::string::npos);
}

}  // namespace
}  // namespace shale::e2e
