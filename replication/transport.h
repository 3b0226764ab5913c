// The network seam of replication: Transport (listen, connect) and Connection (a byte stream
// with deadlines), the TCP implementation, FrameReader (frames off a Connection), and
// FaultTransport, which wraps another transport so tests can cut, blackhole, delay, drop and
// reorder the frames of a link, partition addresses and heal them.
//
// Threading: a Connection is used by at most two threads at once, one sending and one
// receiving; Shutdown() and peer() may be called from any thread at any time while the object
// lives. A Listener's Accept runs on one thread, Shutdown() from any. Transports are
// thread-safe. Everything here blocks (with deadlines): it runs on the replica client's and
// server's I/O threads, never on a reactor (replica_client.h says why).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/common/result.h"
#include "replication/protocol.h"

namespace shale::replication {

using SteadyClock = std::chrono::steady_clock;
using Deadline = SteadyClock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();
inline Deadline DeadlineIn(std::chrono::nanoseconds d) { return SteadyClock::now() + d; }

// An operation that reached its deadline: kIoError with errno ETIMEDOUT.
Status TimedOut(std::string_view what);
bool IsTimedOut(const Status& s);

using ConstBuffer = std::span<const uint8_t>;

class Connection {
 public:
  virtual ~Connection() = default;
  // Sends every byte of `buffers`, in order, by `deadline`. An error (a timeout included: part
  // of the bytes may have left) means the stream is broken; the caller shuts it down.
  virtual Status Send(std::span<const ConstBuffer> buffers, Deadline deadline) = 0;
  // Whether TrySend works on this connection (plain TCP: yes; TLS and fault injection: no).
  virtual bool can_try_send() const { return false; }
  // Sends what the socket takes now, without waiting, from the start of `buffers`: the bytes
  // sent (0 when it would block). Only where can_try_send(); an error breaks the stream as
  // Send's does. Never concurrently with Send (the caller orders its writers).
  virtual Result<size_t> TrySend(std::span<const ConstBuffer> buffers);
  // Receives 1..buf.size() bytes; 0 means the peer ended the stream. IsTimedOut() when nothing
  // arrived by `deadline` (the connection stays usable); any other error breaks it.
  virtual Result<size_t> Recv(std::span<uint8_t> buf, Deadline deadline) = 0;
  // Any thread, idempotent: blocked and later Send/Recv return promptly (an error, or the end
  // of the stream); the peer sees the stream end.
  virtual void Shutdown() = 0;
  // "ADDRESS:PORT" of the peer, for logs.
  virtual const std::string& peer() const = 0;
  // The socket, for receiving on a reactor's ring (plain TCP only; -1 elsewhere: TLS and fault
  // injection must see every byte). Owned by the connection.
  virtual int native_fd() const { return -1; }
};

// The part of `buffers` after its first `sent` bytes (views into the same memory).
std::vector<ConstBuffer> BytesAfter(std::span<const ConstBuffer> buffers, size_t sent);

class Listener {
 public:
  virtual ~Listener() = default;
  // The next connection; IsTimedOut() at the deadline, Aborted once Shutdown() was called.
  virtual Result<std::unique_ptr<Connection>> Accept(Deadline deadline) = 0;
  virtual void Shutdown() = 0;                     // any thread
  virtual const std::string& address() const = 0;  // as bound: the real port when 0 was asked
};

class Transport {
 public:
  virtual ~Transport() = default;
  // address: "IPv4:PORT", "[IPv6]:PORT" or "HOSTNAME:PORT"; port 0 picks a free one.
  virtual Result<std::unique_ptr<Listener>> Listen(const std::string& address) = 0;
  virtual Result<std::unique_ptr<Connection>> Connect(const std::string& address,
                                                      Deadline deadline) = 0;
};

// Splits "HOST:PORT" ("[v6]:PORT" too); InvalidArgument with a clear message otherwise.
Status SplitHostPort(std::string_view address, std::string* host, std::string* port);

struct TcpOptions {
  // TCP keepalive on every connection: a silent dead peer is noticed after idle + interval x
  // count (25 s by default), also when no request is in flight.
  std::chrono::seconds keepalive_idle{10};
  std::chrono::seconds keepalive_interval{5};
  int keepalive_count = 3;
};

// TCP with TCP_NODELAY and keepalive; non-blocking sockets waited on with poll().
class TcpTransport final : public Transport {
 public:
  explicit TcpTransport(TcpOptions options = {}) : options_(options) {}
  Result<std::unique_ptr<Listener>> Listen(const std::string& address) override;
  Result<std::unique_ptr<Connection>> Connect(const std::string& address,
                                              Deadline deadline) override;

 private:
  TcpOptions options_;
};

// Reads frames off a connection. Every header is checked (DecodeHeader) before its payload is
// read, and every frame's checksum before the frame is returned. Large data (a WRITE's or a
// READ reply's data of kDirectDataBytes or more) is received straight into a buffer the caller
// names (no copy); everything else goes through an internal buffer.
class FrameReader {
 public:
  static constexpr size_t kDirectDataBytes = 64 * kKiB;
  static constexpr size_t kBufferBytes = 256 * kKiB;  // holds any non-direct frame

  struct Frame {
    FrameHeader header;
    // The payload; for a frame whose data went to the sink, only the part before the data.
    std::span<const uint8_t> payload;
    // The data received through the sink (empty otherwise).
    std::span<uint8_t> data;
    bool direct = false;  // the data went to the sink's buffer (or was discarded: data empty)
  };
  // Asked for a buffer of header.payload_length - prefix.size() bytes for a large data frame;
  // nullptr: receive and discard the data (the frame is still returned, checksum verified).
  using DataSink =
      std::function<uint8_t*(const FrameHeader& header, std::span<const uint8_t> prefix)>;

  explicit FrameReader(Connection* connection);
  FrameReader(const FrameReader&) = delete;
  FrameReader& operator=(const FrameReader&) = delete;

  // The next frame; its spans stay valid until the next call. Errors: IsTimedOut (the frame in
  // progress is kept, call again), Corruption (bad header or checksum, or the stream ended
  // inside a frame: the stream is unusable), end of stream between frames (Unavailable), or
  // the connection's error.
  Result<Frame> Next(Deadline deadline, const DataSink& sink = nullptr);
  // Bytes received and not yet returned as part of a frame.
  size_t buffered() const { return end_ - begin_; }

 private:
  Status Fill(size_t need, Deadline deadline);
  Result<Frame> FinishDirect(Deadline deadline);

  Connection* connection_;
  std::vector<uint8_t> buf_;
  size_t begin_ = 0, end_ = 0;
  // A large data frame in progress.
  bool in_direct_ = false;
  FrameHeader header_;
  HeaderBytes header_bytes_{};
  std::vector<uint8_t> prefix_;
  uint8_t* dst_ = nullptr;
  size_t data_length_ = 0, data_got_ = 0;
  std::vector<uint8_t> discard_;  // where discarded data goes
};

// --- FaultTransport ------------------------------------------------------------------------------

// Which way frames travel on a link, seen from the dialing side (the replica client).
enum class Direction : uint8_t { kToServer = 1, kToClient = 2, kBoth = 3 };

// A large data frame received in place (FrameReader, RingFrames): the frame, its checksum over
// the header (as received), the prefix and the data verified; Corruption on a mismatch.
Result<FrameReader::Frame> DirectFrame(const HeaderBytes& header_bytes, const FrameHeader& header,
                                       std::span<const uint8_t> prefix, std::span<uint8_t> data);

// Wraps a transport and applies faults to the links dialed to an address. Faults act on whole
// frames (the stream stays framed, so a dropped request is simply never seen) and are applied at
// the dialing end for both directions (every replica link has exactly one dialer); Listen is
// passed through. Rules apply to connections already open and to later ones.
//
//   Cut        the link breaks: in that direction, sends fail and the receiver sees the stream
//              end, so both ends notice at once (a reset, a killed peer); connects to the
//              address fail while the direction to the server is cut
//   Blackhole  frames vanish silently (a firewall dropping packets); connects hang to their
//              deadline while the direction to the server is blackholed
//   Drop       the next N frames vanish
//   Delay      every frame arrives `delay` later, in order (a slow link; frames pipeline)
//   Reorder    frames arrive pairwise swapped (the second of two sent first)
//   Partition  Blackhole in both directions for a set of addresses
//   Heal       removes the rules of an address (HealAll: of every address); what vanished
//              stays lost
//
// Threading: every member is thread-safe. Each wrapped connection runs one pump thread that
// delivers its outgoing frames at their time.
class FaultTransport final : public Transport {
 public:
  explicit FaultTransport(Transport* inner);  // `inner` must outlive this
  ~FaultTransport() override;

  Result<std::unique_ptr<Listener>> Listen(const std::string& address) override;
  Result<std::unique_ptr<Connection>> Connect(const std::string& address,
                                              Deadline deadline) override;

  void Cut(const std::string& address, Direction d = Direction::kBoth);
  void Blackhole(const std::string& address, Direction d = Direction::kBoth);
  void Drop(const std::string& address, Direction d, uint32_t frames);
  void Delay(const std::string& address, Direction d, std::chrono::nanoseconds delay);
  void Reorder(const std::string& address, Direction d);
  void Partition(const std::vector<std::string>& addresses);
  void Heal(const std::string& address);
  void HealAll();

  // Frames that vanished (blackholed or dropped), over every link.
  uint64_t frames_lost() const;

  struct Rules {
    uint8_t cut = 0;        // Direction bits
    uint8_t blackhole = 0;  // Direction bits
    uint32_t drop[2] = {0, 0};
    std::chrono::nanoseconds delay[2] = {};
    bool reorder[2] = {false, false};
  };
  class Core;  // shared with the wrapped connections (they may outlive the transport)

 private:
  std::shared_ptr<Core> core_;
  Transport* inner_;
};

}  // namespace shale::replication
