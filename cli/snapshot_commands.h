// Snapshot commands of the shale CLI: `snapshot create|list|show|delete|verify|export|import`,
// `snapshot create-group|list-groups|show-group|delete-group`,
// `clone create|list`, and `volume flatten|revert`. RunShale() owns one SnapshotCommands for
// the parse and the run (docs/snapshots.md, "CLI and control API").
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cli/control_client.h"
#include "cli/replica_flags.h"

namespace shale::cli {

class SnapshotCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object. Flatten
  // progress goes to `err` only when `err_is_terminal`.
  SnapshotCommands(Action* action, std::ostream& out, std::ostream& err, bool err_is_terminal)
      : action_(action), out_(out), err_(err), err_is_terminal_(err_is_terminal) {}
  SnapshotCommands(const SnapshotCommands&) = delete;
  SnapshotCommands& operator=(const SnapshotCommands&) = delete;

  // Adds `snapshot ...` and `clone ...` under `app`.
  void AddCommands(CLI::App& app);
  // Adds `flatten` and `revert` under `volume`.
  void AddVolumeCommands(CLI::App* volume_cmd);

 private:
  void AddSnapshotCommand(CLI::App& app);  // `snapshot create|list|show|delete|verify|...`
  void AddCloneCommand(CLI::App& app);     // `clone create|list`
  // `snapshot create-group|list-groups|show-group|delete-group` (group_commands.cc).
  void AddGroupCommands(CLI::App* snapshot_cmd);
  int RunCreateGroup(ControlClient& client, Format format);
  int RunListGroups(ControlClient& client, Format format);
  int RunShowGroup(ControlClient& client, Format format);
  int RunDeleteGroup(ControlClient& client, Format format);
  int RunCreate(ControlClient& client, Format format);
  int RunList(ControlClient& client, Format format);
  int RunShow(ControlClient& client, Format format);
  int RunDelete(ControlClient& client, Format format);
  int RunVerify(ControlClient& client, Format format);
  int RunExport(ControlClient& client, Format format);
  int RunImport(ControlClient& client, Format format);
  int RunClone(ControlClient& client, Format format);
  int RunListClones(ControlClient& client, Format format);
  int RunFlatten(ControlClient& client, Format format);
  int RunRevert(ControlClient& client, Format format);
  void PrintJson(const nlohmann::ordered_json& json);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  const bool err_is_terminal_;
  // Parsed arguments (one command runs per invocation).
  std::string volume_, snapshot_, ref_, file_, base_, pool_, target_, group_;
  std::vector<std::string> labels_, volumes_;
  bool wait_digest_ = false;
  bool wait_durable_ = false;
  bool force_ = false;
  bool all_ = false;
  bool overwrite_ = false;
  bool read_only_ = false;
  // clone create: a replicated clone (cluster mode).
  ReplicaFlags replica_flags_;
};

}  // namespace shale::cli
