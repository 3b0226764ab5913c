#include "engine/volume/map_checkpoint.h"

#include <gtest/gtest.h>

namespace shale {
namespace {

constexpr uint32_t kHead = 7;
constexpr uint32_t kParent = 3;

Fragment Frag(uint32_t pc, uint64_t blocks, uint32_t image = kHead) {
  Fragment f;
  f.pcluster = pc;
  f.blocks = blocks;
  f.image = image;
  return f;
}

Fragment Zeros(uint64_t blocks, uint32_t image = kHead) {
  return Frag(kZeroCluster, blocks, image);
}

// A map with every kind of record: a long run, a run broken by another pcluster, by other
// blocks and by a second fragment, zero marks, a parent's fragment partly and wholly hidden, an
// empty head fragment, and a lone cluster at the very end.
ClusterMap Sample() {
  ClusterMap m(10000);
  for (uint64_t v = 0; v < 1000; ++v) m.Add(v, Frag(static_cast<uint32_t>(100 + v), ~0ull));
  m.Add(1000, Frag(5000, ~0ull));  // pcluster not consecutive
  m.Add(1001, Frag(5001, 0xff));   // other blocks
  m.Add(1002, Frag(5002, 0xff));
  m.Add(1003, Frag(5003, 0xff));
  m.Add(1003, Frag(6000, 0xff00, kParent));  // two fragments
  m.Add(1004, Zeros(0xf0));                  // zero marks only
  m.Add(1005, Frag(6001, 0x0f, kParent));    // parent, visible
  m.Add(1005, Zeros(0xf0, kParent));
  m.Add(1006, Frag(6002, 0, kParent));  // parent, hidden: not written
  m.Add(1007, Frag(5004, 0));           // empty head fragment: kept
  m.Add(9999, Frag(7000, 1));
  return m;
}

TEST(MapCheckpointTest, RoundTripsWhatTheScanWouldLoad) {
  ClusterMap m = Sample();
  std::string file = EncodeMapCheckpoint(m, kHead);
  auto back = DecodeMapCheckpoint(file, m.size(), 100000);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->Fragments(1006).empty());  // the wholly hidden parent fragment is left out
  ClusterMap expected = Sample();
  expected.RemoveIf(1006, [](const Fragment&) { return true; });
  EXPECT_TRUE(SameMappings(*back, expected));
  EXPECT_FALSE(SameMappings(*back, m));  // SameMappings sees the difference
  ASSERT_EQ(back->Fragments(1007).size(), 1u);
  EXPECT_EQ(back->Fragments(1007)[0].pcluster, 5004u);
}

TEST(MapCheckpointTest, ASequentialVolumeIsAFewRecords) {
  ClusterMap m(1u << 20);
  for (uint64_t v = 0; v < m.size(); ++v) m.Add(v, Frag(static_cast<uint32_t>(v + 1), ~0ull));
  std::string file = EncodeMapCheckpoint(m, kHead);
  EXPECT_LT(file.size(), 100u);  // one run: header + 37 bytes
  auto back = DecodeMapCheckpoint(file, m.size(), m.size() + 1);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(SameMappings(*back, m));
}

TEST(MapCheckpointTest, RejectsWhatItDidNotWrite) {
  ClusterMap m = Sample();
  const std::string file = EncodeMapCheckpoint(m, kHead);
  // Another volume size, a pool too small for its clusters.
  EXPECT_FALSE(DecodeMapCheckpoint(file, m.size() + 1, 100000).ok());
  EXPECT_FALSE(DecodeMapCheckpoint(file, m.size(), 6000).ok());
  // A truncation inside a record is malformed; one at a record's end decodes to less (the
  // length and hash in the metadata record refuse such a file before it is decoded).
  ClusterMap expected = Sample();
  expected.RemoveIf(1006, [](const Fragment&) { return true; });
  size_t at_boundary = 0;
  for (size_t len = 0; len < file.size(); ++len) {
    auto cut = DecodeMapCheckpoint(file.substr(0, len), m.size(), 100000);
    if (cut.ok()) {
      ++at_boundary;
      EXPECT_FALSE(SameMappings(*cut, expected)) << len;
    }
  }
  EXPECT_EQ(at_boundary, 8u);  // after the header, and after each of the 8 records but the last
  // A bad magic, an unknown record kind.
  std::string bad = file;
  bad[0] = 'X';
  EXPECT_FALSE(DecodeMapCheckpoint(bad, m.size(), 100000).ok());
  bad = file;
  bad[24] = 9;  // the first record's kind
  EXPECT_FALSE(DecodeMapCheckpoint(bad, m.size(), 100000).ok());
  // Records out of order: the lone last cluster moved before the run.
  ClusterMap tail(10000);
  tail.Add(9999, Frag(7000, 1));
  std::string tail_file = EncodeMapCheckpoint(tail, kHead);
  std::string swapped = file.substr(0, 24) + tail_file.substr(24) + file.substr(24);
  EXPECT_FALSE(DecodeMapCheckpoint(swapped, m.size(), 100000).ok());
}

}  // namespace
}  // namespace shale
