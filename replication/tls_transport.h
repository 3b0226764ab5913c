// TlsTransport: the replica protocol over mutual TLS (docs/security.md, "Replica traffic").
// It wraps another Transport (TcpTransport in shaled) and runs a GnuTLS session (tls::Session)
// on every connection it dials or accepts. With Credentials::X509MutualDir both ends present
// their certificate and require the peer's to chain to the cluster's CA; a peer that does not
// (another CA, no certificate, garbage, a stall) never gets a byte of the replica protocol
// through. The HMAC challenge on the cluster secret then runs inside TLS, unchanged.
//
// Handshakes and their bound:
//   Connect   dials, then runs the client handshake before it returns, within the earlier of
//             its deadline and handshake_timeout. The server's certificate is checked there.
//             In TLS 1.3 the server checks the client's certificate after the client is done,
//             so a client the server refuses learns it from its first Recv (the server's alert).
//   Accept    returns as soon as the inner listener does: the server handshake runs on the
//             first Send or Recv of the connection, i.e. on the thread that serves it
//             (ReplicaServer: the connection's receiver thread), never on the accept thread,
//             so a peer that stalls or sends garbage only holds its own connection. The
//             handshake must finish within handshake_timeout of the accept, whatever the
//             deadlines of the calls; past it the connection fails (PermissionDenied), as it
//             does for a refused peer or bytes that are not TLS. A Send of no bytes runs
//             the handshake and sends nothing (for a caller that wants it done first).
//
// Threading (Connection's contract: one sending thread and one receiving thread at once,
// Shutdown from any thread). tls::Session is single-threaded, and GnuTLS allows a sender and
// a receiver on one session only with thread-safe transport callbacks, which a Session's
// memory buffers are not. So every call into the session (handshake step, encrypt, decrypt,
// moving ciphertext in or out of its buffers) takes one mutex, which is never held across a
// blocking wait: the sender encrypts a slice (at most kSendSliceBytes) under it, takes the
// ciphertext out and sends it unlocked; the receiver asks the session for buffer space under
// it, receives into that space unlocked (only the receiving thread ever writes there) and
// reports the bytes under it. Records that decrypting produces (a KeyUpdate answer, an alert)
// stay in the session's output in order and leave with the next Send. The lazy server
// handshake is serialized by a second mutex that is held while it waits on the socket; a
// second thread arriving meanwhile waits for it at most until its own deadline. Shutdown()
// shuts the inner connection down, which ends any wait in poll at once.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "engine/common/result.h"
#include "replication/transport.h"

namespace shale::tls {
class Credentials;
}

namespace shale::replication {

struct TlsTransportOptions {
  // A TLS handshake that takes longer fails: accept (or connect) to handshake done.
  std::chrono::milliseconds handshake_timeout{10000};
};

class TlsTransport final : public Transport {
 public:
  // Plaintext encrypted per slice of a Send, so the receiving thread is never locked out for
  // long (and ciphertext buffers stay small).
  static constexpr size_t kSendSliceBytes = 256 * 1024;

  // `inner` must outlive this transport and its connections. `creds` serve Listen when they
  // can make server sessions and Connect when they can make client sessions
  // (X509MutualDir: both).
  TlsTransport(Transport* inner, std::shared_ptr<const tls::Credentials> creds,
               TlsTransportOptions options = {});
  // The same, owning `inner` (shaled: a TcpTransport). Connections must not outlive it.
  TlsTransport(std::unique_ptr<Transport> inner, std::shared_ptr<const tls::Credentials> creds,
               TlsTransportOptions options = {});
  ~TlsTransport() override;

  Result<std::unique_ptr<Listener>> Listen(const std::string& address) override;
  Result<std::unique_ptr<Connection>> Connect(const std::string& address,
                                              Deadline deadline) override;

 private:
  std::unique_ptr<Transport> owned_inner_;
  Transport* const inner_;
  const std::shared_ptr<const tls::Credentials> creds_;
  const TlsTransportOptions options_;
};

// shaled --cluster-tls-dir DIR: ca.crt, tls.crt and tls.key (a Kubernetes TLS Secret with the
// CA added), loaded with Credentials::X509MutualDir after checking that tls.key is a file only
// its owner may read (no group or other permission bits: PermissionDenied naming the mode).
// Errors name the file that is wrong.
Result<std::shared_ptr<const tls::Credentials>> LoadClusterTlsDir(const std::string& dir);

}  // namespace shale::replication
