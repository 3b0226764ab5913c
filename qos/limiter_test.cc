#include "qos/limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace shale::qos {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSecond = 1'000'000'000;
constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kT0 = 5 * kSec;

const RequestCost kRead4k = CostOf(VolumeOp::kRead, 0, 4096, 4096);
const RequestCost kWrite4k = CostOf(VolumeOp::kWrite, 0, 4096, 4096);

// A client that always has one more request: it passes whenever the limiter lets it, otherwise
// it comes back exactly when told. Returns the admission times in [start, end).
std::vector<uint64_t> Saturate(Limiter& l, const RequestCost& c, uint64_t start, uint64_t end) {
  std::vector<uint64_t> times;
  uint64_t now = start;
  while (now < end) {
    const uint64_t wait = l.Admit(c, now);
    if (wait == 0) {
      times.push_back(now);
    } else {
      now += wait;
    }
  }
  return times;
}

size_t CountIn(const std::vector<uint64_t>& times, uint64_t from, uint64_t to) {
  return static_cast<size_t>(
      std::count_if(times.begin(), times.end(), [&](uint64_t t) { return t >= from && t < to; }));
}

Limiter Make(const QosSettings& s, uint64_t now = kT0) {
  Limiter l;
  EXPECT_TRUE(s.Validate().ok()) << s.Validate();
  l.Configure(s, now);
  return l;
}

TEST(QosCostTest, RequestsCountByIopsUnit) {
  EXPECT_EQ(CostOf(VolumeOp::kRead, 0, 4096, 4096).ops, 1u);
  EXPECT_EQ(CostOf(VolumeOp::kRead, 0, 512, 4096).ops, 1u);
  EXPECT_EQ(CostOf(VolumeOp::kRead, 0, 4097, 4096).ops, 2u);
  EXPECT_EQ(CostOf(VolumeOp::kWrite, 0, 1 << 20, 4096).ops, 256u);
  EXPECT_EQ(CostOf(VolumeOp::kWrite, 0, 1 << 20, 1 << 20).ops, 1u);
  EXPECT_EQ(CostOf(VolumeOp::kWrite, 0, 1 << 20, 4096).bytes, 1u << 20);
  const RequestCost discard = CostOf(VolumeOp::kDiscard, 0, 1ull << 30, 4096);
  EXPECT_EQ(discard.dir, Direction::kWrite);
  EXPECT_EQ(discard.ops, 1u);
  EXPECT_EQ(discard.bytes, 0u) << "metadata only: no bandwidth";
  EXPECT_EQ(CostOf(VolumeOp::kWriteZeroes, kVolumeNoUnmap, 65536, 4096).bytes, 65536u)
      << "real zeros written";
  EXPECT_EQ(CostOf(VolumeOp::kWriteZeroes, 0, 65536, 4096).bytes, 0u);
  EXPECT_EQ(CostOf(VolumeOp::kFlush, 0, 0, 4096).dir, Direction::kNone);
}

TEST(LimiterTest, ExactAdmissionSequenceAtTheRate) {
  Limiter l = Make({.iops = 1000});
  const auto t = Saturate(l, kRead4k, kT0, kT0 + 5 * kMs + 2);
  // A full bucket of r*q = 10 tokens, then one more as soon as the level is positive, then one
  // per millisecond.
  ASSERT_EQ(t.size(), 16u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(t[i], kT0) << i;
  EXPECT_EQ(t[10], kT0 + 1);
  for (int i = 11; i < 16; ++i) EXPECT_EQ(t[i], kT0 + 1 + static_cast<uint64_t>(i - 10) * kMs) << i;
}

TEST(LimiterTest, ALateWakeUpCatchesUpInsteadOfLosingTokens) {
  Limiter l = Make({.iops = 1000});
  // Drain the full bucket (10 tokens) and one more: the level is at -1 token at kT0 + 1.
  ASSERT_EQ(Saturate(l, kRead4k, kT0, kT0 + 2).size(), 11u);
  // The next request was due 2 ms later (level back above 0); the caller runs 50 ms late.
  const uint64_t now = kT0 + 2 + 52 * kMs;
  // On time, a request that waited would find at most r*q = 10 tokens; 50 ms late it gets all
  // the rate earned since the bucket was at -1 (+1e-6): 52 tokens, so 52 requests pass (the
  // last at a level of 2e-6), no more.
  int passed = 0;
  while (l.Admit(kRead4k, now, 50 * kMs) == 0) ++passed;
  EXPECT_EQ(passed, 52);
  l.ClampToCapacity();
  // Without the catch-up, the same stall loses 41 of them.
  Limiter strict = Make({.iops = 1000});
  ASSERT_EQ(Saturate(strict, kRead4k, kT0, kT0 + 2).size(), 11u);
  passed = 0;
  while (strict.Admit(kRead4k, now) == 0) ++passed;
  EXPECT_EQ(passed, 10);
  // Unspent catch-up credit does not stay beyond the capacity: 1009 tokens left, clamped to 10.
  Limiter idle = Make({.iops = 1000});
  ASSERT_EQ(idle.Admit(kRead4k, kT0 + kSecond, kSecond), 0u);
  idle.ClampToCapacity();
  EXPECT_EQ(Saturate(idle, kRead4k, kT0 + kSecond, kT0 + kSecond + 1).size(), 10u);
}

TEST(LimiterTest, LongRunIopsRateIsExact) {
  Limiter l = Make({.iops = 1000});
  const auto t = Saturate(l, kRead4k, kT0, kT0 + 10 * kSec);
  EXPECT_GE(t.size(), 10'000u);
  EXPECT_LE(t.size(), 10'011u) << "r*t + capacity + one request";
  for (uint64_t s = 1; s < 10; ++s)
    EXPECT_EQ(CountIn(t, kT0 + s * kSec, kT0 + (s + 1) * kSec), 1000u) << s;
}

TEST(LimiterTest, LargeRequestsCountByIopsUnit) {
  Limiter l = Make({.iops = 1000});
  const RequestCost big = CostOf(VolumeOp::kRead, 0, 64 * 1024, 4096);  // 16 operations
  const auto t = Saturate(l, big, kT0, kT0 + 10 * kSec);
  EXPECT_NEAR(static_cast<double>(t.size()), 625.0, 2.0) << "1000 ops/s / 16 ops per request";
  Limiter unit64k = Make({.iops = 1000, .iops_unit = 64 * 1024});
  EXPECT_NEAR(
      static_cast<double>(
          Saturate(unit64k, CostOf(VolumeOp::kRead, 0, 64 * 1024, 64 * 1024), kT0, kT0 + 10 * kSec)
              .size()),
      10'000.0, 11.0);
}

TEST(LimiterTest, RequestLargerThanTheCapacityPassesAndLaterOnesWait) {
  Limiter l = Make({.iops = 100});                                     // capacity 1 token
  const RequestCost mib = CostOf(VolumeOp::kWrite, 0, 1 << 20, 4096);  // 256 operations
  EXPECT_EQ(l.Admit(mib, kT0), 0u);
  EXPECT_EQ(l.Admit(kWrite4k, kT0), 2550 * kMs + 1) << "255 tokens of debt at 100/s";
  EXPECT_EQ(l.Admit(kWrite4k, kT0 + 2550 * kMs + 1), 0u);
}

TEST(LimiterTest, BandwidthLimit) {
  Limiter l = Make({.bps = 1 << 20});
  const RequestCost r128k = CostOf(VolumeOp::kRead, 0, 128 * 1024, 4096);
  const auto t = Saturate(l, r128k, kT0, kT0 + 10 * kSec);
  EXPECT_NEAR(static_cast<double>(t.size()), 80.0, 1.0) << "1 MiB/s of 128 KiB requests";
  const RequestCost discard = CostOf(VolumeOp::kDiscard, 0, 1ull << 30, 4096);
  EXPECT_EQ(l.Admit(discard, kT0 + 10 * kSec), 0u) << "a discard moves no bytes";
}

TEST(LimiterTest, BurstRunsAtTheBurstRateForTheBurstLengthThenAtTheBaseRate) {
  // r = 100, B = 1000, T = 2 s: credit (B - r) * T + r * q = 1801, peak B * q = 10.
  Limiter l = Make({.iops = 100, .burst_iops = 1000, .burst_seconds = 2});
  const auto t = Saturate(l, kRead4k, kT0, kT0 + 8 * kSec);
  for (uint64_t ms = 0; ms < 2000; ms += 250) {
    EXPECT_NEAR(static_cast<double>(CountIn(t, kT0 + ms * kMs, kT0 + (ms + 250) * kMs)), 250.0,
                11.0)
        << "burst at B, window starting at " << ms << " ms";
  }
  // The credit lasts 1801 / 900 = 2.001 s; from then on, r.
  for (uint64_t s = 3; s < 8; ++s) {
    EXPECT_NEAR(static_cast<double>(CountIn(t, kT0 + s * kSec, kT0 + (s + 1) * kSec)), 100.0, 1.0)
        << s;
  }
  const auto stats = l.Stats(kT0 + 8 * kSec);
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].limit, "iops");
  EXPECT_EQ(stats[0].rate, 100u);
  EXPECT_EQ(stats[0].burst_rate, 1000u);
  EXPECT_DOUBLE_EQ(stats[0].capacity, 1801.0);
  EXPECT_DOUBLE_EQ(stats[0].peak_capacity, 10.0);
  EXPECT_LE(stats[0].tokens, 1.0);
}

TEST(LimiterTest, CreditsRefillWhileBelowTheRate) {
  Limiter l = Make({.iops = 100, .burst_iops = 1000, .burst_seconds = 2});
  Saturate(l, kRead4k, kT0, kT0 + 5 * kSec);  // credit spent
  // 10 s idle at r = 100 earns 1000 credits: a burst of ~1000 / 900 s, then r again.
  uint64_t start = kT0 + 15 * kSec;
  auto t = Saturate(l, kRead4k, start, start + 3 * kSec);
  EXPECT_NEAR(static_cast<double>(CountIn(t, start, start + 1 * kSec)), 1000.0, 12.0);
  EXPECT_NEAR(static_cast<double>(CountIn(t, start + 2 * kSec, start + 3 * kSec)), 100.0, 1.0);
  // After a long idle the credit is full again (capped), not more.
  start += 100 * kSec;
  t = Saturate(l, kRead4k, start, start + 4 * kSec);
  EXPECT_NEAR(static_cast<double>(CountIn(t, start, start + 2 * kSec)), 2000.0, 15.0);
  EXPECT_NEAR(static_cast<double>(CountIn(t, start + 3 * kSec, start + 4 * kSec)), 100.0, 1.0);
  // A client below the rate keeps its credit: 50/s for 10 s leaves the bucket full.
  start += 100 * kSec;
  for (uint64_t i = 0; i < 500; ++i) ASSERT_EQ(l.Admit(kRead4k, start + i * 20 * kMs), 0u);
  EXPECT_GE(l.Stats(start + 10 * kSec)[0].tokens, 1800.0);
}

TEST(LimiterTest, ReadAndWriteLimitsAreSeparateAndTheTotalCombinesThem) {
  Limiter l = Make({.read_iops = 100, .write_iops = 1000});
  EXPECT_NEAR(static_cast<double>(Saturate(l, kRead4k, kT0, kT0 + 10 * kSec).size()), 1000.0, 2.0);
  EXPECT_NEAR(static_cast<double>(Saturate(l, kWrite4k, kT0, kT0 + 10 * kSec).size()), 10'000.0,
              11.0)
      << "reads spent no write tokens";
  Limiter total = Make({.iops = 1000});
  uint64_t now = kT0;
  size_t reads = 0, writes = 0;
  while (now < kT0 + 10 * kSec) {  // alternating reads and writes share the total
    const bool read = (reads + writes) % 2 == 0;
    const uint64_t w = total.Admit(read ? kRead4k : kWrite4k, now);
    if (w != 0) {
      now += w;
    } else {
      ++(read ? reads : writes);
    }
  }
  EXPECT_NEAR(static_cast<double>(reads + writes), 10'000.0, 11.0);
  EXPECT_NEAR(static_cast<double>(reads), static_cast<double>(writes), 1.0);
}

TEST(LimiterTest, EveryLimitAppliesAtOnce) {
  // IOPS and bandwidth together: 1000 IOPS but 1 MiB/s: 16 KiB requests are held by bandwidth.
  Limiter l = Make({.iops = 1000, .bps = 1 << 20});
  const RequestCost r16k = CostOf(VolumeOp::kRead, 0, 16 * 1024, 4096);
  EXPECT_NEAR(static_cast<double>(Saturate(l, r16k, kT0, kT0 + 10 * kSec).size()), 640.0, 2.0);
  EXPECT_EQ(l.Stats(kT0).size(), 2u);
}

TEST(LimiterTest, FlushAndUnlimitedDirectionsPass) {
  Limiter l = Make({.read_iops = 1});
  EXPECT_TRUE(l.enabled());
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(l.Admit(kWrite4k, kT0), 0u);
    ASSERT_EQ(l.Admit(CostOf(VolumeOp::kFlush, 0, 0, 4096), kT0), 0u);
  }
  Limiter none = Make({.weight = 5, .reservation_iops = 10});
  EXPECT_FALSE(none.enabled());
}

TEST(LimiterTest, RateChangeMidStreamTakesEffectAtOnce) {
  Limiter l = Make({.iops = 1000});
  auto t = Saturate(l, kRead4k, kT0, kT0 + 1 * kSec);
  const uint64_t change = kT0 + 1 * kSec;
  l.Configure({.iops = 100}, change);
  t = Saturate(l, kRead4k, change, change + 2 * kSec);
  // The old bucket held at most 10 tokens (now clamped to 1); then 100/s from the first moment.
  EXPECT_LE(CountIn(t, change, change + 100 * kMs), 12u);
  EXPECT_NEAR(static_cast<double>(CountIn(t, change + 1 * kSec, change + 2 * kSec)), 100.0, 1.0);
  const uint64_t up = change + 2 * kSec;
  l.Configure({.iops = 5000}, up);
  t = Saturate(l, kRead4k, up, up + 1 * kSec);
  EXPECT_NEAR(static_cast<double>(CountIn(t, up, up + 100 * kMs)), 500.0, 52.0) << "faster at once";
  // Removing the limit lets everything through.
  l.Configure({}, up + 1 * kSec);
  EXPECT_FALSE(l.enabled());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(l.Admit(kRead4k, up + 1 * kSec), 0u);
}

TEST(LimiterTest, BurstCreditIsClampedWhenTheBurstShrinks) {
  Limiter l = Make({.iops = 100, .burst_iops = 1000, .burst_seconds = 10});
  EXPECT_DOUBLE_EQ(l.Stats(kT0)[0].tokens, 9001.0);
  l.Configure({.iops = 100, .burst_iops = 1000, .burst_seconds = 1}, kT0);
  EXPECT_DOUBLE_EQ(l.Stats(kT0)[0].tokens, 901.0) << "clamped to (B - r) * 1 s + r * q";
  auto t = Saturate(l, kRead4k, kT0, kT0 + 3 * kSec);
  EXPECT_NEAR(static_cast<double>(CountIn(t, kT0, kT0 + 1 * kSec)), 1000.0, 12.0);
  EXPECT_NEAR(static_cast<double>(CountIn(t, kT0 + 2 * kSec, kT0 + 3 * kSec)), 100.0, 1.0);
  // Removing the burst keeps the base limit and its (clamped) level.
  l.Configure({.iops = 100}, kT0 + 3 * kSec);
  const auto s = l.Stats(kT0 + 3 * kSec);
  EXPECT_EQ(s[0].burst_rate, 0u);
  EXPECT_DOUBLE_EQ(s[0].capacity, 1.0);
  // A limit added later starts full.
  l.Configure({.iops = 100, .write_bps = 1 << 20}, kT0 + 3 * kSec);
  EXPECT_DOUBLE_EQ(l.Stats(kT0 + 3 * kSec)[1].tokens, (1 << 20) / 100.0);
}

TEST(LimiterTest, NanosUntilBatchesSeveralRequests) {
  Limiter l = Make({.iops = 1000});
  Saturate(l, kRead4k, kT0, kT0 + 1 * kSec);
  const uint64_t now = kT0 + 1 * kSec;
  const uint64_t one = l.NanosUntil(kRead4k, 1, now);
  const uint64_t four = l.NanosUntil(kRead4k, 4, now);
  EXPECT_EQ(four - one, 3 * kMs);
  EXPECT_EQ(l.NanosUntil(kRead4k, 20, now), UINT64_MAX) << "more than the bucket holds";
}

}  // namespace
}  // namespace shale::qos
