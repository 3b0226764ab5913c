// SnapshotMetadata paging (docs/csi.md, "SnapshotMetadata"): starting_offset and max_results
// return every range exactly once, however a client pages or resumes.
#include <gtest/gtest.h>

#include <random>

#include "csi/driver_internal.h"

namespace shale::csi {
namespace {

std::vector<ByteRange> Flatten(const std::vector<std::vector<ByteRange>>& pages) {
  std::vector<ByteRange> out;
  for (const auto& p : pages) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(PageRanges, PagesHoldAtMostMaxResultsAndEveryRangeOnce) {
  std::vector<ByteRange> ranges;
  for (uint64_t i = 0; i < 100; ++i) ranges.emplace_back(i * 65536, 4096 * (1 + i % 5));
  for (size_t max : {1u, 3u, 7u, 100u, 1000u}) {
    auto pages = PageRanges(ranges, 0, max);
    EXPECT_EQ(pages.size(), (ranges.size() + max - 1) / max) << max;
    for (const auto& p : pages) EXPECT_LE(p.size(), max);
    EXPECT_EQ(Flatten(pages), ranges) << max;
  }
  EXPECT_EQ(PageRanges(ranges, 0, 0).size(), 1u);  // default page: 1024 ranges
  EXPECT_TRUE(PageRanges({}, 0, 5).empty());
}

TEST(PageRanges, StartingOffsetCutsTheRangeItFallsInAtABlockBoundary) {
  const std::vector<ByteRange> ranges = {{0, 16384}, {65536, 8192}, {1 << 20, 4096}};
  EXPECT_EQ(Flatten(PageRanges(ranges, 8192 + 100, 10)),
            (std::vector<ByteRange>{{8192, 8192}, {65536, 8192}, {1 << 20, 4096}}));
  EXPECT_EQ(Flatten(PageRanges(ranges, 16384, 10)),
            (std::vector<ByteRange>{{65536, 8192}, {1 << 20, 4096}}));
  EXPECT_EQ(Flatten(PageRanges(ranges, (1 << 20) + 4096, 10)), std::vector<ByteRange>{});
}

// A client that resumes at the end of the last range it received (as after an interrupted
// stream) sees every range exactly once, in order.
TEST(PageRanges, ResumingAtTheLastEndReturnsEveryRangeExactlyOnce) {
  std::mt19937_64 rng(7);
  std::vector<ByteRange> ranges;
  uint64_t at = 0;
  for (int i = 0; i < 500; ++i) {
    at += 4096 * (1 + rng() % 8);
    const uint64_t len = 4096 * (1 + rng() % 16);
    ranges.emplace_back(at, len);
    at += len;
  }
  for (size_t max : {1u, 2u, 17u, 64u}) {
    std::vector<ByteRange> seen;
    uint64_t offset = 0;
    for (int calls = 0; calls < 1000; ++calls) {
      auto pages = PageRanges(ranges, offset, max);
      if (pages.empty()) break;
      seen.insert(seen.end(), pages.front().begin(), pages.front().end());  // then "cut off"
      offset = pages.front().back().first + pages.front().back().second;
    }
    EXPECT_EQ(seen, ranges) << max;
  }
}

}  // namespace
}  // namespace shale::csi
