// What shaled exposes (docs/security.md): on its default configuration an unprivileged local
// user reaches nothing — no TCP NBD listener exists, the UNIX sockets refuse the connection —
// and on a TLS listener hostile clients (garbage in the TLS handshake, a client that stops
// mid-handshake, a flood of handshakes) neither crash the daemon nor stall other connections.
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "nbd/wire_testing.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/tls_setup.h"

namespace shale::e2e {
namespace {

using namespace std::chrono_literals;
constexpr uint64_t kMiB = 1024 * 1024;

// Inodes of the sockets process `pid` holds open.
std::set<std::string> SocketInodes(pid_t pid) {
  std::set<std::string> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.rfind("socket:[", 0) == 0) out.insert(target.substr(8, target.size() - 9));
  }
  return out;
}

// "ADDR:PORT" (hex, as in /proc/net/tcp) of every listening TCP socket among `inodes`.
std::vector<std::string> ListeningTcp(const std::set<std::string>& inodes) {
  std::vector<std::string> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(ReadTextFile(table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
      if (state == "0A" && inodes.count(inode) > 0) out.push_back(local);  // 0A: LISTEN
    }
  }
  return out;
}

// Runs argv as the unprivileged user "nobody" (setpriv, util-linux).
CommandResult AsNobody(const std::vector<std::string>& argv) {
  std::vector<std::string> full = {FindProgram("setpriv"), "--reuid=65534", "--regid=65534",
                                   "--clear-groups", "--"};
  full.insert(full.end(), argv.begin(), argv.end());
  return RunProcess(full, {.timeout = 60s});
}

TEST(Security, UnprivilegedUserReachesNothingOnTheDefaultConfiguration) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run commands as the user nobody";
  for (const char* tool : {"setpriv", "nbdinfo", "qemu-io"}) {
    if (FindProgram(tool).empty()) GTEST_SKIP() << tool << " is not installed";
  }
  Harness h;
  // The defaults (a smaller pool only): no --nbd-listen, no TLS flags. The metrics endpoint
  // (read-only counters, on loopback by default) gets a free port: tests run in parallel.
  ASSERT_TRUE(h.StartDaemonRaw(
      {"--data-dir", h.data_dir(), "--default-pool-size", "1G", "--metrics-listen", "127.0.0.1:0"},
      h.endpoint()));
  ASSERT_EQ(h.Shale({"volume", "create", "secret", "--size", "16M"}).exit_code, 0);
  ASSERT_EQ(
      RunProcess({FindProgram("qemu-io"), "-f", "raw",
                  "nbd+unix:///secret?socket=" + h.nbd_socket_path(), "-c", "write -P 0x77 0 64k"})
          .exit_code,
      0);
  // Let nobody walk to the sockets: only the sockets' own modes stand in the way.
  chmod(h.root().c_str(), 0755);
  chmod(h.data_dir().c_str(), 0755);

  // No TCP listener at all: not in `shale status`, not among the daemon's sockets.
  const nlohmann::json status = h.Shale({"status", "-o", "json"}).Json();
  EXPECT_EQ(status["nbd"]["tcp_address"], "");
  ASSERT_EQ(status["nbd"]["listeners"].size(), 1u);
  EXPECT_EQ(status["nbd"]["listeners"][0]["transport"], "unix");
  // The only TCP listener is the metrics endpoint (docs/security.md): no NBD over TCP.
  const std::string metrics = status["metrics"]["address"].get<std::string>();
  char metrics_port[8];
  std::snprintf(metrics_port, sizeof(metrics_port), ":%04X",
                static_cast<unsigned>(std::stoul(metrics.substr(metrics.rfind(':') + 1))));
  const std::vector<std::string> tcp = ListeningTcp(SocketInodes(h.daemon_pid()));
  ASSERT_EQ(tcp.size(), 1u) << "shaled listens on TCP beyond its metrics endpoint " << metrics;
  EXPECT_TRUE(tcp[0].ends_with(metrics_port)) << tcp[0] << " is not the metrics port " << metrics;
  EXPECT_NE(h.DaemonLog().find("msg=\"nbd listener open\" transport=unix"), std::string::npos)
      << h.DaemonLog();
  EXPECT_EQ(h.DaemonLog().find("transport=tcp"), std::string::npos) << h.DaemonLog();

  // The UNIX sockets refuse nobody: NBD (nbdinfo, qemu-io) and the control API (shale).
  for (const std::string& path : {h.nbd_socket_path(), h.socket_path()}) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << path;
  }
  CommandResult list =
      AsNobody({FindProgram("nbdinfo"), "--list", "nbd+unix:///?socket=" + h.nbd_socket_path()});
  EXPECT_NE(list.exit_code, 0) << list.Describe();
  EXPECT_NE(list.err.find("ermission denied"), std::string::npos) << list.Describe();
  CommandResult read =
      AsNobody({FindProgram("qemu-io"), "-f", "raw",
                "nbd+unix:///secret?socket=" + h.nbd_socket_path(), "-c", "read -P 0x77 0 64k"});
  EXPECT_NE(read.exit_code, 0) << read.Describe();
  CommandResult shale = AsNobody({ShaleBinary(), "--endpoint", h.endpoint(), "volume", "list"});
  EXPECT_NE(shale.exit_code, 0) << shale.Describe();
  // The daemon saw no NBD client at all from those attempts.
  EXPECT_TRUE(h.Shale({"export", "list", "-o", "json"}).Json()["exports"][0]["clients"].empty());
}

// Greeting, client flags, NBD_OPT_STARTTLS and its ACK: the connection is ready for TLS.
bool StartTls(int fd) {
  using nbd::wire_testing::GetU32s;
  using nbd::wire_testing::U32;
  using nbd::wire_testing::U64;
  if (!nbd::wire_testing::RecvExact(fd, 18)) return false;
  if (!nbd::wire_testing::SendAll(fd, U32(3) + U64(0x49484156454F5054ull) + U32(5) + U32(0))) {
    return false;
  }
  auto reply = nbd::wire_testing::RecvExact(fd, 20);
  return reply && GetU32s(*reply, 12) == 1;
}

// Waits until the server closes `fd` (or `timeout` passes).
bool ClosedByServer(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    const ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

TEST(Security, HostileTlsHandshakesDoNotStallOtherClientsOrCrashTheDaemon) {
  for (const char* tool : {"certtool", "psktool", "nbdinfo"}) {
    if (FindProgram(tool).empty()) GTEST_SKIP() << tool << " is not installed";
  }
  Harness h;
  TlsMaterial tls;
  ASSERT_TRUE(MakeTlsMaterial(h.root(), &tls));
  ASSERT_TRUE(h.StartDaemon({"--nbd-listen", "127.0.0.1:0", "--nbd-tls-psk-file", tls.psk_file(),
                             "--nbd-handshake-timeout", "2"}));
  const std::string address = h.NbdAddress();
  ASSERT_EQ(h.Shale({"volume", "create", "v", "--size", "16M"}).exit_code, 0);
  // An established client (on the UNIX socket, so the measurement is the server's, not TLS's).
  auto good = NbdRawClient::Unix(h.nbd_socket_path());
  ASSERT_NE(good, nullptr);
  ASSERT_EQ(good->Go("v"), 16 * kMiB);
  const std::string block(65536, 'g');
  ASSERT_EQ(good->Request(NbdRawClient::kCmdWrite, 0, 65536, block), 0);

  // A client that stops mid-handshake is cut off by the handshake timeout.
  const int stalled = nbd::wire_testing::ConnectTcp(address, 5);
  ASSERT_GE(stalled, 0);
  ASSERT_TRUE(StartTls(stalled));
  ASSERT_TRUE(nbd::wire_testing::SendAll(stalled, std::string("\x16\x03\x01\x01\x00", 5)));
  const auto stalled_at = std::chrono::steady_clock::now();

  std::atomic<bool> stop{false};
  std::atomic<int> connections{0};
  auto flood = [&](int kind) {
    std::mt19937 rng(static_cast<unsigned>(kind) + 11);
    for (int round = 0; round < 500 && !stop.load(); ++round) {
      const int fd = nbd::wire_testing::ConnectTcp(address, 5);
      if (fd < 0) continue;
      ++connections;
      if (StartTls(fd)) {
        if (kind % 2 == 0) {  // garbage where the ClientHello belongs
          std::string g(1 + rng() % 4096, '\0');
          for (char& c : g) c = static_cast<char>(rng());
          nbd::wire_testing::SendAll(fd, g);
          ClosedByServer(fd, 3s);
        } else {  // a valid-looking record header, then the client hangs up
          nbd::wire_testing::SendAll(fd, std::string("\x16\x03\x03\x00\x30", 5));
        }
      }
      close(fd);
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back(flood, i);
  // Meanwhile a real TLS client completes, and the established client is served promptly.
  CommandResult tls_client = RunProcess(
      {FindProgram("nbdinfo"), "nbds://alice@" + address + "/v?tls-psk-file=" + tls.psk_file()},
      {.timeout = 60s});
  auto worst = std::chrono::steady_clock::duration::zero();
  int reads = 0;
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < 5s) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string data;
    ASSERT_EQ(good->Request(NbdRawClient::kCmdRead, 0, 65536, "", &data), 0);
    ASSERT_EQ(data, block);
    worst = std::max(worst, std::chrono::steady_clock::now() - t0);
    ++reads;
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(tls_client.exit_code, 0) << tls_client.Describe();
  EXPECT_GT(connections.load(), 20);
  EXPECT_GT(reads, 20);
  EXPECT_LT(worst, 1000ms) << "slowest read of the established client during the flood";
  // The stalled client was disconnected once its 2 s were up, not before and not much later.
  EXPECT_TRUE(ClosedByServer(stalled, 20s));
  EXPECT_GE(std::chrono::steady_clock::now() - stalled_at, 1900ms);
  close(stalled);
  EXPECT_TRUE(h.daemon_running());
  EXPECT_NE(h.DaemonLog().find("nbd handshake timed out"), std::string::npos);
  // Every hostile connection is gone; the daemon still serves TLS clients.
  EXPECT_TRUE(WaitFor(
      [&] {
        return h.Shale({"status", "-o", "json"}).Json()["nbd"]["connections"] == 1;
      },
      30s));
  CommandResult after = RunProcess(
      {FindProgram("nbdinfo"), "nbds://bob@" + address + "/v?tls-psk-file=" + tls.psk_file()},
      {.timeout = 60s});
  EXPECT_EQ(after.exit_code, 0) << after.Describe();
  EXPECT_EQ(h.StopDaemon(SIGTERM), 0);
}

}  // namespace
}  // namespace shale::e2e
