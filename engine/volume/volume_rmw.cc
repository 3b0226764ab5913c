// Volume: requests that are not whole 4 KiB blocks (512-byte-aligned reads and writes take a
// read-modify-write of the covering blocks under a range lock), and zero-writes that must keep
// their blocks allocated (NO_UNMAP) or zero partial edge blocks. Every step is an internal,
// aligned request through Volume::Submit, so this file never touches the map or the device.
#include <algorithm>
#include <cstring>

#include "engine/common/block.h"
#include "engine/common/units.h"
#include "engine/volume/volume.h"
#include "engine/volume/volume_internal.h"

namespace shale {

using internal::kInternal;

namespace {
constexpr uint64_t kZeroChunk = 1 * kMiB;

const uint8_t* ZeroBuffer() {
  static const AlignedBuffer zeros = [] {
    AlignedBuffer b = AllocateAligned(kZeroChunk);
    std::memset(b.get(), 0, kZeroChunk);
    return b;
  }();
  return zeros.get();
}
}  // namespace

// Internal multi-step operation for requests that are not 4 KiB-aligned, and for zero-writes
// that must keep allocation: an explicit state machine whose steps are internal, aligned
// VolumeIos through Submit(); each completion calls Volume::StepUnaligned.
struct Volume::Unaligned {
  enum class Kind { kRead, kWrite, kZeroUnmap, kZeroFill };
  Volume* vol = nullptr;
  VolumeIo* client = nullptr;
  Kind kind = Kind::kRead;
  uint64_t begin = 0, end = 0;  // 4 KiB-aligned window covering the client's range
  AlignedBuffer bounce;
  VolumeIo inner;
  int step = 0;
  bool locked = false;
  uint64_t cursor = 0;          // kZeroFill: next chunk; kZeroUnmap: edge block being zeroed
  uint64_t chunk_len = 0;       // kZeroFill: length of the current edge chunk
  std::vector<uint64_t> edges;  // kZeroUnmap: partial edge blocks to zero
  size_t edge_index = 0;

  uint64_t client_end() const { return client->offset + client->length; }
};

bool Volume::ParkIfLocked(VolumeIo* io) {
  if (rmw_locks_.empty()) return false;
  const uint64_t begin = RoundDownToBlock(io->offset);
  const uint64_t end = RoundUpToBlock(io->offset + io->length);
  for (const Range& l : rmw_locks_) {
    if (begin < l.end && l.begin < end) {
      parked_.push_back(io);
      return true;
    }
  }
  return false;
}

void Volume::UnlockRange(uint64_t begin, uint64_t end) {
  for (auto it = rmw_locks_.begin(); it != rmw_locks_.end(); ++it) {
    if (it->begin == begin && it->end == end) {
      rmw_locks_.erase(it);
      break;
    }
  }
  if (parked_.empty()) return;
  std::deque<VolumeIo*> retry;
  retry.swap(parked_);
  // Re-dispatch without re-counting: they are already counted in requests_in_flight_.
  for (VolumeIo* io : retry) {
    if (ParkIfLocked(io)) continue;
    const bool aligned = IsBlockAligned(io->offset | io->length) &&
                         IsBlockAligned(reinterpret_cast<uintptr_t>(io->buf));
    if (io->op == VolumeOp::kWrite && aligned) {
      SubmitWrite(io);
    } else {
      SubmitUnaligned(io);
    }
  }
}

void Volume::SubmitUnaligned(VolumeIo* io) {
  const uint64_t begin = RoundDownToBlock(io->offset);
  const uint64_t end = RoundUpToBlock(io->offset + io->length);
  if (io->op != VolumeOp::kRead) {
    // Lock the covering blocks so concurrent partial writes of one block keep each other's bytes.
    for (const Range& l : rmw_locks_) {
      if (begin < l.end && l.begin < end) {
        parked_.push_back(io);
        return;
      }
    }
  }
  auto* u = new Unaligned();
  u->vol = this;
  u->client = io;
  u->begin = begin;
  u->end = end;
  if (io->op == VolumeOp::kRead) {
    u->kind = Unaligned::Kind::kRead;
  } else if (io->op == VolumeOp::kWrite) {
    u->kind = Unaligned::Kind::kWrite;
  } else if (io->flags & kVolumeNoUnmap) {
    u->kind = Unaligned::Kind::kZeroFill;
    u->cursor = begin;
  } else {
    u->kind = Unaligned::Kind::kZeroUnmap;
    const uint64_t mid_begin = RoundUpToBlock(io->offset);
    const uint64_t mid_end = RoundDownToBlock(io->offset + io->length);
    if (io->offset != mid_begin) u->edges.push_back(begin);
    if (u->client_end() != mid_end && (u->edges.empty() || end - kBlockSize != begin)) {
      u->edges.push_back(end - kBlockSize);
    }
  }
  if (io->op != VolumeOp::kRead) {
    rmw_locks_.push_back(Range{begin, end});
    u->locked = true;
  }
  StepUnaligned(u, Status::Ok());
}

void Volume::RunInner(Unaligned* u, VolumeOp op, uint64_t off, uint64_t len, uint8_t* buf) {
  u->inner = VolumeIo{};
  u->inner.op = op;
  u->inner.offset = off;
  u->inner.length = len;
  u->inner.buf = buf;
  u->inner.flags = kInternal;
  u->inner.io_class = u->client->io_class;
  u->inner.ctx = u;
  u->inner.done = [](VolumeIo* inner) {
    auto* self = static_cast<Unaligned*>(inner->ctx);
    self->vol->StepUnaligned(self, inner->status);
  };
  Submit(&u->inner);
}

void Volume::FinishUnaligned(Unaligned* u, Status st) {  // by value: st may live in *u
  if (u->locked) UnlockRange(u->begin, u->end);
  VolumeIo* client = u->client;
  delete u;
  if (st.ok() && client->op != VolumeOp::kRead && (client->flags & kVolumeFua)) {
    return FlushAfter(client, st);
  }
  Complete(client, st);
}

void Volume::StepUnaligned(Unaligned* u, const Status& st) {
  if (!st.ok()) return FinishUnaligned(u, Status(st));
  const int step = u->step++;
  switch (u->kind) {
    case Unaligned::Kind::kRead:
      if (step == 0) {
        u->bounce = AllocateAligned(u->end - u->begin);
        return RunInner(u, VolumeOp::kRead, u->begin, u->end - u->begin, u->bounce.get());
      }
      std::memcpy(u->client->buf, u->bounce.get() + (u->client->offset - u->begin),
                  u->client->length);
      return FinishUnaligned(u, Status::Ok());

    case Unaligned::Kind::kWrite: {
      const bool head_partial = u->client->offset != u->begin;
      const bool tail_partial = u->client_end() != u->end;
      if (step == 0) {
        u->bounce = AllocateAligned(u->end - u->begin);
        if (head_partial)
          return RunInner(u, VolumeOp::kRead, u->begin, kBlockSize, u->bounce.get());
        return StepUnaligned(u, Status::Ok());
      }
      if (step == 1) {
        if (tail_partial && !(head_partial && u->end - kBlockSize == u->begin)) {
          return RunInner(u, VolumeOp::kRead, u->end - kBlockSize, kBlockSize,
                          u->bounce.get() + (u->end - kBlockSize - u->begin));
        }
        return StepUnaligned(u, Status::Ok());
      }
      if (step == 2) {
        std::memcpy(u->bounce.get() + (u->client->offset - u->begin), u->client->buf,
                    u->client->length);
        return RunInner(u, VolumeOp::kWrite, u->begin, u->end - u->begin, u->bounce.get());
      }
      return FinishUnaligned(u, Status::Ok());
    }

    case Unaligned::Kind::kZeroUnmap: {
      if (step == 0) {
        const uint64_t mid_begin = RoundUpToBlock(u->client->offset);
        const uint64_t mid_end = RoundDownToBlock(u->client_end());
        if (mid_end > mid_begin)
          return RunInner(u, VolumeOp::kDiscard, mid_begin, mid_end - mid_begin, nullptr);
        return StepUnaligned(u, Status::Ok());
      }
      // Odd steps read an edge block, even steps write it back with the client's part zeroed.
      if (step % 2 == 1) {
        if (u->edge_index >= u->edges.size()) return FinishUnaligned(u, Status::Ok());
        if (!u->bounce) u->bounce = AllocateAligned(kBlockSize);
        u->cursor = u->edges[u->edge_index++];
        return RunInner(u, VolumeOp::kRead, u->cursor, kBlockSize, u->bounce.get());
      }
      const uint64_t zb = std::max(u->cursor, u->client->offset);
      const uint64_t ze = std::min(u->cursor + kBlockSize, u->client_end());
      std::memset(u->bounce.get() + (zb - u->cursor), 0, ze - zb);
      return RunInner(u, VolumeOp::kWrite, u->cursor, kBlockSize, u->bounce.get());
    }

    case Unaligned::Kind::kZeroFill: {
      // NO_UNMAP: really write zeros, chunk by chunk, so the blocks stay allocated. A chunk that
      // only partly belongs to the client is read, patched with zeros and written back.
      if (u->chunk_len != 0) {  // the read of a partial chunk just completed
        const uint64_t off = u->cursor - u->chunk_len;
        const uint64_t zb = std::max(off, u->client->offset);
        const uint64_t ze = std::min(u->cursor, u->client_end());
        std::memset(u->bounce.get() + (zb - off), 0, ze - zb);
        const uint64_t len = u->chunk_len;
        u->chunk_len = 0;
        return RunInner(u, VolumeOp::kWrite, off, len, u->bounce.get());
      }
      if (u->cursor >= u->end) return FinishUnaligned(u, Status::Ok());
      const uint64_t off = u->cursor;
      const uint64_t len = std::min<uint64_t>(kZeroChunk, u->end - off);
      u->cursor = off + len;
      if (off >= u->client->offset && off + len <= u->client_end()) {
        return RunInner(u, VolumeOp::kWrite, off, len, const_cast<uint8_t*>(ZeroBuffer()));
      }
      if (!u->bounce) u->bounce = AllocateAligned(kZeroChunk);
      u->chunk_len = len;
      return RunInner(u, VolumeOp::kRead, off, len, u->bounce.get());
    }
  }
}

}  // namespace shale
