// FdStream: a tls::Session on a connected socket, for code that runs on its own thread and may
// wait — command-line helpers and test clients. (The replica transport needs one sender and one
// receiver at once and drives a Session itself: replication/tls_transport.h.) Every call takes a
// timeout and waits with poll(), so a silent or slow peer costs at most that long; nothing here is
// for a reactor thread (reactors drive Session themselves).
//
// Threading: one thread at a time. The socket is not owned: the caller closes it.
#pragma once

#include <chrono>
#include <memory>
#include <span>
#include <string>

#include "engine/common/result.h"
#include "tls/session.h"

namespace shale::tls {

class FdStream {
 public:
  // Runs the TLS handshake on the connected socket `fd` within `timeout`. `received`: bytes
  // already read from the socket that belong to TLS (e.g. read together with NBD's reply to
  // NBD_OPT_STARTTLS). Fails with PermissionDenied when the peer is not trusted (or does not
  // trust us), Unavailable on timeout.
  static Result<std::unique_ptr<FdStream>> Handshake(int fd,
                                                     std::shared_ptr<const Credentials> creds,
                                                     Role role, std::chrono::milliseconds timeout,
                                                     std::span<const uint8_t> received = {});

  // Encrypts and sends every byte.
  Status Send(std::span<const uint8_t> data, std::chrono::milliseconds timeout);
  // At least one byte of plaintext, or 0 at the end of the stream.
  Result<size_t> Recv(std::span<uint8_t> dst, std::chrono::milliseconds timeout);
  // Exactly dst.size() bytes (an end of stream before is an error).
  Status RecvExact(std::span<uint8_t> dst, std::chrono::milliseconds timeout);
  // Sends close_notify (the socket stays open).
  Status Close(std::chrono::milliseconds timeout);

  const PeerIdentity& peer() const { return session_->peer(); }
  Session& session() { return *session_; }

 private:
  FdStream(int fd, std::unique_ptr<Session> session) : fd_(fd), session_(std::move(session)) {}
  using Deadline = std::chrono::steady_clock::time_point;
  Status Flush(Deadline deadline);
  Status Fill(Deadline deadline);  // receives some ciphertext (or notes the end of the stream)

  const int fd_;
  std::unique_ptr<Session> session_;
};

}  // namespace shale::tls
