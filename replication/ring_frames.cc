#include "replication/ring_frames.h"

#include <cstring>
#include <string>

namespace shale::replication {

namespace {
constexpr size_t kMinReceiveBytes = 16 * kKiB;  // less room than this at the end: compact first
}  // namespace

std::span<uint8_t> RingFrames::Space() {
  if (end_ == begin_) {
    begin_ = end_ = 0;
    // A buffer grown for a frame larger than kRetainedBytes goes back to the default size once
    // that frame is consumed: a connection does not hold up to kMaxPayload for good.
    if (buf_.size() > kRetainedBytes) {
      buf_.resize(FrameReader::kBufferBytes);
      buf_.shrink_to_fit();
    }
  } else if (buf_.size() - end_ < kMinReceiveBytes) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  return {buf_.data() + end_, buf_.size() - end_};
}

Result<std::optional<RingFrames::Parsed>> RingFrames::Next() {
  if (end_ - begin_ < kFrameHeaderSize) return std::optional<Parsed>();
  const std::span<const uint8_t, kFrameHeaderSize> hb(buf_.data() + begin_, kFrameHeaderSize);
  Parsed p;
  SHALE_RETURN_IF_ERROR(DecodeHeader(hb, &p.frame.header));
  const FrameHeader& h = p.frame.header;
  const size_t need = kFrameHeaderSize + h.payload_length;
  if (end_ - begin_ < need) {
    if (buf_.size() - begin_ < need) {  // make room for the whole frame
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
      if (buf_.size() < need) buf_.resize(need);
    }
    return std::optional<Parsed>();
  }
  p.frame.payload =
      std::span<const uint8_t>(buf_.data() + begin_ + kFrameHeaderSize, h.payload_length);
  if (FrameChecksum(hb, {p.frame.payload}) != h.checksum) {
    return Status::Corruption("replica protocol: checksum mismatch in a " +
                              std::string(MsgTypeName(h.msg())) + " frame");
  }
  p.bytes = std::span<const uint8_t>(buf_.data() + begin_, need);
  begin_ += need;
  return std::optional<Parsed>(p);
}

}  // namespace shale::replication
