// Operability commands of the shale CLI (docs/operations.md): `usage --by label:KEY|pool`.
// RunShale() owns one OpsCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "api/control.pb.h"
#include "cli/control_client.h"

namespace shale::cli {

class OpsCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  OpsCommands(Action* action, std::ostream& out, std::ostream& err)
      : action_(action), out_(out), err_(err) {}
  OpsCommands(const OpsCommands&) = delete;
  OpsCommands& operator=(const OpsCommands&) = delete;

  // Adds `usage` under `app`.
  void AddCommands(CLI::App& app);

 private:
  int RunUsage(ControlClient& client, Format format);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  std::string by_;
};

// `shale usage` output: one row per group, then the total; JSON with every figure.
std::string UsageTable(const v1::GetUsageResponse& usage);
nlohmann::ordered_json ToJson(const v1::GetUsageResponse& usage);

}  // namespace shale::cli
