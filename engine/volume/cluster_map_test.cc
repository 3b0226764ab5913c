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

// Parallel loading (Volume::LoadMap): parts built apart, then adopted, equal the map built in one.
TEST(ClusterMapTest, AdoptedPartsEqualTheWholeMap) {
  const uint64_t n = 3 * ClusterMap::kRangeAlign + 100;  // the last range ends mid-page
  const uint64_t cuts[] = {0, ClusterMap::kRangeAlign, 3 * ClusterMap::kRangeAlign, n};
  ClusterMap whole(n);
  ClusterMap parts[3] = {ClusterMap(n), ClusterMap(n), ClusterMap(n)};
  auto add = [&](uint64_t v, const Fragment& f) {
    whole.Add(v, f);
    for (int i = 0; i < 3; ++i) {
      if (v >= cuts[i] && v < cuts[i + 1]) parts[i].Add(v, f);
    }
  };
  // Multi-fragment clusters in every part (their side vectors are renumbered), one freed again.
  for (uint64_t v : {uint64_t{3}, uint64_t{511}, uint64_t{512}, uint64_t{1600}, n - 1}) {
    add(v, Data(static_cast<uint32_t>(v), 0x1, 1));
    add(v, Data(static_cast<uint32_t>(v + 1), 0x2, 2));
  }
  add(700, Data(70, 0xff));
  add(1535, Data(71, 0xff, 2));
  add(1535, Data(kZeroCluster, 0x100, 2));
  auto not_first = [](const Fragment& f) { return f.pcluster != 1535; };
  whole.RemoveIf(1535, not_first);
  parts[1].RemoveIf(1535, not_first);
  ClusterMap merged(n);
  for (int i = 0; i < 3; ++i) merged.Adopt(std::move(parts[i]), cuts[i], cuts[i + 1]);
  EXPECT_EQ(merged.multi_fragment_clusters(), whole.multi_fragment_clusters());
  for (uint64_t v = 0; v < n; ++v) {
    auto a = merged.Fragments(v), b = whole.Fragments(v);
    ASSERT_EQ(a.size(), b.size()) << v;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].pcluster, b[i].pcluster) << v;
      EXPECT_EQ(a[i].image, b[i].image) << v;
      EXPECT_EQ(a[i].blocks, b[i].blocks) << v;
    }
  }
  // The freed side vector of a part is reused after the merge.
  merged.Add(900, Data(90, 1));
  merged.Add(900, Data(91, 2));
  EXPECT_EQ(merged.multi_fragment_clusters(), whole.multi_fragment_clusters() + 1);
}

TEST(ClusterMapDeathTest, OutOfRangeIsABug) {
  ClusterMap m(4);
  EXPECT_DEATH((void)m.Fragments(4), "beyond map size");
}

}  // namespace
}  // namespace shale
