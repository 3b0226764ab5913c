#include "nbd/server.h"

#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engine/common/log.h"
#include "engine/common/net_address.h"
#include "engine/io/reactor.h"
#include "nbd/connection.h"

namespace shale::nbd {

namespace {

using SteadyClock = std::chrono::steady_clock;

// Stop(): time the connections get to finish their requests before they are cut.
constexpr auto kStopGrace = std::chrono::seconds(10);
// After EMFILE & co. the accept is retried after this delay instead of spinning.
constexpr uint64_t kAcceptRetryNs = 100'000'000;
constexpr int kListenBacklog = 128;

uint64_t UnixNanos() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Runs blocking work (export lookups, export releases) off the reactors, in posting order.
class Worker {
 public:
  explicit Worker(const char* name) : name_(name), thread_([this] { Run(); }) {}
  ~Worker() { Stop(); }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void Post(std::function<void()> fn) {
    {
      std::lock_guard lock(mu_);
      SHALE_CHECK(!stop_, "NBD worker used after Stop()");
      tasks_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  // Runs what is queued, then joins.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() {
    pthread_setname_np(pthread_self(), name_);
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      std::function<void()> fn = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  const char* const name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Core: listeners, the connection registry, the worker. Connections (connection.h) reach it
// through ConnectionHost.

class NbdServer::Core final : public ConnectionHost {
 public:
  Core(std::vector<Reactor*> reactors, ExportResolver* resolver, NbdServerOptions options)
      : reactors_(std::move(reactors)), resolver_(resolver), options_(std::move(options)) {
    SHALE_CHECK(!reactors_.empty(), "NbdServer needs a reactor");
  }
  ~Core() { Stop(); }

  Status Start();
  void Stop();

  std::string tcp_address() const { return tcp_bound_; }
  std::vector<NbdListenerInfo> Listeners() const;
  const std::string& unix_socket() const { return options_.unix_socket; }
  std::string ExportUri(std::string_view name) const;
  unsigned max_connections() const { return options_.max_connections; }
  std::vector<NbdClientInfo> Clients() const;
  Status WithExportClosed(std::string_view name, std::chrono::milliseconds timeout,
                          const std::function<Status()>& fn);

  // --- used by listeners ---
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }
  // On the accept reactor: a new socket.
  void OnAccepted(Reactor* reactor, int fd, const sockaddr_storage& addr, bool tcp);
  void OnListenerDone();

  // --- ConnectionHost: used by connections ---
  const NbdServerOptions& options() const override { return options_; }
  Result<std::unique_ptr<Export>> OpenExport(const std::string& name) override;
  std::vector<std::string> ListExports() override { return resolver_->List(); }
  void ReleaseExport(std::unique_ptr<Export> exp) override;
  void PostToWorker(std::function<void()> fn) override { worker_->Post(std::move(fn)); }
  void PostToTlsWorker(std::function<void()> fn) override { tls_worker_->Post(std::move(fn)); }
  void SetTlsIdentity(uint64_t id, const std::string& identity) override;
  void SetExportName(uint64_t id, const std::string& name) override;
  void Unregister(uint64_t id) override;

 private:
  class Listener;
  struct Entry {
    Connection* conn = nullptr;
    NbdClientInfo info;
    std::shared_ptr<ConnStats> stats;
  };
  Status Listen(int fd, const sockaddr* addr, socklen_t len, const std::string& what);
  void CloseConnections(bool hard);

  const std::vector<Reactor*> reactors_;
  ExportResolver* const resolver_;
  const NbdServerOptions options_;
  std::string tcp_bound_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unique_ptr<Worker> worker_;
  std::unique_ptr<Worker> tls_worker_;  // TLS handshakes (only with options_.tls)
  std::atomic<bool> stopping_{false};
  bool started_ = false;
  bool stopped_ = false;

  mutable std::mutex mu_;  // guards everything below; never held across I/O
  std::condition_variable cv_;
  std::map<uint64_t, Entry> conns_;
  uint64_t next_id_ = 1;
  std::map<std::string, int, std::less<>> open_exports_;  // exports held, by name
  std::set<std::string, std::less<>> blocked_;            // exports being deleted
  int listeners_running_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Listener: one ACCEPT in flight on the accept reactor.

class NbdServer::Core::Listener final : public CompletionHandler {
 public:
  Listener(Core* core, Reactor* reactor, int fd, bool tcp)
      : core_(core), reactor_(reactor), fd_(fd), tcp_(tcp) {}
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }

  // On the reactor.
  void Arm() {
    addr_len_ = sizeof(addr_);
    io_uring_sqe* sqe = reactor_->PrepareSqe(this);
    io_uring_prep_accept(sqe, fd_, reinterpret_cast<sockaddr*>(&addr_), &addr_len_, SOCK_CLOEXEC);
    in_flight_ = true;
  }

  // On the reactor: cancels the ACCEPT; OnListenerDone() follows once neither the ACCEPT nor
  // the cancel is in flight (the Listener is destroyed right after).
  void Cancel() {
    stopping_ = true;
    if (in_flight_) {
      io_uring_sqe* sqe = reactor_->PrepareSqe(&cancel_handler_);
      io_uring_prep_cancel(sqe, this, 0);
      cancel_in_flight_ = true;
      return;
    }
    if (retry_timer_ != 0) {
      reactor_->CancelTimer(retry_timer_);
      retry_timer_ = 0;
    }
    MaybeDone();
  }

  void OnCompletion(int32_t res, uint32_t /*flags*/) override {
    in_flight_ = false;
    if (res >= 0) core_->OnAccepted(reactor_, res, addr_, tcp_);
    if (stopping_) return MaybeDone();
    if (res >= 0 || res == -EINTR || res == -EAGAIN || res == -ECONNABORTED) return Arm();
    SHALE_LOG_WARN("nbd accept failed; retrying", {"error", ErrnoText(-res)},
                   {"transport", tcp_ ? "tcp" : "unix"});
    retry_timer_ = reactor_->AddTimer(kAcceptRetryNs, [this] {
      retry_timer_ = 0;
      if (stopping_) return MaybeDone();
      Arm();
    });
  }

 private:
  class CancelHandler final : public CompletionHandler {
   public:
    explicit CancelHandler(Listener* l) : listener_(l) {}
    void OnCompletion(int32_t /*res*/, uint32_t /*flags*/) override {
      listener_->cancel_in_flight_ = false;
      listener_->MaybeDone();
    }

   private:
    Listener* listener_;
  };
  void MaybeDone() {
    if (done_ || in_flight_ || cancel_in_flight_ || retry_timer_ != 0) return;
    done_ = true;
    core_->OnListenerDone();
  }

  Core* const core_;
  Reactor* const reactor_;
  const int fd_;
  const bool tcp_;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  bool in_flight_ = false;
  bool cancel_in_flight_ = false;
  bool stopping_ = false;
  bool done_ = false;
  uint64_t retry_timer_ = 0;
  CancelHandler cancel_handler_{this};
};

Status NbdServer::Core::Listen(int fd, const sockaddr* addr, socklen_t len,
                               const std::string& what) {
  if (bind(fd, addr, len) != 0) {
    const int err = errno;
    std::string hint;
    if (err == EADDRINUSE) hint = " (is another shaled or NBD server using it? see --nbd-listen)";
    return Status::FromErrno(err, "cannot listen for NBD on " + what + hint);
  }
  if (listen(fd, kListenBacklog) != 0) {
    return Status::FromErrno(errno, "cannot listen for NBD on " + what);
  }
  return Status::Ok();
}

Status NbdServer::Core::Start() {
  SHALE_CHECK(!started_, "NbdServer started twice");
  if (options_.handshake.max_option_length > kRecvBufferSize / 2) {
    return Status::InvalidArgument("NBD max option length must be at most " +
                                   std::to_string(kRecvBufferSize / 2));
  }
  if (options_.max_connections == 0 || options_.max_requests_in_flight == 0) {
    return Status::InvalidArgument("NBD connection and request limits must be at least 1");
  }
  if (options_.tls != nullptr && !options_.tls->CanServe(tls::Role::kServer)) {
    return Status::InvalidArgument("NBD TLS credentials are not server credentials");
  }
  if (options_.authz != nullptr && options_.tls == nullptr) {
    return Status::InvalidArgument("NBD export authorization needs TLS on the TCP listener");
  }
  // Every socket operation is an SQE: make sure the kernel has them all.
  Reactor* acceptor = reactors_.front();
  Status probe;
  acceptor->RunSync([&] {
    for (int op : {IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG,
                   IORING_OP_ASYNC_CANCEL}) {
      if (!acceptor->features().Supports(op)) {
        probe = Status::NotSupported("io_uring lacks opcode " + std::to_string(op) +
                                     " needed by the NBD server (kernel too old?)");
      }
    }
  });
  SHALE_RETURN_IF_ERROR(probe);

  std::vector<std::pair<int, bool>> fds;  // fd, tcp
  auto close_all = [&fds] {
    for (const auto& [fd, tcp] : fds) close(fd);
  };
  if (!options_.tcp_address.empty()) {
    Result<ListenAddress> addr = ParseListenAddress(options_.tcp_address, "NBD listen address");
    if (!addr.ok()) return addr.status();
    const int fd = socket(addr->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno(errno, "socket");
    fds.emplace_back(fd, true);
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    Status st =
        Listen(fd, reinterpret_cast<const sockaddr*>(&addr->addr), addr->len, options_.tcp_address);
    if (!st.ok()) {
      close_all();
      return st;
    }
    sockaddr_storage bound{};
    socklen_t bound_len = sizeof(bound);
    getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_len);
    tcp_bound_ = FormatAddress(bound);
  }
  if (!options_.unix_socket.empty()) {
    sockaddr_un addr{};
    if (options_.unix_socket.size() >= sizeof(addr.sun_path)) {
      close_all();
      return Status::InvalidArgument("NBD socket path '" + options_.unix_socket +
                                     "' is too long for a UNIX socket");
    }
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      close_all();
      return Status::FromErrno(errno, "socket");
    }
    fds.emplace_back(fd, false);
    // The socket file gets the socket inode's mode (minus umask) at bind: 0600 from the start.
    fchmod(fd, 0600);
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, options_.unix_socket.c_str(), options_.unix_socket.size() + 1);
    Status st = Listen(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr),
                       "unix://" + options_.unix_socket);
    if (!st.ok()) {
      close_all();
      return st;
    }
  }
  worker_ = std::make_unique<Worker>("nbd-worker");
  if (options_.tls != nullptr) tls_worker_ = std::make_unique<Worker>("nbd-tls");
  listeners_running_ = static_cast<int>(fds.size());
  for (const auto& [fd, tcp] : fds) {
    listeners_.push_back(std::make_unique<Listener>(this, acceptor, fd, tcp));
  }
  acceptor->RunSync([this] {
    for (auto& l : listeners_) l->Arm();
  });
  started_ = true;
  for (const NbdListenerInfo& l : Listeners()) {
    std::string access = "socket mode 0600 (owner only)";
    if (l.transport == "tcp") {
      access = l.tls.empty() ? "no TLS: open to anyone who can connect"
                             : "TLS required: " + options_.tls->Describe();
      if (l.authz) access += ", per-export authorization";
    }
    SHALE_LOG_INFO("nbd listener open", {"transport", l.transport}, {"address", l.address},
                   {"access", access}, {"max_connections", options_.max_connections});
  }
  return Status::Ok();
}

void NbdServer::Core::OnListenerDone() {
  std::lock_guard lock(mu_);
  --listeners_running_;
  cv_.notify_all();
}

void NbdServer::Core::OnAccepted(Reactor* reactor, int fd, const sockaddr_storage& addr, bool tcp) {
  if (stopping()) {
    close(fd);
    return;
  }
  std::string peer;
  if (tcp) {
    const int one = 1;
    // Replies are small and latency-bound: never wait for Nagle.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    peer = FormatAddress(addr);
  } else {
    ucred cred{};
    socklen_t len = sizeof(cred);
    peer = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0
               ? "pid " + std::to_string(cred.pid)
               : "unix";
  }
  Connection* conn = nullptr;
  {
    std::lock_guard lock(mu_);
    if (conns_.size() >= options_.max_connections) {
      // Closing at once tells the client more than leaving it in the backlog.
      SHALE_LOG_WARN("nbd connection refused: too many connections", {"peer", peer},
                     {"max_connections", options_.max_connections});
      close(fd);
      return;
    }
    const uint64_t id = next_id_++;
    auto stats = std::make_shared<ConnStats>();
    conn = Connection::Create(this, id, fd, reactor, stats, tcp);
    Entry& e = conns_[id];
    e.conn = conn;
    e.stats = std::move(stats);
    e.info.id = id;
    e.info.transport = tcp ? "tcp" : "unix";
    e.info.peer = peer;
    e.info.connected_unix_ns = UnixNanos();
  }
  conn->Start();
}

Result<std::unique_ptr<Export>> NbdServer::Core::OpenExport(const std::string& name) {
  {
    std::lock_guard lock(mu_);
    if (stopping()) return Status::Unavailable("the server is shutting down");
    if (blocked_.count(name) > 0) {
      return Status::FailedPrecondition("export '" + name + "' is being deleted");
    }
  }
  Result<std::unique_ptr<Export>> exp = resolver_->Open(name);
  if (exp.ok()) {
    std::lock_guard lock(mu_);
    ++open_exports_[(*exp)->name()];
  }
  return exp;
}

void NbdServer::Core::ReleaseExport(std::unique_ptr<Export> exp) {
  auto holder = std::make_shared<std::unique_ptr<Export>>(std::move(exp));
  worker_->Post([this, holder] {
    const std::string name = (*holder)->name();
    holder->reset();
    std::lock_guard lock(mu_);
    if (--open_exports_[name] <= 0) open_exports_.erase(name);
    cv_.notify_all();
  });
}

void NbdServer::Core::SetExportName(uint64_t id, const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = conns_.find(id);
  if (it != conns_.end()) it->second.info.export_name = name;
}

void NbdServer::Core::SetTlsIdentity(uint64_t id, const std::string& identity) {
  std::lock_guard lock(mu_);
  auto it = conns_.find(id);
  if (it != conns_.end()) it->second.info.tls = identity;
}

std::vector<NbdListenerInfo> NbdServer::Core::Listeners() const {
  std::vector<NbdListenerInfo> out;
  if (!tcp_bound_.empty()) {
    NbdListenerInfo l{.transport = "tcp", .address = tcp_bound_};
    if (options_.tls != nullptr) {
      l.tls = options_.tls->kind() == tls::CredentialKind::kPsk ? "psk" : "x509";
      l.client_certificates = options_.tls->requires_peer_certificate();
      l.authz = options_.authz != nullptr;
    }
    out.push_back(std::move(l));
  }
  if (!options_.unix_socket.empty()) {
    out.push_back({.transport = "unix", .address = options_.unix_socket});
  }
  return out;
}

void NbdServer::Core::Unregister(uint64_t id) {
  std::lock_guard lock(mu_);
  conns_.erase(id);
  cv_.notify_all();
}

void NbdServer::Core::CloseConnections(bool hard) {
  std::lock_guard lock(mu_);
  for (auto& [id, e] : conns_) e.conn->RequestClose(hard);
}

void NbdServer::Core::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_release);
  Reactor* acceptor = reactors_.front();
  acceptor->Post([this] {
    for (auto& l : listeners_) l->Cancel();
  });
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return listeners_running_ == 0; });
  }
  listeners_.clear();
  if (!options_.unix_socket.empty()) unlink(options_.unix_socket.c_str());

  // Let clients finish what they sent, then cut the ones that do not drain (a client that
  // stopped reading its replies).
  CloseConnections(/*hard=*/false);
  {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kStopGrace, [this] { return conns_.empty(); })) {
      SHALE_LOG_WARN("nbd connections did not drain; cutting them", {"connections", conns_.size()});
    }
  }
  CloseConnections(/*hard=*/true);
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return conns_.empty(); });
  }
  if (tls_worker_) tls_worker_->Stop();
  worker_->Stop();  // runs the last export releases
  SHALE_LOG_INFO("nbd server stopped");
}

std::string NbdServer::Core::ExportUri(std::string_view name) const {
  if (!tcp_bound_.empty()) {
    return (options_.tls != nullptr ? "nbds://" : "nbd://") + tcp_bound_ + "/" + std::string(name);
  }
  if (!options_.unix_socket.empty()) {
    return "nbd+unix:///" + std::string(name) + "?socket=" + options_.unix_socket;
  }
  return "";
}

std::vector<NbdClientInfo> NbdServer::Core::Clients() const {
  std::lock_guard lock(mu_);
  std::vector<NbdClientInfo> out;
  out.reserve(conns_.size());
  for (const auto& [id, e] : conns_) {
    NbdClientInfo info = e.info;
    info.requests = e.stats->requests.load(std::memory_order_relaxed);
    info.bytes_read = e.stats->bytes_read.load(std::memory_order_relaxed);
    info.bytes_written = e.stats->bytes_written.load(std::memory_order_relaxed);
    info.errors = e.stats->errors.load(std::memory_order_relaxed);
    out.push_back(std::move(info));
  }
  return out;
}

Status NbdServer::Core::WithExportClosed(std::string_view name, std::chrono::milliseconds timeout,
                                         const std::function<Status()>& fn) {
  const std::string key(name);
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock lock(mu_);
  blocked_.insert(key);
  // Disconnect every client of the export, including one that is just finishing its
  // handshake, until nobody holds it.
  while (open_exports_.count(key) > 0) {
    for (auto& [id, e] : conns_) {
      if (e.info.export_name == key) e.conn->RequestClose(/*hard=*/false);
    }
    if (cv_.wait_until(lock, std::min(deadline, SteadyClock::now() + std::chrono::milliseconds(50)),
                       [&] { return open_exports_.count(key) == 0; })) {
      break;
    }
    if (SteadyClock::now() >= deadline) {
      blocked_.erase(key);
      return Status::Unavailable("clients of '" + key + "' did not disconnect within " +
                                 std::to_string(timeout.count()) + " ms");
    }
  }
  lock.unlock();
  Status st = fn();
  lock.lock();
  blocked_.erase(key);
  return st;
}

Status ValidateListenAddress(std::string_view address) {
  return ParseListenAddress(address, "NBD listen address").status();
}

// ---------------------------------------------------------------------------------------------
// NbdServer

NbdServer::NbdServer(std::vector<Reactor*> reactors, ExportResolver* resolver,
                     NbdServerOptions options)
    : core_(std::make_unique<Core>(std::move(reactors), resolver, std::move(options))) {}

NbdServer::~NbdServer() { Stop(); }

Status NbdServer::Start() { return core_->Start(); }
void NbdServer::Stop() { core_->Stop(); }
std::string NbdServer::tcp_address() const { return core_->tcp_address(); }
std::vector<NbdListenerInfo> NbdServer::Listeners() const { return core_->Listeners(); }
const std::string& NbdServer::unix_socket() const { return core_->unix_socket(); }
std::string NbdServer::ExportUri(std::string_view name) const { return core_->ExportUri(name); }
unsigned NbdServer::max_connections() const { return core_->max_connections(); }
std::vector<NbdClientInfo> NbdServer::Clients() const { return core_->Clients(); }
Status NbdServer::WithExportClosed(std::string_view name, std::chrono::milliseconds timeout,
                                   const std::function<Status()>& fn) {
  return core_->WithExportClosed(name, timeout, fn);
}

}  // namespace shale::nbd
