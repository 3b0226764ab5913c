// shaled as a program: its options, config file, control socket, embedded default, and what
// `shale` says when no daemon is there.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

TEST(Shaled, HelpDocumentsEveryOption) {
  CommandResult help = RunProcess({ShaledBinary(), "--help"});
  ASSERT_EQ(help.exit_code, 0) << help.Describe();
  EXPECT_EQ(help.err, "");
  for (const char* option :
       {"--data-dir", "--default-pool-size", "--default-cluster-size", "--no-default-pool",
        "--reactors", "--io-backend", "--commit-interval-ms", "--log-level", "--log-file",
        "--control-socket", "--config", "--help", "--version"}) {
    EXPECT_NE(help.out.find(option), std::string::npos) << option << " undocumented:\n" << help.out;
  }
  // Defaults are visible.
  EXPECT_NE(help.out.find("./shale-data"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("8G"), std::string::npos) << help.out;

  CommandResult version = RunProcess({ShaledBinary(), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out.rfind("shaled ", 0), 0u) << version.Describe();
}

TEST(Shaled, BadOptionsExitWithOneLine) {
  Harness h;
  const std::string data = h.root() + "/never";
  CommandResult unknown = RunProcess({ShaledBinary(), "--data-dir", data, "--frobnicate"});
  ExpectOneLineError(unknown, "--frobnicate", "shaled: ");
  EXPECT_EQ(unknown.exit_code, 2);
  ExpectOneLineError(RunProcess({ShaledBinary(), "--data-dir", data, "--default-pool-size", "12Q"}),
                     "invalid size '12Q'", "shaled: ");
  ExpectOneLineError(RunProcess({ShaledBinary(), "--data-dir", data, "--io-backend", "spdk"}),
                     "spdk", "shaled: ");
  ExpectOneLineError(RunProcess({ShaledBinary(), "--data-dir", data, "--reactors", "0"}),
                     "--reactors", "shaled: ");
  ExpectOneLineError(RunProcess({ShaledBinary(), "--config", h.root() + "/missing.toml"}),
                     "missing.toml", "shaled: ");
  EXPECT_FALSE(std::filesystem::exists(data)) << "a usage error touches nothing";
}

TEST(Shaled, ConfigFileIsHonoured) {
  Harness h;
  const std::string data = h.root() + "/from-config";
  const std::string config = h.root() + "/shaled.toml";
  std::ofstream(config) << "# written by the e2e test\n"
                        << "data-dir = \"" << data << "\"\n"
                        << "default-pool-size = \"512M\"\n"
                        << "log-file = \"" << h.root() << "/config.log\"\n"
                        << "nbd-listen = \"127.0.0.1:0\"\n"
                        << "nbd-insecure-tcp = true\n"
                        << "metrics-listen = \"127.0.0.1:0\"\n";
  ASSERT_TRUE(h.StartDaemonRaw({"--config", config}, "unix://" + data + "/shaled.sock"));

  CommandResult status =
      h.ShaleRaw({"--endpoint", "unix://" + data + "/shaled.sock", "status", "-o", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_EQ(status.Json()["data_dir"], data);
  EXPECT_EQ(std::filesystem::file_size(data + "/default-pool.img"), 512u * 1024 * 1024);
  const std::string text = ReadTextFile(h.root() + "/config.log");
  EXPECT_NE(text.find("msg=\"shaled ready\" control=unix://" + data + "/shaled.sock"),
            std::string::npos)
      << text;
  EXPECT_EQ(h.StopDaemon(SIGTERM), 0);
}

TEST(Shaled, ControlSocketIsOwnerOnly) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  struct stat st;
  ASSERT_EQ(stat(h.socket_path().c_str(), &st), 0) << std::generic_category().message(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u) << std::oct << (st.st_mode & 07777);
  EXPECT_NE(h.DaemonLog().find("msg=\"shaled ready\" control=" + h.endpoint()), std::string::npos)
      << h.DaemonLog();
}

TEST(Shaled, RefusesToReplaceAFileAtTheSocketPath) {
  Harness h;
  std::filesystem::create_directories(h.data_dir());
  std::ofstream(h.socket_path()) << "not a socket";
  CommandResult r =
      RunProcess({ShaledBinary(), "--data-dir", h.data_dir(), "--default-pool-size", "1G",
                  "--log-file", h.root() + "/refused.log", "--metrics-listen", "127.0.0.1:0"});
  ExpectOneLineError(r, "exists and is not a socket", "shaled: ");
  EXPECT_EQ(ReadTextFile(h.socket_path()), "not a socket");
  // The failed start released the data dir: a daemon with a free socket path starts on it.
  const std::string other = h.root() + "/other.sock";
  ASSERT_TRUE(h.StartDaemonRaw(
      {"--data-dir", h.data_dir(), "--control-socket", other, "--metrics-listen", "127.0.0.1:0"},
      "unix://" + other));
  EXPECT_EQ(h.ShaleRaw({"--endpoint", "unix://" + other, "volume", "list"}).exit_code, 0);
}

TEST(Shaled, EmbeddedDefaultNeedsNoFlags) {
  // `shaled` and `shale` with no flags from the same directory (only the pool is made smaller
  // to keep the test light). No TCP listener by default: NBD on the UNIX socket only.
  Harness h;
  ASSERT_TRUE(h.StartDaemonRaw({"--default-pool-size", "1G", "--metrics-listen", "127.0.0.1:0"},
                               "unix://" + h.root() + "/shale-data/shaled.sock", h.root()));
  CommandResult status = h.ShaleRaw({"status", "-o", "json"}, {.cwd = h.root()});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_EQ(status.Json()["data_dir"], h.root() + "/shale-data");
  EXPECT_EQ(status.Json()["pool_count"], 1);
  EXPECT_TRUE(std::filesystem::exists(h.root() + "/shale-data/default-pool.img"));
  // The NBD socket defaults to the data dir.
  EXPECT_EQ(status.Json()["nbd"]["unix_socket"], h.root() + "/shale-data/nbd.sock");
  EXPECT_TRUE(std::filesystem::exists(h.root() + "/shale-data/nbd.sock"));
  EXPECT_EQ(status.Json()["nbd"]["tcp_address"], "");

  // $SHALE_ENDPOINT reaches it from anywhere.
  CommandResult via_env = h.ShaleRaw(
      {"volume", "list"},
      {.cwd = "/", .env = {{"SHALE_ENDPOINT", "unix://" + h.root() + "/shale-data/shaled.sock"}}});
  EXPECT_EQ(via_env.exit_code, 0) << via_env.Describe();
}

TEST(Shale, UnreachableDaemonIsOneClearLine) {
  Harness h;
  const std::string nowhere = "unix://" + h.root() + "/nowhere.sock";
  CommandResult missing = h.ShaleRaw({"--endpoint", nowhere, "status"});
  ExpectOneLineError(missing, "cannot reach shaled at " + nowhere + ": no such socket");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("scripts/quickstart"), std::string::npos) << missing.err;

  // A socket file nobody listens on (a daemon killed with -9).
  const std::string dead = h.root() + "/dead.sock";
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, dead.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  ExpectOneLineError(h.ShaleRaw({"--endpoint", "unix://" + dead, "volume", "list"}),
                     "cannot reach shaled at unix://" + dead + ": connection refused");

  // The default endpoint, from a directory without a daemon, names the socket it tried.
  ExpectOneLineError(h.ShaleRaw({"volume", "list", "-o", "json"}, {.cwd = h.root()}),
                     "cannot reach shaled at unix://" + h.root() + "/shale-data/shaled.sock");
}

}  // namespace
}  // namespace shale::e2e
