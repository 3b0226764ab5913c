// QoS commands and views of the CLI without a daemon: flag checks that never reach shaled, and
// the table/JSON output of settings and stats. Against a real shaled: tests/e2e/qos_test.cc.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "cli/cli_commands.h"
#include "cli/output.h"

namespace shale::cli {
namespace {

struct CliRun {
  int code;
  std::string out;
  std::string err;
};

// With an endpoint nobody listens on: a usage error must come before any RPC.
CliRun Shale(std::vector<std::string> args) {
  args.insert(args.begin(), {"--endpoint", "unix:///nonexistent-shale-test/shaled.sock"});
  std::vector<const char*> argv = {"shale"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int code = RunShale(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

void ExpectUsageError(const CliRun& r, const std::string& needle) {
  EXPECT_EQ(r.code, kExitUsage) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
  EXPECT_EQ(r.err.rfind("shale: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

TEST(QosCommands, BadValuesAreUsageErrorsBeforeAnyRpc) {
  ExpectUsageError(Shale({"qos", "set", "v", "--iops", "-5"}), "--iops '-5': expected a whole");
  ExpectUsageError(Shale({"qos", "set", "v", "--iops", "12k"}), "--iops '12k'");
  ExpectUsageError(Shale({"qos", "set", "v", "--bps", "10X"}), "--bps: invalid size '10X'");
  ExpectUsageError(Shale({"qos", "set", "v", "--weight", "0"}), "between 1 and 10000");
  ExpectUsageError(Shale({"qos", "set", "v", "--weight", "10001"}), "between 1 and 10000");
  ExpectUsageError(Shale({"qos", "set", "v", "--burst-seconds", "x"}), "whole seconds");
  ExpectUsageError(Shale({"qos", "set", "v"}), "nothing to change");
  ExpectUsageError(Shale({"qos", "pool-budget", "p", "0"}), "between 1 and 4096");
  ExpectUsageError(Shale({"volume", "stats", "v", "--interval", "5ms"}), "expected a duration");
  ExpectUsageError(Shale({"volume", "stats", "v", "--interval", "soon"}), "expected a duration");
  ExpectUsageError(Shale({"volume", "create", "v", "--size", "1G", "--iops", "-1"}),
                   "volume create: --iops '-1'");
}

TEST(QosCommands, GoodValuesGetAsFarAsTheDaemon) {
  // Parsed fine, so the failure is the unreachable daemon (exit 1), not the command line.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"qos", "set", "v", "--iops", "0", "--bps", "20M", "--burst-seconds", "10s"},
           {"qos", "set", "v", "--clear"},
           {"qos", "show", "v"},
           {"qos", "pool-budget", "p", "8"},
           {"volume", "stats", "v", "--interval", "500ms", "--count", "2"},
           {"volume", "create", "v", "--size", "1G", "--iops", "100", "--weight", "1"}}) {
    CliRun r = Shale(args);
    EXPECT_EQ(r.code, kExitFailure) << testing::PrintToString(args) << r.err;
    EXPECT_NE(r.err.find("cannot reach shaled"), std::string::npos) << r.err;
  }
}

TEST(QosOutput, SummaryNamesWhatIsSet) {
  v1::QosSettings s;
  s.set_weight(100);
  s.set_iops_unit(4096);
  EXPECT_EQ(QosSummary(s), "unlimited, weight 100");
  s.set_iops(2000);
  s.set_burst_iops(5000);
  s.set_burst_seconds(10);
  s.set_bps(20 << 20);
  s.set_reservation_iops(500);
  s.set_weight(300);
  EXPECT_EQ(QosSummary(s),
            "iops=2000 bps=20 MiB/s burst_iops=5000 burst_seconds=10, weight 300, "
            "reservation 500 IOPS");
}

TEST(QosOutput, JsonHasEveryFieldAndStatsViewsShowTheBuckets) {
  v1::VolumeIoStats st;
  st.set_name("v");
  st.set_pool("default");
  st.set_open(true);
  st.set_iops(1999.6);
  st.set_window_ns(900'000'000);
  st.mutable_qos()->set_iops(2000);
  v1::QosBucket* b = st.add_buckets();
  b->set_limit("iops");
  b->set_rate(2000);
  b->set_tokens(-3);
  b->set_capacity(20);
  const nlohmann::ordered_json j = ToJson(st);
  EXPECT_EQ(j["qos"].size(), 16u);
  EXPECT_EQ(j["qos"]["iops"], 2000);
  EXPECT_EQ(j["buckets"][0]["rate"], 2000);
  EXPECT_EQ(j["open"], true);
  for (const char* key : {"iops", "bps", "throttled_ns", "queue_depth", "in_flight", "rejected",
                          "pool_budget", "time_unix_ns"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  const std::string view = VolumeStatsView(st);
  EXPECT_NE(view.find("IOPS:"), std::string::npos) << view;
  EXPECT_NE(view.find("2000"), std::string::npos) << view;
  EXPECT_NE(view.find("LIMIT"), std::string::npos) << view;
  st.set_open(false);
  EXPECT_NE(VolumeStatsView(st).find("Open:"), std::string::npos);
}

}  // namespace
}  // namespace shale::cli
