#include "tests/cluster/etcd_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace shale::test {
namespace {

using Clock = std::chrono::steady_clock;

// Outside Linux's default ephemeral range (32768-60999), so an outgoing connection of this or
// another process cannot sit on the port while etcd is down between a Kill and a Restart.
constexpr int kPortLow = 20000;
constexpr int kPortHigh = 32000;

bool PortFree(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

uint16_t PickPort(std::mt19937& rng, uint16_t other) {
  std::uniform_int_distribution<int> dist(kPortLow, kPortHigh);
  for (int i = 0; i < 200; ++i) {
    const auto port = static_cast<uint16_t>(dist(rng));
    if (port != other && PortFree(port)) return port;
  }
  return 0;
}

// GET /health on 127.0.0.1:port; true when etcd says it is healthy.
bool Healthy(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval tv{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[1024];
      ssize_t n;
      while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return response.find("\"health\":\"true\"") != std::string::npos;
}

std::string TempRoot() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/shale-etcd-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

}  // namespace

std::string EtcdProcess::Binary() {
  const char* env = std::getenv("SHALE_ETCD_BIN");
  const std::string path = env != nullptr && *env != '\0' ? env : "/usr/bin/etcd";
  return access(path.c_str(), X_OK) == 0 ? path : std::string();
}

std::string EtcdProcess::Unavailable() {
  if (Binary().empty()) {
    return "etcd is not installed (/usr/bin/etcd, Debian package etcd-server; scripts/deps "
           "installs it, or set SHALE_ETCD_BIN)";
  }
  return {};
}

EtcdProcess::EtcdProcess(Options options) : options_(std::move(options)) {}

EtcdProcess::~EtcdProcess() {
  if (pid_ > 0) Kill().IgnoreError();
  if (!root_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }
}

Result<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(Options options) {
  if (!Unavailable().empty()) return Status::NotSupported(Unavailable());
  std::unique_ptr<EtcdProcess> etcd(new EtcdProcess(std::move(options)));
  etcd->root_ = TempRoot();
  if (etcd->root_.empty()) return Status::FromErrno(errno, "etcd test dir");
  etcd->data_dir_ = etcd->root_ + "/data";
  etcd->log_path_ = etcd->root_ + "/etcd.log";
  std::mt19937 rng(std::random_device{}());
  Status last;
  // Another process may take a port between the check and etcd's bind: pick again then.
  for (int attempt = 0; attempt < 5; ++attempt) {
    etcd->client_port_ = PickPort(rng, 0);
    etcd->peer_port_ = PickPort(rng, etcd->client_port_);
    if (etcd->client_port_ == 0 || etcd->peer_port_ == 0) {
      return Status::Unavailable("etcd test: no free loopback port");
    }
    last = etcd->Launch();
    if (last.ok()) last = etcd->WaitHealthy();
    if (last.ok()) return etcd;
    if (etcd->pid_ > 0) etcd->Kill().IgnoreError();
    if (etcd->Log().find("address already in use") == std::string::npos) return last;
    std::error_code ec;
    std::filesystem::remove_all(etcd->data_dir_, ec);
  }
  return last;
}

Status EtcdProcess::Launch() {
  const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
  std::string listen_clients = client;
  for (const std::string& host : options_.extra_client_hosts) {
    listen_clients += ",http://" + host + ":" + std::to_string(client_port_);
  }
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
  std::vector<std::string> args = {
      Binary(),
      "--name=shale-test",
      "--data-dir=" + data_dir_,
      "--listen-client-urls=" + listen_clients,
      "--advertise-client-urls=" + client,
      "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer,
      "--initial-cluster=shale-test=" + peer,
      "--initial-cluster-state=new",
      "--initial-cluster-token=shale-test-" + std::to_string(peer_port_),
      "--heartbeat-interval=" + std::to_string(options_.heartbeat_ms),
      "--election-timeout=" + std::to_string(options_.election_ms),
      "--logger=zap",
      "--log-outputs=stderr"};
  for (const std::string& a : options_.extra_args) args.push_back(a);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Status::FromErrno(errno, "etcd test log " + log_path_);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here on.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
        dup2(log_fd, STDERR_FILENO) < 0) {
      _exit(126);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  const int err = errno;
  close(log_fd);
  if (pid < 0) return Status::FromErrno(err, "fork etcd");
  pid_ = pid;
  return Status::Ok();
}

Status EtcdProcess::WaitHealthy() {
  const auto deadline = Clock::now() + options_.start_timeout;
  while (Clock::now() < deadline) {
    if (!running()) {
      return Status::Unavailable("etcd exited during start-up; its log ends with:\n" + LogTail());
    }
    if (Healthy(client_port_)) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status::Unavailable("etcd did not become healthy within " +
                             std::to_string(options_.start_timeout.count()) +
                             " ms; its log ends with:\n" + LogTail());
}

bool EtcdProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    pid_ = -1;
    return false;
  }
  return true;
}

Status EtcdProcess::Stop() {
  if (!running()) return Status::Ok();
  kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    if (!running()) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Kill();
}

Status EtcdProcess::Kill() {
  if (pid_ <= 0) return Status::Ok();
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return Status::Ok();
}

Status EtcdProcess::Restart() {
  if (running()) return Status::FailedPrecondition("etcd test: Restart while etcd runs");
  SHALE_RETURN_IF_ERROR(Launch());
  Status s = WaitHealthy();
  if (!s.ok()) Kill().IgnoreError();
  return s;
}

std::string EtcdProcess::endpoint() const { return "etcd://" + client_address(); }

std::string EtcdProcess::client_address() const {
  return "127.0.0.1:" + std::to_string(client_port_);
}

std::string EtcdProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string EtcdProcess::LogTail() const {
  const std::string log = Log();
  constexpr size_t kTail = 2000;
  return log.size() > kTail ? log.substr(log.size() - kTail) : log;
}

}  // namespace shale::test
