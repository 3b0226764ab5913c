// Credentials: what one side of a TLS connection proves itself with and what it trusts, loaded
// once from files and shared (read-only, thread-safe) by every Session made from it.
//
// Layouts (docs/security.md states them for users):
//   X509ServerDir  server-cert.pem + server-key.pem (required), ca-cert.pem (optional: when
//                  present, every client must present a certificate that chains to it),
//                  ca-crl.pem (optional) — qemu's tls-creds-x509 directory, endpoint=server
//   X509ClientDir  ca-cert.pem (required: the server's certificate must chain to it and name the
//                  host), client-cert.pem + client-key.pem (optional) — endpoint=client
//   X509MutualDir  ca.crt, tls.crt, tls.key (a Kubernetes TLS Secret with the CA's ca.crt, as
//                  cert-manager writes it): both ends present tls.crt and require the peer's
//                  certificate to chain to ca.crt — for replica traffic between nodes
//   PskServerFile  psktool's format: one "username:hexkey" per line (qemu's keys.psk)
//   PskClient      one user name and its key
//
// Every constructor checks what it loads (files readable, keys match certificates, keys are hex)
// and says which file is wrong. Priorities are GnuTLS's defaults (TLS 1.2 and 1.3, the system
// policy) plus the PSK key exchanges for PSK credentials.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "engine/common/result.h"

namespace shale::tls {

enum class Role { kServer, kClient };

enum class CredentialKind { kX509, kPsk };

// psktool's file: "username:hexkey" per line (blank lines and lines starting with '#' are
// skipped). Returns user name -> raw key bytes; InvalidArgument naming the line otherwise.
Result<std::map<std::string, std::string>> ParsePskFile(const std::string& text);

class Credentials {
 public:
  static Result<std::shared_ptr<const Credentials>> X509ServerDir(const std::string& dir);
  // `hostname`: the name the server's certificate must carry (DNS or IP SAN, or CN); empty
  // skips the name check (the chain is still verified).
  static Result<std::shared_ptr<const Credentials>> X509ClientDir(const std::string& dir,
                                                                  const std::string& hostname);
  static Result<std::shared_ptr<const Credentials>> X509MutualDir(const std::string& dir);
  static Result<std::shared_ptr<const Credentials>> PskServerFile(const std::string& path);
  static Result<std::shared_ptr<const Credentials>> PskClient(const std::string& username,
                                                              const std::string& key);
  // The key of `username` in a psktool file.
  static Result<std::shared_ptr<const Credentials>> PskClientFile(const std::string& path,
                                                                  const std::string& username);

  ~Credentials();
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;

  CredentialKind kind() const { return kind_; }
  // Sessions of this role can be made (mutual credentials serve both).
  bool CanServe(Role role) const;
  // X.509: the peer must present a certificate that chains to the CA.
  bool requires_peer_certificate() const { return verify_peer_; }
  // For logs and `shale status`: "x509", "x509 (client certificates required)", "psk (2 users)".
  std::string Describe() const;

  struct Impl;  // GnuTLS objects (credentials.cc); used by session.cc
  const Impl& impl() const { return *impl_; }

 private:
  Credentials(CredentialKind kind, std::unique_ptr<Impl> impl);

  const CredentialKind kind_;
  std::unique_ptr<Impl> impl_;
  bool verify_peer_ = false;
  bool serves_ = false;   // server sessions allowed
  bool clients_ = false;  // client sessions allowed
};

}  // namespace shale::tls
