#include "engine/volume/cluster_map.h"

#include <gtest/gtest.h>

namespace shale {
namespace {

Fragment Data(uint32_t pc, uint64_t blocks, uint32_t image = 1) {
  Fragment f;
  f.pcluster = pc;
  f.blocks = blocks;
  f.image = image;
  return f;
}

TEST(ClusterMapTest, EmptyUntilAdded) {
  ClusterMap m(10000);
  EXPECT_TRUE(m.Fragments(0).empty());
  EXPECT_TRUE(m.Fragments(9999).empty());
  m.Add(9999, Data(5, 0xf));
  ASSERT_EQ(m.Fragments(9999).size(), 1u);
  EXPECT_EQ(m.Fragments(9999)[0].pcluster, 5u);
  EXPECT_TRUE(m.Fragments(9998).empty());
}

TEST(ClusterMapTest, MultipleFragmentsCollapseBackToOne) {
  ClusterMap m(4);
  m.Add(2, Data(1, 0x1, 1));
  m.Add(2, Data(2, 0x2, 2));
  m.Add(2, Data(kZeroCluster, 0x4, 2));
  EXPECT_EQ(m.Fragments(2).size(), 3u);
  EXPECT_EQ(m.multi_fragment_clusters(), 1u);
  m.RemoveIf(2, [](const Fragment& f) { return f.pcluster != 2; });
  ASSERT_EQ(m.Fragments(2).size(), 1u);
  EXPECT_EQ(m.Fragments(2)[0].pcluster, 2u);
  EXPECT_EQ(m.multi_fragment_clusters(), 0u);
  m.RemoveIf(2, [](const Fragment&) { return true; });
  EXPECT_TRUE(m.Fragments(2).empty());
  // The freed multi slot is reused.
  m.Add(3, Data(7, 1));
  m.Add(3, Data(8, 2));
  EXPECT_EQ(m.multi_fragment_clusters(), 1u);
}

TEST(ClusterMapTest, ForEachVisitsMappedInOrderAndGrowKeepsData) {
  ClusterMap m(2000);
  m.Add(1500, Data(3, 1));
  m.Add(7, Data(4, 1));
  std::vector<uint64_t> seen;
  m.ForEach([&](uint64_t v, std::span<const Fragment>) { seen.push_back(v); });
  EXPECT_EQ(seen, (std::vector<uint64_t>{7, 1500}));
  m.Grow(5000);
  EXPECT_EQ(m.size(), 5000u);
  EXPECT_EQ(m.Fragments(1500)[0].pcluster, 3u);
  m.Add(4999, Data(9, 1));
  EXPECT_EQ(m.Fragments(4999)[0].pcluster, 9u);
}

// The map's budget (docs/performance.md, "Memory per TiB mapped"): 16 bytes per mapped virtual
// cluster with one fragment, plus a pointer per 512 clusters.
TEST(ClusterMapTest, SingleFragmentClustersCostSixteenBytesEach) {
  const uint64_t n = 64 * 512;
  ClusterMap m(n);
  for (uint64_t v = 0; v < n; ++v) m.Add(v, Data(static_cast<uint32_t>(v), ~0ull));
  EXPECT_EQ(m.memory_bytes(), n * 16 + (n / 512) * sizeof(void*));
}

TEST(ClusterMapDeathTest, OutOfRangeIsABug) {
  ClusterMap m(4);
  EXPECT_DEATH((void)m.Fragments(4), "beyond map size");
}

}  // namespace
}  // namespace shale
