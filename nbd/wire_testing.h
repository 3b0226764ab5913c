// Test-only helpers for speaking raw NBD bytes over a socket: big-endian encoders/decoders on
// std::string, a TCP connect with timeouts, and blocking send/receive of exact byte counts.
//
// Header-only and self-contained (no link to shale_nbd_protocol), so the NBD unit tests and the
// end-to-end raw client (tests/e2e/nbd_raw_client.h) share one implementation, and it stays an
// encoder independent of the server's own codec.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace shale::nbd::wire_testing {

inline std::string U16(uint16_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v)}; }
inline std::string U32(uint32_t v) {
  return U16(static_cast<uint16_t>(v >> 16)) + U16(static_cast<uint16_t>(v));
}
inline std::string U64(uint64_t v) {
  return U32(static_cast<uint32_t>(v >> 32)) + U32(static_cast<uint32_t>(v));
}

// The big-endian integer at byte `at` of `s` (the caller checked the length).
inline uint16_t GetU16s(const std::string& s, size_t at) {
  return static_cast<uint16_t>((static_cast<uint8_t>(s[at]) << 8) |
                               static_cast<uint8_t>(s[at + 1]));
}
inline uint32_t GetU32s(const std::string& s, size_t at) {
  return (uint32_t{GetU16s(s, at)} << 16) | GetU16s(s, at + 2);
}
inline uint64_t GetU64s(const std::string& s, size_t at) {
  return (uint64_t{GetU32s(s, at)} << 32) | GetU32s(s, at + 4);
}

// Sends every byte (retrying EINTR); false once the peer is gone or the send timed out.
inline bool SendAll(int fd, const std::string& bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// A blocking TCP connection to "IPv4:PORT" with TCP_NODELAY and, unless 0, send and receive
// timeouts of `timeout_s` seconds (so a broken server fails a test instead of hanging it); -1
// when the address is malformed or nothing answers.
inline int ConnectTcp(const std::string& address, int timeout_s = 20) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr) != 1) return -1;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (timeout_s > 0) {
    const timeval tv{timeout_s, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  return fd;
}

// Exactly `n` bytes, or nullopt on EOF, error or receive timeout. EINTR is retried: io_uring
// task work of the engine's threads can interrupt a timed recv in the same process.
inline std::optional<std::string> RecvExact(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = recv(fd, out.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    got += static_cast<size_t>(r);
  }
  return out;
}

}  // namespace shale::nbd::wire_testing
