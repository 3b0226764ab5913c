// `shale snapshot create-group|list-groups|show-group|delete-group`: group snapshots, member
// snapshots VOLUME@NAME of several volumes taken at one instant (docs/lifecycle.md, "Group
// snapshots").
#include <map>

#include "cli/output.h"
#include "cli/snapshot_commands.h"

namespace shale::cli {

namespace {

std::string Join(const google::protobuf::RepeatedPtrField<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "-" : out;
}

nlohmann::ordered_json GroupJson(const v1::GroupSnapshot& g) {
  nlohmann::ordered_json j;
  j["name"] = g.name();
  j["id"] = g.id();
  j["pool"] = g.pool();
  j["volumes"] = std::vector<std::string>(g.volumes().begin(), g.volumes().end());
  j["snapshots"] = std::vector<std::string>(g.snapshots().begin(), g.snapshots().end());
  j["missing"] = std::vector<std::string>(g.missing().begin(), g.missing().end());
  j["labels"] = std::map<std::string, std::string>(g.labels().begin(), g.labels().end());
  j["created_unix_ns"] = g.created_unix_ns();
  return j;
}

std::string GroupView(const v1::GroupSnapshot& g) {
  return RenderKeyValues(std::vector<std::pair<std::string, std::string>>{
      {"Group", g.name()},
      {"Id", g.id()},
      {"Created", FormatUnixNanos(g.created_unix_ns())},
      {"Volumes", Join(g.volumes())},
      {"Snapshots", Join(g.snapshots())},
      {"Missing", Join(g.missing())},
      {"Labels", FormatLabels(g.labels())},
      {"Record pool", g.pool()},
  });
}

}  // namespace

void SnapshotCommands::AddGroupCommands(CLI::App* snapshot_cmd) {
  CLI::App* create = snapshot_cmd->add_subcommand(
      "create-group",
      "Snapshot several volumes at one instant as VOLUME@NAME each (a consistent experiment "
      "version); same name and volumes again: the existing group");
  create->add_option("NAME", group_, "Group name (every member snapshot's name)")->required();
  create->add_option("VOLUMES", volumes_, "The volumes (at least one)")->required();
  create->add_option("--label", labels_, "Attach a label to the group and its members; repeatable")
      ->type_name("KEY=VALUE");
  create->callback(SelectAction(action_, this, &SnapshotCommands::RunCreateGroup));

  CLI::App* list = snapshot_cmd->add_subcommand("list-groups", "List group snapshots");
  list->callback(SelectAction(action_, this, &SnapshotCommands::RunListGroups));

  CLI::App* show = snapshot_cmd->add_subcommand("show-group", "Show a group snapshot");
  show->add_option("NAME", group_, "The group")->required();
  show->callback(SelectAction(action_, this, &SnapshotCommands::RunShowGroup));

  CLI::App* del = snapshot_cmd->add_subcommand(
      "delete-group",
      "Delete a group snapshot and its member snapshots (clones made from them keep working)");
  del->add_option("NAME", group_, "The group")->required();
  del->add_flag("--force", force_, "Disconnect the members' NBD clients first");
  del->callback(SelectAction(action_, this, &SnapshotCommands::RunDeleteGroup));
}

int SnapshotCommands::RunCreateGroup(ControlClient& client, Format format) {
  std::map<std::string, std::string> labels;
  std::string error;
  if (!ParseLabels(labels_, &labels, &error)) {
    err_ << "shale: snapshot create-group: " << error << "\n";
    return kExitUsage;
  }
  v1::CreateGroupSnapshotRequest req;
  req.set_name(group_);
  for (const std::string& v : volumes_) req.add_volumes(v);
  req.mutable_labels()->insert(labels.begin(), labels.end());
  return RunRpc(client, &v1::Control::Stub::CreateGroupSnapshot, req, err_,
                [&](const v1::GroupSnapshot& g) {
                  format == Format::kJson ? PrintJson(GroupJson(g)) : void(out_ << GroupView(g));
                  return kExitOk;
                });
}

int SnapshotCommands::RunListGroups(ControlClient& client, Format format) {
  return RunRpc(client, &v1::Control::Stub::ListGroupSnapshots, v1::ListGroupSnapshotsRequest(),
                err_, [&](const v1::ListGroupSnapshotsResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json groups = nlohmann::ordered_json::array();
                    for (const v1::GroupSnapshot& g : resp.groups()) groups.push_back(GroupJson(g));
                    PrintJson({{"groups", groups}});
                    return kExitOk;
                  }
                  Table table({"GROUP", "CREATED", "SNAPSHOTS", "LABELS", "NOTES"});
                  for (const v1::GroupSnapshot& g : resp.groups()) {
                    table.AddRow({g.name(), FormatUnixNanos(g.created_unix_ns()),
                                  Join(g.snapshots()), FormatLabels(g.labels()),
                                  g.missing().empty() ? "-" : "missing " + Join(g.missing())});
                  }
                  out_ << table.Render();
                  return kExitOk;
                });
}

int SnapshotCommands::RunShowGroup(ControlClient& client, Format format) {
  v1::GetGroupSnapshotRequest req;
  req.set_name(group_);
  return RunRpc(client, &v1::Control::Stub::GetGroupSnapshot, req, err_,
                [&](const v1::GroupSnapshot& g) {
                  format == Format::kJson ? PrintJson(GroupJson(g)) : void(out_ << GroupView(g));
                  return kExitOk;
                });
}

int SnapshotCommands::RunDeleteGroup(ControlClient& client, Format format) {
  v1::DeleteGroupSnapshotRequest req;
  req.set_name(group_);
  req.set_force(force_);
  return RunRpc(client, &v1::Control::Stub::DeleteGroupSnapshot, req, err_,
                [&](const v1::DeleteGroupSnapshotResponse&) {
                  if (format == Format::kJson) {
                    PrintJson({{"name", group_}, {"deleted", true}});
                  } else {
                    out_ << "group snapshot '" << group_ << "' deleted with its members\n";
                  }
                  return kExitOk;
                });
}

}  // namespace shale::cli
