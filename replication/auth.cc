#include "replication/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace shale::replication {

struct ClusterSecret::Bytes {
  std::string value;
  ~Bytes() { OPENSSL_cleanse(value.data(), value.size()); }
};

namespace {

constexpr std::string_view kLabel = "shale-replica-v1";

void AppendNamed(std::string* out, std::string_view name) {
  const uint16_t n = static_cast<uint16_t>(name.size());
  out->push_back(static_cast<char>(n & 0xff));
  out->push_back(static_cast<char>(n >> 8));
  out->append(name);
}

}  // namespace

Result<ClusterSecret> ClusterSecret::FromBytes(std::string bytes) {
  auto held = std::make_shared<Bytes>();
  held->value = std::move(bytes);
  if (held->value.size() < kMinSecretLength || held->value.size() > kMaxSecretLength) {
    return Status::InvalidArgument("cluster secret must be 16 to 4096 bytes (it is " +
                                   std::to_string(held->value.size()) + ")");
  }
  return ClusterSecret(std::move(held));
}

Result<ClusterSecret> ClusterSecret::ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Status::FromErrno(errno, "cluster secret file " + path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "cluster secret file " + path);
  }
  if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Status::PermissionDenied("cluster secret file " + path +
                                    " must be a regular file of mode 0600 (it is " + mode + ")");
  }
  auto held = std::make_shared<Bytes>();
  held->value.resize(kMaxSecretLength + 2);
  size_t got = 0;
  while (got < held->value.size()) {
    const ssize_t n = ::read(fd, held->value.data() + got, held->value.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "read cluster secret file " + path);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  held->value.resize(got);
  if (!held->value.empty() && held->value.back() == '\n') held->value.pop_back();
  if (!held->value.empty() && held->value.back() == '\r') held->value.pop_back();
  if (held->value.size() < kMinSecretLength || held->value.size() > kMaxSecretLength) {
    return Status::InvalidArgument("cluster secret file " + path + " must hold 16 to 4096 bytes");
  }
  return ClusterSecret(std::move(held));
}

Result<Nonce> RandomNonce() {
  Nonce n;
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1) {
    return Status::Internal("RAND_bytes failed: the CSPRNG is not available");
  }
  return n;
}

Mac ComputeProof(const ClusterSecret& secret, std::string_view role, const Transcript& t) {
  std::string msg;
  msg.reserve(kLabel.size() + role.size() + 2 * kNonceSize + t.client_node.size() +
              t.server_node.size() + 8);
  msg.append(kLabel);
  msg.push_back('\0');
  msg.append(role);
  msg.push_back('\0');
  msg.append(reinterpret_cast<const char*>(t.server_nonce.data()), t.server_nonce.size());
  msg.append(reinterpret_cast<const char*>(t.client_nonce.data()), t.client_nonce.size());
  AppendNamed(&msg, t.client_node);
  AppendNamed(&msg, t.server_node);
  Mac mac{};
  unsigned len = 0;
  SHALE_CHECK(secret.valid(), "HMAC with no cluster secret");
  const std::string& key = secret.bytes_->value;
  const unsigned char* ok =
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac.data(), &len);
  SHALE_CHECK(ok != nullptr && len == kMacSize, "HMAC-SHA256 failed");
  return mac;
}

Mac ClientProof(const ClusterSecret& secret, const Transcript& t) {
  return ComputeProof(secret, "client", t);
}
Mac ServerProof(const ClusterSecret& secret, const Transcript& t) {
  return ComputeProof(secret, "server", t);
}

bool ProofsEqual(std::span<const uint8_t, kMacSize> a, std::span<const uint8_t, kMacSize> b) {
  return CRYPTO_memcmp(a.data(), b.data(), kMacSize) == 0;
}

// --- server ------------------------------------------------------------------------------------

ServerHandshake::ServerHandshake(ClusterSecret secret, std::string server_node, Nonce nonce,
                                 uint32_t max_requests_in_flight, uint64_t max_bytes_in_flight)
    : secret_(std::move(secret)),
      max_requests_in_flight_(max_requests_in_flight),
      max_bytes_in_flight_(max_bytes_in_flight) {
  transcript_.server_nonce = nonce;
  transcript_.server_node = std::move(server_node);
}

std::string ServerHandshake::HelloFrame() const {
  Hello hello;
  hello.server_nonce = transcript_.server_nonce;
  hello.max_requests_in_flight = max_requests_in_flight_;
  hello.max_bytes_in_flight = max_bytes_in_flight_;
  hello.server_node = transcript_.server_node;
  std::string payload;
  Encode(hello, &payload);
  FrameHeader h;
  h.type = static_cast<uint8_t>(MsgType::kHello);
  return EncodeFrame(h, payload);
}

Status ServerHandshake::OnAuth(const FrameHeader& h, std::span<const uint8_t> payload,
                               std::string* reply) {
  reply->clear();
  if (h.is_reply() || h.msg() != MsgType::kAuth) {
    return Status::Corruption("expected AUTH, got " + std::string(MsgTypeName(h.msg())));
  }
  AuthRequest auth;
  SHALE_RETURN_IF_ERROR(Decode(payload, &auth));
  transcript_.client_nonce = auth.client_nonce;
  transcript_.client_node = auth.client_node;
  FrameHeader r;
  r.type = static_cast<uint8_t>(MsgType::kAuth) | kReplyBit;
  r.request_id = h.request_id;
  std::string body;
  const Mac expected = ClientProof(secret_, transcript_);
  if (!ProofsEqual(expected, auth.client_proof)) {
    r.status = static_cast<uint32_t>(WireStatus::kAuthFailed);
    Encode(ErrorReply{"authentication failed"}, &body);
    *reply = EncodeFrame(r, body);
    return Status::PermissionDenied("peer did not prove the cluster secret");
  }
  Encode(AuthReply{ServerProof(secret_, transcript_)}, &body);
  *reply = EncodeFrame(r, body);
  return Status::Ok();
}

// --- client ------------------------------------------------------------------------------------

ClientHandshake::ClientHandshake(ClusterSecret secret, std::string client_node, Nonce nonce)
    : secret_(std::move(secret)) {
  transcript_.client_nonce = nonce;
  transcript_.client_node = std::move(client_node);
}

Status ClientHandshake::OnHello(const FrameHeader& h, std::span<const uint8_t> payload,
                                std::string* auth_frame) {
  if (h.is_reply() || h.msg() != MsgType::kHello) {
    return Status::Corruption("expected HELLO, got " + std::string(MsgTypeName(h.msg())));
  }
  SHALE_RETURN_IF_ERROR(Decode(payload, &hello_));
  have_hello_ = true;
  transcript_.server_nonce = hello_.server_nonce;
  transcript_.server_node = hello_.server_node;
  AuthRequest auth;
  auth.client_nonce = transcript_.client_nonce;
  auth.client_node = transcript_.client_node;
  auth.client_proof = ClientProof(secret_, transcript_);
  std::string body;
  Encode(auth, &body);
  FrameHeader a;
  a.type = static_cast<uint8_t>(MsgType::kAuth);
  *auth_frame = EncodeFrame(a, body);
  return Status::Ok();
}

Status ClientHandshake::OnAuthReply(const FrameHeader& h, std::span<const uint8_t> payload) {
  if (!have_hello_ || !h.is_reply() || h.msg() != MsgType::kAuth) {
    return Status::Corruption("expected the AUTH reply, got " + std::string(MsgTypeName(h.msg())));
  }
  if (h.wire_status() != WireStatus::kOk) {
    return Status::PermissionDenied("replica server " + hello_.server_node +
                                    " refused our proof of the cluster secret (" +
                                    std::string(WireStatusName(h.wire_status())) + ")");
  }
  AuthReply reply;
  SHALE_RETURN_IF_ERROR(Decode(payload, &reply));
  if (!ProofsEqual(ServerProof(secret_, transcript_), reply.server_proof)) {
    return Status::PermissionDenied("replica server " + hello_.server_node +
                                    " did not prove the cluster secret");
  }
  return Status::Ok();
}

}  // namespace shale::replication
