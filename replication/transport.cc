#include "replication/transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>

namespace shale::replication {

Status TimedOut(std::string_view what) { return Status::FromErrno(ETIMEDOUT, what); }
bool IsTimedOut(const Status& s) { return !s.ok() && s.sys_errno() == ETIMEDOUT; }

Status SplitHostPort(std::string_view address, std::string* host, std::string* port) {
  const auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("address '" + std::string(address) + "': " + std::string(why) +
                                   " (want HOST:PORT or [IPv6]:PORT)");
  };
  size_t colon;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string_view::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return bad("unterminated [IPv6] host");
    }
    *host = std::string(address.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string_view::npos) return bad("no port");
    *host = std::string(address.substr(0, colon));
    if (host->find(':') != std::string::npos) return bad("IPv6 hosts need brackets");
  }
  *port = std::string(address.substr(colon + 1));
  if (host->empty()) return bad("empty host");
  if (port->empty() || port->size() > 5 ||
      !std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(*port) > 65535) {
    return bad("bad port");
  }
  return Status::Ok();
}

namespace {

// Milliseconds poll() may wait until `deadline` (-1: forever), rounded up.
int PollMillis(Deadline deadline) {
  if (deadline == kNoDeadline) return -1;
  const auto left = deadline - SteadyClock::now();
  if (left <= SteadyClock::duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

// Waits for `events` on fd; false at the deadline.
Result<bool> WaitFd(int fd, short events, Deadline deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, PollMillis(deadline));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return Status::FromErrno(errno, "poll");
  }
}

std::string FormatAddress(const sockaddr* sa) {
  char ip[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
  inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
  return std::string(ip) + ":" + std::to_string(ntohs(a->sin_port));
}

void Tune(int fd, const TcpOptions& o) {
  const int one = 1;
  const int idle = static_cast<int>(o.keepalive_idle.count());
  const int interval = static_cast<int>(o.keepalive_interval.count());
  const int count = o.keepalive_count;
  // Best effort: a socket option the kernel refuses only costs detection speed.
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

}  // namespace

Result<size_t> Connection::TrySend(std::span<const ConstBuffer>) {
  return Status::NotSupported("this connection cannot send without waiting");
}

std::vector<ConstBuffer> BytesAfter(std::span<const ConstBuffer> buffers, size_t sent) {
  std::vector<ConstBuffer> out;
  for (const ConstBuffer& b : buffers) {
    if (sent >= b.size()) {
      sent -= b.size();
      continue;
    }
    out.push_back(b.subspan(sent));
    sent = 0;
  }
  return out;
}

namespace {

class TcpConnection final : public Connection {
 public:
  TcpConnection(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  ~TcpConnection() override { ::close(fd_); }

  bool can_try_send() const override { return true; }
  int native_fd() const override { return fd_; }
  Result<size_t> TrySend(std::span<const ConstBuffer> buffers) override {
    std::array<iovec, IOV_MAX> iov;
    size_t sent = 0;
    size_t next = 0;  // the first buffer not yet in a sendmsg
    while (next < buffers.size()) {
      size_t count = 0;
      size_t want = 0;
      for (; next < buffers.size() && count < iov.size(); ++next) {
        if (buffers[next].empty()) continue;
        iov[count++] = {const_cast<uint8_t*>(buffers[next].data()), buffers[next].size()};
        want += buffers[next].size();
      }
      if (count == 0) break;
      msghdr msg{};
      msg.msg_iov = iov.data();
      msg.msg_iovlen = count;
      ssize_t n = -1;
      do {
        n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      } while (n < 0 && errno == EINTR);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return sent;
        return Status::FromErrno(errno, "send to " + peer_);
      }
      sent += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < want) return sent;
    }
    return sent;
  }

  Status Send(std::span<const ConstBuffer> buffers, Deadline deadline) override {
    std::vector<iovec> iov;
    iov.reserve(buffers.size());
    for (const ConstBuffer& b : buffers) {
      if (!b.empty()) iov.push_back({const_cast<uint8_t*>(b.data()), b.size()});
    }
    size_t at = 0;
    while (at < iov.size()) {
      msghdr msg{};
      msg.msg_iov = &iov[at];
      msg.msg_iovlen = std::min<size_t>(iov.size() - at, IOV_MAX);
      const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return Status::FromErrno(errno, "send to " + peer_);
        Result<bool> ready = WaitFd(fd_, POLLOUT, deadline);
        if (!ready.ok()) return ready.status();
        if (!*ready) return TimedOut("send to " + peer_);
        continue;
      }
      size_t left = static_cast<size_t>(n);
      while (at < iov.size() && left >= iov[at].iov_len) left -= iov[at++].iov_len;
      if (left > 0) {
        iov[at].iov_base = static_cast<uint8_t*>(iov[at].iov_base) + left;
        iov[at].iov_len -= left;
      }
    }
    return Status::Ok();
  }

  Result<size_t> Recv(std::span<uint8_t> buf, Deadline deadline) override {
    while (true) {
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno != EAGAIN) return Status::FromErrno(errno, "receive from " + peer_);
      Result<bool> ready = WaitFd(fd_, POLLIN, deadline);
      if (!ready.ok()) return ready.status();
      if (!*ready) return TimedOut("receive from " + peer_);
    }
  }

  void Shutdown() override { ::shutdown(fd_, SHUT_RDWR); }
  const std::string& peer() const override { return peer_; }

 private:
  const int fd_;
  const std::string peer_;
};

class TcpListener final : public Listener {
 public:
  TcpListener(int fd, int wake_fd, std::string address, TcpOptions options)
      : fd_(fd), wake_fd_(wake_fd), address_(std::move(address)), options_(options) {}
  ~TcpListener() override {
    ::close(fd_);
    ::close(wake_fd_);
  }

  Result<std::unique_ptr<Connection>> Accept(Deadline deadline) override {
    while (true) {
      if (shut_.load()) return Status::Aborted("listener on " + address_ + " shut down");
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      const int fd =
          ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        Tune(fd, options_);
        return std::unique_ptr<Connection>(
            new TcpConnection(fd, FormatAddress(reinterpret_cast<sockaddr*>(&ss))));
      }
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: back off rather than spin; the caller logs.
        return Status::FromErrno(errno, "accept on " + address_);
      }
      if (errno != EAGAIN) return Status::FromErrno(errno, "accept on " + address_);
      pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      const int n = ::poll(p, 2, PollMillis(deadline));
      if (n < 0 && errno != EINTR) return Status::FromErrno(errno, "poll");
      if (n == 0) return TimedOut("accept on " + address_);
    }
  }

  void Shutdown() override {
    shut_.store(true);
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }
  const std::string& address() const override { return address_; }

 private:
  const int fd_;
  const int wake_fd_;
  const std::string address_;
  const TcpOptions options_;
  std::atomic<bool> shut_{false};
};

Result<addrinfo*> Resolve(const std::string& address, bool passive) {
  std::string host, port;
  SHALE_RETURN_IF_ERROR(SplitHostPort(address, &host, &port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status::NotFound("resolve '" + address + "': " + std::string(gai_strerror(rc)));
  }
  return res;
}

// One non-blocking connect attempt to `ai`, waited for until the deadline.
Result<int> ConnectOne(const addrinfo* ai, Deadline deadline, const std::string& address) {
  const int fd =
      ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
    const int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "connect to " + address);
  }
  Result<bool> ready = WaitFd(fd, POLLOUT, deadline);
  if (!ready.ok() || !*ready) {
    ::close(fd);
    return ready.ok() ? TimedOut("connect to " + address) : ready.status();
  }
  int err = 0;
  socklen_t len = sizeof(err);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) {
    ::close(fd);
    return Status::FromErrno(err, "connect to " + address);
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<Listener>> TcpTransport::Listen(const std::string& address) {
  SHALE_ASSIGN_OR_RETURN(addrinfo * res, Resolve(address, true));
  Status last = Status::NotFound("no address to listen on for " + address);
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    const int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = Status::FromErrno(errno, "socket");
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      last = Status::FromErrno(errno, "listen on " + address);
      ::close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
      last = Status::FromErrno(errno, "eventfd");
      ::close(fd);
      continue;
    }
    ::freeaddrinfo(res);
    return std::unique_ptr<Listener>(
        new TcpListener(fd, wake, FormatAddress(reinterpret_cast<sockaddr*>(&ss)), options_));
  }
  ::freeaddrinfo(res);
  return last;
}

Result<std::unique_ptr<Connection>> TcpTransport::Connect(const std::string& address,
                                                          Deadline deadline) {
  SHALE_ASSIGN_OR_RETURN(addrinfo * res, Resolve(address, false));
  Status last = Status::NotFound("no address for " + address);
  for (const addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    Result<int> fd = ConnectOne(ai, deadline, address);
    if (!fd.ok()) {
      last = fd.TakeStatus();
      if (IsTimedOut(last)) break;
      continue;
    }
    Tune(*fd, options_);
    std::string peer = FormatAddress(ai->ai_addr);
    ::freeaddrinfo(res);
    return std::unique_ptr<Connection>(new TcpConnection(*fd, std::move(peer)));
  }
  ::freeaddrinfo(res);
  return last;
}

// --- FrameReader ---------------------------------------------------------------------------------

// Frames that are never received direct must fit the buffer whole.
static_assert(kFrameHeaderSize + kMaxSnapshotListBytes <= FrameReader::kBufferBytes);

FrameReader::FrameReader(Connection* connection) : connection_(connection), buf_(kBufferBytes) {}

Status FrameReader::Fill(size_t need, Deadline deadline) {
  SHALE_CHECK(need <= buf_.size(), "frame of ", need, " bytes does not fit the reader's buffer");
  if (begin_ + need > buf_.size()) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  while (end_ - begin_ < need) {
    Result<size_t> n = connection_->Recv(std::span(buf_).subspan(end_), deadline);
    if (!n.ok()) return n.TakeStatus();
    if (*n == 0) {
      if (end_ == begin_ && !in_direct_) {
        return Status::Unavailable("connection closed by " + connection_->peer());
      }
      return Status::Corruption("replica protocol: truncated frame (the stream ended inside it)");
    }
    end_ += *n;
  }
  return Status::Ok();
}

Result<FrameReader::Frame> FrameReader::Next(Deadline deadline, const DataSink& sink) {
  if (in_direct_) return FinishDirect(deadline);
  SHALE_RETURN_IF_ERROR(Fill(kFrameHeaderSize, deadline));
  FrameHeader h;
  const std::span<const uint8_t, kFrameHeaderSize> hb(buf_.data() + begin_, kFrameHeaderSize);
  SHALE_RETURN_IF_ERROR(DecodeHeader(hb, &h));
  const std::optional<size_t> data_at = DataOffset(h);
  if (data_at && h.payload_length - *data_at >= kDirectDataBytes) {
    // Large data: the prefix through the buffer, the data straight into the sink's buffer.
    SHALE_RETURN_IF_ERROR(Fill(kFrameHeaderSize + *data_at, deadline));
    std::memcpy(header_bytes_.data(), buf_.data() + begin_, kFrameHeaderSize);
    prefix_.assign(buf_.data() + begin_ + kFrameHeaderSize,
                   buf_.data() + begin_ + kFrameHeaderSize + *data_at);
    begin_ += kFrameHeaderSize + *data_at;
    header_ = h;
    data_length_ = h.payload_length - *data_at;
    data_got_ = 0;
    dst_ = sink ? sink(h, prefix_) : nullptr;
    if (dst_ == nullptr) {
      discard_.resize(data_length_);
    }
    in_direct_ = true;
    return FinishDirect(deadline);
  }
  SHALE_RETURN_IF_ERROR(Fill(kFrameHeaderSize + h.payload_length, deadline));
  Frame f;
  f.header = h;
  f.payload = std::span<const uint8_t>(buf_.data() + begin_ + kFrameHeaderSize, h.payload_length);
  if (FrameChecksum(
          std::span<const uint8_t, kFrameHeaderSize>(buf_.data() + begin_, kFrameHeaderSize),
          {f.payload}) != h.checksum) {
    return Status::Corruption("replica protocol: checksum mismatch in a " +
                              std::string(MsgTypeName(h.msg())) + " frame");
  }
  begin_ += kFrameHeaderSize + h.payload_length;
  return f;
}

Result<FrameReader::Frame> FrameReader::FinishDirect(Deadline deadline) {
  uint8_t* dst = dst_ != nullptr ? dst_ : discard_.data();
  // What is already buffered, then straight from the connection.
  const size_t have = std::min(end_ - begin_, data_length_ - data_got_);
  std::memcpy(dst + data_got_, buf_.data() + begin_, have);
  begin_ += have;
  data_got_ += have;
  while (data_got_ < data_length_) {
    Result<size_t> n =
        connection_->Recv(std::span(dst + data_got_, data_length_ - data_got_), deadline);
    if (!n.ok()) {
      if (!IsTimedOut(n.status())) in_direct_ = false;
      return n.TakeStatus();
    }
    if (*n == 0) {
      in_direct_ = false;
      return Status::Corruption("replica protocol: truncated frame (the stream ended inside it)");
    }
    data_got_ += *n;
  }
  in_direct_ = false;
  SHALE_ASSIGN_OR_RETURN(
      Frame f, DirectFrame(header_bytes_, header_, prefix_, std::span<uint8_t>(dst, data_length_)));
  if (dst_ == nullptr) f.data = {};  // discarded
  return f;
}

Result<FrameReader::Frame> DirectFrame(const HeaderBytes& header_bytes, const FrameHeader& header,
                                       std::span<const uint8_t> prefix, std::span<uint8_t> data) {
  if (FrameChecksum(header_bytes, {prefix, data}) != header.checksum) {
    return Status::Corruption("replica protocol: checksum mismatch in a " +
                              std::string(MsgTypeName(header.msg())) + " frame");
  }
  FrameReader::Frame f;
  f.header = header;
  f.payload = prefix;
  f.data = data;
  f.direct = true;
  return f;
}

// --- FaultTransport ------------------------------------------------------------------------------

namespace {

constexpr auto kFaultPollSlice = std::chrono::milliseconds(5);  // how soon a new rule bites
constexpr auto kReorderHold = std::chrono::milliseconds(20);
constexpr size_t kFaultQueueBytes = 64 * kMiB;  // outgoing frames queued per connection

int DirIndex(Direction d) { return d == Direction::kToServer ? 0 : 1; }

// cv.wait_until with kNoDeadline (time_point::max overflows the conversion to a timespec).
template <typename Pred>
bool WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, Deadline deadline,
               Pred pred) {
  if (deadline == kNoDeadline) {
    cv.wait(lock, pred);
    return true;
  }
  return cv.wait_until(lock, deadline, pred);
}

// Splits complete frames off the front of `raw`. Bytes that do not start with a valid header
// are handed over whole and from then on the stream passes through unframed (`opaque`).
void TakeFrames(std::string* raw, bool* opaque, std::vector<std::string>* frames) {
  while (!raw->empty()) {
    if (*opaque) {
      frames->push_back(std::move(*raw));
      raw->clear();
      return;
    }
    if (raw->size() < kFrameHeaderSize) return;
    FrameHeader h;
    if (!DecodeHeader(std::span<const uint8_t, kFrameHeaderSize>(
                          reinterpret_cast<const uint8_t*>(raw->data()), kFrameHeaderSize),
                      &h)
             .ok()) {
      *opaque = true;
      continue;
    }
    const size_t size = kFrameHeaderSize + h.payload_length;
    if (raw->size() < size) return;
    frames->push_back(raw->substr(0, size));
    raw->erase(0, size);
  }
}

}  // namespace

class FaultTransport::Core {
 public:
  Rules Get(const std::string& address) {
    std::lock_guard lock(mu);
    auto it = rules.find(address);
    return it == rules.end() ? Rules{} : it->second;
  }
  template <typename Fn>
  void Change(const std::string& address, Fn fn) {
    std::lock_guard lock(mu);
    fn(rules[address]);
    changed.notify_all();
  }
  // What happens to one frame going `d` on the link to `address`: false = it vanishes;
  // otherwise *delay and *hold say when it is delivered.
  bool Admit(const std::string& address, Direction d, std::chrono::nanoseconds* delay,
             bool* reorder) {
    std::lock_guard lock(mu);
    Rules& r = rules[address];
    const int i = DirIndex(d);
    if ((r.blackhole & static_cast<uint8_t>(d)) != 0 || r.drop[i] > 0) {
      if (r.drop[i] > 0) --r.drop[i];
      ++lost;
      return false;
    }
    *delay = r.delay[i];
    *reorder = r.reorder[i];
    return true;
  }

  std::mutex mu;
  std::condition_variable changed;
  std::map<std::string, Rules> rules;
  uint64_t lost = 0;
};

namespace {

// The dialing end of a link with faults. Outgoing frames are queued with their delivery time
// and sent by the pump thread; incoming ones are read off the inner connection, held until
// their time, and handed to Recv.
class FaultConnection final : public Connection {
 public:
  FaultConnection(std::shared_ptr<FaultTransport::Core> core, std::string address,
                  std::unique_ptr<Connection> inner)
      : core_(std::move(core)), address_(std::move(address)), inner_(std::move(inner)) {
    pump_ = std::thread([this] { Pump(); });
  }
  ~FaultConnection() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    pump_.join();
  }

  Status Send(std::span<const ConstBuffer> buffers, Deadline deadline) override {
    if (shut_.load()) return Status::FromErrno(EPIPE, "send to " + address_ + " (shut down)");
    if ((core_->Get(address_).cut & static_cast<uint8_t>(Direction::kToServer)) != 0) {
      CutNow(Direction::kToServer);
      return Status::FromErrno(ECONNRESET, "send to " + address_ + " (link cut)");
    }
    for (const ConstBuffer& b : buffers)
      out_raw_.append(reinterpret_cast<const char*>(b.data()), b.size());
    std::vector<std::string> frames;
    TakeFrames(&out_raw_, &out_opaque_, &frames);
    std::unique_lock lock(mu_);
    for (std::string& f : frames) Schedule(Direction::kToServer, std::move(f), &out_);
    cv_.notify_all();
    if (!WaitUntil(cv_, lock, deadline,
                   [&] { return out_bytes_ <= kFaultQueueBytes || !pump_error_.ok(); })) {
      return TimedOut("send to " + address_);
    }
    return pump_error_;
  }

  Result<size_t> Recv(std::span<uint8_t> buf, Deadline deadline) override {
    std::vector<uint8_t>& tmp = in_tmp_;
    while (true) {
      if (shut_.load()) return size_t{0};
      if ((core_->Get(address_).cut & static_cast<uint8_t>(Direction::kToClient)) != 0) {
        CutNow(Direction::kToClient);
        return size_t{0};
      }
      const auto now = SteadyClock::now();
      Deadline next = kNoDeadline;
      {
        std::lock_guard lock(mu_);
        if (!in_.empty() && in_.begin()->first.first <= now) {
          auto it = in_.begin();
          std::string& bytes = it->second;
          const size_t n = std::min(buf.size(), bytes.size() - in_offset_);
          std::memcpy(buf.data(), bytes.data() + in_offset_, n);
          in_offset_ += n;
          if (in_offset_ == bytes.size()) {
            in_.erase(it);
            in_offset_ = 0;
          }
          return n;
        }
        if (!in_.empty()) next = in_.begin()->first.first;
        if (in_.empty() && inner_eof_) return size_t{0};
      }
      if (now >= deadline) return TimedOut("receive from " + address_);
      const Deadline wait = std::min({deadline, next, now + kFaultPollSlice});
      if (inner_eof_) {
        std::this_thread::sleep_until(wait);
        continue;
      }
      Result<size_t> n = inner_->Recv(tmp, wait);
      if (!n.ok()) {
        if (IsTimedOut(n.status())) continue;
        return n.TakeStatus();
      }
      if (*n == 0) {
        inner_eof_ = true;
        continue;
      }
      in_raw_.append(reinterpret_cast<const char*>(tmp.data()), *n);
      std::vector<std::string> frames;
      TakeFrames(&in_raw_, &in_opaque_, &frames);
      std::lock_guard lock(mu_);
      for (std::string& f : frames) Schedule(Direction::kToClient, std::move(f), &in_);
    }
  }

  void Shutdown() override {
    shut_.store(true);
    inner_->Shutdown();
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }
  const std::string& peer() const override { return inner_->peer(); }

 private:
  using Queue = std::map<std::pair<Deadline, uint64_t>, std::string>;

  // Called with mu_ held.
  void Schedule(Direction d, std::string frame, Queue* q) {
    std::chrono::nanoseconds delay{};
    bool reorder = false;
    if (!core_->Admit(address_, d, &delay, &reorder)) return;
    auto at = SteadyClock::now() + delay;
    // Reorder: every other frame is held back, so the next one overtakes it.
    bool& hold = reorder_next_[DirIndex(d)];
    if (reorder && (hold = !hold)) at += kReorderHold;
    if (q == &out_) out_bytes_ += frame.size();
    q->emplace(std::make_pair(at, seq_++), std::move(frame));
  }

  void CutNow(Direction d) {
    if (d == Direction::kToServer &&
        (core_->Get(address_).cut & static_cast<uint8_t>(Direction::kToClient)) == 0) {
      return;  // one-way: the inner connection keeps its other direction
    }
    inner_->Shutdown();
  }

  void Pump() {
    std::unique_lock lock(mu_);
    while (!stop_) {
      if (out_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto at = out_.begin()->first.first;
      if (at > SteadyClock::now()) {
        cv_.wait_until(lock, at);
        continue;
      }
      std::string frame = std::move(out_.begin()->second);
      out_.erase(out_.begin());
      lock.unlock();
      const ConstBuffer b(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
      Status st = pump_error_.ok()
                      ? inner_->Send(std::span(&b, 1), DeadlineIn(std::chrono::seconds(30)))
                      : Status::Ok();
      lock.lock();
      out_bytes_ -= frame.size();
      if (!st.ok() && pump_error_.ok()) pump_error_ = st;
      cv_.notify_all();
    }
  }

  const std::shared_ptr<FaultTransport::Core> core_;
  const std::string address_;
  const std::unique_ptr<Connection> inner_;
  // Sender's side (the sending thread only).
  std::string out_raw_;
  bool out_opaque_ = false;
  // Receiver's side (the receiving thread only).
  std::string in_raw_;
  std::vector<uint8_t> in_tmp_ = std::vector<uint8_t>(64 * kKiB);
  bool in_opaque_ = false;
  bool inner_eof_ = false;
  size_t in_offset_ = 0;  // of in_.begin(), under mu_
  // Shared, under mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  Queue out_, in_;
  size_t out_bytes_ = 0;
  uint64_t seq_ = 0;
  bool reorder_next_[2] = {false, false};
  Status pump_error_;
  bool stop_ = false;
  std::atomic<bool> shut_{false};
  std::thread pump_;
};

}  // namespace

FaultTransport::FaultTransport(Transport* inner) : core_(std::make_shared<Core>()), inner_(inner) {}
FaultTransport::~FaultTransport() = default;

Result<std::unique_ptr<Listener>> FaultTransport::Listen(const std::string& address) {
  return inner_->Listen(address);
}

Result<std::unique_ptr<Connection>> FaultTransport::Connect(const std::string& address,
                                                            Deadline deadline) {
  const auto to_server = static_cast<uint8_t>(Direction::kToServer);
  {
    std::unique_lock lock(core_->mu);
    auto blocked = [&] {
      auto it = core_->rules.find(address);
      return it != core_->rules.end() && (it->second.blackhole & to_server) != 0;
    };
    auto it = core_->rules.find(address);
    if (it != core_->rules.end() && (it->second.cut & to_server) != 0) {
      return Status::FromErrno(ECONNREFUSED, "connect to " + address + " (link cut)");
    }
    if (!WaitUntil(core_->changed, lock, deadline, [&] { return !blocked(); })) {
      return TimedOut("connect to " + address + " (blackholed)");
    }
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Connection> inner, inner_->Connect(address, deadline));
  return std::unique_ptr<Connection>(new FaultConnection(core_, address, std::move(inner)));
}

void FaultTransport::Cut(const std::string& address, Direction d) {
  core_->Change(address, [d](Rules& r) { r.cut |= static_cast<uint8_t>(d); });
}
void FaultTransport::Blackhole(const std::string& address, Direction d) {
  core_->Change(address, [d](Rules& r) { r.blackhole |= static_cast<uint8_t>(d); });
}
void FaultTransport::Drop(const std::string& address, Direction d, uint32_t frames) {
  core_->Change(address, [d, frames](Rules& r) {
    if (d != Direction::kToClient) r.drop[0] += frames;
    if (d != Direction::kToServer) r.drop[1] += frames;
  });
}
void FaultTransport::Delay(const std::string& address, Direction d,
                           std::chrono::nanoseconds delay) {
  core_->Change(address, [d, delay](Rules& r) {
    if (d != Direction::kToClient) r.delay[0] = delay;
    if (d != Direction::kToServer) r.delay[1] = delay;
  });
}
void FaultTransport::Reorder(const std::string& address, Direction d) {
  core_->Change(address, [d](Rules& r) {
    if (d != Direction::kToClient) r.reorder[0] = true;
    if (d != Direction::kToServer) r.reorder[1] = true;
  });
}
void FaultTransport::Partition(const std::vector<std::string>& addresses) {
  for (const std::string& a : addresses) Blackhole(a, Direction::kBoth);
}
void FaultTransport::Heal(const std::string& address) {
  core_->Change(address, [](Rules& r) { r = Rules{}; });
}
void FaultTransport::HealAll() {
  std::lock_guard lock(core_->mu);
  core_->rules.clear();
  core_->changed.notify_all();
}
uint64_t FaultTransport::frames_lost() const {
  std::lock_guard lock(core_->mu);
  return core_->lost;
}

}  // namespace shale::replication
