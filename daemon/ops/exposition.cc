#include "daemon/ops/exposition.h"

#include <charconv>
#include <cmath>

#include "engine/common/assert.h"

namespace shale::daemon::ops {
namespace {

void AppendEscaped(std::string& out, std::string_view text, bool quotes) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string TextExposition::FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  SHALE_CHECK(ec == std::errc(), "to_chars of a double cannot fail in 64 bytes");
  return std::string(buf, end);
}

std::string TextExposition::SanitizeLabelName(std::string_view text) {
  std::string out;
  for (char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    out += ok ? c : '_';
  }
  if (out.empty() || (out[0] >= '0' && out[0] <= '9')) out.insert(out.begin(), '_');
  // Names starting with "__" are reserved for Prometheus itself.
  while (out.size() > 1 && out[0] == '_' && out[1] == '_') out.erase(0, 1);
  return out;
}

void TextExposition::Family(std::string_view name, MetricType type, std::string_view help) {
  family_ = std::string(name);
  type_ = type;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  AppendEscaped(out_, help, /*quotes=*/false);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += TypeName(type);
  out_ += '\n';
}

void TextExposition::Line(std::string_view name, const MetricLabels& labels,
                          std::string_view extra_label, std::string_view extra_value,
                          double value) {
  out_ += name;
  if (!labels.empty() || !extra_label.empty()) {
    out_ += '{';
    bool first = true;
    auto add = [&](std::string_view k, std::string_view v) {
      if (!first) out_ += ',';
      first = false;
      out_ += k;
      out_ += "=\"";
      AppendEscaped(out_, v, /*quotes=*/true);
      out_ += '"';
    };
    for (const auto& [k, v] : labels) add(k, v);
    if (!extra_label.empty()) add(extra_label, extra_value);
    out_ += '}';
  }
  out_ += ' ';
  out_ += FormatValue(value);
  out_ += '\n';
}

void TextExposition::Sample(const MetricLabels& labels, double value) {
  SHALE_CHECK(!family_.empty() && type_ != MetricType::kHistogram,
              "Sample() needs a counter or gauge family");
  Line(family_, labels, {}, {}, value);
}

void TextExposition::Histogram(const MetricLabels& labels, const HistogramSample& sample) {
  SHALE_CHECK(type_ == MetricType::kHistogram, "Histogram() needs a histogram family");
  SHALE_CHECK(sample.counts.size() == sample.bounds.size() + 1, "one count per bucket and +Inf");
  const std::string bucket = family_ + "_bucket";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < sample.bounds.size(); ++i) {
    cumulative += sample.counts[i];
    Line(bucket, labels, "le", FormatValue(sample.bounds[i]), static_cast<double>(cumulative));
  }
  cumulative += sample.counts.back();
  Line(bucket, labels, "le", "+Inf", static_cast<double>(cumulative));
  Line(family_ + "_sum", labels, {}, {}, sample.sum);
  Line(family_ + "_count", labels, {}, {}, static_cast<double>(cumulative));
}

}  // namespace shale::daemon::ops
