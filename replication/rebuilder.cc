#include "replication/rebuilder.h"

#include <algorithm>
#include <cstring>

#include "engine/common/assert.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/changed_regions.h"
#include "replication/replication_layer.h"

namespace shale::replication {

// One window in flight: per region a read from the source, then a write (or write-zeroes) to
// the target.
struct Rebuilder::Copy {
  Rebuilder* owner = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  AlignedBuffer buf;
  std::vector<ChildIo> children;  // one per region; phase 0 read, 1 write
  std::vector<uint8_t> phase;
  uint32_t pending = 0;
  Status status;
};

Rebuilder::Rebuilder(Reactor* reactor, ReplicationLayer* layer, ChangedRegions* changed,
                     std::string source, std::string target, Options options)
    : reactor_(reactor),
      layer_(layer),
      changed_(changed),
      source_(std::move(source)),
      target_(std::move(target)),
      options_(options) {}

Rebuilder::~Rebuilder() { SHALE_CHECK(!running_, "Rebuilder destroyed while copying"); }

void Rebuilder::Start(std::function<void(Status)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && !running_, "Rebuilder::Start");
  done_ = std::move(done);
  ranges_ = changed_->Ranges(target_);
  progress_ = {};
  for (const auto& [off, len] : ranges_) progress_.total_bytes += len;
  range_index_ = 0;
  range_done_ = 0;
  since_persist_ = 0;
  started_ = std::chrono::steady_clock::now();
  running_ = true;
  SHALE_LOG_INFO("replication: rebuild started", {"from", source_}, {"to", target_},
                 {"bytes", progress_.total_bytes}, {"ranges", ranges_.size()});
  reactor_->Post([this] { Next(); });
}

void Rebuilder::Cancel() { cancelled_ = true; }

void Rebuilder::Next() {
  if (cancelled_) return Finish(Status::Aborted("rebuild cancelled"));
  while (range_index_ < ranges_.size() && range_done_ >= ranges_[range_index_].second) {
    ++range_index_;
    range_done_ = 0;
  }
  if (range_index_ == ranges_.size()) {
    return Persist([this] { Finish(Status::Ok()); });
  }
  // Pacing: not ahead of bps since the start.
  if (options_.bps > 0) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    const double allowed = elapsed * static_cast<double>(options_.bps);
    if (static_cast<double>(progress_.done_bytes) > allowed) {
      const double wait_s =
          (static_cast<double>(progress_.done_bytes) - allowed) / static_cast<double>(options_.bps);
      const uint64_t wait_ns = static_cast<uint64_t>(std::min(wait_s, 1.0) * 1e9);
      reactor_->AddTimer(wait_ns, [this] { Next(); });
      return;
    }
  }
  const auto& [off, len] = ranges_[range_index_];
  const uint64_t window = uint64_t{options_.window_regions} * kRegionBytes;
  const uint64_t start = off + range_done_;
  const uint64_t length = std::min(window, len - range_done_);
  range_done_ += length;
  CopyWindow(start, length);
}

void Rebuilder::CopyWindow(uint64_t offset, uint64_t length) {
  auto* copy = new Copy();
  copy->owner = this;
  copy->offset = offset;
  copy->length = length;
  copy->buf = AllocateAligned(length);
  const size_t regions = (length + kRegionBytes - 1) / kRegionBytes;
  copy->children.resize(regions);
  copy->phase.assign(regions, 0);
  layer_->LockRange(offset, length, [this, copy, regions] {
    copy->pending = static_cast<uint32_t>(regions);
    for (size_t i = 0; i < regions; ++i) {
      ChildIo& c = copy->children[i];
      c.io = VolumeIo();
      c.io.op = VolumeOp::kRead;
      c.io.offset = copy->offset + i * kRegionBytes;
      c.io.length = std::min<uint64_t>(kRegionBytes, copy->length - i * kRegionBytes);
      c.io.buf = copy->buf.get() + i * kRegionBytes;
      c.io.io_class = IoClass::kBackground;
      c.owner = copy;
      c.done = &Rebuilder::OnChild;
      layer_->SubmitTo(source_, &c);
    }
  });
}

void Rebuilder::OnChild(ChildIo* child) {
  auto* copy = static_cast<Copy*>(child->owner);
  Rebuilder* self = copy->owner;
  const size_t i = static_cast<size_t>(child - copy->children.data());
  if (!child->io.status.ok()) {
    if (copy->status.ok()) {
      copy->status = child->io.status.WithContext(
          std::string(copy->phase[i] == 0 ? "read from " + self->source_
                                          : "write to " + self->target_));
    }
  } else if (copy->phase[i] == 0) {
    // The region is read: send it (holes as zeroes, which take no space on the target).
    copy->phase[i] = 1;
    const uint8_t* data = child->io.buf;
    bool zero = true;
    for (uint64_t k = 0; k < child->io.length && zero; k += 8) {
      uint64_t w;
      std::memcpy(&w, data + k, sizeof(w));
      zero = w == 0;
    }
    child->io.op = zero ? VolumeOp::kWriteZeroes : VolumeOp::kWrite;
    child->io.status = Status::Ok();
    self->layer_->SubmitTo(self->target_, child);
    return;
  }
  if (--copy->pending > 0) return;
  self->WindowDone(copy);
}

void Rebuilder::WindowDone(Copy* copy) {
  layer_->UnlockRange();
  std::unique_ptr<Copy> owned(copy);
  if (!copy->status.ok()) return Finish(copy->status);
  const uint64_t first = copy->offset / kRegionBytes;
  const uint64_t last = (copy->offset + copy->length - 1) / kRegionBytes;
  for (uint64_t r = first; r <= last; ++r) changed_->Clear(target_, r);
  progress_.done_bytes += copy->length;
  since_persist_ += copy->length;
  if (since_persist_ >= options_.persist_bytes) {
    since_persist_ = 0;
    return Persist([this] { Next(); });
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
    auto then = std::move(ctx->then);
    self->changed_->Persist([self, then = std::move(then)](Status st) {
      if (!st.ok()) return self->Finish(st.WithContext("record rebuild progress"));
      then();
    });
  };
  layer_->SubmitTo(target_, flush);
}

void Rebuilder::Finish(Status status) {
  if (!running_) return;
  running_ = false;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  if (status.ok()) {
    SHALE_LOG_INFO("replication: rebuild finished", {"from", source_}, {"to", target_},
                   {"bytes", progress_.done_bytes}, {"seconds", secs});
  } else {
    SHALE_LOG_WARN("replication: rebuild stopped", {"from", source_}, {"to", target_},
                   {"bytes", progress_.done_bytes}, {"error", status.ToString()});
  }
  auto done = std::move(done_);
  done_ = nullptr;
  if (done) done(status);
}

}  // namespace shale::replication
