#include "engine/pool/superblock.h"

#include <gtest/gtest.h>

namespace shale {
namespace {

Superblock Sample() {
  auto sb = Superblock::ForNewPool("tank", 8 * kGiB, 64 * kKiB, 1234);
  EXPECT_TRUE(sb.ok()) << sb.status();
  return sb.value();
}

TEST(SuperblockTest, RoundTrips) {
  Superblock sb = Sample();
  std::string bytes = sb.Encode();
  ASSERT_EQ(bytes.size(), kSuperblockSize);
  auto back = Superblock::Decode(bytes.data(), bytes.size());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->pool_uuid, sb.pool_uuid);
  EXPECT_EQ(back->pool_name, "tank");
  EXPECT_EQ(back->cluster_size, 64 * kKiB);
  EXPECT_EQ(back->cluster_count, (8 * kGiB - kPoolDataOffset) / (64 * kKiB));
  EXPECT_EQ(back->created_unix_ns, 1234u);
  EXPECT_EQ(back->cluster_offset(2), kPoolDataOffset + 2 * 64 * kKiB);
}

TEST(SuperblockTest, BlankDeviceIsNotFound) {
  std::string zeros(kSuperblockSize, '\0');
  auto r = Superblock::Decode(zeros.data(), zeros.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

TEST(SuperblockTest, EveryFlippedByteIsCorruption) {
  std::string bytes = Sample().Encode();
  // Flip bytes across the whole block (magic excluded: that reads as "not a superblock").
  for (size_t i = 8; i < bytes.size(); i += 97) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    auto r = Superblock::Decode(bad.data(), bad.size());
    ASSERT_FALSE(r.ok()) << "byte " << i;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << "byte " << i;
    EXPECT_NE(r.status().message().find("checksum"), std::string_view::npos);
  }
}

TEST(SuperblockTest, TruncatedIsCorruption) {
  std::string bytes = Sample().Encode();
  auto r = Superblock::Decode(bytes.data(), 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
}

TEST(SuperblockTest, RejectsBadGeometry) {
  EXPECT_FALSE(Superblock::ForNewPool("p", 8 * kGiB, 3000, 0).ok());
  EXPECT_FALSE(Superblock::ForNewPool("p", 8 * kGiB, 512 * kKiB, 0).ok());
  EXPECT_FALSE(Superblock::ForNewPool("p", 1 * kMiB, 64 * kKiB, 0).ok());
  EXPECT_FALSE(Superblock::ForNewPool("bad/name", 8 * kGiB, 64 * kKiB, 0).ok());
  EXPECT_TRUE(Superblock::ForNewPool("p", 8 * kGiB, 4 * kKiB, 0).ok());
  EXPECT_TRUE(Superblock::ForNewPool("p", 8 * kGiB, 256 * kKiB, 0).ok());
}

TEST(SuperblockTest, NewerVersionIsNotSupported) {
  Superblock sb = Sample();
  sb.format_version = kSuperblockFormatVersion + 1;
  std::string bytes = sb.Encode();
  auto r = Superblock::Decode(bytes.data(), bytes.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
}

}  // namespace
}  // namespace shale
