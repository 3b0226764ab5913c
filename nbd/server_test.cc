// NbdServer over real sockets against a real Engine (two reactors, so connections move from the
// accept reactor to their volume's): pipelined requests, structured replies and block status,
// malformed requests over raw sockets, read-only exports, clients that vanish mid-request,
// connection floods, the handshake timeout, backpressure, resize and delete with clients
// connected, shutdown with requests in flight, and engine errors mapped to NBD errors.
#include "nbd/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/io/fault_device.h"
#include "engine/io/socket_testing.h"
#include "nbd/wire_testing.h"

namespace shale::nbd {
namespace {

using namespace std::chrono_literals;

// --- wire helpers -------------------------------------------------------------------------------

using wire_testing::GetU16s;
using wire_testing::GetU32s;
using wire_testing::GetU64s;
using wire_testing::U16;
using wire_testing::U32;
using wire_testing::U64;

std::string Opt(uint32_t option, const std::string& data = "") {
  return U64(kOptionMagic) + U32(option) + U32(static_cast<uint32_t>(data.size())) + data;
}
std::string GoData(const std::string& name) {
  return U32(static_cast<uint32_t>(name.size())) + name + U16(1) + U16(kInfoBlockSize);
}
std::string MetaData(const std::string& name) {
  const std::string q(kBaseAllocation);
  return U32(static_cast<uint32_t>(name.size())) + name + U32(1) +
         U32(static_cast<uint32_t>(q.size())) + q;
}
std::string Req(uint16_t type, uint64_t handle, uint64_t offset, uint32_t length,
                uint16_t flags = 0) {
  RequestHeader h;
  h.type = type;
  h.handle = handle;
  h.offset = offset;
  h.length = length;
  h.flags = flags;
  std::string s(kRequestHeaderSize, '\0');
  EncodeRequestHeader(h, std::span<uint8_t, kRequestHeaderSize>(
                             reinterpret_cast<uint8_t*>(s.data()), kRequestHeaderSize));
  return s;
}
std::string Pattern(size_t len, uint64_t seed) {
  std::string s(len, '\0');
  std::mt19937_64 rng(seed);
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

bool PollUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// A blocking socket with a receive timeout, so a broken server fails the test, not hangs it.
class RawClient {
 public:
  static std::unique_ptr<RawClient> Tcp(const std::string& address) {
    const int fd = wire_testing::ConnectTcp(address, 0);
    if (fd < 0) return nullptr;
    return std::unique_ptr<RawClient>(new RawClient(fd));
  }
  static std::unique_ptr<RawClient> Unix(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      close(fd);
      return nullptr;
    }
    return std::unique_ptr<RawClient>(new RawClient(fd));
  }
  ~RawClient() { Close(); }

  bool Send(const std::string& bytes) { return wire_testing::SendAll(fd_, bytes); }
  std::optional<std::string> Read(size_t n) { return wire_testing::RecvExact(fd_, n); }
  // True once the server has closed the connection (EOF or reset) within `timeout`.
  bool WaitClosed(std::chrono::milliseconds timeout = 20s) {
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
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }

  // --- protocol ---
  struct OptReply {
    uint32_t option = 0, type = 0;
    std::string data;
  };
  std::optional<OptReply> ReadOptReply() {
    auto h = Read(kOptionReplyHeaderSize);
    if (!h || GetU64s(*h, 0) != kOptionReplyMagic) return std::nullopt;
    OptReply r{GetU32s(*h, 8), GetU32s(*h, 12), ""};
    auto d = Read(GetU32s(*h, 16));
    if (!d) return std::nullopt;
    r.data = *d;
    return r;
  }
  // Greeting, flags, optional structured replies + base:allocation, NBD_OPT_GO.
  struct Export {
    uint64_t size = 0;
    uint16_t flags = 0;
    uint32_t min_block = 0, max_block = 0;
  };
  std::optional<Export> Go(const std::string& name, bool structured = false, bool meta = false,
                           uint32_t* error_reply = nullptr) {
    auto g = Read(kGreetingSize);
    if (!g || GetU64s(*g, 0) != kNbdMagic || GetU64s(*g, 8) != kOptionMagic) return std::nullopt;
    if (!Send(U32(kClientFlagFixedNewstyle | kClientFlagNoZeroes))) return std::nullopt;
    if (structured) {
      Send(Opt(kOptStructuredReply));
      auto r = ReadOptReply();
      if (!r || r->type != kRepAck) return std::nullopt;
    }
    if (meta) {
      Send(Opt(kOptSetMetaContext, MetaData(name)));
      auto r = ReadOptReply();
      if (!r || r->type != kRepMetaContext) return std::nullopt;
      r = ReadOptReply();
      if (!r || r->type != kRepAck) return std::nullopt;
    }
    Send(Opt(kOptGo, GoData(name)));
    Export e;
    while (true) {
      auto r = ReadOptReply();
      if (!r) return std::nullopt;
      if (r->type == kRepAck) return e;
      if (r->type & kRepFlagError) {
        if (error_reply != nullptr) *error_reply = r->type;
        return std::nullopt;
      }
      if (r->type == kRepInfo && GetU16s(r->data, 0) == kInfoExport) {
        e.size = GetU64s(r->data, 2);
        e.flags = GetU16s(r->data, 10);
      }
      if (r->type == kRepInfo && GetU16s(r->data, 0) == kInfoBlockSize) {
        e.min_block = GetU32s(r->data, 2);
        e.max_block = GetU32s(r->data, 10);
      }
    }
  }

  struct Reply {
    uint64_t handle = 0;
    uint32_t error = 0;
    std::string message;
    std::string data;  // read data (structured: assembled from OFFSET_DATA chunks)
    std::vector<BlockDescriptor> extents;
  };
  // A simple reply; `read_length` bytes of data follow a successful read.
  std::optional<Reply> ReadSimple(const std::function<uint32_t(uint64_t)>& read_length) {
    auto h = Read(kSimpleReplySize);
    if (!h || GetU32s(*h, 0) != kSimpleReplyMagic) return std::nullopt;
    Reply r;
    r.error = GetU32s(*h, 4);
    r.handle = GetU64s(*h, 8);
    const uint32_t len = r.error == 0 ? read_length(r.handle) : 0;
    if (len > 0) {
      auto d = Read(len);
      if (!d) return std::nullopt;
      r.data = *d;
    }
    return r;
  }
  // Structured reply chunks until NBD_REPLY_FLAG_DONE (a simple reply is accepted too).
  std::optional<Reply> ReadStructured() {
    Reply r;
    while (true) {
      auto magic = Read(4);
      if (!magic) {
        ADD_FAILURE() << "connection closed or timed out: " << strerror(errno);
        return std::nullopt;
      }
      if (GetU32s(*magic, 0) == kSimpleReplyMagic) {
        auto rest = Read(12);
        if (!rest) return std::nullopt;
        r.error = GetU32s(*rest, 0);
        r.handle = GetU64s(*rest, 4);
        return r;
      }
      if (GetU32s(*magic, 0) != kStructuredReplyMagic) {
        ADD_FAILURE() << "bad reply magic " << std::hex << GetU32s(*magic, 0);
        return std::nullopt;
      }
      auto h = Read(16);
      if (!h) return std::nullopt;
      const uint16_t flags = GetU16s(*h, 0), type = GetU16s(*h, 2);
      r.handle = GetU64s(*h, 4);
      auto payload = Read(GetU32s(*h, 12));
      if (!payload) return std::nullopt;
      if (type == kReplyTypeOffsetData) {
        r.data += payload->substr(8);
      } else if (type == kReplyTypeError) {
        r.error = GetU32s(*payload, 0);
        r.message = payload->substr(6, GetU16s(*payload, 4));
      } else if (type == kReplyTypeBlockStatus) {
        EXPECT_EQ(GetU32s(*payload, 0), kBaseAllocationContextId);
        for (size_t at = 4; at + 8 <= payload->size(); at += 8) {
          r.extents.push_back({GetU32s(*payload, at), GetU32s(*payload, at + 4)});
        }
      } else if (type != kReplyTypeNone) {
        ADD_FAILURE() << "unexpected chunk type " << type;
        return std::nullopt;
      }
      if (flags & kReplyFlagDone) return r;
    }
  }

 private:
  explicit RawClient(int fd) : fd_(fd) {
    timeval tv{20, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  int fd_;
};

// --- fixture ----------------------------------------------------------------------------------

constexpr uint64_t kVolSize = 64 * kMiB;

class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/shale-nbd-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
    // NBD_TEST_DEBUG=1: the server's debug log (refused requests, disconnects) on stderr.
    // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing changes the environment concurrently.
    if (getenv("NBD_TEST_DEBUG") != nullptr) spdlog::set_level(spdlog::level::debug);
    OpenEngine({});
  }
  void TearDown() override {
    server_.reset();
    resolver_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }

  void OpenEngine(EngineOptions::DeviceFactory factory) {
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 256 * kMiB;
    options.reactors = 2;  // volumes 1 and 2 live on different reactors
    options.commit_interval_ms = 100;
    options.device_factory = std::move(factory);
    Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    ASSERT_TRUE(engine_->CreateVolume({.name = "vol", .size_bytes = kVolSize}).ok());
    ASSERT_TRUE(
        engine_->CreateVolume({.name = "ro", .size_bytes = 16 * kMiB, .read_only = true}).ok());
    ASSERT_TRUE(engine_->CreateVolume({.name = "other", .size_bytes = 8 * kMiB}).ok());
  }

  void StartServer(NbdServerOptions options = {}) {
    options.tcp_address = "127.0.0.1:0";
    options.unix_socket = dir_ + "/nbd.sock";
    std::vector<Reactor*> reactors;
    for (const auto& r : engine_->reactors()) reactors.push_back(r.get());
    resolver_ = std::make_unique<EngineExportResolver>(engine_.get());
    server_ = std::make_unique<NbdServer>(reactors, resolver_.get(), options);
    Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
  }

  std::unique_ptr<RawClient> Connect() {
    auto c = RawClient::Tcp(server_->tcp_address());
    EXPECT_NE(c, nullptr);
    return c;
  }

  size_t ClientsOf(const std::string& name) {
    size_t n = 0;
    for (const NbdClientInfo& c : server_->Clients()) n += c.export_name == name;
    return n;
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<EngineExportResolver> resolver_;
  std::unique_ptr<NbdServer> server_;
};

// --- tests -------------------------------------------------------------------------------------

TEST_F(NbdServerTest, PipelinedWritesAndReadsRoundTrip) {
  StartServer();
  auto c = Connect();
  auto e = c->Go("vol");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->size, kVolSize);
  EXPECT_EQ(e->min_block, 512u);
  EXPECT_EQ(e->max_block, 32u << 20);
  EXPECT_TRUE(e->flags & kTxCanMultiConn);
  EXPECT_FALSE(e->flags & kTxReadOnly);

  // 64 writes of assorted sizes and offsets (some cross 64 KiB clusters, one ends the volume),
  // all sent before any reply is read; then 64 reads of the same ranges, likewise.
  constexpr int kN = 64;
  std::map<uint64_t, std::pair<uint64_t, std::string>> writes;  // handle -> offset, data
  std::string batch;
  for (int i = 0; i < kN; ++i) {
    const uint64_t offset =
        i == kN - 1 ? kVolSize - 8192 : static_cast<uint64_t>(i) * kMiB + 61440 + 512 * (i % 3);
    const uint32_t length = i == kN - 1 ? 8192 : 512u * (1 + i % 20);
    const std::string data = Pattern(length, i);
    writes[100 + i] = {offset, data};
    batch += Req(kCmdWrite, 100 + i, offset, length, i % 5 == 0 ? kCmdFlagFua : 0) + data;
  }
  ASSERT_TRUE(c->Send(batch));
  std::set<uint64_t> handles;
  for (int i = 0; i < kN; ++i) {
    auto r = c->ReadSimple([](uint64_t) { return 0u; });
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error, 0u);
    handles.insert(r->handle);
  }
  EXPECT_EQ(handles.size(), static_cast<size_t>(kN));

  batch.clear();
  for (const auto& [handle, w] : writes) {
    batch += Req(kCmdRead, handle + 1000, w.first, static_cast<uint32_t>(w.second.size()));
  }
  batch += Req(kCmdFlush, 7, 0, 0);
  ASSERT_TRUE(c->Send(batch));
  for (int i = 0; i < kN + 1; ++i) {
    auto r = c->ReadSimple([&](uint64_t h) {
      return h == 7 ? 0u : static_cast<uint32_t>(writes.at(h - 1000).second.size());
    });
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error, 0u);
    if (r->handle != 7) {
      EXPECT_TRUE(r->data == writes.at(r->handle - 1000).second) << "handle " << r->handle;
    }
  }
  // The connection counts what it served.
  ASSERT_EQ(server_->Clients().size(), 1u);
  const NbdClientInfo info = server_->Clients()[0];
  EXPECT_EQ(info.export_name, "vol");
  EXPECT_EQ(info.transport, "tcp");
  EXPECT_EQ(info.requests, 2u * kN + 1);
  EXPECT_GT(info.bytes_written, 0u);
  EXPECT_EQ(info.bytes_read, info.bytes_written);
  EXPECT_EQ(info.errors, 0u);

  ASSERT_TRUE(c->Send(Req(kCmdDisc, 1, 0, 0)));
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(PollUntil([&] { return server_->Clients().empty(); }));
  EXPECT_TRUE(PollUntil([&] { return engine_->GetVolume("vol")->open_count == 0; }))
      << "the export is released when the client leaves";
}

// A large write whose payload arrives in pieces is received whole, over TCP (the server receives
// such a payload straight into the request's buffer, waiting with SO_RCVLOWAT for the rest after
// each piece) and over the UNIX socket (MSG_WAITALL).
TEST_F(NbdServerTest, LargeWritesArrivingInPiecesAreReceivedWhole) {
  StartServer();
  for (const bool unix_socket : {false, true}) {
    SCOPED_TRACE(unix_socket ? "unix" : "tcp");
    auto c = unix_socket ? RawClient::Unix(dir_ + "/nbd.sock") : Connect();
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Go("vol"));
    constexpr uint32_t kLen = 1 << 20;
    for (const size_t piece : {size_t{65536 + 28}, size_t{300000}, size_t{kLen - 100}}) {
      const std::string data = Pattern(kLen, piece + unix_socket);
      const std::string msg = Req(kCmdWrite, piece, 3 * kMiB, kLen) + data;
      for (size_t at = 0; at < msg.size(); at += piece) {
        ASSERT_TRUE(c->Send(msg.substr(at, piece)));
        ASSERT_TRUE(testutil::WaitDelivered(c->fd())) << piece;
      }
      auto r = c->ReadSimple([](uint64_t) { return 0u; });
      ASSERT_TRUE(r) << "no reply to a write sent in pieces of " << piece;
      EXPECT_EQ(r->handle, piece);
      EXPECT_EQ(r->error, 0u);
      ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 3 * kMiB, kLen)));
      r = c->ReadSimple([](uint64_t) { return kLen; });
      ASSERT_TRUE(r);
      EXPECT_TRUE(r->data == data) << piece;
    }
  }
}

TEST_F(NbdServerTest, StructuredRepliesAndBlockStatusSeeHoles) {
  StartServer();
  auto c = Connect();
  auto e = c->Go("vol", /*structured=*/true, /*meta=*/true);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->flags & kTxSendDf);
  const std::string data = Pattern(8192, 1);
  ASSERT_TRUE(c->Send(Req(kCmdWrite, 1, 1 * kMiB, 8192) + data));
  auto w = c->ReadStructured();
  ASSERT_TRUE(w);
  EXPECT_EQ(w->error, 0u);

  ASSERT_TRUE(c->Send(Req(kCmdBlockStatus, 2, 0, 4 * kMiB)));
  auto bs = c->ReadStructured();
  ASSERT_TRUE(bs);
  ASSERT_EQ(bs->extents.size(), 3u);
  EXPECT_EQ(bs->extents[0].length, 1 * kMiB);
  EXPECT_EQ(bs->extents[0].flags, kStateHole | kStateZero);
  EXPECT_EQ(bs->extents[1].length, 8192u);
  EXPECT_EQ(bs->extents[1].flags, 0u);
  EXPECT_EQ(bs->extents[2].length, 3 * kMiB - 8192);
  EXPECT_EQ(bs->extents[2].flags, kStateHole | kStateZero);

  ASSERT_TRUE(c->Send(Req(kCmdBlockStatus, 3, 0, 4 * kMiB, kCmdFlagReqOne)));
  bs = c->ReadStructured();
  ASSERT_TRUE(bs);
  ASSERT_EQ(bs->extents.size(), 1u);
  EXPECT_EQ(bs->extents[0].length, 1 * kMiB);

  ASSERT_TRUE(c->Send(Req(kCmdRead, 4, 1 * kMiB - 4096, 16384, kCmdFlagDf)));
  auto rd = c->ReadStructured();
  ASSERT_TRUE(rd);
  EXPECT_EQ(rd->error, 0u);
  EXPECT_TRUE(rd->data == std::string(4096, '\0') + data + std::string(4096, '\0'));

  // Trim and zeroing: the range reads as zeros, and (without NO_HOLE) becomes a hole again.
  ASSERT_TRUE(c->Send(Req(kCmdWriteZeroes, 5, 1 * kMiB, 4096, kCmdFlagFastZero) +
                      Req(kCmdTrim, 6, 1 * kMiB + 4096, 4096, kCmdFlagFua)));
  for (int i = 0; i < 2; ++i) {
    auto r = c->ReadStructured();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->error, 0u) << r->message;
  }
  ASSERT_TRUE(c->Send(Req(kCmdBlockStatus, 7, 1 * kMiB, 8192)));
  auto hole = c->ReadStructured();
  ASSERT_TRUE(hole);
  ASSERT_EQ(hole->extents.size(), 1u);
  EXPECT_EQ(hole->extents[0].flags, kStateHole | kStateZero);
  // FAST_ZERO with NO_HOLE cannot be fast: ENOTSUP, and nothing changed.
  ASSERT_TRUE(c->Send(Req(kCmdWriteZeroes, 8, 0, 4096, kCmdFlagFastZero | kCmdFlagNoHole)));
  auto fz = c->ReadStructured();
  ASSERT_TRUE(fz);
  EXPECT_EQ(fz->error, kEnotsup);
  // NO_HOLE zeroes stay allocated. (Replies may come in any order: wait for the zeroing.)
  ASSERT_TRUE(c->Send(Req(kCmdWriteZeroes, 9, 2 * kMiB, 4096, kCmdFlagNoHole)));
  auto z = c->ReadStructured();
  ASSERT_TRUE(z);
  EXPECT_EQ(z->error, 0u);
  ASSERT_TRUE(c->Send(Req(kCmdBlockStatus, 10, 2 * kMiB, 4096)));
  auto allocated = c->ReadStructured();
  ASSERT_TRUE(allocated);
  ASSERT_EQ(allocated->extents.size(), 1u);
  EXPECT_EQ(allocated->extents[0].flags, 0u);
}

TEST_F(NbdServerTest, MalformedRequestsGetErrorsAndTheConnectionGoesOn) {
  StartServer();
  auto c = Connect();
  auto e = c->Go("vol", /*structured=*/true);
  ASSERT_TRUE(e);
  struct Case {
    std::string request;
    uint32_t error;
  };
  const std::vector<Case> cases = {
      {Req(kCmdRead, 1, 100, 512), kEinval},                            // unaligned offset
      {Req(kCmdRead, 2, 0, 1000), kEinval},                             // unaligned length
      {Req(kCmdRead, 3, kVolSize - 512, 1024), kEinval},                // beyond the end
      {Req(kCmdRead, 4, 0, (32 << 20) + 512), kEinval},                 // over the maximum
      {Req(kCmdWrite, 5, kVolSize, 4096) + Pattern(4096, 5), kEnospc},  // beyond: payload skipped
      {Req(kCmdWrite, 6, 3, 4096) + Pattern(4096, 6), kEinval},         // unaligned: skipped
      {Req(77, 7, 0, 0), kEinval},                                      // unknown command
      {Req(kCmdRead, 8, 0, 512, 1u << 9), kEinval},                     // unknown flag
      {Req(kCmdBlockStatus, 9, 0, 512), kEinval},                       // no metadata context
      {Req(kCmdFlush, 10, 4096, 0), kEinval},                           // flush with a range
      {Req(kCmdTrim, 11, kVolSize, 4096), kEinval},                     // trim beyond the end
  };
  for (const Case& tc : cases) {
    ASSERT_TRUE(c->Send(tc.request));
    auto r = c->ReadStructured();
    ASSERT_TRUE(r) << "connection lost after handle " << GetU64s(tc.request, 8);
    EXPECT_EQ(r->handle, GetU64s(tc.request, 8));
    EXPECT_EQ(r->error, tc.error) << "handle " << r->handle;
    EXPECT_FALSE(r->message.empty());
  }
  // A write larger than the maximum is refused and its whole payload skipped.
  ASSERT_TRUE(
      c->Send(Req(kCmdWrite, 12, 0, (32 << 20) + 4096) + std::string((32 << 20) + 4096, 'x')));
  auto big = c->ReadStructured();
  ASSERT_TRUE(big);
  EXPECT_EQ(big->error, kEinval);
  // Still in sync, and nothing above wrote anything: the volume reads as zeros, then a
  // normal write and read work.
  ASSERT_TRUE(c->Send(Req(kCmdRead, 13, 0, 8192)));
  auto zeros = c->ReadStructured();
  ASSERT_TRUE(zeros);
  EXPECT_TRUE(zeros->data == std::string(8192, '\0'));
  const std::string data = Pattern(4096, 99);
  ASSERT_TRUE(c->Send(Req(kCmdWrite, 14, 0, 4096) + data));
  auto w = c->ReadStructured();
  ASSERT_TRUE(w);
  EXPECT_EQ(w->error, 0u);
  ASSERT_TRUE(c->Send(Req(kCmdRead, 15, 0, 4096)));
  auto r = c->ReadStructured();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->data == data) << "read back differs";
  EXPECT_EQ(server_->Clients()[0].errors, cases.size() + 1);
  // Zero-length requests are harmless no-ops.
  ASSERT_TRUE(
      c->Send(Req(kCmdRead, 16, 0, 0) + Req(kCmdWrite, 17, 0, 0) + Req(kCmdCache, 18, 0, 4096)));
  for (int i = 0; i < 3; ++i) {
    auto z = c->ReadStructured();
    ASSERT_TRUE(z);
    EXPECT_EQ(z->error, 0u);
  }
}

TEST_F(NbdServerTest, SimpleRepliesCarryErrorsWithoutData) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Go("vol"));
  ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 100, 512) + Req(kCmdRead, 2, 0, 512)));
  auto a = c->ReadSimple([](uint64_t h) { return h == 2 ? 512u : 0u; });
  auto b = c->ReadSimple([](uint64_t h) { return h == 2 ? 512u : 0u; });
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->error, kEinval);
  EXPECT_EQ(b->error, 0u);
  EXPECT_EQ(b->data, std::string(512, '\0'));
}

TEST_F(NbdServerTest, BadRequestMagicHangsUpThatClientOnly) {
  StartServer();
  auto bad = Connect();
  auto good = Connect();
  ASSERT_TRUE(bad->Go("vol"));
  ASSERT_TRUE(good->Go("vol"));
  std::string garbage = Req(kCmdRead, 1, 0, 512);
  garbage[0] = 'X';
  ASSERT_TRUE(bad->Send(garbage));
  EXPECT_TRUE(bad->WaitClosed());
  ASSERT_TRUE(good->Send(Req(kCmdRead, 2, 0, 512)));
  auto r = good->ReadSimple([](uint64_t) { return 512u; });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, 0u);
}

TEST_F(NbdServerTest, ReadOnlyExportsRefuseWritesWithEperm) {
  StartServer();
  auto c = Connect();
  auto e = c->Go("ro", /*structured=*/true);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->flags & kTxReadOnly);
  EXPECT_FALSE(e->flags & (kTxSendTrim | kTxSendWriteZeroes));
  ASSERT_TRUE(c->Send(Req(kCmdWrite, 1, 0, 4096) + Pattern(4096, 1) + Req(kCmdTrim, 2, 0, 4096) +
                      Req(kCmdWriteZeroes, 3, 0, 4096) + Req(kCmdRead, 4, 0, 4096)));
  for (int i = 0; i < 4; ++i) {
    auto r = c->ReadStructured();
    ASSERT_TRUE(r);
    if (r->handle == 4) {
      EXPECT_EQ(r->error, 0u);
      EXPECT_TRUE(r->data == std::string(4096, '\0'));
    } else {
      EXPECT_EQ(r->error, kEperm) << r->handle;
    }
  }
  EXPECT_EQ(engine_->GetVolume("ro")->writes, 0u);
}

TEST_F(NbdServerTest, UnknownExportsAndOptionsDoNotEndTheHandshake) {
  StartServer();
  auto c = Connect();
  uint32_t error = 0;
  EXPECT_FALSE(c->Go("missing", false, false, &error));
  EXPECT_EQ(error, kRepErrUnknown);
  // Same connection: more options, then a real export.
  ASSERT_TRUE(c->Send(Opt(1234, "zzz") + Opt(kOptGo, GoData("bad/name")) + Opt(kOptList)));
  auto r = c->ReadOptReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, kRepErrUnsup);
  r = c->ReadOptReply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, kRepErrUnknown);
  std::vector<std::string> listed;
  while ((r = c->ReadOptReply()) && r->type == kRepServer) listed.push_back(r->data.substr(4));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, kRepAck);
  EXPECT_EQ(listed, (std::vector<std::string>{"other", "ro", "vol"}));
  ASSERT_TRUE(c->Send(Opt(kOptGo, GoData("other"))));
  while ((r = c->ReadOptReply()) && r->type == kRepInfo) {
  }
  ASSERT_TRUE(r);
  EXPECT_EQ(r->type, kRepAck);
  ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 0, 512)));
  EXPECT_TRUE(c->ReadSimple([](uint64_t) { return 512u; }));
}

TEST_F(NbdServerTest, ExportNameEntersTransmissionAndUnknownNameHangsUp) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Read(kGreetingSize));
  ASSERT_TRUE(c->Send(U32(kClientFlagFixedNewstyle) + Opt(kOptExportName, "vol")));
  auto reply = c->Read(kExportNameReplySize + kExportNameZeroes);
  ASSERT_TRUE(reply);
  EXPECT_EQ(GetU64s(*reply, 0), kVolSize);
  ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 0, 512)));
  EXPECT_TRUE(c->ReadSimple([](uint64_t) { return 512u; }));

  auto d = Connect();
  ASSERT_TRUE(d->Read(kGreetingSize));
  ASSERT_TRUE(d->Send(U32(kClientFlagFixedNewstyle) + Opt(kOptExportName, "missing")));
  EXPECT_TRUE(d->WaitClosed());
}

TEST_F(NbdServerTest, ClientsThatVanishMidRequestHarmNobody) {
  StartServer();
  // Half a write payload, then gone.
  {
    auto c = Connect();
    ASSERT_TRUE(c->Go("vol"));
    ASSERT_TRUE(c->Send(Req(kCmdWrite, 1, 0, 1 << 20) + std::string(300000, 'a')));
  }
  // Half a request header, then gone.
  {
    auto c = Connect();
    ASSERT_TRUE(c->Go("vol"));
    ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 0, 4096).substr(0, 13)));
  }
  // Many reads in flight, then gone without reading a reply.
  {
    auto c = Connect();
    ASSERT_TRUE(c->Go("vol", true));
    std::string batch;
    for (int i = 0; i < 200; ++i) batch += Req(kCmdRead, i, 0, 1 << 20);
    ASSERT_TRUE(c->Send(batch));
  }
  // Mid-handshake, then gone.
  {
    auto c = Connect();
    ASSERT_TRUE(c->Read(kGreetingSize));
    ASSERT_TRUE(c->Send(U32(kClientFlagFixedNewstyle) + Opt(kOptGo, GoData("vol")).substr(0, 20)));
  }
  EXPECT_TRUE(PollUntil([&] { return server_->Clients().empty(); })) << "connections leaked";
  EXPECT_TRUE(PollUntil([&] { return engine_->GetVolume("vol")->open_count == 0; }));
  // The half-received write never reached the volume.
  auto c = Connect();
  ASSERT_TRUE(c->Go("vol"));
  ASSERT_TRUE(c->Send(Req(kCmdRead, 1, 0, 4096)));
  auto r = c->ReadSimple([](uint64_t) { return 4096u; });
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->data == std::string(4096, '\0')) << "a half-received write reached the volume";
}

TEST_F(NbdServerTest, ConnectionFloodIsBoundedAndServedClientsKeepWorking) {
  NbdServerOptions options;
  options.max_connections = 4;
  StartServer(options);
  std::vector<std::unique_ptr<RawClient>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(Connect());
    ASSERT_TRUE(held.back()->Read(kGreetingSize)) << i;
  }
  ASSERT_TRUE(PollUntil([&] { return server_->Clients().size() == 4; }));
  // Beyond the limit: closed at once, without a greeting.
  for (int i = 0; i < 20; ++i) {
    auto extra = Connect();
    EXPECT_TRUE(extra->WaitClosed()) << i;
  }
  // The held connections still negotiate and serve.
  ASSERT_TRUE(held[0]->Send(U32(kClientFlagFixedNewstyle | kClientFlagNoZeroes) +
                            Opt(kOptExportName, "vol")));
  ASSERT_TRUE(held[0]->Read(kExportNameReplySize));
  ASSERT_TRUE(held[0]->Send(Req(kCmdRead, 1, 0, 512)));
  EXPECT_TRUE(held[0]->ReadSimple([](uint64_t) { return 512u; }));
  held.clear();
  ASSERT_TRUE(PollUntil([&] { return server_->Clients().empty(); }));
  auto again = Connect();
  EXPECT_TRUE(again->Go("vol")) << "room again once clients left";
}

TEST_F(NbdServerTest, GarbageHandshakesAreDropped) {
  StartServer();
  std::mt19937_64 rng(7);
  for (int i = 0; i < 50; ++i) {
    auto c = Connect();
    ASSERT_TRUE(c->Read(kGreetingSize));
    std::string junk(64 + rng() % 512, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng());
    junk.replace(0, 4, U32(kClientFlagFixedNewstyle));  // valid flags, then garbage options
    c->Send(junk);
    EXPECT_TRUE(c->WaitClosed()) << i;
  }
  EXPECT_TRUE(PollUntil([&] { return server_->Clients().empty(); }));
  auto c = Connect();
  EXPECT_TRUE(c->Go("vol"));
}

TEST_F(NbdServerTest, SilentClientsAreCutAtTheHandshakeTimeout) {
  NbdServerOptions options;
  options.handshake_timeout = 300ms;
  StartServer(options);
  auto silent = Connect();
  ASSERT_TRUE(silent->Read(kGreetingSize));
  auto slow = Connect();  // sends the flags, then nothing
  ASSERT_TRUE(slow->Read(kGreetingSize));
  ASSERT_TRUE(slow->Send(U32(kClientFlagFixedNewstyle)));
  EXPECT_TRUE(silent->WaitClosed(10s));
  EXPECT_TRUE(slow->WaitClosed(10s));
  // The timeout ends with the handshake: an idle client in transmission stays.
  auto idle = Connect();
  ASSERT_TRUE(idle->Go("vol"));
  EXPECT_FALSE(idle->WaitClosed(1s));
  ASSERT_TRUE(idle->Send(Req(kCmdRead, 1, 0, 512)));
  EXPECT_TRUE(idle->ReadSimple([](uint64_t) { return 512u; }));
}

TEST_F(NbdServerTest, BackpressureBoundsInFlightWithoutDeadlock) {
  NbdServerOptions options;
  options.max_requests_in_flight = 16;
  options.max_bytes_in_flight = 1 * kMiB;
  StartServer(options);
  auto c = Connect();
  ASSERT_TRUE(c->Go("vol"));
  constexpr int kN = 3000;
  std::atomic<bool> sent_ok{true};
  // The sender blocks when the server stops reading; the replies below unblock it.
  std::thread sender([&] {
    std::string batch;
    for (int i = 0; i < kN; ++i) {
      batch += Req(i % 2 ? kCmdRead : kCmdWrite, i, (i % 512) * 65536ull, 65536);
      if (i % 2 == 0) batch += Pattern(65536, i);
      if (batch.size() > 1 * kMiB || i == kN - 1) {
        if (!c->Send(batch)) sent_ok = false;
        batch.clear();
      }
    }
  });
  int replies = 0;
  for (; replies < kN; ++replies) {
    auto r = c->ReadSimple([](uint64_t h) { return h % 2 ? 65536u : 0u; });
    if (!r) break;
    EXPECT_EQ(r->error, 0u);
  }
  sender.join();
  EXPECT_TRUE(sent_ok);
  EXPECT_EQ(replies, kN);
}

TEST_F(NbdServerTest, UnixSocketClientsAreNamedByPid) {
  StartServer();
  auto c = RawClient::Unix(dir_ + "/nbd.sock");
  ASSERT_NE(c, nullptr);
  ASSERT_TRUE(c->Go("vol"));
  const std::vector<NbdClientInfo> clients = server_->Clients();
  ASSERT_EQ(clients.size(), 1u);
  EXPECT_EQ(clients[0].transport, "unix");
  EXPECT_EQ(clients[0].peer, "pid " + std::to_string(getpid()));
  EXPECT_EQ(server_->ExportUri("vol"), "nbd://" + server_->tcp_address() + "/vol");
}

TEST_F(NbdServerTest, ResizeKeepsTheNegotiatedSizeUntilReconnect) {
  StartServer();
  auto c = Connect();
  auto e = c->Go("vol");
  ASSERT_TRUE(e);
  ASSERT_TRUE(engine_->ResizeVolume("vol", 2 * kVolSize).ok());
  ASSERT_TRUE(c->Send(Req(kCmdRead, 1, kVolSize, 512)));
  auto r = c->ReadSimple([](uint64_t) { return 0u; });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, kEinval) << "beyond the size this client negotiated";
  auto d = Connect();
  auto e2 = d->Go("vol");
  ASSERT_TRUE(e2);
  EXPECT_EQ(e2->size, 2 * kVolSize);
  ASSERT_TRUE(d->Send(Req(kCmdRead, 1, kVolSize, 512)));
  r = d->ReadSimple([](uint64_t) { return 512u; });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, 0u);
}

TEST_F(NbdServerTest, DeleteWithClientsDisconnectsThemFirst) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Go("other"));
  auto bystander = Connect();
  ASSERT_TRUE(bystander->Go("vol"));
  EXPECT_EQ(engine_->DeleteVolume("other").code(), StatusCode::kBusy);
  EXPECT_EQ(ClientsOf("other"), 1u);
  bool ran = false;
  Status st = server_->WithExportClosed("other", 10s, [&] {
    ran = true;
    EXPECT_EQ(engine_->GetVolume("other")->open_count, 0u);
    // While it runs, new clients of the export are turned away.
    auto late = Connect();
    uint32_t error = 0;
    EXPECT_FALSE(late->Go("other", false, false, &error));
    EXPECT_EQ(error, kRepErrUnknown);
    return engine_->DeleteVolume("other");
  });
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_TRUE(ran);
  EXPECT_TRUE(c->WaitClosed());
  EXPECT_TRUE(engine_->GetVolume("other").status().IsNotFound());
  // Other exports' clients were not touched.
  ASSERT_TRUE(bystander->Send(Req(kCmdRead, 1, 0, 512)));
  EXPECT_TRUE(bystander->ReadSimple([](uint64_t) { return 512u; }));
}

TEST_F(NbdServerTest, StopFinishesInFlightRequestsThenCloses) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Go("vol"));
  std::string batch;
  for (int i = 0; i < 64; ++i) batch += Req(kCmdWrite, i, i * 65536ull, 65536) + Pattern(65536, i);
  ASSERT_TRUE(c->Send(batch));
  auto first = c->ReadSimple([](uint64_t) { return 0u; });
  ASSERT_TRUE(first);  // the server is serving this client
  server_->Stop();
  // Every request the server had read got its reply before the connection closed.
  int replies = 1;
  while (c->ReadSimple([](uint64_t) { return 0u; })) ++replies;
  EXPECT_GE(replies, 1);
  EXPECT_LE(replies, 64);
  EXPECT_FALSE(RawClient::Tcp(server_->tcp_address())) << "no longer listening";
  EXPECT_EQ(engine_->GetVolume("vol")->open_count, 0u);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/nbd.sock"));
}

// The engine's errors reach the client as the protocol's: EIO for a failed device read,
// ENOSPC for a full pool.
class NbdServerFaultTest : public NbdServerTest {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/shale-nbd-XXXXXX";
    dir_ = mkdtemp(tmpl.data());
    OpenEngine([this](const std::string& path) -> Result<std::shared_ptr<BlockDevice>> {
      DeviceOptions d;
      SHALE_ASSIGN_OR_RETURN(auto inner, OpenBlockDevice(path, d));
      auto fault = std::make_shared<FaultDevice>(std::shared_ptr<BlockDevice>(std::move(inner)));
      fault_ = fault;
      return std::shared_ptr<BlockDevice>(fault);
    });
  }
  std::shared_ptr<FaultDevice> fault_;
};

TEST_F(NbdServerFaultTest, DeviceErrorsBecomeNbdErrors) {
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Go("vol", /*structured=*/true));
  const std::string data = Pattern(4096, 3);
  ASSERT_TRUE(c->Send(Req(kCmdWrite, 1, 0, 4096) + data));
  auto w = c->ReadStructured();
  ASSERT_TRUE(w);
  ASSERT_EQ(w->error, 0u);
  fault_->FailNth(IoOp::kRead, 1, EIO);
  ASSERT_TRUE(c->Send(Req(kCmdRead, 2, 0, 4096)));
  auto r = c->ReadStructured();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, kEio);
  EXPECT_FALSE(r->message.empty());
  // The next read works again.
  ASSERT_TRUE(c->Send(Req(kCmdRead, 3, 0, 4096)));
  r = c->ReadStructured();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error, 0u);
  EXPECT_TRUE(r->data == data);
}

TEST_F(NbdServerTest, FullPoolIsEnospc) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "huge", .size_bytes = 1 * kGiB}).ok());
  StartServer();
  auto c = Connect();
  ASSERT_TRUE(c->Go("huge"));
  // 1 MiB writes 1 MiB apart each need a fresh cluster; the 256 MiB pool runs out.
  uint32_t last_error = 0;
  for (uint64_t off = 0; off < 1 * kGiB && last_error == 0; off += 4 * kMiB) {
    ASSERT_TRUE(c->Send(Req(kCmdWrite, off, off, 1 << 20) + std::string(1 << 20, 'z')));
    auto r = c->ReadSimple([](uint64_t) { return 0u; });
    ASSERT_TRUE(r);
    last_error = r->error;
  }
  EXPECT_EQ(last_error, kEnospc);
}

}  // namespace
}  // namespace shale::nbd
