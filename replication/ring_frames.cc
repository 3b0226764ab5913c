#include "replication/ring_frames.h"

#include <cstring>
#include <string>

namespace shale::replication {

namespace {
constexpr size_t kMinReceiveBytes = 16 * kKiB;  // less room than this at the end: compact first
}  // namespace

std::span<uint8_t> RingFrames::Space() {
  if (in_direct_) return {dst_ + data_got_, data_length_ - data_got_};
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

void RingFrames::MaybeGoDirect(const FrameHeader& h) {
  const std::optional<size_t> data_at = DataOffset(h);
  if (!sink_ || !data_at || h.payload_length - *data_at < FrameReader::kDirectDataBytes ||
      end_ - begin_ < kFrameHeaderSize + *data_at) {
    return;
  }
  const uint8_t* at = buf_.data() + begin_;
  prefix_.assign(at + kFrameHeaderSize, at + kFrameHeaderSize + *data_at);
  uint8_t* dst = sink_(h, prefix_);
  if (dst == nullptr) return;
  std::memcpy(header_bytes_.data(), at, kFrameHeaderSize);
  header_ = h;
  dst_ = dst;
  data_length_ = h.payload_length - *data_at;
  begin_ += kFrameHeaderSize + *data_at;
  // What of the data is buffered already (less than all of it: the frame is incomplete).
  data_got_ = end_ - begin_;
  std::memcpy(dst_, buf_.data() + begin_, data_got_);
  begin_ = end_ = 0;
  in_direct_ = true;
}

Result<std::optional<RingFrames::Parsed>> RingFrames::FinishDirect() {
  if (data_got_ < data_length_) return std::optional<Parsed>();
  // (On a mismatch the frame stays in progress: Abandon() hands the buffer back.)
  SHALE_ASSIGN_OR_RETURN(FrameReader::Frame f, DirectFrame(header_bytes_, header_, prefix_,
                                                           std::span<uint8_t>(dst_, data_length_)));
  in_direct_ = false;
  dst_ = nullptr;
  Parsed p;
  p.frame = f;
  return std::optional<Parsed>(p);
}

std::pair<uint8_t*, size_t> RingFrames::Abandon() {
  if (!in_direct_) return {nullptr, 0};
  in_direct_ = false;
  return {std::exchange(dst_, nullptr), data_length_};
}

Result<std::optional<RingFrames::Parsed>> RingFrames::Next() {
  if (in_direct_) return FinishDirect();
  if (end_ - begin_ < kFrameHeaderSize) return std::optional<Parsed>();
  const std::span<const uint8_t, kFrameHeaderSize> hb(buf_.data() + begin_, kFrameHeaderSize);
  Parsed p;
  SHALE_RETURN_IF_ERROR(DecodeHeader(hb, &p.frame.header));
  const FrameHeader& h = p.frame.header;
  const size_t need = kFrameHeaderSize + h.payload_length;
  if (end_ - begin_ < need) {
    MaybeGoDirect(h);
    if (in_direct_) return FinishDirect();
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
