// shaled: the Shale node daemon. See csi/README.md and `shaled --help`.
//
// Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT) or --help/--version; 1 when startup or
// shutdown fails; 2 for a usage error. Every failure ends with one "shaled: ..." line on stderr.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "daemon/daemon.h"
#include "daemon/daemon_options.h"
#include "engine/common/log.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "shaled: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using shale::Status;

  shale::daemon::DaemonCommandLine cmdline = shale::daemon::ParseDaemonCommandLine(argc, argv);
  if (!cmdline.run) {
    if (!cmdline.out.empty()) std::fputs(cmdline.out.c_str(), stdout);
    if (!cmdline.err.empty()) std::fprintf(stderr, "%s\n", cmdline.err.c_str());
    return cmdline.exit_code;
  }
  const shale::daemon::DaemonOptions& options = cmdline.options;

  // Block the shutdown signals before any thread exists so every thread inherits the mask and
  // only the waiter below receives them (with sigwait, outside any signal handler). SIGUSR1
  // wakes the waiter when the stop did not come from a signal (none today, but a frontend may
  // ask); blocked everywhere, a stray SIGUSR1 from outside is ignored instead of fatal.
  sigset_t waited;
  sigemptyset(&waited);
  sigaddset(&waited, SIGTERM);
  sigaddset(&waited, SIGINT);
  sigaddset(&waited, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &waited, nullptr);
  // A client that hangs up must not kill the daemon.
  signal(SIGPIPE, SIG_IGN);

  // The engine restricts the directory to its owner (0700) when it opens it.
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) return Fail("cannot create data dir " + options.data_dir + ": " + ec.message());

  try {
    shale::log::Init(options.log_level, options.log_file);
  } catch (const spdlog::spdlog_ex& e) {
    return Fail("cannot open log file " + options.log_file + ": " + e.what());
  }
  shale::daemon::RouteGrpcLogsToShaleLog();

  shale::daemon::Daemon daemon(options);
  if (Status st = daemon.Start(); !st.ok()) {
    // Logging to stderr, the line below says it all; a log file gets its own record.
    if (!options.log_file.empty()) {
      SHALE_LOG_ERROR("shaled failed to start", {"error", st.ToString()});
    }
    return Fail("cannot start: " + std::string(st.message()));
  }

  std::atomic<bool> waking{false};
  std::thread signal_waiter([&] {
    int sig = 0;
    while (sigwait(&waited, &sig) == 0) {
      if (sig == SIGUSR1) {
        if (waking) break;
        continue;
      }
      SHALE_LOG_INFO("shutting down", {"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"});
      break;
    }
    daemon.RequestStop();
  });
  daemon.Wait();
  waking = true;
  pthread_kill(signal_waiter.native_handle(), SIGUSR1);  // no-op if it has already returned
  signal_waiter.join();

  if (Status st = daemon.Stop(); !st.ok()) {
    SHALE_LOG_ERROR("shutdown was not clean", {"error", st.ToString()});
    return Fail("shutdown was not clean: " + std::string(st.message()));
  }
  SHALE_LOG_INFO("shaled stopped");
  return 0;
}
