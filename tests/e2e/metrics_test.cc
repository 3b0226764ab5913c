// Prometheus metrics end to end (docs/operations.md, "Metrics"): the real shaled serves /metrics,
// `promtool check metrics` accepts it, I/O through NBD moves the counters and histograms by what
// was sent, and a real Prometheus server scrapes shaled and sees shale_volume_write_bytes_total
// grow. Needs curl, promtool and prometheus (Debian: curl, prometheus) and qemu-io (qemu-utils);
// each test skips with the reason when one is missing.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "tests/e2e/harness.h"
#include "tests/e2e/metrics_scrape.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

// Runs qemu-io commands on NBD export `uri`.
void QemuIo(const std::string& qemu_io, const std::string& uri,
            const std::vector<std::string>& commands) {
  std::vector<std::string> argv = {qemu_io, "-f", "raw", uri};
  for (const std::string& c : commands) argv.insert(argv.end(), {"-c", c});
  CommandResult r = RunProcess(argv);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  ASSERT_EQ(r.out.find("failed"), std::string::npos) << r.Describe();
}

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (FindProgram("curl").empty()) GTEST_SKIP() << "curl is not installed";
    qemu_io_ = FindProgram("qemu-io");
    if (qemu_io_.empty()) GTEST_SKIP() << "qemu-io is not installed (qemu-utils)";
    ASSERT_TRUE(h_.StartDaemon());
    address_ = h_.MetricsAddress();
    ASSERT_FALSE(address_.empty());
  }

  std::string Scrape() { return HttpGet(address_, "/metrics"); }

  Harness h_;
  std::string qemu_io_;
  std::string address_;
};

TEST_F(MetricsTest, ScrapePassesPromtoolAndCountersMoveByTheIoSent) {
  const std::string promtool = FindProgram("promtool");
  if (promtool.empty()) GTEST_SKIP() << "promtool is not installed (Debian package prometheus)";
  ASSERT_EQ(h_.Shale({"volume", "create", "m", "--size", "64M"}).exit_code, 0);
  const std::string before = Scrape();
  EXPECT_EQ(PromtoolCheckMetrics(promtool, h_.root() + "/before.prom", before), "");
  const std::string v = "volume=\"m\"";
  EXPECT_EQ(Sample(before, "shale_volume_size_bytes", v), 64.0 * kMiB) << before;
  EXPECT_EQ(Sample(before, "shale_volume_write_bytes_total", v), 0.0) << before;
  EXPECT_GT(Sample(before, "shale_pool_capacity_bytes", "pool=\"default\"").value_or(0), 0.0);
  EXPECT_EQ(Sample(before, "shale_pool_provisioned_bytes", "pool=\"default\""), 64.0 * kMiB);
  EXPECT_GT(Sample(before, "process_resident_memory_bytes", "").value_or(0), 0.0);
  EXPECT_TRUE(Sample(before, "shale_reactor_busy_seconds_total", "reactor=\"0\"").has_value());

  // Four 256 KiB writes, one 512 KiB read, a flush.
  QemuIo(qemu_io_, h_.NbdUri("m"),
         {"write -P 0xab 0 256k", "write -P 0xab 256k 256k", "write -P 0xcd 512k 256k",
          "write -P 0xcd 768k 256k", "read -P 0xab 0 512k", "flush"});
  const std::string after = Scrape();
  EXPECT_EQ(PromtoolCheckMetrics(promtool, h_.root() + "/after.prom", after), "");
  auto delta = [&](const std::string& series) {
    return Sample(after, series, v).value_or(-1) - Sample(before, series, v).value_or(-1);
  };
  EXPECT_EQ(delta("shale_volume_write_bytes_total"), 1.0 * kMiB) << after;
  EXPECT_EQ(delta("shale_volume_write_operations_total"), 4.0) << after;
  EXPECT_EQ(delta("shale_volume_write_latency_seconds_count"), 4.0) << after;
  EXPECT_GT(delta("shale_volume_write_latency_seconds_sum"), 0.0) << after;
  EXPECT_EQ(Sample(after, "shale_volume_write_latency_seconds_bucket", "le=\"+Inf\"").value_or(0),
            4.0);
  EXPECT_EQ(delta("shale_volume_read_bytes_total"), 512.0 * kKiB) << after;
  EXPECT_EQ(delta("shale_volume_read_operations_total"), 1.0) << after;
  EXPECT_EQ(delta("shale_volume_read_latency_seconds_count"), 1.0) << after;
  const double flushes = delta("shale_volume_flush_operations_total");
  EXPECT_GE(flushes, 1.0) << after;  // qemu-io may flush again when it closes the export
  EXPECT_EQ(delta("shale_volume_flush_latency_seconds_count"), flushes) << after;
  EXPECT_EQ(delta("shale_volume_errors_total"), 0.0) << after;
  // The space came from the pool: 1 MiB of the volume's own clusters at least.
  EXPECT_GE(Sample(after, "shale_volume_allocated_bytes", v).value_or(0), 1.0 * kMiB) << after;
  EXPECT_GE(Sample(after, "shale_pool_used_bytes", "pool=\"default\"").value_or(0), 1.0 * kMiB);
}

TEST_F(MetricsTest, StatusShowsTheMetricsUrlAndOtherPathsAre404) {
  CommandResult status = h_.Shale({"status"});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_NE(status.out.find("http://" + address_ + "/metrics"), std::string::npos) << status.out;
  CommandResult missing = RunProcess({FindProgram("curl"), "-s", "-o", "/dev/null", "-w",
                                      "%{http_code}", "http://" + address_ + "/nothing"});
  EXPECT_EQ(missing.out, "404") << missing.Describe();
}

// A real Prometheus server (Debian package prometheus) scraping shaled every second.
TEST_F(MetricsTest, PrometheusServerSeesWriteBytesGrow) {
  const std::string prometheus = FindProgram("prometheus");
  if (prometheus.empty()) GTEST_SKIP() << "prometheus is not installed (Debian package prometheus)";
  ASSERT_EQ(h_.Shale({"volume", "create", "p", "--size", "64M"}).exit_code, 0);
  const std::string config = h_.root() + "/prometheus.yml";
  std::ofstream(config) << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                        << "scrape_configs:\n  - job_name: shaled\n    static_configs:\n"
                        << "      - targets: ['" << address_ << "']\n";
  // Prometheus cannot bind port 0 and tell: a port free a moment ago, tried up to three times.
  std::unique_ptr<ChildProcess> server;
  std::string web;
  for (int attempt = 0; attempt < 3 && web.empty(); ++attempt) {
    const std::string candidate = "127.0.0.1:" + std::to_string(FreeTcpPort());
    server = std::make_unique<ChildProcess>(
        std::vector<std::string>{prometheus, "--config.file=" + config,
                                 "--storage.tsdb.path=" + h_.root() + "/prometheus-data",
                                 "--web.listen-address=" + candidate, "--log.level=warn"},
        h_.root() + "/prometheus.log");
    const bool ready = WaitFor(
        [&] {
          if (!server->running()) return true;
          return RunProcess({FindProgram("curl"), "-sf", "--max-time", "2",
                             "http://" + candidate + "/-/ready"})
                     .exit_code == 0;
        },
        std::chrono::seconds(60));
    if (ready && server->running()) web = candidate;
  }
  ASSERT_FALSE(web.empty()) << "prometheus did not start: " << server->Log();

  // The value of shale_volume_write_bytes_total{volume="p"} Prometheus has now (-1: none yet).
  auto query = [&]() -> double {
    CommandResult r = RunProcess({FindProgram("curl"), "-sf", "--max-time", "5", "-G",
                                  "http://" + web + "/api/v1/query", "--data-urlencode",
                                  "query=shale_volume_write_bytes_total{volume=\"p\"}"});
    if (r.exit_code != 0) return -1;
    const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_discarded() || j["status"] != "success" || j["data"]["result"].empty()) return -1;
    return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
  };
  double first = -1;
  ASSERT_TRUE(WaitFor([&] { return (first = query()) >= 0; }, std::chrono::seconds(60)))
      << server->Log();
  EXPECT_EQ(first, 0.0);
  QemuIo(qemu_io_, h_.NbdUri("p"), {"write -P 0x11 0 1M", "flush"});
  double grown = -1;
  EXPECT_TRUE(WaitFor([&] { return (grown = query()) >= first + kMiB; }, std::chrono::seconds(60)))
      << "last value " << grown << "\n"
      << server->Log();
  EXPECT_EQ(grown, first + 1.0 * kMiB);
  EXPECT_EQ(server->Stop(SIGTERM), 0) << server->Log();
}

// Families (TYPE lines) of an exposition.
std::set<std::string> Families(const std::string& text) {
  std::set<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("# TYPE ")) continue;
    out.insert(line.substr(7, line.find(' ', 7) - 7));
  }
  return out;
}

// Metric names in a PromQL expression that are not in `families` (a histogram's _bucket, _sum
// and _count belong to its family).
std::vector<std::string> UnknownMetrics(const std::string& expr,
                                        const std::set<std::string>& families) {
  static const std::regex kName(R"(\b((shale|process)_[a-z0-9_]+))");
  std::vector<std::string> unknown;
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), kName);
       it != std::sregex_iterator(); ++it) {
    std::string name = (*it)[1];
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (!families.contains(name) && name.ends_with(suffix)) {
        name.resize(name.size() - std::string_view(suffix).size());
      }
    }
    if (!families.contains(name)) unknown.push_back((*it)[1]);
  }
  return unknown;
}

const std::string kMonitoring = std::string(SHALE_SOURCE_DIR) + "/csi/deploy/monitoring";

// Every query of the Grafana dashboard names only metrics shaled exports.
TEST_F(MetricsTest, DashboardQueriesNameExportedMetrics) {
  const std::set<std::string> families = Families(Scrape());
  ASSERT_TRUE(families.contains("shale_volume_write_bytes_total"));
  const nlohmann::json dashboard =
      nlohmann::json::parse(ReadTextFile(kMonitoring + "/shale-dashboard.json"), nullptr, false);
  ASSERT_FALSE(dashboard.is_discarded()) << "shale-dashboard.json is not JSON";
  int queries = 0;
  for (const nlohmann::json& panel : dashboard["panels"]) {
    for (const nlohmann::json& target : panel["targets"]) {
      const std::string expr = target["expr"];
      ++queries;
      EXPECT_TRUE(std::regex_search(expr, std::regex(R"(\b(shale|process)_)"))) << expr;
      EXPECT_EQ(UnknownMetrics(expr, families), std::vector<std::string>{})
          << panel["title"] << ": " << expr;
    }
  }
  for (const nlohmann::json& var : dashboard["templating"]["list"]) {
    if (var["type"] != "query") continue;
    EXPECT_EQ(UnknownMetrics(var["definition"], families), std::vector<std::string>{});
  }
  EXPECT_GE(queries, 20);
}

// `promtool check rules` on the PrometheusRule's spec, and its expressions name exported metrics.
TEST_F(MetricsTest, AlertRulesPassPromtoolAndNameExportedMetrics) {
  const std::string promtool = FindProgram("promtool");
  if (promtool.empty()) GTEST_SKIP() << "promtool is not installed (Debian package prometheus)";
  const std::string python = FindProgram("python3");
  if (python.empty()) GTEST_SKIP() << "python3 is not installed";
  // The CRD wraps a rules file in `spec`: unwrap it (as JSON, which is YAML too).
  const std::string rules = h_.root() + "/rules.json";
  CommandResult unwrap =
      RunProcess({python, "-c",
                  "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1]))['spec'], "
                  "open(sys.argv[2], 'w'))",
                  kMonitoring + "/prometheusrule.yaml", rules});
  ASSERT_EQ(unwrap.exit_code, 0) << unwrap.Describe();
  CommandResult check = RunProcess({promtool, "check", "rules", rules});
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_NE(check.out.find("SUCCESS: 6 rules found"), std::string::npos) << check.Describe();

  const std::set<std::string> families = Families(Scrape());
  const nlohmann::json spec = nlohmann::json::parse(ReadTextFile(rules));
  std::set<std::string> alerts;
  for (const nlohmann::json& group : spec["groups"]) {
    for (const nlohmann::json& rule : group["rules"]) {
      alerts.insert(rule["alert"].get<std::string>());
      EXPECT_EQ(UnknownMetrics(rule["expr"], families), std::vector<std::string>{})
          << rule["alert"];
    }
  }
  for (const char* alert : {"ShalePoolFillWarning", "ShalePoolFillCritical", "ShaleVolumeIoErrors",
                            "ShaleReplicaDegraded", "ShaleReplicaRebuildStalled"}) {
    EXPECT_TRUE(alerts.contains(alert)) << alert;
  }
}

// `shale usage --by label:team` sums what the volumes report themselves, and the usage metrics
// (--metrics-usage-label team) carry the same figures.
TEST(Usage, SumsMatchTheVolumesAndTheMetrics) {
  const std::string qemu_io = FindProgram("qemu-io");
  if (qemu_io.empty()) GTEST_SKIP() << "qemu-io is not installed (qemu-utils)";
  if (FindProgram("curl").empty()) GTEST_SKIP() << "curl is not installed";
  Harness h;
  ASSERT_TRUE(h.StartDaemon({"--metrics-usage-label", "team"}));
  const std::map<std::string, std::string> teams = {
      {"a1", "a"}, {"a2", "a"}, {"b1", "b"}, {"loose", ""}};
  for (const auto& [name, team] : teams) {
    std::vector<std::string> args = {"volume", "create", name, "--size", "32M"};
    if (!team.empty()) args.insert(args.end(), {"--label", "team=" + team});
    ASSERT_EQ(h.Shale(args).exit_code, 0);
  }
  QemuIo(qemu_io, h.NbdUri("a1"), {"write -P 1 0 3M", "flush"});
  QemuIo(qemu_io, h.NbdUri("b1"), {"write -P 2 0 1M", "read 0 1M", "flush"});
  ASSERT_EQ(h.Shale({"snapshot", "create", "a1", "s1"}).exit_code, 0);
  QemuIo(qemu_io, h.NbdUri("a1"), {"write -P 3 0 1M", "flush"});

  // Expected sums, from `shale volume show` of each volume.
  std::map<std::string, std::map<std::string, uint64_t>> want;
  for (const auto& [name, team] : teams) {
    const nlohmann::json v = h.Shale({"volume", "show", name, "-o", "json"}).Json();
    auto& w = want[team];
    w["volumes"] += 1;
    w["size_bytes"] += v["size_bytes"].get<uint64_t>();
    w["allocated_bytes"] += v["allocated_bytes"].get<uint64_t>();
    w["bytes_written"] += v["stats"]["bytes_written"].get<uint64_t>();
    w["bytes_read"] += v["stats"]["bytes_read"].get<uint64_t>();
  }
  CommandResult usage = h.Shale({"usage", "--by", "label:team", "-o", "json"});
  ASSERT_EQ(usage.exit_code, 0) << usage.Describe();
  const nlohmann::json j = usage.Json();
  ASSERT_EQ(j["groups"].size(), 3u) << j;
  for (const nlohmann::json& g : j["groups"]) {
    const std::string team = g["unlabelled"] == true ? "" : g["value"].get<std::string>();
    for (const auto& [key, value] : want[team]) EXPECT_EQ(g[key], value) << team << " " << key;
  }
  EXPECT_EQ(j["groups"][0]["value"], "a");
  EXPECT_EQ(j["groups"][0]["snapshots"], 1);
  EXPECT_GE(j["groups"][0]["snapshot_bytes"].get<uint64_t>(), 1024u * 1024);
  EXPECT_EQ(j["groups"][2]["unlabelled"], true);
  EXPECT_EQ(j["total"]["volumes"], 4);
  EXPECT_EQ(j["total"]["bytes_written"], 5u * 1024 * 1024);
  CommandResult table = h.Shale({"usage", "--by", "label:team"});
  EXPECT_NE(table.out.find("TEAM"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("(no team)"), std::string::npos) << table.out;
  ExpectOneLineError(h.Shale({"usage", "--by", "team"}), "expected label:KEY");

  // The metric side: one shale_usage_* series per team value (the unlabelled volumes under
  // label_team=""), each with the figure `shale usage -o json` reported for that value.
  const std::string metrics = HttpGet(h.MetricsAddress(), "/metrics");
  const std::map<std::string, std::string> families = {
      {"shale_usage_volumes", "volumes"},
      {"shale_usage_provisioned_bytes", "provisioned_bytes"},
      {"shale_usage_allocated_bytes", "allocated_bytes"},
      {"shale_usage_snapshot_bytes", "snapshot_bytes"}};
  for (const auto& [family, key] : families) {
    size_t series = 0;
    std::istringstream in(metrics);
    for (std::string line; std::getline(in, line);) series += line.starts_with(family + "{");
    EXPECT_EQ(series, j["groups"].size()) << family << "\n" << metrics;
    for (const nlohmann::json& g : j["groups"]) {
      const std::string team = g["unlabelled"] == true ? "" : g["value"].get<std::string>();
      EXPECT_EQ(Sample(metrics, family, "label_team=\"" + team + "\""),
                static_cast<double>(g[key].get<uint64_t>()))
          << family << " team '" << team << "'\n"
          << metrics;
    }
  }
  EXPECT_EQ(Sample(metrics, "shale_usage_volumes", "label_team=\"a\""), 2.0) << metrics;
  EXPECT_TRUE(Sample(metrics, "shale_volume_write_bytes_total", "label_team=\"b\"").has_value());
}

TEST(Metrics, CanBeTurnedOffAndBadAddressesAreUsageErrors) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon({"--metrics-listen", "none"}));
  CommandResult status = h.Shale({"status", "-o", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_EQ(status.Json()["metrics"]["enabled"], false);
  EXPECT_NE(h.Shale({"status"}).out.find("Metrics:"), std::string::npos);

  CommandResult bad = RunProcess(
      {ShaledBinary(), "--data-dir", h.root() + "/other", "--metrics-listen", "127.0.0.1:99999"});
  ExpectOneLineError(bad, "port out of range", "shaled: ");
  EXPECT_EQ(bad.exit_code, 2);
}

TEST(Metrics, PortInUseIsAClearStartupError) {
  Harness a;
  ASSERT_TRUE(a.StartDaemon());
  const std::string taken = a.MetricsAddress();
  ASSERT_FALSE(taken.empty());
  Harness b;
  CommandResult r = RunProcess({ShaledBinary(), "--data-dir", b.data_dir(), "--default-pool-size",
                                "1G", "--nbd-listen", "none", "--metrics-listen", taken,
                                "--log-file", b.root() + "/log"});
  ExpectOneLineError(r, "bind metrics listener to " + taken, "shaled: ");
}

}  // namespace
}  // namespace shale::e2e
