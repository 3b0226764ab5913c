// Operability commands of the shale CLI (docs/operations.md): `usage --by label:KEY|pool`,
// `audit [--since T] [--volume NAME] [--limit N]`.
// RunShale() owns one OpsCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "api/control.pb.h"
#include "cli/control_client.h"
#include "engine/common/result.h"

namespace shale::cli {

class OpsCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  OpsCommands(Action* action, std::ostream& out, std::ostream& err)
      : action_(action), out_(out), err_(err) {}
  OpsCommands(const OpsCommands&) = delete;
  OpsCommands& operator=(const OpsCommands&) = delete;

  // Adds `usage` and `audit` under `app`.
  void AddCommands(CLI::App& app);

 private:
  int RunUsage(ControlClient& client, Format format);
  int RunAudit(ControlClient& client, Format format);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  std::string by_;
  std::string since_;
  std::string audit_volume_;
  uint32_t audit_limit_ = 0;
};

// `shale usage` output: one row per group, then the total; JSON with every figure.
std::string UsageTable(const v1::GetUsageResponse& usage);
nlohmann::ordered_json ToJson(const v1::GetUsageResponse& usage);

// `shale audit` output: a table of the records; JSON: {"path", "truncated", "records": [...]}
// with every record as shaled wrote it.
std::string AuditTable(const v1::GetAuditResponse& audit);
nlohmann::ordered_json ToJson(const v1::GetAuditResponse& audit);
// --since: "90s"/"10m"/"2h"/"7d" before `now`, or a UTC time "2026-12-05[T22:00[:00[.123]]][Z]";
// nanoseconds since the epoch.
Result<uint64_t> ParseSince(const std::string& text, std::chrono::system_clock::time_point now);

}  // namespace shale::cli
