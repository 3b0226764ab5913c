// TextExposition: one scrape in the Prometheus text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Families are written one at a time: Family() writes the HELP and TYPE lines, then that
// family's samples follow; a family's samples are never interleaved with another family's.
// Label values are escaped (backslash, double quote, newline), HELP text likewise (backslash,
// newline). Names are the caller's contract: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics,
// [a-zA-Z_][a-zA-Z0-9_]* for labels (SanitizeLabelName makes one from any text).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shale::daemon::ops {

enum class MetricType { kCounter, kGauge, kHistogram };

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// The +Inf-terminated buckets of a histogram: upper bounds (in the metric's unit) and the count
// of observations in each bucket (not cumulative; counts has one more entry than bounds).
struct HistogramSample {
  std::span<const double> bounds;
  std::span<const uint64_t> counts;
  double sum = 0;
};

class TextExposition {
 public:
  void Family(std::string_view name, MetricType type, std::string_view help);
  // A sample of the current counter or gauge family.
  void Sample(const MetricLabels& labels, double value);
  // A sample of the current histogram family: its _bucket lines (cumulative, "le" label), _sum
  // and _count.
  void Histogram(const MetricLabels& labels, const HistogramSample& sample);

  const std::string& text() const { return out_; }
  std::string Take() { return std::move(out_); }

  // "0.005", "1", "2.5e-05", "+Inf", "NaN": the shortest text that reads back as `value`.
  static std::string FormatValue(double value);
  // A valid label name from any text: invalid characters become '_', a leading digit gets a '_'
  // in front ("csi.storage.k8s.io/pvc/namespace" -> "csi_storage_k8s_io_pvc_namespace").
  static std::string SanitizeLabelName(std::string_view text);

 private:
  void Line(std::string_view name, const MetricLabels& labels, std::string_view extra_label,
            std::string_view extra_value, double value);

  std::string out_;
  std::string family_;
  MetricType type_ = MetricType::kGauge;
};

}  // namespace shale::daemon::ops
