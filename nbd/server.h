// NbdServer: serves exports over NBD (TCP and a UNIX socket) on the engine's io_uring reactors.
//
// Data path (docs/nbd.md has the reasoning and the measurements): every socket operation is an
// SQE on a reactor ring — ACCEPT on the first reactor, then RECV/SENDMSG on the reactor of the
// export a connection uses, so a request goes from the socket to the volume and back without
// leaving that thread. Per connection: one RECV in flight into a receive buffer (write payloads
// of 64 KiB or more are received straight into the request's aligned buffer), requests
// submitted to the volume as soon as their header (and payload) is in, replies queued as they
// complete and sent by one SENDMSG (iovecs of every ready reply) with at most one send in
// flight, which keeps the byte stream in order. Copies of large payloads (sends of 64 KiB or
// more, direct receives) run on io_uring's workers (IOSQE_ASYNC), overlapping the reactor's
// device work. In-flight requests and bytes per connection are bounded; at the bound the
// connection stops receiving until replies drain (backpressure). That per-connection state
// machine is `Connection` (connection.h, internal to the server).
//
// The handshake runs as a state machine (handshake.h) on the first reactor with a timeout;
// looking an export up (which may block on the engine's control lock) happens on the server's
// worker thread, never on a reactor, as does releasing an export.
//
// TLS (docs/security.md): with `tls` set, every TCP client must negotiate NBD_OPT_STARTTLS
// (FORCEDTLS); the TLS handshake's computation runs on a TLS worker thread, the record layer on
// the connection's reactor over memory buffers (tls::Session), decrypting at most a receive
// buffer and encrypting at most kTlsSendBudget per turn, so one fast client cannot hold a
// reactor. The handshake timeout bounds the TLS handshake too. `authz` limits which exports a
// TLS client may open and list.
//
// Threading: Start/Stop/WithExportClosed from control threads; Clients/ExportUri/addresses
// from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/status.h"
#include "engine/common/units.h"
#include "nbd/authz.h"
#include "nbd/export.h"
#include "nbd/handshake.h"
#include "tls/credentials.h"

namespace shale {
class Reactor;
}

namespace shale::nbd {

inline constexpr uint16_t kDefaultNbdPort = 10809;
inline constexpr char kNbdSocketName[] = "nbd.sock";

struct NbdServerOptions {
  // TCP address to listen on: "IPv4:PORT", "[IPv6]:PORT" or "localhost:PORT"; port 0 picks a
  // free one (see tcp_address()). Empty (the default): no TCP listener.
  std::string tcp_address;
  // UNIX socket path (created mode 0600; the caller removes stale files). Empty: none.
  std::string unix_socket;
  unsigned max_connections = 128;  // beyond it new connections are closed at once
  std::chrono::milliseconds handshake_timeout{10000};
  // Per-connection bounds on requests in flight (received, not yet fully replied to).
  uint32_t max_requests_in_flight = 256;
  uint64_t max_bytes_in_flight = 64 * kMiB;  // at least one request of max_block always fits
  HandshakeLimits handshake;
  // TLS on the TCP listener: null serves plain TCP. Server credentials (tls::Credentials).
  // The UNIX socket never uses TLS: its mode (0600) is its access control.
  std::shared_ptr<const tls::Credentials> tls;
  // Which exports TLS clients may open and list (null: all). Needs `tls`; TCP clients without
  // TLS identity get nothing when it is set.
  std::shared_ptr<const ExportAuthz> authz;
};

// A listener, for `shale status` and the startup log.
struct NbdListenerInfo {
  std::string transport;             // "tcp" or "unix"
  std::string address;               // "127.0.0.1:10809" as bound, or the socket path
  std::string tls;                   // "x509", "psk", or "" (none)
  bool client_certificates = false;  // X.509: clients must present a certificate of the CA
  bool authz = false;                // per-export authorization applies
};

// One client connection, for `shale export list` and `shale volume show`.
struct NbdClientInfo {
  uint64_t id = 0;
  std::string transport;    // "tcp" or "unix"
  std::string peer;         // "127.0.0.1:41234", "pid 1234"
  std::string export_name;  // empty while the handshake is in progress
  std::string tls;          // TLS clients: the identity they proved ("psk:alice", "cn:web")
  uint64_t connected_unix_ns = 0;
  uint64_t requests = 0;  // requests replied to
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  uint64_t errors = 0;  // requests answered with an error
};

// Parses "HOST:PORT" as accepted by NbdServerOptions::tcp_address.
Status ValidateListenAddress(std::string_view address);

class NbdServer {
 public:
  // `reactors` (the engine's, at least one) and `resolver` must outlive the server.
  NbdServer(std::vector<Reactor*> reactors, ExportResolver* resolver, NbdServerOptions options);
  ~NbdServer();  // Stop()s
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Binds the listeners and starts accepting. On error nothing is left listening.
  Status Start();
  // Stops accepting, lets every connection finish the requests it has in flight and closes it
  // (after a grace period, connections that do not drain are cut), then releases every export.
  // Idempotent.
  void Stop();

  // "127.0.0.1:10809" as bound (the real port when 0 was asked); empty without TCP.
  std::string tcp_address() const;
  // The listeners, TCP first (valid after Start()).
  std::vector<NbdListenerInfo> Listeners() const;
  const std::string& unix_socket() const;
  // How a client reaches an export: "nbd://127.0.0.1:10809/NAME" ("nbds://" with TLS), or
  // with only the UNIX socket "nbd+unix:///NAME?socket=PATH".
  std::string ExportUri(std::string_view name) const;
  unsigned max_connections() const;

  // Every connection, in connection order.
  std::vector<NbdClientInfo> Clients() const;

  // For deleting an export that has clients: refuses new connections to `name`, disconnects
  // its clients (requests in flight finish first), waits until every one has released the
  // export, runs `fn`, and admits clients again. Unavailable if they did not let go within
  // `timeout` (then `fn` is not run).
  Status WithExportClosed(std::string_view name, std::chrono::milliseconds timeout,
                          const std::function<Status()>& fn);

  class Core;  // implementation, in server.cc

 private:
  std::unique_ptr<Core> core_;
};

}  // namespace shale::nbd
