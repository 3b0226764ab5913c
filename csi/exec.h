// Runs the node's external tools (mount, losetup, nbdfuse, mkfs, blkid, resize2fs, xfs_growfs)
// safely: argv exec (never a shell, so no quoting or injection problems with paths from the
// CO), stdin from /dev/null, stdout/stderr captured (bounded), a timeout after which the child
// is killed. Thread-safe: gRPC handlers call it concurrently.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "engine/common/result.h"

namespace shale::csi {

struct ExecResult {
  int exit_code = -1;  // 128 + signal when killed by one
  bool timed_out = false;
  std::string out;
  std::string err;
  // "mkfs.ext4 exited 1: <stderr, one line>" for error messages.
  std::string Describe(const std::string& what) const;
};

// Absolute path of `name` in $PATH, /usr/sbin, /sbin, /usr/bin, /bin; "" if absent.
std::string FindTool(const std::string& name);

// Runs argv (argv[0] a program name or path) to completion. An error Status only when it
// could not be started; a non-zero exit is in the result.
Result<ExecResult> Exec(const std::vector<std::string>& argv,
                        std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Starts argv in a new session with output appended to `log_path`, for helpers that outlive
// the call (nbdfuse); returns its pid. The caller reaps it (ReapIfExited) once it stops; if the
// daemon exits first, init adopts it.
Result<pid_t> SpawnDetached(const std::vector<std::string>& argv, const std::string& log_path);
// Reaps `pid` if it exited. True when it is gone: reaped now, or not a child of this process and
// not running. A child that runs is found by waitpid, never by reading /proc/PID/cmdline, which
// is empty for a moment right after posix_spawn returns (the exec is still setting it up).
bool ReapIfExited(pid_t pid);

}  // namespace shale::csi
