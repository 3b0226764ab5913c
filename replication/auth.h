// Mutual authentication of replica connections: a challenge-response on the cluster secret
// (HMAC-SHA256, OpenSSL libcrypto) before any data moves. docs/format/replica-protocol.md.
//
//   server -> client  HELLO(server nonce, limits, server node)
//   client -> server  AUTH(client nonce, client node, client proof)
//   server -> client  AUTH reply(server proof)            or AUTH_FAILED, then close
//
//   proof(role) = HMAC-SHA256(secret, "shale-replica-v1" 0x00 role 0x00 server_nonce
//                             client_nonce u16 len client_node u16 len server_node)
//
// with role "client" or "server", so neither proof can be reflected as the other. Nonces are 32
// bytes from the CSPRNG (RAND_bytes): a recorded AUTH never verifies against a fresh HELLO (no
// replay), and the server's proof covers the client's nonce, so the client knows the server is
// live too. Proofs are compared in constant time (CRYPTO_memcmp).
//
// The secret is never logged: ClusterSecret has no accessor for its bytes outside this file,
// and it is wiped from memory when destroyed.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "engine/common/result.h"
#include "replication/protocol.h"

namespace shale::replication {

inline constexpr size_t kMinSecretLength = 16;
inline constexpr size_t kMaxSecretLength = 4096;

using Nonce = std::array<uint8_t, kNonceSize>;
using Mac = std::array<uint8_t, kMacSize>;

// What both proofs cover.
struct Transcript {
  Nonce server_nonce{};
  Nonce client_nonce{};
  std::string client_node;
  std::string server_node;
};

// The shared cluster secret. Cheap to copy (the bytes are shared, immutable). A
// default-constructed one holds no secret (valid() is false) and authenticates nobody.
class ClusterSecret {
 public:
  ClusterSecret() = default;
  bool valid() const { return bytes_ != nullptr; }
  // 16..4096 bytes of anything.
  static Result<ClusterSecret> FromBytes(std::string bytes);
  // Reads --cluster-secret-file: a regular file that only its owner may read or write (mode
  // 0600 or 0400; anything else is refused, as is a symlink), one trailing newline stripped.
  static Result<ClusterSecret> ReadFile(const std::string& path);

 private:
  struct Bytes;
  explicit ClusterSecret(std::shared_ptr<const Bytes> bytes) : bytes_(std::move(bytes)) {}
  friend Mac ComputeProof(const ClusterSecret& secret, std::string_view role, const Transcript& t);
  std::shared_ptr<const Bytes> bytes_;
};

Result<Nonce> RandomNonce();  // RAND_bytes; an error if the CSPRNG fails
Mac ComputeProof(const ClusterSecret& secret, std::string_view role, const Transcript& t);
Mac ClientProof(const ClusterSecret& secret, const Transcript& t);
Mac ServerProof(const ClusterSecret& secret, const Transcript& t);
bool ProofsEqual(std::span<const uint8_t, kMacSize> a, std::span<const uint8_t, kMacSize> b);

// The server's side of the handshake over frames (pure: the caller moves the bytes).
class ServerHandshake {
 public:
  ServerHandshake(ClusterSecret secret, std::string server_node, Nonce nonce,
                  uint32_t max_requests_in_flight, uint64_t max_bytes_in_flight);
  // The first frame the server sends.
  std::string HelloFrame() const;
  // The client's first frame (header already checked by DecodeHeader, checksum verified).
  // OK: the client proved the secret; *reply is the AUTH reply carrying the server's proof.
  // Error (PermissionDenied for a wrong proof, Corruption for anything but a valid AUTH):
  // *reply is an AUTH_FAILED reply to send before closing, or empty.
  Status OnAuth(const FrameHeader& h, std::span<const uint8_t> payload, std::string* reply);
  // The node the client claimed (valid after OnAuth decoded the AUTH, even when it failed).
  const std::string& client_node() const { return transcript_.client_node; }

 private:
  ClusterSecret secret_;
  Transcript transcript_;
  uint32_t max_requests_in_flight_;
  uint64_t max_bytes_in_flight_;
};

// The client's side.
class ClientHandshake {
 public:
  ClientHandshake(ClusterSecret secret, std::string client_node, Nonce nonce);
  // The server's HELLO: *auth_frame is the AUTH to send.
  Status OnHello(const FrameHeader& h, std::span<const uint8_t> payload, std::string* auth_frame);
  // The server's AUTH reply: OK when the server proved the secret; PermissionDenied when it
  // refused us (AUTH_FAILED) or its proof is wrong; Corruption for any other frame.
  Status OnAuthReply(const FrameHeader& h, std::span<const uint8_t> payload);
  const Hello& hello() const { return hello_; }

 private:
  ClusterSecret secret_;
  Transcript transcript_;
  Hello hello_;
  bool have_hello_ = false;
};

}  // namespace shale::replication
