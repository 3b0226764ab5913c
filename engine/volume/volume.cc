// Volume: submission and validation, the write gate, the aligned data path (read, write,
// discard / write-zeroes as metadata), flush and commit, lifecycle and space queries.
// Unaligned requests: volume_rmw.cc. Map loading and image mechanics: volume_images.cc.
#include "engine/volume/volume.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "engine/common/block.h"
#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "engine/pool/keys.h"
#include "engine/pool/pool.h"
#include "engine/volume/volume_internal.h"

namespace shale {

using internal::BlockMask;
using internal::kInternal;

namespace {
constexpr uint64_t kMaxMergedDeviceIo = 4 * kMiB;

bool IsMutating(VolumeOp op) {
  return op == VolumeOp::kWrite || op == VolumeOp::kDiscard || op == VolumeOp::kWriteZeroes;
}
}  // namespace

std::string_view VolumeOpName(VolumeOp op) {
  switch (op) {
    case VolumeOp::kRead:
      return "read";
    case VolumeOp::kWrite:
      return "write";
    case VolumeOp::kFlush:
      return "flush";
    case VolumeOp::kDiscard:
      return "discard";
    case VolumeOp::kWriteZeroes:
      return "write-zeroes";
  }
  return "unknown";
}

Volume::Volume(Pool* pool, Reactor* reactor, meta::VolumeRecord record, std::vector<uint64_t> chain,
               ClusterMap map, const Options& options)
    : pool_(pool),
      reactor_(reactor),
      id_(record.id()),
      name_(record.name()),
      read_only_(record.read_only() || options.view_only),
      created_unix_ns_(record.created_unix_ns()),
      cluster_size_(pool->cluster_size()),
      cluster_shift_(static_cast<uint32_t>(std::countr_zero(pool->cluster_size()))),
      blocks_per_cluster_(pool->cluster_size() / kBlockSize),
      data_offset_(pool->superblock().data_offset),
      options_(options),
      chain_(std::move(chain)),
      size_bytes_(record.size_bytes()),
      map_(std::move(map)) {
  SHALE_CHECK(!chain_.empty() && chain_.back() == record.head_image(),
              "chain must end at the head");
  SHALE_CHECK(chain_.back() <= UINT32_MAX, "image id too large");
  // A view owns nothing: no fragment matches head 0, so it never writes, frees or commits.
  head_ = options_.view_only ? 0 : static_cast<uint32_t>(chain_.back());
  uint64_t owned = 0;
  map_.ForEach([&](uint64_t, std::span<const Fragment> frags) {
    for (const auto& f : frags) {
      if (f.image == head_ && !f.is_zero()) ++owned;
    }
  });
  owned_clusters_ = owned;
  dirty_bits_.assign((map_.size() + 63) / 64, 0);
}

Volume::~Volume() {
  while (free_requests_ != nullptr) {
    Request* r = free_requests_;
    free_requests_ = r->next_free;
    delete r;
  }
}

uint64_t Volume::allocated_bytes() const {
  return owned_clusters_.load(std::memory_order_relaxed) * cluster_size_;
}

// ---------------------------------------------------------------------------------------------
// Submission

Status Volume::Validate(const VolumeIo& io) const {
  if (io.op == VolumeOp::kFlush) return Status::Ok();
  if (io.length == 0) return Status::InvalidArgument("zero-length request");
  if (io.offset % kSectorSize != 0 || io.length % kSectorSize != 0) {
    return Status::InvalidArgument("request at offset " + std::to_string(io.offset) + " length " +
                                   std::to_string(io.length) + " is not 512-byte aligned");
  }
  const uint64_t size = size_bytes();
  if (io.offset > size || io.length > size - io.offset) {
    return Status::OutOfRange("request at offset " + std::to_string(io.offset) + " length " +
                              std::to_string(io.length) + " ends beyond the volume size " +
                              std::to_string(size));
  }
  if ((io.op == VolumeOp::kRead || io.op == VolumeOp::kWrite)) {
    if (io.length > kMaxVolumeIoBytes) {
      return Status::InvalidArgument("request of " + std::to_string(io.length) +
                                     " bytes exceeds the maximum of " +
                                     std::to_string(kMaxVolumeIoBytes));
    }
    if (io.buf == nullptr) return Status::InvalidArgument("request without a buffer");
  }
  if (read_only_ && io.op != VolumeOp::kRead) {
    return Status::PermissionDenied("volume '" + name_ + "' is read-only");
  }
  return Status::Ok();
}

void Volume::RecordLatency(const VolumeIo& io) {
  if (io.layer_value[1] == 0) return;
  const uint64_t now = Clock::Real()->NowNanos();
  const uint64_t ns = now - std::min(now, io.layer_value[1]);
  switch (io.op) {
    case VolumeOp::kRead:
      return counters_.read_latency.Record(ns);
    case VolumeOp::kWrite:
      return counters_.write_latency.Record(ns);
    case VolumeOp::kFlush:
      return counters_.flush_latency.Record(ns);
    case VolumeOp::kDiscard:
    case VolumeOp::kWriteZeroes:
      return;
  }
}

void Volume::Complete(VolumeIo* io, Status status) {
  bool drained = false;
  if (!(io->flags & kInternal)) {
    if (!status.ok()) counters_.errors.fetch_add(1, std::memory_order_relaxed);
    RecordLatency(*io);
    --requests_in_flight_;
    if (IsMutating(io->op)) --mutating_in_flight_;
    if (io->op == VolumeOp::kRead) --reads_in_flight_;
    if (!drain_waiters_.empty() && mutating_in_flight_ == 0 &&
        (!gate_all_ || reads_in_flight_ == 0)) {
      drained = true;
    }
  }
  io->status = std::move(status);
  io->done(io);
  if (drained) RunDrainWaiters();
  if (closing_) CheckCloseDone();
}

void Volume::CompleteLater(VolumeIo* io, Status status) {
  reactor_->Defer([this, io, st = std::move(status)]() mutable { Complete(io, std::move(st)); });
}

void Volume::Submit(VolumeIo* io) {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::Submit off the volume's reactor");
  if (io->flags & kInternal) return Dispatch(io);
  io->layer_value[1] = 0;  // not counted (refused before the counters) until stamped below
  ++requests_in_flight_;
  // Counted from here so Complete() can uncount them uniformly.
  if (IsMutating(io->op)) ++mutating_in_flight_;
  if (io->op == VolumeOp::kRead) ++reads_in_flight_;
  if (!failed_ && pool_->pipeline().failed()) {
    // A commit of the pool failed (maybe another volume's): the whole pool refuses writes.
    failed_ = true;
    failure_ = pool_->pipeline().failure();
  }
  if (failed_ && io->op != VolumeOp::kRead) {
    return CompleteLater(io, Status::IoError("volume '" + name_ + "' failed: " +
                                             failure_.ToString() + " (restart shaled to recover)"));
  }
  Status st = Validate(*io);
  if (!st.ok()) return CompleteLater(io, std::move(st));
  switch (io->op) {
    case VolumeOp::kRead:
      counters_.reads.fetch_add(1, std::memory_order_relaxed);
      counters_.bytes_read.fetch_add(io->length, std::memory_order_relaxed);
      break;
    case VolumeOp::kWrite:
      counters_.writes.fetch_add(1, std::memory_order_relaxed);
      counters_.bytes_written.fetch_add(io->length, std::memory_order_relaxed);
      break;
    case VolumeOp::kFlush:
      counters_.flushes.fetch_add(1, std::memory_order_relaxed);
      break;
    case VolumeOp::kDiscard:
      counters_.discards.fetch_add(1, std::memory_order_relaxed);
      counters_.bytes_discarded.fetch_add(io->length, std::memory_order_relaxed);
      break;
    case VolumeOp::kWriteZeroes:
      counters_.write_zeroes.fetch_add(1, std::memory_order_relaxed);
      counters_.bytes_zeroed.fetch_add(io->length, std::memory_order_relaxed);
      break;
  }
  // Counted requests get a latency sample, so a histogram's count matches its op's counter.
  io->layer_value[1] = Clock::Real()->NowNanos();
  const bool gated =
      write_gate_ && (IsMutating(io->op) || (gate_all_ && io->op == VolumeOp::kRead));
  if (gated) {
    // Parked, not in flight; counted again when resumed by UngateWrites().
    if (IsMutating(io->op)) --mutating_in_flight_;
    if (io->op == VolumeOp::kRead) --reads_in_flight_;
    gated_.push_back(io);
    if (!drain_waiters_.empty()) RunDrainWaiters();
    return;
  }
  Dispatch(io);
}

void Volume::Dispatch(VolumeIo* io) {
  const bool internal = io->flags & kInternal;
  const bool aligned = IsBlockAligned(io->offset | io->length);
  switch (io->op) {
    case VolumeOp::kFlush:
      return SubmitFlush(io);
    case VolumeOp::kRead:
      if (aligned && IsBlockAligned(reinterpret_cast<uintptr_t>(io->buf))) return SubmitRead(io);
      return SubmitUnaligned(io);
    case VolumeOp::kWrite:
      if (aligned && IsBlockAligned(reinterpret_cast<uintptr_t>(io->buf))) {
        if (!internal && ParkIfLocked(io)) return;
        return SubmitWrite(io);
      }
      return SubmitUnaligned(io);
    case VolumeOp::kDiscard:
      return SubmitUnmap(io);
    case VolumeOp::kWriteZeroes:
      if (aligned && !(io->flags & kVolumeNoUnmap)) return SubmitUnmap(io);
      return SubmitUnaligned(io);
  }
}

void Volume::GateWrites(std::function<void()> when_drained, bool all_io) {
  if (!write_gate_) gate_start_ns_ = Clock::Real()->NowNanos();
  write_gate_ = true;
  gate_all_ = gate_all_ || all_io;
  drain_waiters_.push_back(std::move(when_drained));
  RunDrainWaiters();
}

void Volume::RunDrainWaiters() {
  // Deferred so a waiter never runs inside a completion callback chain.
  reactor_->Defer([this] {
    if (drain_waiters_.empty()) return;
    if (mutating_in_flight_ != 0 || (gate_all_ && reads_in_flight_ != 0)) return;
    auto waiters = std::move(drain_waiters_);
    drain_waiters_.clear();
    for (auto& w : waiters) w();
  });
}

void Volume::UngateWrites() {
  counters_.last_write_pause_ns.store(Clock::Real()->NowNanos() - gate_start_ns_,
                                      std::memory_order_relaxed);
  write_gate_ = false;
  gate_all_ = false;
  std::deque<VolumeIo*> resume;
  resume.swap(gated_);
  for (VolumeIo* io : resume) {
    if (IsMutating(io->op)) {
      ++mutating_in_flight_;
    } else {
      ++reads_in_flight_;
    }
    Dispatch(io);
  }
}

// ---------------------------------------------------------------------------------------------
// Requests and device ops

Volume::Request* Volume::NewRequest(VolumeIo* io) {
  Request* r = free_requests_;
  if (r != nullptr) {
    free_requests_ = r->next_free;
  } else {
    r = new Request();
    r->vol = this;
  }
  r->io = io;
  r->is_write = false;
  r->precut = false;
  r->live_prev = r->live_next = nullptr;
  r->pending = 0;
  r->status = Status::Ok();
  r->segs.clear();
  r->ops.clear();
  return r;
}

void Volume::FreeRequest(Request* r) {
  r->io = nullptr;
  if (r->ops.capacity() > 64) r->ops = {};
  if (r->segs.capacity() > 64) r->segs = {};
  r->next_free = free_requests_;
  free_requests_ = r;
}

void Volume::AddDeviceOp(Request* r, IoOp op, uint64_t dev_offset, uint8_t* buf, uint64_t len) {
  if (!r->ops.empty()) {
    IoRequest& last = r->ops.back();
    if (last.op == op && last.offset + last.length == dev_offset &&
        static_cast<uint8_t*>(last.buf) + last.length == buf &&
        last.length + len <= kMaxMergedDeviceIo) {
      last.length += len;
      return;
    }
  }
  IoRequest& d = r->ops.emplace_back();
  d.op = op;
  d.offset = dev_offset;
  d.length = len;
  d.buf = buf;
  d.ctx = r;
  d.done = &Volume::OnDeviceDone;
}

void Volume::SubmitDeviceOps(Request* r) {
  r->pending = static_cast<uint32_t>(r->ops.size());
  if (r->pending == 0) {
    // Nothing to read from the device (all zeros): finish on the next loop turn.
    reactor_->Defer([this, r] { FinishRequest(r); });
    return;
  }
  BlockDevice& dev = pool_->device();
  if (r->is_write) {
    uint64_t bytes = 0;
    for (const IoRequest& d : r->ops) bytes += d.length;
    counters_.device_bytes_written.fetch_add(bytes, std::memory_order_relaxed);
  }
  // ops must not move while in flight: the vector is complete before the first submit.
  for (IoRequest& d : r->ops) dev.Submit(&d);
}

void Volume::LinkLiveWrite(Request* r) {
  r->live_prev = nullptr;
  r->live_next = live_writes_;
  if (live_writes_ != nullptr) live_writes_->live_prev = r;
  live_writes_ = r;
}

void Volume::UnlinkLiveWrite(Request* r) {
  if (r->live_prev != nullptr) {
    r->live_prev->live_next = r->live_next;
  } else {
    live_writes_ = r->live_next;
  }
  if (r->live_next != nullptr) r->live_next->live_prev = r->live_prev;
  r->live_prev = r->live_next = nullptr;
}

void Volume::OnDeviceDone(IoRequest* op) {
  auto* r = static_cast<Request*>(op->ctx);
  if (!op->status.ok() && r->status.ok()) r->status = op->status;
  if (--r->pending == 0) r->vol->FinishRequest(r);
}

Fragment* Volume::FindFragment(uint64_t v, uint32_t pcluster) {
  for (Fragment& f : map_.Fragments(v)) {
    if (f.pcluster == pcluster) return &f;
  }
  return nullptr;
}

void Volume::HoldSeg(Request* r, uint64_t v, uint32_t pcluster, uint64_t blocks) {
  Fragment* f = FindFragment(v, pcluster);
  SHALE_CHECK(f != nullptr, "segment without fragment");
  inflight_.Increment(pcluster);
  r->segs.push_back(Seg{v, pcluster, blocks});
}

void Volume::MarkDirty(uint64_t v) {
  uint64_t& word = dirty_bits_[v >> 6];
  uint64_t bit = 1ull << (v & 63);
  if (word & bit) return;
  word |= bit;
  dirty_list_.push_back(v);
}

// Drops fragments of v that hold nothing and have no I/O in flight. An owned data fragment
// dropped this way frees its cluster (released by the pipeline once the free is durable).
void Volume::ReapEmpty(uint64_t v) {
  bool owned_freed = false;
  map_.RemoveIf(v, [&](const Fragment& f) {
    if (f.blocks != 0 || (!f.is_zero() && inflight_.Get(f.pcluster) != 0)) return false;
    if (StoredOwned(f) && !f.is_zero()) {
      freed_.push_back(f.pcluster);
      if (f.image == head_) owned_clusters_.fetch_sub(1, std::memory_order_relaxed);
      owned_freed = true;
    } else if (StoredOwned(f)) {
      owned_freed = true;  // an owned zero fragment disappeared: the stored entry changes
    }
    return true;
  });
  if (owned_freed) MarkDirty(v);
}

void Volume::FinishRequest(Request* r) {
  VolumeIo* io = r->io;
  const bool ok = r->status.ok();
  if (r->is_write) UnlinkLiveWrite(r);
  for (const Seg& s : r->segs) {
    Fragment* f = FindFragment(s.v, s.pcluster);
    const uint32_t held = inflight_.Decrement(s.pcluster);
    SHALE_CHECK(f != nullptr && held > 0, "fragment vanished while I/O was in flight");
    if (r->precut && ok) {
      FinishPrecutSeg(s, f);
    } else if (r->is_write && ok) {
      bool changed = (s.blocks & ~f->blocks) != 0;
      f->blocks |= s.blocks;
      // The written blocks now live here only: hide them everywhere else in the view.
      for (Fragment& g : map_.Fragments(s.v)) {
        if (&g == f || !(g.blocks & s.blocks)) continue;
        g.blocks &= ~s.blocks;
        if (StoredOwned(g)) changed = true;
      }
      if (changed) MarkDirty(s.v);
      ReapEmpty(s.v);  // other fragments may have become empty
    } else if (f->blocks == 0 && inflight_.Get(f->pcluster) == 0) {
      ReapEmpty(s.v);
    }
  }
  // Bounded dirty set: what a later flush or freeze has to commit stays small whatever the
  // writer does between flushes (docs/snapshots.md, "Freeze latency").
  if (dirty_list_.size() >= kDirtyCommitThreshold && !closing_ && !failed_) Commit(nullptr);
  if (r->precut) FinishedPrecutWrite();
  Status st = std::move(r->status);
  const bool fua = r->is_write && (io->flags & kVolumeFua);
  FreeRequest(r);
  if (fua && st.ok()) return FlushAfter(io, Status::Ok());
  Complete(io, std::move(st));
}

// ---------------------------------------------------------------------------------------------
// Read

void Volume::SubmitRead(VolumeIo* io) {
  Request* r = NewRequest(io);
  const uint64_t end = io->offset + io->length;
  uint64_t pos = io->offset;
  while (pos < end) {
    const uint64_t v = pos >> cluster_shift_;
    const uint64_t cluster_end = std::min(end, (v + 1) << cluster_shift_);
    const uint32_t b0 = static_cast<uint32_t>((pos >> kBlockShift) & (blocks_per_cluster_ - 1));
    const uint32_t nb = static_cast<uint32_t>((cluster_end - pos) >> kBlockShift);
    uint8_t* dst = io->buf + (pos - io->offset);
    auto frags = map_.Fragments(v);
    uint64_t want = BlockMask(b0, nb);
    for (const Fragment& f : frags) {
      if (f.is_zero()) continue;
      uint64_t here = f.blocks & want;
      if (here == 0) continue;
      HoldSeg(r, v, f.pcluster, here);
      // Runs of consecutive blocks become one device read each (merged across clusters).
      while (here != 0) {
        uint32_t first = static_cast<uint32_t>(std::countr_zero(here));
        uint32_t run = static_cast<uint32_t>(std::countr_one(here >> first));
        uint64_t dev = data_offset_ + (static_cast<uint64_t>(f.pcluster) << cluster_shift_) +
                       (static_cast<uint64_t>(first) << kBlockShift);
        AddDeviceOp(r, IoOp::kRead, dev, dst + (static_cast<uint64_t>(first - b0) << kBlockShift),
                    static_cast<uint64_t>(run) << kBlockShift);
        here &= ~BlockMask(first, run);
      }
      want &= ~f.blocks;
    }
    // Blocks in no data fragment read as zeros.
    while (want != 0) {
      uint32_t first = static_cast<uint32_t>(std::countr_zero(want));
      uint32_t run = static_cast<uint32_t>(std::countr_one(want >> first));
      std::memset(dst + (static_cast<uint64_t>(first - b0) << kBlockShift), 0,
                  static_cast<uint64_t>(run) << kBlockShift);
      want &= ~BlockMask(first, run);
    }
    pos = cluster_end;
  }
  SubmitDeviceOps(r);
}

// ---------------------------------------------------------------------------------------------
// Write

void Volume::SubmitWrite(VolumeIo* io) {
  Request* r = NewRequest(io);
  r->is_write = true;
  const uint64_t end = io->offset + io->length;
  uint64_t pos = io->offset;
  const size_t allocated_mark = allocated_.size();
  std::vector<std::pair<uint64_t, uint32_t>> new_fragments;  // rolled back on ENOSPC
  while (pos < end) {
    const uint64_t v = pos >> cluster_shift_;
    const uint64_t cluster_end = std::min(end, (v + 1) << cluster_shift_);
    const uint32_t b0 = static_cast<uint32_t>((pos >> kBlockShift) & (blocks_per_cluster_ - 1));
    const uint32_t nb = static_cast<uint32_t>((cluster_end - pos) >> kBlockShift);
    uint8_t* src = io->buf + (pos - io->offset);
    uint64_t want = BlockMask(b0, nb);

    // Blocks already in an owned fragment are overwritten in place; the rest go to the first
    // owned data fragment's free slots, or to a newly allocated cluster.
    uint32_t primary = kNoCluster;
    struct Target {
      uint32_t pcluster;
      uint64_t blocks;
    };
    Target targets[4];
    int ntargets = 0;
    for (const Fragment& f : map_.Fragments(v)) {
      if (f.image != head_ || f.is_zero()) continue;
      if (primary == kNoCluster) primary = f.pcluster;
      uint64_t here = f.blocks & want;
      if (here != 0 && ntargets < 3) {
        targets[ntargets++] = {f.pcluster, here};
        want &= ~here;
      }
    }
    if (want != 0) {
      if (primary == kNoCluster) {
        auto c = pool_->allocator().Allocate(alloc_hint_);
        if (!c.ok()) {
          // Out of space: undo this request's effects; nothing was submitted yet.
          for (const Seg& s : r->segs) {
            const uint32_t held = inflight_.Decrement(s.pcluster);
            SHALE_CHECK(FindFragment(s.v, s.pcluster) != nullptr && held > 0,
                        "held fragment vanished");
          }
          for (auto& [vv, pc] : new_fragments) {
            map_.RemoveIf(vv, [pc = pc](const Fragment& f) { return f.pcluster == pc; });
            owned_clusters_.fetch_sub(1, std::memory_order_relaxed);
          }
          std::vector<uint32_t> undo(allocated_.begin() + static_cast<long>(allocated_mark),
                                     allocated_.end());
          allocated_.resize(allocated_mark);
          pool_->allocator().Release(undo);
          FreeRequest(r);
          return CompleteLater(io, c.TakeStatus().WithContext("write to volume '" + name_ + "'"));
        }
        primary = *c;
        alloc_hint_ = static_cast<uint64_t>(primary) + 1;
        Fragment nf;
        nf.pcluster = primary;
        nf.image = head_;
        map_.Add(v, nf);
        allocated_.push_back(primary);
        new_fragments.emplace_back(v, primary);
        owned_clusters_.fetch_add(1, std::memory_order_relaxed);
        MarkDirty(v);
      }
      // Merge with an existing target for the same cluster.
      bool merged = false;
      for (int i = 0; i < ntargets; ++i) {
        if (targets[i].pcluster == primary) {
          targets[i].blocks |= want;
          merged = true;
        }
      }
      if (!merged) targets[ntargets++] = {primary, want};
    }
    // Device writes in block order (so adjacent clusters merge into one device write).
    for (int i = 1; i < ntargets; ++i) {  // insertion sort of at most 4 targets
      for (int j = i;
           j > 0 && std::countr_zero(targets[j].blocks) < std::countr_zero(targets[j - 1].blocks);
           --j) {
        std::swap(targets[j], targets[j - 1]);
      }
    }
    for (int i = 0; i < ntargets; ++i) {
      HoldSeg(r, v, targets[i].pcluster, targets[i].blocks);
      uint64_t here = targets[i].blocks;
      while (here != 0) {
        uint32_t first = static_cast<uint32_t>(std::countr_zero(here));
        uint32_t run = static_cast<uint32_t>(std::countr_one(here >> first));
        uint64_t dev = data_offset_ +
                       (static_cast<uint64_t>(targets[i].pcluster) << cluster_shift_) +
                       (static_cast<uint64_t>(first) << kBlockShift);
        AddDeviceOp(r, IoOp::kWrite, dev, src + (static_cast<uint64_t>(first - b0) << kBlockShift),
                    static_cast<uint64_t>(run) << kBlockShift);
        here &= ~BlockMask(first, run);
      }
    }
    pos = cluster_end;
  }
  LinkLiveWrite(r);
  SubmitDeviceOps(r);
}

// ---------------------------------------------------------------------------------------------
// Discard / write-zeroes (metadata only)

void Volume::SubmitUnmap(VolumeIo* io) {
  // Discard may ignore partial blocks (TRIM is advisory); write-zeroes reaching here is aligned.
  const uint64_t begin = RoundUpToBlock(io->offset);
  const uint64_t end = RoundDownToBlock(io->offset + io->length);
  const bool has_parents = chain_.size() > 1;
  for (uint64_t pos = begin; pos < end;) {
    const uint64_t v = pos >> cluster_shift_;
    const uint64_t cluster_end = std::min(end, (v + 1) << cluster_shift_);
    const uint32_t b0 = static_cast<uint32_t>((pos >> kBlockShift) & (blocks_per_cluster_ - 1));
    const uint32_t nb = static_cast<uint32_t>((cluster_end - pos) >> kBlockShift);
    const uint64_t mask = BlockMask(b0, nb);
    uint64_t visible = 0;
    bool changed = false;
    Fragment* zero = nullptr;
    for (Fragment& f : map_.Fragments(v)) {
      if (f.is_zero() && f.image == head_) {
        zero = &f;
        continue;
      }
      uint64_t hit = f.blocks & mask;
      if (hit == 0) continue;
      visible |= hit;
      f.blocks &= ~hit;
      if (StoredOwned(f)) changed = true;
    }
    if (has_parents && visible != 0) {
      // Parent images may hold (hidden or visible) data for these blocks: mark them zero.
      if (zero == nullptr) {
        Fragment z;
        z.pcluster = kZeroCluster;
        z.image = head_;
        z.blocks = visible;
        map_.Add(v, z);
      } else {
        zero->blocks |= visible;
      }
      changed = true;
    }
    if (changed) MarkDirty(v);
    ReapEmpty(v);
    pos = cluster_end;
  }
  if (io->flags & kVolumeFua) return FlushAfter(io, Status::Ok());
  CompleteLater(io, Status::Ok());
}

// ---------------------------------------------------------------------------------------------
// Flush and commit

MapEntry Volume::StoredEntry(uint64_t v) const {
  MapEntry e;
  for (const Fragment& f : map_.Fragments(v)) {
    if (!StoredOwned(f)) continue;
    if (f.is_zero()) {
      e.zero_blocks |= f.blocks;
    } else {
      e.fragments.push_back(StoredFragment{f.pcluster, f.blocks});
    }
  }
  return e;
}

void Volume::Commit(std::function<void(const Status&)> done) {
  CommitWith(MetaBatch(), {}, {}, std::move(done));
}

void Volume::CommitWith(MetaBatch extra, std::vector<uint32_t> extra_freed,
                        std::vector<uint32_t> extra_allocated,
                        std::function<void(const Status&)> done) {
  pool_->pipeline().Submit(PrepareCommit(std::move(extra), std::move(extra_freed),
                                         std::move(extra_allocated), std::move(done)));
}

CommitPipeline::Request Volume::PrepareCommit(MetaBatch extra, std::vector<uint32_t> extra_freed,
                                              std::vector<uint32_t> extra_allocated,
                                              std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::Commit off the reactor");
  CommitPipeline::Request req;
  SHALE_CHECK(!options_.view_only || (dirty_list_.empty() && extra.empty()),
              "a view never commits");
  for (uint64_t v : dirty_list_) {
    dirty_bits_[v >> 6] &= ~(1ull << (v & 63));
    MapEntry e = StoredEntry(v);
    if (e.empty()) {
      req.batch.Delete(keys::Map(head_, v));
    } else {
      req.batch.Put(keys::Map(head_, v), e.Encode());
    }
  }
  dirty_list_.clear();
  req.allocated.swap(allocated_);
  req.freed.swap(freed_);
  req.allocated.insert(req.allocated.end(), extra_allocated.begin(), extra_allocated.end());
  req.freed.insert(req.freed.end(), extra_freed.begin(), extra_freed.end());
  if (!extra.empty()) req.batch.Append(extra);
  req.flush_device = true;
  ++commits_in_flight_;
  counters_.commits.fetch_add(1, std::memory_order_relaxed);
  Reactor* reactor = reactor_;
  req.done = [this, reactor, done = std::move(done)](const Status& st) mutable {
    reactor->Post(
        [this, st, done = std::move(done)]() mutable { OnCommitted({}, st, std::move(done)); });
  };
  return req;
}

void Volume::OnCommitted(std::vector<VolumeIo*> /*waiters*/, const Status& st,
                         std::function<void(const Status&)> done) {
  --commits_in_flight_;
  if (!st.ok() && !failed_) {
    failed_ = true;
    failure_ = st;
    SHALE_LOG_ERROR("volume commit failed; writes now fail until restart", {"volume", name_},
                    {"error", st.ToString()});
  }
  if (done) done(st);
  if (closing_) CheckCloseDone();
}

void Volume::FlushAfter(VolumeIo* io, Status /*write_status*/) {
  // Writes acknowledged since a cut may have mapped blocks only the freeze's second commit
  // carries: this flush commits after that one.
  if (ParkFlushBehindFreeze(io)) return;
  // Fast path: nothing to commit and no earlier commit pending -> a plain device flush.
  if (dirty_list_.empty() && allocated_.empty() && freed_.empty() && commits_in_flight_ == 0) {
    Request* r = NewRequest(io);
    IoRequest& d = r->ops.emplace_back();
    d.op = IoOp::kFlush;
    d.ctx = r;
    d.done = &Volume::OnDeviceDone;
    r->pending = 1;
    pool_->device().Submit(&d);
    return;
  }
  Commit([this, io](const Status& st) { Complete(io, st); });
}

void Volume::SubmitFlush(VolumeIo* io) { FlushAfter(io, Status::Ok()); }

// ---------------------------------------------------------------------------------------------
// Lifecycle

void Volume::Start() {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::Start off the reactor");
  ArmCommitTimer();
}

void Volume::ArmCommitTimer() {
  if (options_.commit_interval_ns == 0 || closing_ || options_.view_only) return;
  timer_id_ = reactor_->AddTimer(options_.commit_interval_ns, [this] {
    timer_id_ = 0;
    if (closing_) return;
    if (!failed_ && (!dirty_list_.empty() || !freed_.empty() || !allocated_.empty()))
      Commit(nullptr);
    ArmCommitTimer();
  });
}

void Volume::Grow(uint64_t new_size) {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::Grow off the reactor");
  if (new_size <= size_bytes()) return;
  map_.Grow((new_size + cluster_size_ - 1) / cluster_size_);
  dirty_bits_.resize((map_.size() + 63) / 64, 0);
  size_bytes_.store(new_size, std::memory_order_release);
}

void Volume::Close(std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::Close off the reactor");
  closing_ = true;
  if (timer_id_ != 0) {
    reactor_->CancelTimer(timer_id_);
    timer_id_ = 0;
  }
  close_done_ = std::move(done);
  CheckCloseDone();
}

void Volume::CheckCloseDone() {
  if (!close_done_ || requests_in_flight_ != 0) return;
  if (!dirty_list_.empty() || !allocated_.empty() || !freed_.empty()) {
    if (failed_) {
      auto done = std::move(close_done_);
      close_done_ = nullptr;
      return done(failure_);
    }
    Commit(nullptr);
    return;
  }
  if (commits_in_flight_ != 0) return;
  auto done = std::move(close_done_);
  close_done_ = nullptr;
  done(failed_ ? failure_ : Status::Ok());
}

// ---------------------------------------------------------------------------------------------
// Space queries

Volume::SpaceUsage Volume::Usage() const {
  SpaceUsage u;
  map_.ForEach([&](uint64_t, std::span<const Fragment> frags) {
    for (const Fragment& f : frags) {
      if (f.is_zero()) continue;
      const uint64_t bytes = static_cast<uint64_t>(std::popcount(f.blocks)) * kBlockSize;
      if (f.image == head_) {
        u.owned_bytes += cluster_size_;
        u.written_bytes += bytes;
      } else {
        u.shared_bytes += bytes;
      }
    }
  });
  return u;
}

std::vector<Volume::Extent> Volume::QueryAllocation(uint64_t offset, uint64_t length,
                                                    size_t max_extents) const {
  std::vector<Extent> out;
  const uint64_t size = size_bytes();
  if (offset >= size || length == 0 || max_extents == 0) return out;
  const uint64_t end = std::min(size, offset + length);
  if (data_elsewhere()) return {Extent{end - offset, /*zero=*/false}};
  uint64_t pos = offset;
  while (pos < end) {
    const uint64_t v = pos >> cluster_shift_;
    const uint32_t b = static_cast<uint32_t>((pos >> kBlockShift) & (blocks_per_cluster_ - 1));
    bool zero = true;
    for (const Fragment& f : map_.Fragments(v)) {
      if (!f.is_zero() && (f.blocks >> b) & 1) {
        zero = false;
        break;
      }
    }
    const uint64_t next = std::min(end, RoundDownToBlock(pos) + kBlockSize);
    const uint64_t len = next - pos;
    if (!out.empty() && out.back().zero == zero) {
      out.back().length += len;
    } else {
      if (out.size() == max_extents) break;
      out.push_back(Extent{len, zero});
    }
    pos = next;
  }
  return out;
}

std::vector<uint32_t> Volume::OwnedClusters() const {
  std::vector<uint32_t> out;
  map_.ForEach([&](uint64_t, std::span<const Fragment> frags) {
    for (const auto& f : frags) {
      if (f.image == head_ && !f.is_zero()) out.push_back(f.pcluster);
    }
  });
  return out;
}

}  // namespace shale
