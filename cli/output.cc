#include "cli/output.h"

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

namespace {

nlohmann::ordered_json ListenersJson(const v1::NbdStatus& nbd) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const v1::NbdListener& l : nbd.listeners()) {
    out.push_back({{"transport", l.transport()},
                   {"address", l.address()},
                   {"tls", l.tls()},
                   {"client_certificates", l.client_certificates()},
                   {"authz", l.authz()}});
  }
  return out;
}

// "TLS required (x509, client certificates, per-export authorization)", "no TLS (insecure)".
std::string ListenerAccess(const v1::NbdListener& l) {
  if (l.transport() == "unix") return "mode 0600 (owner only)";
  if (l.tls().empty()) return "no TLS: open to anyone who can connect";
  std::string out = "TLS required (" + l.tls();
  if (l.client_certificates()) out += ", client certificates";
  if (l.authz()) out += ", per-export authorization";
  return out + ")";
}

// "ok", "warning", "critical" (JSON) or "-" when shaled did not say.
std::string FillLevelName(v1::FillLevel level) {
  switch (level) {
    case v1::FILL_LEVEL_WARNING:
      return "warning";
    case v1::FILL_LEVEL_CRITICAL:
      return "critical";
    case v1::FILL_LEVEL_OK:
      return "ok";
    default:
      return "-";
  }
}

// "42% ok", "85% WARN", "93% CRITICAL": what people should see at a glance.
std::string FillText(const v1::Pool& p) {
  std::string level = FillLevelName(p.fill_level());
  if (p.fill_level() == v1::FILL_LEVEL_WARNING) level = "WARN";
  if (p.fill_level() == v1::FILL_LEVEL_CRITICAL) level = "CRITICAL";
  if (p.capacity_bytes() == 0) return level;
  return std::to_string(p.used_bytes() * 100 / p.capacity_bytes()) + "% " + level;
}

std::string OvercommitText(const v1::Pool& p) {
  if (p.overcommit_unlimited()) return "unlimited";
  return "limit " + std::to_string(p.overcommit_percent()) + " % of capacity, " +
         FormatSize(p.provisionable_bytes()) + " left to provision";
}

}  // namespace

nlohmann::ordered_json ToJson(const v1::GetStatusResponse& s) {
  nlohmann::ordered_json json = {
      {"version", s.version()},
      {"data_dir", s.data_dir()},
      {"control_endpoint", s.control_endpoint()},
      {"pid", s.pid()},
      {"uptime_seconds", s.uptime_seconds()},
      {"reactors", s.reactors()},
      {"io_backend", s.io_backend()},
      {"read_cache", s.read_cache()},
      {"pool_count", s.pool_count()},
      {"volume_count", s.volume_count()},
      {"nbd",
       {
           {"enabled", s.nbd().enabled()},
           {"tcp_address", s.nbd().tcp_address()},
           {"unix_socket", s.nbd().unix_socket()},
           {"connections", s.nbd().connections()},
           {"max_connections", s.nbd().max_connections()},
           {"listeners", ListenersJson(s.nbd())},
       }},
      {"metrics",
       {
           {"enabled", s.metrics().enabled()},
           {"address", s.metrics().address()},
           {"url", s.metrics().url()},
       }},
      {"pools",
       [&] {
         nlohmann::ordered_json pools = nlohmann::ordered_json::array();
         for (const v1::Pool& p : s.pools()) pools.push_back(ToJson(p));
         return pools;
       }()},
  };
  if (s.has_cluster()) {
    json["cluster"] = {
        {"store", s.cluster().store()},
        {"node_name", s.cluster().node_name()},
        {"replica_address", s.cluster().replica_address()},
        {"registered", s.cluster().registered()},
    };
  }
  return json;
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
      {"provisioned_bytes", p.provisioned_bytes()},
      {"fill", FillLevelName(p.fill_level())},
      {"warn_percent", p.warn_percent()},
      {"critical_percent", p.critical_percent()},
      {"overcommit_percent", p.overcommit_percent()},
      {"overcommit_unlimited", p.overcommit_unlimited()},
      {"provisionable_bytes", p.provisionable_bytes()},
  };
}

namespace {

nlohmann::ordered_json LabelsJson(const google::protobuf::Map<std::string, std::string>& in) {
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  std::map<std::string, std::string> sorted(in.begin(), in.end());
  for (const auto& [key, value] : sorted) labels[key] = value;
  return labels;
}

}  // namespace

nlohmann::ordered_json ToJson(const v1::Volume& v) {
  nlohmann::ordered_json labels = LabelsJson(v.labels());
  const v1::VolumeStats& st = v.stats();
  nlohmann::ordered_json out = {
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
  // Only answers about one volume carry its space (ListVolumes does not compute it).
  if (v.has_space()) {
    const v1::VolumeSpace& sp = v.space();
    out["space"] = {
        {"owned_bytes", sp.owned_bytes()},
        {"shared_bytes", sp.shared_bytes()},
        {"written_bytes", sp.written_bytes()},
        {"snapshot_count", sp.snapshot_count()},
        {"snapshot_data_bytes", sp.snapshot_data_bytes()},
        {"snapshot_exclusive_bytes", sp.snapshot_exclusive_bytes()},
    };
  }
  out["clone"] = v.has_clone() ? ToJson(v.clone()) : nlohmann::ordered_json(nullptr);
  // Only answers about one volume carry its QoS settings (ListVolumes does not look them up).
  if (v.has_qos()) out["qos"] = ToJson(v.qos());
  // Only GetVolume answers about a replicated volume carry it (cluster mode).
  if (v.has_replication()) out["replication"] = ToJson(v.replication());
  return out;
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
      {"Read cache", s.read_cache()},
      {"Pools", std::to_string(s.pool_count())},
      {"Volumes", std::to_string(s.volume_count())},
  };
  if (!s.nbd().enabled()) {
    rows.emplace_back("NBD", "off");
  } else {
    std::string tcp = "off", unix = "off";
    for (const v1::NbdListener& l : s.nbd().listeners()) {
      const std::string access = " — " + ListenerAccess(l);
      if (l.transport() == "tcp") {
        tcp = (l.tls().empty() ? "nbd://" : "nbds://") + l.address() + "/VOLUME" + access;
      } else {
        unix = l.address() + access;
      }
    }
    // Daemons without listener details (older versions) still show their addresses.
    if (s.nbd().listeners().empty()) {
      if (!s.nbd().tcp_address().empty()) tcp = "nbd://" + s.nbd().tcp_address() + "/VOLUME";
      if (!s.nbd().unix_socket().empty()) unix = s.nbd().unix_socket();
    }
    rows.emplace_back("NBD TCP", tcp);
    rows.emplace_back("NBD socket", unix);
    rows.emplace_back("NBD connections", std::to_string(s.nbd().connections()) + " (max " +
                                             std::to_string(s.nbd().max_connections()) + ")");
  }
  if (s.has_cluster()) {
    rows.emplace_back("Cluster", s.cluster().store());
    rows.emplace_back("Node",
                      s.cluster().node_name() +
                          (s.cluster().registered() ? " (registered)" : " (not registered now)"));
    rows.emplace_back("Replica listener", s.cluster().replica_address().empty()
                                              ? "off"
                                              : s.cluster().replica_address());
  }
  rows.emplace_back("Metrics", s.metrics().enabled() ? s.metrics().url() : "off");
  for (const v1::Pool& p : s.pools()) {
    if (p.fill_level() == v1::FILL_LEVEL_WARNING || p.fill_level() == v1::FILL_LEVEL_CRITICAL) {
      rows.emplace_back("Pool " + p.name(), FillText(p) + ": " + FormatSize(p.free_bytes()) +
                                                " free of " + FormatSize(p.capacity_bytes()));
    }
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
  rows.insert(rows.end(),
              {
                  {"Device", p.device_path()},
                  {"Backend", p.backend().empty() ? "-" : p.backend()},
                  {"Capacity", SizeWithBytes(p.capacity_bytes())},
                  {"Used", SizeWithBytes(p.used_bytes())},
                  {"Free", SizeWithBytes(p.free_bytes())},
                  {"Cluster size", FormatSize(p.cluster_size())},
                  {"Clusters", std::to_string(p.cluster_count())},
                  {"Volumes", std::to_string(p.volume_count())},
                  {"Fill", FillText(p)},
                  {"Thresholds", "warn " + std::to_string(p.warn_percent()) + " %, critical " +
                                     std::to_string(p.critical_percent()) + " %"},
                  {"Provisioned", SizeWithBytes(p.provisioned_bytes())},
                  {"Overcommit", OvercommitText(p)},
              });
  return RenderKeyValues(rows);
}

std::string PoolTable(const v1::ListPoolsResponse& pools) {
  Table table({"NAME", "STATE", "FILL", "CAPACITY", "USED", "FREE", "PROVISIONED", "CLUSTER",
               "VOLUMES", "DEVICE"});
  for (const v1::Pool& p : pools.pools()) {
    table.AddRow({p.name(), PoolStateName(p.state()), FillText(p), FormatSize(p.capacity_bytes()),
                  FormatSize(p.used_bytes()), FormatSize(p.free_bytes()),
                  FormatSize(p.provisioned_bytes()), FormatSize(p.cluster_size()),
                  std::to_string(p.volume_count()), p.device_path()});
  }
  return table.Render();
}

namespace {

// "v@s (read-only; source snapshot deleted)": where a clone came from and what became of it.
std::string CloneText(const v1::CloneInfo& c) {
  std::string out = c.source();
  std::vector<std::string> notes;
  notes.emplace_back(c.read_only() ? "read-only" : "writable");
  if (c.implicit_source()) notes.emplace_back("implicit snapshot of the live volume");
  if (!c.source_exists()) notes.emplace_back("source snapshot deleted");
  if (c.detached()) notes.emplace_back("flattened: reads nothing through it");
  out += " (";
  for (size_t i = 0; i < notes.size(); ++i) out += (i > 0 ? "; " : "") + notes[i];
  return out + ")";
}

}  // namespace

std::string VolumeView(const v1::Volume& v) {
  const v1::VolumeStats& st = v.stats();
  std::vector<std::pair<std::string, std::string>> rows = {
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
  };
  if (v.has_space()) {
    const v1::VolumeSpace& sp = v.space();
    rows.insert(
        rows.end(),
        {
            {"Owned", SizeWithBytes(sp.owned_bytes()) + " (only this volume holds it)"},
            {"Shared", SizeWithBytes(sp.shared_bytes()) + " (read through snapshots)"},
            {"Written", FormatSize(sp.written_bytes()) + " since its newest snapshot"},
            {"Snapshots", std::to_string(sp.snapshot_count()) + " (holding " +
                              FormatSize(sp.snapshot_data_bytes()) + ", " +
                              FormatSize(sp.snapshot_exclusive_bytes()) + " of it only theirs)"},
        });
  }
  if (v.has_clone()) {
    const v1::CloneInfo& c = v.clone();
    rows.emplace_back("Clone of", CloneText(c));
    rows.emplace_back("Source digest", c.source_digest().empty() ? "pending" : c.source_digest());
  } else {
    rows.emplace_back("Clone of", "-");
  }
  if (v.has_qos()) rows.emplace_back("QoS", QosSummary(v.qos()));
  if (v.has_replication()) {
    const v1::ListReplicasResponse& r = v.replication();
    rows.emplace_back("Target", (r.detached() ? "detached (last " + r.target() + ")" : r.target()) +
                                    ", epoch " + std::to_string(r.epoch()) +
                                    (r.fenced() ? " (this node was fenced)" : ""));
    std::string replicas;
    for (const v1::Replica& x : r.replicas()) {
      replicas += (replicas.empty() ? "" : ", ") + x.node() + " " + x.state();
    }
    rows.emplace_back("Replicas",
                      replicas + " (min in sync " + std::to_string(r.min_in_sync()) + ")");
    if (!r.node_selector().empty()) rows.emplace_back("Replica node selector", r.node_selector());
  }
  return RenderKeyValues(rows);
}

std::string VolumeTable(const v1::ListVolumesResponse& volumes) {
  Table table(
      {"NAME", "POOL", "SIZE", "ALLOCATED", "MODE", "OPEN", "CREATED", "CLONE OF", "LABELS"});
  for (const v1::Volume& v : volumes.volumes()) {
    const bool clone = v.has_clone() && !v.clone().detached();
    table.AddRow({v.name(), v.pool(), FormatSize(v.size_bytes()), FormatSize(v.allocated_bytes()),
                  v.read_only() ? "ro" : "rw", std::to_string(v.open_count()),
                  FormatUnixNanos(v.created_unix_ns()), clone ? v.clone().source() : "-",
                  FormatLabels(v.labels())});
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
          {"tls_identity", c.tls_identity()},
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
        {"snapshot", e.snapshot()},
        {"clients", clients},
    });
  }
  return {{"exports", exports}, {"handshaking", r.handshaking()}};
}

std::string ExportTable(const v1::ListExportsResponse& r) {
  Table table({"EXPORT", "MODE", "SIZE", "CLIENT", "CONNECTED", "REQUESTS", "URI"});
  for (const v1::Export& e : r.exports()) {
    const std::string mode = e.snapshot() ? "ro (snapshot)" : e.read_only() ? "ro" : "rw";
    if (e.clients().empty()) {
      table.AddRow({e.name(), mode, FormatSize(e.size_bytes()), "-", "-", "-", e.uri()});
    }
    for (const v1::NbdClient& c : e.clients()) {
      std::string client = c.transport() + " " + c.peer();
      if (!c.tls_identity().empty()) client += " (TLS " + c.tls_identity() + ")";
      table.AddRow({e.name(), mode, FormatSize(e.size_bytes()), client,
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

namespace shale::cli {

std::string DigestStateName(v1::DigestState state) {
  switch (state) {
    case v1::DIGEST_STATE_PENDING:
      return "pending";
    case v1::DIGEST_STATE_READY:
      return "ready";
    case v1::DIGEST_STATE_FAILED:
      return "failed";
    default:
      return "unknown";
  }
}

std::string DigestText(const v1::Snapshot& s) {
  switch (s.digest_state()) {
    case v1::DIGEST_STATE_READY:
      return s.digest();
    case v1::DIGEST_STATE_FAILED:
      return "failed: " + s.digest_error();
    case v1::DIGEST_STATE_PENDING: {
      if (s.digest_done_bytes() == 0 || s.digest_total_bytes() == 0) return "pending";
      const uint64_t percent = s.digest_done_bytes() * 100 / s.digest_total_bytes();
      return "pending " + std::to_string(percent) + "% (" + FormatSize(s.digest_done_bytes()) +
             " of " + FormatSize(s.digest_total_bytes()) + ")";
    }
    default:
      return "unknown";
  }
}

nlohmann::ordered_json ToJson(const v1::CloneInfo& c) {
  return {
      {"volume", c.volume()},
      {"source", c.source()},
      {"source_volume", c.source_volume()},
      {"source_snapshot", c.source_snapshot()},
      {"implicit_source", c.implicit_source()},
      {"source_exists", c.source_exists()},
      {"read_only", c.read_only()},
      {"source_digest", c.source_digest()},
      {"created_unix_ns", c.created_unix_ns()},
      {"detached", c.detached()},
      {"detached_unix_ns", c.detached_unix_ns()},
  };
}

nlohmann::ordered_json ToJson(const v1::Snapshot& s) {
  nlohmann::ordered_json clones = nlohmann::ordered_json::array();
  for (const std::string& c : s.clones()) clones.push_back(c);
  return {
      {"name", s.name()},
      {"volume", s.volume()},
      {"snapshot", s.snapshot()},
      {"pool", s.pool()},
      {"volume_exists", s.volume_exists()},
      {"size_bytes", s.size_bytes()},
      {"created_unix_ns", s.created_unix_ns()},
      {"labels", LabelsJson(s.labels())},
      {"implicit", s.implicit()},
      {"implicit_for", s.implicit_for()},
      {"digest_state", DigestStateName(s.digest_state())},
      {"digest", s.digest()},
      {"digest_error", s.digest_error()},
      {"digest_done_bytes", s.digest_done_bytes()},
      {"digest_total_bytes", s.digest_total_bytes()},
      {"data_bytes", s.data_bytes()},
      {"exclusive_bytes", s.exclusive_bytes()},
      {"shared_bytes", s.shared_bytes()},
      {"clones", clones},
      {"export_uri", s.export_uri()},
      {"nbd_clients", s.nbd_clients()},
      {"durable", !s.commit_pending()},
  };
}

nlohmann::ordered_json ToJson(const v1::ExportSnapshotResponse& e) {
  return {
      {"name", e.name()},
      {"path", e.path()},
      {"base", e.base()},
      {"incremental", !e.base().empty()},
      {"content_compared", e.content_compared()},
      {"stream_bytes", e.stream_bytes()},
      {"data_bytes", e.data_bytes()},
      {"records", e.records()},
      {"digest", e.digest()},
  };
}

nlohmann::ordered_json ToJson(const v1::ImportSnapshotResponse& i) {
  return {
      {"snapshot", ToJson(i.snapshot())},
      {"incremental", i.incremental()},
      {"created_volume", i.created_volume()},
      {"stream_bytes", i.stream_bytes()},
  };
}

std::string SnapshotView(const v1::Snapshot& s) {
  std::vector<std::pair<std::string, std::string>> rows = {
      {"Name", s.name()},
      {"Volume", s.volume() + (s.volume_exists() ? "" : " (deleted since)")},
      {"Pool", s.pool()},
      {"Created", FormatUnixNanos(s.created_unix_ns())},
      {"Size", SizeWithBytes(s.size_bytes())},
      {"Labels", FormatLabels(s.labels())},
      {"Digest", DigestText(s)},
      {"Digest state", DigestStateName(s.digest_state()) + " (XXH3-128 Merkle root of its blocks)"},
      {"Durable", !s.commit_pending() ? "yes"
                                      : "not yet: its commit is in flight (a crash now loses the "
                                        "snapshot; 'snapshot show' waits for the commit)"},
  };
  if (!s.commit_pending()) {
    rows.emplace_back("Data", SizeWithBytes(s.data_bytes()) + " (stored in its own clusters)");
    rows.emplace_back("Owned", SizeWithBytes(s.exclusive_bytes()) +
                                   " (only it holds this: deleting it frees it)");
    rows.emplace_back("Shared", SizeWithBytes(s.shared_bytes()) +
                                    " (also read by the volume, later snapshots or clones)");
  } else {
    rows.emplace_back("Space", "known once durable ('snapshot show')");
  }
  std::string clones;
  for (const std::string& c : s.clones()) clones += (clones.empty() ? "" : ", ") + c;
  rows.emplace_back("Clones", clones.empty() ? "-" : clones);
  if (s.implicit()) rows.emplace_back("Implicit", "yes, taken for clone " + s.implicit_for());
  rows.emplace_back("Export", s.export_uri().empty() ? "-" : s.export_uri() + " (read-only)");
  rows.emplace_back("NBD clients", std::to_string(s.nbd_clients()));
  return RenderKeyValues(rows);
}

std::string SnapshotTable(const v1::ListSnapshotsResponse& r) {
  Table table(
      {"SNAPSHOT", "SIZE", "CREATED", "DIGEST", "OWNED", "SHARED", "CLONES", "LABELS", "NOTES"});
  for (const v1::Snapshot& s : r.snapshots()) {
    std::string notes;
    if (s.implicit()) notes = "implicit (clone " + s.implicit_for() + ")";
    if (!s.volume_exists()) notes += std::string(notes.empty() ? "" : "; ") + "volume deleted";
    std::string digest = s.digest_state() == v1::DIGEST_STATE_READY ? s.digest() : DigestText(s);
    table.AddRow({s.name(), FormatSize(s.size_bytes()), FormatUnixNanos(s.created_unix_ns()),
                  digest, FormatSize(s.exclusive_bytes()), FormatSize(s.shared_bytes()),
                  std::to_string(s.clones_size()), FormatLabels(s.labels()),
                  notes.empty() ? "-" : notes});
  }
  return table.Render();
}

std::string CloneTable(const v1::ListClonesResponse& r) {
  Table table({"CLONE", "SOURCE", "MODE", "SOURCE DIGEST", "CREATED", "NOTES"});
  for (const v1::CloneInfo& c : r.clones()) {
    std::string notes;
    if (c.implicit_source()) notes = "implicit source";
    if (!c.source_exists()) notes += std::string(notes.empty() ? "" : "; ") + "source deleted";
    if (c.detached()) notes += std::string(notes.empty() ? "" : "; ") + "flattened";
    table.AddRow({c.volume(), c.source(), c.read_only() ? "ro" : "rw",
                  c.source_digest().empty() ? "pending" : c.source_digest(),
                  FormatUnixNanos(c.created_unix_ns()), notes.empty() ? "-" : notes});
  }
  return table.Render();
}

}  // namespace shale::cli
