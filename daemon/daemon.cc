#include "daemon/daemon.h"

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/server_posix.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <thread>

#include "api/control_api.h"
#include "backup/backup_manager.h"
#include "csi/driver.h"
#include "csi/params.h"
#include "daemon/cluster_node.h"
#include "daemon/control_service.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/nbd_export_gate.h"
#include "daemon/ops/audit_interceptor.h"
#include "daemon/ops/audit_log.h"
#include "daemon/ops/http_server.h"
#include "daemon/ops/metrics_collector.h"
#include "daemon/ops/peer_acceptor.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/engine.h"
#include "nbd/export.h"
#include "nbd/server.h"
#include "qos/qos_manager.h"
#include "replication/replica_server.h"
#include "replication/tls_transport.h"
#include "replication/transport.h"
#include "snapshot/snapshot_manager.h"
#include "tls/credentials.h"

namespace shale::daemon {

namespace {

// Bounds on the control server: it serves a handful of admins and sidecars, not a data path.
constexpr int kControlMaxThreads = 16;
constexpr int kControlMaxMessageBytes = 4 * 1024 * 1024;
// How long Stop() lets in-flight control requests finish before cancelling them.
constexpr auto kControlDrainTimeout = std::chrono::seconds(10);

// How long a socket that still accepts connections may take to go away before it counts as a
// live daemon's (see PrepareSocketPath), and how often it is probed in that time.
constexpr auto kStaleSocketGrace = std::chrono::seconds(3);
constexpr int kStaleSocketProbes = 60;

// Makes `path` free for a new listening socket (`kind`: "control", "NBD"). A socket file nobody
// accepts on is a leftover of a killed daemon and is removed; a live socket or a file of another
// kind is never touched.
Status PrepareSocketPath(const std::string& path, const std::string& kind) {
  if (path.empty() || path.size() > MaxUnixSocketPath()) {
    return Status::InvalidArgument(kind + " socket path '" + path + "' must be 1.." +
                                   std::to_string(MaxUnixSocketPath()) + " bytes long");
  }
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!std::filesystem::is_directory(parent, ec)) {
    return Status::NotFound("directory " + parent.string() + " of the " + kind + " socket " + path +
                            " does not exist");
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, kind + " socket " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::FailedPrecondition(kind + " socket path " + path +
                                      " exists and is not a socket; refusing to replace it");
  }
  // A socket someone accepts on belongs to a live daemon, except for a moment after a kill -9:
  // the kernel tears a dead process's io_uring down asynchronously, and until then the ring's
  // pending accept keeps the listening socket alive (connect succeeds although the owner is
  // reaped). So a connectable socket is probed again until the deadline before it counts as live.
  const auto deadline = std::chrono::steady_clock::now() + kStaleSocketGrace;
  int waited_probes = 0;
  for (int attempt = 0;; ++attempt) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno(errno, "socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // length checked above
    const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    const int err = errno;
    close(fd);
    if (rc != 0 && err != ECONNREFUSED) {
      return Status::FromErrno(err, "probe " + kind + " socket " + path);
    }
    if (rc != 0) break;  // nobody accepts: stale
    waited_probes = attempt + 1;
    if (attempt >= kStaleSocketProbes || std::chrono::steady_clock::now() >= deadline) {
      return Status::Busy(kind + " socket " + path +
                          " is in use by another process (is another shaled running?)");
    }
    std::this_thread::sleep_for(kStaleSocketGrace / kStaleSocketProbes);
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "remove stale " + kind + " socket " + path);
  }
  SHALE_LOG_INFO("removed stale " + kind + " socket", {"path", path},
                 {"probes_until_refused", std::to_string(waited_probes)});
  return Status::Ok();
}

// The NBD server: every volume exported under its name, every snapshot read-only as
// VOLUME@SNAP (nbd/, docs/nbd.md). It is the lifecycle's ExportGate while it serves: `volume
// delete --force` closes exports through it, Busy errors name its clients.
class NbdEndpoint final : public Frontend {
 public:
  NbdEndpoint(VolumeLifecycle* lifecycle, nbd::NbdServerOptions options)
      : lifecycle_(lifecycle),
        resolver_(lifecycle->engine(), lifecycle->snapshots(), lifecycle->qos()),
        server_(ReactorsOf(*lifecycle->engine()), &resolver_, std::move(options)),
        gate_(&server_) {}
  ~NbdEndpoint() override { Stop(); }

  std::string_view name() const override { return "nbd"; }
  std::string endpoint() const override {
    std::string out;
    if (!server_.tcp_address().empty()) out = "nbd://" + server_.tcp_address();
    if (!server_.unix_socket().empty()) {
      out += (out.empty() ? "" : " ") + std::string("nbd+unix://?socket=") + server_.unix_socket();
    }
    return out;
  }
  Status Start() override {
    if (!server_.unix_socket().empty()) {
      SHALE_RETURN_IF_ERROR(PrepareSocketPath(server_.unix_socket(), "NBD"));
    }
    SHALE_RETURN_IF_ERROR(server_.Start());
    lifecycle_->SetExportGate(&gate_);
    return Status::Ok();
  }
  void Stop() override {
    lifecycle_->SetExportGate(nullptr);
    server_.Stop();
  }
  nbd::NbdServer* server() { return &server_; }

 private:
  static std::vector<Reactor*> ReactorsOf(Engine& engine) {
    std::vector<Reactor*> out;
    for (const auto& r : engine.reactors()) out.push_back(r.get());
    return out;
  }

  VolumeLifecycle* const lifecycle_;
  nbd::EngineExportResolver resolver_;
  nbd::NbdServer server_;
  NbdExportGate gate_;
};

// A gRPC server on a UNIX socket only its owner can use (mode 0600): the control API and the
// CSI driver (whose sidecars and kubelet run as root on the node). The services must outlive
// it: owners call Stop() in their destructor.
//
// shaled accepts the connections itself (ops::UnixAcceptor) and hands each to gRPC, so the audit
// interceptor knows every caller's uid and pid (SO_PEERCRED) through the PeerRegistry.
static_assert(ops::kAuditErrorMetadataKey == std::string_view(api::kAuditErrorMetadataKey),
              "the CLI reads the trailer the audit interceptor sets");

class UnixGrpcServer {
 public:
  // Who audits the server's calls; `log` null: no audit (the interceptor is not installed).
  struct Audit {
    std::string source;  // "control", "csi"
    ops::AuditLog* log = nullptr;
    ops::PeerRegistry* peers = nullptr;
    ops::VolumeLabelLookup labels;
  };

  // `kind` names the server in errors and logs ("control", "CSI").
  UnixGrpcServer(std::string socket_path, std::string kind)
      : socket_path_(std::move(socket_path)), kind_(std::move(kind)) {}
  ~UnixGrpcServer() { Stop(); }

  std::string endpoint() const { return "unix://" + socket_path_; }

  Status Start(const std::vector<grpc::Service*>& services, const Audit& audit) {
    SHALE_RETURN_IF_ERROR(PrepareSocketPath(socket_path_, kind_));
    grpc::ServerBuilder builder;  // no listening port: the acceptor adds each connection
    for (grpc::Service* service : services) builder.RegisterService(service);
    builder.SetMaxReceiveMessageSize(kControlMaxMessageBytes);
    grpc::ResourceQuota quota("shaled-" + kind_);
    quota.SetMaxThreads(kControlMaxThreads);
    builder.SetResourceQuota(quota);
    if (audit.log != nullptr) {
      std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> audits;
      audits.push_back(std::make_unique<ops::AuditInterceptorFactory>(audit.source, audit.log,
                                                                      audit.peers, audit.labels));
      builder.experimental().SetInterceptorCreators(std::move(audits));
    }
    server_ = builder.BuildAndStart();
    if (!server_) {
      return Status::Unavailable("cannot start the " + kind_ +
                                 " gRPC server (see the log for gRPC's reason)");
    }
    Result<std::unique_ptr<ops::UnixAcceptor>> acceptor =
        ops::UnixAcceptor::Start(socket_path_, kind_, audit.peers,
                                 [server = server_.get()](int fd, const ops::PeerCreds& /*creds*/) {
                                   grpc::AddInsecureChannelFromFd(server, fd);
                                 });
    if (!acceptor.ok()) {
      Stop();
      return acceptor.status();
    }
    acceptor_ = std::move(acceptor).value();
    return Status::Ok();
  }

  void Stop() {
    if (acceptor_) acceptor_->Stop();  // no new connection reaches a stopping server
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + kControlDrainTimeout);
      server_->Wait();
      server_.reset();
    }
    if (!acceptor_) return;
    acceptor_.reset();
    // Ours: we bound it and nobody else can have replaced it while we held the path.
    if (unlink(socket_path_.c_str()) != 0 && errno != ENOENT) {
      SHALE_LOG_WARN("could not remove " + kind_ + " socket", {"path", socket_path_},
                     {"error", Status::FromErrno(errno, "unlink").ToString()});
    }
  }

 private:
  const std::string socket_path_;
  const std::string kind_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<ops::UnixAcceptor> acceptor_;
};

// Capacity care (docs/operations.md, "Capacity"): re-evaluates every pool's fill level about
// once a second on a thread of its own, so a threshold crossing is logged once, soon after the
// writes that crossed it (never on the data path), and status and metrics show the level.
class CapacityWatch final : public Frontend {
 public:
  static constexpr auto kInterval = std::chrono::seconds(1);
  explicit CapacityWatch(VolumeLifecycle* lifecycle) : lifecycle_(lifecycle) {}
  ~CapacityWatch() override { Stop(); }

  std::string_view name() const override { return "capacity"; }
  std::string endpoint() const override { return "pool fill checked every second"; }
  Status Start() override {
    lifecycle_->capacity()->Evaluate();  // logs what pools are above at start
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }
  void Stop() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, kInterval, [this] { return stopping_; })) {
      lock.unlock();
      lifecycle_->capacity()->Evaluate();
      lock.lock();
    }
  }

  VolumeLifecycle* const lifecycle_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

// Prometheus metrics (--metrics-listen, docs/operations.md): GET /metrics on a thread of its
// own, which collects from the engine, QoS and the capacity policy (never on a reactor).
// The replica service (--replica-listen, docs/replication.md): peers' targets place, open and
// write replicas of their volumes in this node's engine, after the challenge on the cluster
// secret. Started before the cluster registration, which publishes its bound address.
// Over TCP, or mutual TLS with --cluster-tls-dir (MakeReplicaTransport; `transport` outlives it).
class ReplicaEndpoint final : public Frontend {
 public:
  ReplicaEndpoint(Engine* engine, replication::Transport* transport, bool tls,
                  replication::ReplicaServerOptions options)
      : scheme_(tls ? "tls://" : "tcp://"), server_(engine, transport, std::move(options)) {}
  std::string_view name() const override { return "replica"; }
  std::string endpoint() const override { return scheme_ + server_.address(); }
  Status Start() override { return server_.Start(); }
  void Stop() override { server_.Stop(); }
  // As bound ("127.0.0.1:7480"); empty before Start().
  std::string address() const { return server_.address(); }
  Status RaiseEpoch(const std::string& volume, uint64_t epoch) {
    return server_.RaiseEpoch(volume, epoch);
  }

 private:
  const std::string scheme_;
  replication::ReplicaServer server_;
};

class MetricsEndpoint final : public Frontend {
 public:
  MetricsEndpoint(VolumeLifecycle* lifecycle, std::string listen, ops::CollectorOptions options)
      : listen_(std::move(listen)), metrics_(lifecycle, std::move(options)) {}
  ~MetricsEndpoint() override { Stop(); }

  std::string_view name() const override { return "metrics"; }
  std::string endpoint() const override { return "http://" + address() + "/metrics"; }
  Status Start() override {
    Result<std::unique_ptr<ops::MetricsHttpServer>> server =
        ops::MetricsHttpServer::Start({.listen = listen_}, [this] { return metrics_.Scrape(); });
    if (!server.ok()) return server.status();
    server_ = std::move(server).value();
    return Status::Ok();
  }
  void Stop() override {
    if (server_) server_->Stop();
  }
  // As bound ("127.0.0.1:9580"); empty before Start().
  std::string address() const { return server_ ? server_->address() : std::string(); }

 private:
  const std::string listen_;
  ops::DaemonMetrics metrics_;
  std::unique_ptr<ops::MetricsHttpServer> server_;
};

// The control API: shale.v1.Control on a UNIX socket only its owner can use (mode 0600).
class ControlEndpoint final : public Frontend {
 public:
  ControlEndpoint(VolumeLifecycle* lifecycle, std::string socket_path, nbd::NbdServer* nbd,
                  ClusterNode* cluster, ReplicatedVolumes* replicated,
                  const MetricsEndpoint* metrics, UnixGrpcServer::Audit audit)
      : server_(std::move(socket_path), "control"),
        audit_(std::move(audit)),
        service_(lifecycle,
                 {.version = SHALE_VERSION,
                  .control_endpoint = server_.endpoint(),
                  .metrics_address = MetricsAddress(metrics),
                  .audit_log = audit_.log},
                 nbd, cluster, replicated) {}
  ~ControlEndpoint() override { Stop(); }

  std::string_view name() const override { return "control"; }
  std::string endpoint() const override { return server_.endpoint(); }
  Status Start() override { return server_.Start({&service_}, audit_); }
  void Stop() override { server_.Stop(); }

 private:
  static std::function<std::string()> MetricsAddress(const MetricsEndpoint* metrics) {
    if (metrics == nullptr) return nullptr;
    return [metrics] { return metrics->address(); };
  }

  UnixGrpcServer server_;
  const UnixGrpcServer::Audit audit_;
  ControlService service_;
};

// The CSI driver csi.shale.io (csi, docs/csi.md): Identity, Controller and Node on one
// UNIX socket (mode 0600: the sidecars and kubelet run as root on the node).
class CsiEndpoint final : public Frontend {
 public:
  CsiEndpoint(csi::DriverOptions options, VolumeLifecycle* lifecycle, std::string socket_path,
              UnixGrpcServer::Audit audit)
      : server_(std::move(socket_path), "CSI"),
        audit_(std::move(audit)),
        options_(options),
        identity_(options),
        controller_(options, lifecycle),
        node_(options, lifecycle->engine()),
        group_(lifecycle),
        metadata_(lifecycle->snapshots()) {}
  ~CsiEndpoint() override { Stop(); }

  std::string_view name() const override { return "csi"; }
  std::string endpoint() const override { return server_.endpoint(); }
  Status Start() override {
    // Records of older versions are upgraded before the first request (docs/lifecycle.md).
    SHALE_RETURN_IF_ERROR(controller_.UpgradeRecords());
    std::vector<grpc::Service*> services = {&identity_, &controller_, &node_};
    if (options_.group_controller) services.push_back(&group_);
    if (options_.snapshot_metadata) services.push_back(&metadata_);
    return server_.Start(services, audit_);
  }
  void Stop() override { server_.Stop(); }

 private:
  UnixGrpcServer server_;
  const UnixGrpcServer::Audit audit_;
  const csi::DriverOptions options_;
  csi::IdentityService identity_;
  csi::ControllerService controller_;
  csi::NodeService node_;
  csi::GroupControllerService group_;
  csi::SnapshotMetadataService metadata_;
};

void GrpcLogToShaleLog(gpr_log_func_args* args) {
  const char* message = args->message != nullptr ? args->message : "";
  const std::string where =
      std::string(args->file != nullptr ? args->file : "?") + ":" + std::to_string(args->line);
  switch (args->severity) {
    case GPR_LOG_SEVERITY_DEBUG:
      SHALE_LOG_DEBUG("grpc", {"detail", message}, {"at", where});
      break;
    case GPR_LOG_SEVERITY_INFO:
      SHALE_LOG_INFO("grpc", {"detail", message}, {"at", where});
      break;
    case GPR_LOG_SEVERITY_ERROR:
      SHALE_LOG_ERROR("grpc", {"detail", message}, {"at", where});
      break;
  }
}

}  // namespace

void RouteGrpcLogsToShaleLog() { gpr_set_log_function(GrpcLogToShaleLog); }

Result<std::unique_ptr<replication::Transport>> MakeReplicaTransport(const DaemonOptions& o) {
  if (o.cluster_tls_dir.empty()) {
    return std::unique_ptr<replication::Transport>(std::make_unique<replication::TcpTransport>());
  }
  Result<std::shared_ptr<const tls::Credentials>> creds =
      replication::LoadClusterTlsDir(o.cluster_tls_dir);
  if (!creds.ok()) return creds.status().WithContext("--cluster-tls-dir");
  SHALE_LOG_INFO("replica connections use TLS with mutual certificates", {"dir", o.cluster_tls_dir},
                 {"credentials", (*creds)->Describe()});
  return std::unique_ptr<replication::Transport>(std::make_unique<replication::TlsTransport>(
      std::make_unique<replication::TcpTransport>(), std::move(creds).value()));
}

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() { Stop().IgnoreError(); }

Status Daemon::Start() {
  SHALE_LOG_INFO("shaled starting", {"version", SHALE_VERSION}, {"pid", getpid()},
                 {"data_dir", options_.data_dir}, {"reactors", options_.reactors},
                 {"io_backend", std::string(IoBackendName(options_.io_backend))},
                 {"config", options_.config_file});
  Status st = LoadClusterSecret();
  if (st.ok()) st = StartEngine();
  if (st.ok()) st = OpenAuditLog();
  if (st.ok()) st = StartSnapshots();
  if (st.ok()) st = StartQos();
  if (st.ok()) st = StartBackups();
  if (st.ok()) {
    lifecycle_ = std::make_unique<VolumeLifecycle>(engine_.get(), snapshots_.get(), qos_.get());
    lifecycle_->SetBackups(backups_.get());
    lifecycle_->SetChangeGate([log = audit_.get()] { return log->CheckWritable(); });
    // A restore cut short by a crash leaves a marked volume: deleted before anyone sees it.
    st = lifecycle_->RecoverRestores().WithContext("recover interrupted restores");
  }
  if (st.ok()) {
    st = AddFrontends();
  }
  if (st.ok()) st = StartFrontends();
  if (!st.ok()) {
    // Stop() destroys whatever started (frontends included): nothing may touch them after it.
    Status stopped = Stop();
    if (!stopped.ok()) {
      SHALE_LOG_ERROR("shutdown after a failed start was not clean", {"error", stopped.ToString()});
    }
    return st;
  }
  SHALE_LOG_INFO("shaled ready", {"control", options_.ControlEndpoint()},
                 {"pools", engine_->ListPools().size()},
                 {"volumes", engine_->ListVolumes().size()});
  return Status::Ok();
}

Status Daemon::LoadClusterSecret() {
  if (options_.cluster_store.empty()) return Status::Ok();
  Result<replication::ClusterSecret> secret =
      replication::ClusterSecret::ReadFile(options_.cluster_secret_file);
  if (!secret.ok()) {
    Status s = secret.status().WithContext("--cluster-secret-file");
    if (s.code() == StatusCode::kPermissionDenied) {
      return Status::PermissionDenied(std::string(s.message()) + "; run: chmod 600 " +
                                      options_.cluster_secret_file);
    }
    return s;
  }
  cluster_secret_ = std::move(secret).value();
  Result<std::unique_ptr<replication::Transport>> transport = MakeReplicaTransport(options_);
  if (!transport.ok()) return transport.status();
  replica_transport_ = std::move(transport).value();
  return Status::Ok();
}

Status Daemon::StartEngine() {
  Result<std::unique_ptr<Engine>> engine = Engine::Open(options_.ToEngineOptions());
  if (!engine.ok()) {
    if (engine.status().code() == StatusCode::kBusy) {
      // The engine's detail (RocksDB's lock error) goes to the log; people get the meaning.
      SHALE_LOG_ERROR("data dir is locked", {"data_dir", options_.data_dir},
                      {"error", engine.status().ToString()});
      return Status::Busy("data dir " + options_.data_dir +
                          " is in use by another shaled; stop it or choose another --data-dir");
    }
    return engine.status();
  }
  engine_ = std::move(engine).value();
  return Status::Ok();
}

Status Daemon::OpenAuditLog() {
  // After the engine: its data-dir lock keeps a second shaled from writing the same log.
  const std::string path = (std::filesystem::path(options_.data_dir) / "audit.log").string();
  Result<std::unique_ptr<ops::AuditLog>> log = ops::AuditLog::Open({.path = path});
  if (!log.ok()) return log.status().WithContext("audit log");
  // The first record proves the log can be written: shaled does not serve changes it cannot
  // record (fail closed).
  nlohmann::json record = ops::NewAuditRecord("shaled", "ShaledStart");
  record["result"] = "ok";
  record["caller"] = {{"uid", getuid()}, {"pid", getpid()}, {"command", "shaled"}};
  record["volumes"] = nlohmann::json::array();
  record["version"] = SHALE_VERSION;
  if (Status st = (*log)->Append(record); !st.ok()) {
    return Status::Unavailable("cannot write the audit log " + path + ": " + st.ToString());
  }
  audit_ = std::move(log).value();
  peers_ = std::make_unique<ops::PeerRegistry>();
  return Status::Ok();
}

Status Daemon::StartSnapshots() {
  // The snapshot layer repairs what a crash interrupted (clone records, implicit snapshots,
  // imports) before any frontend can reach it, and starts computing pending digests.
  // Its background I/O (digests, verify, export, import) goes through QoS once QoS is open:
  // scheduled in each pool's low class, so it cannot starve client I/O (docs/qos.md).
  snapshot::SnapshotManager::Options snapshot_options;
  snapshot_options.background_io =
      [this](std::shared_ptr<VolumeHandle> handle) -> std::shared_ptr<VolumeLayer> {
    qos::QosManager* qos = background_qos_.load(std::memory_order_acquire);
    if (qos == nullptr) return nullptr;
    Result<std::shared_ptr<qos::QosVolume>> wrapped = qos->Wrap(std::move(handle));
    if (!wrapped.ok()) return nullptr;  // only for a null handle; the I/O goes direct then
    return std::move(wrapped).value();
  };
  // Flatten's copy batches likewise, admitted one by one in the pool's low class.
  snapshot_options.background_admission =
      [this](std::shared_ptr<VolumeHandle> handle) -> std::shared_ptr<BackgroundAdmission> {
    qos::QosManager* qos = background_qos_.load(std::memory_order_acquire);
    if (qos == nullptr) return nullptr;
    Result<std::shared_ptr<BackgroundAdmission>> admission =
        qos->OpenBackgroundAdmission(std::move(handle));
    return admission.ok() ? std::move(admission).value() : nullptr;
  };
  snapshots_ = std::make_unique<snapshot::SnapshotManager>(engine_.get(), snapshot_options);
  return snapshots_->Start().WithContext("start the snapshot layer");
}

Status Daemon::StartQos() {
  // QoS: settings of every volume (records of volumes deleted meanwhile are dropped) and the
  // pool schedulers; the NBD server submits through it. Its per-volume queue bound is set above
  // what the NBD server can have in flight for one volume (every connection at its own bound),
  // so a client that pipelines within NBD's limits never sees "qos queue full".
  qos::QosManagerOptions qos_options;
  const uint64_t nbd_bound =
      uint64_t{options_.nbd_max_connections} * nbd::NbdServerOptions{}.max_requests_in_flight;
  qos_options.max_queued_per_volume =
      static_cast<uint32_t>(std::clamp<uint64_t>(nbd_bound, qos::kDefaultMaxQueued, UINT32_MAX));
  // A replicated volume's replication layer goes below its QoS layer (docs/replication.md).
  if (options_.cluster_store.empty()) {
    // Outside a cluster a replica is an ordinary volume (its data is there), but a target-only
    // anchor holds none of its volume's data: never served as if it were the volume.
    qos_options.lower_layer = [this](Volume& volume) -> Result<std::shared_ptr<VolumeLayer>> {
      Result<VolumeInfo> info = engine_->GetVolume(volume.name());
      if (info.ok() && info->labels.contains(replication::kTargetOnlyLabel)) {
        return Status::FailedPrecondition(
            "volume '" + volume.name() +
            "' is the anchor of a replicated volume's target on this node and holds none of "
            "its data: start shaled in its cluster (--cluster-store) to serve it");
      }
      return std::shared_ptr<VolumeLayer>();
    };
  } else {
    qos_options.lower_layer = [this](Volume& volume) -> Result<std::shared_ptr<VolumeLayer>> {
      ReplicatedVolumes* replicated = replicated_.load(std::memory_order_acquire);
      if (replicated != nullptr) return replicated->LowerLayer(volume);
      Result<VolumeInfo> info = engine_->GetVolume(volume.name());
      if (info.ok() && info->labels.contains(replication::kReplicaUuidLabel)) {
        return Status::Unavailable("replicated volume '" + volume.name() +
                                   "': its target is not open (shaled is starting or stopping)");
      }
      return std::shared_ptr<VolumeLayer>();
    };
  }
  Result<std::unique_ptr<qos::QosManager>> qos = qos::QosManager::Open(engine_.get(), qos_options);
  if (!qos.ok()) return qos.status().WithContext("start QoS");
  qos_ = std::move(qos).value();
  background_qos_.store(qos_.get(), std::memory_order_release);
  return Status::Ok();
}

Status Daemon::StartBackups() {
  // Backups read snapshots and write restored volumes as background I/O through QoS, like the
  // snapshot layer's jobs (docs/qos.md).
  backup::BackupManager::Options o;
  o.default_endpoint = {options_.backup_endpoint, options_.backup_region};
  o.credentials_file = options_.backup_credentials_file;
  o.credentials_profile = options_.backup_credentials_profile;
  o.ca_file = options_.backup_ca_file;
  o.parallel = options_.backup_parallel;
  o.host = csi::DefaultNodeId();
  if (!options_.node_id.empty()) o.host = options_.node_id;
  o.version = SHALE_VERSION;
  o.background_io = [this](std::shared_ptr<VolumeHandle> handle) -> std::shared_ptr<VolumeLayer> {
    qos::QosManager* qos = background_qos_.load(std::memory_order_acquire);
    if (qos == nullptr) return nullptr;
    Result<std::shared_ptr<qos::QosVolume>> wrapped = qos->Wrap(std::move(handle));
    return wrapped.ok() ? std::move(wrapped).value() : nullptr;
  };
  backups_ = std::make_unique<backup::BackupManager>(engine_.get(), snapshots_.get(), o);
  return backups_->CheckConfig().WithContext("backups");
}

namespace {

// TLS credentials and authorization of the NBD TCP listener (docs/security.md), checked here so
// a wrong file stops shaled at start with a message that names it.
Status LoadNbdAccess(const DaemonOptions& o, nbd::NbdServerOptions* nbd_options) {
  if (!o.nbd_tls_x509_dir.empty()) {
    auto creds = tls::Credentials::X509ServerDir(o.nbd_tls_x509_dir);
    if (!creds.ok()) return creds.status().WithContext("--nbd-tls-x509-dir");
    nbd_options->tls = *creds;
  }
  if (!o.nbd_tls_psk_file.empty()) {
    auto creds = tls::Credentials::PskServerFile(o.nbd_tls_psk_file);
    if (!creds.ok()) return creds.status().WithContext("--nbd-tls-psk-file");
    nbd_options->tls = *creds;
  }
  if (!o.nbd_tls_authz.empty()) {
    if (nbd_options->tls->kind() == tls::CredentialKind::kX509 &&
        !nbd_options->tls->requires_peer_certificate()) {
      return Status::InvalidArgument(
          "--nbd-tls-authz needs client certificates: put the CA that signs them in " +
          o.nbd_tls_x509_dir + "/ca-cert.pem");
    }
    auto authz = nbd::ExportAuthz::Load(o.nbd_tls_authz);
    if (!authz.ok()) return authz.status().WithContext("--nbd-tls-authz");
    nbd_options->authz = *authz;
  }
  if (!o.nbd_listen.empty() && o.nbd_insecure_tcp) {
    SHALE_LOG_WARN(
        "NBD TCP listener without TLS (--nbd-insecure-tcp): anyone who can connect to "
        "it can read and write every volume",
        {"address", o.nbd_listen});
  }
  return Status::Ok();
}

}  // namespace

Status Daemon::AddFrontends() {
  // Frontends start in this order and stop in reverse. NBD comes first so the control API
  // can report its bound address from its first answer, and stops last, after the control API
  // can no longer ask it for anything. The CSI endpoint comes last (see below).
  frontends_.push_back(std::make_unique<CapacityWatch>(lifecycle_.get()));
  nbd::NbdServer* nbd = nullptr;
  if (!options_.nbd_listen.empty() || !options_.nbd_socket.empty()) {
    nbd::NbdServerOptions nbd_options;
    nbd_options.tcp_address = options_.nbd_listen;
    nbd_options.unix_socket = options_.nbd_socket;
    nbd_options.max_connections = options_.nbd_max_connections;
    nbd_options.handshake_timeout = std::chrono::seconds(options_.nbd_handshake_timeout_s);
    SHALE_RETURN_IF_ERROR(LoadNbdAccess(options_, &nbd_options));
    auto endpoint = std::make_unique<NbdEndpoint>(lifecycle_.get(), std::move(nbd_options));
    nbd = endpoint->server();
    frontends_.push_back(std::move(endpoint));
  }
  // Cluster mode: the node registers in etcd once its replica listener (when asked) is bound,
  // and leaves (revokes its lease) after the control API stopped.
  ReplicaEndpoint* replica = nullptr;
  if (!options_.replica_listen.empty()) {
    replication::ReplicaServerOptions replica_options;
    replica_options.listen_address = options_.replica_listen;
    replica_options.node_name = options_.node_name;
    replica_options.secret = cluster_secret_;
    // Snapshots of the replicas it holds, and fencing a local target a newer one replaced.
    auto recorded = [this](const std::string& volume) -> Result<std::optional<std::string>> {
      ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
      if (r == nullptr) return Status::Unavailable("this node's cluster part is not started yet");
      return r->RecordedUuid(volume);
    };
    ReplicatedVolumes::ServeReplicaSnapshots(lifecycle_.get(), recorded, &replica_options);
    replica_options.on_epoch_raised = [this](const std::string& volume, uint64_t epoch) {
      if (ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire)) {
        r->FenceLocal(volume, epoch);
      }
    };
    auto endpoint = std::make_unique<ReplicaEndpoint>(engine_.get(), replica_transport_.get(),
                                                      !options_.cluster_tls_dir.empty(),
                                                      std::move(replica_options));
    replica = endpoint.get();
    frontends_.push_back(std::move(endpoint));
  }
  ClusterNode* cluster = nullptr;
  if (!options_.cluster_store.empty()) {
    ClusterNodeOptions cluster_options;
    cluster_options.cluster_store = options_.cluster_store;
    cluster_options.node_name = options_.node_name;
    cluster_options.replica_address = [replica] {
      return replica == nullptr ? std::string() : replica->address();
    };
    cluster_options.lease = std::chrono::seconds(options_.node_lease_seconds);
    auto node = std::make_unique<ClusterNode>(engine_.get(), std::move(cluster_options));
    cluster = node.get();
    frontends_.push_back(std::move(node));
  }
  // The targets of replicated volumes: after the node registered (they read the store), before
  // the control API.
  ReplicatedVolumes* replicated = nullptr;
  if (cluster != nullptr) {
    ReplicatedVolumesOptions replicated_options;
    replicated_options.node_name = options_.node_name;
    replicated_options.secret = cluster_secret_;
    replicated_options.replica_timeout =
        std::chrono::milliseconds(static_cast<int64_t>(options_.replica_timeout_seconds * 1000));
    replicated_options.rebuild_bps = options_.rebuild_bps;
    replicated_options.replace_after = std::chrono::milliseconds(
        static_cast<int64_t>(options_.replica_replace_after_seconds * 1000));
    replicated_options.transport = replica_transport_.get();
    if (replica != nullptr) {
      replicated_options.raise_local_epoch = [replica](const std::string& volume, uint64_t epoch) {
        return replica->RaiseEpoch(volume, epoch);
      };
    }
    auto targets = std::make_unique<ReplicatedVolumes>(lifecycle_.get(), cluster,
                                                       std::move(replicated_options));
    replicated = targets.get();
    replicated_.store(replicated, std::memory_order_release);
    frontends_.push_back(std::move(targets));
  }
  // Metrics before the control API, which reports their address.
  MetricsEndpoint* metrics = nullptr;
  if (!options_.metrics_listen.empty()) {
    ops::CollectorOptions metrics_options;
    metrics_options.node = options_.node_id.empty() ? csi::DefaultNodeId() : options_.node_id;
    metrics_options.version = SHALE_VERSION;
    metrics_options.usage_label = options_.metrics_usage_label;
    if (nbd != nullptr) {
      metrics_options.nbd_connections = [nbd] {
        return static_cast<uint32_t>(nbd->Clients().size());
      };
    }
    if (replicated != nullptr) {
      metrics_options.replicas = [this] {
        ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
        return r != nullptr ? r->Metrics() : std::vector<ops::ReplicaSample>();
      };
    }
    auto endpoint = std::make_unique<MetricsEndpoint>(lifecycle_.get(), options_.metrics_listen,
                                                      std::move(metrics_options));
    metrics = endpoint.get();
    frontends_.push_back(std::move(endpoint));
  }
  frontends_.push_back(std::make_unique<ControlEndpoint>(
      lifecycle_.get(), options_.control_socket, nbd, cluster, replicated, metrics,
      UnixGrpcServer::Audit{.source = "control", .log = audit_.get(), .peers = peers_.get()}));

  // CSI last: it attaches volumes through the NBD server and must stop before it.
  if (!options_.csi_endpoint.empty()) AddCsiFrontend();
  return Status::Ok();
}

void Daemon::AddCsiFrontend() {
  csi::DriverOptions csi_options;
  csi_options.version = SHALE_VERSION;
  // In cluster mode the CSI node id is the cluster's node name (replicated volumes' topology
  // names the nodes holding their replicas), unless --node-id says otherwise.
  csi_options.node_id = !options_.node_id.empty()     ? options_.node_id
                        : !options_.node_name.empty() ? options_.node_name
                                                      : csi::DefaultNodeId();
  csi_options.data_dir = options_.data_dir;
  csi_options.nbd_socket = options_.nbd_socket;
  // DeleteVolume as `shale volume delete`: a replicated volume goes through its target.
  csi_options.delete_volume = [this](const std::string& name) {
    ReplicatedVolumes* targets = replicated_.load(std::memory_order_acquire);
    if (targets != nullptr && (targets->IsReplicated(name) || targets->IsElsewhere(name))) {
      return targets->Delete(name, {});
    }
    return lifecycle_->Delete(name);
  };
  csi_options.change_gate = [this] { return lifecycle_->CheckChangeGate(); };
  if (!options_.cluster_store.empty()) AddCsiClusterHooks(&csi_options);
  // A read-only clone of a replicated volume's snapshot staged here, made on another node: this
  // node's own clone of its copy of the snapshot (docs/csi.md, "Read-only clones on many nodes").
  csi_options.create_clone_copy = [this](const std::string& name,
                                         const std::string& snapshot) -> Status {
    return lifecycle_
        ->Clone({.source = snapshot,
                 .name = name,
                 .read_only = true,
                 .labels = {{std::string(csi::kLabelCloneCopy), "true"},
                            {std::string(csi::kLabelCloneOf), snapshot}}})
        .status();
  };
  // CSI calls name volumes by id: their labels (the PVC the driver recorded) fill the record.
  ops::VolumeLabelLookup labels = [engine = engine_.get()](const std::string& volume) {
    Result<VolumeInfo> info = engine->GetVolume(volume);
    return info.ok() ? info->labels : std::map<std::string, std::string>();
  };
  frontends_.push_back(std::make_unique<CsiEndpoint>(
      std::move(csi_options), lifecycle_.get(), options_.csi_endpoint,
      UnixGrpcServer::Audit{
          .source = "csi", .log = audit_.get(), .peers = peers_.get(), .labels = labels}));
}

Status Daemon::StartFrontends() {
  for (const auto& frontend : frontends_) {
    Status st = frontend->Start();
    if (!st.ok()) return st.WithContext("start " + std::string(frontend->name()) + " server");
    SHALE_LOG_INFO("frontend serving", {"frontend", std::string(frontend->name())},
                   {"endpoint", frontend->endpoint()});
  }
  return Status::Ok();
}

void Daemon::RequestStop() {
  std::lock_guard lock(mu_);
  stop_requested_ = true;
  cv_.notify_all();
}

void Daemon::Wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return stop_requested_; });
}

Status Daemon::Stop() {
  // Requests held by QoS limits pass now, so frontends drain at device speed rather than at
  // the slowest volume's rate.
  if (qos_) qos_->StopThrottling();
  // Backups and restores in flight end with Aborted now, so their requests drain at once.
  if (backups_) backups_->Stop();
  for (auto it = frontends_.rbegin(); it != frontends_.rend(); ++it) (*it)->Stop();
  replicated_.store(nullptr, std::memory_order_release);
  frontends_.clear();
  if (lifecycle_) lifecycle_->SetBackups(nullptr);
  lifecycle_.reset();
  peers_.reset();
  audit_.reset();  // every frontend and the lifecycle's change gate are gone
  backups_.reset();
  // No frontend calls it any more; its digest worker must let go of image views before the
  // engine closes (a cancelled digest stays pending and restarts at the next start).
  if (snapshots_) {
    snapshots_->Stop();
    snapshots_.reset();
  }
  // Every QosVolume (held by NBD exports and snapshot jobs) is gone with the frontends and the
  // snapshot layer; the layers and pool schedulers go before the engine they submit to.
  background_qos_.store(nullptr, std::memory_order_release);
  qos_.reset();
  if (!engine_) return Status::Ok();
  Status st = engine_->Shutdown();
  engine_.reset();
  return st;
}

}  // namespace shale::daemon
