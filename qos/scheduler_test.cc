#include "qos/scheduler.h"

#include <gtest/gtest.h>

#include <map>

namespace shale::qos {
namespace {

constexpr uint64_t kMs = 1'000'000;

// Queues that always have another request: after each pick the queue gets its next head.
struct Backlogged {
  MClock m;
  std::map<MClock::QueueId, uint64_t> cost;  // per request, by queue
  std::map<MClock::QueueId, int> picks;
  std::map<MClock::QueueId, int> reservation_picks;

  MClock::QueueId Add(MClock::Params p, uint64_t c, uint64_t now) {
    MClock::QueueId q = m.AddQueue(p);
    cost[q] = c;
    m.SetHead(q, c, now);
    return q;
  }
  // One pick at `now`; the picked queue stays backlogged.
  MClock::QueueId Step(uint64_t now) {
    auto p = m.Next(now);
    EXPECT_TRUE(p.has_value());
    ++picks[p->queue];
    if (p->phase == MClock::Phase::kReservation) ++reservation_picks[p->queue];
    m.SetHead(p->queue, cost[p->queue], now);
    return p->queue;
  }
};

TEST(MClockTest, WeightsShareInProportion) {
  Backlogged b;
  auto a = b.Add({.weight = 300}, 1, 0);
  auto c = b.Add({.weight = 100}, 1, 0);
  for (int i = 0; i < 4000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[a], 3000, 40) << "3:1 within 1% of 4000";
  EXPECT_NEAR(b.picks[c], 1000, 40);
  // Over any short stretch too (no long runs of one queue).
  int a_in_window = 0;
  for (int i = 0; i < 40; ++i) a_in_window += b.Step(0) == a;
  EXPECT_NEAR(a_in_window, 30, 1);
}

TEST(MClockTest, EqualWeightsAlternate) {
  Backlogged b;
  auto a = b.Add({.weight = 100}, 1, 0);
  auto c = b.Add({.weight = 100}, 1, 0);
  MClock::QueueId last = b.Step(0);
  for (int i = 0; i < 100; ++i) {
    MClock::QueueId q = b.Step(0);
    EXPECT_NE(q, last) << i;
    last = q;
  }
  EXPECT_NEAR(b.picks[a], b.picks[c], 1);
}

TEST(MClockTest, CostWeighsRequests) {
  Backlogged b;
  auto big = b.Add({.weight = 100}, 4, 0);  // e.g. 16 KiB requests at a 4 KiB iops_unit
  auto small = b.Add({.weight = 100}, 1, 0);
  for (int i = 0; i < 5000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[small], 4 * b.picks[big], 4) << "equal service in cost units";
}

TEST(MClockTest, AQueueThatWasIdleReentersAtTheVirtualTimeNotBehindIt) {
  Backlogged b;
  auto a = b.Add({.weight = 100}, 1, 0);
  for (int i = 0; i < 10000; ++i) b.Step(0);
  auto late = b.Add({.weight = 100}, 1, 0);  // joins after a long time alone
  b.picks.clear();
  for (int i = 0; i < 2000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[late], 1000, 2) << "no backlog of credit: half, not everything";
  EXPECT_NEAR(b.picks[a], 1000, 2);
}

TEST(MClockTest, ReservationIsAFloorWhileAnotherQueueSaturates) {
  // A device doing 1000 IOPS: one pick per simulated millisecond.
  Backlogged b;
  auto reserved = b.Add({.weight = 1, .reservation = 300}, 1, 0);
  auto heavy = b.Add({.weight = 10000}, 1, 0);
  uint64_t now = 0;
  for (int i = 0; i < 10000; ++i, now += kMs) b.Step(now);
  // 10 s: at least 300/s by reservation; the weight adds ~1/10001 of the rest.
  EXPECT_GE(b.picks[reserved], 2990);
  EXPECT_LE(b.picks[reserved], 3100);
  EXPECT_GE(b.reservation_picks[reserved], 2990);
  EXPECT_EQ(b.picks[heavy], 10000 - b.picks[reserved]);
}

TEST(MClockTest, AReservationBelowTheWeightShareAddsNothing) {
  // Floor semantics: a volume gets max(reservation, weight share), not their sum, because its P
  // tags count every request it gets, by reservation or by weight.
  Backlogged b;
  auto a = b.Add({.weight = 100, .reservation = 300}, 1, 0);
  auto c = b.Add({.weight = 100}, 1, 0);
  uint64_t now = 0;
  for (int i = 0; i < 10000; ++i, now += kMs) b.Step(now);
  EXPECT_NEAR(b.picks[a], 5000, 50);
  EXPECT_NEAR(b.reservation_picks[a], 3000, 30) << "its floor came from the reservation phase";
  EXPECT_NEAR(b.picks[c], 5000, 50);
}

TEST(MClockTest, ABackloggedReservedQueueCatchesUpWhenSeveralSlotsFreeAtOnce) {
  // Tags are by arrival: requests queued at t = 0 under a 1000/s reservation are due at 0, 1,
  // 2, ... ms. When 20 slots free at 10 ms (a batch of completions), 11 of them are overdue.
  MClock m;
  auto reserved = m.AddQueue({.weight = 1, .reservation = 1000});
  auto heavy = m.AddQueue({.weight = 10000});
  m.SetHead(reserved, 1, 0);
  m.SetHead(heavy, 1, 0);
  auto p = m.Next(0);  // the first one at t = 0
  ASSERT_EQ(p->queue, reserved);
  m.SetHead(reserved, 1, /*arrival=*/0);
  int got = 0;
  for (int i = 0; i < 20; ++i) {
    p = m.Next(10 * kMs);
    ASSERT_TRUE(p.has_value());
    if (p->queue == reserved) {
      ++got;
      EXPECT_EQ(p->phase, MClock::Phase::kReservation);
      m.SetHead(reserved, 1, 0);  // still backlogged: its requests arrived at t = 0
    } else {
      m.SetHead(heavy, 1, 10 * kMs);
    }
  }
  EXPECT_EQ(got, 10) << "due at 1..10 ms";
  // A request arriving later at an idle queue is due at its arrival, not earlier.
  MClock idle;
  auto q = idle.AddQueue({.weight = 1, .reservation = 1000});
  auto h = idle.AddQueue({.weight = 10000});
  idle.SetHead(h, 1, 0);
  idle.SetHead(q, 1, 50 * kMs);
  EXPECT_EQ(idle.Next(49 * kMs)->queue, h);
}

TEST(MClockTest, ServiceByWeightDoesNotDelayAReservationLater) {
  Backlogged b;
  auto a = b.Add({.weight = 400, .reservation = 100}, 1, 0);
  auto other = b.Add({.weight = 100}, 1, 0);
  uint64_t now = 0;
  for (int i = 0; i < 10000; ++i, now += kMs) b.Step(now);  // a gets ~80% by weight
  EXPECT_GT(b.picks[a], 7500);
  b.m.SetParams(a, {.weight = 1, .reservation = 100}, now);
  b.m.SetParams(other, {.weight = 10000}, now);
  b.picks.clear();
  for (int i = 0; i < 100; ++i, now += kMs) b.Step(now);
  // Its reservation holds from the first moment: ~10 in 100 ms, not zero until R tags catch up.
  EXPECT_GE(b.picks[a], 9);
  EXPECT_LE(b.picks[a], 12);
}

TEST(MClockTest, ReservationWithoutCreditForIdleTime) {
  Backlogged b;
  auto r = b.m.AddQueue({.weight = 1, .reservation = 100});
  b.cost[r] = 1;
  auto heavy = b.Add({.weight = 10000}, 1, 0);
  uint64_t now = 0;
  for (int i = 0; i < 5000; ++i, now += kMs) b.Step(now);  // r idle for 5 s
  b.m.SetHead(r, 1, now);
  b.picks.clear();
  for (int i = 0; i < 100; ++i, now += kMs) b.Step(now);
  EXPECT_LE(b.picks[r], 12) << "an idle queue does not bank reservation for 5 s";
  EXPECT_GE(b.picks[r], 9);
  (void)heavy;
}

TEST(MClockTest, BackgroundClassGetsItsSmallShareOrEverythingWhenAlone) {
  Backlogged b;
  auto client = b.Add({.weight = 100}, 1, 0);
  auto background = b.Add({.weight = 10}, 1, 0);
  for (int i = 0; i < 11000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[background], 1000, 11);
  // Clients go idle (the client's head is consumed and not replaced): every pick is background.
  for (;;) {
    auto p = b.m.Next(0);
    ASSERT_TRUE(p.has_value());
    if (p->queue == client) break;
    b.m.SetHead(p->queue, 1, 0);
  }
  for (int i = 0; i < 100; ++i) {
    auto p = b.m.Next(0);
    ASSERT_TRUE(p.has_value());
    EXPECT_EQ(p->queue, background);
    b.m.SetHead(background, 1, 0);
  }
}

TEST(MClockTest, LiveWeightChangeTakesEffectForTheNextPicks) {
  Backlogged b;
  auto a = b.Add({.weight = 100}, 1, 0);
  auto c = b.Add({.weight = 100}, 1, 0);
  for (int i = 0; i < 1000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[a], 500, 1);
  b.m.SetParams(a, {.weight = 300}, 0);
  b.picks.clear();
  for (int i = 0; i < 4000; ++i) b.Step(0);
  EXPECT_NEAR(b.picks[a], 3000, 40);
  EXPECT_NEAR(b.picks[c], 1000, 40);
}

TEST(MClockTest, EmptySchedulerAndQueueReuse) {
  MClock m;
  EXPECT_FALSE(m.Next(0).has_value());
  auto q = m.AddQueue({.weight = 5});
  m.SetHead(q, 1, 0);
  EXPECT_EQ(m.backlogged(), 1u);
  m.ClearHead(q);
  EXPECT_EQ(m.backlogged(), 0u);
  m.RemoveQueue(q);
  auto q2 = m.AddQueue({.weight = 7});
  EXPECT_EQ(q2, q) << "ids are reused";
  m.SetHead(q2, 3, 0);
  auto p = m.Next(0);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->queue, q2);
  EXPECT_EQ(p->phase, MClock::Phase::kWeight);
  EXPECT_FALSE(m.Next(0).has_value());
}

TEST(MClockTest, VirtualTimeRebasesWithoutChangingShares) {
  Backlogged b;
  auto a = b.Add({.weight = 1}, 1u << 20, 0);  // huge steps: P tags race towards 2^62
  auto c = b.Add({.weight = 3}, 1u << 20, 0);
  for (int i = 0; i < 40000; ++i) b.Step(0);
  EXPECT_LT(b.m.virtual_time(), uint64_t{1} << 62);
  EXPECT_NEAR(b.picks[c], 3 * b.picks[a], 4);
}

}  // namespace
}  // namespace shale::qos
