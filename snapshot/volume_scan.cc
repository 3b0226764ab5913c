#include "snapshot/volume_scan.h"

#include <algorithm>
#include <cstring>
#include <optional>

namespace shale::snapshot {

namespace {

constexpr uint64_t kQuerySpan = 64ull << 20;
constexpr size_t kQueryMaxExtents = 4096;

// One request in flight; lives until its completion has been waited for.
struct InFlight {
  AlignedBuffer buf;
  VolumeIo io;
  std::promise<Status> promise;
  std::future<Status> future = promise.get_future();

  void Submit(VolumeHandle& h, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* data,
              IoClass io_class, uint32_t flags, VolumeLayer* target) {
    io.op = op;
    io.offset = offset;
    io.length = length;
    io.buf = data;
    io.flags = flags;
    io.io_class = io_class;
    io.ctx = this;
    io.done = [](VolumeIo* done) {
      static_cast<InFlight*>(done->ctx)->promise.set_value(done->status);
    };
    VolumeLayer* dst = target != nullptr ? target : &h.volume();
    VolumeIo* req = &io;
    h.reactor()->Post([dst, req] { dst->Submit(req); });
  }
};

}  // namespace

Status RunIo(VolumeHandle& handle, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf,
             IoClass io_class, uint32_t flags, VolumeLayer* target) {
  InFlight f;
  f.Submit(handle, op, offset, length, buf, io_class, flags, target);
  return f.future.get();
}

Result<std::vector<AllocationRun>> QueryRuns(VolumeHandle& handle, uint64_t offset,
                                             uint64_t length) {
  std::vector<AllocationRun> out;
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t span = std::min(kQuerySpan, end - pos);
    std::vector<Volume::Extent> extents;
    Volume* vol = &handle.volume();
    handle.reactor()->RunSync([&] { extents = vol->QueryAllocation(pos, span, kQueryMaxExtents); });
    if (extents.empty()) {
      return Status::OutOfRange("allocation query at " + std::to_string(pos) +
                                " is past the end of '" + vol->name() + "'");
    }
    for (const auto& e : extents) {
      if (!out.empty() && out.back().zero == e.zero &&
          out.back().offset + out.back().length == pos) {
        out.back().length += e.length;
      } else {
        out.push_back(AllocationRun{pos, e.length, e.zero});
      }
      pos += e.length;
    }
  }
  return out;
}

Status ScanContent(VolumeHandle& handle, const ByteRanges& ranges, const ScanOptions& options,
                   const std::function<Status(const ScanPiece&)>& fn) {
  SHALE_CHECK(options.window > 0 && options.depth > 0, "ScanContent options");
  // Segments to visit, produced lazily: one allocation query per span of a range.
  size_t range_index = 0;
  uint64_t range_pos = ranges.empty() ? 0 : ranges[0].first;
  std::deque<AllocationRun> runs;
  auto next_segment = [&]() -> Result<std::optional<AllocationRun>> {
    while (runs.empty()) {
      if (range_index == ranges.size()) return std::optional<AllocationRun>();
      const uint64_t range_end = ranges[range_index].first + ranges[range_index].second;
      if (range_pos >= range_end) {
        if (++range_index < ranges.size()) range_pos = ranges[range_index].first;
        continue;
      }
      const uint64_t span = std::min(kQuerySpan, range_end - range_pos);
      SHALE_ASSIGN_OR_RETURN(auto got, QueryRuns(handle, range_pos, span));
      runs.insert(runs.end(), got.begin(), got.end());
      range_pos += span;
    }
    AllocationRun seg = runs.front();
    if (!seg.zero) {  // cut reads at window boundaries
      seg.length = std::min(seg.length, options.window - seg.offset % options.window);
    }
    runs.front().offset += seg.length;
    runs.front().length -= seg.length;
    if (runs.front().length == 0) runs.pop_front();
    return std::optional<AllocationRun>(seg);
  };

  struct Item {
    AllocationRun seg;
    std::unique_ptr<InFlight> read;  // null for zero runs
  };
  std::deque<Item> queue;
  unsigned reads = 0;
  bool more = true;
  Status result;
  auto drain = [&] {
    for (auto& item : queue) {
      if (item.read) item.read->future.get().IgnoreError();  // only waiting for the buffer
    }
    queue.clear();
  };
  while (result.ok()) {
    while (more && reads < options.depth && queue.size() < options.depth + 64) {
      auto seg = next_segment();
      if (!seg.ok()) {
        result = seg.TakeStatus();
        break;
      }
      if (!seg->has_value()) {
        more = false;
        break;
      }
      Item item{**seg, nullptr};
      if (!item.seg.zero) {
        item.read = std::make_unique<InFlight>();
        item.read->buf = AllocateAligned(item.seg.length);
        item.read->Submit(handle, VolumeOp::kRead, item.seg.offset, item.seg.length,
                          item.read->buf.get(), options.io_class, 0, options.target);
        ++reads;
      }
      queue.push_back(std::move(item));
    }
    if (!result.ok() || queue.empty()) break;
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_acquire)) {
      result = Status::Aborted("cancelled");
      break;
    }
    Item item = std::move(queue.front());
    queue.pop_front();
    ScanPiece piece{item.seg.offset, item.seg.length, nullptr};
    if (item.read) {
      --reads;
      Status st = item.read->future.get();
      if (!st.ok()) {
        result = st.WithContext("read " + std::to_string(item.seg.length) + " bytes at " +
                                std::to_string(item.seg.offset));
        break;
      }
      piece.data = item.read->buf.get();
    }
    result = fn(piece);
  }
  drain();
  return result;
}

// ---------------------------------------------------------------------------------------------

struct WriteQueue::Op {
  InFlight f;
};

WriteQueue::WriteQueue(VolumeHandle* handle, unsigned depth, IoClass io_class, VolumeLayer* target)
    : handle_(handle), depth_(std::max(1u, depth)), io_class_(io_class), target_(target) {}

WriteQueue::~WriteQueue() {
  while (!in_flight_.empty()) WaitOldest().IgnoreError();  // buffers must outlive the I/O
}

Status WriteQueue::WaitOldest() {
  Status st = in_flight_.front()->f.future.get();
  const VolumeIo& io = in_flight_.front()->f.io;
  if (!st.ok() && error_.ok()) {
    error_ = st.WithContext(std::string(VolumeOpName(io.op)) + " at " + std::to_string(io.offset));
  }
  in_flight_.pop_front();
  return error_;
}

Status WriteQueue::Start(std::unique_ptr<Op> op) {
  while (in_flight_.size() >= depth_) SHALE_RETURN_IF_ERROR(WaitOldest());
  in_flight_.push_back(std::move(op));
  return Status::Ok();
}

Status WriteQueue::Write(uint64_t offset, const uint8_t* data, uint64_t length) {
  SHALE_RETURN_IF_ERROR(error_);
  SHALE_CHECK(length > 0 && length <= kMaxVolumeIoBytes, "WriteQueue::Write of ", length, " bytes");
  auto op = std::make_unique<Op>();
  op->f.buf = AllocateAligned(length);
  std::memcpy(op->f.buf.get(), data, length);
  op->f.Submit(*handle_, VolumeOp::kWrite, offset, length, op->f.buf.get(), io_class_, 0, target_);
  return Start(std::move(op));
}

Status WriteQueue::WriteZeros(uint64_t offset, uint64_t length) {
  constexpr uint64_t kPiece = 16ull << 20;
  while (length > 0) {
    SHALE_RETURN_IF_ERROR(error_);
    const uint64_t n = std::min(length, kPiece);
    auto op = std::make_unique<Op>();
    op->f.Submit(*handle_, VolumeOp::kWriteZeroes, offset, n, nullptr, io_class_, 0, target_);
    SHALE_RETURN_IF_ERROR(Start(std::move(op)));
    offset += n;
    length -= n;
  }
  return Status::Ok();
}

Status WriteQueue::Drain() {
  while (!in_flight_.empty()) WaitOldest().IgnoreError();
  SHALE_RETURN_IF_ERROR(error_);
  return RunIo(*handle_, VolumeOp::kFlush, 0, 0, nullptr, io_class_, 0, target_);
}

}  // namespace shale::snapshot
