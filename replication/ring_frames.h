// RingFrames: replica-protocol frames out of bytes a reactor's ring received (the client's and
// the server's ring receivers, docs/format/replica-protocol.md "Reactor receives"). It owns the
// receive buffer: Space() is where the next receive goes, Received() counts what arrived, Next()
// returns whole frames checked as FrameReader checks them (header first, then the checksum).
// One thread at a time (the reactor's).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "engine/common/result.h"
#include "replication/transport.h"

namespace shale::replication {

class RingFrames {
 public:
  // A buffer grown for a larger frame than this is released once the frame is consumed; up to it
  // (1 MiB writes and their replies) it is kept, as they come in streams.
  static constexpr size_t kRetainedBytes = 2 * kMiB;

  // `sink` (optional) is asked, for a large data frame (FrameReader::kDirectDataBytes or more of
  // data) whose header and prefix arrived before the rest, for a buffer of its data's size: the
  // rest of the data is then received straight into it (no copy out of this buffer afterwards),
  // and the frame comes back `direct` with `data` in that buffer, which the caller then owns.
  // nullptr from the sink: the frame is buffered whole as any other.
  explicit RingFrames(FrameReader::DataSink sink = nullptr)
      : buf_(FrameReader::kBufferBytes), sink_(std::move(sink)) {}

  // Where the next receive goes: never empty (the buffer is compacted when little room is left
  // at its end; during a direct frame, the rest of its data). Valid until the next call of any
  // member.
  std::span<uint8_t> Space();
  void Received(size_t n) { (in_direct_ ? data_got_ : end_) += n; }

  struct Parsed {
    FrameReader::Frame frame;        // payload: a view into the buffer (the prefix, if direct)
    std::span<const uint8_t> bytes;  // the whole frame, header included (empty if direct)
  };
  // The next whole frame, consumed; nullopt when it has not all arrived (room is made for it,
  // growing the buffer up to the frame's size); Corruption for a bad header or checksum. Views
  // stay valid until the next call of any member.
  Result<std::optional<Parsed>> Next();
  // Bytes of a frame that has not all arrived: the stream must not end here.
  bool partial() const { return in_direct_ || end_ != begin_; }
  // Receiving a large frame's data in place: Space() is exactly the rest of that data.
  bool in_direct() const { return in_direct_; }
  size_t buffer_bytes() const { return buf_.size(); }
  // The sink's buffer of a direct frame that will not be finished (the stream ended, or its
  // checksum failed), with its size, for the caller to release; {nullptr, 0} if none.
  std::pair<uint8_t*, size_t> Abandon();

 private:
  // Starts receiving the data of the frame at begin_ (header `h`) into the sink's buffer, if it
  // is a large data frame and the sink gives one.
  void MaybeGoDirect(const FrameHeader& h);
  Result<std::optional<Parsed>> FinishDirect();

  std::vector<uint8_t> buf_;
  size_t begin_ = 0, end_ = 0;
  FrameReader::DataSink sink_;
  // A direct frame in progress.
  bool in_direct_ = false;
  HeaderBytes header_bytes_{};
  FrameHeader header_;
  std::vector<uint8_t> prefix_;
  uint8_t* dst_ = nullptr;
  size_t data_length_ = 0, data_got_ = 0;
};

}  // namespace shale::replication
