#include "csi/exec.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

extern char** environ;

namespace shale::csi {

namespace {

// Bound on captured output: tools print a few lines; a runaway one must not eat memory.
constexpr size_t kMaxCapture = 1 << 20;

struct Argv {
  explicit Argv(const std::vector<std::string>& args) {
    for (const std::string& a : args) ptrs.push_back(const_cast<char*>(a.c_str()));
    ptrs.push_back(nullptr);
  }
  std::vector<char*> ptrs;
};

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  if (text.size() > 400) text = text.substr(0, 400) + "...";
  return text;
}

std::string Resolve(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  std::string found = FindTool(program);
  return found.empty() ? program : found;
}

}  // namespace

std::string ExecResult::Describe(const std::string& what) const {
  std::string out_text = what;
  if (timed_out) {
    out_text += " timed out";
  } else {
    out_text += " exited " + std::to_string(exit_code);
  }
  std::string detail = OneLine(err.empty() ? out : err);
  if (!detail.empty()) out_text += ": " + detail;
  return out_text;
}

std::string FindTool(const std::string& name) {
  std::string path;
  if (const char* env = std::getenv("PATH"); env != nullptr) path = env;
  path += ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

Result<ExecResult> Exec(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  if (argv.empty()) return Status::InvalidArgument("empty command");
  std::vector<std::string> args = argv;
  args[0] = Resolve(args[0]);
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    return Status::FromErrno(e, "pipe");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  Argv cargv(args);
  pid_t pid = -1;
  // posix_spawn, not fork: safe in a process with many threads (gRPC, reactors).
  const int rc = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, cargv.ptrs.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return Status::FromErrno(rc, "start " + argv[0]);
  }
  ExecResult result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    const int n = poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got <= 0) {
        if (got < 0 && errno == EINTR) continue;
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      std::string& sink = i == 0 ? result.out : result.err;
      if (sink.size() < kMaxCapture) sink.append(buf, static_cast<size_t>(got));
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  return result;
}

Result<pid_t> SpawnDetached(const std::vector<std::string>& argv, const std::string& log_path) {
  if (argv.empty()) return Status::InvalidArgument("empty command");
  std::vector<std::string> args = argv;
  args[0] = Resolve(args[0]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own session: signals meant for shaled's process group (Ctrl-C) do not reach it.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  Argv cargv(args);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0].c_str(), &actions, &attr, cargv.ptrs.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Status::FromErrno(rc, "start " + argv[0]);
  return pid;
}

bool ReapIfExited(pid_t pid) {
  if (pid <= 0) return true;
  int status = 0;
  const pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == pid) return true;
  if (r == 0) return false;  // our child, running
  return kill(pid, 0) != 0;  // not our child (ECHILD): gone unless it still runs
}

}  // namespace shale::csi
