// Mutual authentication: the handshake succeeds only when both sides hold the secret; wrong
// secrets, replayed, forged, reflected and tampered messages are refused; secret files must be
// private.
#include "replication/auth.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace shale::replication {
namespace {

ClusterSecret Secret(const std::string& s) {
  Result<ClusterSecret> r = ClusterSecret::FromBytes(s);
  EXPECT_TRUE(r.ok()) << r.status();
  return *r;
}

Nonce N(uint8_t v) {
  Nonce n;
  n.fill(v);
  return n;
}

struct Parsed {
  FrameHeader header;
  std::string payload;
};
Parsed Parse(const std::string& frame) {
  auto p = ParseFrame(AsBytes(frame));
  EXPECT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->has_value());
  const ParsedFrame& f = **p;
  return {f.header, std::string(reinterpret_cast<const char*>(f.payload.data()), f.payload.size())};
}

// Runs a handshake; returns the server's and the client's verdicts.
std::pair<Status, Status> Handshake(const ClusterSecret& server_secret,
                                    const ClusterSecret& client_secret,
                                    std::string* auth_out = nullptr) {
  ServerHandshake server(server_secret, "node-b", *RandomNonce(), 256, 1 << 25);
  ClientHandshake client(client_secret, "node-a", *RandomNonce());
  const Parsed hello = Parse(server.HelloFrame());
  std::string auth;
  EXPECT_TRUE(client.OnHello(hello.header, AsBytes(hello.payload), &auth).ok());
  if (auth_out) *auth_out = auth;
  const Parsed a = Parse(auth);
  std::string reply;
  Status s = server.OnAuth(a.header, AsBytes(a.payload), &reply);
  EXPECT_FALSE(reply.empty());
  EXPECT_EQ(server.client_node(), "node-a");
  const Parsed r = Parse(reply);
  Status c = client.OnAuthReply(r.header, AsBytes(r.payload));
  return {s, c};
}

TEST(ReplicaAuth, SameSecretAuthenticatesBothWays) {
  const ClusterSecret secret = Secret("a shared cluster secret");
  auto [s, c] = Handshake(secret, secret);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(c.ok()) << c;
}

TEST(ReplicaAuth, WrongSecretIsRefusedOnBothSides) {
  auto [s, c] = Handshake(Secret("a shared cluster secret"), Secret("another cluster secret"));
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(c.code(), StatusCode::kPermissionDenied);         // the AUTH_FAILED reply
  EXPECT_EQ(s.ToString().find("shared"), std::string::npos);  // no secret in messages
}

TEST(ReplicaAuth, ReplayedAuthFailsAgainstAFreshNonce) {
  const ClusterSecret secret = Secret("a shared cluster secret");
  std::string recorded;
  ASSERT_TRUE(Handshake(secret, secret, &recorded).first.ok());
  ServerHandshake fresh(secret, "node-b", *RandomNonce(), 256, 1 << 25);
  const Parsed a = Parse(recorded);
  std::string reply;
  EXPECT_EQ(fresh.OnAuth(a.header, AsBytes(a.payload), &reply).code(),
            StatusCode::kPermissionDenied);
}

TEST(ReplicaAuth, ForgedTamperedAndReflectedProofsFail) {
  const ClusterSecret secret = Secret("a shared cluster secret");
  ServerHandshake server(secret, "node-b", N(1), 256, 1 << 25);
  ClientHandshake client(secret, "node-a", N(2));
  const Parsed hello = Parse(server.HelloFrame());
  std::string auth;
  ASSERT_TRUE(client.OnHello(hello.header, AsBytes(hello.payload), &auth).ok());
  const Parsed a = Parse(auth);
  std::string reply;
  // A flipped bit in the proof, a different claimed node name (same proof), the server's proof
  // reflected as the client's.
  AuthRequest req;
  ASSERT_TRUE(Decode(AsBytes(a.payload), &req).ok());
  AuthRequest forged = req;
  forged.client_proof[5] ^= 1;
  AuthRequest renamed = req;
  renamed.client_node = "node-x";
  Transcript t{N(1), N(2), "node-a", "node-b"};
  AuthRequest reflected = req;
  reflected.client_proof = ServerProof(secret, t);
  EXPECT_EQ(ClientProof(secret, t), req.client_proof);
  for (const AuthRequest& bad : {forged, renamed, reflected}) {
    ServerHandshake s(secret, "node-b", N(1), 256, 1 << 25);
    std::string body;
    Encode(bad, &body);
    EXPECT_EQ(s.OnAuth(a.header, AsBytes(body), &reply).code(), StatusCode::kPermissionDenied);
  }
  // A forged server proof: the client refuses it.
  ASSERT_TRUE(server.OnAuth(a.header, AsBytes(a.payload), &reply).ok());
  Parsed r = Parse(reply);
  r.payload[0] ^= 1;
  EXPECT_EQ(client.OnAuthReply(r.header, AsBytes(r.payload)).code(), StatusCode::kPermissionDenied);
  // Frames other than the expected ones are protocol errors.
  EXPECT_EQ(server.OnAuth(hello.header, AsBytes(hello.payload), &reply).code(),
            StatusCode::kCorruption);
  EXPECT_TRUE(reply.empty());
  ClientHandshake c2(secret, "node-a", N(3));
  EXPECT_EQ(c2.OnHello(a.header, AsBytes(a.payload), &auth).code(), StatusCode::kCorruption);
}

TEST(ReplicaAuth, NoncesAreRandom) {
  EXPECT_NE(*RandomNonce(), *RandomNonce());
  EXPECT_TRUE(ProofsEqual(ClientProof(Secret("0123456789abcdef"), {}),
                          ClientProof(Secret("0123456789abcdef"), {})));
}

TEST(ReplicaAuth, SecretFiles) {
  EXPECT_FALSE(ClusterSecret::FromBytes("short").ok());
  EXPECT_FALSE(ClusterSecret::FromBytes(std::string(4097, 'x')).ok());
  EXPECT_FALSE(ClusterSecret().valid());
  const std::string dir = ::testing::TempDir() + "/shale-secret-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/secret";
  std::ofstream(path) << "0123456789abcdef-secret\n";
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  Result<ClusterSecret> open = ClusterSecret::ReadFile(path);
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(open.status().ToString().find("0644"), std::string::npos);
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  Result<ClusterSecret> ok = ClusterSecret::ReadFile(path);
  ASSERT_TRUE(ok.ok()) << ok.status();
  // The trailing newline is not part of the secret.
  EXPECT_EQ(ClientProof(*ok, {}), ClientProof(Secret("0123456789abcdef-secret"), {}));
  std::filesystem::create_symlink(path, dir + "/link");
  EXPECT_FALSE(ClusterSecret::ReadFile(dir + "/link").ok());
  EXPECT_TRUE(ClusterSecret::ReadFile(dir + "/missing").status().IsNotFound());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale::replication
