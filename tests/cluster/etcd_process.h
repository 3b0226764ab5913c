// EtcdProcess: a real etcd for tests, as a child process.
//
// One member on 127.0.0.1, client and peer ports picked at random outside the kernel's ephemeral
// range and checked free (and picked again if etcd cannot bind them), so concurrent test
// processes do not collide. Data and log live in a fresh temporary directory that the destructor
// removes. Start/Restart return once etcd answers GET /health with {"health":"true"} (polled with
// a deadline). The child gets PR_SET_PDEATHSIG: a test runner killed by a timeout leaves no etcd
// behind; the destructor stops a running one.
//
// Threading: one EtcdProcess per test, used from the thread that started it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/result.h"

namespace shale::test {

class EtcdProcess {
 public:
  struct Options {
    std::chrono::milliseconds start_timeout{20000};  // until /health answers
    // Raft timing: short, so a one-member cluster elects itself fast; etcd's minimum lease TTL
    // follows from it (1 s with these values).
    int heartbeat_ms = 50;
    int election_ms = 500;
    std::vector<std::string> extra_args;
    // Addresses etcd listens on for clients besides 127.0.0.1, at the same port (a network
    // namespace's veth address a test created); each must exist when etcd starts.
    std::vector<std::string> extra_client_hosts;
  };

  // The etcd binary ($SHALE_ETCD_BIN, else /usr/bin/etcd), or "" when there is none.
  static std::string Binary();
  // Why etcd cannot run here ("" when it can): a reason for GTEST_SKIP.
  static std::string Unavailable();

  // Starts a fresh etcd. Errors carry the tail of etcd's log.
  static Result<std::unique_ptr<EtcdProcess>> Start(Options options);
  static Result<std::unique_ptr<EtcdProcess>> Start() { return Start(Options()); }
  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // SIGTERM and wait (SIGKILL after 10 s).
  Status Stop();
  // kill -9 and reap.
  Status Kill();
  // Starts again on the same data dir and ports (after Stop or Kill) and waits until healthy.
  Status Restart();
  bool running();

  // "etcd://127.0.0.1:PORT", what --cluster-store takes.
  std::string endpoint() const;
  // "127.0.0.1:PORT".
  std::string client_address() const;
  uint16_t client_port() const { return client_port_; }
  const std::string& data_dir() const { return data_dir_; }
  // Everything etcd logged so far (for failure messages).
  std::string Log() const;

 private:
  explicit EtcdProcess(Options options);
  Status Launch();
  Status WaitHealthy();
  std::string LogTail() const;

  Options options_;
  std::string root_;      // temporary directory
  std::string data_dir_;  // root_/data
  std::string log_path_;  // root_/etcd.log
  uint16_t client_port_ = 0;
  uint16_t peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace shale::test
