#include "engine/pool/map_entry.h"

#include <gtest/gtest.h>

#include "engine/pool/keys.h"

namespace shale {
namespace {

TEST(MapEntryTest, RoundTrips) {
  MapEntry e;
  e.zero_blocks = 0x0f00;
  e.fragments.push_back({7, 0x00ff});
  e.fragments.push_back({123456, 0xf000});
  auto back = MapEntry::Decode(e.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, e);
  EXPECT_EQ(MapEntry::Decode(MapEntry{}.Encode()).value(), MapEntry{});
}

TEST(MapEntryTest, RejectsDamagedEncodings) {
  MapEntry e;
  e.fragments.push_back({7, 0x00ff});
  std::string bytes = e.Encode();
  EXPECT_EQ(MapEntry::Decode(bytes.substr(0, 5)).status().code(), StatusCode::kCorruption);
  EXPECT_EQ(MapEntry::Decode(bytes + "x").status().code(), StatusCode::kCorruption);
  std::string bad_version = bytes;
  bad_version[0] = 9;
  EXPECT_EQ(MapEntry::Decode(bad_version).status().code(), StatusCode::kCorruption);
  MapEntry overlap;
  overlap.fragments.push_back({1, 0x3});
  overlap.fragments.push_back({2, 0x2});
  EXPECT_EQ(MapEntry::Decode(overlap.Encode()).status().code(), StatusCode::kCorruption);
}

TEST(MapEntryTest, DecodeIntoReusesTheEntry) {
  MapEntry two;
  two.zero_blocks = 0x10;
  two.fragments.push_back({7, 0x1});
  two.fragments.push_back({9, 0x2});
  MapEntry one;
  one.fragments.push_back({5, 0xff00});
  MapEntry out;
  ASSERT_TRUE(MapEntry::DecodeInto(two.Encode(), &out).ok());
  EXPECT_EQ(out, two);
  const StoredFragment* storage = out.fragments.data();
  // A smaller entry decodes into the same storage and leaves nothing of the previous one.
  ASSERT_TRUE(MapEntry::DecodeInto(one.Encode(), &out).ok());
  EXPECT_EQ(out, one);
  EXPECT_EQ(out.fragments.data(), storage);
  ASSERT_TRUE(MapEntry::DecodeInto(MapEntry{}.Encode(), &out).ok());
  EXPECT_EQ(out, MapEntry{});
  EXPECT_EQ(MapEntry::DecodeInto("x", &out).code(), StatusCode::kCorruption);
}

TEST(KeysTest, SortNumericallyAndDecode) {
  EXPECT_LT(keys::Map(1, 255), keys::Map(1, 256));
  EXPECT_LT(keys::Map(1, UINT64_MAX), keys::Map(2, 0));
  EXPECT_EQ(keys::DecodeU64At(keys::Map(42, 99), 1), 42u);
  EXPECT_EQ(keys::DecodeU64At(keys::Map(42, 99), 9), 99u);
  EXPECT_EQ(keys::Map(3, 4).substr(0, 9), keys::MapImagePrefix(3));
  EXPECT_NE(keys::Extension("qos", "a"), keys::Extension("qo", "sa"));
}

}  // namespace
}  // namespace shale
