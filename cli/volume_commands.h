// Volume commands of the shale CLI: `volume create|list|show|resize|delete`. The other groups
// add their own subcommands under `volume` (QosCommands: `stats` and the QoS flags of `create`;
// SnapshotCommands: `flatten`, `revert`). RunShale() owns one VolumeCommands for the parse and
// the run.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "cli/control_client.h"
#include "cli/replica_flags.h"

namespace shale::cli {

class QosCommands;

class VolumeCommands {
 public:
  // A selected command sets `*action`; `qos` adds its flags to `volume create` and fills their
  // part of the request. Everything passed must outlive the object.
  VolumeCommands(Action* action, std::ostream& out, std::ostream& err, QosCommands* qos)
      : action_(action), out_(out), err_(err), qos_(qos) {}
  VolumeCommands(const VolumeCommands&) = delete;
  VolumeCommands& operator=(const VolumeCommands&) = delete;

  // Adds `volume create|list|show|resize|delete` under `app`; returns the `volume` command, for
  // the subcommands of the other groups.
  CLI::App* AddCommands(CLI::App& app);

 private:
  int RunCreate(ControlClient& client, Format format);
  int RunList(ControlClient& client, Format format);
  int RunShow(ControlClient& client, Format format);
  int RunResize(ControlClient& client, Format format);
  int RunDelete(ControlClient& client, Format format);
  int RunForceRecover(ControlClient& client, Format format);
  int RunTakeOver(ControlClient& client, Format format);
  int RunAttach(ControlClient& client, Format format);
  int RunDetach(ControlClient& client, Format format);
  int PrintAttachment(const v1::VolumeAttachment& resp, Format format);
  // Prints one volume (create, show, resize) and returns the exit code.
  int PrintVolume(Format format, const v1::Volume& volume);
  void PrintJson(const nlohmann::ordered_json& json);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  QosCommands* const qos_;
  // Parsed arguments (one command runs per invocation).
  std::string name_, size_, pool_, from_;
  std::vector<std::string> labels_;
  bool read_only_ = false;
  bool force_ = false;
  ReplicaFlags replica_flags_;
};

}  // namespace shale::cli
