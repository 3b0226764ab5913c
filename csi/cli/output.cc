#include "csi/cli/output.h"

#include <ctime>
#include <map>

#include "engine/common/units.h"

namespace shale::cli {

namespace {

// "10 GiB (10737418240 bytes)": the exact count is what a person compares with other tools.
std::string SizeWithBytes(uint64_t bytes) {
  return FormatSize(bytes) + " (" + std::to_string(bytes) + " bytes)";
}

std::string YesNo(bool value) { return value ? "yes" : "no"; }

}  // namespace

Table::Table(std::vector<std::string> header) : header_(std::move(header)) {}

void Table::AddRow(std::vector<std::string> row) {
  row.resize(header_.size());
  rows_.push_back(std::move(row));
}

std::string Table::Render() const {
  std::vector<size_t> widths(header_.size());
  for (size_t c = 0; c < header_.size(); ++c) widths[c] = header_[c].size();
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::string out;
  auto render_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };
  render_row(header_);
  for (const auto& row : rows_) render_row(row);
  return out;
}

std::string RenderKeyValues(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t width = 0;
  for (const auto& [key, value] : rows) width = std::max(width, key.size());
  std::string out;
  for (const auto& [key, value] : rows) {
    out += key;
    out += ':';
    out.append(width - key.size() + 2, ' ');
    out += value;
    out += '\n';
  }
  return out;
}

std::string FormatUnixNanos(uint64_t unix_ns) {
  if (unix_ns == 0) return "-";
  const auto seconds = static_cast<time_t>(unix_ns / 1'000'000'000);
  struct tm tm {};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string FormatDuration(uint64_t seconds) {
  const uint64_t days = seconds / 86400, hours = seconds / 3600 % 24;
  const uint64_t minutes = seconds / 60 % 60, secs = seconds % 60;
  if (days > 0) return std::to_string(days) + "d " + std::to_string(hours) + "h";
  if (hours > 0) return std::to_string(hours) + "h " + std::to_string(minutes) + "m";
  if (minutes > 0) return std::to_string(minutes) + "m " + std::to_string(secs) + "s";
  return std::to_string(secs) + "s";
}

std::string PoolStateName(v1::PoolState state) {
  switch (state) {
    case v1::POOL_STATE_ONLINE:
      return "online";
    case v1::POOL_STATE_ERROR:
      return "error";
    default:
      return "unknown";
  }
}

std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels) {
  if (labels.empty()) return "-";
  // protobuf maps are unordered; people (and tests) want a stable order.
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  std::string out;
  for (const auto& [key, value] : sorted) {
    if (!out.empty()) out += ',';
    out += key + "=" + value;
  }
  return out;
}

nlohmann::ordered_json ToJson(const v1::GetStatusResponse& s) {
  return {
      {"version", s.version()},
      {"data_dir", s.data_dir()},
      {"control_endpoint", s.control_endpoint()},
      {"pid", s.pid()},
      {"uptime_seconds", s.uptime_seconds()},
      {"reactors", s.reactors()},
      {"io_backend", s.io_backend()},
      {"pool_count", s.pool_count()},
      {"volume_count", s.volume_count()},
      {"nbd",
       {
           {"enabled", s.nbd().enabled()},
           {"tcp_address", s.nbd().tcp_address()},
           {"unix_socket", s.nbd().unix_socket()},
           {"connections", s.nbd().connections()},
           {"max_connections", s.nbd().max_connections()},
       }},
  };
}

nlohmann::ordered_json ToJson(const v1::Pool& p) {
  return {
      {"name", p.name()},
      {"uuid", p.uuid()},
      {"state", PoolStateName(p.state())},
      {"error", p.error()},
      {"device_path", p.device_path()},
      {"backend", p.backend()},
      {"capacity_bytes", p.capacity_bytes()},
      {"used_bytes", p.used_bytes()},
      {"free_bytes", p.free_bytes()},
      {"cluster_size", p.cluster_size()},
      {"cluster_count", p.cluster_count()},
      {"volume_count", p.volume_count()},
  };
}

nlohmann::ordered_json ToJson(const v1::Volume& v) {
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  std::map<std::string, std::string> sorted(v.labels().begin(), v.labels().end());
  for (const auto& [key, value] : sorted) labels[key] = value;
  const v1::VolumeStats& st = v.stats();
  return {
      {"name", v.name()},
      {"pool", v.pool()},
      {"id", v.id()},
      {"size_bytes", v.size_bytes()},
      {"allocated_bytes", v.allocated_bytes()},
      {"read_only", v.read_only()},
      {"created_unix_ns", v.created_unix_ns()},
      {"open_count", v.open_count()},
      {"export_uri", v.export_uri()},
      {"nbd_clients", v.nbd_clients()},
      {"labels", labels},
      {"stats",
       {
           {"reads", st.reads()},
           {"writes", st.writes()},
           {"bytes_read", st.bytes_read()},
           {"bytes_written", st.bytes_written()},
           {"flushes", st.flushes()},
           {"errors", st.errors()},
       }},
  };
}

nlohmann::ordered_json ToJson(const std::string& pool, const v1::CheckPoolResponse& c) {
  nlohmann::ordered_json problems = nlohmann::ordered_json::array();
  for (const std::string& problem : c.problems()) problems.push_back(problem);
  return {
      {"pool", pool},
      {"clean", c.clean()},
      {"referenced_clusters", c.referenced_clusters()},
      {"committed_clusters", c.committed_clusters()},
      {"problems", problems},
  };
}

std::string StatusView(const v1::GetStatusResponse& s) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Version", s.version()},
      {"Endpoint", s.control_endpoint()},
      {"Data dir", s.data_dir()},
      {"PID", std::to_string(s.pid())},
      {"Uptime", FormatDuration(s.uptime_seconds())},
      {"Reactors", std::to_string(s.reactors())},
      {"I/O backend", s.io_backend()},
      {"Pools", std::to_string(s.pool_count())},
      {"Volumes", std::to_string(s.volume_count())},
  };
  if (!s.nbd().enabled()) {
    rows.emplace_back("NBD", "off");
  } else {
    rows.emplace_back("NBD TCP", s.nbd().tcp_address().empty()
                                     ? "off"
                                     : "nbd://" + s.nbd().tcp_address() + "/VOLUME");
    rows.emplace_back("NBD socket", s.nbd().unix_socket().empty() ? "off" : s.nbd().unix_socket());
    rows.emplace_back("NBD connections", std::to_string(s.nbd().connections()) + " (max " +
                                             std::to_string(s.nbd().max_connections()) + ")");
  }
  return RenderKeyValues(rows);
}

std::string PoolView(const v1::Pool& p) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Name", p.name()},
      {"UUID", p.uuid()},
      {"State", PoolStateName(p.state())},
  };
  if (!p.error().empty()) rows.emplace_back("Error", p.error());
  rows.insert(rows.end(), {
                              {"Device", p.device_path()},
                              {"Backend", p.backend().empty() ? "-" : p.backend()},
                              {"Capacity", SizeWithBytes(p.capacity_bytes())},
                              {"Used", SizeWithBytes(p.used_bytes())},
                              {"Free", SizeWithBytes(p.free_bytes())},
                              {"Cluster size", FormatSize(p.cluster_size())},
                              {"Clusters", std::to_string(p.cluster_count())},
                              {"Volumes", std::to_string(p.volume_count())},
                          });
  return RenderKeyValues(rows);
}

std::string PoolTable(const v1::ListPoolsResponse& pools) {
  Table table({"NAME", "STATE", "CAPACITY", "USED", "FREE", "CLUSTER", "VOLUMES", "DEVICE"});
  for (const v1::Pool& p : pools.pools()) {
    table.AddRow({p.name(), PoolStateName(p.state()), FormatSize(p.capacity_bytes()),
                  FormatSize(p.used_bytes()), FormatSize(p.free_bytes()),
                  FormatSize(p.cluster_size()), std::to_string(p.volume_count()), p.device_path()});
  }
  return table.Render();
}

std::string VolumeView(const v1::Volume& v) {
  const v1::VolumeStats& st = v.stats();
  return RenderKeyValues({
      {"Name", v.name()},
      {"Pool", v.pool()},
      {"ID", std::to_string(v.id())},
      {"Size", SizeWithBytes(v.size_bytes())},
      {"Allocated", SizeWithBytes(v.allocated_bytes())},
      {"Read-only", YesNo(v.read_only())},
      {"Created", FormatUnixNanos(v.created_unix_ns())},
      {"Open handles", std::to_string(v.open_count())},
      {"Export", v.export_uri().empty() ? "-" : v.export_uri()},
      {"NBD clients", std::to_string(v.nbd_clients())},
      {"Labels", FormatLabels(v.labels())},
      {"Reads", std::to_string(st.reads()) + " (" + FormatSize(st.bytes_read()) + ")"},
      {"Writes", std::to_string(st.writes()) + " (" + FormatSize(st.bytes_written()) + ")"},
      {"Flushes", std::to_string(st.flushes())},
      {"I/O errors", std::to_string(st.errors())},
  });
}

std::string VolumeTable(const v1::ListVolumesResponse& volumes) {
  Table table({"NAME", "POOL", "SIZE", "ALLOCATED", "MODE", "OPEN", "CREATED", "LABELS"});
  for (const v1::Volume& v : volumes.volumes()) {
    table.AddRow({v.name(), v.pool(), FormatSize(v.size_bytes()), FormatSize(v.allocated_bytes()),
                  v.read_only() ? "ro" : "rw", std::to_string(v.open_count()),
                  FormatUnixNanos(v.created_unix_ns()), FormatLabels(v.labels())});
  }
  return table.Render();
}

std::string CheckView(const std::string& pool, const v1::CheckPoolResponse& c) {
  std::string out = RenderKeyValues({
      {"Pool", pool},
      {"Result", c.clean() ? "clean" : std::to_string(c.problems_size()) + " problem(s)"},
      {"Referenced clusters", std::to_string(c.referenced_clusters())},
      {"Allocated clusters", std::to_string(c.committed_clusters())},
  });
  for (const std::string& problem : c.problems()) out += "problem: " + problem + "\n";
  return out;
}

}  // namespace shale::cli

namespace shale::cli {

nlohmann::ordered_json ToJson(const v1::ListExportsResponse& r) {
  nlohmann::ordered_json exports = nlohmann::ordered_json::array();
  for (const v1::Export& e : r.exports()) {
    nlohmann::ordered_json clients = nlohmann::ordered_json::array();
    for (const v1::NbdClient& c : e.clients()) {
      clients.push_back({
          {"id", c.id()},
          {"transport", c.transport()},
          {"peer", c.peer()},
          {"connected_unix_ns", c.connected_unix_ns()},
          {"requests", c.requests()},
          {"bytes_read", c.bytes_read()},
          {"bytes_written", c.bytes_written()},
          {"errors", c.errors()},
      });
    }
    exports.push_back({
        {"name", e.name()},
        {"uri", e.uri()},
        {"size_bytes", e.size_bytes()},
        {"read_only", e.read_only()},
        {"clients", clients},
    });
  }
  return {{"exports", exports}, {"handshaking", r.handshaking()}};
}

std::string ExportTable(const v1::ListExportsResponse& r) {
  Table table({"EXPORT", "MODE", "SIZE", "CLIENT", "CONNECTED", "REQUESTS", "URI"});
  for (const v1::Export& e : r.exports()) {
    const std::string mode = e.read_only() ? "ro" : "rw";
    if (e.clients().empty()) {
      table.AddRow({e.name(), mode, FormatSize(e.size_bytes()), "-", "-", "-", e.uri()});
    }
    for (const v1::NbdClient& c : e.clients()) {
      table.AddRow({e.name(), mode, FormatSize(e.size_bytes()), c.transport() + " " + c.peer(),
                    FormatUnixNanos(c.connected_unix_ns()), std::to_string(c.requests()), e.uri()});
    }
  }
  std::string out = table.Render();
  if (r.handshaking() > 0) {
    out += std::to_string(r.handshaking()) + " connection(s) still negotiating\n";
  }
  return out;
}

}  // namespace shale::cli
