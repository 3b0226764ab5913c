#include "daemon/daemon_options.h"

#include <sys/un.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <string_view>

#include "api/control_api.h"
#include "cluster/endpoints.h"
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
constexpr unsigned kMaxNodeLeaseSeconds = 3600;

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
  std::string read_cache = "none";
  uint64_t commit_interval_ms = 0;
  std::string log_level = "info";
  std::string log_file;
  std::string control_socket;
  std::string nbd_listen;  // off unless asked (docs/security.md)
  std::string nbd_socket;
  unsigned nbd_max_connections = 0;
  unsigned nbd_handshake_timeout_s = 0;
  std::string nbd_tls_x509_dir;
  std::string nbd_tls_psk_file;
  std::string nbd_tls_authz;
  bool nbd_insecure_tcp = false;
  std::string csi_endpoint;
  std::string node_id;
  std::string cluster_store;
  std::string node_name;
  std::string replica_listen;
  std::string cluster_secret_file;
  std::string cluster_tls_dir;
  unsigned node_lease_seconds = 10;
  double replica_timeout_seconds = 5;
  double replica_replace_after_seconds = 600;
  std::string rebuild_bps;
  std::string backup_endpoint;
  std::string backup_region;
  std::string backup_credentials_file;
  std::string backup_credentials_profile;
  std::string backup_ca_file;
  unsigned backup_parallel = 4;
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
  app.add_option("--read-cache", f.read_cache,
                 "Where pool reads may be served from: none (every read from the device, "
                 "O_DIRECT) or page (the kernel's page cache; writes stay O_DIRECT, so "
                 "durability is unchanged; io_uring only)")
      ->check(CLI::IsMember({"none", "page"}))
      ->type_name("MODE")
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
  app.add_option(
         "--nbd-listen", f.nbd_listen,
         "Serve NBD on this TCP address too: IPv4:PORT, [IPv6]:PORT or localhost:PORT "
         "(port 0 picks a free port; `shale status` shows it); needs --nbd-tls-x509-dir, "
         "--nbd-tls-psk-file or --nbd-insecure-tcp; default (or `none`): off (UNIX socket only)")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            if (text == "none") return {};
            Status valid = nbd::ValidateListenAddress(text);
            return valid.ok() ? std::string() : std::string(valid.message());
          },
          /*validator_desc=*/""))
      ->type_name("ADDR:PORT");
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

// Access to the NBD TCP listener: --nbd-tls-x509-dir, --nbd-tls-psk-file, --nbd-tls-authz,
// --nbd-insecure-tcp (docs/security.md).
void AddNbdTlsOptions(CLI::App& app, Flags& f) {
  app.add_option("--nbd-tls-x509-dir", f.nbd_tls_x509_dir,
                 "Require TLS with X.509 on the NBD TCP listener: DIR holds server-cert.pem and "
                 "server-key.pem, and ca-cert.pem to require client certificates signed by it "
                 "(qemu's tls-creds-x509 layout)")
      ->type_name("DIR");
  app.add_option("--nbd-tls-psk-file", f.nbd_tls_psk_file,
                 "Require TLS with pre-shared keys on the NBD TCP listener: FILE as psktool "
                 "writes it (username:hexkey per line)")
      ->type_name("FILE");
  app.add_option("--nbd-tls-authz", f.nbd_tls_authz,
                 "Which TLS clients may open and list which exports: lines of IDENTITY "
                 "PATTERN..., identities cn:, dns:, ip:, email:, uri: (certificate) or psk: "
                 "(docs/security.md); default: every authenticated client, every export")
      ->type_name("FILE");
  app.add_flag("--nbd-insecure-tcp", f.nbd_insecure_tcp,
               "Serve the NBD TCP listener without TLS: anyone who can connect to it can read "
               "and write every volume (logged as a warning)");
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

// Cluster mode: --cluster-store, --node-name, --replica-listen, --cluster-secret-file,
// --cluster-tls-dir, --node-lease-seconds (docs/replication.md, docs/security.md).
void AddClusterOptions(CLI::App& app, Flags& f) {
  app.add_option("--cluster-store", f.cluster_store,
                 "Join a cluster whose membership lives in etcd (v3 API): register this node "
                 "under a lease and hold replicas; default: off (a single-node daemon)")
      ->type_name("etcd://HOST:PORT[,HOST:PORT...]");
  app.add_option("--node-name", f.node_name,
                 "This node's name in the cluster (letters, digits, '.', '_', '-'); required "
                 "with --cluster-store")
      ->type_name("NAME");
  app.add_option("--replica-listen", f.replica_listen,
                 "TCP address of the replica service peers connect to (IPv4:PORT, [IPv6]:PORT "
                 "or localhost:PORT); default: off")
      ->type_name("ADDR:PORT");
  app.add_option("--cluster-secret-file", f.cluster_secret_file,
                 "File holding the secret peers authenticate with (16 to 4096 bytes, mode "
                 "0600); required with --cluster-store")
      ->type_name("FILE");
  app.add_option("--cluster-tls-dir", f.cluster_tls_dir,
                 "Run every replica connection (the replica listener's and the ones this node "
                 "dials) over TLS with mutual certificates: DIR holds ca.crt, tls.crt and tls.key "
                 "(mode 0600), a Kubernetes TLS Secret with the CA; default: plain TCP")
      ->type_name("DIR");
  app.add_option("--node-lease-seconds", f.node_lease_seconds,
                 "TTL of this node's etcd lease: the node is listed as down this long after it "
                 "stops renewing it (etcd may raise a TTL below its minimum)")
      ->check(CLI::Range(1u, kMaxNodeLeaseSeconds))
      ->type_name("N")
      ->capture_default_str();
  app.add_option("--replica-timeout", f.replica_timeout_seconds,
                 "Seconds a replica may take to answer a request of a replicated volume this "
                 "node serves before it leaves the in-sync set")
      ->check(CLI::Range(0.1, 600.0))
      ->type_name("S")
      ->capture_default_str();
  app.add_option("--replica-replace-after", f.replica_replace_after_seconds,
                 "Seconds a node may stay down before each replica it holds of a volume this "
                 "node serves is placed on another node and fully rebuilt there (0: never)")
      ->check(CLI::Range(0.0, 31536000.0))
      ->type_name("S")
      ->capture_default_str();
  app.add_option("--rebuild-bps", f.rebuild_bps,
                 "Cap on the bytes per second a replica rebuild copies (K, M, G suffixes); "
                 "default: none")
      ->type_name("RATE");
}

// Backups to S3: --backup-endpoint ... --backup-parallel (docs/backup.md).
void AddBackupOptions(CLI::App& app, Flags& f) {
  app.add_option("--backup-endpoint", f.backup_endpoint,
                 "S3 endpoint of backups whose command names none, e.g. http://minio:9000 "
                 "(path-style); default: AWS")
      ->type_name("URL");
  app.add_option("--backup-region", f.backup_region,
                 "S3 region of backups whose command names none; default: us-east-1")
      ->type_name("REGION");
  app.add_option("--backup-credentials-file", f.backup_credentials_file,
                 "S3 credentials in the AWS credentials-file format, mode 0600; default: "
                 "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN) from the "
                 "environment")
      ->type_name("FILE");
  app.add_option("--backup-credentials-profile", f.backup_credentials_profile,
                 "Profile of --backup-credentials-file; default: default")
      ->type_name("NAME");
  app.add_option("--backup-ca-file", f.backup_ca_file,
                 "PEM file of the CAs to trust for https S3 endpoints instead of the system's")
      ->type_name("FILE");
  app.add_option("--backup-parallel", f.backup_parallel,
                 "S3 chunk transfers in flight per backup, restore or verify")
      ->check(CLI::Range(1u, 64u))
      ->type_name("N")
      ->capture_default_str();
}

// Fills the cluster settings of `o`; InvalidArgument (a usage error) for a malformed store URL,
// a bad node name or address, a cluster flag without --cluster-store, or a missing required one.
// The secret file's content and mode are checked when the daemon starts.
Status ResolveCluster(const Flags& f, DaemonOptions& o, bool lease_given, bool timeout_given,
                      bool replace_given) {
  if (f.cluster_store.empty()) {
    if (!f.node_name.empty() || !f.replica_listen.empty() || !f.cluster_secret_file.empty() ||
        !f.cluster_tls_dir.empty() || lease_given || timeout_given || replace_given ||
        !f.rebuild_bps.empty()) {
      return Status::InvalidArgument(
          "--node-name, --replica-listen, --cluster-secret-file, --cluster-tls-dir, "
          "--node-lease-seconds, --replica-timeout, --replica-replace-after and --rebuild-bps "
          "need --cluster-store");
    }
    return Status::Ok();
  }
  o.replica_timeout_seconds = f.replica_timeout_seconds;
  o.replica_replace_after_seconds = f.replica_replace_after_seconds;
  if (!f.rebuild_bps.empty()) {
    Result<uint64_t> bps = ParseSize(f.rebuild_bps);
    if (!bps.ok()) {
      return Status::InvalidArgument("--rebuild-bps: " + std::string(bps.status().message()));
    }
    o.rebuild_bps = *bps;
  }
  Result<std::vector<cluster::EtcdEndpoint>> endpoints =
      cluster::ParseEtcdEndpoints(f.cluster_store);
  if (!endpoints.ok()) {
    return Status::InvalidArgument("--cluster-store: " + std::string(endpoints.status().message()));
  }
  o.cluster_store = cluster::FormatEtcdEndpoints(*endpoints);
  if (f.node_name.empty()) return Status::InvalidArgument("--cluster-store needs --node-name");
  if (Status valid = ValidateName("node", f.node_name); !valid.ok()) {
    return Status::InvalidArgument("--node-name: " + std::string(valid.message()));
  }
  o.node_name = f.node_name;
  if (!f.replica_listen.empty()) {
    if (Status valid = nbd::ValidateListenAddress(f.replica_listen); !valid.ok()) {
      return Status::InvalidArgument("--replica-listen: " + std::string(valid.message()));
    }
    o.replica_listen = f.replica_listen;
  }
  if (f.cluster_secret_file.empty()) {
    return Status::InvalidArgument("--cluster-store needs --cluster-secret-file");
  }
  o.cluster_secret_file = Absolute(f.cluster_secret_file);
  if (!f.cluster_tls_dir.empty()) o.cluster_tls_dir = Absolute(f.cluster_tls_dir);
  o.node_lease_seconds = f.node_lease_seconds;
  return Status::Ok();
}

// Fills the backup settings of `o`: paths made absolute; endpoint syntax is checked at start.
void ResolveBackup(const Flags& f, DaemonOptions& o) {
  o.backup_endpoint = f.backup_endpoint;
  o.backup_region = f.backup_region;
  o.backup_credentials_file =
      f.backup_credentials_file.empty() ? std::string() : Absolute(f.backup_credentials_file);
  o.backup_credentials_profile = f.backup_credentials_profile;
  o.backup_ca_file = f.backup_ca_file.empty() ? std::string() : Absolute(f.backup_ca_file);
  o.backup_parallel = f.backup_parallel;
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
  o.cached_reads = f.read_cache == "page";
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

// Fills the NBD TCP access settings of `o` (after the sockets); InvalidArgument (a usage error)
// unless a TCP listener has exactly one of X.509, PSK or the explicit insecure choice.
Status ResolveNbdTls(const Flags& f, DaemonOptions& o) {
  const bool x509 = !f.nbd_tls_x509_dir.empty(), psk = !f.nbd_tls_psk_file.empty();
  const bool tls = x509 || psk;
  if (o.nbd_listen.empty()) {
    if (tls || !f.nbd_tls_authz.empty() || f.nbd_insecure_tcp) {
      return Status::InvalidArgument(
          "--nbd-tls-* and --nbd-insecure-tcp apply to the NBD TCP listener: add --nbd-listen "
          "ADDR:PORT (the UNIX socket is guarded by its mode, 0600)");
    }
    return Status::Ok();
  }
  if (x509 && psk) {
    return Status::InvalidArgument("choose one of --nbd-tls-x509-dir and --nbd-tls-psk-file");
  }
  if (tls && f.nbd_insecure_tcp) {
    return Status::InvalidArgument("--nbd-insecure-tcp contradicts --nbd-tls-*: choose one");
  }
  if (!tls && !f.nbd_insecure_tcp) {
    return Status::InvalidArgument(
        "--nbd-listen " + o.nbd_listen +
        " would serve every volume unencrypted to anyone who can connect: add "
        "--nbd-tls-x509-dir DIR or --nbd-tls-psk-file FILE, or --nbd-insecure-tcp to accept that");
  }
  if (!f.nbd_tls_authz.empty() && !tls) {
    return Status::InvalidArgument(
        "--nbd-tls-authz needs TLS (--nbd-tls-x509-dir or --nbd-tls-psk-file)");
  }
  o.nbd_tls_x509_dir = x509 ? Absolute(f.nbd_tls_x509_dir) : std::string();
  o.nbd_tls_psk_file = psk ? Absolute(f.nbd_tls_psk_file) : std::string();
  o.nbd_tls_authz = f.nbd_tls_authz.empty() ? std::string() : Absolute(f.nbd_tls_authz);
  o.nbd_insecure_tcp = f.nbd_insecure_tcp;
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
  e.device.cached_reads = cached_reads;
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
      "on <data-dir>/nbd.sock (and on TCP with --nbd-listen: TLS required unless "
      "--nbd-insecure-tcp). With no options it runs the embedded "
      "default: data in ./shale-data with a sparse file-backed pool named \"default\" created "
      "on first start.",
      "shaled");
  SetUpApp(app);
  Flags flags = DefaultFlags();
  // The help lists the options in this order.
  AddStorageOptions(app, flags);
  AddLoggingOptions(app, flags);
  AddSocketOptions(app, flags);
  AddNbdTlsOptions(app, flags);
  AddCsiOptions(app, flags);
  AddClusterOptions(app, flags);
  AddBackupOptions(app, flags);
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
  if (valid.ok()) valid = ResolveNbdTls(flags, o);
  if (valid.ok()) valid = ResolveCsi(flags, o);
  if (valid.ok()) {
    valid = ResolveCluster(flags, o, app.get_option("--node-lease-seconds")->count() > 0,
                           app.get_option("--replica-timeout")->count() > 0,
                           app.get_option("--replica-replace-after")->count() > 0);
  }
  if (valid.ok()) ResolveBackup(flags, o);
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
