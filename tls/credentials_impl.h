// The GnuTLS objects behind a Credentials (private to tls/: credentials.cc and session.cc).
#pragma once

#include <gnutls/gnutls.h>

#include <cstring>
#include <map>
#include <string>

#include "tls/credentials.h"

namespace shale::tls {

struct Credentials::Impl {
  Impl() = default;
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  gnutls_certificate_credentials_t x509 = nullptr;
  gnutls_psk_server_credentials_t psk_server = nullptr;
  gnutls_psk_client_credentials_t psk_client = nullptr;
  gnutls_priority_t priority = nullptr;
  std::map<std::string, std::string> psk_keys;  // server: user name -> raw key
  std::string hostname;                         // client: the name the server must carry
};

// Checks the peer's certificate against the CA of the session's Credentials (and the host name
// a client expects); set on X.509 credentials that have a CA.
int VerifyPeerCertificate(gnutls_session_t session);

}  // namespace shale::tls
