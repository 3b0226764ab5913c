#include "cli/ops_commands.h"

#include <cctype>
#include <ctime>
#include <string_view>
#include <vector>

#include "cli/output.h"
#include "engine/common/units.h"

namespace shale::cli {
namespace {

nlohmann::ordered_json GroupJson(const v1::UsageGroup& g) {
  return {
      {"value", g.value()},
      {"unlabelled", g.unlabelled()},
      {"volumes", g.volumes()},
      {"size_bytes", g.size_bytes()},
      {"provisioned_bytes", g.provisioned_bytes()},
      {"allocated_bytes", g.allocated_bytes()},
      {"snapshots", g.snapshots()},
      {"snapshot_bytes", g.snapshot_bytes()},
      {"reads", g.reads()},
      {"writes", g.writes()},
      {"bytes_read", g.bytes_read()},
      {"bytes_written", g.bytes_written()},
      {"volume_names", std::vector<std::string>(g.volume_names().begin(), g.volume_names().end())},
  };
}

std::vector<std::string> GroupRow(const std::string& label, const v1::UsageGroup& g) {
  return {label,
          std::to_string(g.volumes()),
          FormatSize(g.provisioned_bytes()),
          FormatSize(g.allocated_bytes()),
          std::to_string(g.snapshots()),
          FormatSize(g.snapshot_bytes()),
          FormatSize(g.bytes_read()),
          FormatSize(g.bytes_written())};
}

}  // namespace

nlohmann::ordered_json ToJson(const v1::GetUsageResponse& usage) {
  nlohmann::ordered_json groups = nlohmann::ordered_json::array();
  for (const v1::UsageGroup& g : usage.groups()) groups.push_back(GroupJson(g));
  return {{"by", usage.by()}, {"groups", groups}, {"total", GroupJson(usage.total())}};
}

std::string UsageTable(const v1::GetUsageResponse& usage) {
  const std::string by = usage.by().starts_with("label:") ? usage.by().substr(6) : usage.by();
  std::string header = by;
  for (char& c : header) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  Table table({header, "VOLUMES", "PROVISIONED", "ALLOCATED", "SNAPSHOTS", "SNAPSHOT DATA", "READ",
               "WRITTEN"});
  for (const v1::UsageGroup& g : usage.groups()) {
    table.AddRow(GroupRow(g.unlabelled() ? "(no " + by + ")" : g.value(), g));
  }
  table.AddRow(GroupRow("TOTAL", usage.total()));
  return table.Render();
}

Result<uint64_t> ParseSince(const std::string& text, std::chrono::system_clock::time_point now) {
  const auto bad = [&] {
    return Status::InvalidArgument("--since '" + text +
                                   "': expected a duration ago (90s, 10m, 2h, 7d) or a UTC time "
                                   "(2026-12-05, 2026-12-05T22:00:00Z)");
  };
  const auto now_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count());
  if (text.empty()) return bad();
  if (const char unit = text.back(); std::string_view("smhd").find(unit) != std::string::npos) {
    const std::string digits = text.substr(0, text.size() - 1);
    if (digits.empty() || digits.size() > 9 ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      return bad();
    }
    const uint64_t seconds = std::stoull(digits) * (unit == 's'   ? 1
                                                    : unit == 'm' ? 60
                                                    : unit == 'h' ? 3600
                                                                  : 86400);
    const uint64_t ago = seconds * 1'000'000'000;
    return ago >= now_ns ? 0 : now_ns - ago;
  }
  std::tm tm{};
  int frac_ms = 0;
  const char* rest = strptime(text.c_str(), "%Y-%m-%d", &tm);
  if (rest == nullptr) return bad();
  if (*rest == 'T' || *rest == ' ') {
    const char* time_rest = strptime(rest + 1, "%H:%M:%S", &tm);
    if (time_rest == nullptr) time_rest = strptime(rest + 1, "%H:%M", &tm);
    if (time_rest == nullptr) return bad();
    rest = time_rest;
    if (*rest == '.') {
      int digits = 0;
      for (++rest; *rest >= '0' && *rest <= '9'; ++rest) {
        if (digits++ < 3) frac_ms = frac_ms * 10 + (*rest - '0');
      }
      for (; digits < 3; ++digits) frac_ms *= 10;
    }
  }
  if (*rest == 'Z') ++rest;
  if (*rest != '\0') return bad();
  const time_t secs = timegm(&tm);
  if (secs < 0) return bad();
  return static_cast<uint64_t>(secs) * 1'000'000'000 + static_cast<uint64_t>(frac_ms) * 1'000'000;
}

nlohmann::ordered_json ToJson(const v1::GetAuditResponse& audit) {
  nlohmann::ordered_json records = nlohmann::ordered_json::array();
  for (const std::string& line : audit.records()) {
    nlohmann::ordered_json r = nlohmann::ordered_json::parse(line, nullptr, false);
    records.push_back(r.is_discarded() ? nlohmann::ordered_json(line) : std::move(r));
  }
  return {{"path", audit.path()}, {"truncated", audit.truncated()}, {"records", records}};
}

std::string AuditTable(const v1::GetAuditResponse& audit) {
  Table table({"TIME", "SOURCE", "ACTION", "RESULT", "CALLER", "VOLUMES", "DETAIL"});
  const nlohmann::ordered_json records = ToJson(audit)["records"];
  for (const nlohmann::ordered_json& r : records) {
    if (!r.is_object()) continue;
    const auto text = [&](const char* key) {
      auto it = r.find(key);
      return it != r.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    std::string caller = "-";
    if (auto c = r.find("caller"); c != r.end() && c->is_object()) {
      caller = "uid " + c->value("uid", nlohmann::ordered_json(0)).dump() + " pid " +
               c->value("pid", nlohmann::ordered_json(0)).dump();
      if (const std::string cmd = c->value("command", ""); !cmd.empty()) caller += " " + cmd;
    }
    std::string volumes;
    if (auto v = r.find("volumes"); v != r.end() && v->is_array()) {
      for (const auto& name : *v) volumes += (volumes.empty() ? "" : ",") + name.get<std::string>();
    }
    std::string detail = text("error");
    if (auto k = r.find("kubernetes"); k != r.end() && k->is_object()) {
      const std::string pvc = k->value("pvc_namespace", "") + "/" + k->value("pvc_name", "");
      if (pvc != "/") detail = "pvc " + pvc + (detail.empty() ? "" : "; " + detail);
    }
    table.AddRow({text("time"), text("source"), text("action"), text("result"), caller,
                  volumes.empty() ? "-" : volumes, detail.empty() ? "-" : detail});
  }
  std::string out = table.Render();
  if (audit.truncated()) out += "(older records left out: use --limit or --since)\n";
  return out;
}

void OpsCommands::AddCommands(CLI::App& app) {
  CLI::App* usage = app.add_subcommand(
      "usage",
      "Volumes, provisioned, allocated and snapshot bytes and I/O summed per value of a label "
      "(e.g. --by label:team, --by label:csi.storage.k8s.io/pvc/namespace) or per pool");
  usage->add_option("--by", by_, "label:KEY or pool")->required()->type_name("label:KEY|pool");
  usage->callback(SelectAction(action_, this, &OpsCommands::RunUsage));

  CLI::App* audit = app.add_subcommand(
      "audit",
      "Show the audit log: every change made through the control API or CSI, who made it "
      "(uid, pid) and its result, oldest first");
  audit->add_option("--since", since_,
                    "Only records from this time: 90s, 10m, 2h, 7d ago, or "
                    "a UTC time (2026-12-05, 2026-12-05T22:00:00Z)");
  audit->add_option("--volume", audit_volume_, "Only records about this volume");
  audit->add_option("--limit", audit_limit_, "The newest this many records (default 1000)")
      ->check(CLI::Range(1u, 100000u));
  audit->callback(SelectAction(action_, this, &OpsCommands::RunAudit));
}

int OpsCommands::RunAudit(ControlClient& client, Format format) {
  v1::GetAuditRequest req;
  if (!since_.empty()) {
    Result<uint64_t> since = ParseSince(since_, std::chrono::system_clock::now());
    if (!since.ok()) {
      err_ << "shale: " << since.status().message() << "\n";
      return kExitUsage;
    }
    req.set_since_unix_ns(*since);
  }
  req.set_volume(audit_volume_);
  req.set_limit(audit_limit_);
  return RunRpc(client, &v1::Control::Stub::GetAudit, req, err_,
                [&](const v1::GetAuditResponse& resp) {
                  format == Format::kJson ? void(out_ << ToJson(resp).dump(2) << "\n")
                                          : void(out_ << AuditTable(resp));
                  return kExitOk;
                });
}

int OpsCommands::RunUsage(ControlClient& client, Format format) {
  v1::GetUsageRequest req;
  req.set_by(by_);
  return RunRpc(client, &v1::Control::Stub::GetUsage, req, err_,
                [&](const v1::GetUsageResponse& resp) {
                  format == Format::kJson ? void(out_ << ToJson(resp).dump(2) << "\n")
                                          : void(out_ << UsageTable(resp));
                  return kExitOk;
                });
}

}  // namespace shale::cli
