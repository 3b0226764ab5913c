// UnixAcceptor and PeerRegistry: who is on the other end of a control or CSI socket connection.
//
// gRPC C++ does not expose the peer credentials of a UNIX socket connection. So shaled accepts
// on its UNIX sockets itself: a UnixAcceptor owns the listening socket (created under umask 0077,
// then chmod 0600), reads SO_PEERCRED (uid, gid, pid; and the process name from /proc) of each
// connection it accepts, records them in the PeerRegistry under the connection's fd, and hands
// the fd to the gRPC server (grpc::AddInsecureChannelFromFd). gRPC names such a connection's
// peer "fd:N", so a call's ServerContext::peer() finds its connection's credentials in the
// registry. An fd number is reused only after gRPC closed the connection, and the acceptor
// records the new connection before gRPC sees it, so a lookup never finds another connection's
// credentials.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "engine/common/result.h"

namespace shale::daemon::ops {

struct PeerCreds {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string command;  // /proc/PID/comm at accept time ("shale", "csi-provisioner"); may be ""
};

class PeerRegistry {
 public:
  void Record(int fd, PeerCreds creds);
  // The credentials of the connection named by a gRPC peer string ("fd:12"); nullopt for peers
  // that did not come through a UnixAcceptor.
  std::optional<PeerCreds> Lookup(std::string_view grpc_peer) const;

 private:
  mutable std::mutex mu_;
  std::map<int, PeerCreds> by_fd_;
};

class UnixAcceptor {
 public:
  // Called on the acceptor's thread with each accepted connection (non-blocking, CLOEXEC); it
  // takes ownership of the fd.
  using OnConnection = std::function<void(int fd, const PeerCreds& creds)>;

  // Creates the socket at `path` (which must be free: see the daemon's PrepareSocketPath), mode
  // 0600, and starts accepting. `kind` names it in errors and logs ("control", "CSI").
  static Result<std::unique_ptr<UnixAcceptor>> Start(const std::string& path,
                                                     const std::string& kind,
                                                     PeerRegistry* registry,
                                                     OnConnection on_connection);
  ~UnixAcceptor();  // Stop()s
  UnixAcceptor(const UnixAcceptor&) = delete;
  UnixAcceptor& operator=(const UnixAcceptor&) = delete;

  // Stops accepting (connections handed over stay with their owner) and closes the socket;
  // the socket file is left for the owner to remove. Idempotent.
  void Stop();

 private:
  UnixAcceptor() = default;
  void Loop();

  std::string path_;
  std::string kind_;
  PeerRegistry* registry_ = nullptr;
  OnConnection on_connection_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  std::thread thread_;
};

}  // namespace shale::daemon::ops
