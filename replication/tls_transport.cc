#include "replication/tls_transport.h"

#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <vector>

#include "engine/common/log.h"
#include "tls/credentials.h"
#include "tls/session.h"

namespace shale::replication {

namespace {

// A TLS session over an inner connection. Threading and the handshake: tls_transport.h.
class TlsConnection final : public Connection {
 public:
  TlsConnection(std::unique_ptr<Connection> inner, std::unique_ptr<tls::Session> session,
                std::chrono::milliseconds handshake_timeout)
      : inner_(std::move(inner)),
        session_(std::move(session)),
        handshake_timeout_(handshake_timeout),
        handshake_deadline_(DeadlineIn(handshake_timeout)) {}

  // Runs or resumes the handshake. OK once it is done. IsTimedOut when `deadline` (earlier
  // than the handshake's own) passed first: call again. Any other error is final, and every
  // later call returns it.
  Status Handshake(Deadline deadline) {
    if (handshaken_.load(std::memory_order_acquire)) return Status::Ok();
    std::unique_lock<std::timed_mutex> lock(hs_mu_, std::defer_lock);
    if (deadline == kNoDeadline) {
      lock.lock();
    } else if (!lock.try_lock_until(deadline)) {
      return TimedOut("TLS handshake with " + peer());
    }
    if (handshaken_.load(std::memory_order_acquire)) return Status::Ok();
    if (!hs_error_.ok()) return hs_error_;
    const Deadline until = std::min(deadline, handshake_deadline_);
    Status st = RunHandshake(until);
    if (st.ok()) {
      handshaken_.store(true, std::memory_order_release);
      std::lock_guard session_lock(mu_);
      SHALE_LOG_DEBUG("replica TLS session", {"peer", peer()},
                      {"identity", session_->peer().ToString()},
                      {"cipher", session_->Description()});
      return st;
    }
    if (IsTimedOut(st) && deadline < handshake_deadline_) return st;  // the caller's deadline
    if (IsTimedOut(st)) {
      st = Status::PermissionDenied("TLS handshake with " + peer() + " did not finish within " +
                                    std::to_string(handshake_timeout_.count()) + " ms");
    } else {
      st = st.WithContext("TLS handshake with " + peer());
    }
    hs_error_ = st;
    inner_->Shutdown();
    return st;
  }

  Status Send(std::span<const ConstBuffer> buffers, Deadline deadline) override {
    SHALE_RETURN_IF_ERROR(Handshake(deadline));
    std::vector<iovec> slice;
    size_t slice_bytes = 0;
    for (const ConstBuffer& b : buffers) {
      const uint8_t* p = b.data();
      size_t left = b.size();
      while (left > 0) {
        const size_t n = std::min(left, TlsTransport::kSendSliceBytes - slice_bytes);
        slice.push_back({const_cast<uint8_t*>(p), n});
        p += n;
        left -= n;
        slice_bytes += n;
        if (slice_bytes == TlsTransport::kSendSliceBytes) {
          SHALE_RETURN_IF_ERROR(SendSlice(slice, deadline));
          slice.clear();
          slice_bytes = 0;
        }
      }
    }
    if (slice.empty()) return Status::Ok();
    return SendSlice(slice, deadline);
  }

  Result<size_t> Recv(std::span<uint8_t> buf, Deadline deadline) override {
    SHALE_RETURN_IF_ERROR(Handshake(deadline));
    while (true) {
      {
        std::lock_guard lock(mu_);
        Result<size_t> n = session_->Read(buf);
        if (!n.ok()) return n.status().WithContext("from " + peer());
        if (*n > 0 || session_->eof() || buf.empty()) return *n;
      }
      Result<size_t> got = ReceiveCiphertext(deadline);
      if (!got.ok()) return got.status();
    }
  }

  void Shutdown() override { inner_->Shutdown(); }
  const std::string& peer() const override { return inner_->peer(); }

 private:
  Status RunHandshake(Deadline deadline) {
    while (true) {
      Result<bool> done = false;
      {
        std::lock_guard lock(mu_);
        done = session_->Handshake();
        session_->TakeOutput(&send_buf_);
      }
      // Whatever the step produced goes out, an alert included: the peer learns why.
      if (!send_buf_.empty()) {
        const ConstBuffer b(send_buf_.data(), send_buf_.size());
        Status sent = inner_->Send(std::span(&b, 1), deadline);
        // Part of a flight may have left: the stream cannot resume after a send timeout.
        if (IsTimedOut(sent)) sent = Status::IoError("send timed out");
        if (done.ok() && !sent.ok()) return sent;
      }
      if (!done.ok()) return done.status();
      if (*done) return Status::Ok();
      Result<size_t> got = ReceiveCiphertext(deadline);
      if (!got.ok()) return got.status();
    }
  }

  // Receives ciphertext straight into the session's input buffer. Only the receiving thread
  // (or the handshake) writes there, and the session only reads the part before it, so the
  // wait runs unlocked.
  Result<size_t> ReceiveCiphertext(Deadline deadline) {
    std::span<uint8_t> space;
    {
      std::lock_guard lock(mu_);
      space = session_->InputSpace();
    }
    Result<size_t> n = inner_->Recv(space, deadline);
    if (!n.ok()) return n;
    std::lock_guard lock(mu_);
    if (*n == 0) {
      session_->InputClosed();
    } else {
      session_->InputReceived(*n);
    }
    return n;
  }

  // Encrypts `slice` and sends the ciphertext (with any records decrypting left behind).
  Status SendSlice(std::span<const iovec> slice, Deadline deadline) {
    {
      std::lock_guard lock(mu_);
      Status st = session_->WriteGather(slice);
      session_->TakeOutput(&send_buf_);
      if (!st.ok()) return st.WithContext("to " + peer());
    }
    if (send_buf_.empty()) return Status::Ok();
    const ConstBuffer b(send_buf_.data(), send_buf_.size());
    return inner_->Send(std::span(&b, 1), deadline);
  }

  const std::unique_ptr<Connection> inner_;
  const std::unique_ptr<tls::Session> session_;
  const std::chrono::milliseconds handshake_timeout_;
  const Deadline handshake_deadline_;
  std::atomic<bool> handshaken_{false};
  std::timed_mutex hs_mu_;  // serializes the handshake; held while it waits on the socket
  Status hs_error_;         // guarded by hs_mu_: why the handshake failed, once it did
  std::mutex mu_;           // guards every call into session_; never held across a wait
  // Ciphertext on its way out: the handshake's, then the sending thread's.
  std::vector<uint8_t> send_buf_;
};

class TlsListener final : public Listener {
 public:
  TlsListener(std::unique_ptr<Listener> inner, std::shared_ptr<const tls::Credentials> creds,
              std::chrono::milliseconds handshake_timeout)
      : inner_(std::move(inner)), creds_(std::move(creds)), handshake_timeout_(handshake_timeout) {}

  // No handshake here: it runs on the first Send or Recv of the connection (tls_transport.h).
  Result<std::unique_ptr<Connection>> Accept(Deadline deadline) override {
    SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> c, inner_->Accept(deadline));
    SHALE_ASSIGN_OR_RETURN(std::unique_ptr<tls::Session> session,
                           tls::Session::Create(creds_, tls::Role::kServer));
    return std::unique_ptr<Connection>(
        new TlsConnection(std::move(c), std::move(session), handshake_timeout_));
  }
  void Shutdown() override { inner_->Shutdown(); }
  const std::string& address() const override { return inner_->address(); }

 private:
  const std::unique_ptr<Listener> inner_;
  const std::shared_ptr<const tls::Credentials> creds_;
  const std::chrono::milliseconds handshake_timeout_;
};

}  // namespace

TlsTransport::TlsTransport(Transport* inner, std::shared_ptr<const tls::Credentials> creds,
                           TlsTransportOptions options)
    : inner_(inner), creds_(std::move(creds)), options_(options) {}

TlsTransport::TlsTransport(std::unique_ptr<Transport> inner,
                           std::shared_ptr<const tls::Credentials> creds,
                           TlsTransportOptions options)
    : owned_inner_(std::move(inner)),
      inner_(owned_inner_.get()),
      creds_(std::move(creds)),
      options_(options) {}

TlsTransport::~TlsTransport() = default;

Result<std::unique_ptr<Listener>> TlsTransport::Listen(const std::string& address) {
  if (creds_ == nullptr || !creds_->CanServe(tls::Role::kServer)) {
    return Status::InvalidArgument("TLS credentials for " + address + " cannot serve");
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Listener> inner, inner_->Listen(address));
  return std::unique_ptr<Listener>(
      new TlsListener(std::move(inner), creds_, options_.handshake_timeout));
}

Result<std::unique_ptr<Connection>> TlsTransport::Connect(const std::string& address,
                                                          Deadline deadline) {
  if (creds_ == nullptr || !creds_->CanServe(tls::Role::kClient)) {
    return Status::InvalidArgument("TLS credentials cannot connect to " + address);
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<tls::Session> session,
                         tls::Session::Create(creds_, tls::Role::kClient));
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> inner, inner_->Connect(address, deadline));
  auto conn = std::make_unique<TlsConnection>(std::move(inner), std::move(session),
                                              options_.handshake_timeout);
  SHALE_RETURN_IF_ERROR(conn->Handshake(deadline));
  return std::unique_ptr<Connection>(std::move(conn));
}

Result<std::shared_ptr<const tls::Credentials>> LoadClusterTlsDir(const std::string& dir) {
  const std::string key = dir + "/tls.key";
  struct stat st;
  if (::stat(key.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status::PermissionDenied(key + " must be readable by its owner only, mode 0600 (it is " +
                                    mode + "); run: chmod 600 " + key);
  }
  return tls::Credentials::X509MutualDir(dir);
}

}  // namespace shale::replication
