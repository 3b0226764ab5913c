// Test-only: certificates and PSK files made with GnuTLS's own tools (certtool, psktool from
// Debian's gnutls-bin), in the layouts shaled, qemu and libnbd read (docs/security.md).
//
//   Pki pki(dir);
//   pki.MakeCa("ca");                                   // dir/ca/ca-cert.pem, ca-key.pem
//   pki.MakeCert("ca", "server", {.cn = "localhost", .dns = {"localhost"}, .ips = {"127.0.0.1"}});
//   pki.ServerDir("ca", "server", dir + "/srv");       // ca-cert.pem server-cert.pem
//   server-key.pem pki.ClientDir("ca", "alice", dir + "/alice");      // ca-cert.pem
//   client-cert.pem client-key.pem pki.MutualDir("ca", "node-a", dir + "/node-a");    // ca.crt
//   tls.crt tls.key MakePskFile(dir + "/keys.psk", "alice");
//
// Header-only; failures come back as a Status with the tool's output. ECDSA P-256 keys: fast to
// make and to handshake with, which matters for tests that open many connections.
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/common/status.h"

namespace shale::tls::testing {

// True when certtool and psktool can be run.
inline bool HaveTools() {
  return std::system("command -v certtool >/dev/null 2>&1 && command -v psktool >/dev/null 2>&1") ==
         0;
}

// Runs `command` through the shell; its output is kept for the error.
inline Status Run(const std::string& command, const std::string& log) {
  const int rc = std::system((command + " >" + log + " 2>&1").c_str());
  if (rc == 0) return Status::Ok();
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  return Status::Internal("'" + command + "' failed: " + ss.str());
}

inline Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return Status::IoError("cannot write " + path);
  return Status::Ok();
}

struct CertSpec {
  std::string cn;
  std::vector<std::string> dns;
  std::vector<std::string> ips;
  std::string organization = "Shale tests";
};

class Pki {
 public:
  explicit Pki(std::string dir) : dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
  }

  const std::string& dir() const { return dir_; }
  std::string CaCert(const std::string& ca) const { return dir_ + "/" + ca + "/ca-cert.pem"; }
  std::string Cert(const std::string& name) const { return dir_ + "/" + name + "/cert.pem"; }
  std::string Key(const std::string& name) const { return dir_ + "/" + name + "/key.pem"; }

  Status MakeCa(const std::string& ca) {
    const std::string d = dir_ + "/" + ca;
    std::filesystem::create_directories(d);
    SHALE_RETURN_IF_ERROR(WriteFile(d + "/ca.info", "cn = \"Shale test CA " + ca +
                                                        "\"\nca\ncert_signing_key\n"
                                                        "expiration_days = 7\n"));
    SHALE_RETURN_IF_ERROR(
        Run("certtool --generate-privkey --key-type=ecdsa --sec-param=high "
            "--outfile " +
                d + "/ca-key.pem",
            d + "/log"));
    return Run("certtool --generate-self-signed --load-privkey " + d + "/ca-key.pem --template " +
                   d + "/ca.info --outfile " + d + "/ca-cert.pem",
               d + "/log");
  }

  // A certificate signed by CA `ca`, good for TLS servers and clients alike.
  Status MakeCert(const std::string& ca, const std::string& name, const CertSpec& spec) {
    const std::string d = dir_ + "/" + name;
    std::filesystem::create_directories(d);
    std::string info = "cn = \"" + spec.cn + "\"\norganization = \"" + spec.organization + "\"\n";
    for (const auto& n : spec.dns) info += "dns_name = \"" + n + "\"\n";
    for (const auto& n : spec.ips) info += "ip_address = \"" + n + "\"\n";
    info += "tls_www_server\ntls_www_client\nsigning_key\nencryption_key\nexpiration_days = 7\n";
    SHALE_RETURN_IF_ERROR(WriteFile(d + "/cert.info", info));
    SHALE_RETURN_IF_ERROR(
        Run("certtool --generate-privkey --key-type=ecdsa --sec-param=high "
            "--outfile " +
                d + "/key.pem",
            d + "/log"));
    const std::string cad = dir_ + "/" + ca;
    return Run("certtool --generate-certificate --load-privkey " + d +
                   "/key.pem --load-ca-certificate " + cad + "/ca-cert.pem --load-ca-privkey " +
                   cad + "/ca-key.pem --template " + d + "/cert.info --outfile " + d + "/cert.pem",
               d + "/log");
  }

  // qemu's tls-creds-x509 layout, endpoint=server (shaled --nbd-tls-x509-dir). With
  // `client_ca` empty, no ca-cert.pem: clients are not asked for certificates.
  Status ServerDir(const std::string& client_ca, const std::string& name, const std::string& out) {
    std::filesystem::create_directories(out);
    if (!client_ca.empty()) SHALE_RETURN_IF_ERROR(Copy(CaCert(client_ca), out + "/ca-cert.pem"));
    SHALE_RETURN_IF_ERROR(Copy(Cert(name), out + "/server-cert.pem"));
    return Copy(Key(name), out + "/server-key.pem");
  }
  // endpoint=client: the CA that signed the server, and (when `name` is set) a client identity.
  Status ClientDir(const std::string& ca, const std::string& name, const std::string& out) {
    std::filesystem::create_directories(out);
    SHALE_RETURN_IF_ERROR(Copy(CaCert(ca), out + "/ca-cert.pem"));
    if (name.empty()) return Status::Ok();
    SHALE_RETURN_IF_ERROR(Copy(Cert(name), out + "/client-cert.pem"));
    return Copy(Key(name), out + "/client-key.pem");
  }
  // Mutual peer TLS (Credentials::X509MutualDir): ca.crt, tls.crt, tls.key.
  Status MutualDir(const std::string& ca, const std::string& name, const std::string& out) {
    std::filesystem::create_directories(out);
    SHALE_RETURN_IF_ERROR(Copy(CaCert(ca), out + "/ca.crt"));
    SHALE_RETURN_IF_ERROR(Copy(Cert(name), out + "/tls.crt"));
    return Copy(Key(name), out + "/tls.key");
  }

 private:
  static Status Copy(const std::string& from, const std::string& to) {
    std::error_code ec;
    std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return Status::IoError("copy " + from + " to " + to + ": " + ec.message());
    chmod(to.c_str(), 0600);
    return Status::Ok();
  }

  std::string dir_;
};

// A psktool file at `path` with a fresh key for `username` (appended when the file exists).
inline Status MakePskFile(const std::string& path, const std::string& username) {
  return Run("psktool -u " + username + " -p " + path, path + ".log");
}

}  // namespace shale::tls::testing
