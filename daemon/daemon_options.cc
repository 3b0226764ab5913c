#include "daemon/daemon_options.h"

#include <sys/un.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <string_view>

#include "api/control_api.h"
#include "daemon/ops/http_server.h"
#include "engine/common/labels.h"
#include "engine/common/units.h"
#include "engine/io/reactor.h"
#include "engine/pool/superblock.h"
#include "nbd/server.h"

#ifndef SHALE_VERSION
#error "SHALE_VERSION must be defined by the build"
#endif

namespace shale::daemon {

namespace {

constexpr uint64_t kMaxCommitIntervalMs = 3600 * 1000;  // an hour; longer risks a huge replay
constexpr unsigned kMaxNbdConnections = 65536;
constexpr unsigned kMaxNbdHandshakeTimeoutS = 3600;

// Absolute, normalized, without a trailing slash ("./a/../data/" -> "/cwd/data").
std::string Absolute(const std::string& path) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) return path;  // cwd unreadable: keep what was given, the open will say why
  abs = abs.lexically_normal();
  if (abs.has_relative_path() && abs.filename().empty()) abs = abs.parent_path();
  return abs.string();
}

// "8G" rather than FormatSize's "8 GiB": the help shows defaults in the syntax flags accept.
std::string CompactSize(uint64_t bytes) {
  static constexpr std::pair<uint64_t, char> kUnits[] = {
      {kTiB, 'T'}, {kGiB, 'G'}, {kMiB, 'M'}, {kKiB, 'K'}};
  for (const auto& [unit, suffix] : kUnits) {
    if (bytes != 0 && bytes % unit == 0) return std::to_string(bytes / unit) + suffix;
  }
  return std::to_string(bytes);
}

// Collapses a (CLI11) message onto one line.
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

// Accepts what ParseSize accepts, but not 0.
CLI::Validator SizeValidator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        Result<uint64_t> size = ParseSize(text);
        if (!size.ok()) return std::string(size.status().message());
        if (*size == 0) return "size must be greater than 0";
        return {};
      },
      /*validator_desc=*/"");
}

CLI::Validator ClusterSizeValidator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        Result<uint64_t> size = ParseSize(text);
        if (!size.ok()) return std::string(size.status().message());
        Status valid = ValidateClusterSize(*size);
        if (!valid.ok()) return std::string(valid.message());
        return {};
      },
      /*validator_desc=*/"");
}

// The flags as given, with their defaults: what CLI11 parses into before Resolve* checks the
// combinations and fills DaemonOptions.
struct Flags {
  std::string data_dir;
  std::string default_pool_size;
  std::string default_cluster_size;
  bool no_default_pool = false;
  unsigned reactors = 0;
  std::string io_backend;
  uint64_t commit_interval_ms = 0;
  std::string log_level = "info";
  std::string log_file;
  std::string control_socket;
  std::string nbd_listen = nbd::kDefaultNbdListen;
  std::string nbd_socket;
  unsigned nbd_max_connections = 0;
  unsigned nbd_handshake_timeout_s = 0;
  std::string csi_endpoint;
  std::string node_id;
  std::string metrics_listen = ops::kDefaultMetricsListen;
  std::string metrics_usage_label;
};

// Defaults from EngineOptions and NbdServerOptions (one source of truth).
Flags DefaultFlags() {
  const EngineOptions engine_defaults;
  const nbd::NbdServerOptions nbd_defaults;
  Flags f;
  f.data_dir = engine_defaults.data_dir;
  f.default_pool_size = CompactSize(engine_defaults.default_pool_size);
  f.default_cluster_size = CompactSize(engine_defaults.default_cluster_size);
  f.reactors = engine_defaults.reactors;
  f.io_backend = std::string(IoBackendName(engine_defaults.device.backend));
  f.commit_interval_ms = engine_defaults.commit_interval_ms;
  f.nbd_max_connections = nbd_defaults.max_connections;
  f.nbd_handshake_timeout_s = static_cast<unsigned>(
      std::chrono::duration_cast<std::chrono::seconds>(nbd_defaults.handshake_timeout).count());
  return f;
}

// Version, help layout and footer, and --config (the first option in the help).
void SetUpApp(CLI::App& app) {
  app.set_version_flag("--version", std::string("shaled ") + SHALE_VERSION);
  app.get_formatter()->column_width(34);
  app.footer(
      "Config file: --config FILE reads TOML (or INI) whose keys are the long option names, e.g.\n"
      "  data-dir = \"/var/lib/shale\"\n"
      "  default-pool-size = \"16G\"\n"
      "Flags given on the command line override the file. Sizes take K, M, G, T suffixes "
      "(powers of 1024).\n"
      "Signals: SIGTERM or SIGINT shut down cleanly (exit code 0).");
  app.set_config("--config", "", "Read options from this TOML/INI file (see below)", false)
      ->type_name("FILE");
  // An unknown key in the config file is a mistake worth reporting, not something to skip.
  app.allow_config_extras(CLI::config_extras_mode::error);
}

// The data dir, the default pool and the engine: --data-dir ... --commit-interval-ms.
void AddStorageOptions(CLI::App& app, Flags& f) {
  app.add_option("--data-dir", f.data_dir,
                 "Directory holding the daemon's metadata, the control socket and the default "
                 "pool's file; created if missing")
      ->type_name("DIR")
      ->capture_default_str();
  app.add_option("--default-pool-size", f.default_pool_size,
                 "Size of the sparse file of the \"default\" pool created on first start")
      ->check(SizeValidator())
      ->type_name("SIZE")
      ->capture_default_str();
  app.add_option("--default-cluster-size", f.default_cluster_size,
                 "Cluster size of the default pool: a power of two from 4K to 256K")
      ->check(ClusterSizeValidator())
      ->type_name("SIZE")
      ->capture_default_str();
  app.add_flag("--no-default-pool", f.no_default_pool,
               "Do not create the \"default\" pool on first start (pools come from "
               "`shale pool create`)");
  app.add_option("--reactors", f.reactors, "Data-path threads, each with its own io_uring ring")
      ->check(CLI::Range(1u, kMaxEngineReactors))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--io-backend", f.io_backend, "I/O backend for pool devices")
      ->check(CLI::IsMember({"io_uring", "libaio"}))
      ->type_name("BACKEND")
      ->capture_default_str();
  app.add_option("--commit-interval-ms", f.commit_interval_ms,
                 "Period of the background commit of volume mapping changes not yet made "
                 "durable by a client flush")
      ->check(CLI::Range(uint64_t{1}, kMaxCommitIntervalMs))
      ->type_name("MS")
      ->capture_default_str();
}

// --log-level, --log-file.
void AddLoggingOptions(CLI::App& app, Flags& f) {
  app.add_option("--log-level", f.log_level, "Least severe log level written")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->type_name("LEVEL")
      ->capture_default_str();
  app.add_option("--log-file", f.log_file, "Append structured logs to this file instead of stderr")
      ->type_name("FILE");
}

// The control API's socket and the NBD server: --control-socket, --nbd-*.
void AddSocketOptions(CLI::App& app, Flags& f) {
  app.add_option("--control-socket", f.control_socket,
                 "UNIX socket of the control API (mode 0600); default: <data-dir>/shaled.sock")
      ->type_name("PATH");
  app.add_option("--nbd-listen", f.nbd_listen,
                 "TCP address of the NBD server: IPv4:PORT, [IPv6]:PORT or localhost:PORT "
                 "(port 0 picks a free port; `shale status` shows it), or \"none\"")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            if (text == "none") return {};
            Status valid = nbd::ValidateListenAddress(text);
            return valid.ok() ? std::string() : std::string(valid.message());
          },
          /*validator_desc=*/""))
      ->type_name("ADDR:PORT")
      ->capture_default_str();
  app.add_option("--nbd-socket", f.nbd_socket,
                 "UNIX socket of the NBD server (mode 0600), or \"none\"; default: "
                 "<data-dir>/nbd.sock")
      ->type_name("PATH");
  app.add_option("--nbd-max-connections", f.nbd_max_connections,
                 "NBD connections served at once; more are closed at once")
      ->check(CLI::Range(1u, kMaxNbdConnections))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--nbd-handshake-timeout", f.nbd_handshake_timeout_s,
                 "Seconds an NBD client gets to choose an export before it is disconnected")
      ->check(CLI::Range(1u, kMaxNbdHandshakeTimeoutS))
      ->type_name("SECONDS")
      ->capture_default_str();
}

// The CSI driver: --csi-endpoint, --node-id.
void AddCsiOptions(CLI::App& app, Flags& f) {
  app.add_option("--csi-endpoint", f.csi_endpoint,
                 "Serve the CSI driver csi.shale.io (Identity, Controller, Node) on this UNIX "
                 "socket, e.g. unix:///csi/csi.sock (docs/csi.md); default: off")
      ->type_name("unix:///PATH");
  app.add_option("--node-id", f.node_id,
                 "CSI node id, also the value of the topology key topology.csi.shale.io/node; "
                 "default: the host name")
      ->type_name("ID");
}

// Prometheus metrics: --metrics-listen, --metrics-usage-label.
void AddMetricsOptions(CLI::App& app, Flags& f) {
  app.add_option("--metrics-listen", f.metrics_listen,
                 "TCP address serving Prometheus metrics at /metrics: IPv4:PORT, [IPv6]:PORT or "
                 "localhost:PORT (port 0 picks a free port; `shale status` shows it), or \"none\"")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            Status valid = ops::ValidateMetricsListen(text);
            return valid.ok() ? std::string() : std::string(valid.message());
          },
          /*validator_desc=*/""))
      ->type_name("ADDR:PORT")
      ->capture_default_str();
  app.add_option("--metrics-usage-label", f.metrics_usage_label,
                 "Volume label KEY: label the per-volume metrics with it and export usage sums "
                 "per value (shale_usage_*), e.g. team")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            Status valid = ValidateLabel(text, "x");
            return valid.ok() ? std::string() : std::string(valid.message());
          },
          /*validator_desc=*/""))
      ->type_name("KEY");
}

// Fills the data dir, pool, engine and logging settings of `o`; InvalidArgument (a usage error)
// for an empty --data-dir.
Status ResolveStorage(const Flags& f, DaemonOptions& o) {
  if (f.data_dir.empty()) return Status::InvalidArgument("--data-dir must not be empty");
  o.data_dir = Absolute(f.data_dir);
  o.create_default_pool = !f.no_default_pool;
  // The validators accepted these, so parsing cannot fail here.
  o.default_pool_size = ParseSize(f.default_pool_size).value();
  o.default_cluster_size = static_cast<uint32_t>(ParseSize(f.default_cluster_size).value());
  o.reactors = f.reactors;
  o.io_backend = ParseIoBackend(f.io_backend).value();
  o.commit_interval_ms = f.commit_interval_ms;
  o.log_level = f.log_level;
  o.log_file = f.log_file.empty() ? std::string() : Absolute(f.log_file);
  return Status::Ok();
}

// Fills the control and NBD socket settings of `o` (after o.data_dir); InvalidArgument (a usage
// error) for a path too long for a UNIX socket or the same socket twice.
Status ResolveSockets(const Flags& f, DaemonOptions& o) {
  std::string_view control_socket = f.control_socket;
  if (control_socket.starts_with("unix://")) control_socket.remove_prefix(7);
  o.control_socket = control_socket.empty() ? o.data_dir + "/" + api::kControlSocketName
                                            : Absolute(std::string(control_socket));
  if (o.control_socket.size() > MaxUnixSocketPath()) {
    return Status::InvalidArgument(
        "control socket path '" + o.control_socket + "' is " +
        std::to_string(o.control_socket.size()) + " bytes long; UNIX sockets allow at most " +
        std::to_string(MaxUnixSocketPath()) + " (choose a shorter --data-dir or --control-socket)");
  }
  o.nbd_listen = f.nbd_listen == "none" ? std::string() : f.nbd_listen;
  if (f.nbd_socket == "none") {
    o.nbd_socket.clear();
  } else {
    std::string_view nbd_socket = f.nbd_socket;
    if (nbd_socket.starts_with("unix://")) nbd_socket.remove_prefix(7);
    o.nbd_socket = nbd_socket.empty() ? o.data_dir + "/" + nbd::kNbdSocketName
                                      : Absolute(std::string(nbd_socket));
    if (o.nbd_socket.size() > MaxUnixSocketPath()) {
      return Status::InvalidArgument(
          "NBD socket path '" + o.nbd_socket + "' is " + std::to_string(o.nbd_socket.size()) +
          " bytes long; UNIX sockets allow at most " + std::to_string(MaxUnixSocketPath()) +
          " (choose a shorter --data-dir or --nbd-socket, or --nbd-socket none)");
    }
    if (o.nbd_socket == o.control_socket) {
      return Status::InvalidArgument("--nbd-socket and --control-socket must differ");
    }
  }
  o.nbd_max_connections = f.nbd_max_connections;
  o.nbd_handshake_timeout_s = f.nbd_handshake_timeout_s;
  return Status::Ok();
}

// Fills the CSI settings of `o` (after the sockets); InvalidArgument (a usage error) for an
// endpoint that is not a usable UNIX socket path, or a node id over 128 bytes.
Status ResolveCsi(const Flags& f, DaemonOptions& o) {
  if (!f.csi_endpoint.empty()) {
    std::string_view path = f.csi_endpoint;
    if (path.starts_with("unix://")) {
      path.remove_prefix(7);
    } else if (path.find("://") != std::string_view::npos) {
      return Status::InvalidArgument("--csi-endpoint '" + f.csi_endpoint +
                                     "' must be a UNIX socket: unix:///path/csi.sock");
    }
    if (path.empty()) return Status::InvalidArgument("--csi-endpoint needs a socket path");
    o.csi_endpoint = Absolute(std::string(path));
    if (o.csi_endpoint.size() > MaxUnixSocketPath()) {
      return Status::InvalidArgument(
          "CSI socket path '" + o.csi_endpoint + "' is " + std::to_string(o.csi_endpoint.size()) +
          " bytes long; UNIX sockets allow at most " + std::to_string(MaxUnixSocketPath()));
    }
    if (o.csi_endpoint == o.control_socket || o.csi_endpoint == o.nbd_socket) {
      return Status::InvalidArgument("--csi-endpoint must differ from the control and NBD sockets");
    }
  }
  if (f.node_id.size() > 128) {
    return Status::InvalidArgument("--node-id must be at most 128 bytes long");
  }
  o.node_id = f.node_id;
  o.metrics_listen = f.metrics_listen == "none" ? std::string() : f.metrics_listen;
  o.metrics_usage_label = f.metrics_usage_label;
  return Status::Ok();
}

}  // namespace

size_t MaxUnixSocketPath() { return sizeof(sockaddr_un::sun_path) - 1; }

std::string DaemonOptions::ControlEndpoint() const { return "unix://" + control_socket; }

EngineOptions DaemonOptions::ToEngineOptions() const {
  EngineOptions e;
  e.data_dir = data_dir;
  e.reactors = reactors;
  e.device.backend = io_backend;
  e.commit_interval_ms = commit_interval_ms;
  e.create_default_pool = create_default_pool;
  e.default_pool_size = default_pool_size;
  e.default_cluster_size = default_cluster_size;
  return e;
}

DaemonCommandLine ParseDaemonCommandLine(int argc, const char* const* argv) {
  DaemonCommandLine result;
  CLI::App app(
      "shaled: the Shale node daemon. Owns pools and thin volumes and serves the control API "
      "(gRPC) on a UNIX socket, and every volume as an NBD export (export name = volume name) "
      "on 127.0.0.1:10809 and <data-dir>/nbd.sock. With no options it runs the embedded "
      "default: data in ./shale-data with a sparse file-backed pool named \"default\" created "
      "on first start.",
      "shaled");
  SetUpApp(app);
  Flags flags = DefaultFlags();
  // The help lists the options in this order.
  AddStorageOptions(app, flags);
  AddLoggingOptions(app, flags);
  AddSocketOptions(app, flags);
  AddCsiOptions(app, flags);
  AddMetricsOptions(app, flags);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    result.out = app.help();
    return result;
  } catch (const CLI::CallForAllHelp&) {
    result.out = app.help("", CLI::AppFormatMode::All);
    return result;
  } catch (const CLI::CallForVersion& e) {
    result.out = std::string(e.what()) + "\n";
    return result;
  } catch (const CLI::ParseError& e) {
    result.exit_code = 2;
    result.err = "shaled: " + OneLine(e.what()) + " (see 'shaled --help')";
    return result;
  }

  DaemonOptions& o = result.options;
  Status valid = ResolveStorage(flags, o);
  if (valid.ok()) valid = ResolveSockets(flags, o);
  if (valid.ok()) valid = ResolveCsi(flags, o);
  if (!valid.ok()) {
    result.exit_code = 2;
    result.err = "shaled: " + std::string(valid.message()) + " (see 'shaled --help')";
    return result;
  }
  CLI::Option* config = app.get_config_ptr();
  if (config != nullptr && config->count() > 0) o.config_file = Absolute(config->as<std::string>());
  result.run = true;
  return result;
}

}  // namespace shale::daemon
