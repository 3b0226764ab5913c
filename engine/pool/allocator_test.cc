#include "engine/pool/allocator.h"

#include <gtest/gtest.h>

#include <set>

namespace shale {
namespace {

TEST(ClusterBitmapTest, SetClearFindCount) {
  ClusterBitmap b(200);
  EXPECT_EQ(b.FindClear(0), 0u);
  for (uint64_t i = 0; i < 130; ++i) b.Set(i);
  EXPECT_EQ(b.FindClear(0), 130u);
  EXPECT_EQ(b.FindClear(150), 150u);
  EXPECT_EQ(b.Count(), 130u);
  b.Clear(64);
  EXPECT_EQ(b.FindClear(0), 64u);
  EXPECT_EQ(b.FindClear(65), 130u);
  for (uint64_t i = 0; i < 200; ++i) b.Set(i);
  EXPECT_EQ(b.FindClear(0), 200u);
  EXPECT_EQ(b.FindClear(199), 200u);
}

TEST(ClusterBitmapTest, ChunksRoundTrip) {
  ClusterBitmap a(1000);
  for (uint64_t i = 0; i < 1000; i += 7) a.Set(i);
  ClusterBitmap b(1000);
  for (uint64_t c = 0; c * 512 < 1000; ++c) {
    ASSERT_TRUE(b.DecodeChunk(c, 512, a.EncodeChunk(c, 512)).ok());
  }
  EXPECT_EQ(a, b);
  EXPECT_FALSE(b.DecodeChunk(0, 512, "short").ok());
}

TEST(ClusterBitmapTest, RejectsBitsBeyondTheEnd) {
  ClusterBitmap a(100);
  std::string chunk(512 / 8, '\xff');
  Status s = a.DecodeChunk(0, 512, chunk);
  EXPECT_EQ(s.code(), StatusCode::kCorruption);
}

TEST(ClusterAllocatorTest, AllocatesEveryClusterOnceThenNoSpace) {
  ClusterAllocator alloc(100);
  std::set<uint32_t> seen;
  for (int i = 0; i < 100; ++i) {
    auto c = alloc.Allocate(37);
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(seen.insert(*c).second) << "cluster handed out twice: " << *c;
  }
  auto full = alloc.Allocate(0);
  ASSERT_FALSE(full.ok());
  EXPECT_TRUE(full.status().IsNoSpace());
  EXPECT_EQ(alloc.free_count(), 0u);
  alloc.Release({5, 6});
  EXPECT_EQ(alloc.free_count(), 2u);
  EXPECT_EQ(alloc.Allocate(90).value(), 5u);  // wraps around to the free ones
}

TEST(ClusterAllocatorTest, HintGivesContiguousRuns) {
  ClusterAllocator alloc(1000);
  uint32_t prev = alloc.Allocate(10).value();
  EXPECT_EQ(prev, 10u);
  for (int i = 0; i < 50; ++i) {
    uint32_t c = alloc.Allocate(prev + 1).value();
    EXPECT_EQ(c, prev + 1);
    prev = c;
  }
}

TEST(ClusterAllocatorTest, MarkUsedDetectsDoubleReference) {
  ClusterAllocator alloc(10);
  EXPECT_TRUE(alloc.MarkUsed(3));
  EXPECT_FALSE(alloc.MarkUsed(3));
  EXPECT_TRUE(alloc.IsUsed(3));
  EXPECT_EQ(alloc.free_count(), 9u);
  EXPECT_NE(alloc.Allocate(3).value(), 3u);
}

TEST(ClusterAllocatorDeathTest, ReleasingAFreeClusterIsABug) {
  ClusterAllocator alloc(10);
  EXPECT_DEATH(alloc.Release({4}), "not in use");
}

}  // namespace
}  // namespace shale
