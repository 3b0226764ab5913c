#include "tls/session.h"

#include <arpa/inet.h>
#include <gnutls/x509.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tls/credentials_impl.h"

namespace shale::tls {

namespace {

// Non-fatal results of a handshake step tried again at once (warning alerts and the like);
// bounded so a peer cannot keep the caller in a loop.
constexpr int kMaxNonFatalRetries = 16;

gnutls_session_t G(void* s) { return static_cast<gnutls_session_t>(s); }

std::string CertificateText(gnutls_x509_crt_t crt, int (*get)(gnutls_x509_crt_t, gnutls_datum_t*)) {
  gnutls_datum_t d{};
  if (get(crt, &d) < 0) return "";
  std::string out(reinterpret_cast<const char*>(d.data), d.size);
  gnutls_free(d.data);
  return out;
}

int SubjectDn(gnutls_x509_crt_t crt, gnutls_datum_t* d) {
  return gnutls_x509_crt_get_dn3(crt, d, 0);
}

std::string CommonName(gnutls_x509_crt_t crt) {
  char buf[1024];
  size_t size = sizeof(buf);
  if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &size) < 0) {
    return "";
  }
  return std::string(buf, size);
}

void AddSubjectAltNames(gnutls_x509_crt_t crt, PeerIdentity* peer) {
  for (unsigned i = 0; i < 64; ++i) {
    char buf[1024];
    size_t size = sizeof(buf);
    const int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &size, nullptr);
    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) return;
    if (type < 0) continue;  // too long or malformed: not a name a rule can match
    const std::string value(buf, size);
    switch (type) {
      case GNUTLS_SAN_DNSNAME:
        peer->dns_names.push_back(value);
        break;
      case GNUTLS_SAN_RFC822NAME:
        peer->emails.push_back(value);
        break;
      case GNUTLS_SAN_URI:
        peer->uris.push_back(value);
        break;
      case GNUTLS_SAN_IPADDRESS: {
        char ip[INET6_ADDRSTRLEN] = {};
        const int family = size == 4 ? AF_INET : size == 16 ? AF_INET6 : 0;
        if (family != 0 && inet_ntop(family, buf, ip, sizeof(ip)) != nullptr) {
          peer->ip_addresses.emplace_back(ip);
        }
        break;
      }
      default:
        break;
    }
  }
}

}  // namespace

// GnuTLS's transport callbacks, on the memory buffers of a Session.
struct Session::Impl {
  static ssize_t Push(gnutls_transport_ptr_t ptr, const void* data, size_t len) {
    auto* s = static_cast<Session*>(ptr);
    const auto* p = static_cast<const uint8_t*>(data);
    s->out_.insert(s->out_.end(), p, p + len);
    return static_cast<ssize_t>(len);
  }

  static ssize_t Pull(gnutls_transport_ptr_t ptr, void* data, size_t len) {
    auto* s = static_cast<Session*>(ptr);
    const size_t avail = s->in_end_ - s->in_pos_;
    if (avail == 0) {
      if (s->input_closed_) return 0;
      gnutls_transport_set_errno(G(s->session_), EAGAIN);
      return -1;
    }
    const size_t n = std::min(avail, len);
    std::memcpy(data, s->in_.data() + s->in_pos_, n);
    s->in_pos_ += n;
    return static_cast<ssize_t>(n);
  }

  // Only asked whether data is there; a memory transport never waits.
  static int PullTimeout(gnutls_transport_ptr_t ptr, unsigned int /*ms*/) {
    auto* s = static_cast<Session*>(ptr);
    if (s->in_end_ > s->in_pos_) return 1;
    return s->input_closed_ ? 1 : 0;
  }
};

std::vector<std::string> PeerIdentity::Names() const {
  std::vector<std::string> names;
  if (!psk_username.empty()) names.push_back("psk:" + psk_username);
  if (!certificate) return names;
  if (!common_name.empty()) names.push_back("cn:" + common_name);
  for (const auto& n : dns_names) names.push_back("dns:" + n);
  for (const auto& n : ip_addresses) names.push_back("ip:" + n);
  for (const auto& n : emails) names.push_back("email:" + n);
  for (const auto& n : uris) names.push_back("uri:" + n);
  return names;
}

std::string PeerIdentity::ToString() const {
  if (!psk_username.empty()) return "psk:" + psk_username;
  if (certificate) return common_name.empty() ? "x509:" + subject : "cn:" + common_name;
  return "anonymous";
}

Session::Session(std::shared_ptr<const Credentials> creds, Role role)
    : creds_(std::move(creds)), role_(role) {}

Session::~Session() {
  if (session_ != nullptr) gnutls_deinit(G(session_));
}

Result<std::unique_ptr<Session>> Session::Create(std::shared_ptr<const Credentials> creds,
                                                 Role role) {
  if (creds == nullptr || !creds->CanServe(role)) {
    return Status::InvalidArgument(std::string("TLS credentials cannot be used as a ") +
                                   (role == Role::kServer ? "server" : "client"));
  }
  std::unique_ptr<Session> s(new Session(std::move(creds), role));
  SHALE_RETURN_IF_ERROR(s->Init());
  return s;
}

Status Session::Init() {
  const Credentials::Impl& c = creds_->impl();
  unsigned flags = (role_ == Role::kServer ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK;
  // No session tickets: NBD clients do not resume, and a ticket is work and bytes for nothing.
  flags |= GNUTLS_NO_TICKETS;
  gnutls_session_t s = nullptr;
  int rc = gnutls_init(&s, flags);
  if (rc < 0) return Status::Internal(std::string("gnutls_init: ") + gnutls_strerror(rc));
  session_ = s;
  rc = gnutls_priority_set(s, c.priority);
  if (rc < 0) return Status::Internal(std::string("TLS priorities: ") + gnutls_strerror(rc));
  if (c.x509 != nullptr) {
    rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, c.x509);
    // The credentials check the certificate on receipt (VerifyPeerCertificate); a server must
    // also ask for it.
    if (creds_->requires_peer_certificate() && role_ == Role::kServer) {
      gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
    }
    if (role_ == Role::kClient && !c.hostname.empty() &&
        c.hostname.find_first_not_of("0123456789.:") != std::string::npos) {
      gnutls_server_name_set(s, GNUTLS_NAME_DNS, c.hostname.data(), c.hostname.size());
    }
  } else if (c.psk_server != nullptr) {
    rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, c.psk_server);
  } else {
    rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, c.psk_client);
  }
  if (rc < 0) return Status::Internal(std::string("TLS credentials: ") + gnutls_strerror(rc));
  // Read by the PSK lookup and the certificate check, which get only the gnutls session.
  gnutls_session_set_ptr(s, const_cast<Credentials*>(creds_.get()));
  gnutls_transport_set_ptr(s, this);
  gnutls_transport_set_push_function(s, &Impl::Push);
  gnutls_transport_set_pull_function(s, &Impl::Pull);
  gnutls_transport_set_pull_timeout_function(s, &Impl::PullTimeout);
  return Status::Ok();
}

std::span<uint8_t> Session::InputSpace() {
  if (in_.empty()) in_.resize(kInputBufferSize);
  if (in_pos_ == in_end_) {
    in_pos_ = in_end_ = 0;
  } else if (in_end_ == in_.size()) {
    std::memmove(in_.data(), in_.data() + in_pos_, in_end_ - in_pos_);
    in_end_ -= in_pos_;
    in_pos_ = 0;
  }
  return {in_.data() + in_end_, in_.size() - in_end_};
}

void Session::InputReceived(size_t n) { in_end_ = std::min(in_end_ + n, in_.size()); }

void Session::AppendInput(std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    std::span<uint8_t> space = InputSpace();
    const size_t n = std::min(space.size(), bytes.size());
    if (n == 0) {
      in_.resize(in_.size() * 2);  // only before the handshake pulled anything: rare, bounded
      continue;
    }
    std::memcpy(space.data(), bytes.data(), n);
    InputReceived(n);
    bytes = bytes.subspan(n);
  }
}

Status Session::RecordError(int rc, const char* what) {
  std::string message = std::string("TLS ") + what + ": " + gnutls_strerror(rc);
  if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED || rc == GNUTLS_E_WARNING_ALERT_RECEIVED) {
    message += std::string(" (") + gnutls_alert_get_name(gnutls_alert_get(G(session_))) + ")";
  }
  error_ = Status::PermissionDenied(message);
  return error_;
}

Result<bool> Session::Handshake() {
  if (!error_.ok()) return error_;
  if (handshake_done_) return true;
  for (int i = 0; i < kMaxNonFatalRetries; ++i) {
    const int rc = gnutls_handshake(G(session_));
    if (rc == GNUTLS_E_SUCCESS) {
      handshake_done_ = true;
      FillPeer();
      return true;
    }
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
      if (input_closed_ && in_pos_ == in_end_) {
        error_ = Status::PermissionDenied("TLS handshake: the peer closed the connection");
        return error_;
      }
      return false;
    }
    if (gnutls_error_is_fatal(rc)) {
      // The peer learns why (bad certificate, unknown PSK user...), as TLS intends.
      gnutls_alert_send_appropriate(G(session_), rc);
      return RecordError(rc, "handshake");
    }
  }
  error_ = Status::PermissionDenied("TLS handshake: too many warnings from the peer");
  return error_;
}

void Session::FillPeer() {
  gnutls_session_t s = G(session_);
  if (creds_->kind() == CredentialKind::kPsk) {
    if (role_ == Role::kServer) {
      const char* name = gnutls_psk_server_get_username(s);
      if (name != nullptr) peer_.psk_username = name;
    }
    return;
  }
  unsigned count = 0;
  const gnutls_datum_t* chain = gnutls_certificate_get_peers(s, &count);
  if (chain == nullptr || count == 0) return;
  gnutls_x509_crt_t crt = nullptr;
  if (gnutls_x509_crt_init(&crt) < 0) return;
  if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) >= 0) {
    // Names are only trusted when the chain was verified (VerifyPeerCertificate passed).
    peer_.certificate = creds_->requires_peer_certificate();
    peer_.subject = CertificateText(crt, &SubjectDn);
    peer_.common_name = CommonName(crt);
    AddSubjectAltNames(crt, &peer_);
  }
  gnutls_x509_crt_deinit(crt);
}

bool Session::ReadReady() const {
  if (!handshake_done_ || !error_.ok()) return false;
  return gnutls_record_check_pending(G(session_)) > 0 || in_pos_ < in_end_ ||
         (input_closed_ && !eof_);
}

Result<size_t> Session::Read(std::span<uint8_t> dst) {
  if (!error_.ok()) return error_;
  size_t total = 0;
  int warnings = 0;
  while (total < dst.size() && !eof_) {
    const ssize_t rc = gnutls_record_recv(G(session_), dst.data() + total, dst.size() - total);
    if (rc > 0) {
      total += static_cast<size_t>(rc);
      continue;
    }
    if (rc == 0 || rc == GNUTLS_E_PREMATURE_TERMINATION) {
      eof_ = true;  // close_notify, or the peer's side closed (a hard disconnect)
      break;
    }
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
      if (input_closed_ && in_pos_ == in_end_) eof_ = true;  // a partial record, then nothing
      break;
    }
    if (rc == GNUTLS_E_REHANDSHAKE && ++warnings < kMaxNonFatalRetries) {
      // TLS 1.2 renegotiation is refused: nothing needs it, and it is an attack surface.
      gnutls_alert_send(G(session_), GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
      continue;
    }
    if (!gnutls_error_is_fatal(static_cast<int>(rc)) && ++warnings < kMaxNonFatalRetries) {
      continue;
    }
    Status st = RecordError(static_cast<int>(rc), "receive");
    if (total > 0) return total;  // the error is reported by the next call
    return st;
  }
  return total;
}

Status Session::SendRecord(const uint8_t* data, size_t len) {
  while (len > 0) {
    const ssize_t rc = gnutls_record_send(G(session_), data, len);
    if (rc < 0) {
      if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) continue;  // memory: cannot happen
      return RecordError(static_cast<int>(rc), "send");
    }
    data += rc;
    len -= static_cast<size_t>(rc);
  }
  return Status::Ok();
}

Status Session::Write(std::span<const uint8_t> data) {
  if (!error_.ok()) return error_;
  return SendRecord(data.data(), data.size());
}

Status Session::WriteGather(std::span<const iovec> pieces) {
  if (!error_.ok()) return error_;
  const size_t record = std::max<size_t>(gnutls_record_get_max_size(G(session_)), 512);
  stage_.clear();
  for (const iovec& piece : pieces) {
    const auto* p = static_cast<const uint8_t*>(piece.iov_base);
    size_t left = piece.iov_len;
    while (left > 0) {
      if (stage_.empty() && left >= record) {
        // Whole records straight from the caller's memory.
        const size_t n = left - left % record;
        SHALE_RETURN_IF_ERROR(SendRecord(p, n));
        p += n;
        left -= n;
        continue;
      }
      const size_t n = std::min(left, record - stage_.size());
      stage_.insert(stage_.end(), p, p + n);
      p += n;
      left -= n;
      if (stage_.size() == record) {
        SHALE_RETURN_IF_ERROR(SendRecord(stage_.data(), stage_.size()));
        stage_.clear();
      }
    }
  }
  if (!stage_.empty()) SHALE_RETURN_IF_ERROR(SendRecord(stage_.data(), stage_.size()));
  stage_.clear();
  return Status::Ok();
}

void Session::Close() {
  if (!handshake_done_ || !error_.ok()) return;
  gnutls_bye(G(session_), GNUTLS_SHUT_WR);  // appends close_notify; never waits (SHUT_WR)
}

void Session::OutputSent(size_t n) {
  out_pos_ = std::min(out_pos_ + n, out_.size());
  if (out_pos_ == out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
}

void Session::TakeOutput(std::vector<uint8_t>* dst) {
  if (out_pos_ > 0) {
    out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(out_pos_));
    out_pos_ = 0;
  }
  dst->clear();
  std::swap(*dst, out_);
}

std::string Session::Description() const {
  char* desc = gnutls_session_get_desc(G(session_));
  if (desc == nullptr) return "TLS";
  std::string out(desc);
  gnutls_free(desc);
  return out;
}

}  // namespace shale::tls
