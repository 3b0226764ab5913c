// Capacity care end to end (docs/operations.md, "Capacity"): filling a small pool through NBD
// logs exactly one warning and one critical line, `shale pool list/show`, `shale status` and the
// metrics show the level; the overcommit limit refuses create, clone and resize with the
// numbers; `shale pool expand` grows a file pool while a client writes. Needs qemu-io
// (qemu-utils) and curl; skips with the reason when one is missing.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include "tests/e2e/harness.h"
#include "tests/e2e/metrics_scrape.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// Lines of `text` containing `needle`.
int CountLines(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

class CapacityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    qemu_io_ = FindProgram("qemu-io");
    if (qemu_io_.empty()) GTEST_SKIP() << "qemu-io is not installed (qemu-utils)";
    if (FindProgram("curl").empty()) GTEST_SKIP() << "curl is not installed";
    ASSERT_TRUE(h_.StartDaemon());
    // A 64 MiB pool of its own: small enough to fill in a test.
    CommandResult pool = h_.Shale({"pool", "create", "small", "--device", h_.root() + "/small.img",
                                   "--size", "64M", "--cluster-size", "64K"});
    ASSERT_EQ(pool.exit_code, 0) << pool.Describe();
  }

  nlohmann::json Pool(const std::string& name) {
    CommandResult r = h_.Shale({"pool", "show", name, "-o", "json"});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    return r.Json();
  }

  // Writes `mib` MiB of 0x5a at `offset_mib` MiB of volume `name`, 1 MiB per request.
  void Write(const std::string& name, uint64_t offset_mib, uint64_t mib) {
    std::vector<std::string> argv = {qemu_io_, "-f", "raw", h_.NbdUri(name)};
    for (uint64_t i = 0; i < mib; ++i) {
      argv.insert(argv.end(), {"-c", "write -P 0x5a " + std::to_string(offset_mib + i) + "M 1M"});
    }
    argv.insert(argv.end(), {"-c", "flush"});
    CommandResult r = RunProcess(argv, {.timeout = std::chrono::seconds(300)});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    ASSERT_EQ(r.out.find("failed"), std::string::npos) << r.Describe();
  }

  std::string MetricsText() { return HttpGet(h_.MetricsAddress(), "/metrics"); }

  Harness h_;
  std::string qemu_io_;
};

TEST_F(CapacityTest, FillingAPoolLogsEachThresholdOnceAndShowsIt) {
  nlohmann::json pool = Pool("small");
  EXPECT_EQ(pool["fill"], "ok");
  EXPECT_EQ(pool["warn_percent"], 80);
  EXPECT_EQ(pool["critical_percent"], 90);
  EXPECT_EQ(pool["overcommit_percent"], 300);  // the default
  const uint64_t capacity = pool["capacity_bytes"];
  ASSERT_GT(capacity, 56 * kMiB);
  ASSERT_EQ(h_.Shale({"volume", "create", "fill", "--size", "64M", "--pool", "small"}).exit_code,
            0);

  // Up to just above 80 %, one MiB per request: every write after the crossing is above it too.
  const uint64_t warn_mib = capacity * 80 / 100 / kMiB + 2;
  Write("fill", 0, warn_mib);
  ASSERT_TRUE(WaitFor([&] { return Pool("small")["fill"] == "warning"; }, std::chrono::seconds(20)))
      << Pool("small");
  Write("fill", warn_mib, 1);  // more writes above the threshold: no new line
  CommandResult list = h_.Shale({"pool", "list"});
  EXPECT_NE(list.out.find("WARN"), std::string::npos) << list.out;
  EXPECT_NE(h_.Shale({"status"}).out.find("Pool small"), std::string::npos);
  EXPECT_NE(MetricsText().find("shale_pool_fill_level{node="), std::string::npos);

  const uint64_t critical_mib = capacity * 90 / 100 / kMiB + 2;
  Write("fill", warn_mib + 1, critical_mib - warn_mib - 1);
  ASSERT_TRUE(
      WaitFor([&] { return Pool("small")["fill"] == "critical"; }, std::chrono::seconds(20)))
      << Pool("small");
  Write("fill", critical_mib, 1);
  // One more evaluation round after the last write, then count.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // > the 1 s watch interval
  const std::string log = h_.DaemonLog();
  EXPECT_EQ(CountLines(log, "above its warning threshold\" pool=small"), 1) << log;
  EXPECT_EQ(CountLines(log, "above its critical threshold"), 1) << log;
  EXPECT_NE(h_.Shale({"pool", "show", "small"}).out.find("CRITICAL"), std::string::npos);
  const std::string metrics = MetricsText();
  EXPECT_NE(metrics.find("shale_pool_fill_level{node=\""), std::string::npos);
  std::istringstream in(metrics);
  bool found = false;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("shale_pool_fill_level{") && line.find("pool=\"small\"") != line.npos) {
      EXPECT_EQ(line.substr(line.rfind(' ') + 1), "2") << line;
      found = true;
    }
  }
  EXPECT_TRUE(found) << metrics;
  CommandResult status = h_.Shale({"status"});
  EXPECT_NE(status.out.find("CRITICAL"), std::string::npos) << status.out;
}

TEST_F(CapacityTest, OvercommitLimitRefusesCreateCloneAndResizeWithTheNumbers) {
  ASSERT_EQ(h_.Shale({"pool", "set", "small", "--overcommit", "150%"}).exit_code, 0);
  EXPECT_EQ(Pool("small")["overcommit_percent"], 150);
  ASSERT_EQ(h_.Shale({"volume", "create", "a", "--size", "64M", "--pool", "small"}).exit_code, 0);
  CommandResult b = h_.Shale({"volume", "create", "b", "--size", "64M", "--pool", "small"});
  ExpectOneLineError(b, "would exceed its overcommit limit of 150 %");
  EXPECT_NE(b.err.find("64 MiB"), std::string::npos) << b.Describe();
  EXPECT_NE(b.err.find("shale pool set small --overcommit"), std::string::npos) << b.Describe();
  ExpectOneLineError(h_.Shale({"volume", "resize", "a", "--size", "128M"}), "overcommit limit");
  ExpectOneLineError(h_.Shale({"clone", "create", "a", "c"}), "overcommit limit");
  // Within the limit, and with no limit at all, they pass.
  EXPECT_EQ(h_.Shale({"volume", "create", "b", "--size", "16M", "--pool", "small"}).exit_code, 0);
  ASSERT_EQ(h_.Shale({"pool", "set", "small", "--overcommit", "unlimited"}).exit_code, 0);
  EXPECT_EQ(Pool("small")["overcommit_unlimited"], true);
  EXPECT_EQ(h_.Shale({"volume", "create", "big", "--size", "1G", "--pool", "small"}).exit_code, 0);
  EXPECT_EQ(Pool("small")["provisioned_bytes"], (64 + 16 + 1024) * kMiB);
  // Bad values are usage errors.
  EXPECT_EQ(h_.Shale({"pool", "set", "small", "--overcommit", "0%"}).exit_code, 2);
  ExpectOneLineError(h_.Shale({"pool", "set", "small", "--warn", "95", "--critical", "90"}),
                     "critical");
}

TEST_F(CapacityTest, ExpandAFilePoolWhileAClientWrites) {
  ASSERT_EQ(h_.Shale({"volume", "create", "w", "--size", "96M", "--pool", "small"}).exit_code, 0);
  const uint64_t before = Pool("small")["capacity_bytes"];
  // 48 MiB in 1 MiB writes in the background, then read back.
  CommandResult writer;
  std::thread client([&] {
    std::vector<std::string> argv = {qemu_io_, "-f", "raw", h_.NbdUri("w")};
    for (int i = 0; i < 48; ++i) {
      argv.insert(argv.end(), {"-c", "write -P 0x77 " + std::to_string(i) + "M 1M"});
    }
    argv.insert(argv.end(), {"-c", "flush", "-c", "read -P 0x77 0 48M"});
    writer = RunProcess(argv, {.timeout = std::chrono::seconds(300)});
  });
  CommandResult expanded = h_.Shale({"pool", "expand", "small", "--size", "256M", "-o", "json"});
  client.join();
  ASSERT_EQ(expanded.exit_code, 0) << expanded.Describe();
  EXPECT_GT(expanded.Json()["capacity_bytes"].get<uint64_t>(), before + 150 * kMiB);
  EXPECT_EQ(std::filesystem::file_size(h_.root() + "/small.img"), 256 * kMiB);
  EXPECT_EQ(writer.exit_code, 0) << writer.Describe();
  EXPECT_EQ(writer.out.find("failed"), std::string::npos) << writer.Describe();
  EXPECT_EQ(writer.out.find("Pattern verification failed"), std::string::npos);
  // The new space is usable: 96 MiB written in all (more than the old pool had).
  Write("w", 48, 48);
  EXPECT_GE(Pool("small")["used_bytes"].get<uint64_t>(), 96 * kMiB);
  // It survives a restart.
  EXPECT_EQ(h_.StopDaemon(SIGTERM), 0);
  ASSERT_TRUE(h_.StartDaemon());
  EXPECT_EQ(Pool("small")["capacity_bytes"], expanded.Json()["capacity_bytes"]);
}

}  // namespace
}  // namespace shale::e2e
