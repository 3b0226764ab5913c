#include "tls/credentials.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "tls/credentials_impl.h"

namespace shale::tls {

namespace {

// TLS 1.2 and 1.3 with GnuTLS's defaults; PSK credentials add the PSK key exchanges (the ECDHE
// and DHE ones first: forward secrecy when the client offers it; qemu and libnbd do).
// The AEAD ciphers only, AES-GCM first and the server's order deciding: GnuTLS 3.7's defaults
// put ChaCha20-Poly1305 first on some x86 VMs that do have AES-NI (seen on the machines Shale is
// measured on: 4.6 GB/s for AES-128-GCM, 0.25 GB/s for ChaCha20 per core), and the record layer
// of a block device is bulk encryption. AES-128-GCM before AES-256-GCM (TLS 1.3's mandatory
// suite, first in Mozilla's recommended order): 14 % cheaper per byte here, and the single-
// threaded NBD clients (fio, qemu, nbdcopy) are what bounds 1 MiB I/O over TLS (docs/security.md,
// docs/performance.md).
constexpr char kX509Priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:+AES-256-CCM:+AES-128-CCM:%SERVER_PRECEDENCE";
constexpr char kPskPriority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:+ECDHE-PSK:+DHE-PSK:+PSK:-CIPHER-ALL:"
    "+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:+AES-256-CCM:+AES-128-CCM:%SERVER_PRECEDENCE";
constexpr size_t kMaxPskFileBytes = 1 << 20;
constexpr size_t kMaxPskUsername = 255;

Status GnutlsError(int rc, const std::string& what) {
  return Status::InvalidArgument(what + ": " + gnutls_strerror(rc));
}

bool Readable(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

Status CheckDir(const std::string& dir, const char* what) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return Status::FromErrno(errno, std::string(what) + " directory " + dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument(std::string(what) + " " + dir + " is not a directory");
  }
  return Status::Ok();
}

Status RequireFile(const std::string& path) {
  if (Readable(path)) return Status::Ok();
  return Status::FromErrno(errno, "TLS file " + path);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Result<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::FromErrno(errno, "read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > kMaxPskFileBytes) {
    return Status::InvalidArgument(path + " is larger than 1 MiB; is it a PSK file?");
  }
  return text;
}

// The server's PSK lookup: the Credentials hang off the session (session.cc sets the pointer
// with gnutls_session_set_ptr before the handshake).
int LookupPsk(gnutls_session_t session, const gnutls_datum_t* username, gnutls_datum_t* key) {
  const auto* creds = static_cast<const Credentials*>(gnutls_session_get_ptr(session));
  if (creds == nullptr || username == nullptr) return -1;
  const std::string name(reinterpret_cast<const char*>(username->data), username->size);
  const auto& keys = creds->impl().psk_keys;
  const auto it = keys.find(name);
  if (it == keys.end()) return -1;
  key->data = static_cast<unsigned char*>(gnutls_malloc(it->second.size()));
  if (key->data == nullptr) return -1;
  std::memcpy(key->data, it->second.data(), it->second.size());
  key->size = static_cast<unsigned>(it->second.size());
  return 0;
}

}  // namespace

int VerifyPeerCertificate(gnutls_session_t session) {
  const auto* creds = static_cast<const Credentials*>(gnutls_session_get_ptr(session));
  if (creds == nullptr) return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
  const std::string& host = creds->impl().hostname;
  unsigned status = 0;
  const int rc =
      gnutls_certificate_verify_peers3(session, host.empty() ? nullptr : host.c_str(), &status);
  if (rc < 0 || status != 0) return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
  return 0;
}

namespace {

Status InitPriority(Credentials::Impl* impl, const char* priority) {
  const char* err_pos = nullptr;
  const int rc = gnutls_priority_init(&impl->priority, priority, &err_pos);
  if (rc < 0) return GnutlsError(rc, std::string("TLS priority string at '") + err_pos + "'");
  return Status::Ok();
}

// Loads a certificate and its key, and (when `ca` names a file) the CA that peers must chain to.
Status LoadX509(Credentials::Impl* impl, const std::string& cert, const std::string& key,
                const std::string& ca, const std::string& crl) {
  int rc = gnutls_certificate_allocate_credentials(&impl->x509);
  if (rc < 0) return GnutlsError(rc, "allocate X.509 credentials");
  if (!ca.empty()) {
    SHALE_RETURN_IF_ERROR(RequireFile(ca));
    rc = gnutls_certificate_set_x509_trust_file(impl->x509, ca.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) return GnutlsError(rc, "load CA certificate " + ca);
    if (rc == 0) return Status::InvalidArgument("no certificate found in CA file " + ca);
    // Peers must chain to this CA: checked on receipt of their certificate, in the handshake,
    // so an untrusted peer never completes it.
    gnutls_certificate_set_verify_function(impl->x509, &VerifyPeerCertificate);
  }
  if (!crl.empty() && Exists(crl)) {
    rc = gnutls_certificate_set_x509_crl_file(impl->x509, crl.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) return GnutlsError(rc, "load CRL " + crl);
  }
  if (!cert.empty()) {
    SHALE_RETURN_IF_ERROR(RequireFile(cert));
    SHALE_RETURN_IF_ERROR(RequireFile(key));
    rc = gnutls_certificate_set_x509_key_file2(impl->x509, cert.c_str(), key.c_str(),
                                               GNUTLS_X509_FMT_PEM, nullptr, 0);
    if (rc < 0) return GnutlsError(rc, "load certificate " + cert + " with key " + key);
  }
  // TLS 1.2 DHE key exchanges need group parameters; the RFC 7919 ones are known to GnuTLS.
  gnutls_certificate_set_known_dh_params(impl->x509, GNUTLS_SEC_PARAM_HIGH);
  return InitPriority(impl, kX509Priority);
}

}  // namespace

Credentials::Impl::~Impl() {
  if (x509 != nullptr) gnutls_certificate_free_credentials(x509);
  if (psk_server != nullptr) gnutls_psk_free_server_credentials(psk_server);
  if (psk_client != nullptr) gnutls_psk_free_client_credentials(psk_client);
  if (priority != nullptr) gnutls_priority_deinit(priority);
}

Result<std::map<std::string, std::string>> ParsePskFile(const std::string& text) {
  std::map<std::string, std::string> keys;
  std::istringstream in(text);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("PSK file line " + std::to_string(n) + ": " + why +
                                     " (expected username:hexkey, as psktool writes)");
    };
    const size_t colon = line.rfind(':');
    if (colon == std::string::npos) return bad("no ':'");
    const std::string name = line.substr(0, colon);
    const std::string hex = line.substr(colon + 1);
    if (name.empty() || name.size() > kMaxPskUsername) return bad("user name of 1..255 bytes");
    if (hex.empty() || hex.size() % 2 != 0)
      return bad("the key is not an even number of hex digits");
    std::string key;
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = HexValue(hex[i]), lo = HexValue(hex[i + 1]);
      if (hi < 0 || lo < 0) return bad("the key is not hexadecimal");
      key.push_back(static_cast<char>(hi * 16 + lo));
    }
    if (keys.count(name) > 0) return bad("user '" + name + "' appears twice");
    keys.emplace(name, std::move(key));
  }
  if (keys.empty()) return Status::InvalidArgument("PSK file holds no key");
  return keys;
}

Credentials::Credentials(CredentialKind kind, std::unique_ptr<Impl> impl)
    : kind_(kind), impl_(std::move(impl)) {}

Credentials::~Credentials() = default;

bool Credentials::CanServe(Role role) const { return role == Role::kServer ? serves_ : clients_; }

std::string Credentials::Describe() const {
  if (kind_ == CredentialKind::kPsk) {
    if (!serves_) return "psk";
    const size_t n = impl_->psk_keys.size();
    return "psk (" + std::to_string(n) + (n == 1 ? " user)" : " users)");
  }
  return verify_peer_ ? "x509 (peer certificates required)" : "x509";
}

Result<std::shared_ptr<const Credentials>> Credentials::X509ServerDir(const std::string& dir) {
  SHALE_RETURN_IF_ERROR(CheckDir(dir, "X.509"));
  auto impl = std::make_unique<Impl>();
  const std::string ca = dir + "/ca-cert.pem";
  const bool verify = Exists(ca);
  SHALE_RETURN_IF_ERROR(LoadX509(impl.get(), dir + "/server-cert.pem", dir + "/server-key.pem",
                                 verify ? ca : "", dir + "/ca-crl.pem"));
  std::shared_ptr<Credentials> c(new Credentials(CredentialKind::kX509, std::move(impl)));
  c->verify_peer_ = verify;
  c->serves_ = true;
  return std::shared_ptr<const Credentials>(std::move(c));
}

Result<std::shared_ptr<const Credentials>> Credentials::X509ClientDir(const std::string& dir,
                                                                      const std::string& hostname) {
  SHALE_RETURN_IF_ERROR(CheckDir(dir, "X.509"));
  auto impl = std::make_unique<Impl>();
  const std::string cert = dir + "/client-cert.pem";
  const bool has_cert = Exists(cert);
  SHALE_RETURN_IF_ERROR(LoadX509(impl.get(), has_cert ? cert : "", dir + "/client-key.pem",
                                 dir + "/ca-cert.pem", dir + "/ca-crl.pem"));
  impl->hostname = hostname;
  std::shared_ptr<Credentials> c(new Credentials(CredentialKind::kX509, std::move(impl)));
  c->verify_peer_ = true;
  c->clients_ = true;
  return std::shared_ptr<const Credentials>(std::move(c));
}

Result<std::shared_ptr<const Credentials>> Credentials::X509MutualDir(const std::string& dir) {
  SHALE_RETURN_IF_ERROR(CheckDir(dir, "cluster TLS"));
  auto impl = std::make_unique<Impl>();
  SHALE_RETURN_IF_ERROR(
      LoadX509(impl.get(), dir + "/tls.crt", dir + "/tls.key", dir + "/ca.crt", dir + "/ca.crl"));
  std::shared_ptr<Credentials> c(new Credentials(CredentialKind::kX509, std::move(impl)));
  c->verify_peer_ = true;
  c->serves_ = c->clients_ = true;
  return std::shared_ptr<const Credentials>(std::move(c));
}

Result<std::shared_ptr<const Credentials>> Credentials::PskServerFile(const std::string& path) {
  SHALE_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  Result<std::map<std::string, std::string>> keys = ParsePskFile(text);
  if (!keys.ok())
    return Status::InvalidArgument(path + ": " + std::string(keys.status().message()));
  auto impl = std::make_unique<Impl>();
  impl->psk_keys = std::move(keys).value();
  int rc = gnutls_psk_allocate_server_credentials(&impl->psk_server);
  if (rc < 0) return GnutlsError(rc, "allocate PSK credentials");
  gnutls_psk_set_server_credentials_function2(impl->psk_server, LookupPsk);
  // TLS 1.2 DHE-PSK needs group parameters; the RFC 7919 ones are known to GnuTLS.
  gnutls_psk_set_server_known_dh_params(impl->psk_server, GNUTLS_SEC_PARAM_HIGH);
  SHALE_RETURN_IF_ERROR(InitPriority(impl.get(), kPskPriority));
  std::shared_ptr<Credentials> c(new Credentials(CredentialKind::kPsk, std::move(impl)));
  c->serves_ = true;
  return std::shared_ptr<const Credentials>(std::move(c));
}

Result<std::shared_ptr<const Credentials>> Credentials::PskClient(const std::string& username,
                                                                  const std::string& key) {
  if (username.empty() || key.empty()) {
    return Status::InvalidArgument("a PSK client needs a user name and a key");
  }
  auto impl = std::make_unique<Impl>();
  int rc = gnutls_psk_allocate_client_credentials(&impl->psk_client);
  if (rc < 0) return GnutlsError(rc, "allocate PSK credentials");
  gnutls_datum_t datum{reinterpret_cast<unsigned char*>(const_cast<char*>(key.data())),
                       static_cast<unsigned>(key.size())};
  rc = gnutls_psk_set_client_credentials(impl->psk_client, username.c_str(), &datum,
                                         GNUTLS_PSK_KEY_RAW);
  if (rc < 0) return GnutlsError(rc, "set PSK client credentials");
  SHALE_RETURN_IF_ERROR(InitPriority(impl.get(), kPskPriority));
  std::shared_ptr<Credentials> c(new Credentials(CredentialKind::kPsk, std::move(impl)));
  c->clients_ = true;
  return std::shared_ptr<const Credentials>(std::move(c));
}

Result<std::shared_ptr<const Credentials>> Credentials::PskClientFile(const std::string& path,
                                                                      const std::string& username) {
  SHALE_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  Result<std::map<std::string, std::string>> keys = ParsePskFile(text);
  if (!keys.ok())
    return Status::InvalidArgument(path + ": " + std::string(keys.status().message()));
  const auto it = keys->find(username);
  if (it == keys->end()) return Status::NotFound("no key for user '" + username + "' in " + path);
  return PskClient(username, it->second);
}

}  // namespace shale::tls
