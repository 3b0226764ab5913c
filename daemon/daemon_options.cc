#include "daemon/daemon_options.h"

#include <sys/un.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <string_view>

#include "api/control_api.h"
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
  const EngineOptions engine_defaults;
  DaemonCommandLine result;

  CLI::App app(
      "shaled: the Shale node daemon. Owns pools and thin volumes and serves the control API "
      "(gRPC) on a UNIX socket, and every volume as an NBD export (export name = volume name) "
      "on 127.0.0.1:10809 and <data-dir>/nbd.sock. With no options it runs the embedded "
      "default: data in ./shale-data with a sparse file-backed pool named \"default\" created "
      "on first start.",
      "shaled");
  app.set_version_flag("--version", std::string("shaled ") + SHALE_VERSION);
  app.get_formatter()->column_width(34);
  app.footer(
      "Config file: --config FILE reads TOML (or INI) whose keys are the long option names, e.g.\n"
      "  data-dir = \"/var/lib/shale\"\n"
      "  default-pool-size = \"16G\"\n"
      "Flags given on the command line override the file. Sizes take K, M, G, T suffixes "
      "(powers of 1024).\n"
      "Signals: SIGTERM or SIGINT shut down cleanly (exit code 0).");

  std::string data_dir = engine_defaults.data_dir;
  std::string default_pool_size = CompactSize(engine_defaults.default_pool_size);
  std::string default_cluster_size = CompactSize(engine_defaults.default_cluster_size);
  bool no_default_pool = false;
  unsigned reactors = engine_defaults.reactors;
  std::string io_backend(IoBackendName(engine_defaults.device.backend));
  uint64_t commit_interval_ms = engine_defaults.commit_interval_ms;
  std::string log_level = "info";
  std::string log_file;
  std::string control_socket;
  std::string nbd_listen = nbd::kDefaultNbdListen;
  std::string nbd_socket;
  const nbd::NbdServerOptions nbd_defaults;
  unsigned nbd_max_connections = nbd_defaults.max_connections;
  std::string csi_endpoint;
  std::string node_id;
  unsigned nbd_handshake_timeout_s = static_cast<unsigned>(
      std::chrono::duration_cast<std::chrono::seconds>(nbd_defaults.handshake_timeout).count());

  app.set_config("--config", "", "Read options from this TOML/INI file (see below)", false)
      ->type_name("FILE");
  // An unknown key in the config file is a mistake worth reporting, not something to skip.
  app.allow_config_extras(CLI::config_extras_mode::error);

  app.add_option("--data-dir", data_dir,
                 "Directory holding the daemon's metadata, the control socket and the default "
                 "pool's file; created if missing")
      ->type_name("DIR")
      ->capture_default_str();
  app.add_option("--default-pool-size", default_pool_size,
                 "Size of the sparse file of the \"default\" pool created on first start")
      ->check(SizeValidator())
      ->type_name("SIZE")
      ->capture_default_str();
  app.add_option("--default-cluster-size", default_cluster_size,
                 "Cluster size of the default pool: a power of two from 4K to 256K")
      ->check(ClusterSizeValidator())
      ->type_name("SIZE")
      ->capture_default_str();
  app.add_flag("--no-default-pool", no_default_pool,
               "Do not create the \"default\" pool on first start (pools come from "
               "`shale pool create`)");
  app.add_option("--reactors", reactors, "Data-path threads, each with its own io_uring ring")
      ->check(CLI::Range(1u, kMaxEngineReactors))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--io-backend", io_backend, "I/O backend for pool devices")
      ->check(CLI::IsMember({"io_uring", "libaio"}))
      ->type_name("BACKEND")
      ->capture_default_str();
  app.add_option("--commit-interval-ms", commit_interval_ms,
                 "Period of the background commit of volume mapping changes not yet made "
                 "durable by a client flush")
      ->check(CLI::Range(uint64_t{1}, kMaxCommitIntervalMs))
      ->type_name("MS")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "Least severe log level written")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->type_name("LEVEL")
      ->capture_default_str();
  app.add_option("--log-file", log_file, "Append structured logs to this file instead of stderr")
      ->type_name("FILE");
  app.add_option("--control-socket", control_socket,
                 "UNIX socket of the control API (mode 0600); default: <data-dir>/shaled.sock")
      ->type_name("PATH");
  app.add_option("--nbd-listen", nbd_listen,
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
  app.add_option("--nbd-socket", nbd_socket,
                 "UNIX socket of the NBD server (mode 0600), or \"none\"; default: "
                 "<data-dir>/nbd.sock")
      ->type_name("PATH");
  app.add_option("--nbd-max-connections", nbd_max_connections,
                 "NBD connections served at once; more are closed at once")
      ->check(CLI::Range(1u, kMaxNbdConnections))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--nbd-handshake-timeout", nbd_handshake_timeout_s,
                 "Seconds an NBD client gets to choose an export before it is disconnected")
      ->check(CLI::Range(1u, kMaxNbdHandshakeTimeoutS))
      ->type_name("SECONDS")
      ->capture_default_str();

  app.add_option("--csi-endpoint", csi_endpoint,
                 "Serve the CSI driver csi.shale.io (Identity, Controller, Node) on this UNIX "
                 "socket, e.g. unix:///csi/csi.sock (docs/csi.md); default: off")
      ->type_name("unix:///PATH");
  app.add_option("--node-id", node_id,
                 "CSI node id, also the value of the topology key topology.csi.shale.io/node; "
                 "default: the host name")
      ->type_name("ID");

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

  auto usage_error = [&result](const std::string& msg) {
    result.exit_code = 2;
    result.err = "shaled: " + msg + " (see 'shaled --help')";
    return result;
  };

  DaemonOptions& o = result.options;
  if (data_dir.empty()) return usage_error("--data-dir must not be empty");
  o.data_dir = Absolute(data_dir);
  o.create_default_pool = !no_default_pool;
  // The validators above accepted these, so parsing cannot fail here.
  o.default_pool_size = ParseSize(default_pool_size).value();
  o.default_cluster_size = static_cast<uint32_t>(ParseSize(default_cluster_size).value());
  o.reactors = reactors;
  o.io_backend = ParseIoBackend(io_backend).value();
  o.commit_interval_ms = commit_interval_ms;
  o.log_level = log_level;
  o.log_file = log_file.empty() ? std::string() : Absolute(log_file);
  if (std::string_view(control_socket).starts_with("unix://")) {
    control_socket = control_socket.substr(7);
  }
  o.control_socket = control_socket.empty() ? o.data_dir + "/" + api::kControlSocketName
                                            : Absolute(control_socket);
  if (o.control_socket.size() > MaxUnixSocketPath()) {
    return usage_error(
        "control socket path '" + o.control_socket + "' is " +
        std::to_string(o.control_socket.size()) + " bytes long; UNIX sockets allow at most " +
        std::to_string(MaxUnixSocketPath()) + " (choose a shorter --data-dir or --control-socket)");
  }
  o.nbd_listen = nbd_listen == "none" ? std::string() : nbd_listen;
  if (nbd_socket == "none") {
    o.nbd_socket.clear();
  } else {
    if (std::string_view(nbd_socket).starts_with("unix://")) nbd_socket = nbd_socket.substr(7);
    o.nbd_socket =
        nbd_socket.empty() ? o.data_dir + "/" + nbd::kNbdSocketName : Absolute(nbd_socket);
    if (o.nbd_socket.size() > MaxUnixSocketPath()) {
      return usage_error(
          "NBD socket path '" + o.nbd_socket + "' is " + std::to_string(o.nbd_socket.size()) +
          " bytes long; UNIX sockets allow at most " + std::to_string(MaxUnixSocketPath()) +
          " (choose a shorter --data-dir or --nbd-socket, or --nbd-socket none)");
    }
    if (o.nbd_socket == o.control_socket) {
      return usage_error("--nbd-socket and --control-socket must differ");
    }
  }
  o.nbd_max_connections = nbd_max_connections;
  o.nbd_handshake_timeout_s = nbd_handshake_timeout_s;
  if (!csi_endpoint.empty()) {
    std::string_view path = csi_endpoint;
    if (path.starts_with("unix://")) {
      path.remove_prefix(7);
    } else if (path.find("://") != std::string_view::npos) {
      return usage_error("--csi-endpoint '" + csi_endpoint +
                         "' must be a UNIX socket: unix:///path/csi.sock");
    }
    if (path.empty()) return usage_error("--csi-endpoint needs a socket path");
    o.csi_endpoint = Absolute(std::string(path));
    if (o.csi_endpoint.size() > MaxUnixSocketPath()) {
      return usage_error(
          "CSI socket path '" + o.csi_endpoint + "' is " + std::to_string(o.csi_endpoint.size()) +
          " bytes long; UNIX sockets allow at most " + std::to_string(MaxUnixSocketPath()));
    }
    if (o.csi_endpoint == o.control_socket || o.csi_endpoint == o.nbd_socket) {
      return usage_error("--csi-endpoint must differ from the control and NBD sockets");
    }
  }
  if (node_id.size() > 128) return usage_error("--node-id must be at most 128 bytes long");
  o.node_id = node_id;
  CLI::Option* config = app.get_config_ptr();
  if (config != nullptr && config->count() > 0) o.config_file = Absolute(config->as<std::string>());
  result.run = true;
  return result;
}

}  // namespace shale::daemon
