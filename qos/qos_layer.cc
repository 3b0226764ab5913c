#include "qos/qos_layer.h"

#include <algorithm>

#include "engine/common/assert.h"
#include "engine/io/reactor.h"
#include "qos/background_units.h"

namespace shale::qos {

std::shared_ptr<QosLayer> QosLayer::Create(VolumeLayer* next, Reactor* reactor,
                                           std::shared_ptr<PoolScheduler> scheduler,
                                           const QosSettings& settings, const Options& options) {
  SHALE_CHECK(settings.Validate().ok(),
              "QosLayer::Create with invalid settings: ", settings.ToString());
  std::shared_ptr<QosLayer> layer(
      new QosLayer(next, reactor, std::move(scheduler), settings, options));
  layer->client_ = layer->scheduler_->Register(std::weak_ptr<PoolScheduler::Sink>(layer), reactor,
                                               layer->SchedParams());
  return layer;
}

QosLayer::QosLayer(VolumeLayer* next, Reactor* reactor, std::shared_ptr<PoolScheduler> scheduler,
                   const QosSettings& settings, const Options& options)
    : next_(next),
      reactor_(reactor),
      scheduler_(std::move(scheduler)),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      options_(options),
      settings_(settings.Normalized()) {
  start_ns_ = clock_->NowNanos();
  limiter_.Configure(settings_, start_ns_);
}

QosLayer::~QosLayer() {
  SHALE_CHECK(head_ == nullptr && in_flight_ == 0,
              "QosLayer destroyed with requests queued or in flight");
  if (client_ != nullptr) scheduler_->Unregister(client_);
  // An armed timer holds only a weak reference; cancel it when we can (on the reactor).
  if (timer_id_ != 0 && reactor_->IsCurrent()) reactor_->CancelTimer(timer_id_);
}

PoolScheduler::ClientParams QosLayer::SchedParams() const {
  return {static_cast<uint32_t>(settings_.weight),
          static_cast<uint64_t>(settings_.reservation_iops),
          static_cast<uint64_t>(settings_.iops_unit)};
}

uint32_t QosLayer::Waiting() const { return held_ + scheduler_->pending(client_); }

void QosLayer::Submit(VolumeIo* io) {
  if (io->op == VolumeOp::kFlush) {
    next_->Submit(io);
    return;
  }
  if (Waiting() >= options_.max_queued) {
    Reject(io);
    return;
  }
  if (io->io_class == IoClass::kBackground || (head_ == nullptr && !limiter_.enabled())) {
    scheduler_->Submit(client_, io);
    return;
  }
  const uint64_t now = clock_->NowNanos();
  if (head_ != nullptr) {  // keep the order; the timer is armed for the head
    Enqueue(io, now);
    return;
  }
  if (limiter_.Admit(CostOf(io->op, io->flags, io->length, limiter_.iops_unit()), now) == 0) {
    scheduler_->Submit(client_, io);
    return;
  }
  Enqueue(io, now);
  ArmTimer(now);
}

void QosLayer::Reject(VolumeIo* io) {
  ++rejected_;
  const uint32_t bound = options_.max_queued;
  reactor_->Defer([io, bound] {
    io->status =
        Status::Busy("qos: volume queue full (" + std::to_string(bound) + " requests waiting)");
    io->done(io);
  });
}

void QosLayer::Enqueue(VolumeIo* io, uint64_t now) {
  io->layer_state[0] = nullptr;
  io->layer_value[0] = now;
  if (tail_ != nullptr) {
    tail_->layer_state[0] = io;
  } else {
    head_ = io;
    throttled_since_ = now;
  }
  tail_ = io;
  ++held_;
  ++throttled_requests_;
}

void QosLayer::Poll() { PollLate(0); }

void QosLayer::PollLate(uint64_t late_ns) {
  const uint64_t now = clock_->NowNanos();
  while (head_ != nullptr) {
    VolumeIo* io = head_;
    if (limiter_.Admit(CostOf(io->op, io->flags, io->length, limiter_.iops_unit()), now, late_ns) !=
        0)
      break;
    head_ = static_cast<VolumeIo*>(io->layer_state[0]);
    if (head_ == nullptr) {
      tail_ = nullptr;
      throttled_ns_ += now - std::min(now, throttled_since_);
    }
    io->layer_state[0] = nullptr;
    --held_;
    scheduler_->Submit(client_, io);
  }
  if (late_ns != 0) limiter_.ClampToCapacity();
  if (head_ != nullptr) {
    ArmTimer(now);
  } else if (timer_id_ != 0) {
    reactor_->CancelTimer(timer_id_);
    timer_id_ = 0;
  }
}

void QosLayer::ArmTimer(uint64_t now) {
  const RequestCost cost = CostOf(head_->op, head_->flags, head_->length, limiter_.iops_unit());
  const uint64_t first = std::max<uint64_t>(1, limiter_.NanosUntil(cost, 1, now));
  // Batch: wait until about half the queue could pass, but never more than the slack after
  // the head could. Tokens accrue meanwhile (the bucket holds q >> slack), so rates are exact.
  const uint64_t batch = std::max<uint32_t>(1, held_ / 2);
  uint64_t delay = first;
  if (batch > 1 && options_.timer_slack_ns > 0) {
    const uint64_t all = limiter_.NanosUntil(cost, batch, now);
    delay = std::max(first, std::min(all, first + options_.timer_slack_ns));
  }
  delay = std::max(delay, options_.min_timer_ns);
  const uint64_t deadline = now + delay;
  if (timer_id_ != 0) {
    if (timer_deadline_ == deadline) return;
    reactor_->CancelTimer(timer_id_);
  }
  timer_deadline_ = deadline;
  timer_id_ = reactor_->AddTimer(delay, [weak = weak_from_this()] {
    if (auto self = weak.lock()) self->OnTimer();
  });
}

void QosLayer::OnTimer() {
  timer_id_ = 0;
  ++timer_fires_;
  // A reactor busy elsewhere (or descheduled on a loaded machine) runs the timer late; the
  // requests waited all along, so the tokens of the late part are theirs (beyond r*q).
  // (The slack before the deadline was asked for and fits in the bucket: q >> slack.)
  const uint64_t now = clock_->NowNanos();
  PollLate(now > timer_deadline_ ? now - timer_deadline_ : 0);
}

void QosLayer::Apply(const QosSettings& settings) {
  SHALE_CHECK(settings.Validate().ok(),
              "QosLayer::Apply with invalid settings: ", settings.ToString());
  settings_ = settings.Normalized();
  limiter_.Configure(settings_, clock_->NowNanos());
  scheduler_->SetParams(client_, SchedParams());
  if (timer_id_ != 0) {  // the head's wait changed with the rates
    reactor_->CancelTimer(timer_id_);
    timer_id_ = 0;
  }
  Poll();
}

void QosLayer::Admit(uint64_t bytes, std::function<void(Done done)> go) {
  SubmitBackgroundUnit(scheduler_.get(), client_, bytes, std::move(go), shared_from_this());
}

void QosLayer::DispatchReady(VolumeIo* io) {
  if (IsBackgroundUnit(io)) {
    ++admitted_;
    // The layer (and its scheduler client) outlives the unit.
    StartBackgroundUnit(io, reactor_, [self = shared_from_this()] {
      --self->admitted_;
      self->scheduler_->Complete(self->client_);
    });
    return;
  }
  io->layer_state[0] = io->ctx;
  io->layer_value[0] = reinterpret_cast<uintptr_t>(io->done);
  io->ctx = this;
  io->done = &QosLayer::OnDone;
  ++in_flight_;
  next_->Submit(io);
}

void QosLayer::OnDone(VolumeIo* io) {
  auto* self = static_cast<QosLayer*>(io->ctx);
  io->ctx = io->layer_state[0];
  io->done = reinterpret_cast<void (*)(VolumeIo*)>(io->layer_value[0]);
  io->layer_state[0] = nullptr;
  io->layer_value[0] = 0;
  --self->in_flight_;
  self->RecordCompletion(io, self->clock_->NowNanos());
  self->scheduler_->Complete(self->client_);
  io->done(io);  // may release the last reference to the layer: nothing after this
}

void QosLayer::RecordCompletion(const VolumeIo* io, uint64_t now) {
  if (!io->status.ok()) {
    ++errors_;
    return;
  }
  // Directions and bytes as CostOf counts them (without its division: this runs per request).
  const bool read = io->op == VolumeOp::kRead;
  const bool data = read || io->op == VolumeOp::kWrite ||
                    (io->op == VolumeOp::kWriteZeroes && (io->flags & kVolumeNoUnmap) != 0);
  const uint64_t bytes = data ? io->length : 0;
  const uint64_t epoch = now / kSlotNs;
  Slot& slot = slots_[epoch % kSlots];
  if (slot.epoch != epoch) slot = Slot{.epoch = epoch};
  if (read) {
    ++reads_;
    bytes_read_ += bytes;
    ++slot.reads;
    slot.read_bytes += bytes;
  } else {
    ++writes_;
    bytes_written_ += bytes;
    ++slot.writes;
    slot.write_bytes += bytes;
  }
}

QosStats QosLayer::Stats() const {
  QosStats s;
  const uint64_t now = clock_->NowNanos();
  s.settings = settings_;
  s.open = true;
  const uint64_t epoch = now / kSlotNs;
  const uint64_t first_epoch = epoch >= kSlots - 1 ? epoch - (kSlots - 1) : 0;
  const uint64_t window_start = std::max(start_ns_, first_epoch * kSlotNs);
  s.window_ns = now > window_start ? now - window_start : 0;
  uint64_t reads = 0, writes = 0, rb = 0, wb = 0;
  for (const Slot& slot : slots_) {
    if (slot.epoch == UINT64_MAX || slot.epoch < first_epoch || slot.epoch > epoch) continue;
    reads += slot.reads;
    writes += slot.writes;
    rb += slot.read_bytes;
    wb += slot.write_bytes;
  }
  if (s.window_ns > 0) {
    const double secs = static_cast<double>(s.window_ns) / 1e9;
    s.read_iops = static_cast<double>(reads) / secs;
    s.write_iops = static_cast<double>(writes) / secs;
    s.iops = s.read_iops + s.write_iops;
    s.read_bps = static_cast<double>(rb) / secs;
    s.write_bps = static_cast<double>(wb) / secs;
    s.bps = s.read_bps + s.write_bps;
  }
  s.reads = reads_;
  s.writes = writes_;
  s.bytes_read = bytes_read_;
  s.bytes_written = bytes_written_;
  s.errors = errors_;
  s.throttled_ns = throttled_ns_ + (head_ != nullptr ? now - std::min(now, throttled_since_) : 0);
  s.throttled_requests = throttled_requests_;
  s.rejected = rejected_;
  s.timer_fires = timer_fires_;
  const PoolScheduler::ClientStats cs = scheduler_->GetClientStats(client_);
  s.contended_requests = cs.contended;
  s.contended_wait_ns = cs.contended_wait_ns;
  s.reservation_dispatches = cs.reservation_dispatches;
  s.weight_dispatches = cs.weight_dispatches;
  s.queue_depth = Waiting();
  s.in_flight = in_flight_ + admitted_;
  s.buckets = limiter_.Stats(now);
  const PoolScheduler::Stats ps = scheduler_->GetStats();
  s.pool_budget = ps.budget;
  s.pool_outstanding = ps.outstanding;
  s.pool_waiting = ps.waiting;
  return s;
}

}  // namespace shale::qos
