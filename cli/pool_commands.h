// Pool commands of the shale CLI: `pool create|list|show|delete|check|set|expand`. RunShale() owns
// one PoolCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <string>

#include "cli/control_client.h"

namespace shale::cli {

class PoolCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  // `err_is_terminal`: progress (pool check) is drawn as a bar on `err`.
  PoolCommands(Action* action, std::ostream& out, std::ostream& err, bool err_is_terminal)
      : action_(action), out_(out), err_(err), err_is_terminal_(err_is_terminal) {}
  PoolCommands(const PoolCommands&) = delete;
  PoolCommands& operator=(const PoolCommands&) = delete;

  // Adds `pool ...` under `app`.
  void AddCommands(CLI::App& app);

 private:
  int RunCreate(ControlClient& client, Format format);
  int RunList(ControlClient& client, Format format);
  int RunShow(ControlClient& client, Format format);
  int RunDelete(ControlClient& client, Format format);
  int RunCheck(ControlClient& client, Format format);
  int RunSet(ControlClient& client, Format format);
  int RunExpand(ControlClient& client, Format format);
  // "300%" or "300" -> 300 (1..100000); nullopt otherwise.
  static std::optional<uint32_t> OvercommitPercent(std::string_view text);
  // Prints one pool (create, show) and returns the exit code.
  int PrintPool(Format format, const v1::Pool& pool);
  void PrintJson(const nlohmann::ordered_json& json);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  const bool err_is_terminal_;
  // Parsed arguments (one command runs per invocation).
  std::string name_, device_, size_, cluster_size_;
  uint32_t warn_ = 0, critical_ = 0;  // 0: unchanged
  std::string overcommit_;            // "300%", "300" or "unlimited"; empty: unchanged
  bool force_ = false;
};

}  // namespace shale::cli
