// Daemon: what shaled is — the Engine of this node plus the frontends that serve it.
//
// Start() opens the Engine (which takes the data-dir lock and recovers every pool and volume),
// starts the SnapshotManager on it (crash repair of the snapshot layer, background digests),
// opens the QosManager (per-volume QoS settings; NBD I/O goes through it), then starts the
// frontends in order: the NBD server, then the control API (gRPC on a UNIX
// socket), then the CSI endpoint (--csi-endpoint, csi). Stop() stops the frontends in reverse
// order, so no request is in flight, then stops the SnapshotManager (its digest worker),
// releases the QosManager, then shuts the Engine down.
//
// Threading: Start/Stop from one thread (main); RequestStop() from any thread; Wait() blocks the
// caller until RequestStop().
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/daemon_options.h"
#include "engine/common/result.h"
#include "engine/common/status.h"
#include "replication/auth.h"

namespace shale {

class Engine;
namespace csi {
struct DriverOptions;
}
namespace snapshot {
class SnapshotManager;
}
namespace qos {
class QosManager;
}
namespace backup {
class BackupManager;
}
namespace replication {
class Transport;
}
}  // namespace shale

namespace shale::daemon {
namespace ops {
class AuditLog;
class PeerRegistry;
}  // namespace ops

class VolumeLifecycle;
class ReplicatedVolumes;

// A server the daemon runs on top of the Engine.
class Frontend {
 public:
  virtual ~Frontend() = default;
  // For logs: "control", "nbd", "csi".
  virtual std::string_view name() const = 0;
  // Where it serves, for logs ("unix:///.../shaled.sock").
  virtual std::string endpoint() const = 0;
  // Starts serving. Called once, after the Engine is open.
  virtual Status Start() = 0;
  // Stops accepting requests and returns once none is in flight; the Engine is still open.
  // Idempotent; called even if Start() failed.
  virtual void Stop() = 0;
};

class Daemon {
 public:
  explicit Daemon(DaemonOptions options);
  ~Daemon();  // Stop()s, ignoring the status (call Stop() yourself to see it)
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Opens the engine and starts every frontend. On error, whatever started is stopped again
  // and the error says what failed (e.g. Busy when another shaled holds the data dir).
  Status Start();
  // Asks Wait() to return. Thread-safe, but not async-signal-safe (call it from a thread that
  // waits for signals, not from a signal handler).
  void RequestStop();
  // Blocks until RequestStop() has been called.
  void Wait();
  // Stops the frontends and the snapshot manager, then shuts the engine down (committing every
  // volume). Idempotent.
  Status Stop();

  const DaemonOptions& options() const { return options_; }
  // Null before Start() and after Stop().
  Engine* engine() { return engine_.get(); }
  snapshot::SnapshotManager* snapshots() { return snapshots_.get(); }
  // Per-volume QoS (qos/qos_manager.h): settings, stats, and Wrap() for frontends' I/O. Opened
  // after the SnapshotManager (so records of volumes its crash repair removed are dropped),
  // released after the frontends stopped and before the engine shuts down.
  qos::QosManager* qos() { return qos_.get(); }
  // Every change of a volume goes through it (docs/lifecycle.md). Null before Start().
  VolumeLifecycle* lifecycle() { return lifecycle_.get(); }
  // Backups to S3 (docs/backup.md); started after QoS, stopped before the frontends drain.
  backup::BackupManager* backups() { return backups_.get(); }

 private:
  // Steps of Start(), in order; each returns what failed (Start() then stops what started).
  // Cluster mode: reads --cluster-secret-file (mode 0600, 16..4096 bytes) and makes the replica
  // transport (MakeReplicaTransport: --cluster-tls-dir checked here) before anything starts.
  Status LoadClusterSecret();
  Status StartEngine();
  // <data-dir>/audit.log, with a "ShaledStart" record: a log that cannot be written stops the
  // start (docs/operations.md, "Audit log").
  Status OpenAuditLog();
  Status StartSnapshots();
  Status StartQos();
  Status StartBackups();
  Status AddFrontends();
  // The CSI endpoint (last of the frontends), wired to the lifecycle, the replicated volumes'
  // delete and the audit change gate; with --cluster-store also to the replicated volumes
  // (AddCsiClusterHooks: create, topology, NodeStage/NodeUnstage as attach/detach).
  void AddCsiFrontend();
  void AddCsiClusterHooks(csi::DriverOptions* csi_options);
  Status StartFrontends();

  const DaemonOptions options_;
  replication::ClusterSecret cluster_secret_;  // valid in cluster mode, after Start()
  // Every replica connection of this node, accepted or dialed; cluster mode, after Start().
  // Declared before frontends_: outlives the replica server.
  std::unique_ptr<replication::Transport> replica_transport_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<snapshot::SnapshotManager> snapshots_;  // after engine_: destroyed first
  std::unique_ptr<qos::QosManager> qos_;                  // after engine_: destroyed first
  // qos_ while the snapshot layer may route its background I/O through it (set once QoS is
  // open, cleared after the snapshot layer stopped); read by the snapshot layer's threads.
  std::atomic<qos::QosManager*> background_qos_{nullptr};
  // The replicated volumes' targets (cluster mode): set before the frontends start, cleared
  // before they are destroyed; read by QoS when it wraps a volume (lower_layer).
  std::atomic<ReplicatedVolumes*> replicated_{nullptr};
  std::unique_ptr<backup::BackupManager> backups_;    // after engine_: destroyed first
  std::unique_ptr<ops::AuditLog> audit_;              // read by frontends: destroyed after them
  std::unique_ptr<ops::PeerRegistry> peers_;          // likewise
  std::unique_ptr<VolumeLifecycle> lifecycle_;        // after the subsystems it calls
  std::vector<std::unique_ptr<Frontend>> frontends_;  // in start order

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_requested_ = false;  // guarded by mu_
};

// Sends gRPC's own diagnostics to the structured log instead of raw stderr. Call once at start.
void RouteGrpcLogsToShaleLog();

// The transport of replica connections: TCP, or with --cluster-tls-dir mutual TLS over TCP
// (docs/security.md, "Replica traffic"), whose directory it loads and checks. Use it for every
// connection to a peer's replica server, too.
Result<std::unique_ptr<replication::Transport>> MakeReplicaTransport(const DaemonOptions& o);

}  // namespace shale::daemon
