#include "cli/cli_commands.h"

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <vector>

#include "api/control.grpc.pb.h"
#include "api/control_api.h"
#include "cli/backup_commands.h"
#include "cli/control_client.h"
#include "cli/node_commands.h"
#include "cli/ops_commands.h"
#include "cli/output.h"
#include "cli/pool_commands.h"
#include "cli/qos_commands.h"
#include "cli/replica_commands.h"
#include "cli/snapshot_commands.h"
#include "cli/volume_commands.h"
#include "engine/common/labels.h"
#include "engine/common/units.h"

#ifndef SHALE_VERSION
#error "SHALE_VERSION must be defined by the build"
#endif

namespace shale::cli {

namespace {

constexpr size_t kMaxUnixSocketPath = sizeof(sockaddr_un::sun_path) - 1;
constexpr unsigned kDefaultTimeoutSeconds = 60;
constexpr char kStartHint[] =
    "start it with scripts/quickstart or build/bin/shaled, or point --endpoint or "
    "$SHALE_ENDPOINT at a running shaled";

std::string OneLine(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\n' || c == '\r') {
      if (!out.empty() && out.back() != ' ') out += ' ';
      continue;
    }
    out += c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// The CLI prints its own errors; gRPC's internal diagnostics would only add noise to them.
void DropGrpcLog(gpr_log_func_args* /*args*/) {}

}  // namespace

std::string ControlClient::AuditError(const grpc::ClientContext& ctx) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find(api::kAuditErrorMetadataKey);
  return it == trailers.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

bool ReportRpcError(const ControlClient& client, const std::string& error, std::ostream& err) {
  if (!client.audit_error().empty()) {
    err << "shale: warning: shaled could not write the audit record of this change: "
        << client.audit_error() << "\n";
  }
  if (error.empty()) return true;
  err << "shale: " << error << "\n";
  return false;
}

std::string DescribeRpcError(const grpc::Status& status, const grpc::ClientContext& ctx,
                             const std::string& endpoint, unsigned timeout_seconds) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (trailers.find(api::kShaleErrorMetadataKey) != trailers.end()) {
    // shaled's own answer: its message is written for people already.
    return OneLine(status.error_message());
  }
  const std::string& detail = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE: {
      std::string reason = "connection failed";
      if (Contains(detail, "No such file or directory")) {
        reason = "no such socket";
      } else if (Contains(detail, "Connection refused")) {
        reason = "connection refused (nothing is listening)";
      } else if (Contains(detail, "Permission denied")) {
        reason = "permission denied (the socket is mode 0600: run shale as the user of shaled)";
      }
      return "cannot reach shaled at " + endpoint + ": " + reason + "; " + kStartHint;
    }
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "shaled at " + endpoint + " did not answer within " + std::to_string(timeout_seconds) +
             "s (raise --timeout for long operations)";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "shaled at " + endpoint + " does not know this command (is it older than this shale?)";
    default:
      return "request to shaled at " + endpoint + " failed: " + OneLine(detail);
  }
}

CLI::Validator SizeValidator(uint64_t max) {
  return CLI::Validator(
      [max](std::string& text) -> std::string {
        Result<uint64_t> size = ParseSize(text);
        if (!size.ok()) return std::string(size.status().message());
        if (*size == 0) return "size must be greater than 0";
        if (*size > max)
          return "size '" + text + "' is too large (at most " + FormatSize(max) + ")";
        return {};
      },
      /*validator_desc=*/"");
}

uint64_t SizeOf(const std::string& text) { return ParseSize(text).value(); }

namespace {

// The most deeply selected (sub)command and its words after "shale" ("volume create").
const CLI::App* DeepestSelected(const CLI::App& app, std::string* words) {
  const CLI::App* current = &app;
  words->clear();
  while (true) {
    std::vector<CLI::App*> selected = current->get_subcommands();
    if (selected.empty()) return current;
    current = selected.front();
    if (!words->empty()) *words += ' ';
    *words += current->get_name();
  }
}

std::vector<const CLI::App*> Children(const CLI::App& app) {
  return app.get_subcommands([](const CLI::App*) { return true; });
}

std::string CommandNames(const CLI::App& app) {
  std::string names;
  for (const CLI::App* sub : Children(app)) {
    if (!names.empty()) names += ", ";
    names += sub->get_name();
  }
  return names;
}

// One line: "shale: volume create: --size is required (see 'shale volume create --help')".
std::string FormatParseError(const CLI::App& app, const CLI::ParseError& e) {
  std::string words;
  const CLI::App* sub = DeepestSelected(app, &words);
  const std::string prefix = words.empty() ? "shale: " : "shale: " + words + ": ";
  const std::string hint =
      " (see 'shale " + (words.empty() ? std::string() : words + " ") + "--help')";
  if (!Children(*sub).empty()) {
    // CLI11 reports the missing subcommand before the leftover words, so look at those first:
    // "shale volume frob" is an unknown command, not a missing one.
    for (const std::string& word : app.remaining(/*recurse=*/true)) {
      if (!word.empty() && word.front() != '-') {
        return prefix + "unknown command '" + word + "' (choose one of: " + CommandNames(*sub) +
               ")" + hint;
      }
    }
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      return prefix + "missing command (choose one of: " + CommandNames(*sub) + ")" + hint;
    }
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    std::string words_left;
    for (const std::string& word : app.remaining(/*recurse=*/true)) {
      words_left += (words_left.empty() ? "" : " ") + word;
    }
    if (!words_left.empty()) return prefix + "unexpected argument '" + words_left + "'" + hint;
  }
  std::string line = prefix + OneLine(e.what());
  // A bad value explains itself; a malformed command line also points at the help.
  if (dynamic_cast<const CLI::ValidationError*>(&e) == nullptr &&
      dynamic_cast<const CLI::ConversionError*>(&e) == nullptr) {
    line += hint;
  }
  return line;
}

}  // namespace

bool ParseLabels(const std::vector<std::string>& specs, std::map<std::string, std::string>* out,
                 std::string* error) {
  for (const std::string& spec : specs) {
    // The daemon's rules (engine/common/labels.h), checked here too for an early, clear error.
    Result<std::pair<std::string, std::string>> kv = ParseLabel(spec);
    if (!kv.ok()) {
      *error = "--label: " + std::string(kv.status().message());
      return false;
    }
    if (!out->emplace(kv->first, kv->second).second) {
      *error = "--label: key '" + kv->first + "' given more than once";
      return false;
    }
  }
  if (out->size() > kMaxLabels) {
    *error = "--label: at most " + std::to_string(kMaxLabels) + " labels, got " +
             std::to_string(out->size());
    return false;
  }
  return true;
}

Result<std::string> ResolveEndpoint(std::string_view text) {
  std::string path;
  if (text.starts_with("unix://")) {
    path = text.substr(7);
  } else if (text.starts_with("unix:")) {
    path = text.substr(5);
  } else if (text.starts_with("/") || text.starts_with(".")) {
    path = text;
  } else {
    if (text.empty()) return Status::InvalidArgument("endpoint must not be empty");
    return std::string(text);
  }
  if (path.empty()) {
    return Status::InvalidArgument("endpoint '" + std::string(text) + "' names no socket path");
  }
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return Status::InvalidArgument("endpoint '" + std::string(text) + "': " + ec.message());
  path = abs.lexically_normal().string();
  if (path.size() > kMaxUnixSocketPath) {
    return Status::InvalidArgument("socket path '" + path + "' is longer than the " +
                                   std::to_string(kMaxUnixSocketPath) +
                                   " bytes a UNIX socket allows");
  }
  return "unix://" + path;
}

namespace {

// The options every command takes (they may also follow the command).
struct GlobalFlags {
  std::string endpoint;
  std::string output = "table";
  unsigned timeout_seconds = kDefaultTimeoutSeconds;
};

// Everything of `app` but its commands: version, help layout, footer, the global flags.
void ConfigureApp(CLI::App& app, GlobalFlags* flags) {
  app.set_version_flag("--version", std::string("shale ") + SHALE_VERSION);
  app.require_subcommand(1);
  // Global options may also follow the command: `shale volume list -o json`.
  app.fallthrough();
  app.get_formatter()->column_width(30);
  app.footer(
      std::string("Endpoint: --endpoint, else $SHALE_ENDPOINT, else ") + kDefaultEndpoint +
      " (the socket of `shaled` started with no options in this directory, e.g. by "
      "scripts/quickstart).\nSizes take K, M, G, T suffixes (powers of 1024).\n"
      "Exit codes: 0 success, 1 the operation failed or shaled is unreachable, 2 usage error.");

  app.add_option("--endpoint", flags->endpoint, "Control endpoint of shaled (unix://PATH)")
      ->type_name("ENDPOINT");
  app.add_option("-o,--output", flags->output, "Output format")
      ->check(CLI::IsMember({"table", "json"}))
      ->type_name("FORMAT")
      ->capture_default_str();
  app.add_option("--timeout", flags->timeout_seconds, "Seconds to wait for shaled's answer")
      ->check(CLI::Range(1u, 86400u))
      ->type_name("SECONDS")
      ->capture_default_str();
}

// After a successful parse: resolves the endpoint and runs the selected command.
int RunAction(const Action& action, const GlobalFlags& flags, std::ostream& err) {
  std::string endpoint_text = flags.endpoint;
  if (endpoint_text.empty()) {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing sets the environment concurrently.
    const char* env = std::getenv(kEndpointEnvVar);
    endpoint_text = env != nullptr && env[0] != '\0' ? env : kDefaultEndpoint;
  }
  Result<std::string> endpoint = ResolveEndpoint(endpoint_text);
  if (!endpoint.ok()) {
    err << "shale: " << endpoint.status().message() << "\n";
    return kExitUsage;
  }
  ControlClient client(*endpoint, flags.timeout_seconds);
  return action(client, flags.output == "json" ? Format::kJson : Format::kTable);
}

}  // namespace

int RunShale(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  gpr_set_log_function(DropGrpcLog);

  CLI::App app(
      "shale: admin CLI of Shale; manages pools, thin volumes, snapshots, clones and their NBD "
      "exports through shaled",
      "shale");
  GlobalFlags flags;
  ConfigureApp(app, &flags);

  // What the selected command does once the command line is parsed; set by exactly one leaf.
  Action action;
  auto print_json = [&out](const nlohmann::ordered_json& json) { out << json.dump(2) << "\n"; };

  // --- status ---
  CLI::App* status_cmd =
      app.add_subcommand("status", "Show the daemon's version, data dir, uptime and counts");
  status_cmd->callback([&] {
    action = [&](ControlClient& client, Format format) {
      return RunRpc(client, &v1::Control::Stub::GetStatus, v1::GetStatusRequest(), err,
                    [&](const v1::GetStatusResponse& resp) {
                      format == Format::kJson ? print_json(ToJson(resp))
                                              : void(out << StatusView(resp));
                      return kExitOk;
                    });
    };
  });

  // The command groups, each in its own file. Progress (flatten, export, import, pool check) is
  // drawn as a bar only on a terminal.
  const bool err_is_terminal = &err == &std::cerr && isatty(STDERR_FILENO) == 1;
  PoolCommands pool_commands(&action, out, err, err_is_terminal);
  OpsCommands ops_commands(&action, out, err);
  QosCommands qos_commands(&action, out, err);
  SnapshotCommands snapshot_commands(&action, out, err, err_is_terminal);
  VolumeCommands volume_commands(&action, out, err, &qos_commands);

  pool_commands.AddCommands(app);
  // `volume ...`: create|list|show|resize|delete, then `stats` (QoS), `flatten|revert`
  // (snapshots); `volume create` also takes the QoS flags.
  CLI::App* volume_cmd = volume_commands.AddCommands(app);
  qos_commands.AddVolumeCommands(volume_cmd);
  snapshot_commands.AddVolumeCommands(volume_cmd);

  // --- export ---
  CLI::App* export_cmd =
      app.add_subcommand("export",
                         "NBD exports (every volume under its name, every snapshot read-only as "
                         "VOLUME@SNAP) and their clients");
  export_cmd->require_subcommand(1);
  CLI::App* export_list = export_cmd->add_subcommand(
      "list", "List every export with its connected clients (peer, since, requests served)");
  export_list->callback([&] {
    action = [&](ControlClient& client, Format format) {
      return RunRpc(client, &v1::Control::Stub::ListExports, v1::ListExportsRequest(), err,
                    [&](const v1::ListExportsResponse& resp) {
                      format == Format::kJson ? print_json(ToJson(resp))
                                              : void(out << ExportTable(resp));
                      return kExitOk;
                    });
    };
  });

  // `qos ...`, `snapshot ...`, `clone ...`, `node ...` and `replica ...` (cluster mode),
  // `backup ...`.
  qos_commands.AddQosCommand(app);
  snapshot_commands.AddCommands(app);
  NodeCommands node_commands(&action, out, err);
  node_commands.AddCommands(app);
  ReplicaCommands replica_commands(&action, out, err);
  replica_commands.AddCommands(app);
  BackupCommands backup_commands(&action, out, err,
                                 &err == &std::cerr && isatty(STDERR_FILENO) == 1);
  backup_commands.AddCommands(app);
  // `usage` (docs/operations.md).
  ops_commands.AddCommands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();  // the help of the selected (sub)command
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return kExitOk;
  } catch (const CLI::CallForVersion& e) {
    out << e.what() << "\n";
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    err << FormatParseError(app, e) << "\n";
    return kExitUsage;
  }
  if (!action) {
    // require_subcommand() on every level makes this unreachable; keep the promise of one line.
    err << "shale: missing command (see 'shale --help')\n";
    return kExitUsage;
  }

  return RunAction(action, flags, err);
}

}  // namespace shale::cli
