#include "daemon/ops/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <vector>

namespace shale::daemon::ops {
namespace {

// A TCP connection to host:port; -1 on failure.
int Connect(const std::string& address) {
  const size_t colon = address.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends until it closes (bounded by 10 s).
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string Request(const std::string& address, const std::string& request) {
  const int fd = Connect(address);
  if (fd < 0) return "connect failed";
  EXPECT_EQ(send(fd, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string out = ReadAll(fd);
  close(fd);
  return out;
}

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void Start(MetricsHttpOptions options = {}) {
    options.listen = "127.0.0.1:0";
    auto s = MetricsHttpServer::Start(options, [this] {
      ++scrapes_;
      return std::string("shale_up 1\n");
    });
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(s).value();
  }
  std::atomic<int> scrapes_{0};
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpServerTest, ServesMetricsAndOnlyMetrics) {
  Start();
  ASSERT_NE(server_->address().find("127.0.0.1:"), std::string::npos);
  ASSERT_NE(server_->address(), "127.0.0.1:0");
  const std::string ok = Request(server_->address(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_TRUE(ok.starts_with("HTTP/1.1 200 OK\r\n")) << ok;
  EXPECT_NE(ok.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            std::string::npos);
  EXPECT_NE(ok.find("Content-Length: 11\r\n"), std::string::npos) << ok;
  EXPECT_TRUE(ok.ends_with("\r\n\r\nshale_up 1\n")) << ok;
  // Prometheus may add query parameters.
  EXPECT_TRUE(
      Request(server_->address(), "GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
  const std::string head = Request(server_->address(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(head.starts_with("HTTP/1.1 200")) << head;
  EXPECT_TRUE(head.ends_with("\r\n\r\n")) << "no body for HEAD: " << head;
  EXPECT_TRUE(Request(server_->address(), "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
  const std::string post = Request(server_->address(), "POST /metrics HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(post.starts_with("HTTP/1.1 405")) << post;
  EXPECT_NE(post.find("Allow: GET, HEAD"), std::string::npos);
  EXPECT_TRUE(Request(server_->address(), "garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
  EXPECT_TRUE(Request(server_->address(), std::string(kMaxRequestBytes + 10, 'a'))
                  .starts_with("HTTP/1.1 431"));
  EXPECT_EQ(scrapes_.load(), 3);  // GET, GET with parameters, HEAD
}

TEST_F(MetricsHttpServerTest, SlowAndExcessConnectionsDoNotHoldItUp) {
  Start({.max_connections = 2, .io_timeout = std::chrono::milliseconds(500)});
  // Two clients that never send anything take every slot...
  const int idle1 = Connect(server_->address());
  const int idle2 = Connect(server_->address());
  ASSERT_GE(idle1, 0);
  ASSERT_GE(idle2, 0);
  // ...so a third is turned away at once, not queued behind them.
  const auto t0 = std::chrono::steady_clock::now();
  std::string busy;
  for (int i = 0; i < 50 && !busy.starts_with("HTTP/1.1 503"); ++i) {
    busy = Request(server_->address(), "GET /metrics HTTP/1.1\r\n\r\n");
  }
  EXPECT_TRUE(busy.starts_with("HTTP/1.1 503")) << busy;
  // The idle ones are dropped after the I/O timeout; then scrapes work again.
  EXPECT_EQ(ReadAll(idle1), "");
  EXPECT_EQ(ReadAll(idle2), "");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8));
  EXPECT_TRUE(
      Request(server_->address(), "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
  close(idle1);
  close(idle2);
}

TEST_F(MetricsHttpServerTest, StopClosesTheListener) {
  Start();
  const std::string address = server_->address();
  server_->Stop();
  EXPECT_EQ(Connect(address), -1);
}

TEST(MetricsListenTest, AddressesAreChecked) {
  EXPECT_TRUE(ValidateMetricsListen("none").ok());
  EXPECT_TRUE(ValidateMetricsListen("127.0.0.1:9580").ok());
  EXPECT_TRUE(ValidateMetricsListen("[::1]:0").ok());
  EXPECT_TRUE(ValidateMetricsListen("localhost:9580").ok());
  EXPECT_FALSE(ValidateMetricsListen("9580").ok());
  EXPECT_FALSE(ValidateMetricsListen("1.2.3.4:99999").ok());
  EXPECT_FALSE(ValidateMetricsListen("host.example:80").ok());
}

}  // namespace
}  // namespace shale::daemon::ops
