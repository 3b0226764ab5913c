// End-to-end harness: runs the real build/bin/shaled and build/bin/shale as child processes.
//
// A Harness owns a fresh temporary directory (its root) and at most one shaled child. The daemon
// writes its logs to <root>/shaled.log (appended across restarts; printed when a test fails).
// Waiting is always "poll with a deadline" (never a bare sleep): StartDaemon() returns once
// `shale status` answers. Children get PR_SET_PDEATHSIG, so a test killed by a ctest timeout
// leaves no daemon behind; the destructor kills a daemon still running and removes the root.
//
// Threading: one Harness per test, used from the test's thread only.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace shale::e2e {

// The whole content of a file ("" if it cannot be read).
std::string ReadTextFile(const std::string& path);

// Absolute paths of the binaries under test: the build's (SHALE_BIN_DIR), or those in
// $SHALE_E2E_BIN_DIR when it is set.
std::string ShaledBinary();
std::string ShaleBinary();

struct CommandResult {
  int exit_code = -1;  // exit status; 128 + signal number if killed by a signal
  std::string out;
  std::string err;

  // stdout parsed as JSON; records a test failure (and returns null) if it is not JSON.
  nlohmann::json Json() const;
  // The lines of stderr (without newlines).
  std::vector<std::string> ErrLines() const;
  // For failure messages: exit code, stdout and stderr.
  std::string Describe() const;
};

struct RunOptions {
  std::string cwd;  // empty: the test's cwd
  // Environment changes: a value sets the variable, nullopt removes it. SHALE_ENDPOINT is
  // removed by default so the developer's environment cannot leak into tests.
  std::map<std::string, std::optional<std::string>> env;
  std::chrono::seconds timeout{60};  // the child is killed (and the test fails) after this
};

// Checks the error contract of both binaries: non-zero exit, nothing on stdout, and stderr is
// exactly one line that starts with `prefix` ("shale: ", "shaled: ") and contains `needle`.
void ExpectOneLineError(const CommandResult& result, const std::string& needle,
                        const std::string& prefix = "shale: ");

// Runs argv[0] (a path) to completion, capturing stdout and stderr.
CommandResult RunProcess(const std::vector<std::string>& argv, const RunOptions& options = {});

// Polls `done` every few milliseconds until it is true or `timeout` passes; returns its last value.
bool WaitFor(const std::function<bool()>& done,
             std::chrono::milliseconds timeout = std::chrono::seconds(30));

// A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot bind port 0 and
// report it; retry on a collision).
int FreeTcpPort();

// Absolute path of a program found in $PATH (or /usr/sbin, /sbin), or "" if there is none.
std::string FindProgram(const std::string& name);

// A long-running helper (nbdfuse, ...) whose stdout and stderr go to a log file. The destructor
// kills (SIGKILL) and reaps it if it still runs; it also dies with the test (PDEATHSIG).
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signal` and waits for the exit; returns the exit code (128 + signal if killed by
  // one), or -1 if it did not exit in time (then it is killed).
  int Stop(int signal, std::chrono::seconds timeout = std::chrono::seconds(30));
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

class Harness {
 public:
  Harness();
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  // Temporary directory of this test (short, under /tmp, so socket paths stay short).
  const std::string& root() const { return root_; }
  // Data dir used by StartDaemon(): <root>/data.
  std::string data_dir() const { return root_ + "/data"; }
  // Control endpoint of a daemon on data_dir(): "unix://<root>/data/shaled.sock".
  std::string endpoint() const { return "unix://" + data_dir() + "/shaled.sock"; }
  std::string socket_path() const { return data_dir() + "/shaled.sock"; }

  // Starts shaled with --data-dir data_dir() --default-pool-size 1G plus `extra` and waits until
  // it answers. Unless `extra` says otherwise, the NBD server listens on 127.0.0.1:0 (a free
  // port: ctest runs tests in parallel); NbdAddress() tells where. shaled serves TCP only when
  // asked (docs/security.md): the harness asks for plain TCP explicitly (--nbd-insecure-tcp)
  // unless `extra` configures TLS (--nbd-tls-*) or turns TCP off (--nbd-listen none). False
  // (with the test failure recorded) if it exits or does not answer in time.
  [[nodiscard]] bool StartDaemon(const std::vector<std::string>& extra = {});
  // Runs shaled under `prefix` from now on (e.g. {"/usr/sbin/ip", "netns", "exec", NS}: a
  // program that execs the rest in place, so daemon_pid() stays the daemon's).
  void set_command_prefix(std::vector<std::string> prefix) { prefix_ = std::move(prefix); }
  // Starts shaled with exactly `args` in `cwd` (default: root) and waits until `shale status`
  // answers on `endpoint`.
  [[nodiscard]] bool StartDaemonRaw(const std::vector<std::string>& args,
                                    const std::string& endpoint, const std::string& cwd = {});
  // Sends `signal` and waits for the daemon to exit; returns its CommandResult-style exit code
  // (128 + signal if it died of one), or -1 if it did not exit in time (then it is killed).
  int StopDaemon(int signal);
  // kill -9, then reap.
  void KillDaemon();
  bool daemon_running();
  pid_t daemon_pid() const { return daemon_pid_; }
  // Everything shaled wrote to stdout/stderr so far.
  std::string DaemonLog() const;

  // The NBD server's TCP address as bound ("127.0.0.1:41234"), from `shale status -o json`;
  // empty (with a test failure) if the daemon does not report one.
  std::string NbdAddress();
  // "nbd://<NbdAddress()>/<export_name>".
  std::string NbdUri(const std::string& export_name);
  // The metrics endpoint's address as bound ("127.0.0.1:41235"), from `shale status -o json`;
  // empty (with a test failure) if metrics are off. StartDaemon() picks a free port unless
  // `extra` names --metrics-listen.
  std::string MetricsAddress();
  // The NBD UNIX socket of a daemon on data_dir().
  std::string nbd_socket_path() const { return data_dir() + "/nbd.sock"; }

  // `shale --endpoint endpoint() args...`.
  CommandResult Shale(const std::vector<std::string>& args);
  // `shale args...` exactly as given, with `options` (cwd, environment).
  CommandResult ShaleRaw(const std::vector<std::string>& args, const RunOptions& options = {});

 private:
  pid_t Spawn(const std::vector<std::string>& argv, const std::string& cwd);
  // Reaps the daemon if it has exited; returns its exit code then.
  std::optional<int> ReapDaemon(bool block, std::chrono::milliseconds timeout);

  std::string root_;
  std::vector<std::string> prefix_;  // set_command_prefix
  pid_t daemon_pid_ = -1;
};

}  // namespace shale::e2e
