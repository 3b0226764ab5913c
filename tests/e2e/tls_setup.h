// TLS material for the end-to-end tests, made in a test's root directory with GnuTLS's tools
// (certtool, psktool: tls/testing.h) in the layouts shaled, qemu and libnbd read:
//
//   <root>/tls/server/        ca-cert.pem server-cert.pem server-key.pem   (--nbd-tls-x509-dir)
//   <root>/tls/alice/         ca-cert.pem client-cert.pem client-key.pem   (CN=alice)
//   <root>/tls/bob/           the same for CN=bob (SAN dns:bob.example)
//   <root>/tls/anonymous/     ca-cert.pem only: trusts the server, has no certificate
//   <root>/tls/mallory/       trusts the server; its certificate (CN=alice) is from another CA
//   <root>/tls/psk/keys.psk   users alice and bob                         (--nbd-tls-psk-file)
//   <root>/tls/wrong/keys.psk user alice with another key
//
// qemu's tls-creds-psk reads <dir>/keys.psk, libnbd's nbds://USER@.../?tls-psk-file=FILE the file.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tls/testing.h"

namespace shale::e2e {

struct TlsMaterial {
  std::string dir;  // <root>/tls

  std::string server_dir() const { return dir + "/server"; }
  std::string client_dir(const std::string& who) const { return dir + "/" + who; }
  std::string psk_dir() const { return dir + "/psk"; }
  std::string psk_file() const { return dir + "/psk/keys.psk"; }
  std::string wrong_psk_dir() const { return dir + "/wrong"; }
  std::string wrong_psk_file() const { return dir + "/wrong/keys.psk"; }
};

// Makes everything above; false (with a test failure) if a tool failed.
inline bool MakeTlsMaterial(const std::string& root, TlsMaterial* out) {
  namespace t = shale::tls::testing;
  out->dir = root + "/tls";
  t::Pki pki(out->dir + "/pki");
  const auto ok = [](const Status& st) {
    EXPECT_TRUE(st.ok()) << st;
    return st.ok();
  };
  if (!ok(pki.MakeCa("ca")) || !ok(pki.MakeCa("other-ca"))) return false;
  if (!ok(pki.MakeCert("ca", "server",
                       {.cn = "localhost", .dns = {"localhost"}, .ips = {"127.0.0.1"}})) ||
      !ok(pki.MakeCert("ca", "alice", {.cn = "alice"})) ||
      !ok(pki.MakeCert("ca", "bob", {.cn = "bob", .dns = {"bob.example"}})) ||
      !ok(pki.MakeCert("other-ca", "mallory", {.cn = "alice"}))) {
    return false;
  }
  if (!ok(pki.ServerDir("ca", "server", out->server_dir())) ||
      !ok(pki.ClientDir("ca", "alice", out->client_dir("alice"))) ||
      !ok(pki.ClientDir("ca", "bob", out->client_dir("bob"))) ||
      !ok(pki.ClientDir("ca", "", out->client_dir("anonymous"))) ||
      !ok(pki.ClientDir("ca", "mallory", out->client_dir("mallory")))) {
    return false;
  }
  std::filesystem::create_directories(out->psk_dir());
  std::filesystem::create_directories(out->wrong_psk_dir());
  return ok(t::MakePskFile(out->psk_file(), "alice")) &&
         ok(t::MakePskFile(out->psk_file(), "bob")) &&
         ok(t::MakePskFile(out->wrong_psk_file(), "alice"));
}

// qemu-io's arguments for an NBD export over TLS: `creds` is a --object (tls-creds-psk or
// tls-creds-x509, id=tls0, endpoint=client).
inline std::vector<std::string> QemuIoTls(const std::string& creds, const std::string& address,
                                          const std::string& export_name) {
  const size_t colon = address.rfind(':');
  return {"--object", creds, "--image-opts",
          "driver=nbd,server.type=inet,server.host=" + address.substr(0, colon) + ",server.port=" +
              address.substr(colon + 1) + ",export=" + export_name + ",tls-creds=tls0"};
}

}  // namespace shale::e2e
