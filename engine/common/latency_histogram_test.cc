#include "engine/common/latency_histogram.h"

#include <gtest/gtest.h>

#include <thread>

namespace shale {
namespace {

TEST(LatencyHistogramTest, BucketsAreInclusiveUpperBounds) {
  LatencyHistogram h;
  h.Record(0);
  h.Record(25'000);          // exactly the first bound: first bucket
  h.Record(25'001);          // just above: second bucket
  h.Record(1'000'000);       // 1 ms
  h.Record(10'000'000'000);  // the last bound
  h.Record(60'000'000'000);  // beyond every bound: +Inf
  const LatencyHistogram::Snapshot s = h.Take();
  EXPECT_EQ(s.count, 6u);
  EXPECT_EQ(s.counts[0], 2u);
  EXPECT_EQ(s.counts[1], 1u);
  EXPECT_EQ(s.counts[5], 1u);
  EXPECT_EQ(s.counts[kLatencyBucketsNs.size() - 1], 1u);
  EXPECT_EQ(s.counts[LatencyHistogram::kBuckets - 1], 1u);
  EXPECT_EQ(s.sum_ns, 0u + 25'000 + 25'001 + 1'000'000 + 10'000'000'000 + 60'000'000'000);
}

TEST(LatencyHistogramTest, AReaderSeesMonotonicFiguresWhileOneThreadRecords) {
  LatencyHistogram h;
  constexpr uint64_t kRecords = 200'000;
  std::thread writer([&] {
    for (uint64_t i = 0; i < kRecords; ++i) h.Record(i % 3'000'000);
  });
  uint64_t last_count = 0, last_sum = 0;
  for (int i = 0; i < 1000; ++i) {
    const LatencyHistogram::Snapshot s = h.Take();
    EXPECT_GE(s.count, last_count);
    EXPECT_GE(s.sum_ns, last_sum);
    last_count = s.count;
    last_sum = s.sum_ns;
  }
  writer.join();
  EXPECT_EQ(h.Take().count, kRecords);
}

}  // namespace
}  // namespace shale
