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
#include <vector>

#include "engine/common/result.h"
#include "replication/transport.h"

namespace shale::replication {

class RingFrames {
 public:
  // A buffer grown for a larger frame than this is released once the frame is consumed; up to it
  // (1 MiB writes and their replies) it is kept, as they come in streams.
  static constexpr size_t kRetainedBytes = 2 * kMiB;

  RingFrames() : buf_(FrameReader::kBufferBytes) {}

  // Where the next receive goes: never empty (the buffer is compacted when little room is left
  // at its end). Valid until the next call of any member.
  std::span<uint8_t> Space();
  void Received(size_t n) { end_ += n; }

  struct Parsed {
    FrameReader::Frame frame;        // payload: a view into the buffer
    std::span<const uint8_t> bytes;  // the whole frame, header included
  };
  // The next whole frame, consumed; nullopt when it has not all arrived (room is made for it,
  // growing the buffer up to the frame's size); Corruption for a bad header or checksum. Views
  // stay valid until the next call of any member.
  Result<std::optional<Parsed>> Next();
  // Bytes of a frame that has not all arrived: the stream must not end here.
  bool partial() const { return end_ != begin_; }
  size_t buffer_bytes() const { return buf_.size(); }

 private:
  std::vector<uint8_t> buf_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace shale::replication
