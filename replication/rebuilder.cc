#include "replication/rebuilder.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "engine/common/assert.h"
#include "engine/common/checksum.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "engine/volume/volume.h"
#include "replication/changed_regions.h"
#include "replication/replication_layer.h"

namespace shale::replication {

// One region of a window: a read of the source and (remote target, compared) the target's block
// hashes, then writes of the blocks that differ.
struct Rebuilder::RegionCopy {
  Copy* copy = nullptr;
  ChildIo read;
  ChildIo hash;
  std::vector<std::unique_ptr<ChildIo>> writes;
  uint32_t pending = 0;
  bool sending = false;
};

// One window in flight (regions copied in parallel under one range lock).
struct Rebuilder::Copy {
  Rebuilder* owner = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t lock = 0;                   // the layer's range lock
  BackgroundAdmission::Done admitted;  // releases the window's admission
  AlignedBuffer buf;
  uint64_t buf_cap = 0;  // the buffer's size (BufferCache)
  std::vector<RegionCopy> regions;
  uint32_t pending = 0;  // regions not done
  uint64_t compared_blocks = 0, differing_blocks = 0;
  Status status;
};

namespace {
uint64_t WindowBytes(const Rebuilder::Options& o) {
  return std::max<uint64_t>(o.window_regions, 1) * kRegionBytes;
}
}  // namespace

Rebuilder::Rebuilder(Reactor* reactor, ReplicationLayer* layer, ChangedRegions* changed,
                     std::string source, std::string target, Options options)
    : reactor_(reactor),
      layer_(layer),
      changed_(changed),
      source_(std::move(source)),
      target_(std::move(target)),
      options_(options),
      buffers_(std::max<uint64_t>(options.windows_in_flight, 1) * WindowBytes(options)) {}

Rebuilder::~Rebuilder() { SHALE_CHECK(!running_, "Rebuilder destroyed while copying"); }

void Rebuilder::MarkAllocated(Volume* source, ChangedRegions* changed, const std::string& node,
                              std::function<void(Status)> done) {
  // The regions with a data block, as region-aligned byte ranges.
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  const uint64_t size = source->size_bytes();
  uint64_t pos = 0;
  for (int rounds = 0; pos < size && rounds < (1 << 20); ++rounds) {
    const std::vector<Volume::Extent> extents = source->QueryAllocation(pos, size - pos, 4096);
    if (extents.empty()) break;
    for (const Volume::Extent& e : extents) {
      if (!e.zero && e.length > 0) {
        const uint64_t first = pos / kRegionBytes * kRegionBytes;
        const uint64_t end =
            std::min(size, (pos + e.length + kRegionBytes - 1) / kRegionBytes * kRegionBytes);
        if (!ranges.empty() && ranges.back().first + ranges.back().second >= first) {
          ranges.back().second = std::max(ranges.back().second, end - ranges.back().first);
        } else {
          ranges.emplace_back(first, end - first);
        }
      }
      pos += e.length;
    }
  }
  struct Marks {
    size_t pending = 1;
    Status first;
    std::function<void(Status)> done;
  };
  auto marks = std::make_shared<Marks>();
  marks->done = std::move(done);
  auto one = [marks](Status st) {
    if (!st.ok() && marks->first.ok()) marks->first = st;
    if (--marks->pending == 0) marks->done(marks->first);
  };
  marks->pending += ranges.size();
  for (const auto& [off, len] : ranges) changed->Mark({node}, off, len, one);
  source->reactor()->Post([one] { one(Status::Ok()); });
}

void Rebuilder::Start(std::function<void(Status)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && !running_, "Rebuilder::Start");
  done_ = std::move(done);
  ranges_ = changed_->Ranges(target_);
  progress_ = {};
  for (const auto& [off, len] : ranges_) progress_.total_bytes += len;
  range_index_ = 0;
  range_done_ = 0;
  since_persist_ = 0;
  started_bytes_ = 0;
  in_flight_ = 0;
  persisting_ = false;
  compare_all_ = true;
  probe_countdown_ = 0;
  failed_ = Status::Ok();
  started_ = std::chrono::steady_clock::now();
  pace_from_ = started_;
  pace_bytes_ = 0;
  running_ = true;
  SHALE_LOG_INFO("replication: rebuild started", {"from", source_}, {"to", target_},
                 {"bytes", progress_.total_bytes}, {"ranges", ranges_.size()});
  reactor_->Post([this] { Next(); });
}

void Rebuilder::Cancel() { cancelled_ = true; }

void Rebuilder::SetRate(uint64_t bps) {
  options_.bps = bps;
  pace_from_ = std::chrono::steady_clock::now();
  pace_bytes_ = started_bytes_;
}

bool Rebuilder::Paced() {
  if (options_.bps == 0) return false;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - pace_from_).count();
  const double allowed = elapsed * static_cast<double>(options_.bps);
  const double started = static_cast<double>(started_bytes_ - pace_bytes_);
  if (started <= allowed) return false;
  const double wait_s = (started - allowed) / static_cast<double>(options_.bps);
  timer_armed_ = true;
  reactor_->AddTimer(static_cast<uint64_t>(std::min(wait_s, 1.0) * 1e9), [this] {
    timer_armed_ = false;
    Next();
  });
  return true;
}

// Starts windows while fewer than windows_in_flight are, the cap allows and no persist is due;
// ends the rebuild once the last window is done (or, after an error or Cancel, the windows in
// flight are).
void Rebuilder::Next() {
  if (!running_ || timer_armed_ || persisting_) return;  // the timer or the persist calls again
  if (cancelled_ && failed_.ok()) failed_ = Status::Aborted("rebuild cancelled");
  for (;;) {
    if (!failed_.ok()) {
      if (in_flight_ == 0) Finish(failed_);
      return;
    }
    while (range_index_ < ranges_.size() && range_done_ >= ranges_[range_index_].second) {
      ++range_index_;
      range_done_ = 0;
    }
    const bool all_started = range_index_ == ranges_.size();
    if (all_started || since_persist_ >= options_.persist_bytes) {
      // The windows started must be done before the flush that makes their clears true.
      if (in_flight_ > 0) return;
      persisting_ = true;
      since_persist_ = 0;
      return Persist([this, all_started] {
        persisting_ = false;
        if (all_started) return Finish(Status::Ok());
        Next();
      });
    }
    // Clients busy on the device: one small window at a time, so they wait behind little.
    const bool busy = options_.admission != nullptr && options_.admission->ForegroundBusy();
    const uint32_t max_windows = busy ? 1 : std::max<uint32_t>(options_.windows_in_flight, 1);
    const uint32_t regions =
        std::max<uint32_t>(1, busy ? std::min(options_.busy_window_regions, options_.window_regions)
                                   : options_.window_regions);
    if (in_flight_ >= max_windows || Paced()) return;
    if (busy) ++progress_.busy_windows;
    const auto& [off, len] = ranges_[range_index_];
    auto* copy = new Copy();
    copy->owner = this;
    copy->offset = off + range_done_;
    copy->length = std::min(uint64_t{regions} * kRegionBytes, len - range_done_);
    range_done_ += copy->length;
    since_persist_ += copy->length;
    started_bytes_ += copy->length;
    ++in_flight_;
    if (options_.admission == nullptr) {
      CopyWindow(copy);
      continue;
    }
    options_.admission->Admit(copy->length, [this, copy](BackgroundAdmission::Done admitted) {
      copy->admitted = std::move(admitted);
      CopyWindow(copy);
    });
  }
}

void Rebuilder::CopyWindow(Copy* copy) {
  // Always a whole window's buffer, so that the small windows of a busy device reuse it too.
  copy->buf = buffers_.Get(WindowBytes(options_), &copy->buf_cap);
  progress_.window_buffers = buffers_.allocations();
  copy->regions = std::vector<RegionCopy>((copy->length + kRegionBytes - 1) / kRegionBytes);
  copy->lock = layer_->LockRange(copy->offset, copy->length, [this, copy] {
    std::shared_ptr<ReplicaTarget> target = layer_->Target(target_);
    const bool can_hash = target != nullptr && target->can_hash();
    copy->pending = static_cast<uint32_t>(copy->regions.size());
    for (size_t i = 0; i < copy->regions.size(); ++i) {
      RegionCopy& rc = copy->regions[i];
      rc.copy = copy;
      // Sending whole (compare_all_ false), one region in window_regions is still compared:
      // the probe that tells when the target's copy stops differing everywhere.
      const bool compare = compare_all_ || probe_countdown_ == 0;
      probe_countdown_ =
          compare ? std::max<uint32_t>(options_.window_regions, 1) - 1 : probe_countdown_ - 1;
      if (compare_all_) probe_countdown_ = 0;
      rc.pending = can_hash && compare ? 2 : 1;
      rc.read.io.op = VolumeOp::kRead;
      rc.read.io.offset = copy->offset + i * kRegionBytes;
      rc.read.io.length = std::min<uint64_t>(kRegionBytes, copy->length - i * kRegionBytes);
      rc.read.io.buf = copy->buf.get() + i * kRegionBytes;
      rc.read.io.io_class = IoClass::kBackground;
      rc.read.owner = &rc;
      rc.read.done = &Rebuilder::OnChild;
      rc.hash.io = rc.read.io;
      rc.hash.io.buf = nullptr;
      rc.hash.owner = &rc;
      rc.hash.done = &Rebuilder::OnChild;
    }
    // Submitted after every region is set up: a completion may finish the window.
    for (RegionCopy& rc : copy->regions) {
      if (rc.pending == 2) target->SubmitHash(&rc.hash, kRebuildBlockBytes);
      layer_->SubmitTo(source_, &rc.read);
    }
  });
}

void Rebuilder::OnChild(ChildIo* child) {
  auto* rc = static_cast<RegionCopy*>(child->owner);
  Copy* copy = rc->copy;
  Rebuilder* self = copy->owner;
  if (!child->io.status.ok() && copy->status.ok()) {
    const std::string what = child == &rc->read   ? "read from " + self->source_
                             : child == &rc->hash ? "hash on " + self->target_
                                                  : "write to " + self->target_;
    copy->status = child->io.status.WithContext(what);
  }
  if (--rc->pending > 0) return;
  if (!rc->sending && copy->status.ok()) {
    rc->sending = true;
    self->SendDiff(rc);
    if (rc->pending > 0) return;
  }
  if (--copy->pending > 0) return;
  self->WindowDone(copy);
}

// Sends the blocks of the region that differ on the target (all of them when the target cannot
// hash): runs of differing blocks, a run of zeros as WRITE_ZEROES (no data, no space).
void Rebuilder::SendDiff(RegionCopy* rc) {
  const VolumeIo& read = rc->read.io;
  const uint64_t blocks = (read.length + kRebuildBlockBytes - 1) / kRebuildBlockBytes;
  const std::vector<Hash128>& theirs = rc->hash.remote.hashes;
  const bool compare = rc->hash.target != nullptr && theirs.size() == blocks;
  std::vector<bool> differ(blocks, true);
  if (compare) {
    for (uint64_t b = 0; b < blocks; ++b) {
      const uint64_t at = b * kRebuildBlockBytes;
      differ[b] =
          !(HashContent128(read.buf + at,
                           std::min<uint64_t>(kRebuildBlockBytes, read.length - at)) == theirs[b]);
      rc->copy->differing_blocks += differ[b] ? 1 : 0;
    }
    rc->copy->compared_blocks += blocks;
    progress_.compared_bytes += read.length;
  }
  const auto differs = [&](uint64_t b) { return bool(differ[b]); };
  const auto zero = [&](uint64_t from, uint64_t len) {
    for (uint64_t k = 0; k + 8 <= len; k += 8) {
      uint64_t w;
      std::memcpy(&w, read.buf + from + k, sizeof(w));
      if (w != 0) return false;
    }
    return true;
  };
  for (uint64_t b = 0; b < blocks;) {
    if (!differs(b)) {
      ++b;
      continue;
    }
    uint64_t e = b + 1;
    while (e < blocks && differs(e)) ++e;
    const uint64_t from = b * kRebuildBlockBytes;
    const uint64_t len = std::min(e * kRebuildBlockBytes, read.length) - from;
    auto w = std::make_unique<ChildIo>();
    w->io.op = zero(from, len) ? VolumeOp::kWriteZeroes : VolumeOp::kWrite;
    w->io.offset = read.offset + from;
    w->io.length = len;
    w->io.buf = w->io.op == VolumeOp::kWrite ? read.buf + from : nullptr;
    w->io.io_class = IoClass::kBackground;
    w->owner = rc;
    w->done = &Rebuilder::OnChild;
    if (w->io.op == VolumeOp::kWrite) progress_.sent_bytes += len;
    rc->writes.push_back(std::move(w));
    b = e;
  }
  rc->pending = static_cast<uint32_t>(rc->writes.size());
  for (auto& w : rc->writes) layer_->SubmitTo(target_, w.get());
}

void Rebuilder::WindowDone(Copy* copy) {
  std::unique_ptr<Copy> owned(copy);
  layer_->UnlockRange(copy->lock);
  if (copy->admitted) std::exchange(copy->admitted, nullptr)();
  buffers_.Put(std::move(copy->buf), copy->buf_cap);
  --in_flight_;
  if (!copy->status.ok()) {
    if (failed_.ok()) failed_ = copy->status;
    return Next();
  }
  const uint64_t first = copy->offset / kRegionBytes;
  const uint64_t last = (copy->offset + copy->length - 1) / kRegionBytes;
  for (uint64_t r = first; r <= last; ++r) changed_->Clear(target_, r);
  progress_.done_bytes += copy->length;
  if (copy->compared_blocks > 0) {
    compare_all_ = options_.whole_above <= 0 ||
                   static_cast<double>(copy->differing_blocks) <
                       options_.whole_above * static_cast<double>(copy->compared_blocks);
  }
  Next();
}

void Rebuilder::Persist(std::function<void()> then) {
  // The target must hold the copied data durably before the record says it does.
  auto* flush = new ChildIo();
  flush->io.op = VolumeOp::kFlush;
  struct Ctx {
    Rebuilder* self;
    std::function<void()> then;
  };
  flush->owner = new Ctx{this, std::move(then)};
  flush->done = [](ChildIo* c) {
    std::unique_ptr<ChildIo> owned(c);
    std::unique_ptr<Ctx> ctx(static_cast<Ctx*>(c->owner));
    Rebuilder* self = ctx->self;
    if (!c->io.status.ok()) return self->Finish(c->io.status.WithContext("flush " + self->target_));
    self->changed_->Persist([self, next = std::move(ctx->then)](Status st) {
      if (!st.ok()) return self->Finish(st.WithContext("record rebuild progress"));
      next();
    });
  };
  layer_->SubmitTo(target_, flush);
}

void Rebuilder::Finish(Status status) {
  if (!running_) return;
  running_ = false;
  buffers_.Clear();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  if (status.ok()) {
    SHALE_LOG_INFO("replication: rebuild finished", {"from", source_}, {"to", target_},
                   {"bytes", progress_.done_bytes}, {"sent", progress_.sent_bytes},
                   {"compared", progress_.compared_bytes},
                   {"small_windows", progress_.busy_windows}, {"seconds", secs});
  } else {
    SHALE_LOG_WARN("replication: rebuild stopped", {"from", source_}, {"to", target_},
                   {"bytes", progress_.done_bytes}, {"error", status.ToString()});
  }
  auto done = std::move(done_);
  done_ = nullptr;
  if (done) done(status);
}

}  // namespace shale::replication
