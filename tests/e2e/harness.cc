#include "tests/e2e/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <thread>

extern char** environ;

#ifndef SHALE_BIN_DIR
#error "SHALE_BIN_DIR must be defined by the build"
#endif

namespace shale::e2e {

namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kReadyTimeout = std::chrono::seconds(60);  // generous for sanitizer builds
constexpr auto kStopTimeout = std::chrono::seconds(60);
constexpr auto kPollInterval = std::chrono::milliseconds(20);

int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return -1;
}

// The environment for a child: ours, with `changes` applied and SHALE_ENDPOINT removed unless
// the caller sets it.
std::vector<std::string> ChildEnvironment(
    const std::map<std::string, std::optional<std::string>>& changes) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const std::string::size_type eq = entry.find('=');
    if (eq != std::string::npos) env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  env.erase("SHALE_ENDPOINT");
  for (const auto& [key, value] : changes) {
    if (value) {
      env[key] = *value;
    } else {
      env.erase(key);
    }
  }
  std::vector<std::string> out;
  for (const auto& [key, value] : env) out.push_back(key + "=" + value);
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// fork + exec with stdin from /dev/null and stdout/stderr to the given fds. Everything the
// child needs is prepared before fork(): after it, only async-signal-safe calls.
pid_t ForkExec(std::vector<std::string> argv, std::vector<std::string> env, const std::string& cwd,
               int out_fd, int err_fd) {
  std::vector<char*> c_argv = CStrings(argv);
  std::vector<char*> c_env = CStrings(env);
  const char* c_cwd = cwd.empty() ? nullptr : cwd.c_str();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;  // parent (or -1)
  // A test runner killed by a timeout must not leave daemons behind.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(126);
  const int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
      dup2(err_fd, STDERR_FILENO) < 0) {
    _exit(126);
  }
  if (c_cwd != nullptr && chdir(c_cwd) != 0) _exit(126);
  execve(c_argv[0], c_argv.data(), c_env.data());
  _exit(127);
}

}  // namespace

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {
// The build's binaries, or those of $SHALE_E2E_BIN_DIR (e.g. an older build, to show that a new
// test fails against the code before a fix).
std::string BinDir() {
  const char* dir = std::getenv("SHALE_E2E_BIN_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string(SHALE_BIN_DIR);
}
}  // namespace

std::string ShaledBinary() { return BinDir() + "/shaled"; }
std::string ShaleBinary() { return BinDir() + "/shale"; }

nlohmann::json CommandResult::Json() const {
  nlohmann::json j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    ADD_FAILURE() << "stdout is not JSON: " << Describe();
    return nullptr;
  }
  return j;
}

std::vector<std::string> CommandResult::ErrLines() const {
  std::vector<std::string> lines;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string CommandResult::Describe() const {
  return "exit code " + std::to_string(exit_code) + "\n--- stdout ---\n" + out +
         "--- stderr ---\n" + err + "--------------";
}

void ExpectOneLineError(const CommandResult& result, const std::string& needle,
                        const std::string& prefix) {
  EXPECT_NE(result.exit_code, 0) << result.Describe();
  EXPECT_EQ(result.out, "") << result.Describe();
  const std::vector<std::string> lines = result.ErrLines();
  ASSERT_EQ(lines.size(), 1u) << "stderr must be one line: " << result.Describe();
  EXPECT_EQ(lines[0].rfind(prefix, 0), 0u) << result.Describe();
  EXPECT_NE(lines[0].find(needle), std::string::npos)
      << "expected '" << needle << "' in: " << result.Describe();
}

CommandResult RunProcess(const std::vector<std::string>& argv, const RunOptions& options) {
  CommandResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::generic_category().message(errno);
    return result;
  }
  const pid_t pid =
      ForkExec(argv, ChildEnvironment(options.env), options.cwd, out_pipe[1], err_pipe[1]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::generic_category().message(errno);
    close(out_pipe[0]);
    close(err_pipe[0]);
    return result;
  }

  // Drain both pipes together (a child blocked on a full stderr pipe would never finish).
  const auto deadline = Clock::now() + options.timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  bool timed_out = false;
  while (open_fds > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    const int n = poll(fds, 2, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  if (timed_out) {
    kill(pid, SIGKILL);
    ADD_FAILURE() << argv[0] << " did not finish within " << options.timeout.count() << "s";
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = ExitCodeOf(status);
  return result;
}

bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(kPollInterval);
  }
  return done();
}

std::string FindProgram(const std::string& name) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): tests do not change the environment concurrently.
  const char* path_env = std::getenv("PATH");
  std::string dirs = std::string(path_env != nullptr ? path_env : "") + ":/usr/sbin:/sbin";
  std::istringstream in(dirs);
  for (std::string dir; std::getline(in, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const std::string& log_path)
    : log_path_(log_path) {
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    ADD_FAILURE() << "open " << log_path << ": " << std::generic_category().message(errno);
    return;
  }
  pid_ = ForkExec(argv, ChildEnvironment({}), "", log_fd, log_fd);
  close(log_fd);
  if (pid_ < 0) ADD_FAILURE() << "fork: " << std::generic_category().message(errno);
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_ || (r < 0 && errno != EINTR)) {
    pid_ = -1;
    return false;
  }
  return true;
}

int ChildProcess::Stop(int signal, std::chrono::seconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return ExitCodeOf(status);
    }
    if (r < 0 && errno != EINTR) {
      pid_ = -1;
      return -1;
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(kPollInterval);
  }
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return -1;
}

std::string ChildProcess::Log() const { return ReadTextFile(log_path_); }

Harness::Harness() {
  std::string tmpl = "/tmp/shale-e2e-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::generic_category().message(errno);
  }
  root_ = tmpl;
}

Harness::~Harness() {
  if (daemon_pid_ > 0) KillDaemon();
  if (::testing::Test::HasFailure()) {
    std::string log = DaemonLog();
    constexpr size_t kTail = 16 * 1024;
    if (log.size() > kTail) log = "...\n" + log.substr(log.size() - kTail);
    std::cerr << "--- shaled log (" << root_ << "/shaled.log) ---\n"
              << log << "--- end of shaled log; " << root_ << " kept for inspection ---\n";
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(root_, ec);
}

pid_t Harness::Spawn(const std::vector<std::string>& argv, const std::string& cwd) {
  const std::string log_path = root_ + "/shaled.log";
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    ADD_FAILURE() << "open " << log_path << ": " << std::generic_category().message(errno);
    return -1;
  }
  const std::string banner = "=== harness: starting shaled ===\n";
  if (write(log_fd, banner.data(), banner.size()) < 0) {
    ADD_FAILURE() << "write " << log_path << ": " << std::generic_category().message(errno);
  }
  const pid_t pid = ForkExec(argv, ChildEnvironment({}), cwd, log_fd, log_fd);
  close(log_fd);
  if (pid < 0) ADD_FAILURE() << "fork: " << std::generic_category().message(errno);
  return pid;
}

bool Harness::StartDaemon(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--data-dir", data_dir(), "--default-pool-size", "1G"};
  const auto has = [&](const char* flag) {
    return std::find(extra.begin(), extra.end(), flag) != extra.end();
  };
  const auto listen = std::find(extra.begin(), extra.end(), "--nbd-listen");
  const bool tls = has("--nbd-tls-x509-dir") || has("--nbd-tls-psk-file");
  if (listen == extra.end()) {
    args.insert(args.end(), {"--nbd-listen", "127.0.0.1:0"});
  }
  // Plain TCP is asked for explicitly (shaled refuses it otherwise) unless the test set up TLS
  // or turned TCP off.
  const bool tcp_off =
      listen != extra.end() && listen + 1 != extra.end() && *(listen + 1) == "none";
  if (!tls && !tcp_off && !has("--nbd-insecure-tcp")) args.push_back("--nbd-insecure-tcp");
  if (std::find(extra.begin(), extra.end(), "--metrics-listen") == extra.end()) {
    args.insert(args.end(), {"--metrics-listen", "127.0.0.1:0"});
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return StartDaemonRaw(args, endpoint());
}

std::string Harness::MetricsAddress() {
  CommandResult status = Shale({"status", "-o", "json"});
  if (status.exit_code != 0) {
    ADD_FAILURE() << "shale status failed: " << status.Describe();
    return {};
  }
  const nlohmann::json metrics = status.Json()["metrics"];
  if (!metrics.is_object() || metrics["enabled"] != true) {
    ADD_FAILURE() << "shaled serves no metrics: " << status.out;
    return {};
  }
  return metrics["address"].get<std::string>();
}

int FreeTcpPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  if (fd >= 0) close(fd);
  return port;
}

std::string Harness::NbdAddress() {
  CommandResult status = Shale({"status", "-o", "json"});
  if (status.exit_code != 0) {
    ADD_FAILURE() << "shale status failed: " << status.Describe();
    return "";
  }
  const nlohmann::json j = status.Json();
  if (!j.is_object() || !j.contains("nbd") || !j["nbd"]["tcp_address"].is_string() ||
      j["nbd"]["tcp_address"].get<std::string>().empty()) {
    ADD_FAILURE() << "shale status reports no NBD TCP address: " << status.Describe();
    return "";
  }
  return j["nbd"]["tcp_address"].get<std::string>();
}

std::string Harness::NbdUri(const std::string& export_name) {
  return "nbd://" + NbdAddress() + "/" + export_name;
}

bool Harness::StartDaemonRaw(const std::vector<std::string>& args, const std::string& endpoint,
                             const std::string& cwd) {
  if (daemon_pid_ > 0) {
    ADD_FAILURE() << "a shaled started by this harness is still running";
    return false;
  }
  std::vector<std::string> argv = prefix_;
  argv.push_back(ShaledBinary());
  argv.insert(argv.end(), args.begin(), args.end());
  daemon_pid_ = Spawn(argv, cwd.empty() ? root_ : cwd);
  if (daemon_pid_ < 0) return false;

  const auto deadline = Clock::now() + kReadyTimeout;
  CommandResult last;
  while (Clock::now() < deadline) {
    if (std::optional<int> code = ReapDaemon(/*block=*/false, {})) {
      ADD_FAILURE() << "shaled exited with code " << *code << " before it was ready";
      return false;
    }
    last = ShaleRaw({"--endpoint", endpoint, "--timeout", "5", "status"});
    if (last.exit_code == 0) return true;
    std::this_thread::sleep_for(kPollInterval);
  }
  ADD_FAILURE() << "shaled did not answer `shale status` within " << kReadyTimeout.count()
                << "s; last attempt: " << last.Describe();
  return false;
}

std::optional<int> Harness::ReapDaemon(bool block, std::chrono::milliseconds timeout) {
  if (daemon_pid_ <= 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(daemon_pid_, &status, WNOHANG);
    if (r == daemon_pid_) {
      daemon_pid_ = -1;
      return ExitCodeOf(status);
    }
    if (r < 0 && errno != EINTR) {
      daemon_pid_ = -1;
      return -1;
    }
    if (!block || Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPollInterval);
  }
}

int Harness::StopDaemon(int signal) {
  if (daemon_pid_ <= 0) {
    ADD_FAILURE() << "no shaled to stop";
    return -1;
  }
  kill(daemon_pid_, signal);
  if (std::optional<int> code = ReapDaemon(/*block=*/true, kStopTimeout)) return *code;
  ADD_FAILURE() << "shaled did not exit within " << kStopTimeout.count() << "s of signal "
                << signal;
  KillDaemon();
  return -1;
}

void Harness::KillDaemon() {
  if (daemon_pid_ <= 0) return;
  kill(daemon_pid_, SIGKILL);
  ReapDaemon(/*block=*/true, kStopTimeout);
}

bool Harness::daemon_running() {
  return daemon_pid_ > 0 && !ReapDaemon(/*block=*/false, {}).has_value();
}

std::string Harness::DaemonLog() const { return ReadTextFile(root_ + "/shaled.log"); }

CommandResult Harness::Shale(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"--endpoint", endpoint()};
  full.insert(full.end(), args.begin(), args.end());
  return ShaleRaw(full);
}

CommandResult Harness::ShaleRaw(const std::vector<std::string>& args, const RunOptions& options) {
  std::vector<std::string> argv = {ShaleBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, options);
}

}  // namespace shale::e2e
