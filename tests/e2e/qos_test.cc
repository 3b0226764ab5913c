// Per-volume QoS end to end: the real shaled and shale, and fio's nbd engine as the client.
// Limits (IOPS, bandwidth, IOPS counted by size), a burst then the base rate, a live change
// seen in `volume stats`, weights and a reservation on a contended pool, settings across a
// restart, and bad input.
//
// Timing on a shared 2-core VM: every limit is far below what the machine delivers (~50k 4 KiB
// IOPS through NBD unlimited), the figures are fio's own (JSON output, an IOPS log for the burst
// phases), and stats are sampled while fio runs (a volume's live figures go with its last
// client).
//
// Weights and reservations act only on requests that wait for the pool's budget of requests in
// flight (docs/qos.md, "The pool budget"). Through NBD on 2 cores the CPU, not the device, is
// the bottleneck, so the pool tests lower the budget to 2 (the device then limits, ~10-25k
// IOPS here) and run both clients in one fio process (they connect before either starts) at
// queue depth 128: a closed-loop client keeps requests waiting only while it has more in flight
// than it is served during a scheduling hiccup of its process, and 128 absorbs those on a busy
// machine (at depth 32 the measured ratio wandered between 2.3 and 3.7; at 128 it was 3.00).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

// The tool, or a skip naming the package (scripts/deps installs them all).
#define REQUIRE_FIO()                                                                      \
  const std::string fio = FindProgram("fio");                                              \
  if (fio.empty()) {                                                                       \
    GTEST_SKIP() << "fio is not installed (Debian package fio; scripts/deps installs it)"; \
  }

uint64_t NowUnixNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// fio's JSON (after anything it printed before it, e.g. "fio: connected to NBD server").
nlohmann::json ParseFioJson(const std::string& text) {
  const std::string::size_type brace = text.find('{');
  if (brace == std::string::npos) return nullptr;
  nlohmann::json j = nlohmann::json::parse(text.substr(brace), nullptr, false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

// One fio job's figures.
struct FioJob {
  std::string name;
  int error = -1;
  double read_iops = 0;
  double read_bw_bytes = 0;  // bytes/s
  uint64_t read_ios = 0;
  double runtime_s = 0;
};

std::vector<FioJob> JobsOf(const nlohmann::json& j) {
  std::vector<FioJob> out;
  if (!j.is_object() || !j.contains("jobs")) return out;
  for (const auto& job : j["jobs"]) {
    FioJob f;
    f.name = job.value("jobname", "");
    f.error = job.value("error", -1);
    const auto& r = job["read"];
    f.read_iops = r.value("iops", 0.0);
    f.read_bw_bytes = static_cast<double>(r.value("bw_bytes", uint64_t{0}));
    f.read_ios = r.value("total_ios", uint64_t{0});
    f.runtime_s = static_cast<double>(r.value("runtime", uint64_t{0})) / 1000.0;
    out.push_back(f);
  }
  return out;
}

class QosTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(h_.StartDaemon()); }

  void Shale(const std::vector<std::string>& args) {
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  void CreateVolume(const std::string& name, const std::vector<std::string>& qos = {}) {
    std::vector<std::string> args = {"volume", "create", name, "--size", "1G"};
    args.insert(args.end(), qos.begin(), qos.end());
    Shale(args);
  }

  nlohmann::json Json(const std::vector<std::string>& args) {
    std::vector<std::string> a = {"-o", "json"};
    a.insert(a.end(), args.begin(), args.end());
    CommandResult r = h_.Shale(a);
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    return r.exit_code == 0 ? r.Json() : nlohmann::json(nullptr);
  }

  nlohmann::json Stats(const std::string& volume) { return Json({"volume", "stats", volume}); }

  // argv of fio with the nbd engine; `jobs` are (job name, volume) pairs run together in one
  // process (they connect before any starts), each with `options`.
  std::vector<std::string> FioArgv(const std::string& fio,
                                   const std::vector<std::pair<std::string, std::string>>& jobs,
                                   const std::vector<std::string>& options) {
    std::vector<std::string> argv = {fio, "--ioengine=nbd", "--output-format=json"};
    argv.insert(argv.end(), options.begin(), options.end());
    for (const auto& [job, volume] : jobs) {
      argv.push_back("--name=" + job);
      argv.push_back("--uri=" + h_.NbdUri(volume));
    }
    return argv;
  }

  // fio running in the background, its JSON going to <root>/<tag>.json.
  struct BackgroundFio {
    std::string output;
    std::unique_ptr<ChildProcess> child;
  };
  BackgroundFio StartFio(const std::string& fio, const std::string& tag,
                         const std::vector<std::pair<std::string, std::string>>& jobs,
                         const std::vector<std::string>& options) {
    BackgroundFio b;
    b.output = h_.root() + "/" + tag + ".json";
    std::vector<std::string> argv = FioArgv(fio, jobs, options);
    argv.push_back("--output=" + b.output);
    b.child = std::make_unique<ChildProcess>(argv, h_.root() + "/" + tag + ".log");
    return b;
  }
  // Waits for it to end and returns its jobs.
  std::vector<FioJob> FinishFio(BackgroundFio& b) {
    EXPECT_TRUE(WaitFor([&] { return !b.child->running(); }, std::chrono::seconds(60)))
        << "fio did not end";
    std::vector<FioJob> jobs = JobsOf(ParseFioJson(ReadTextFile(b.output)));
    EXPECT_FALSE(jobs.empty()) << "fio wrote no JSON; its log: " << b.child->Log();
    return jobs;
  }
  // Waits until the volume is open through QoS with a full 1 s window of figures and returns
  // them.
  nlohmann::json StatsOfARunningVolume(const std::string& volume) {
    nlohmann::json s;
    EXPECT_TRUE(WaitFor(
        [&] {
          s = Stats(volume);
          return s.is_object() && s["open"] == true &&
                 s["window_ns"].get<uint64_t>() >= 900'000'000;
        },
        std::chrono::seconds(10)))
        << s.dump();
    return s;
  }

  // fio with the nbd engine; `jobs` are (job name, volume) pairs run together in one process
  // (their threads start at the same moment), each with `options`. Returns fio's JSON.
  nlohmann::json RunFio(const std::string& fio,
                        const std::vector<std::pair<std::string, std::string>>& jobs,
                        const std::vector<std::string>& options, int timeout_s = 120) {
    const std::vector<std::string> argv = FioArgv(fio, jobs, options);
    CommandResult r = RunProcess(argv, {.timeout = std::chrono::seconds(timeout_s)});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    nlohmann::json j = ParseFioJson(r.out);
    EXPECT_FALSE(j.is_null()) << "fio printed no JSON: " << r.Describe();
    return j;
  }

  // Writes the first `mib` MiB of a volume, so reads go to the device rather than to holes.
  void Prefill(const std::string& fio, const std::string& volume, int mib = 64) {
    nlohmann::json j =
        RunFio(fio, {{"fill", volume}},
               {"--rw=write", "--bs=1M", "--iodepth=8", "--size=" + std::to_string(mib) + "M"});
    std::vector<FioJob> jobs = JobsOf(j);
    ASSERT_EQ(jobs.size(), 1u);
    ASSERT_EQ(jobs[0].error, 0);
  }

  Harness h_;
};

// 4 KiB random reads at queue depth 32: the workload of every limit test.
std::vector<std::string> RandRead(const std::string& bs, int seconds,
                                  const std::string& size = "256M") {
  return {"--rw=randread",  "--bs=" + bs,   "--iodepth=32",
          "--size=" + size, "--time_based", "--runtime=" + std::to_string(seconds),
          "--randrepeat=0"};
}

// Two volumes saturating a pool with budget 2: 4 KiB random reads of their prefilled 64 MiB,
// IOPS logged per job in 500 ms windows (<log>_iops.<job>.log).
std::vector<std::string> PoolLoad(int seconds, const std::string& log) {
  return {"--rw=randread",     "--bs=4k",
          "--iodepth=128",     "--size=64M",
          "--time_based",      "--runtime=" + std::to_string(seconds),
          "--randrepeat=0",    "--write_iops_log=" + log,
          "--log_avg_msec=500"};
}

// The measured figures go to the test log too (they are the point of these tests).
void ExpectWithin(double value, double target, double tolerance, const std::string& what) {
  std::cout << "[ figure   ] " << what << ": " << value << " (target " << target << " +- "
            << tolerance * 100 << "%)\n";
  EXPECT_GE(value, target * (1 - tolerance)) << what << " = " << value << ", target " << target;
  EXPECT_LE(value, target * (1 + tolerance)) << what << " = " << value << ", target " << target;
}

TEST_F(QosTest, IopsLimitHoldsOverTenSeconds) {
  REQUIRE_FIO();
  CreateVolume("capped", {"--iops", "2000"});
  BackgroundFio run = StartFio(fio, "capped", {{"reader", "capped"}}, RandRead("4k", 10));
  // While it runs, stats show the limit at work: the client's requests wait in the QoS queue
  // (fio keeps 32 in flight), none is refused or failed.
  nlohmann::json s = StatsOfARunningVolume("capped");
  ExpectWithin(s["iops"].get<double>(), 2000, 0.10, "IOPS in volume stats");
  EXPECT_GT(s["throttled_requests"].get<uint64_t>(), 0u) << s.dump();
  EXPECT_GT(s["throttled_ns"].get<uint64_t>(), 500'000'000u) << s.dump();
  EXPECT_GT(s["queue_depth"].get<uint32_t>(), 16u) << s.dump();
  EXPECT_EQ(s["rejected"], 0) << s.dump();
  EXPECT_EQ(s["errors"], 0) << s.dump();
  EXPECT_EQ(s["qos"]["iops"], 2000);

  std::vector<FioJob> jobs = FinishFio(run);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, 0);
  ExpectWithin(jobs[0].read_iops, 2000, 0.05, "fio read IOPS under a 2000 IOPS limit");
}

TEST_F(QosTest, BandwidthLimitHoldsAndLargeRequestsCountBySize) {
  REQUIRE_FIO();
  CreateVolume("bw", {"--bps", "20M"});
  std::vector<FioJob> jobs = JobsOf(RunFio(fio, {{"reader", "bw"}}, RandRead("128k", 5)));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, 0);
  ExpectWithin(jobs[0].read_bw_bytes, 20.0 * 1024 * 1024, 0.05,
               "fio read bytes/s under a 20 MiB/s limit");

  // 1600 IOPS in 4 KiB units: a 64 KiB request counts 16, so 100 requests/s pass.
  CreateVolume("units", {"--iops", "1600"});
  jobs = JobsOf(RunFio(fio, {{"reader", "units"}}, RandRead("64k", 4)));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, 0);
  ExpectWithin(jobs[0].read_iops, 100, 0.07, "64 KiB requests/s under 1600 IOPS of 4 KiB");
}

// Reads fio's IOPS log: (time ms, IOPS averaged over the preceding window).
std::vector<std::pair<double, double>> ReadIopsLog(const std::string& path) {
  std::vector<std::pair<double, double>> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    double t = 0, v = 0;
    char comma = 0;
    if (fields >> t >> comma >> v) out.emplace_back(t, v);
  }
  return out;
}

TEST_F(QosTest, BurstRunsAtTheBurstRateThenAtTheBaseRate) {
  REQUIRE_FIO();
  // Base 500 IOPS, bursts of 2000 IOPS for 3 s: t_burst = T + r*q/(B - r) = 3.003 s.
  CreateVolume("bursty", {"--iops", "500", "--burst-iops", "2000", "--burst-seconds", "3"});
  const std::string log_prefix = h_.root() + "/burst";
  std::vector<std::string> options = RandRead("4k", 8);
  options.insert(options.end(), {"--write_iops_log=" + log_prefix, "--log_avg_msec=250"});
  BackgroundFio run = StartFio(fio, "bursty", {{"reader", "bursty"}}, options);
  // About 1 s into the burst: the credit bucket drains at B - r = 1500/s from its capacity
  // (B - r) * T + r * q = 4505 tokens; the peak bucket holds B * q = 20.
  nlohmann::json s = StatsOfARunningVolume("bursty");
  ASSERT_EQ(s["buckets"].size(), 1u) << s.dump();
  EXPECT_EQ(s["buckets"][0]["rate"], 500);
  EXPECT_EQ(s["buckets"][0]["burst_rate"], 2000);
  EXPECT_NEAR(s["buckets"][0]["capacity"].get<double>(), 4505, 1);
  EXPECT_NEAR(s["buckets"][0]["peak_capacity"].get<double>(), 20, 0.5);
  EXPECT_LT(s["buckets"][0]["tokens"].get<double>(), 4505 - 1000) << s.dump();
  std::vector<FioJob> jobs = FinishFio(run);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, 0);

  const auto log = ReadIopsLog(log_prefix + "_iops.1.log");
  ASSERT_GE(log.size(), 28u) << "fio's IOPS log has too few samples";
  double burst_sum = 0, base_sum = 0;
  int burst_n = 0, base_n = 0;
  double switch_ms = -1;
  for (const auto& [t, v] : log) {
    // Samples of whole 250 ms windows inside each phase (the window ending at 3250 ms spans
    // the switch).
    if (t >= 250 && t <= 2800) {
      burst_sum += v;
      ++burst_n;
    }
    if (t >= 3700 && t <= 7800) {
      base_sum += v;
      ++base_n;
    }
    if (switch_ms < 0 && v < 1250) switch_ms = t;  // first window mostly below the midpoint
  }
  ASSERT_GT(burst_n, 5);
  ASSERT_GT(base_n, 10);
  ExpectWithin(burst_sum / burst_n, 2000, 0.10, "IOPS during the burst");
  ExpectWithin(base_sum / base_n, 500, 0.10, "IOPS after the credit ran out");
  EXPECT_GE(switch_ms, 2900) << "the burst ended early";
  EXPECT_LE(switch_ms, 3600) << "the burst lasted too long";
  // Totals agree: 2000 * 3.003 + 500 * (8 - 3.003) requests.
  ExpectWithin(static_cast<double>(jobs[0].read_ios), 2000 * 3.003 + 500 * 4.997, 0.06,
               "requests in 8 s");
}

TEST_F(QosTest, LiveChangeIsVisibleInVolumeStatsWithinASecond) {
  REQUIRE_FIO();
  CreateVolume("live", {"--iops", "1000"});
  std::vector<std::string> argv = {fio, "--ioengine=nbd", "--output-format=json",
                                   "--output=" + h_.root() + "/live.json"};
  for (const std::string& o : RandRead("4k", 6)) argv.push_back(o);
  argv.insert(argv.end(), {"--name=reader", "--uri=" + h_.NbdUri("live")});
  ChildProcess reader(argv, h_.root() + "/live-fio.log");

  // At the old limit first: a full 1 s window near 1000 IOPS.
  nlohmann::json s;
  ASSERT_TRUE(WaitFor(
      [&] {
        s = Stats("live");
        return s["open"] == true && s["window_ns"].get<uint64_t>() >= 900'000'000 &&
               s["iops"].get<double>() > 900;
      },
      std::chrono::seconds(10)))
      << s.dump();
  EXPECT_LT(s["iops"].get<double>(), 1100) << s.dump();

  Shale({"qos", "set", "live", "--iops", "4000"});
  const uint64_t changed_ns = NowUnixNs();
  // The new rate is in force at once...
  s = Stats("live");
  ASSERT_EQ(s["buckets"].size(), 1u) << s.dump();
  EXPECT_EQ(s["buckets"][0]["rate"], 4000);
  // ...and shows in the delivered rate (1 s window) within a second: samples every 100 ms.
  CommandResult watch =
      h_.Shale({"-o", "json", "volume", "stats", "live", "--interval", "100ms", "--count", "15"});
  ASSERT_EQ(watch.exit_code, 0) << watch.Describe();
  std::istringstream lines(watch.out);
  std::string line;
  int samples = 0;
  double seen_after_s = -1, last_iops = 0;
  while (std::getline(lines, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not one JSON object per line: " << line;
    ++samples;
    last_iops = j["iops"].get<double>();
    // Clearly above the old limit: (1000 * (1 - t) + 4000 * t) in the window passes 2000 at
    // t = 1/3 s.
    if (seen_after_s < 0 && last_iops >= 2000) {
      seen_after_s = static_cast<double>(j["time_unix_ns"].get<uint64_t>() - changed_ns) / 1e9;
    }
  }
  EXPECT_EQ(samples, 15);
  ASSERT_GE(seen_after_s, 0) << "never above 2000 IOPS after the change: " << watch.out;
  EXPECT_LE(seen_after_s, 1.0) << "the change took too long to show";
  std::cout << "[ figure   ] above 2000 IOPS in volume stats " << seen_after_s
            << " s after the change to 4000\n";
  ExpectWithin(last_iops, 4000, 0.10, "IOPS 1.5 s after the change");

  ASSERT_TRUE(WaitFor([&] { return !reader.running(); }, std::chrono::seconds(30)));
  std::vector<FioJob> jobs = JobsOf(ParseFioJson(ReadTextFile(h_.root() + "/live.json")));
  ASSERT_EQ(jobs.size(), 1u) << reader.Log();
  EXPECT_EQ(jobs[0].error, 0) << "the live change failed requests";
  s = Stats("live");
  EXPECT_EQ(s["errors"], 0);
  EXPECT_EQ(s["rejected"], 0);
}

// Per-window IOPS of one job from fio's IOPS log, without the first and the last window (start
// and end of the run).
std::vector<double> Windows(const std::string& path) {
  std::vector<double> out;
  for (const auto& [t, v] : ReadIopsLog(path)) out.push_back(v);
  if (out.size() >= 3) out = std::vector<double>(out.begin() + 1, out.end() - 1);
  return out;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// The pool tests compare the jobs' throughput in 500 ms windows: the median over the windows is
// what the scheduler delivered; the whole-run figure also carries the windows in which a client
// process was not scheduled and left its queue empty (on a loaded 2-core machine that happens
// for tens of milliseconds; the scheduler is work-conserving and gives its slots to the other
// volume). Both are printed.

TEST_F(QosTest, WeightsShareAContendedPoolThreeToOne) {
  REQUIRE_FIO();
  Shale({"qos", "pool-budget", "default", "2"});
  CreateVolume("heavy", {"--weight", "300"});
  CreateVolume("light", {"--weight", "100"});
  Prefill(fio, "heavy");
  Prefill(fio, "light");
  const std::string log = h_.root() + "/weights";
  BackgroundFio run =
      StartFio(fio, "weights", {{"heavy", "heavy"}, {"light", "light"}}, PoolLoad(6, log));
  // The scheduler does the sharing: both wait for the pool budget and are picked by weight.
  nlohmann::json s = StatsOfARunningVolume("light");
  EXPECT_GT(s["contended_requests"].get<uint64_t>(), 0u) << s.dump();
  EXPECT_GT(s["weight_dispatches"].get<uint64_t>(), 0u) << s.dump();
  std::vector<FioJob> jobs = FinishFio(run);
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].error, 0);
  EXPECT_EQ(jobs[1].error, 0);
  ASSERT_GT(jobs[1].read_iops, 0);
  const std::vector<double> heavy = Windows(log + "_iops.1.log");
  const std::vector<double> light = Windows(log + "_iops.2.log");
  ASSERT_GE(std::min(heavy.size(), light.size()), 8u) << "fio's IOPS logs are too short";
  std::vector<double> ratios;
  for (size_t i = 0; i < std::min(heavy.size(), light.size()); ++i) {
    if (light[i] > 0) ratios.push_back(heavy[i] / light[i]);
  }
  const double ratio = Median(ratios);
  std::cout << "[ figure   ] weights 3:1: heavy " << jobs[0].read_iops << " light "
            << jobs[1].read_iops << " IOPS (whole run " << jobs[0].read_iops / jobs[1].read_iops
            << "), median of 500 ms windows " << ratio << "\n";
  EXPECT_GE(ratio, 3 * 0.85) << "heavy " << jobs[0].read_iops << " light " << jobs[1].read_iops;
  EXPECT_LE(ratio, 3 * 1.15) << "heavy " << jobs[0].read_iops << " light " << jobs[1].read_iops;
}

TEST_F(QosTest, AReservationHoldsWhileANeighbourRunsFlatOut) {
  REQUIRE_FIO();
  Shale({"qos", "pool-budget", "default", "2"});
  // Weight 1 against 10000: without its reservation the first volume gets almost nothing.
  CreateVolume("reserved", {"--weight", "1"});
  CreateVolume("noisy", {"--weight", "10000"});
  Prefill(fio, "reserved");
  Prefill(fio, "noisy");
  const std::vector<std::pair<std::string, std::string>> both = {{"reserved", "reserved"},
                                                                 {"noisy", "noisy"}};
  // What the pool delivers to the two, and the share of weight 1 alone.
  const std::string before_log = h_.root() + "/before";
  std::vector<FioJob> before = JobsOf(RunFio(fio, both, PoolLoad(4, before_log)));
  ASSERT_EQ(before.size(), 2u);
  const double weight1_alone = Median(Windows(before_log + "_iops.1.log"));
  const double total = weight1_alone + Median(Windows(before_log + "_iops.2.log"));
  ASSERT_GT(total, 1000) << "the pool is too slow for this test";
  // A fifth of what the pool delivered: met even if the machine gets much busier meanwhile.
  // (Weight 1 alone gets a few percent when the device is the bottleneck; on an overloaded
  // machine the CPU is, nobody waits for the scheduler and the check below proves less.)
  const int64_t reservation = static_cast<int64_t>(total / 5);

  Shale({"qos", "set", "reserved", "--reservation-iops", std::to_string(reservation)});
  const std::string after_log = h_.root() + "/after";
  BackgroundFio run = StartFio(fio, "reserved", both, PoolLoad(5, after_log));
  nlohmann::json s = StatsOfARunningVolume("reserved");
  EXPECT_GT(s["reservation_dispatches"].get<uint64_t>(), 0u) << s.dump();
  std::vector<FioJob> after = FinishFio(run);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].error, 0);
  EXPECT_EQ(after[1].error, 0);
  const double got = Median(Windows(after_log + "_iops.1.log"));
  const double neighbour = Median(Windows(after_log + "_iops.2.log"));
  std::cout << "[ figure   ] reservation " << reservation << " IOPS (pool delivered " << total
            << ", weight 1 without it " << weight1_alone << "): median of 500 ms windows " << got
            << " (whole run " << after[0].read_iops << "), neighbour " << neighbour << "\n";
  EXPECT_GE(got, 0.9 * static_cast<double>(reservation))
      << "reserved " << reservation << " IOPS; noisy got " << neighbour;
  // Work-conserving: the neighbour still gets the rest.
  EXPECT_GT(neighbour, 0.2 * total);
}

TEST_F(QosTest, SettingsSurviveARestart) {
  REQUIRE_FIO();
  CreateVolume("kept", {"--iops", "1000", "--burst-iops", "3000", "--burst-seconds", "2", "--bps",
                        "64M", "--weight", "250"});
  Shale({"qos", "set", "kept", "--reservation-iops", "200", "--read-bps", "32M"});
  Shale({"qos", "pool-budget", "default", "12"});
  CreateVolume("gone", {"--iops", "777"});
  Shale({"volume", "delete", "gone"});
  const nlohmann::json before = Json({"qos", "show", "kept"});
  ASSERT_EQ(before["qos"]["iops"], 1000);
  ASSERT_EQ(before["qos"]["reservation_iops"], 200);

  ASSERT_EQ(h_.StopDaemon(SIGTERM), 0);
  ASSERT_TRUE(h_.StartDaemon());
  EXPECT_EQ(Json({"qos", "show", "kept"}), before);
  EXPECT_EQ(Json({"volume", "show", "kept"})["qos"], before["qos"]);
  EXPECT_EQ(Json({"qos", "pool-budget", "default"})["budget"], 12);
  // A new volume of a deleted one's name starts without its settings.
  CreateVolume("gone");
  EXPECT_EQ(Json({"qos", "show", "gone"})["qos"]["iops"], 0);

  // In force, not only stored: 1000 IOPS base after a 3000 IOPS burst of ~2 s. Long enough
  // at the base rate that the total pins it: 3000 * 2 + 1000 * 2 requests in 4 s.
  std::vector<FioJob> jobs = JobsOf(RunFio(fio, {{"reader", "kept"}}, RandRead("4k", 4)));
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].error, 0);
  ExpectWithin(static_cast<double>(jobs[0].read_ios), 3000 * 2.005 + 1000 * 1.995, 0.08,
               "requests in 4 s after the restart");
}

TEST_F(QosTest, ThrottledClientsHoldUpNeitherAForcedDeleteNorTheDaemonsStop) {
  REQUIRE_FIO();
  // 32 requests queued at 1 IOPS would take 32 s to drain; a forced delete and a stop lift the
  // limits first (NBD lets every request in flight finish before it closes a connection).
  CreateVolume("doomed", {"--iops", "1"});
  CreateVolume("slow", {"--iops", "1"});
  BackgroundFio doomed = StartFio(fio, "doomed", {{"reader", "doomed"}}, RandRead("4k", 60));
  BackgroundFio slow = StartFio(fio, "slow", {{"reader", "slow"}}, RandRead("4k", 60));
  for (const std::string volume : {"doomed", "slow"}) {
    ASSERT_TRUE(WaitFor(
        [&] {
          nlohmann::json s = Stats(volume);
          return s.is_object() && s["queue_depth"].get<uint32_t>() >= 16;
        },
        std::chrono::seconds(10)))
        << volume;
  }
  auto t0 = std::chrono::steady_clock::now();
  Shale({"volume", "delete", "doomed", "--force"});
  const double delete_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ figure   ] forced delete with 32 requests held at 1 IOPS: " << delete_s << " s\n";
  EXPECT_LT(delete_s, 8.0) << "the delete waited for the throttled requests";
  EXPECT_TRUE(WaitFor([&] { return !doomed.child->running(); }, std::chrono::seconds(30)));
  // The other volume is still held to its limit.
  EXPECT_GE(Stats("slow")["queue_depth"].get<uint32_t>(), 16u);

  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(h_.StopDaemon(SIGTERM), 0);
  const double stop_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ figure   ] stop with 32 requests held at 1 IOPS: " << stop_s << " s\n";
  EXPECT_LT(stop_s, 8.0) << "the stop waited for the throttled requests";
  EXPECT_TRUE(WaitFor([&] { return !slow.child->running(); }, std::chrono::seconds(30)));
  // The settings are untouched by the stop.
  ASSERT_TRUE(h_.StartDaemon());
  EXPECT_EQ(Json({"qos", "show", "slow"})["qos"]["iops"], 1);
}

TEST_F(QosTest, BadInputGetsOneClearLine) {
  CreateVolume("v", {"--iops", "1000"});
  const nlohmann::json before = Json({"qos", "show", "v"});
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"qos", "set", "v", "--iops", "-5"}, "expected a whole number >= 0"},
      {{"qos", "set", "v", "--iops", "100000000000"}, "iops must be between 0 (unlimited) and"},
      {{"qos", "set", "v", "--bps", "2P"}, "bps must be between 0 (unlimited) and"},
      {{"qos", "set", "v", "--bps", "10X"}, "invalid size '10X'"},
      {{"qos", "set", "v", "--burst-iops", "500"}, "burst_iops (500) is below iops (1000)"},
      {{"qos", "set", "v", "--burst-bps", "1M"}, "burst_bps (1048576) needs bps"},
      {{"qos", "set", "v", "--burst-seconds", "5"}, "burst_seconds (5) is set but no burst"},
      {{"qos", "set", "v", "--burst-iops", "2000", "--burst-seconds", "100000"},
       "burst_seconds must be between"},
      {{"qos", "set", "v", "--weight", "0"}, "expected a weight between 1 and 10000"},
      {{"qos", "set", "v", "--weight", "20000"}, "expected a weight between 1 and 10000"},
      {{"qos", "set", "v", "--reservation-iops", "5000"}, "exceeds the iops limit (1000)"},
      {{"qos", "set", "v", "--iops-unit", "1000"}, "iops_unit must be"},
      {{"qos", "set", "v"}, "nothing to change"},
      {{"qos", "set", "nope", "--iops", "5"}, "'nope' not found"},
      {{"qos", "set", "bad/name", "--iops", "5"}, "bad/name"},
      {{"qos", "show", "nope"}, "'nope' not found"},
      {{"volume", "stats", "nope"}, "'nope' not found"},
      {{"volume", "stats", "v", "--interval", "5ms"}, "expected a duration"},
      {{"qos", "pool-budget", "default", "0"}, "between 1 and 4096"},
      {{"qos", "pool-budget", "nopool", "8"}, "nopool"},
      {{"volume", "create", "w", "--size", "1G", "--iops", "1000", "--burst-iops", "10"},
       "burst_iops (10) is below iops (1000)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::PrintToString(c.args));
    CommandResult r = h_.Shale(c.args);
    ExpectOneLineError(r, c.needle);
  }
  // Nothing changed, and the refused create left no volume behind.
  EXPECT_EQ(Json({"qos", "show", "v"}), before);
  CommandResult r = h_.Shale({"volume", "show", "w"});
  ExpectOneLineError(r, "not found");
  EXPECT_TRUE(h_.daemon_running());
}

}  // namespace
}  // namespace shale::e2e
