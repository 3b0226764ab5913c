#include "cli/ops_commands.h"

#include <cctype>
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

void OpsCommands::AddCommands(CLI::App& app) {
  CLI::App* usage = app.add_subcommand(
      "usage",
      "Volumes, provisioned, allocated and snapshot bytes and I/O summed per value of a label "
      "(e.g. --by label:team, --by label:csi.storage.k8s.io/pvc/namespace) or per pool");
  usage->add_option("--by", by_, "label:KEY or pool")->required()->type_name("label:KEY|pool");
  usage->callback(SelectAction(action_, this, &OpsCommands::RunUsage));
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
