#include "daemon/ops/peer_acceptor.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "engine/common/log.h"

namespace shale::daemon::ops {
namespace {

std::string CommandOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(in, comm);
  return comm;
}

}  // namespace

void PeerRegistry::Record(int fd, PeerCreds creds) {
  std::lock_guard lock(mu_);
  by_fd_[fd] = std::move(creds);
}

std::optional<PeerCreds> PeerRegistry::Lookup(std::string_view grpc_peer) const {
  if (!grpc_peer.starts_with("fd:")) return std::nullopt;
  int fd = 0;
  for (char c : grpc_peer.substr(3)) {
    if (c < '0' || c > '9') return std::nullopt;
    fd = fd * 10 + (c - '0');
    if (fd > 1 << 24) return std::nullopt;
  }
  std::lock_guard lock(mu_);
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return std::nullopt;
  return it->second;
}

Result<std::unique_ptr<UnixAcceptor>> UnixAcceptor::Start(const std::string& path,
                                                          const std::string& kind,
                                                          PeerRegistry* registry,
                                                          OnConnection on_connection) {
  std::unique_ptr<UnixAcceptor> a(new UnixAcceptor());
  a->path_ = path;
  a->kind_ = kind;
  a->registry_ = registry;
  a->on_connection_ = std::move(on_connection);
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument(kind + " socket path '" + path + "' is too long");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  a->listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (a->listen_fd_ < 0) return Status::FromErrno(errno, kind + " socket");
  // A restrictive umask closes the window in which the socket would be reachable with default
  // permissions; chmod below makes sure. (umask is per process: files other threads create
  // meanwhile only get stricter modes.)
  const mode_t old_umask = umask(0077);
  const int rc = bind(a->listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  const int bind_errno = errno;
  umask(old_umask);
  if (rc != 0) return Status::FromErrno(bind_errno, "bind " + kind + " socket " + path);
  if (chmod(path.c_str(), 0600) != 0) {
    return Status::FromErrno(errno, "chmod 0600 " + kind + " socket " + path);
  }
  if (listen(a->listen_fd_, 128) != 0) return Status::FromErrno(errno, "listen on " + path);
  a->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (a->stop_fd_ < 0) return Status::FromErrno(errno, "eventfd");
  a->thread_ = std::thread([raw = a.get()] { raw->Loop(); });
  return a;
}

UnixAcceptor::~UnixAcceptor() {
  Stop();
  if (stop_fd_ >= 0) close(stop_fd_);
}

void UnixAcceptor::Stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    if (write(stop_fd_, &one, sizeof(one)) < 0) {
      SHALE_LOG_WARN("could not wake an acceptor to stop it", {"socket", path_}, {"errno", errno});
    }
    thread_.join();
  }
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
}

void UnixAcceptor::Loop() {
  pthread_setname_np(pthread_self(), ("accept-" + kind_).substr(0, 15).c_str());
  pollfd fds[2] = {{stop_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
  while (true) {
    fds[0].revents = fds[1].revents = 0;
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SHALE_LOG_ERROR("acceptor poll failed; no new connections are accepted", {"socket", path_},
                      {"error", Status::FromErrno(errno, "poll").ToString()});
      return;
    }
    if (fds[0].revents != 0) return;
    while (true) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;  // EAGAIN, or a client that went away
      ucred cred{};
      socklen_t len = sizeof(cred);
      PeerCreds creds;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        creds.pid = cred.pid;
        creds.uid = cred.uid;
        creds.gid = cred.gid;
        creds.command = CommandOf(cred.pid);
      }
      if (registry_ != nullptr) registry_->Record(fd, creds);
      on_connection_(fd, creds);
    }
  }
}

}  // namespace shale::daemon::ops
