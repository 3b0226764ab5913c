#include "qos/pool_scheduler.h"

#include <algorithm>

#include "engine/common/assert.h"
#include "engine/io/reactor.h"
#include "qos/limiter.h"

namespace shale::qos {
namespace {

// Intrusive FIFO through io->layer_state[0].
struct Fifo {
  VolumeIo* head = nullptr;
  VolumeIo* tail = nullptr;
  uint32_t size = 0;
  bool empty() const { return head == nullptr; }
  void Push(VolumeIo* io) {
    io->layer_state[0] = nullptr;
    if (tail != nullptr) {
      tail->layer_state[0] = io;
    } else {
      head = io;
    }
    tail = io;
    ++size;
  }
  VolumeIo* Pop() {
    VolumeIo* io = head;
    head = static_cast<VolumeIo*>(io->layer_state[0]);
    if (head == nullptr) tail = nullptr;
    io->layer_state[0] = nullptr;
    --size;
    return io;
  }
};

constexpr int kClientClass = 0, kBackgroundClass = 1;

uint64_t SchedCost(const VolumeIo* io, uint64_t iops_unit) {
  return CostOf(io->op, io->flags, io->length, iops_unit).ops;
}

}  // namespace

struct PoolScheduler::Client {
  std::weak_ptr<Sink> sink_ref;
  Sink* sink = nullptr;
  Reactor* reactor = nullptr;
  // Guarded by mu_.
  ClientParams params;
  MClock::QueueId queue[2] = {0, 0};
  Fifo waiting[2];
  Fifo ready;
  bool drain_posted = false;
  ClientStats stats;
  // Client's reactor only.
  uint32_t pending = 0;
  uint32_t outstanding = 0;  // dispatched, not completed
};

PoolScheduler::PoolScheduler(const Options& options)
    : clock_(options.clock != nullptr ? options.clock : Clock::Real()),
      background_weight_(std::max<uint32_t>(1, options.background_weight)),
      solo_bypass_(options.solo_bypass),
      budget_(std::clamp<uint32_t>(options.budget, 1, kMaxPoolBudget)) {}

PoolScheduler::~PoolScheduler() {
  SHALE_CHECK(clients_ == 0, "PoolScheduler destroyed with clients");
}

PoolScheduler::Client* PoolScheduler::Register(std::weak_ptr<Sink> sink, Reactor* reactor,
                                               const ClientParams& params) {
  auto* c = new Client();
  c->sink = sink.lock().get();
  SHALE_CHECK(c->sink != nullptr && reactor != nullptr,
              "PoolScheduler::Register needs a live sink and a reactor");
  c->sink_ref = std::move(sink);
  c->reactor = reactor;
  std::lock_guard lock(mu_);
  c->params = params;
  c->queue[kClientClass] = mclock_.AddQueue({params.weight, params.reservation_iops});
  c->queue[kBackgroundClass] = mclock_.AddQueue({background_weight_, 0});
  for (int cls : {kClientClass, kBackgroundClass}) {
    const MClock::QueueId q = c->queue[cls];
    if (owners_.size() <= q) owners_.resize(q + 1);
    owners_[q] = {c, cls};
  }
  ++clients_;
  return c;
}

void PoolScheduler::Unregister(Client* c) {
  {
    std::lock_guard lock(mu_);
    SHALE_CHECK(c->waiting[0].empty() && c->waiting[1].empty() && c->ready.empty(),
                "PoolScheduler::Unregister of a client with queued requests");
    for (int cls : {kClientClass, kBackgroundClass}) {
      mclock_.RemoveQueue(c->queue[cls]);
      owners_[c->queue[cls]] = {};
    }
    --clients_;
  }
  delete c;
}

void PoolScheduler::SetParams(Client* c, const ClientParams& params) {
  std::lock_guard lock(mu_);
  c->params = params;
  mclock_.SetParams(c->queue[kClientClass], {params.weight, params.reservation_iops},
                    clock_->NowNanos());
}

void PoolScheduler::SetBudget(uint32_t budget) {
  budget_.store(std::clamp<uint32_t>(budget, 1, kMaxPoolBudget), std::memory_order_seq_cst);
  RunDispatch();
}

PoolScheduler::Stats PoolScheduler::GetStats() const {
  Stats s;
  s.budget = budget_.load();
  s.outstanding = outstanding_.load();
  s.waiting = waiting_.load();
  s.active = active_.load();
  std::lock_guard lock(mu_);
  s.clients = clients_;
  return s;
}

PoolScheduler::ClientStats PoolScheduler::GetClientStats(const Client* c) const {
  std::lock_guard lock(mu_);
  ClientStats s = c->stats;
  s.waiting = c->waiting[0].size + c->waiting[1].size;
  return s;
}

uint32_t PoolScheduler::pending(const Client* c) const { return c->pending; }

uint32_t PoolScheduler::ActiveOthers(const Client* c) const {
  const uint32_t active = active_.load(std::memory_order_seq_cst);
  const uint32_t self = c->outstanding != 0 ? 1 : 0;
  return active > self ? active - self : 0;
}

bool PoolScheduler::TryAcquire() {
  uint32_t cur = outstanding_.load(std::memory_order_seq_cst);
  while (cur < budget_.load(std::memory_order_relaxed)) {
    if (outstanding_.compare_exchange_weak(cur, cur + 1, std::memory_order_seq_cst)) return true;
  }
  return false;
}

bool PoolScheduler::FastAdmit(Client* c) {
  // Nothing of this client ahead of it and nobody waiting in the pool...
  if (c->pending != 0 || waiting_.load(std::memory_order_seq_cst) != 0) return false;
  // ...and a free slot, or this client is the only one with requests outstanding.
  if (TryAcquire()) return true;
  if (solo_bypass_ && c->outstanding != 0 && active_.load(std::memory_order_seq_cst) == 1) {
    outstanding_.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }
  return false;
}

void PoolScheduler::Dispatched(Client* c, VolumeIo* io) {
  if (c->outstanding++ == 0) active_.fetch_add(1, std::memory_order_seq_cst);
  c->sink->DispatchReady(io);
}

void PoolScheduler::Submit(Client* c, VolumeIo* io) {
  if (FastAdmit(c)) {
    Dispatched(c, io);
    return;
  }
  ++c->pending;
  {
    std::lock_guard lock(mu_);
    const uint64_t now = clock_->NowNanos();
    const int cls = io->io_class == IoClass::kBackground ? kBackgroundClass : kClientClass;
    Fifo& q = c->waiting[cls];
    const bool was_empty = q.empty();
    io->layer_value[0] = now;
    q.Push(io);
    if (was_empty) mclock_.SetHead(c->queue[cls], SchedCost(io, c->params.iops_unit), now);
    ++c->stats.contended;
    waiting_.fetch_add(1, std::memory_order_seq_cst);
  }
  RunDispatch();
}

void PoolScheduler::Complete(Client* c) {
  if (--c->outstanding == 0) active_.fetch_sub(1, std::memory_order_seq_cst);
  outstanding_.fetch_sub(1, std::memory_order_seq_cst);
  if (waiting_.load(std::memory_order_seq_cst) != 0) RunDispatch();
}

void PoolScheduler::RunDispatch() {
  constexpr int kBatch = 16;
  for (;;) {
    Client* touched[kBatch];
    int touched_n = 0;
    struct PostTo {
      Client* client;
      std::shared_ptr<Sink> keep;
    };
    PostTo posts[kBatch];
    int post_n = 0;
    int picked = 0;
    {
      std::lock_guard lock(mu_);
      const uint64_t now = clock_->NowNanos();
      while (picked < kBatch && waiting_.load(std::memory_order_seq_cst) != 0 && TryAcquire()) {
        auto pick = mclock_.Next(now);
        SHALE_CHECK(pick.has_value(), "PoolScheduler: requests waiting but no queue has a head");
        const Owner owner = owners_[pick->queue];
        Client* c = owner.client;
        Fifo& q = c->waiting[owner.cls];
        VolumeIo* io = q.Pop();
        if (!q.empty()) {  // tagged by its arrival (layer_value[0]), as mClock tags on arrival
          mclock_.SetHead(pick->queue, SchedCost(q.head, c->params.iops_unit),
                          q.head->layer_value[0]);
        }
        waiting_.fetch_sub(1, std::memory_order_seq_cst);
        if (pick->phase == MClock::Phase::kReservation) {
          ++c->stats.reservation_dispatches;
        } else {
          ++c->stats.weight_dispatches;
        }
        c->stats.contended_wait_ns += now - std::min(now, io->layer_value[0]);
        c->ready.Push(io);
        ++picked;
        if (std::find(touched, touched + touched_n, c) == touched + touched_n)
          touched[touched_n++] = c;
      }
      for (int i = 0; i < touched_n; ++i) {
        Client* c = touched[i];
        if (c->reactor->IsCurrent() || c->drain_posted) continue;
        c->drain_posted = true;
        posts[post_n++] = {c, c->sink_ref.lock()};
      }
    }
    for (int i = 0; i < post_n; ++i) {
      Client* c = posts[i].client;
      c->reactor->Post([this, c, keep = std::move(posts[i].keep)] { Drain(c, true); });
    }
    for (int i = 0; i < touched_n; ++i) {
      if (touched[i]->reactor->IsCurrent()) Drain(touched[i], false);
    }
    if (picked < kBatch) return;
  }
}

void PoolScheduler::Drain(Client* c, bool from_post) {
  Fifo list;
  {
    std::lock_guard lock(mu_);
    list = c->ready;
    c->ready = Fifo{};
    if (from_post) c->drain_posted = false;
  }
  while (!list.empty()) {
    VolumeIo* io = list.Pop();
    --c->pending;
    Dispatched(c, io);
  }
}

}  // namespace shale::qos
