#include "tls/fd_stream.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

namespace shale::tls {

namespace {

using Clock = std::chrono::steady_clock;

// Waits for `events` on fd until `deadline`; Unavailable when it passes.
Status WaitFor(int fd, short events, Clock::time_point deadline, const char* what) {
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Status::Unavailable(std::string("TLS ") + what + " timed out");
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>(left));
    if (n > 0) return Status::Ok();
    if (n < 0 && errno != EINTR)
      return Status::FromErrno(errno, std::string("poll for TLS ") + what);
  }
}

}  // namespace

Status FdStream::Flush(Deadline deadline) {
  while (session_->has_output()) {
    const std::span<const uint8_t> out = session_->output();
    const ssize_t n = send(fd_, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      session_->OutputSent(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      SHALE_RETURN_IF_ERROR(WaitFor(fd_, POLLOUT, deadline, "send"));
      continue;
    }
    return Status::FromErrno(n < 0 ? errno : EPIPE, "TLS send");
  }
  return Status::Ok();
}

Status FdStream::Fill(Deadline deadline) {
  while (true) {
    const std::span<uint8_t> space = session_->InputSpace();
    const ssize_t n = recv(fd_, space.data(), space.size(), MSG_DONTWAIT);
    if (n > 0) {
      session_->InputReceived(static_cast<size_t>(n));
      return Status::Ok();
    }
    if (n == 0) {
      session_->InputClosed();
      return Status::Ok();
    }
    if (errno == EAGAIN || errno == EINTR) {
      SHALE_RETURN_IF_ERROR(WaitFor(fd_, POLLIN, deadline, "receive"));
      continue;
    }
    if (errno == ECONNRESET) {
      session_->InputClosed();
      return Status::Ok();
    }
    return Status::FromErrno(errno, "TLS receive");
  }
}

Result<std::unique_ptr<FdStream>> FdStream::Handshake(int fd,
                                                      std::shared_ptr<const Credentials> creds,
                                                      Role role, std::chrono::milliseconds timeout,
                                                      std::span<const uint8_t> received) {
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> session, Session::Create(std::move(creds), role));
  std::unique_ptr<FdStream> stream(new FdStream(fd, std::move(session)));
  if (!received.empty()) stream->session_->AppendInput(received);
  const Deadline deadline = Clock::now() + timeout;
  while (true) {
    Result<bool> done = stream->session_->Handshake();
    // Whatever the handshake produced goes out, alerts included: the peer learns why.
    Status flushed = stream->Flush(deadline);
    if (!done.ok()) return done.status();
    SHALE_RETURN_IF_ERROR(flushed);
    if (*done) return stream;
    SHALE_RETURN_IF_ERROR(stream->Fill(deadline));
  }
}

Status FdStream::Send(std::span<const uint8_t> data, std::chrono::milliseconds timeout) {
  SHALE_RETURN_IF_ERROR(session_->Write(data));
  return Flush(Clock::now() + timeout);
}

Result<size_t> FdStream::Recv(std::span<uint8_t> dst, std::chrono::milliseconds timeout) {
  const Deadline deadline = Clock::now() + timeout;
  while (true) {
    SHALE_ASSIGN_OR_RETURN(size_t n, session_->Read(dst));
    // Reading may have produced records to send (a refused renegotiation, a key update).
    SHALE_RETURN_IF_ERROR(Flush(deadline));
    if (n > 0 || session_->eof() || dst.empty()) return n;
    SHALE_RETURN_IF_ERROR(Fill(deadline));
  }
}

Status FdStream::RecvExact(std::span<uint8_t> dst, std::chrono::milliseconds timeout) {
  const Deadline deadline = Clock::now() + timeout;
  size_t got = 0;
  while (got < dst.size()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return Status::Unavailable("TLS receive timed out");
    SHALE_ASSIGN_OR_RETURN(size_t n, Recv(dst.subspan(got), left));
    if (n == 0) return Status::IoError("TLS stream ended after " + std::to_string(got) + " bytes");
    got += n;
  }
  return Status::Ok();
}

Status FdStream::Close(std::chrono::milliseconds timeout) {
  session_->Close();
  return Flush(Clock::now() + timeout);
}

}  // namespace shale::tls
