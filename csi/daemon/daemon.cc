#include "csi/daemon/daemon.h"

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "csi/daemon/control_service.h"
#include "engine/common/log.h"
#include "engine/engine.h"

namespace shale {

namespace {

// Bounds on the control server: it serves a handful of admins and sidecars, not a data path.
constexpr int kControlMaxThreads = 16;
constexpr int kControlMaxMessageBytes = 4 * 1024 * 1024;
// How long Stop() lets in-flight control requests finish before cancelling them.
constexpr auto kControlDrainTimeout = std::chrono::seconds(10);

// Makes `path` free for a new listening socket. A socket file nobody accepts on is a leftover
// of a killed daemon and is removed; a live socket or a file of another kind is never touched.
Status PrepareSocketPath(const std::string& path) {
  if (path.empty() || path.size() > MaxUnixSocketPath()) {
    return Status::InvalidArgument("control socket path '" + path + "' must be 1.." +
                                   std::to_string(MaxUnixSocketPath()) + " bytes long");
  }
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!std::filesystem::is_directory(parent, ec)) {
    return Status::NotFound("directory " + parent.string() + " of the control socket " + path +
                            " does not exist");
  }
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return Status::FromErrno(errno, "control socket " + path);
  }
  if (!S_ISSOCK(st.st_mode)) {
    return Status::FailedPrecondition("control socket path " + path +
                                      " exists and is not a socket; refusing to replace it");
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // length checked above
  const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  const int err = errno;
  close(fd);
  if (rc == 0) {
    return Status::Busy("control socket " + path +
                        " is in use by another process (is another shaled running?)");
  }
  if (err != ECONNREFUSED) {
    return Status::FromErrno(err, "probe control socket " + path);
  }
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "remove stale control socket " + path);
  }
  SHALE_LOG_INFO("removed stale control socket", {"path", path});
  return Status::Ok();
}

// The control API: shale.v1.Control on a UNIX socket only its owner can use (mode 0600).
class ControlEndpoint final : public Frontend {
 public:
  ControlEndpoint(Engine* engine, std::string socket_path)
      : socket_path_(std::move(socket_path)),
        service_(engine, {.version = SHALE_VERSION, .control_endpoint = "unix://" + socket_path_}) {
  }
  ~ControlEndpoint() override { Stop(); }

  std::string_view name() const override { return "control"; }
  std::string endpoint() const override { return "unix://" + socket_path_; }

  Status Start() override {
    SHALE_RETURN_IF_ERROR(PrepareSocketPath(socket_path_));
    grpc::ServerBuilder builder;
    builder.AddListeningPort(endpoint(), grpc::InsecureServerCredentials());
    builder.RegisterService(&service_);
    builder.SetMaxReceiveMessageSize(kControlMaxMessageBytes);
    grpc::ResourceQuota quota("shaled-control");
    quota.SetMaxThreads(kControlMaxThreads);
    builder.SetResourceQuota(quota);
    // The socket is created inside BuildAndStart: a restrictive umask closes the window in
    // which it would be reachable with default permissions; chmod below makes sure. (umask is
    // per process: files other threads create meanwhile only get stricter modes.)
    const mode_t old_umask = umask(0077);
    server_ = builder.BuildAndStart();
    umask(old_umask);
    if (!server_) {
      return Status::Unavailable("cannot listen on control socket " + socket_path_ +
                                 " (see the log for gRPC's reason)");
    }
    if (chmod(socket_path_.c_str(), 0600) != 0) {
      const int err = errno;
      Stop();
      return Status::FromErrno(err, "chmod 0600 control socket " + socket_path_);
    }
    return Status::Ok();
  }

  void Stop() override {
    if (!server_) return;
    server_->Shutdown(std::chrono::system_clock::now() + kControlDrainTimeout);
    server_->Wait();
    server_.reset();
    // Ours: we bound it and nobody else can have replaced it while we held the path.
    if (unlink(socket_path_.c_str()) != 0 && errno != ENOENT) {
      SHALE_LOG_WARN("could not remove control socket", {"path", socket_path_},
                     {"error", Status::FromErrno(errno, "unlink").ToString()});
    }
  }

 private:
  const std::string socket_path_;
  ControlService service_;
  std::unique_ptr<grpc::Server> server_;
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

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() { Stop().IgnoreError(); }

Status Daemon::Start() {
  SHALE_LOG_INFO("shaled starting", {"version", SHALE_VERSION}, {"pid", getpid()},
                 {"data_dir", options_.data_dir}, {"reactors", options_.reactors},
                 {"io_backend", std::string(IoBackendName(options_.io_backend))},
                 {"config", options_.config_file});
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

  // More frontends (NBD, CSI) are added here, after the engine and in the order they should
  // start; they stop in reverse.
  frontends_.push_back(std::make_unique<ControlEndpoint>(engine_.get(), options_.control_socket));

  for (const auto& frontend : frontends_) {
    Status st = frontend->Start();
    if (!st.ok()) {
      st = st.WithContext("start " + std::string(frontend->name()) + " server");
      // Stop() destroys the frontends (`frontend` included): nothing may touch them after it.
      Status stopped = Stop();
      if (!stopped.ok()) {
        SHALE_LOG_ERROR("shutdown after a failed start was not clean",
                        {"error", stopped.ToString()});
      }
      return st;
    }
    SHALE_LOG_INFO("frontend serving", {"frontend", std::string(frontend->name())},
                   {"endpoint", frontend->endpoint()});
  }
  SHALE_LOG_INFO("shaled ready", {"control", options_.ControlEndpoint()},
                 {"pools", engine_->ListPools().size()},
                 {"volumes", engine_->ListVolumes().size()});
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
  for (auto it = frontends_.rbegin(); it != frontends_.rend(); ++it) (*it)->Stop();
  frontends_.clear();
  if (!engine_) return Status::Ok();
  Status st = engine_->Shutdown();
  engine_.reset();
  return st;
}

}  // namespace shale
