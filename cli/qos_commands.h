// QoS commands of the shale CLI: `qos set|show|pool-budget`, `volume stats` (with --watch) and
// the QoS flags of `volume create`. RunShale() owns one QosCommands for the parse and the run.
#pragma once

#include <CLI/CLI.hpp>
#include <array>
#include <ostream>
#include <string>

#include "api/control.pb.h"
#include "cli/control_client.h"

namespace shale::cli {

class QosCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object.
  QosCommands(Action* action, std::ostream& out, std::ostream& err)
      : action_(action), out_(out), err_(err) {}
  QosCommands(const QosCommands&) = delete;
  QosCommands& operator=(const QosCommands&) = delete;

  // Adds `qos set|show|pool-budget` under `app`.
  void AddQosCommand(CLI::App& app);
  // Adds `stats` under `volume`.
  void AddVolumeCommands(CLI::App* volume_cmd);
  // Adds --iops, --bps, --burst-iops, ... --weight, --reservation-iops to `volume create`.
  void AddCreateFlags(CLI::App* volume_create);
  // After the parse: when any QoS flag of `volume create` was given, fills req->qos (and
  // returns true); on a bad value returns false with `error` (the flag and why).
  bool FillCreate(v1::CreateVolumeRequest* req, std::string* error);

  // One field per settings field; `flag` is its option, `field` the API name.
  enum class Kind { kCount, kBytes, kSeconds, kWeight, kUnit };
  struct Flag {
    const char* flag;
    const char* field;
    Kind kind;
    const char* help;
  };

 private:
  struct FlagValues {
    std::array<std::string, 16> text;
    std::array<CLI::Option*, 16> option{};
  };
  void AddSettingsFlags(CLI::App* cmd, FlagValues* values);
  // Applies every given flag to `settings`; false with `error` on a bad value.
  static bool Apply(const FlagValues& values, v1::QosSettings* settings, std::string* error);
  static bool AnyGiven(const FlagValues& values);
  void AddRebuildCommand(CLI::App* qos_cmd);
  int RunSet(ControlClient& client, Format format);
  int RunStats(ControlClient& client, Format format);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  std::string volume_, pool_;
  FlagValues set_flags_, create_flags_;
  bool clear_ = false;
  bool watch_ = false;
  std::string interval_ = "1s";
  unsigned count_ = 0;
  std::string budget_;
  std::string rebuild_bps_;
};

}  // namespace shale::cli
