// Restarts through the real binaries: kill -9 and SIGTERM/SIGINT, then the same data dir again.
// Every pool and volume must come back exactly (sizes in bytes from the JSON output).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

// Creates volumes of assorted sizes (one grown after creation) and returns `volume list` JSON.
nlohmann::json PopulateVolumes(Harness& h) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"volume", "create", "a", "--size", "1G", "--label", "k=v"},
        std::vector<std::string>{"volume", "create", "b", "--size", "12345678"},
        std::vector<std::string>{"volume", "create", "c", "--size", "3T", "--read-only"},
        std::vector<std::string>{"volume", "resize", "b", "--size", "100M"}}) {
    CommandResult r = h.Shale(args);
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
  }
  CommandResult list = h.Shale({"volume", "list", "-o", "json"});
  EXPECT_EQ(list.exit_code, 0) << list.Describe();
  nlohmann::json volumes = list.Json()["volumes"];
  EXPECT_EQ(volumes.size(), 3u);
  return volumes;
}

// What must survive a restart: everything but the per-run I/O counters and the export URI
// (the harness gives each run a free NBD port).
nlohmann::json Durable(nlohmann::json volumes) {
  for (auto& v : volumes) {
    v.erase("stats");
    v.erase("export_uri");
  }
  return volumes;
}

TEST(Restart, KillNineKeepsEveryVolume) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  const nlohmann::json before = PopulateVolumes(h);
  ASSERT_EQ(before[1]["size_bytes"], 100 * 1024 * 1024);

  h.KillDaemon();
  EXPECT_FALSE(h.daemon_running());
  // kill -9 leaves the socket file behind; the next start must replace it.
  ASSERT_TRUE(std::filesystem::exists(h.socket_path()));
  ExpectOneLineError(h.Shale({"status"}), "cannot reach shaled at " + h.endpoint());

  ASSERT_TRUE(h.StartDaemon());
  CommandResult list = h.Shale({"volume", "list", "-o", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.Describe();
  EXPECT_EQ(Durable(list.Json()["volumes"]), Durable(before));
  EXPECT_NE(h.DaemonLog().find("removed stale control socket"), std::string::npos);
  // No clean shutdown wrote map checkpoints: the maps were scanned from the records.
  EXPECT_NE(h.DaemonLog().find("pool=default from_checkpoints=0 scanned=3"), std::string::npos)
      << h.DaemonLog();

  // The recovered daemon is fully usable and its pool consistent.
  EXPECT_EQ(h.Shale({"volume", "create", "d", "--size", "1M"}).exit_code, 0);
  EXPECT_EQ(h.Shale({"volume", "delete", "a"}).exit_code, 0);
  CommandResult check = h.Shale({"pool", "check", "default", "-o", "json"});
  EXPECT_EQ(check.exit_code, 0) << check.Describe();

  // And a second kill -9 right after those changes loses none of them.
  h.KillDaemon();
  ASSERT_TRUE(h.StartDaemon());
  nlohmann::json after = h.Shale({"volume", "list", "-o", "json"}).Json()["volumes"];
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(after[0]["name"], "b");
  EXPECT_EQ(after[1]["name"], "c");
  EXPECT_EQ(after[2]["name"], "d");
  EXPECT_EQ(after[2]["size_bytes"], 1024 * 1024);
}

TEST(Restart, SigtermIsCleanAndRestartFindsEverything) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  const nlohmann::json before = PopulateVolumes(h);
  const std::string image = h.root() + "/extra.img";
  ASSERT_EQ(h.Shale({"pool", "create", "extra", "--device", image, "--size", "128M"}).exit_code, 0);
  ASSERT_EQ(h.Shale({"volume", "create", "e", "--size", "1M", "--pool", "extra"}).exit_code, 0);
  const nlohmann::json pools_before = h.Shale({"pool", "list", "-o", "json"}).Json()["pools"];

  EXPECT_EQ(h.StopDaemon(SIGTERM), 0) << h.DaemonLog();
  EXPECT_FALSE(std::filesystem::exists(h.socket_path())) << "a clean stop removes the socket";
  EXPECT_NE(h.DaemonLog().find("msg=\"shaled stopped\""), std::string::npos) << h.DaemonLog();

  ASSERT_TRUE(h.StartDaemon());
  nlohmann::json volumes =
      h.Shale({"volume", "list", "--pool", "default", "-o", "json"}).Json()["volumes"];
  EXPECT_EQ(Durable(volumes), Durable(before));
  nlohmann::json e = h.Shale({"volume", "show", "e", "-o", "json"}).Json();
  EXPECT_EQ(e["pool"], "extra");
  EXPECT_EQ(e["size_bytes"], 1024 * 1024);
  EXPECT_EQ(h.Shale({"pool", "list", "-o", "json"}).Json()["pools"], pools_before);
  // The clean stop wrote every volume's map checkpoint and this start read them
  // (docs/format/map-checkpoint.md).
  const std::string log = h.DaemonLog();
  EXPECT_NE(log.find("pool=default from_checkpoints=3 scanned=0"), std::string::npos) << log;
  EXPECT_NE(log.find("pool=extra from_checkpoints=1 scanned=0"), std::string::npos) << log;

  // SIGINT (Ctrl-C in a terminal) is just as clean.
  EXPECT_EQ(h.StopDaemon(SIGINT), 0) << h.DaemonLog();
  ASSERT_TRUE(h.StartDaemon());
  EXPECT_EQ(h.Shale({"status", "-o", "json"}).Json()["volume_count"], 4);
}

TEST(Restart, SecondDaemonOnTheSameDataDirIsRefused) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  ASSERT_EQ(h.Shale({"volume", "create", "keep", "--size", "1G"}).exit_code, 0);

  CommandResult second =
      RunProcess({ShaledBinary(), "--data-dir", h.data_dir(), "--default-pool-size", "1G",
                  "--log-file", h.root() + "/second.log"});
  ExpectOneLineError(second, "is in use by another shaled", "shaled: ");
  EXPECT_NE(second.err.find(h.data_dir()), std::string::npos) << second.Describe();
  // Logging to stderr (the default), the log lines come first and the verdict is the last line.
  CommandResult third = RunProcess({ShaledBinary(), "--data-dir", h.data_dir()});
  EXPECT_NE(third.exit_code, 0);
  ASSERT_FALSE(third.ErrLines().empty()) << third.Describe();
  EXPECT_EQ(
      third.ErrLines().back().rfind(
          "shaled: cannot start: data dir " + h.data_dir() + " is in use by another shaled", 0),
      0u)
      << third.Describe();

  // The first daemon is untouched: same process, socket still there, still serving.
  EXPECT_TRUE(h.daemon_running());
  EXPECT_TRUE(std::filesystem::exists(h.socket_path()));
  CommandResult status = h.Shale({"status", "-o", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_EQ(status.Json()["pid"], h.daemon_pid());
  EXPECT_EQ(h.Shale({"volume", "show", "keep"}).exit_code, 0);
  EXPECT_EQ(h.StopDaemon(SIGTERM), 0);
}

}  // namespace
}  // namespace shale::e2e
