#include "daemon/ops/http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "engine/common/log.h"
#include "engine/common/net_address.h"

namespace shale::daemon::ops {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::string Response(int code, std::string_view reason, std::string_view content_type,
                     const std::string& body, bool head, std::string_view extra_headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + std::string(reason) + "\r\n";
  out += "Content-Type: " + std::string(content_type) + "\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Connection: close\r\n";
  out += extra_headers;
  out += "\r\n";
  if (!head) out += body;
  return out;
}

}  // namespace

Status ValidateMetricsListen(std::string_view address) {
  if (address == "none") return Status::Ok();
  return ParseListenAddress(address, "metrics listen address", " or none").status();
}

struct MetricsHttpServer::Connection {
  int fd = -1;
  SteadyClock::time_point deadline;
  std::string in;
  std::string out;
  size_t written = 0;
  bool answering = false;
  ~Connection() {
    if (fd >= 0) close(fd);
  }
};

MetricsHttpServer::MetricsHttpServer(MetricsHttpOptions options, Handler handler)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      connections_(std::make_unique<std::vector<std::unique_ptr<Connection>>>()) {}

MetricsHttpServer::~MetricsHttpServer() {
  Stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
}

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const MetricsHttpOptions& options, Handler handler) {
  SHALE_ASSIGN_OR_RETURN(ListenAddress addr,
                         ParseListenAddress(options.listen, "metrics listen address", " or none"));
  std::unique_ptr<MetricsHttpServer> s(new MetricsHttpServer(options, std::move(handler)));
  s->listen_fd_ = socket(addr.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->listen_fd_ < 0) return Status::FromErrno(errno, "metrics socket");
  const int one = 1;
  setsockopt(s->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(s->listen_fd_, reinterpret_cast<const sockaddr*>(&addr.addr), addr.len) != 0) {
    return Status::FromErrno(errno, "bind metrics listener to " + options.listen +
                                        " (is another shaled using it? --metrics-listen "
                                        "chooses another address, none turns it off)");
  }
  if (listen(s->listen_fd_, 64) != 0) return Status::FromErrno(errno, "listen " + options.listen);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return Status::FromErrno(errno, "getsockname of the metrics listener");
  }
  s->address_ = FormatAddress(bound);
  s->stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->stop_fd_ < 0) return Status::FromErrno(errno, "eventfd");
  s->thread_ = std::thread([raw = s.get()] { raw->Loop(); });
  return s;
}

void MetricsHttpServer::Stop() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  if (write(stop_fd_, &one, sizeof(one)) < 0) {
    SHALE_LOG_WARN("metrics: could not wake the server to stop it", {"errno", errno});
  }
  thread_.join();
  connections_->clear();
  close(listen_fd_);
  listen_fd_ = -1;
}

void MetricsHttpServer::Loop() {
  pthread_setname_np(pthread_self(), "metrics-http");
  std::vector<pollfd> fds;
  while (true) {
    fds.clear();
    fds.push_back({stop_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    auto now = SteadyClock::now();
    auto next_deadline = now + options_.io_timeout;
    for (const auto& c : *connections_) {
      fds.push_back({c->fd, static_cast<short>(c->answering ? POLLOUT : POLLIN), 0});
      next_deadline = std::min(next_deadline, c->deadline);
    }
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - now);
    const int n =
        poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait.count(), 1)));
    if (n < 0 && errno != EINTR) {
      SHALE_LOG_ERROR("metrics: poll failed; the metrics server stops",
                      {"error", Status::FromErrno(errno, "poll").ToString()});
      return;
    }
    if (fds[0].revents != 0) return;
    // Connections first (their indexes match fds[2..]); then new ones.
    now = SteadyClock::now();
    std::vector<std::unique_ptr<Connection>> keep;
    for (size_t i = 0; i < connections_->size(); ++i) {
      std::unique_ptr<Connection>& c = (*connections_)[i];
      const short ev = n > 0 ? fds[i + 2].revents : 0;
      bool open = true;
      if (ev & (POLLERR | POLLHUP | POLLNVAL) && !(ev & POLLIN)) {
        open = false;
      } else if (ev & POLLIN) {
        open = OnReadable(*c);
      } else if (ev & POLLOUT) {
        open = OnWritable(*c);
      }
      if (open && now >= c->deadline) open = false;  // too slow: dropped
      if (open) keep.push_back(std::move(c));
    }
    *connections_ = std::move(keep);
    if (n > 0 && (fds[1].revents & POLLIN)) Accept();
  }
}

void MetricsHttpServer::Accept() {
  for (int i = 0; i < 64; ++i) {  // bounded per turn: connections also need serving
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN, or a connection that went away
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    c->deadline = SteadyClock::now() + options_.io_timeout;
    if (connections_->size() >= options_.max_connections) {
      c->out = Response(503, "Service Unavailable", "text/plain; charset=utf-8",
                        "too many connections\n", false);
      c->answering = true;
      OnWritable(*c);  // best effort, once: it is closed either way
      continue;
    }
    connections_->push_back(std::move(c));
  }
}

bool MetricsHttpServer::OnReadable(Connection& c) {
  char buf[4096];
  while (true) {
    const ssize_t n = read(c.fd, buf, sizeof(buf));
    if (n == 0) return false;  // the client closed before its request was complete
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.in.append(buf, static_cast<size_t>(n));
    const size_t end = c.in.find("\r\n\r\n");
    if (end != std::string::npos || c.in.size() > kMaxRequestBytes) {
      c.out = end != std::string::npos
                  ? Answer(std::string_view(c.in).substr(0, end))
                  : Response(431, "Request Header Fields Too Large", "text/plain; charset=utf-8",
                             "request too large\n", false);
      c.answering = true;
      served_.fetch_add(1, std::memory_order_relaxed);
      return OnWritable(c);
    }
  }
}

bool MetricsHttpServer::OnWritable(Connection& c) {
  while (c.written < c.out.size()) {
    const ssize_t n = send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c.written += static_cast<size_t>(n);
  }
  shutdown(c.fd, SHUT_WR);
  return false;  // answered: closed
}

std::string MetricsHttpServer::Answer(std::string_view request) {
  const std::string_view line = request.substr(0, request.find("\r\n"));
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos ||
      !line.substr(sp2 + 1).starts_with("HTTP/1.")) {
    return Response(400, "Bad Request", "text/plain; charset=utf-8", "bad request line\n", false);
  }
  const std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  target = target.substr(0, target.find('?'));  // Prometheus may add parameters
  const bool head = method == "HEAD";
  if (target != "/metrics") {
    return Response(404, "Not Found", "text/plain; charset=utf-8",
                    "not found: shaled serves its metrics at /metrics\n", head);
  }
  if (method != "GET" && !head) {
    return Response(405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET /metrics\n",
                    false, "Allow: GET, HEAD\r\n");
  }
  return Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", handler_(), head);
}

}  // namespace shale::daemon::ops
