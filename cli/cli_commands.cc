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
#include "cli/control_client.h"
#include "cli/output.h"
#include "cli/qos_commands.h"
#include "cli/snapshot_commands.h"
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

int RunShale(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  gpr_set_log_function(DropGrpcLog);

  CLI::App app(
      "shale: admin CLI of Shale; manages pools, thin volumes, snapshots, clones and their NBD "
      "exports through shaled",
      "shale");
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

  std::string endpoint_flag;
  std::string output = "table";
  unsigned timeout_seconds = kDefaultTimeoutSeconds;
  app.add_option("--endpoint", endpoint_flag, "Control endpoint of shaled (unix://PATH)")
      ->type_name("ENDPOINT");
  app.add_option("-o,--output", output, "Output format")
      ->check(CLI::IsMember({"table", "json"}))
      ->type_name("FORMAT")
      ->capture_default_str();
  app.add_option("--timeout", timeout_seconds, "Seconds to wait for shaled's answer")
      ->check(CLI::Range(1u, 86400u))
      ->type_name("SECONDS")
      ->capture_default_str();

  // What the selected command does once the command line is parsed; set by exactly one leaf.
  std::function<int(ControlClient&, Format)> action;
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

  // --- pool ---
  CLI::App* pool_cmd =
      app.add_subcommand("pool", "Manage pools (block devices or files holding volumes)");
  pool_cmd->require_subcommand(1);
  std::string pool_name, pool_device, pool_size, pool_cluster_size;
  bool pool_force = false;
  auto print_pool = [&](Format format) {
    return [&, format](const v1::Pool& pool) {
      format == Format::kJson ? print_json(ToJson(pool)) : void(out << PoolView(pool));
      return kExitOk;
    };
  };

  CLI::App* pool_create = pool_cmd->add_subcommand(
      "create", "Create a pool on a block device or a file (a missing file is created sparse)");
  pool_create->add_option("NAME", pool_name, "Pool name")->required();
  pool_create->add_option("--device", pool_device, "Block device or file backing the pool")
      ->required()
      ->type_name("PATH");
  pool_create
      ->add_option("--size", pool_size,
                   "Size of the file to create (default: the existing device's size)")
      ->check(SizeValidator())
      ->type_name("SIZE");
  pool_create
      ->add_option("--cluster-size", pool_cluster_size,
                   "Allocation unit: a power of two from 4K to 256K (default 64K)")
      ->check(SizeValidator(UINT32_MAX))
      ->type_name("SIZE");
  pool_create->add_flag("--force", pool_force,
                        "Format the device even if it holds data or another pool");
  pool_create->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::CreatePoolRequest req;
      req.set_name(pool_name);
      // shaled has its own working directory: a relative path means the caller's.
      std::error_code ec;
      const std::filesystem::path device = std::filesystem::absolute(pool_device, ec);
      req.set_device_path(ec ? pool_device : device.lexically_normal().string());
      if (!pool_size.empty()) req.set_size_bytes(SizeOf(pool_size));
      if (!pool_cluster_size.empty()) {
        req.set_cluster_size(static_cast<uint32_t>(SizeOf(pool_cluster_size)));
      }
      req.set_force(pool_force);
      return RunRpc(client, &v1::Control::Stub::CreatePool, req, err, print_pool(format));
    };
  });

  CLI::App* pool_list = pool_cmd->add_subcommand("list", "List pools");
  pool_list->callback([&] {
    action = [&](ControlClient& client, Format format) {
      return RunRpc(client, &v1::Control::Stub::ListPools, v1::ListPoolsRequest(), err,
                    [&](const v1::ListPoolsResponse& resp) {
                      if (format == Format::kJson) {
                        nlohmann::ordered_json pools = nlohmann::ordered_json::array();
                        for (const v1::Pool& p : resp.pools()) pools.push_back(ToJson(p));
                        print_json({{"pools", pools}});
                      } else {
                        out << PoolTable(resp);
                      }
                      return kExitOk;
                    });
    };
  });

  CLI::App* pool_show = pool_cmd->add_subcommand("show", "Show one pool");
  pool_show->add_option("NAME", pool_name, "Pool name")->required();
  pool_show->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::GetPoolRequest req;
      req.set_name(pool_name);
      return RunRpc(client, &v1::Control::Stub::GetPool, req, err, print_pool(format));
    };
  });

  CLI::App* pool_delete = pool_cmd->add_subcommand(
      "delete", "Delete a pool (wipes its superblock; removes the file if shaled created it)");
  pool_delete->add_option("NAME", pool_name, "Pool name")->required();
  pool_delete->add_flag("--force", pool_force, "Also delete the pool's volumes");
  pool_delete->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::DeletePoolRequest req;
      req.set_name(pool_name);
      req.set_force(pool_force);
      return RunRpc(client, &v1::Control::Stub::DeletePool, req, err,
                    [&](const v1::DeletePoolResponse&) {
                      format == Format::kJson ? print_json({{"name", pool_name}, {"deleted", true}})
                                              : void(out << "pool '" << pool_name << "' deleted\n");
                      return kExitOk;
                    });
    };
  });

  CLI::App* pool_check = pool_cmd->add_subcommand(
      "check", "Check a pool's mappings against its allocation bitmap (exit 1 on problems)");
  pool_check->add_option("NAME", pool_name, "Pool name")->required();
  pool_check->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::CheckPoolRequest req;
      req.set_name(pool_name);
      return RunRpc(client, &v1::Control::Stub::CheckPool, req, err,
                    [&](const v1::CheckPoolResponse& resp) {
                      format == Format::kJson ? print_json(ToJson(pool_name, resp))
                                              : void(out << CheckView(pool_name, resp));
                      if (resp.clean()) return kExitOk;
                      err << "shale: pool '" << pool_name << "' has " << resp.problems_size()
                          << " problem(s)\n";
                      return kExitFailure;
                    });
    };
  });

  // QoS: `qos ...`, `volume stats` and the QoS flags of `volume create` (qos_commands.cc).
  QosCommands qos_commands(&action, out, err);
  // Snapshots and clones: `snapshot ...`, `clone ...`, `volume flatten|revert`
  // (snapshot_commands.cc). Flatten draws progress only on a terminal.
  SnapshotCommands snapshot_commands(&action, out, err,
                                     &err == &std::cerr && isatty(STDERR_FILENO) == 1);

  // --- volume ---
  CLI::App* volume_cmd = app.add_subcommand("volume", "Manage thin volumes");
  volume_cmd->require_subcommand(1);
  std::string volume_name, volume_size, volume_pool;
  bool volume_read_only = false;
  std::vector<std::string> volume_labels;
  auto print_volume = [&](Format format) {
    return [&, format](const v1::Volume& volume) {
      format == Format::kJson ? print_json(ToJson(volume)) : void(out << VolumeView(volume));
      return kExitOk;
    };
  };

  CLI::App* volume_create = volume_cmd->add_subcommand("create", "Create a thin volume");
  volume_create->add_option("NAME", volume_name, "Volume name")->required();
  volume_create->add_option("--size", volume_size, "Size seen by clients (rounded up to 4K)")
      ->required()
      ->check(SizeValidator())
      ->type_name("SIZE");
  volume_create
      ->add_option("--pool", volume_pool,
                   "Pool to carve it from (default: \"default\", or the only pool)")
      ->type_name("POOL");
  volume_create->add_flag("--read-only", volume_read_only, "Refuse writes to the volume");
  volume_create->add_option("--label", volume_labels, "Attach a label; repeatable")
      ->type_name("KEY=VALUE");
  qos_commands.AddCreateFlags(volume_create);
  volume_create->callback([&] {
    action = [&](ControlClient& client, Format format) {
      std::map<std::string, std::string> labels;
      std::string error;
      if (!ParseLabels(volume_labels, &labels, &error)) {
        err << "shale: volume create: " << error << "\n";
        return kExitUsage;
      }
      v1::CreateVolumeRequest req;
      req.set_name(volume_name);
      req.set_size_bytes(SizeOf(volume_size));
      req.set_pool(volume_pool);
      req.set_read_only(volume_read_only);
      req.mutable_labels()->insert(labels.begin(), labels.end());
      if (!qos_commands.FillCreate(&req, &error)) {
        err << "shale: volume create: " << error << "\n";
        return kExitUsage;
      }
      return RunRpc(client, &v1::Control::Stub::CreateVolume, req, err, print_volume(format));
    };
  });

  CLI::App* volume_list = volume_cmd->add_subcommand("list", "List volumes");
  volume_list->add_option("--pool", volume_pool, "Only the volumes of this pool")
      ->type_name("POOL");
  volume_list->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::ListVolumesRequest req;
      req.set_pool(volume_pool);
      return RunRpc(client, &v1::Control::Stub::ListVolumes, req, err,
                    [&](const v1::ListVolumesResponse& resp) {
                      if (format == Format::kJson) {
                        nlohmann::ordered_json volumes = nlohmann::ordered_json::array();
                        for (const v1::Volume& v : resp.volumes()) volumes.push_back(ToJson(v));
                        print_json({{"volumes", volumes}});
                      } else {
                        out << VolumeTable(resp);
                      }
                      return kExitOk;
                    });
    };
  });

  CLI::App* volume_show = volume_cmd->add_subcommand("show", "Show one volume");
  volume_show->add_option("NAME", volume_name, "Volume name")->required();
  volume_show->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::GetVolumeRequest req;
      req.set_name(volume_name);
      return RunRpc(client, &v1::Control::Stub::GetVolume, req, err, print_volume(format));
    };
  });

  CLI::App* volume_resize =
      volume_cmd->add_subcommand("resize", "Grow a volume (shrinking is refused)");
  volume_resize->add_option("NAME", volume_name, "Volume name")->required();
  volume_resize->add_option("--size", volume_size, "New size (rounded up to 4K)")
      ->required()
      ->check(SizeValidator())
      ->type_name("SIZE");
  volume_resize->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::ResizeVolumeRequest req;
      req.set_name(volume_name);
      req.set_size_bytes(SizeOf(volume_size));
      return RunRpc(client, &v1::Control::Stub::ResizeVolume, req, err, print_volume(format));
    };
  });

  bool volume_force = false;
  CLI::App* volume_delete = volume_cmd->add_subcommand(
      "delete",
      "Delete a volume and free its space (refused while NBD clients use it, unless --force)");
  volume_delete->add_option("NAME", volume_name, "Volume name")->required();
  volume_delete->add_flag("--force", volume_force,
                          "Disconnect the volume's NBD clients first (their requests in flight "
                          "complete), then delete");
  volume_delete->callback([&] {
    action = [&](ControlClient& client, Format format) {
      v1::DeleteVolumeRequest req;
      req.set_name(volume_name);
      req.set_force(volume_force);
      return RunRpc(
          client, &v1::Control::Stub::DeleteVolume, req, err, [&](const v1::DeleteVolumeResponse&) {
            format == Format::kJson ? print_json({{"name", volume_name}, {"deleted", true}})
                                    : void(out << "volume '" << volume_name << "' deleted\n");
            return kExitOk;
          });
    };
  });
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

  qos_commands.AddQosCommand(app);
  snapshot_commands.AddCommands(app);

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

  std::string endpoint_text = endpoint_flag;
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
  ControlClient client(*endpoint, timeout_seconds);
  return action(client, output == "json" ? Format::kJson : Format::kTable);
}

}  // namespace shale::cli
