// Session: one TLS session (GnuTLS) that runs over memory buffers instead of a socket.
//
// The owner of the socket moves the bytes: it receives ciphertext into InputSpace() and reports
// it with InputReceived(), sends what output() holds and reports it with OutputSent(). In
// between, Handshake(), Read() and Write*() only compute: they never block, never touch a file
// descriptor, and do work bounded by what they are given (Read by its destination, Write by
// its source). That is what lets an io_uring reactor run TLS next to other connections without
// stalling them, and lets the expensive handshake run on another thread (docs/security.md).
//
//   handshake:  loop { Handshake(); send output(); if not done: receive into InputSpace() }
//   receive:    receive ciphertext; Read(dst) until it returns 0 (needs more input) or eof()
//   send:       Write(bytes) / WriteGather(iovecs); send output()
//
// Threading: not thread-safe; one thread at a time may use a session (it may move between
// threads, e.g. a worker for the handshake, a reactor after it). The Credentials are shared.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/common/result.h"
#include "tls/credentials.h"

namespace shale::tls {

// Who the peer proved to be (valid once the handshake is done).
struct PeerIdentity {
  std::string psk_username;  // PSK: the user name the client's key belongs to
  bool certificate = false;  // X.509: a certificate was presented (and verified, if required)
  std::string subject;       // its subject DN, RFC 4514: "CN=client-a,O=Example"
  std::string common_name;   // CN
  std::vector<std::string> dns_names, ip_addresses, emails, uris;  // subjectAltName entries

  // The names an authorization rule can match: "psk:USER", "cn:NAME", "dns:NAME", "ip:ADDR",
  // "email:ADDR", "uri:URI".
  std::vector<std::string> Names() const;
  // For logs and `shale export list`: "psk:alice", "cn:client-a", or "anonymous".
  std::string ToString() const;
};

class Session {
 public:
  // Size of the input buffer: a receive fills up to this much ciphertext at once.
  static constexpr size_t kInputBufferSize = 256 * 1024;

  // `creds` must allow `role` (Credentials::CanServe).
  static Result<std::unique_ptr<Session>> Create(std::shared_ptr<const Credentials> creds,
                                                 Role role);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // --- ciphertext from the peer ---
  // Writable space at the end of the input buffer (at least 1 byte; the buffer is compacted).
  std::span<uint8_t> InputSpace();
  void InputReceived(size_t n);
  // Ciphertext received and not yet pulled by GnuTLS (which may hold up to one more record).
  size_t InputBuffered() const { return in_end_ - in_pos_; }
  // The most ciphertext GnuTLS holds of a record it has not finished (TLS 1.3: 2^14 bytes of
  // plaintext, 256 of expansion, a 5-byte header).
  static constexpr size_t kMaxRecordBytes = 16384 + 256 + 5;
  // At least this much ciphertext must still arrive before `plaintext` more bytes of application
  // data can be read (records are never smaller than their plaintext), given what is buffered
  // here and what GnuTLS may hold; 0 when they may all be here.
  size_t CiphertextStillToCome(uint64_t plaintext) const {
    const uint64_t held = InputBuffered() + kMaxRecordBytes;
    return plaintext > held ? static_cast<size_t>(plaintext - held) : 0;
  }
  void AppendInput(std::span<const uint8_t> bytes);
  // The peer closed its side: Read() reports the end of the stream once input is used up.
  void InputClosed() { input_closed_ = true; }

  // --- handshake ---
  // Advances the handshake with the input buffered so far. true: complete (peer() is filled);
  // false: send output(), then receive more input. An error ends the session; output() may
  // still hold an alert worth sending to the peer.
  Result<bool> Handshake();
  bool handshake_done() const { return handshake_done_; }

  // --- application data (after the handshake) ---
  // Decrypts up to dst.size() bytes; 0 when no whole record is buffered (receive more) or at
  // the end of the stream (eof()). Errors (a forged or garbled record) end the session.
  Result<size_t> Read(std::span<uint8_t> dst);
  // True when Read() may return data without more input.
  bool ReadReady() const;
  // The peer ended the stream (close_notify, or its side closed after whole records).
  bool eof() const { return eof_; }
  // Encrypts `data` into output().
  Status Write(std::span<const uint8_t> data);
  // Encrypts the concatenation of `pieces` into records of the maximum size, copying only pieces
  // smaller than a record (so a 16-byte reply header and its 4 KiB of data make one record).
  Status WriteGather(std::span<const iovec> pieces);
  // Appends a close_notify alert to output().
  void Close();

  // --- ciphertext to the peer ---
  std::span<const uint8_t> output() const {
    return {out_.data() + out_pos_, out_.size() - out_pos_};
  }
  bool has_output() const { return out_pos_ < out_.size(); }
  void OutputSent(size_t n);
  // Moves every unsent byte of output() into *dst (whose old content is dropped and whose
  // memory the session reuses): for a caller whose send may still be running when the session
  // produces more output (an io_uring SEND reads the buffer until it completes).
  void TakeOutput(std::vector<uint8_t>* dst);

  const PeerIdentity& peer() const { return peer_; }
  Role role() const { return role_; }
  // "(TLS1.3)-(ECDHE-X25519)-(ECDSA-SECP256R1-SHA256)-(AES-256-GCM)", for logs.
  std::string Description() const;

  struct Impl;  // GnuTLS transport callbacks (session.cc)

 private:
  Session(std::shared_ptr<const Credentials> creds, Role role);
  Status Init();
  void FillPeer();
  Status SendRecord(const uint8_t* data, size_t len);
  Status RecordError(int rc, const char* what);

  std::shared_ptr<const Credentials> creds_;
  const Role role_;
  void* session_ = nullptr;  // gnutls_session_t
  bool handshake_done_ = false;
  bool eof_ = false;
  bool input_closed_ = false;
  Status error_;  // the first fatal error; the session is unusable after it

  std::vector<uint8_t> in_;  // [in_pos_, in_end_) is ciphertext GnuTLS has not pulled yet
  size_t in_pos_ = 0, in_end_ = 0;
  std::vector<uint8_t> out_;  // [out_pos_, size) is ciphertext not yet sent
  size_t out_pos_ = 0;
  std::vector<uint8_t> stage_;  // WriteGather: small pieces gathered into one record
  PeerIdentity peer_;
};

}  // namespace shale::tls
