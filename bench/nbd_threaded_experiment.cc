// Experiment, not shipped in shaled: the alternative NBD data path weighed in docs/nbd.md.
//
// Same engine, same protocol codec (nbd/protocol.h, handshake.h) as shaled's NbdServer, but
// sockets are served by plain threads with blocking system calls, as in nbdkit or a classic
// thread-per-connection server: per connection one receive thread (reads and parses requests,
// receives write payloads straight into aligned buffers, hands each batch of requests to the
// volume's reactor with one Reactor::Post) and one send thread (woken by completions from the
// reactor, sends every ready reply with one sendmsg). The volume I/O itself still runs on the
// reactor ring. `bench/nbd_bench.py --servers ...,threaded` measures it beside shaled.
//
//   shale-nbd-threaded-experiment --data-dir DIR --size 2G --port PORT
// serves one volume named "bench" (created on a fresh data dir) until SIGTERM/SIGINT.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace shale::nbd {
namespace {

constexpr size_t kRecvBuffer = 256 * 1024;

bool SendAll(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool RecvAll(int fd, void* data, size_t len) {
  auto* p = static_cast<uint8_t*>(data);
  while (len > 0) {
    const ssize_t n = recv(fd, p, len, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

struct Conn;

struct Req {
  Conn* conn = nullptr;
  RequestHeader h;
  VolumeIo io;
  uint8_t hdr[kOffsetDataHeaderSize];
  uint32_t hdr_len = 0;
  std::string extra;
  AlignedBuffer buf;
  size_t cap = 0;
  uint32_t data_len = 0;
};

struct Conn {
  int fd = -1;
  Volume* volume = nullptr;
  bool structured = false;
  SessionParams params;

  std::mutex mu;  // guards everything below
  std::condition_variable cv;
  std::deque<Req*> ready;  // replies to send, in completion order
  std::vector<Req*> free_reqs;
  uint64_t in_flight = 0;  // handed to the reactor, not yet completed
  bool receiver_done = false;

  Req* NewReq() {
    std::lock_guard lock(mu);
    if (free_reqs.empty()) return new Req();
    Req* r = free_reqs.back();
    free_reqs.pop_back();
    return r;
  }
};

void EncodeReply(Req* r, uint32_t error, const std::string& message) {
  Conn* c = r->conn;
  r->hdr_len = 0;
  r->data_len = 0;
  r->extra.clear();
  if (error != 0) {
    if (c->structured) {
      AppendErrorChunk(&r->extra, r->h.handle, error, message);
    } else {
      EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize>(r->hdr, kSimpleReplySize), r->h.handle,
                        error);
      r->hdr_len = kSimpleReplySize;
    }
    return;
  }
  if (r->h.type == kCmdRead && c->structured) {
    EncodeOffsetDataHeader(r->hdr, r->h.handle, r->h.offset, r->h.length, true);
    r->hdr_len = kOffsetDataHeaderSize;
    r->data_len = r->h.length;
    return;
  }
  EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize>(r->hdr, kSimpleReplySize), r->h.handle, 0);
  r->hdr_len = kSimpleReplySize;
  if (r->h.type == kCmdRead) r->data_len = r->h.length;
}

// On the reactor: the volume finished a request; wake the send thread.
void OnDone(VolumeIo* io) {
  auto* r = static_cast<Req*>(io->ctx);
  EncodeReply(r, NbdErrorFromStatus(io->status), std::string(io->status.message()));
  Conn* c = r->conn;
  {
    std::lock_guard lock(c->mu);
    c->ready.push_back(r);
    --c->in_flight;
  }
  c->cv.notify_one();
}

void SendThread(Conn* c) {
  pthread_setname_np(pthread_self(), "nbd-send");
  std::vector<Req*> batch;
  std::vector<iovec> iov;
  while (true) {
    {
      std::unique_lock lock(c->mu);
      c->cv.wait(lock,
                 [c] { return !c->ready.empty() || (c->receiver_done && c->in_flight == 0); });
      if (c->ready.empty()) return;
      batch.assign(c->ready.begin(), c->ready.end());
      c->ready.clear();
    }
    iov.clear();
    for (Req* r : batch) {
      if (r->hdr_len) iov.push_back({r->hdr, r->hdr_len});
      if (!r->extra.empty()) iov.push_back({r->extra.data(), r->extra.size()});
      if (r->data_len) iov.push_back({r->buf.get(), r->data_len});
    }
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = &iov[first];
      msg.msg_iovlen = std::min<size_t>(iov.size() - first, 1024);
      ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      while (n > 0 && first < iov.size()) {
        if (static_cast<size_t>(n) >= iov[first].iov_len) {
          n -= static_cast<ssize_t>(iov[first].iov_len);
          ++first;
        } else {
          iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + n;
          iov[first].iov_len -= static_cast<size_t>(n);
          n = 0;
        }
      }
    }
    std::lock_guard lock(c->mu);
    for (Req* r : batch) c->free_reqs.push_back(r);
  }
}

// Bytes received from a connection: [0, have) of data, not yet consumed.
struct RecvBuffer {
  std::vector<uint8_t> data = std::vector<uint8_t>(kRecvBuffer);
  size_t have = 0;
};

// The NBD handshake on `fd` with `volume` as the only export: true once the client has entered
// the transmission phase (hs.session() is what was negotiated; `in` keeps any bytes already
// received after it), false when the connection is to be closed.
bool RunHandshake(int fd, Volume* volume, Handshake& hs, RecvBuffer& in) {
  std::string out;
  AppendGreeting(&out);
  while (true) {
    if (!out.empty() && !SendAll(fd, out.data(), out.size())) return false;
    out.clear();
    if (hs.state() == Handshake::State::kNeedExport) {
      if (hs.export_name() == volume->name()) {
        hs.ProvideExport(ExportInfo{volume->name(), volume->size_bytes(), false, ""}, &out);
      } else {
        hs.ProvideExport(Status::NotFound("no such export"), &out);
      }
      continue;
    }
    if (hs.state() == Handshake::State::kNeedExportList) {
      hs.ProvideExportList({volume->name()}, &out);
      continue;
    }
    if (hs.state() == Handshake::State::kDone) return true;
    if (hs.state() == Handshake::State::kClosed) return false;
    const size_t used = hs.Consume({in.data.data(), in.have}, &out);
    std::memmove(in.data.data(), in.data.data() + used, in.have - used);
    in.have -= used;
    if (out.empty() && hs.state() == Handshake::State::kReading) {
      const ssize_t n = recv(fd, in.data.data() + in.have, in.data.size() - in.have, 0);
      if (n <= 0) return false;
      in.have += static_cast<size_t>(n);
    }
  }
}

// Fills r->io for its checked request header: r->h.length bytes at r->h.offset through r->buf,
// completing in OnDone.
void PrepareIo(Req* r) {
  VolumeIo& io = r->io;
  io.offset = r->h.offset;
  io.length = r->h.length;
  io.buf = r->buf.get();
  io.ctx = r;
  io.done = &OnDone;
  switch (r->h.type) {
    case kCmdRead:
      io.op = VolumeOp::kRead;
      break;
    case kCmdWrite:
      io.op = VolumeOp::kWrite;
      break;
    case kCmdFlush:
      io.op = VolumeOp::kFlush;
      break;
    case kCmdTrim:
      io.op = VolumeOp::kDiscard;
      break;
    default:
      io.op = VolumeOp::kWriteZeroes;
      break;
  }
  if (r->h.flags & kCmdFlagFua) io.flags |= kVolumeFua;
}

struct Parsed {
  size_t consumed = 0;  // bytes of the buffer used
  bool open = true;     // false: the connection must close
};

// Parses every complete request in `in`, receiving write payloads that go past it straight from
// the socket into the request's buffer. Requests to execute go to `batch`; refused ones are
// answered at once. Closes (open = false) on a bad header, a check that disconnects, a payload
// over 64 MiB or a payload cut short.
Parsed ParseRequests(Conn& conn, const RecvBuffer& in, std::vector<Req*>& batch) {
  Parsed p;
  size_t& pos = p.consumed;
  while (in.have - pos >= kRequestHeaderSize) {
    Req* r = conn.NewReq();
    r->conn = &conn;
    if (!DecodeRequestHeader(
            std::span<const uint8_t, kRequestHeaderSize>(in.data.data() + pos, kRequestHeaderSize),
            &r->h)) {
      p.open = false;
      break;
    }
    pos += kRequestHeaderSize;
    const RequestCheck check = CheckRequest(r->h, conn.params);
    if (check.action == RequestCheck::Action::kDisconnect || check.payload > (64u << 20)) {
      p.open = false;
      break;
    }
    r->io = VolumeIo{};
    const uint32_t len = r->h.length;
    if (r->cap < len) {
      r->buf = AllocateAligned(std::max<size_t>(len, 4096));
      r->cap = std::max<size_t>(len, 4096);
    }
    if (check.payload > 0) {
      const size_t in_buf = std::min<size_t>(in.have - pos, len);
      std::memcpy(r->buf.get(), in.data.data() + pos, in_buf);
      pos += in_buf;
      if (in_buf < len && !RecvAll(conn.fd, r->buf.get() + in_buf, len - in_buf)) {
        p.open = false;
        break;
      }
    }
    if (check.action != RequestCheck::Action::kExecute) {
      EncodeReply(r, check.error, std::string(check.reason));
      {
        std::lock_guard lock(conn.mu);
        conn.ready.push_back(r);
      }
      conn.cv.notify_one();
      continue;
    }
    PrepareIo(r);
    batch.push_back(r);
  }
  return p;
}

// Hands `batch` to the volume's reactor with one Post (counted in flight) and clears it.
void SubmitBatch(Conn& conn, std::vector<Req*>& batch) {
  if (batch.empty()) return;
  {
    std::lock_guard lock(conn.mu);
    conn.in_flight += batch.size();
  }
  // One hand-off per batch of requests read together.
  conn.volume->reactor()->Post([volume = conn.volume, reqs = batch] {
    for (Req* r : reqs) volume->Submit(&r->io);
  });
  batch.clear();
}

// The transmission phase on the receive side: reads, parses and submits requests until the
// client disconnects or breaks the protocol; the send thread answers them.
void ServeRequests(Conn& conn, RecvBuffer& in) {
  std::vector<Req*> batch;
  bool open = true;
  while (open) {
    const Parsed parsed = ParseRequests(conn, in, batch);
    open = parsed.open;
    std::memmove(in.data.data(), in.data.data() + parsed.consumed, in.have - parsed.consumed);
    in.have -= parsed.consumed;
    SubmitBatch(conn, batch);
    if (!open) break;
    const ssize_t n = recv(conn.fd, in.data.data() + in.have, in.data.size() - in.have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    in.have += static_cast<size_t>(n);
  }
}

// Serves one client on `fd` (this thread receives, a second one sends) and closes it.
void ServeConnection(int fd, Volume* volume) {
  pthread_setname_np(pthread_self(), "nbd-recv");
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  Handshake hs(HandshakeLimits{});
  RecvBuffer in;
  if (!RunHandshake(fd, volume, hs, in)) return (void)close(fd);
  Conn conn;
  conn.fd = fd;
  conn.volume = volume;
  conn.structured = hs.session().structured_replies;
  conn.params = hs.session().params;
  std::thread sender(SendThread, &conn);
  ServeRequests(conn, in);
  {
    std::lock_guard lock(conn.mu);
    conn.receiver_done = true;
  }
  conn.cv.notify_one();
  sender.join();
  for (Req* r : conn.free_reqs) delete r;
  close(fd);
}

int Main(int argc, char** argv) {
  std::string data_dir;
  std::string size_text = "2G";
  int port = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--data-dir") {
      data_dir = argv[i + 1];
    } else if (flag == "--size") {
      size_text = argv[i + 1];
    } else if (flag == "--port") {
      port = std::atoi(argv[i + 1]);
    }
  }
  if (data_dir.empty() || port <= 0 || !ParseSize(size_text).ok()) {
    std::fprintf(stderr, "usage: %s --data-dir DIR --size SIZE --port PORT\n", argv[0]);
    return 2;
  }

  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  log::Init("warn");

  const uint64_t size = ParseSize(size_text).value();
  EngineOptions options;
  options.data_dir = data_dir;
  options.default_pool_size = size + std::max<uint64_t>(size / 16, 256 * kMiB);
  auto engine = Engine::Open(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  if (!(*engine)->GetVolume("bench").ok()) {
    auto created = (*engine)->CreateVolume({.name = "bench", .size_bytes = size});
    if (!created.ok()) {
      std::fprintf(stderr, "create: %s\n", created.status().ToString().c_str());
      return 1;
    }
  }
  auto handle = (*engine)->OpenVolume("bench");
  Volume* volume = &(*handle)->volume();

  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int on = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(lfd, 64) != 0) {
    std::perror("listen");
    return 1;
  }
  std::thread acceptor([&] {
    while (true) {
      const int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;
      }
      std::thread(ServeConnection, fd, volume).detach();
    }
  });
  int sig = 0;
  sigwait(&stop_signals, &sig);
  shutdown(lfd, SHUT_RDWR);
  acceptor.join();
  close(lfd);
  // Connections still open die with the process; the engine commits on shutdown.
  handle->reset();
  return (*engine)->Shutdown().ok() ? 0 : 1;
}

}  // namespace
}  // namespace shale::nbd

int main(int argc, char** argv) { return shale::nbd::Main(argc, argv); }
