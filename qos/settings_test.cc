#include "qos/settings.h"

#include <gtest/gtest.h>

#include "qos/qos.pb.h"

namespace shale::qos {
namespace {

// The error must be InvalidArgument and mention every fragment (field names, values).
void ExpectInvalid(const QosSettings& s, std::initializer_list<std::string_view> fragments) {
  Status st = s.Validate();
  ASSERT_EQ(st.code(), StatusCode::kInvalidArgument) << s.ToString();
  for (std::string_view f : fragments) {
    EXPECT_NE(st.message().find(f), std::string_view::npos)
        << "'" << f << "' not in: " << st.message();
  }
}

TEST(QosSettingsTest, DefaultsAndTypicalCombinationsAreValid) {
  EXPECT_TRUE(QosSettings{}.Validate().ok());
  EXPECT_TRUE((QosSettings{.iops = 1000}).Validate().ok());
  EXPECT_TRUE(
      (QosSettings{.read_iops = 500, .write_bps = 10 << 20, .weight = 300}).Validate().ok());
  EXPECT_TRUE((QosSettings{.iops = 1000, .burst_iops = 5000, .burst_seconds = 30}).Validate().ok());
  EXPECT_TRUE((QosSettings{.iops = 1000, .burst_iops = 1000}).Validate().ok())
      << "B == r is allowed (no burst)";
  EXPECT_TRUE((QosSettings{.iops = 1000, .reservation_iops = 1000}).Validate().ok());
  EXPECT_TRUE((QosSettings{.reservation_iops = 5000}).Validate().ok())
      << "a reservation needs no limit";
  EXPECT_TRUE((QosSettings{.iops_unit = 512}).Validate().ok());
  EXPECT_TRUE((QosSettings{.weight = 1}).Validate().ok());
  EXPECT_TRUE((QosSettings{.weight = 10000}).Validate().ok());
}

TEST(QosSettingsTest, NegativeValuesAreRejectedNamingTheField) {
  ExpectInvalid({.iops = -1}, {"iops", "-1"});
  ExpectInvalid({.read_iops = -5}, {"read_iops", "-5"});
  ExpectInvalid({.write_bps = -100}, {"write_bps", "-100"});
  ExpectInvalid({.iops = 10, .burst_iops = -3}, {"burst_iops", "-3"});
  ExpectInvalid({.iops = 10, .burst_iops = 20, .burst_seconds = -1}, {"burst_seconds", "-1"});
  ExpectInvalid({.iops_unit = -4096}, {"iops_unit"});
  ExpectInvalid({.weight = -1}, {"weight", "-1"});
  ExpectInvalid({.reservation_iops = -7}, {"reservation_iops", "-7"});
}

TEST(QosSettingsTest, AbsurdValuesAreRejected) {
  ExpectInvalid({.iops = kMaxIops + 1}, {"iops", "100000000"});
  ExpectInvalid({.bps = kMaxBps + 1}, {"bps"});
  ExpectInvalid({.iops = 10, .burst_iops = 20, .burst_seconds = kMaxBurstSeconds + 1},
                {"burst_seconds", "86400"});
  ExpectInvalid({.weight = 10001}, {"weight", "10000"});
  ExpectInvalid({.iops_unit = 100}, {"iops_unit", "512"});
  ExpectInvalid({.iops_unit = 4097}, {"iops_unit"});
  ExpectInvalid({.iops_unit = int64_t{64} << 20}, {"iops_unit"});
}

TEST(QosSettingsTest, BurstRulesAreExplained) {
  ExpectInvalid({.iops = 1000, .burst_iops = 500}, {"burst_iops (500)", "below", "iops (1000)"});
  ExpectInvalid({.read_bps = 1 << 20, .burst_read_bps = 1 << 10}, {"burst_read_bps", "read_bps"});
  ExpectInvalid({.burst_iops = 5000}, {"burst_iops", "needs iops"});
  ExpectInvalid({.write_iops = 10, .burst_write_bps = 100}, {"burst_write_bps", "needs write_bps"});
  ExpectInvalid({.iops = 100, .burst_seconds = 10}, {"burst_seconds", "no burst rate"});
  ExpectInvalid({.iops = 100, .reservation_iops = 200},
                {"reservation_iops (200)", "iops limit (100)"});
}

TEST(QosSettingsTest, NormalizedFillsDefaultsOnly) {
  QosSettings n = QosSettings{.iops = 100, .burst_iops = 200}.Normalized();
  EXPECT_EQ(n.weight, kDefaultWeight);
  EXPECT_EQ(n.iops_unit, kDefaultIopsUnit);
  EXPECT_EQ(n.burst_seconds, kDefaultBurstSeconds);
  EXPECT_TRUE(n.Validate().ok());
  QosSettings plain = QosSettings{}.Normalized();
  EXPECT_EQ(plain.burst_seconds, 0) << "no burst: burst_seconds stays 0 (else Validate refuses it)";
  EXPECT_TRUE(plain.Validate().ok());
  EXPECT_EQ((QosSettings{.iops_unit = 8192, .weight = 7}).Normalized().weight, 7);
}

TEST(QosSettingsTest, ProtoRoundTripKeepsEveryField) {
  QosSettings s{.iops = 1,
                .read_iops = 2,
                .write_iops = 3,
                .bps = 4,
                .read_bps = 5,
                .write_bps = 6,
                .burst_iops = 7,
                .burst_read_iops = 8,
                .burst_write_iops = 9,
                .burst_bps = 10,
                .burst_read_bps = 11,
                .burst_write_bps = 12,
                .burst_seconds = 13,
                .iops_unit = 14,
                .weight = 15,
                .reservation_iops = -16};
  pb::Settings p;
  SettingsToMessage(s, &p);
  pb::Settings parsed;
  ASSERT_TRUE(parsed.ParseFromString(p.SerializeAsString()));
  EXPECT_EQ(SettingsFromMessage(parsed), s)
      << "negative values survive so Validate can refuse them";
  EXPECT_EQ(s.ToString().find("iops=1 "), 0u);
  EXPECT_EQ(QosSettings{}.ToString(), "unlimited");
}

}  // namespace
}  // namespace shale::qos
