#include "daemon/ops/exposition.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>

namespace shale::daemon::ops {
namespace {

TEST(TextExpositionTest, FamiliesSamplesAndEscaping) {
  TextExposition out;
  out.Family("shale_x_bytes", MetricType::kGauge, "Line one\\two\nthree");
  out.Sample({{"pool", "p"}, {"volume", "a\"b\\c\nd"}}, 42);
  out.Sample({}, 0.5);
  out.Family("shale_y_total", MetricType::kCounter, "Counts.");
  out.Sample({{"node", "n1"}}, 1e21);
  EXPECT_EQ(out.text(),
            "# HELP shale_x_bytes Line one\\\\two\\nthree\n"
            "# TYPE shale_x_bytes gauge\n"
            "shale_x_bytes{pool=\"p\",volume=\"a\\\"b\\\\c\\nd\"} 42\n"
            "shale_x_bytes 0.5\n"
            "# HELP shale_y_total Counts.\n"
            "# TYPE shale_y_total counter\n"
            "shale_y_total{node=\"n1\"} 1e+21\n");
}

TEST(TextExpositionTest, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  TextExposition out;
  out.Family("shale_lat_seconds", MetricType::kHistogram, "Latency.");
  const std::array<double, 2> bounds = {0.001, 0.25};
  const std::array<uint64_t, 3> counts = {2, 3, 1};
  out.Histogram({{"volume", "v"}}, {.bounds = bounds, .counts = counts, .sum = 1.5});
  EXPECT_EQ(out.text(),
            "# HELP shale_lat_seconds Latency.\n"
            "# TYPE shale_lat_seconds histogram\n"
            "shale_lat_seconds_bucket{volume=\"v\",le=\"0.001\"} 2\n"
            "shale_lat_seconds_bucket{volume=\"v\",le=\"0.25\"} 5\n"
            "shale_lat_seconds_bucket{volume=\"v\",le=\"+Inf\"} 6\n"
            "shale_lat_seconds_sum{volume=\"v\"} 1.5\n"
            "shale_lat_seconds_count{volume=\"v\"} 6\n");
}

TEST(TextExpositionTest, ValuesAndLabelNames) {
  EXPECT_EQ(TextExposition::FormatValue(0), "0");
  EXPECT_EQ(TextExposition::FormatValue(2.5e-05), "2.5e-05");
  EXPECT_EQ(TextExposition::FormatValue(1073741824), "1073741824");
  EXPECT_EQ(TextExposition::FormatValue(INFINITY), "+Inf");
  EXPECT_EQ(TextExposition::FormatValue(NAN), "NaN");
  EXPECT_EQ(TextExposition::SanitizeLabelName("csi.storage.k8s.io/pvc/namespace"),
            "csi_storage_k8s_io_pvc_namespace");
  EXPECT_EQ(TextExposition::SanitizeLabelName("9lives"), "_9lives");
  EXPECT_EQ(TextExposition::SanitizeLabelName("__x"), "_x");
}

}  // namespace
}  // namespace shale::daemon::ops
