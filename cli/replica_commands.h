// Replica commands of the shale CLI (issue 11): `replica list NAME` and `replica wait NAME
// [--timeout S]`, through the target's shaled (the node where the volume was created).
// RunShale() owns one ReplicaCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "cli/control_client.h"

namespace shale::cli {

// `replica list` as a table: NODE, STATE, GENERATION, REBUILD (done/total), SENT, ERROR.
std::string ReplicaTable(const v1::ListReplicasResponse& replicas);
// ToJson(const v1::ListReplicasResponse&): declared in cli/output.h (`volume show` uses it too).

class ReplicaCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  ReplicaCommands(Action* action, std::ostream& out, std::ostream& err)
      : action_(action), out_(out), err_(err) {}
  ReplicaCommands(const ReplicaCommands&) = delete;
  ReplicaCommands& operator=(const ReplicaCommands&) = delete;

  // Adds `replica ...` under `app`.
  void AddCommands(CLI::App& app);

 private:
  int RunList(ControlClient& client, Format format);
  int RunWait(ControlClient& client, Format format);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  std::string name_;
  double timeout_s_ = 600;
};

}  // namespace shale::cli
