#include "engine/volume/inflight_table.h"

#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

namespace shale {
namespace {

TEST(InflightTableTest, CountsPerClusterAndForgetsAtZero) {
  InflightTable t;
  EXPECT_EQ(t.Get(7), 0u);
  EXPECT_EQ(t.Decrement(7), 0u);  // nothing held: the caller's bug, reported as 0
  t.Increment(7);
  t.Increment(7);
  t.Increment(0);
  EXPECT_EQ(t.Get(7), 2u);
  EXPECT_EQ(t.Get(0), 1u);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.Decrement(7), 2u);
  EXPECT_EQ(t.Decrement(7), 1u);
  EXPECT_EQ(t.Get(7), 0u);
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.Decrement(7), 0u);
}

// Random increments and decrements over few and over many keys (collisions, probe runs that
// wrap around the end, deletion inside runs, growth) agree with a std::unordered_map.
TEST(InflightTableTest, AgreesWithAnOracle) {
  for (uint32_t keys : {8u, 100u, 5000u}) {
    InflightTable t;
    std::unordered_map<uint32_t, uint32_t> oracle;
    std::mt19937 rng(keys);
    for (int i = 0; i < 200000; ++i) {
      const uint32_t k = static_cast<uint32_t>(rng() % keys) * 65537u;  // spread, kept < 2^32-2
      if (rng() % 2 == 0 || oracle[k] == 0) {
        t.Increment(k);
        ++oracle[k];
      } else {
        ASSERT_EQ(t.Decrement(k), oracle[k]--);
      }
      if (oracle[k] == 0) oracle.erase(k);
      if (i % 997 == 0) {
        for (uint32_t j = 0; j < keys; ++j) {
          const uint32_t kk = j * 65537u;
          auto it = oracle.find(kk);
          ASSERT_EQ(t.Get(kk), it == oracle.end() ? 0u : it->second) << "key " << kk;
        }
        ASSERT_EQ(t.size(), oracle.size());
      }
    }
    // Drain: every entry goes, the table is empty again.
    for (auto& [k, n] : oracle) {
      for (; n > 0; --n) ASSERT_EQ(t.Decrement(k), n);
    }
    EXPECT_EQ(t.size(), 0u);
    for (uint32_t j = 0; j < keys; ++j) EXPECT_EQ(t.Get(j * 65537u), 0u);
  }
}

}  // namespace
}  // namespace shale
