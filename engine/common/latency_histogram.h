// LatencyHistogram: a fixed-bucket latency histogram cheap enough for the data path.
//
// One writer (the thread that completes the requests: a volume's reactor) records with relaxed
// loads and stores — no read-modify-write instruction, no lock; any thread may take a Snapshot()
// at any time. A snapshot taken while a request is being recorded may see its bucket count
// without its sum (or the reverse): both only ever grow, so a scraper sees monotonic counters
// that agree within one request. The buckets are the upper bounds in kLatencyBucketsNs
// (Prometheus "le" bounds, inclusive), plus +Inf.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shale {

// Upper bounds of the buckets in nanoseconds: 25 µs .. 10 s, roughly 1-2.5-5 per decade, which
// covers an NVMe read (tens of µs) up to a stalled virtual disk (seconds).
inline constexpr std::array<uint64_t, 18> kLatencyBucketsNs = {
    25'000,      50'000,      100'000,       250'000,       500'000,       1'000'000,
    2'500'000,   5'000'000,   10'000'000,    25'000'000,    50'000'000,    100'000'000,
    250'000'000, 500'000'000, 1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};

class LatencyHistogram {
 public:
  static constexpr size_t kBuckets = kLatencyBucketsNs.size() + 1;  // the last one is +Inf

  struct Snapshot {
    std::array<uint64_t, kBuckets> counts{};  // per bucket (not cumulative)
    uint64_t count = 0;                       // sum of counts
    uint64_t sum_ns = 0;
  };

  LatencyHistogram() = default;
  LatencyHistogram(const LatencyHistogram&) = delete;
  LatencyHistogram& operator=(const LatencyHistogram&) = delete;

  // Single writer only (see above).
  void Record(uint64_t ns) {
    size_t i = 0;
    while (i < kLatencyBucketsNs.size() && ns > kLatencyBucketsNs[i]) ++i;
    Bump(counts_[i], 1);
    Bump(sum_ns_, ns);
  }

  // Any thread.
  Snapshot Take() const {
    Snapshot s;
    for (size_t i = 0; i < kBuckets; ++i) {
      s.counts[i] = counts_[i].load(std::memory_order_relaxed);
      s.count += s.counts[i];
    }
    s.sum_ns = sum_ns_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  static void Bump(std::atomic<uint64_t>& a, uint64_t by) {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }

  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> sum_ns_{0};
};

}  // namespace shale
