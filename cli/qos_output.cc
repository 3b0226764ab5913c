// Output of the QoS commands (`shale qos ...`, `shale volume stats`): JSON and human views.
// Declared in output.h with the other views.
#include <cmath>
#include <cstdio>

#include "cli/output.h"
#include "engine/common/units.h"

namespace shale::cli {

namespace {

// The settings fields in API order, for JSON and summaries.
struct QosField {
  const char* name;
  int64_t (v1::QosSettings::*get)() const;
  bool bytes;  // a byte rate or size (shown with FormatSize)
};

constexpr QosField kQosFields[] = {
    {"iops", &v1::QosSettings::iops, false},
    {"read_iops", &v1::QosSettings::read_iops, false},
    {"write_iops", &v1::QosSettings::write_iops, false},
    {"bps", &v1::QosSettings::bps, true},
    {"read_bps", &v1::QosSettings::read_bps, true},
    {"write_bps", &v1::QosSettings::write_bps, true},
    {"burst_iops", &v1::QosSettings::burst_iops, false},
    {"burst_read_iops", &v1::QosSettings::burst_read_iops, false},
    {"burst_write_iops", &v1::QosSettings::burst_write_iops, false},
    {"burst_bps", &v1::QosSettings::burst_bps, true},
    {"burst_read_bps", &v1::QosSettings::burst_read_bps, true},
    {"burst_write_bps", &v1::QosSettings::burst_write_bps, true},
    {"burst_seconds", &v1::QosSettings::burst_seconds, false},
    {"iops_unit", &v1::QosSettings::iops_unit, true},
    {"weight", &v1::QosSettings::weight, false},
    {"reservation_iops", &v1::QosSettings::reservation_iops, false},
};

// "2001", "12.5" (one decimal below 100).
std::string Rate(double v) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), v < 100 && v != std::floor(v) ? "%.1f" : "%.0f", v);
  return buf;
}

std::string ByteRate(double bytes_per_s) {
  return FormatSize(static_cast<uint64_t>(std::llround(std::max(0.0, bytes_per_s)))) + "/s";
}

std::string Seconds(uint64_t ns) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.1fs", static_cast<double>(ns) / 1e9);
  return buf;
}

std::string LimitValue(const QosField& f, int64_t v) {
  if (v <= 0) return std::to_string(v);
  if (f.bytes) {
    const std::string size = FormatSize(static_cast<uint64_t>(v));
    return std::string(f.name) == "iops_unit" ? size : size + "/s";
  }
  return std::to_string(v);
}

std::string Tokens(double v) { return Rate(v); }

}  // namespace

nlohmann::ordered_json ToJson(const v1::QosSettings& qos) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const QosField& f : kQosFields) out[f.name] = (qos.*f.get)();
  return out;
}

nlohmann::ordered_json ToJson(const v1::VolumeQos& qos) {
  return {{"name", qos.name()}, {"pool", qos.pool()}, {"qos", ToJson(qos.qos())}};
}

nlohmann::ordered_json ToJson(const v1::PoolQos& pool) {
  return {{"pool", pool.pool()}, {"budget", pool.budget()}};
}

nlohmann::ordered_json ToJson(const v1::RebuildQos& rebuild) {
  nlohmann::ordered_json rebuilding = nlohmann::ordered_json::array();
  for (const std::string& v : rebuild.rebuilding()) rebuilding.push_back(v);
  return {
      {"node", rebuild.node()}, {"rebuild_bps", rebuild.rebuild_bps()}, {"rebuilding", rebuilding}};
}

nlohmann::ordered_json ToJson(const v1::VolumeIoStats& s) {
  nlohmann::ordered_json buckets = nlohmann::ordered_json::array();
  for (const v1::QosBucket& b : s.buckets()) {
    buckets.push_back({
        {"limit", b.limit()},
        {"rate", b.rate()},
        {"burst_rate", b.burst_rate()},
        {"tokens", b.tokens()},
        {"capacity", b.capacity()},
        {"peak_tokens", b.peak_tokens()},
        {"peak_capacity", b.peak_capacity()},
    });
  }
  return {
      {"name", s.name()},
      {"pool", s.pool()},
      {"time_unix_ns", s.time_unix_ns()},
      {"open", s.open()},
      {"window_ns", s.window_ns()},
      {"iops", s.iops()},
      {"read_iops", s.read_iops()},
      {"write_iops", s.write_iops()},
      {"bps", s.bps()},
      {"read_bps", s.read_bps()},
      {"write_bps", s.write_bps()},
      {"reads", s.reads()},
      {"writes", s.writes()},
      {"bytes_read", s.bytes_read()},
      {"bytes_written", s.bytes_written()},
      {"errors", s.errors()},
      {"throttled_ns", s.throttled_ns()},
      {"throttled_requests", s.throttled_requests()},
      {"contended_requests", s.contended_requests()},
      {"contended_wait_ns", s.contended_wait_ns()},
      {"rejected", s.rejected()},
      {"timer_fires", s.timer_fires()},
      {"reservation_dispatches", s.reservation_dispatches()},
      {"weight_dispatches", s.weight_dispatches()},
      {"queue_depth", s.queue_depth()},
      {"in_flight", s.in_flight()},
      {"buckets", buckets},
      {"pool_budget", s.pool_budget()},
      {"pool_outstanding", s.pool_outstanding()},
      {"pool_waiting", s.pool_waiting()},
      {"qos", ToJson(s.qos())},
  };
}

std::string QosSummary(const v1::QosSettings& qos) {
  std::string limits;
  for (const QosField& f : kQosFields) {
    const int64_t v = (qos.*f.get)();
    const std::string name = f.name;
    if (v == 0 || name == "weight" || name == "reservation_iops" || name == "iops_unit") continue;
    if (!limits.empty()) limits += ' ';
    limits += name + "=" + LimitValue(f, v);
  }
  std::string out = limits.empty() ? "unlimited" : limits;
  out += ", weight " + std::to_string(qos.weight() == 0 ? 100 : qos.weight());
  if (qos.reservation_iops() != 0) {
    out += ", reservation " + std::to_string(qos.reservation_iops()) + " IOPS";
  }
  if (qos.iops_unit() != 0 && qos.iops_unit() != 4096) {
    out += ", iops unit " + FormatSize(static_cast<uint64_t>(qos.iops_unit()));
  }
  return out;
}

std::string QosView(const v1::VolumeQos& q) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Volume", q.name()},
      {"Pool", q.pool()},
      {"Summary", QosSummary(q.qos())},
  };
  for (const QosField& f : kQosFields) {
    const int64_t v = (q.qos().*f.get)();
    std::string text;
    const std::string name = f.name;
    if (v != 0) {
      text = LimitValue(f, v);
    } else if (name.starts_with("burst_")) {
      text = "-";
    } else if (name == "reservation_iops") {
      text = "none";
    } else {
      text = "unlimited";
    }
    rows.emplace_back(name, text);
  }
  return RenderKeyValues(rows);
}

std::string PoolQosView(const v1::PoolQos& pool) {
  return RenderKeyValues({{"Pool", pool.pool()},
                          {"Budget", std::to_string(pool.budget()) +
                                         " requests dispatched at once before the scheduler "
                                         "chooses by reservation and weight"}});
}

std::string RebuildQosView(const v1::RebuildQos& rebuild) {
  std::string running;
  for (const std::string& v : rebuild.rebuilding()) running += (running.empty() ? "" : ", ") + v;
  return RenderKeyValues(
      {{"Node", rebuild.node()},
       {"Rebuild cap",
        rebuild.rebuild_bps() == 0
            ? std::string("none (rebuilds take what the pool's background class leaves them)")
            : FormatSize(rebuild.rebuild_bps()) + "/s per rebuild (until shaled restarts; "
                                                  "--rebuild-bps sets it at start)"},
       {"Rebuilding", running.empty() ? std::string("-") : running}});
}

std::string VolumeStatsView(const v1::VolumeIoStats& s) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Volume", s.name() + " (pool " + s.pool() + ")"},
      {"QoS", QosSummary(s.qos())},
  };
  if (!s.open()) {
    rows.emplace_back("Open", "no (no NBD client since the daemon started; nothing to measure)");
  } else {
    rows.emplace_back("Open", "yes");
    rows.emplace_back("IOPS", Rate(s.iops()) + " (read " + Rate(s.read_iops()) + ", write " +
                                  Rate(s.write_iops()) + ") over the last " +
                                  Seconds(s.window_ns()));
    rows.emplace_back("Bandwidth", ByteRate(s.bps()) + " (read " + ByteRate(s.read_bps()) +
                                       ", write " + ByteRate(s.write_bps()) + ")");
    rows.emplace_back("Throttled", Seconds(s.throttled_ns()) + " in total, " +
                                       std::to_string(s.throttled_requests()) +
                                       " requests waited for a limit");
    rows.emplace_back("Contended", std::to_string(s.contended_requests()) +
                                       " requests waited for the pool (" +
                                       Seconds(s.contended_wait_ns()) + " in total)");
    rows.emplace_back("Queue", std::to_string(s.queue_depth()) + " waiting, " +
                                   std::to_string(s.in_flight()) + " in flight");
    rows.emplace_back(
        "Totals", "reads " + std::to_string(s.reads()) + " (" + FormatSize(s.bytes_read()) +
                      "), writes " + std::to_string(s.writes()) + " (" +
                      FormatSize(s.bytes_written()) + "), errors " + std::to_string(s.errors()) +
                      ", rejected " + std::to_string(s.rejected()));
  }
  rows.emplace_back("Pool", "budget " + std::to_string(s.pool_budget()) + ", " +
                                std::to_string(s.pool_outstanding()) + " outstanding, " +
                                std::to_string(s.pool_waiting()) + " waiting");
  std::string out = RenderKeyValues(rows);
  if (s.buckets_size() > 0) {
    Table t({"LIMIT", "RATE", "BURST", "TOKENS", "CAPACITY", "PEAK", "PEAK CAPACITY"});
    for (const v1::QosBucket& b : s.buckets()) {
      const bool bytes = b.limit().ends_with("bps");
      auto rate = [&](uint64_t v) {
        if (v == 0) return std::string("-");
        return bytes ? FormatSize(v) + "/s" : std::to_string(v);
      };
      const bool burst = b.burst_rate() != 0;
      t.AddRow({b.limit(), rate(b.rate()), rate(b.burst_rate()), Tokens(b.tokens()),
                Tokens(b.capacity()), burst ? Tokens(b.peak_tokens()) : "-",
                burst ? Tokens(b.peak_capacity()) : "-"});
    }
    out += "\n" + t.Render();
  }
  return out;
}

}  // namespace shale::cli
