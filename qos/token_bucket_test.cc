#include "qos/token_bucket.h"

#include <gtest/gtest.h>

namespace shale::qos {
namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr Int128 Tokens(int64_t n) { return static_cast<Int128>(n) * kNanoPerToken; }

TEST(TokenBucketTest, StartsFullRefillsExactlyAndCapsAtCapacity) {
  TokenBucket b(1000, Tokens(10), 0);
  EXPECT_EQ(b.level_nt(), Tokens(10));
  for (int i = 0; i < 10; ++i) b.Charge(1);
  EXPECT_EQ(b.level_nt(), 0);
  b.Refill(1 * kMs);
  EXPECT_EQ(b.level_nt(), Tokens(1)) << "1000 tokens/s = exactly one token per millisecond";
  b.Refill(7 * kMs + 500'000);
  EXPECT_EQ(b.level_nt(), Tokens(7) + Tokens(1) / 2);
  b.Refill(1000 * kMs);
  EXPECT_EQ(b.level_nt(), Tokens(10)) << "never above capacity";
  b.Refill(5 * kMs);  // time going backwards is ignored
  EXPECT_EQ(b.level_nt(), Tokens(10));
}

TEST(TokenBucketTest, WaitUntilPositiveAndUntilAThreshold) {
  TokenBucket b(1000, Tokens(10), 0);
  EXPECT_EQ(b.NanosUntilAbove(0, 0), 0u);
  b.Charge(10);
  EXPECT_EQ(b.NanosUntilAbove(0, 0), 1u) << "positive one nanosecond later";
  b.Charge(5);  // debt of 5 tokens
  EXPECT_EQ(b.NanosUntilAbove(0, 0), 5 * kMs + 1);
  EXPECT_EQ(b.NanosUntilAbove(Tokens(2), 0), 7 * kMs + 1);
  EXPECT_EQ(b.NanosUntilAbove(Tokens(2), 3 * kMs), 4 * kMs + 1);
  EXPECT_EQ(b.NanosUntilAbove(Tokens(10), 0), UINT64_MAX) << "a level the bucket cannot exceed";
}

TEST(TokenBucketTest, SubTokenCapacityStillAdmitsAtTheRate) {
  // 50/s with a 10 ms quantum holds half a token: the level alternates +0.5 / -0.5.
  TokenBucket b(50, Tokens(1) / 2, 0);
  uint64_t now = 0;
  int admitted = 0;
  while (now < 10'000 * kMs) {
    b.Refill(now);
    if (b.level_nt() > 0) {
      b.Charge(1);
      ++admitted;
    }
    now += b.NanosUntilAbove(0, now);
  }
  EXPECT_GE(admitted, 500);
  EXPECT_LE(admitted, 501);
}

TEST(TokenBucketTest, ReconfigureKeepsCreditsEarnedAndClamps) {
  TokenBucket b(1000, Tokens(100), 0);
  b.Charge(100);
  b.Reconfigure(10, Tokens(100), 50 * kMs);  // 50 tokens earned at the old rate are kept
  EXPECT_EQ(b.level_nt(), Tokens(50));
  b.Refill(150 * kMs);  // then 10/s: one more token in 100 ms
  EXPECT_EQ(b.level_nt(), Tokens(51));
  b.Reconfigure(10, Tokens(5), 150 * kMs);
  EXPECT_EQ(b.level_nt(), Tokens(5)) << "clamped to the new capacity";
  b.Charge(20);
  b.Reconfigure(1000, Tokens(5), 150 * kMs);
  EXPECT_EQ(b.level_nt(), Tokens(-15)) << "debt is kept";
  EXPECT_EQ(b.NanosUntilAbove(0, 150 * kMs), 15 * kMs + 1) << "and repaid at the new rate at once";
}

TEST(TokenBucketTest, HugeRatesAndLongIdleDoNotOverflow) {
  const uint64_t rate = uint64_t{1} << 40;  // 1 TiB/s
  const Int128 cap =
      static_cast<Int128>(rate) * static_cast<Int128>(86'400) * kNanoPerToken;  // a day
  TokenBucket b(rate, cap, 0);
  b.Charge(uint64_t{32} << 20);
  b.Refill(UINT64_MAX / 2);
  EXPECT_EQ(b.level_nt(), cap);
  EXPECT_GT(b.tokens(), 9e16);
}

}  // namespace
}  // namespace shale::qos
