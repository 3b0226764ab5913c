// Cluster node commands of the shale CLI (issues 11, 12): `node list|cordon|uncordon|drain|
// forget|label`.
// RunShale() owns one NodeCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cli/control_client.h"

namespace shale::cli {

// `node list` as a table: NAME, STATE, REPLICA ADDRESS, FREE, POOLS (the local node marked).
std::string NodeTable(const v1::ListNodesResponse& nodes);
// {"nodes": [{"name", "state", "replica_address", "free_bytes", "local", "pools": [...],
// "error"?}]}, exact byte counts.
nlohmann::ordered_json ToJson(const v1::ListNodesResponse& nodes);

class NodeCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  NodeCommands(Action* action, std::ostream& out, std::ostream& err)
      : action_(action), out_(out), err_(err) {}
  NodeCommands(const NodeCommands&) = delete;
  NodeCommands& operator=(const NodeCommands&) = delete;

  // Adds `node ...` under `app`.
  void AddCommands(CLI::App& app);

 private:
  int RunList(ControlClient& client, Format format);
  int RunCordon(ControlClient& client, Format format);
  int RunUncordon(ControlClient& client, Format format);
  int SetCordon(ControlClient& client, Format format, bool cordoned);
  int RunDrain(ControlClient& client, Format format);
  int RunForget(ControlClient& client, Format format);
  int RunLabel(ControlClient& client, Format format);

  std::string name_;
  double timeout_s_ = 3600;
  bool no_wait_ = false;
  std::vector<std::string> label_changes_;  // KEY=VALUE or KEY-

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
};

}  // namespace shale::cli
