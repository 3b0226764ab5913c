// MetricsHttpServer: the small HTTP/1.1 server behind `shaled --metrics-listen` (GET /metrics).
//
// One thread of its own (never a reactor) runs a poll() loop over the listening socket, the
// open connections and an eventfd for Stop(). A connection sends one request (at most
// kMaxRequestBytes of request line and headers, within the I/O timeout), gets one answer and is
// closed (`Connection: close`): GET /metrics -> 200 with the handler's body; other paths -> 404;
// other methods -> 405 (Allow: GET). HEAD /metrics answers the headers only. At most
// max_connections are open at once; more are answered 503 and closed. A slow client never holds
// up the others: sockets are non-blocking and every connection has a deadline.
//
// The handler runs on the server's thread, one scrape at a time; it may block (it reads the
// engine and hops to reactors), which only delays the next scrape.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "engine/common/result.h"

namespace shale::daemon::ops {

inline constexpr size_t kMaxRequestBytes = 8192;
// shaled's default --metrics-listen (docs/operations.md).
inline constexpr const char* kDefaultMetricsListen = "127.0.0.1:9580";

struct MetricsHttpOptions {
  std::string listen =
      kDefaultMetricsListen;  // IPv4:PORT, [IPv6]:PORT or localhost:PORT; port 0: any
  unsigned max_connections = 16;
  std::chrono::milliseconds io_timeout{10000};  // per connection, from accept to the last byte
};

// Checks a --metrics-listen value (InvalidArgument saying what is wrong).
Status ValidateMetricsListen(std::string_view address);

class MetricsHttpServer {
 public:
  using Handler = std::function<std::string()>;  // the body of GET /metrics

  // Binds and starts serving. InvalidArgument for a bad address; the bind's error otherwise.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const MetricsHttpOptions& options,
                                                          Handler handler);
  ~MetricsHttpServer();  // Stop()s
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // "127.0.0.1:9580" as bound (the real port when 0 was asked).
  const std::string& address() const { return address_; }
  // Closes every connection and joins the thread. Idempotent.
  void Stop();

  // Answers given so far (for tests and the daemon's own metrics).
  uint64_t requests_served() const { return served_.load(std::memory_order_relaxed); }

 private:
  struct Connection;
  MetricsHttpServer(MetricsHttpOptions options, Handler handler);
  void Loop();
  void Accept();
  // Reads what is there; when the request is complete, prepares the answer.
  bool OnReadable(Connection& c);
  bool OnWritable(Connection& c);
  std::string Answer(std::string_view request);

  const MetricsHttpOptions options_;
  const Handler handler_;
  int listen_fd_ = -1;
  int stop_fd_ = -1;
  std::string address_;
  std::thread thread_;
  std::atomic<uint64_t> served_{0};
  std::unique_ptr<std::vector<std::unique_ptr<Connection>>> connections_;
};

}  // namespace shale::daemon::ops
