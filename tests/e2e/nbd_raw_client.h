// A minimal NBD client for end-to-end tests that need to hold a connection open, or to see
// exactly what the server answers: fixed newstyle handshake with NBD_OPT_GO, simple replies.
// Written from the protocol document, independent of Shale's own codec (nbd/). Blocking
// sockets with a timeout, so a broken server fails a test instead of hanging it.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "nbd/wire_testing.h"

namespace shale::e2e {

class NbdRawClient {
 public:
  static constexpr uint16_t kCmdRead = 0, kCmdWrite = 1, kCmdDisc = 2, kCmdFlush = 3;

  // "127.0.0.1:10809".
  static std::unique_ptr<NbdRawClient> Tcp(const std::string& address) {
    const int fd = nbd::wire_testing::ConnectTcp(address, 0);
    if (fd < 0) return nullptr;
    return std::unique_ptr<NbdRawClient>(new NbdRawClient(fd));
  }
  static std::unique_ptr<NbdRawClient> Unix(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      close(fd);
      return nullptr;
    }
    return std::unique_ptr<NbdRawClient>(new NbdRawClient(fd));
  }
  ~NbdRawClient() {
    if (fd_ >= 0) close(fd_);
  }
  NbdRawClient(const NbdRawClient&) = delete;
  NbdRawClient& operator=(const NbdRawClient&) = delete;

  // Negotiates `name` with NBD_OPT_GO; returns the export size, or nullopt on any refusal.
  std::optional<uint64_t> Go(const std::string& name) {
    auto greeting = Read(18);
    if (!greeting || Get64(*greeting, 0) != 0x4e42444d41474943ull) return std::nullopt;
    std::string msg = Put32(3);  // FIXED_NEWSTYLE | NO_ZEROES
    const std::string data = Put32(static_cast<uint32_t>(name.size())) + name + Put16(0);
    msg +=
        Put64(0x49484156454F5054ull) + Put32(7) + Put32(static_cast<uint32_t>(data.size())) + data;
    if (!Send(msg)) return std::nullopt;
    std::optional<uint64_t> size;
    while (true) {
      auto header = Read(20);
      if (!header || Get64(*header, 0) != 0x0003e889045565a9ull) return std::nullopt;
      const uint32_t type = Get32(*header, 12);
      auto payload = Read(Get32(*header, 16));
      if (!payload) return std::nullopt;
      if (type == 1) return size;                   // NBD_REP_ACK
      if (type & 0x80000000u) return std::nullopt;  // an error reply
      if (type == 3 && payload->size() == 12 && Get16(*payload, 0) == 0) {
        size = Get64(*payload, 2);  // NBD_INFO_EXPORT
      }
    }
  }

  // One request, waiting for its simple reply; returns the NBD error (0 = success) or -1 if
  // the connection failed. A successful read fills *data.
  int64_t Request(uint16_t type, uint64_t offset, uint32_t length, const std::string& payload = "",
                  std::string* data = nullptr) {
    std::string msg = Put32(0x25609513) + Put16(0) + Put16(type) + Put64(++handle_) +
                      Put64(offset) + Put32(length);
    if (!Send(msg + payload)) return -1;
    if (type == kCmdDisc) return 0;
    auto reply = Read(16);
    if (!reply || Get32(*reply, 0) != 0x67446698 || Get64(*reply, 8) != handle_) return -1;
    const uint32_t error = Get32(*reply, 4);
    if (type == kCmdRead && error == 0) {
      auto d = Read(length);
      if (!d) return -1;
      if (data != nullptr) *data = *d;
    }
    return error;
  }

  // True once the server has closed the connection (within `timeout`).
  bool WaitClosed(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[4096];
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const ssize_t r = recv(fd_, buf, sizeof(buf), MSG_DONTWAIT);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return true;
    }
    return false;
  }

  // The local port of a TCP connection (how the server names this client).
  uint16_t local_port() const {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
  }

 private:
  explicit NbdRawClient(int fd) : fd_(fd) {
    timeval tv{30, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  static std::string Put16(uint16_t v) { return nbd::wire_testing::U16(v); }
  static std::string Put32(uint32_t v) { return nbd::wire_testing::U32(v); }
  static std::string Put64(uint64_t v) { return nbd::wire_testing::U64(v); }
  static uint16_t Get16(const std::string& s, size_t at) {
    return nbd::wire_testing::GetU16s(s, at);
  }
  static uint32_t Get32(const std::string& s, size_t at) {
    return nbd::wire_testing::GetU32s(s, at);
  }
  static uint64_t Get64(const std::string& s, size_t at) {
    return nbd::wire_testing::GetU64s(s, at);
  }
  bool Send(const std::string& bytes) { return nbd::wire_testing::SendAll(fd_, bytes); }
  std::optional<std::string> Read(size_t n) { return nbd::wire_testing::RecvExact(fd_, n); }

  int fd_;
  uint64_t handle_ = 0;
};

}  // namespace shale::e2e
