// DaemonOptions: every setting of shaled, from flags and an optional TOML/INI config file.
//
// Defaults come from EngineOptions (one source of truth), so `shaled` with no options runs the
// embedded default: --data-dir ./shale-data with an 8 GiB sparse file-backed pool. Paths are made
// absolute at parse time, relative to the working directory shaled was started in.
#pragma once

#include <cstdint>
#include <string>

#include "engine/engine.h"

namespace shale::daemon {

struct DaemonOptions {
  std::string data_dir;  // absolute
  bool create_default_pool = true;
  uint64_t default_pool_size = 0;
  uint32_t default_cluster_size = 0;
  unsigned reactors = 0;
  IoBackend io_backend = IoBackend::kIoUring;
  bool cached_reads = false;  // --read-cache page (DeviceOptions::cached_reads)
  uint64_t commit_interval_ms = 0;
  std::string log_level;       // debug | info | warn | error
  std::string log_file;        // empty: log to stderr
  std::string control_socket;  // absolute path of the control API's UNIX socket
  std::string config_file;     // the config file that was read, if any
  // NBD server (docs/nbd.md). Empty address/socket: that listener is off.
  std::string nbd_listen;  // "127.0.0.1:10809" (port 0: any free port); default: off
  std::string nbd_socket;  // absolute path; default <data-dir>/nbd.sock
  unsigned nbd_max_connections = 128;
  unsigned nbd_handshake_timeout_s = 10;
  // Access to the NBD TCP listener (docs/security.md): exactly one of TLS with X.509 (a directory
  // in qemu's tls-creds-x509 layout), TLS with PSK (a psktool file), or the explicit insecure
  // choice. Absolute paths; empty when not given.
  std::string nbd_tls_x509_dir;
  std::string nbd_tls_psk_file;
  std::string nbd_tls_authz;  // per-export authorization of TLS clients
  bool nbd_insecure_tcp = false;
  // CSI driver csi.shale.io (docs/csi.md). Empty endpoint: not served.
  std::string csi_endpoint;  // absolute path of the CSI UNIX socket (given as unix:///path)
  std::string node_id;       // CSI node id and topology value; default: the host name
  // Cluster mode (issue 11, docs/replication.md). Empty cluster_store: the single-node daemon,
  // and the other cluster settings are empty too.
  std::string cluster_store;        // "etcd://HOST:PORT[,HOST:PORT...]", syntax checked
  std::string node_name;            // this node's name in etcd (required in cluster mode)
  std::string replica_listen;       // "ADDR:PORT" of the replica service; empty: off
  std::string cluster_secret_file;  // absolute (required in cluster mode; mode 0600 at start)
  // Absolute; empty: replica connections are plain TCP. Otherwise every one, accepted or dialed,
  // runs TLS with mutual certificates from ca.crt, tls.crt, tls.key (checked at start).
  std::string cluster_tls_dir;
  unsigned node_lease_seconds = 10;    // TTL of the node's etcd lease
  double replica_timeout_seconds = 5;  // a replica request older than this fails the replica
  // A node down this long has each replica it holds replaced elsewhere (0: never).
  double replica_replace_after_seconds = 600;
  uint64_t rebuild_bps = 0;  // rebuild copy rate cap (bytes/s); 0: none

  // Backups to S3 (docs/backup.md).
  std::string backup_endpoint;          // default S3 endpoint ("" = AWS)
  std::string backup_region;            // default region ("" = us-east-1)
  std::string backup_credentials_file;  // absolute; "" = AWS_* environment variables
  std::string backup_credentials_profile;
  std::string backup_ca_file;    // absolute; "" = the system's CAs
  unsigned backup_parallel = 4;  // chunk transfers in flight

  // Prometheus metrics (docs/operations.md). Empty address: not served.
  std::string metrics_listen;       // "127.0.0.1:9580" (port 0: any free port)
  std::string metrics_usage_label;  // volume label whose values label the usage metrics

  // gRPC address of the control socket: "unix://" + control_socket.
  std::string ControlEndpoint() const;
  EngineOptions ToEngineOptions() const;
};

// What shaled should do after reading its command line.
struct DaemonCommandLine {
  bool run = false;   // true: start with `options`; false: print and exit with exit_code
  int exit_code = 0;  // 0 for --help/--version, 2 for a usage error
  DaemonOptions options;
  std::string out;  // text for stdout (help, version)
  std::string err;  // one line for stderr (usage error), without the trailing newline
};

// Parses flags and the --config file. Never throws; errors become a one-line `err`.
DaemonCommandLine ParseDaemonCommandLine(int argc, const char* const* argv);

// Longest path a UNIX socket address can hold (sun_path minus the terminating NUL).
size_t MaxUnixSocketPath();

}  // namespace shale::daemon
