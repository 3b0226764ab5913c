// TlsChannel: the TLS state of one NBD connection (internal to the server, used by
// connection.cc) — the tls::Session, the ciphertext being sent and the plaintext it carries,
// the handshake's progress and what the client proved. No I/O: the connection moves the bytes
// with its io_uring SQEs (docs/security.md, "The record layer on the reactors").
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/common/result.h"
#include "engine/common/units.h"
#include "tls/session.h"

namespace shale::nbd {

// Plaintext encrypted per send, and decrypted straight into a write's buffer per turn: a
// connection does bounded record work before its reactor turns to other connections.
inline constexpr size_t kTlsSendBudget = 1 * kMiB;
inline constexpr size_t kTlsDecryptBudget = 1 * kMiB;

class TlsChannel {
 public:
  // A server session; `early`: bytes the client sent after NBD_OPT_STARTTLS (its first records).
  static Result<std::unique_ptr<TlsChannel>> Start(std::shared_ptr<const tls::Credentials> creds,
                                                   std::span<const uint8_t> early);

  tls::Session& session() { return *session_; }

  // --- sending: one batch of ciphertext at a time ---
  // Encrypts up to kTlsSendBudget bytes of the plaintext in `iov` into a new batch.
  Status Encrypt(const iovec* iov, size_t n);
  // Takes what the session produced (handshake records, alerts, close_notify) as a new batch.
  void TakeSessionOutput() { session_->TakeOutput(&send_); }
  std::span<const uint8_t> unsent() const { return {send_.data() + sent_, send_.size() - sent_}; }
  // `n` more ciphertext bytes went out; true once the batch is complete, with *plain set to the
  // plaintext it carried.
  bool Sent(size_t n, size_t* plain);

  // --- the handshake ---
  bool handshaking = true;    // records are the TLS handshake's
  bool step_pending = false;  // a handshake step runs on the TLS worker
  bool failed = false;        // it failed: send the alert, then close
  bool ready = false;         // records carry the NBD stream
  bool bye_sent = false;      // close_notify queued
  // After the handshake: what the client proved (for authorization and `shale export list`).
  void Established();
  const std::vector<std::string>& peer_names() const { return peer_names_; }
  const std::string& identity() const { return identity_; }

 private:
  explicit TlsChannel(std::unique_ptr<tls::Session> session) : session_(std::move(session)) {}

  std::unique_ptr<tls::Session> session_;
  std::vector<uint8_t> send_;  // the batch being sent, from sent_
  size_t sent_ = 0;
  size_t plain_ = 0;  // plaintext bytes the batch carries
  std::vector<iovec> iov_;
  std::vector<std::string> peer_names_;
  std::string identity_;
};

}  // namespace shale::nbd
