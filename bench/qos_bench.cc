// QoS benchmark: drives volumes through the engine's volume API with and without the QoS layer
// (qos/), on a file-backed pool, and prints what the limits, bursts, weights and reservations
// deliver — and what QoS costs when it does not limit — as ratios measured in the same run
// (../../shared/BENCH.md).
//
//   shale-qos-bench [--dir DIR] [--volume-size 1G] [--runtime 3] [--reps 5] [--reactors 2]
//                   [--io-backend io_uring] [--sections overhead,accuracy,burst,sharing]
//                   [--study budget] [--json FILE]
//
// Sections: limiter accuracy (IOPS limit, bandwidth limit; delivered/limit over 1 s and 100 ms
// windows), burst profile, overhead of QoS that does not limit (median of per-rep ratios, QoS
// off and on alternating), weight 3:1 and reservation with two volumes saturating the pool.
// --study budget sweeps the pool budget instead (the measurement behind its default).
//
// Each generator runs on its volume's reactor (like one fio job on one core), keeping `iodepth`
// requests in flight and recording every completion time.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/io/memory_device.h"
#include "qos/qos_manager.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using qos::QosSettings;

uint64_t NowNs() { return Clock::Real()->NowNanos(); }

struct Workload {
  std::string name;
  bool read;
  bool random;
  uint64_t bs;
  unsigned iodepth;
};

// Keeps iodepth requests in flight through `target` (on `reactor`) until the deadline.
class Generator {
 public:
  Generator(VolumeLayer* target, Reactor* reactor, uint64_t span, const Workload& w,
            uint64_t seed = 42)
      : target_(target), reactor_(reactor), span_(span), w_(w), rng_(seed) {
    slots_.resize(w.iodepth);
    for (auto& s : slots_) {
      s.buf = AllocateAligned(w.bs);
      std::memset(s.buf.get(), 0x5a, w.bs);
      s.gen = this;
    }
    done_times_.reserve(1'000'000);
    lat_ns_.reserve(1'000'000);
  }
  // Runs for runtime_ns (0: until `limit` requests completed).
  void Start(uint64_t runtime_ns, uint64_t limit = UINT64_MAX) {
    limit_ = limit;
    reactor_->Post([this, runtime_ns] {
      start_ = NowNs();
      deadline_ = runtime_ns == 0 ? UINT64_MAX : start_ + runtime_ns;
      for (auto& s : slots_) Issue(s);
    });
  }
  void Wait() { done_.get_future().wait(); }

  uint64_t start() const { return start_; }
  uint64_t end() const { return end_; }
  const std::vector<uint64_t>& done_times() const { return done_times_; }
  double iops() const {
    return static_cast<double>(done_times_.size()) / (static_cast<double>(end_ - start_) / 1e9);
  }
  double p99_us() {
    if (lat_ns_.empty()) return 0;
    size_t k = lat_ns_.size() * 99 / 100;
    std::nth_element(lat_ns_.begin(), lat_ns_.begin() + static_cast<long>(k), lat_ns_.end());
    return static_cast<double>(lat_ns_[k]) / 1000.0;
  }
  // Completions per window of `window_ns` over whole windows of [start, start + span_ns).
  std::vector<uint64_t> Windows(uint64_t window_ns, uint64_t span_ns) const {
    std::vector<uint64_t> out(span_ns / window_ns, 0);
    for (uint64_t t : done_times_) {
      const uint64_t i = (t - start_) / window_ns;
      if (i < out.size()) ++out[i];
    }
    return out;
  }

 private:
  struct Slot {
    VolumeIo io;
    AlignedBuffer buf;
    uint64_t issued = 0;
    Generator* gen = nullptr;
  };
  void Issue(Slot& s) {
    s.io = VolumeIo{};
    s.io.op = w_.read ? VolumeOp::kRead : VolumeOp::kWrite;
    s.io.length = w_.bs;
    s.io.buf = s.buf.get();
    if (w_.random) {
      s.io.offset = (rng_() % (span_ / w_.bs)) * w_.bs;
    } else {
      s.io.offset = cursor_;
      cursor_ = (cursor_ + w_.bs) % span_;
    }
    s.io.ctx = &s;
    s.io.done = [](VolumeIo* io) {
      static_cast<Slot*>(io->ctx)->gen->OnDone(*static_cast<Slot*>(io->ctx));
    };
    ++inflight_;
    ++issued_;
    s.issued = NowNs();
    target_->Submit(&s.io);
  }
  void OnDone(Slot& s) {
    --inflight_;
    const uint64_t now = NowNs();
    if (!s.io.status.ok()) {
      std::fprintf(stderr, "I/O error: %s\n", s.io.status.ToString().c_str());
      std::exit(1);
    }
    done_times_.push_back(now);
    lat_ns_.push_back(now - s.issued);
    if (now < deadline_ && issued_ < limit_) {
      Issue(s);
    } else if (inflight_ == 0) {
      end_ = now;
      done_.set_value();
    }
  }

  VolumeLayer* target_;
  Reactor* reactor_;
  uint64_t span_;
  Workload w_;
  std::mt19937_64 rng_;
  std::vector<Slot> slots_;
  std::vector<uint64_t> done_times_, lat_ns_;
  uint64_t cursor_ = 0, inflight_ = 0, issued_ = 0, limit_ = UINT64_MAX;
  uint64_t start_ = 0, deadline_ = 0, end_ = 0;
  std::promise<void> done_;
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Accuracy {
  double whole = 0;                                 // delivered / limit over the run
  double w1_min = 0, w1_max = 0;                    // over 1 s windows
  double w100_min = 0, w100_med = 0, w100_max = 0;  // over 100 ms windows
};

// `units_per_request`: 1 for an IOPS limit, the block size for a bandwidth limit.
Accuracy Measure(const Generator& g, double limit, double units_per_request, uint64_t runtime_ns) {
  Accuracy a;
  const double secs = static_cast<double>(g.end() - g.start()) / 1e9;
  a.whole = static_cast<double>(g.done_times().size()) * units_per_request / secs / limit;
  auto ratios = [&](uint64_t window_ns) {
    std::vector<double> r;
    for (uint64_t c : g.Windows(window_ns, runtime_ns)) {
      r.push_back(static_cast<double>(c) * units_per_request /
                  (static_cast<double>(window_ns) / 1e9) / limit);
    }
    return r;
  };
  auto w1 = ratios(1'000'000'000);
  auto w100 = ratios(100'000'000);
  if (!w1.empty()) {
    a.w1_min = *std::min_element(w1.begin(), w1.end());
    a.w1_max = *std::max_element(w1.begin(), w1.end());
  }
  if (!w100.empty()) {
    a.w100_min = *std::min_element(w100.begin(), w100.end());
    a.w100_max = *std::max_element(w100.begin(), w100.end());
    a.w100_med = Median(w100);
  }
  return a;
}

void Check(const Status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, st.ToString().c_str());
    std::exit(1);
  }
}

struct Bench {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<qos::QosManager> qos;
  std::shared_ptr<VolumeHandle> ha, hb;    // raw volumes
  std::shared_ptr<qos::QosVolume> qa, qb;  // through QoS
  uint64_t vsize = 0;
};

// Both generators at once, for runtime; returns {a, b} IOPS and a's p99.
struct Pair {
  double a = 0, b = 0, a_p99 = 0;
};
Pair RunPair(VolumeLayer* a, Reactor* ra, VolumeLayer* b, Reactor* rb, uint64_t span,
             const Workload& w, uint64_t runtime_ns) {
  Generator ga(a, ra, span, w, 1), gb(b, rb, span, w, 2);
  ga.Start(runtime_ns);
  gb.Start(runtime_ns);
  ga.Wait();
  gb.Wait();
  return {ga.iops(), gb.iops(), ga.p99_us()};
}

// For each budget, in rounds (each budget measured right after a run without QoS, so that the
// ratio compares like with like on a noisy machine): two volumes saturating the pool with weights
// 3:1 (total IOPS vs no QoS, a/b, a's p99), then one volume alone at QD 128 (the solo bypass).
bool g_verbose = false;

// With --verbose: what QoS reports for a volume after a run (stats fields, scheduler state).
void PrintStats(qos::QosManager& q, const char* volume) {
  if (!g_verbose) return;
  auto s = q.Stats(volume);
  if (!s.ok()) return;
  std::printf(
      "#   %s: iops %.0f reads %llu throttled %llu contended %llu (wait %.1f ms) res/wt "
      "dispatches %llu/%llu queue %u in flight %u | pool budget %u outstanding %u waiting %u\n",
      volume, s->iops, static_cast<unsigned long long>(s->reads),
      static_cast<unsigned long long>(s->throttled_requests),
      static_cast<unsigned long long>(s->contended_requests),
      static_cast<double>(s->contended_wait_ns) / 1e6,
      static_cast<unsigned long long>(s->reservation_dispatches),
      static_cast<unsigned long long>(s->weight_dispatches), s->queue_depth, s->in_flight,
      s->pool_budget, s->pool_outstanding, s->pool_waiting);
}

int BudgetStudy(Bench& b, uint64_t runtime_ns, const std::vector<uint32_t>& budgets, unsigned qd,
                unsigned reps, json& out) {
  const Workload w{"randread-4k", true, true, 4096, qd};
  const Workload deep{"randread-4k", true, true, 4096, 128};
  std::printf(
      "\n## pool budget study: 4 KiB random reads, two volumes at QD %u each with weights 3:1; "
      "one volume alone at QD 128 (medians of %u rounds)\n\n",
      qd, reps);
  std::printf(
      "| budget | two volumes: total IOPS | total / no QoS | a/b (target 3.00) | a p99 us "
      "(no QoS) | one volume QD128 / no QoS |\n");
  std::printf("|---|---|---|---|---|---|\n");
  struct Row {
    std::vector<double> total, total_ratio, ab, p99, raw_p99, solo_ratio;
  };
  std::map<uint32_t, Row> rows;
  for (unsigned rep = 0; rep < reps; ++rep) {
    for (uint32_t budget : budgets) {
      Check(b.qos->Set("a", {}), "set a");
      Check(b.qos->Set("b", {}), "set b");
      Pair raw = RunPair(&b.ha->volume(), b.ha->reactor(), &b.hb->volume(), b.hb->reactor(),
                         b.vsize, w, runtime_ns);
      Generator solo_raw(&b.ha->volume(), b.ha->reactor(), b.vsize, deep);
      solo_raw.Start(runtime_ns);
      solo_raw.Wait();
      Check(b.qos->SetPoolBudget("bench", budget), "budget");
      Check(b.qos->Set("a", {.weight = 300}), "set a");
      Check(b.qos->Set("b", {.weight = 100}), "set b");
      Pair p =
          RunPair(b.qa.get(), b.qa->reactor(), b.qb.get(), b.qb->reactor(), b.vsize, w, runtime_ns);
      Generator solo(b.qa.get(), b.qa->reactor(), b.vsize, deep);
      solo.Start(runtime_ns);
      solo.Wait();
      Row& r = rows[budget];
      r.total.push_back(p.a + p.b);
      r.total_ratio.push_back((p.a + p.b) / (raw.a + raw.b));
      r.ab.push_back(p.a / p.b);
      r.p99.push_back(p.a_p99);
      r.raw_p99.push_back(raw.a_p99);
      r.solo_ratio.push_back(solo.iops() / solo_raw.iops());
      std::printf("# round %u budget %u: no QoS %.0f, QoS %.0f (a/b %.2f); solo %.0f vs %.0f\n",
                  rep + 1, budget, raw.a + raw.b, p.a + p.b, p.a / p.b, solo.iops(),
                  solo_raw.iops());
      std::fflush(stdout);
    }
  }
  for (uint32_t budget : budgets) {
    const Row& r = rows[budget];
    std::printf("| %u | %.0f | %.3f | %.2f | %.0f (%.0f) | %.3f |\n", budget, Median(r.total),
                Median(r.total_ratio), Median(r.ab), Median(r.p99), Median(r.raw_p99),
                Median(r.solo_ratio));
    out.push_back({{"budget", budget},
                   {"total_iops", Median(r.total)},
                   {"total_ratio", Median(r.total_ratio)},
                   {"ab_ratio", Median(r.ab)},
                   {"a_p99_us", Median(r.p99)},
                   {"solo_ratio", Median(r.solo_ratio)}});
  }
  Check(b.qos->SetPoolBudget("bench", qos::kDefaultPoolBudget), "budget");
  Check(b.qos->Set("a", {}), "set a");
  Check(b.qos->Set("b", {}), "set b");
  return 0;
}

const Workload kRandRead4k{"randread-4k", true, true, 4096, 32};
const Workload kRandWrite4k{"randwrite-4k", false, true, 4096, 32};

// Overhead of QoS that does not limit: off / on (no settings) / on (limits never reached), on
// volume a, alternating; prints the table and fills results["overhead"]. Returns the median
// IOPS of random reads without QoS (the device's capacity).
double OverheadSection(Bench& b, uint64_t rt, unsigned reps, json& results) {
  json overhead = json::array();
  double capacity = 0;
  std::printf(
      "\n## overhead: QoS on but not limiting vs off (same volume, alternating, %u reps)\n\n",
      reps);
  std::printf(
      "| workload | off IOPS | on, no limits IOPS | on/off | on, limit not reached IOPS | on/off "
      "| off p99 us | on p99 us |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Workload& w : {kRandRead4k, kRandWrite4k}) {
    std::vector<double> off, on, onl, r_on, r_onl, p_off, p_on;
    for (unsigned rep = 0; rep < reps; ++rep) {
      // 0: QoS off (the Volume itself), 1: on without settings, 2: on with limits that are
      // never reached (the limiter runs for every request). Order rotated per rep.
      double iops[3] = {0, 0, 0}, p99[3] = {0, 0, 0};
      for (unsigned k = 0; k < 3; ++k) {
        const unsigned config = (rep + k) % 3;
        Check(config == 2 ? b.qos->Set("a", {.iops = qos::kMaxIops, .bps = qos::kMaxBps})
                          : b.qos->Set("a", {}),
              "set");
        VolumeLayer* target = config == 0 ? static_cast<VolumeLayer*>(&b.ha->volume())
                                          : static_cast<VolumeLayer*>(b.qa.get());
        Generator g(target, b.ha->reactor(), b.vsize, w);
        g.Start(rt);
        g.Wait();
        iops[config] = g.iops();
        p99[config] = g.p99_us();
      }
      off.push_back(iops[0]);
      on.push_back(iops[1]);
      onl.push_back(iops[2]);
      r_on.push_back(iops[1] / iops[0]);
      r_onl.push_back(iops[2] / iops[0]);
      p_off.push_back(p99[0]);
      p_on.push_back(p99[1]);
      std::printf("# rep %u %s off %.0f on %.0f (%.3f) limited-high %.0f (%.3f)\n", rep + 1,
                  w.name.c_str(), iops[0], iops[1], r_on.back(), iops[2], r_onl.back());
      std::fflush(stdout);
    }
    if (w.read) capacity = Median(off);
    std::printf("| %s QD%u | %.0f | %.0f | %.3f | %.0f | %.3f | %.0f | %.0f |\n", w.name.c_str(),
                w.iodepth, Median(off), Median(on), Median(r_on), Median(onl), Median(r_onl),
                Median(p_off), Median(p_on));
    overhead.push_back({{"workload", w.name},
                        {"off_iops", Median(off)},
                        {"on_iops", Median(on)},
                        {"on_ratio", Median(r_on)},
                        {"on_limited_iops", Median(onl)},
                        {"on_limited_ratio", Median(r_onl)}});
  }
  results["overhead"] = overhead;
  Check(b.qos->Set("a", {}), "set");
  return capacity;
}

// One limiter-accuracy measurement: `workload` on volume a through QoS with `settings`.
struct AccuracyCase {
  const char* kind;  // "iops" or "bps" (the JSON "limit")
  QosSettings settings;
  double limit;              // the limit set, in units per second
  double units_per_request;  // 1 for an IOPS limit, the block size for a bandwidth limit
  Workload workload;
  std::string label;           // the table's "limit" column
  const char* workload_label;  // the table's "workload" column
};

// Runs `c`, prints its table row, returns its JSON.
json RunAccuracyCase(Bench& b, const AccuracyCase& c, uint64_t rt) {
  Check(b.qos->Set("a", c.settings), "set");
  Generator g(b.qa.get(), b.qa->reactor(), b.vsize, c.workload);
  g.Start(rt);
  g.Wait();
  Accuracy a = Measure(g, c.limit, c.units_per_request, rt);
  std::printf("| %s | %s | %.3f | %.3f..%.3f | %.3f / %.3f / %.3f |\n", c.label.c_str(),
              c.workload_label, a.whole, a.w1_min, a.w1_max, a.w100_min, a.w100_med, a.w100_max);
  return {{"limit", c.kind},       {"value", c.limit},   {"whole", a.whole},
          {"w1_min", a.w1_min},    {"w1_max", a.w1_max}, {"w100_min", a.w100_min},
          {"w100_max", a.w100_max}};
}

// Limiter accuracy of an IOPS and a bandwidth limit; prints the table and fills
// results["accuracy"].
void AccuracySection(Bench& b, double iops_limit, double bps_limit, uint64_t rt, json& results) {
  std::printf("\n## limiter accuracy: delivered / limit (1.000 = exact)\n\n");
  std::printf(
      "| limit | workload | whole run | 1 s windows min..max | 100 ms windows min / median / max "
      "|\n");
  std::printf("|---|---|---|---|---|\n");
  char iops_label[64];
  std::snprintf(iops_label, sizeof(iops_label), "iops=%.0f", iops_limit);
  json accuracy = json::array();
  accuracy.push_back(RunAccuracyCase(b,
                                     {.kind = "iops",
                                      .settings = {.iops = static_cast<int64_t>(iops_limit)},
                                      .limit = iops_limit,
                                      .units_per_request = 1,
                                      .workload = kRandRead4k,
                                      .label = iops_label,
                                      .workload_label = "randread 4K QD32"},
                                     rt));
  Check(b.qos->Set("a", {}), "set");
  accuracy.push_back(RunAccuracyCase(b,
                                     {.kind = "bps",
                                      .settings = {.bps = static_cast<int64_t>(bps_limit)},
                                      .limit = bps_limit,
                                      .units_per_request = 128 * 1024,
                                      .workload = {"randread-128k", true, true, 128 * 1024, 8},
                                      .label = "bps=20 MiB/s",
                                      .workload_label = "randread 128K QD8"},
                                     rt));
  results["accuracy"] = accuracy;
}

// Burst profile from full credit (base iops_limit / 4, burst iops_limit for 2 s), IOPS per
// 250 ms window against the expected profile; prints the table and fills results["burst"].
void BurstSection(Bench& b, double iops_limit, json& results) {
  const int64_t base = static_cast<int64_t>(iops_limit / 4),
                burst = static_cast<int64_t>(iops_limit);
  const int64_t secs = 2;
  Check(b.qos->Set("a", {}), "set");  // fresh buckets start full: as after a long idle
  Check(b.qos->Set("a", {.iops = base, .burst_iops = burst, .burst_seconds = secs}), "set");
  Generator g(b.qa.get(), b.qa->reactor(), b.vsize, kRandRead4k);
  const uint64_t span = 3 * static_cast<uint64_t>(secs) * 1'000'000'000;
  g.Start(span);
  g.Wait();
  auto win = g.Windows(250'000'000, span);
  std::printf(
      "\n## burst: iops=%lld burst_iops=%lld burst_seconds=%lld, from full credit (IOPS per 250 "
      "ms "
      "window)\n\n",
      static_cast<long long>(base), static_cast<long long>(burst), static_cast<long long>(secs));
  std::printf("| t (s) | IOPS | expected |\n|---|---|---|\n");
  // Expected: B until the credit (B - r) * T + r * q runs out at T + r*q/(B - r), then r.
  const double t_end = static_cast<double>(secs) +
                       static_cast<double>(base) * 0.01 / static_cast<double>(burst - base);
  json prof = json::array();
  double burst_sum = 0, base_sum = 0;
  int burst_n = 0, base_n = 0;
  for (size_t i = 0; i < win.size(); ++i) {
    const double t0 = static_cast<double>(i) * 0.25;
    const double iops = static_cast<double>(win[i]) * 4;
    const double expected = t0 + 0.25 <= t_end ? static_cast<double>(burst)
                                               : (t0 >= t_end ? static_cast<double>(base) : -1);
    if (expected == static_cast<double>(burst)) burst_sum += iops, ++burst_n;
    if (expected == static_cast<double>(base)) base_sum += iops, ++base_n;
    std::printf(
        "| %.2f | %.0f | %s |\n", t0, iops,
        expected < 0 ? "transition" : std::to_string(static_cast<int64_t>(expected)).c_str());
    prof.push_back({{"t", t0}, {"iops", iops}});
  }
  std::printf("\nburst phase: %.3f of B; base phase: %.3f of r\n",
              burst_sum / burst_n / static_cast<double>(burst),
              base_sum / base_n / static_cast<double>(base));
  results["burst"] = {{"profile", prof},
                      {"burst_ratio", burst_sum / burst_n / static_cast<double>(burst)},
                      {"base_ratio", base_sum / base_n / static_cast<double>(base)}};
  Check(b.qos->Set("a", {}), "set");
}

// Weights and reservation, two volumes saturating the pool. Rounds of: no QoS; weights 3:1; a
// weight 1 vs b weight 10000; the same with a reserving 30% of what the pool delivered under QoS
// in the first round. Prints the medians over the rounds and fills results["sharing"].
void SharingSection(Bench& b, unsigned reps, uint64_t rt, json& results) {
  const unsigned rounds = std::max(1u, std::min(reps, 3u));
  std::printf(
      "\n## sharing the pool: two volumes, 4 KiB random reads at QD 32 each, default budget %u "
      "(medians of %u rounds)\n\n",
      qos::kDefaultPoolBudget, rounds);
  std::vector<double> raw_a, raw_b, w_a, w_b, w_ratio, n_a, n_b, r_a, r_b;
  int64_t reservation = 0;
  for (unsigned round = 0; round < rounds; ++round) {
    Check(b.qos->Set("a", {}), "set");
    Check(b.qos->Set("b", {}), "set");
    Pair raw = RunPair(&b.ha->volume(), b.ha->reactor(), &b.hb->volume(), b.hb->reactor(), b.vsize,
                       kRandRead4k, rt);
    Check(b.qos->Set("a", {.weight = 300}), "set");
    Check(b.qos->Set("b", {.weight = 100}), "set");
    Pair p =
        RunPair(b.qa.get(), b.qa->reactor(), b.qb.get(), b.qb->reactor(), b.vsize, kRandRead4k, rt);
    PrintStats(*b.qos, "a");
    PrintStats(*b.qos, "b");
    if (round == 0) reservation = static_cast<int64_t>((p.a + p.b) * 0.3 / 100) * 100;
    Check(b.qos->Set("a", {.weight = 1}), "set");
    Check(b.qos->Set("b", {.weight = 10000}), "set");
    Pair nores =
        RunPair(b.qa.get(), b.qa->reactor(), b.qb.get(), b.qb->reactor(), b.vsize, kRandRead4k, rt);
    Check(b.qos->Set("a", {.weight = 1, .reservation_iops = reservation}), "set");
    Pair res =
        RunPair(b.qa.get(), b.qa->reactor(), b.qb.get(), b.qb->reactor(), b.vsize, kRandRead4k, rt);
    PrintStats(*b.qos, "a");
    PrintStats(*b.qos, "b");
    raw_a.push_back(raw.a);
    raw_b.push_back(raw.b);
    w_a.push_back(p.a);
    w_b.push_back(p.b);
    w_ratio.push_back(p.a / p.b);
    n_a.push_back(nores.a);
    n_b.push_back(nores.b);
    r_a.push_back(res.a);
    r_b.push_back(res.b);
    std::printf(
        "# round %u: no QoS %.0f/%.0f; weights %.0f/%.0f (%.2f); 1:10000 %.0f/%.0f; reserved "
        "%.0f/%.0f (%.3f of %lld)\n",
        round + 1, raw.a, raw.b, p.a, p.b, p.a / p.b, nores.a, nores.b, res.a, res.b,
        res.a / static_cast<double>(reservation), static_cast<long long>(reservation));
    std::fflush(stdout);
  }
  const double res_d = static_cast<double>(reservation);
  std::vector<double> r_ratio, n_ratio;
  for (double x : r_a) r_ratio.push_back(x / res_d);
  for (double x : n_a) n_ratio.push_back(x / res_d);
  std::printf("\n| setting | a IOPS | b IOPS | result | target |\n|---|---|---|---|---|\n");
  std::printf("| no QoS | %.0f | %.0f | a/b = %.2f | - |\n", Median(raw_a), Median(raw_b),
              Median(raw_a) / Median(raw_b));
  std::printf("| weights 300:100 | %.0f | %.0f | a/b = %.2f | 3.00 |\n", Median(w_a), Median(w_b),
              Median(w_ratio));
  std::printf("| a weight 1, b weight 10000 | %.0f | %.0f | a = %.3f of %lld | - |\n", Median(n_a),
              Median(n_b), Median(n_ratio), static_cast<long long>(reservation));
  std::printf("| + a reservation %lld | %.0f | %.0f | a = %.3f of reservation | >= 0.90 |\n",
              static_cast<long long>(reservation), Median(r_a), Median(r_b), Median(r_ratio));
  results["sharing"] = {{"weight_ratio", Median(w_ratio)},
                        {"reservation", reservation},
                        {"reserved_ratio", Median(r_ratio)},
                        {"unreserved_ratio", Median(n_ratio)}};
  Check(b.qos->Set("a", {}), "set");
  Check(b.qos->Set("b", {}), "set");
}

// The command line; the defaults are the ones --help shows.
struct Options {
  std::string dir = "/var/tmp/shale-qos-bench", volume_size = "1G", backend = "io_uring", json_out,
              study, device = "file";
  unsigned runtime = 3, reps = 5, reactors = 2;
  std::vector<uint32_t> budgets = {8, 16, 32, 64, 128};
  unsigned study_qd = 32;
  std::vector<std::string> sections = {"overhead", "accuracy", "burst", "sharing"};
};

// Opens an engine on a fresh opt.dir with pool "bench" and volumes a and b of b.vsize (raw and
// through QoS), preconditioned by a sequential fill. 2 for a bad --device; exits on other errors.
int OpenBench(const Options& opt, IoBackend backend, Bench& b) {
  fs::remove_all(opt.dir);
  fs::create_directories(opt.dir);
  EngineOptions o;
  o.data_dir = opt.dir + "/data";
  o.create_default_pool = false;
  o.device.backend = backend;
  o.reactors = opt.reactors;
  const uint64_t pool_size = 2 * b.vsize + b.vsize / 4 + 64 * kMiB;
  if (opt.device == "memory") {
    auto mem = std::make_shared<MemoryDevice>(pool_size);
    o.device_factory = [mem](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
      return std::shared_ptr<BlockDevice>(mem);
    };
  } else if (opt.device != "file") {
    std::fprintf(stderr, "--device must be file or memory\n");
    return 2;
  }
  auto engine = Engine::Open(o);
  Check(engine.ok() ? Status::Ok() : engine.status(), "open engine");
  b.engine = std::move(engine).value();
  auto pool = b.engine->CreatePool(
      {.name = "bench", .device_path = opt.dir + "/pool.img", .size_bytes = pool_size});
  Check(pool.ok() ? Status::Ok() : pool.status(), "create pool");
  for (const char* n : {"a", "b"}) {
    auto v = b.engine->CreateVolume({.name = n, .size_bytes = b.vsize, .pool = "bench"});
    Check(v.ok() ? Status::Ok() : v.status(), "create volume");
  }
  auto qm = qos::QosManager::Open(b.engine.get(), {});
  Check(qm.ok() ? Status::Ok() : qm.status(), "open qos");
  b.qos = std::move(qm).value();
  b.ha = std::move(b.engine->OpenVolume("a")).value();
  b.hb = std::move(b.engine->OpenVolume("b")).value();
  b.qa = std::move(b.qos->Wrap(std::move(b.engine->OpenVolume("a")).value())).value();
  b.qb = std::move(b.qos->Wrap(std::move(b.engine->OpenVolume("b")).value())).value();
  std::printf("# precondition: writing 2 x %s sequentially; reactors: a on %d, b on %d\n",
              FormatSize(b.vsize).c_str(), b.ha->reactor()->id(), b.hb->reactor()->id());
  for (auto* h : {b.ha.get(), b.hb.get()}) {
    Generator fill(&h->volume(), h->reactor(), b.vsize, {"fill", false, false, 1 * kMiB, 8});
    fill.Start(0, b.vsize / kMiB);
    fill.Wait();
  }
  return 0;
}

// Closes the volumes, QoS and the engine, and removes `dir`.
void CloseBench(Bench& b, const std::string& dir) {
  b.qa.reset();
  b.qb.reset();
  b.ha.reset();
  b.hb.reset();
  b.qos.reset();
  b.engine.reset();
  fs::remove_all(dir);
}

int Main(int argc, char** argv) {
  CLI::App app{
      "Shale QoS benchmark: limits, bursts, overhead, weights and reservations through the volume "
      "API"};
  Options opt;
  app.add_option("--dir", opt.dir, "work directory (pool file and metadata; removed at the end)");
  app.add_option("--volume-size", opt.volume_size,
                 "size of each of the two volumes (preconditioned fully)");
  app.add_option("--runtime", opt.runtime, "seconds per measurement");
  app.add_option("--reps", opt.reps, "repetitions of the overhead measurement (median of ratios)");
  app.add_option("--reactors", opt.reactors,
                 "engine reactors (2: the two volumes live on different reactors)");
  app.add_option("--io-backend", opt.backend, "io_uring or libaio");
  app.add_option("--device", opt.device,
                 "file (a pool file on disk) or memory (an in-memory device: the run is CPU-bound, "
                 "which isolates QoS's CPU cost per request)");
  app.add_option("--study", opt.study, "run a study instead: budget");
  app.add_option("--study-qd", opt.study_qd,
                 "budget study: queue depth of each of the two volumes");
  app.add_option("--budgets", opt.budgets, "budget study: budgets to measure")->delimiter(',');
  app.add_option("--sections", opt.sections, "subset of overhead accuracy burst sharing")
      ->delimiter(',');
  app.add_option("--json", opt.json_out, "also write results as JSON to this file");
  app.add_flag("--verbose", g_verbose, "print QoS stats of both volumes after each sharing run");
  CLI11_PARSE(app, argc, argv);
  auto vsize = ParseSize(opt.volume_size);
  auto be = ParseIoBackend(opt.backend);
  if (!vsize.ok() || !be.ok()) {
    std::fprintf(stderr, "bad option\n");
    return 2;
  }
  log::Init("warn");
  Bench b;
  b.vsize = *vsize;
  if (int rc = OpenBench(opt, *be, b); rc != 0) return rc;
  const uint64_t rt = static_cast<uint64_t>(opt.runtime) * 1'000'000'000;
  json results;
  if (opt.study == "budget") {
    json rows = json::array();
    int rc = BudgetStudy(b, rt, opt.budgets, opt.study_qd, opt.reps, rows);
    results["budget_study"] = rows;
    if (!opt.json_out.empty()) std::ofstream(opt.json_out) << results.dump(2) << "\n";
    CloseBench(b, opt.dir);
    return rc;
  }
  if (!opt.study.empty()) {
    std::fprintf(stderr, "unknown study %s\n", opt.study.c_str());
    return 2;
  }

  auto want = [&](const char* name) {
    return std::find(opt.sections.begin(), opt.sections.end(), name) != opt.sections.end();
  };
  double capacity = want("overhead") ? OverheadSection(b, rt, opt.reps, results) : 0;
  if (capacity == 0) {  // the limits below are chosen against the device's capacity
    Generator g(&b.ha->volume(), b.ha->reactor(), b.vsize, kRandRead4k);
    g.Start(rt);
    g.Wait();
    capacity = g.iops();
  }
  std::printf("\n# randread 4K QD32 without QoS: %.0f IOPS (limits below are set from it)\n",
              capacity);
  const double iops_limit = std::max(500.0, std::min(5000.0, std::floor(capacity / 4 / 100) * 100));
  const double bps_limit = 20.0 * kMiB;
  if (want("accuracy")) AccuracySection(b, iops_limit, bps_limit, rt, results);
  if (want("burst")) BurstSection(b, iops_limit, results);
  if (want("sharing")) SharingSection(b, opt.reps, rt, results);
  if (!opt.json_out.empty()) std::ofstream(opt.json_out) << results.dump(2) << "\n";
  CloseBench(b, opt.dir);
  return 0;
}

}  // namespace
}  // namespace shale

int main(int argc, char** argv) { return shale::Main(argc, argv); }
