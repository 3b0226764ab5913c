// Connection: one client connection of the NBD server, from the accepted socket to its close —
// handshake driving, request parsing, I/O submission, replies, teardown (connection.cc).
//
// Internal to the NBD server: server.cc creates connections and keeps their registry; nothing
// else includes this header (the interface of nbd/ is server.h).
//
// A connection lives on one reactor at a time: the accept reactor during the handshake, then the
// reactor of its export (docs/nbd.md, "State machines"). Other threads only call RequestClose()
// (with the registry lock held, so the fd is still open). It deletes itself once nothing refers
// to it: no SQE in flight, no volume I/O, no pending lookup, no deferred task.
//
// The state machine itself stays in connection.cc, in one class with internal linkage, so the
// compiler sees the whole per-request path at once; the registry only needs the three calls
// below (once per connection, never per request).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "engine/common/result.h"
#include "engine/common/units.h"
#include "nbd/export.h"
#include "nbd/server.h"

namespace shale {
class Reactor;
}

namespace shale::nbd {

// Receive buffer per connection: many small requests per RECV; holds any handshake option.
inline constexpr size_t kRecvBufferSize = 256 * kKiB;

// The text of an errno value, for logs (thread-safe, unlike strerror).
inline std::string ErrnoText(int err) { return std::generic_category().message(err); }

// Counters of one connection: written on its reactor, read by NbdServer::Clients() from any
// thread. Shared with the registry entry, so they stay readable while the connection goes away.
struct ConnStats {
  std::atomic<uint64_t> requests{0}, bytes_read{0}, bytes_written{0}, errors{0};
};

// What a connection needs from the server that owns it (NbdServer::Core). The host outlives
// every connection it created.
class ConnectionHost {
 public:
  // Read once, when the connection is created.
  virtual const NbdServerOptions& options() const = 0;
  // Worker thread: opens an export for a handshake (refused while it is being deleted).
  virtual Result<std::unique_ptr<Export>> OpenExport(const std::string& name) = 0;
  // Worker thread: the names NBD_OPT_LIST reports.
  virtual std::vector<std::string> ListExports() = 0;
  // Any thread: the Export is released on the worker (releasing may take the engine's lock).
  virtual void ReleaseExport(std::unique_ptr<Export> exp) = 0;
  // Runs `fn` on the worker thread, after what was posted before it.
  virtual void PostToWorker(std::function<void()> fn) = 0;
  // Runs `fn` on the TLS worker thread (TLS handshakes: computation a reactor must not do).
  virtual void PostToTlsWorker(std::function<void()> fn) = 0;
  // The connection `id` proved this TLS identity ("psk:alice", "cn:web").
  virtual void SetTlsIdentity(uint64_t id, const std::string& identity) = 0;
  // The connection `id` now serves export `name` (for `shale export list`, `volume delete`).
  virtual void SetExportName(uint64_t id, const std::string& name) = 0;
  // The connection is gone: after this nothing touches it (or its fd) from other threads.
  virtual void Unregister(uint64_t id) = 0;

 protected:
  ~ConnectionHost() = default;
};

class Connection {
 public:
  // A connection for the accepted socket `fd` (which it owns and closes), registered with `host`
  // as `id`; `stats` is shared with that registry entry. It runs on `reactor` until Start().
  // `tcp`: accepted on the TCP listener (TLS and authorization apply, when configured).
  // Self-owned: it deletes itself after it has unregistered.
  static Connection* Create(ConnectionHost* host, uint64_t id, int fd, Reactor* reactor,
                            std::shared_ptr<ConnStats> stats, bool tcp);

  // On the accept reactor: sends the greeting and starts the handshake and its timeout.
  virtual void Start() = 0;

  // Any thread, registry lock held. Stops reading (`hard`: also sending), so in-flight
  // requests finish and the connection closes.
  virtual void RequestClose(bool hard) = 0;

 protected:
  ~Connection() = default;  // it deletes itself
};

}  // namespace shale::nbd
