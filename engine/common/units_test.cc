#include "engine/common/units.h"

#include <gtest/gtest.h>

#include "engine/common/checksum.h"
#include "engine/common/uuid.h"

namespace shale {
namespace {

TEST(ParseSizeTest, AcceptsSuffixes) {
  EXPECT_EQ(ParseSize("0").value(), 0u);
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("4K").value(), 4096u);
  EXPECT_EQ(ParseSize("4k").value(), 4096u);
  EXPECT_EQ(ParseSize("8G").value(), 8 * kGiB);
  EXPECT_EQ(ParseSize("8GiB").value(), 8 * kGiB);
  EXPECT_EQ(ParseSize("8GB").value(), 8 * kGiB);
  EXPECT_EQ(ParseSize("2T").value(), 2 * kTiB);
  EXPECT_EQ(ParseSize("512B").value(), 512u);
}

TEST(ParseSizeTest, RejectsBadInput) {
  for (const char* bad : {"", "-1", "12Q", "1.5G", "G", " 1G", "1G ", "99999999999999999999",
                          "20000000P", "1Gx", "1BB"}) {
    Result<uint64_t> r = ParseSize(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(r.status().message().find("invalid size"), std::string_view::npos);
    }
  }
}

TEST(FormatSizeTest, Readable) {
  EXPECT_EQ(FormatSize(0), "0 B");
  EXPECT_EQ(FormatSize(4096), "4 KiB");
  EXPECT_EQ(FormatSize(3 * kGiB / 2), "1.5 GiB");
}

TEST(ValidateNameTest, AcceptsAndRejects) {
  EXPECT_TRUE(ValidateName("volume", "data-01.v_2").ok());
  EXPECT_TRUE(ValidateName("volume", std::string(128, 'a')).ok());
  EXPECT_FALSE(ValidateName("volume", std::string(129, 'a')).ok());
  EXPECT_FALSE(ValidateName("volume", "").ok());
  EXPECT_FALSE(ValidateName("volume", "a/b").ok());
  EXPECT_FALSE(ValidateName("volume", "a@b").ok());
  EXPECT_FALSE(ValidateName("volume", "-a").ok());
  EXPECT_FALSE(ValidateName("volume", "a b").ok());
  EXPECT_NE(ValidateName("volume", "a/b").message().find("volume name"), std::string_view::npos);
}

TEST(UuidTest, RoundTripsAndIsRandom) {
  Uuid a = Uuid::Random(), b = Uuid::Random();
  EXPECT_NE(a, b);
  EXPECT_FALSE(a.IsNil());
  EXPECT_EQ(Uuid::Parse(a.ToString()).value(), a);
  EXPECT_FALSE(Uuid::Parse("not-a-uuid").ok());
  EXPECT_EQ(a.ToString().size(), 36u);
}

TEST(ChecksumTest, StableAndSensitive) {
  const char data[] = "shale";
  EXPECT_EQ(Hash64(data, 5), Hash64(data, 5));
  EXPECT_NE(Hash64(data, 5), Hash64(data, 4));
  EXPECT_EQ(HashContent128(data, 5), HashContent128(data, 5));
  EXPECT_EQ(HashContent128(data, 5).ToHex().size(), 32u);
}

}  // namespace
}  // namespace shale
