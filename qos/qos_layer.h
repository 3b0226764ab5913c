// QosLayer: the QoS stage of one volume's I/O path (queue -> QoS -> ... -> core Volume).
//
// A request passes two gates, in order:
//   1. the volume's Limiter (IOPS / bandwidth limits with bursts). A request that may not pass
//      yet waits in the volume's FIFO; one reactor timer, armed for the earliest moment the
//      head can pass, releases it (no polling, no thread);
//   2. the pool's PoolScheduler (budget of outstanding requests, reservation / weight).
// Then it goes to the next layer with its completion intercepted (stats, budget slot).
//
// Classes and ops: client reads/writes/discards/write-zeroes go through both gates in order;
// background I/O (IoClass::kBackground) skips the volume's limits (they are the client's) and
// is scheduled in the pool's low class; FLUSH is never held (it only covers writes that have
// completed, which no longer need QoS) and passes straight down.
//
// Background work the core Volume does below every layer (flatten's copy batches) is paced
// through the layer's BackgroundAdmission: each unit is scheduled like one background request
// of its size (cost ceil(bytes / iops_unit), the volume's limits skipped) and holds its pool
// budget slot until the engine reports it done.
//
// Bound: at most Options::max_queued requests wait in QoS per volume; beyond, a request
// completes at once (deferred, never inside Submit) with Busy ("qos queue full"). Frontends are
// expected to keep fewer requests in flight per volume than that (NBD's per-connection limit).
//
// Slots of VolumeIo used by the QoS module: layer_state[0] and layer_value[0] (queue link and
// enqueue time while waiting; the submitter's ctx and done while below QoS).
//
// Threading: everything runs on the volume's reactor except Create() and the destructor. The
// layer is shared (std::shared_ptr) by every frontend of the volume; it must be idle (nothing
// queued or in flight) when the last reference goes, which frontends guarantee by waiting for
// their requests before closing.
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "engine/common/clock.h"
#include "engine/volume/volume_io.h"
#include "qos/limiter.h"
#include "qos/pool_scheduler.h"
#include "qos/settings.h"
#include "qos/stats.h"

namespace shale {
class Reactor;
}

namespace shale::qos {

// 64 NBD connections at their 256-request bound before a request is refused.
inline constexpr uint32_t kDefaultMaxQueued = 16384;

class QosLayer final : public VolumeLayer,
                       public BackgroundAdmission,
                       public PoolScheduler::Sink,
                       public std::enable_shared_from_this<QosLayer> {
 public:
  struct Options {
    Clock* clock = nullptr;  // nullptr: Clock::Real(); must be the scheduler's clock too
    uint32_t max_queued = kDefaultMaxQueued;
    // A throttled queue's timer may fire up to this much after its head could pass, so that
    // one wake-up releases a batch (about half the queue) instead of one request.
    uint64_t timer_slack_ns = 1'000'000;
    // Floor of a timer delay. 0 in production (real time always moves on); tests on a frozen
    // ManualClock raise it so the real reactor timer does not re-fire continuously.
    uint64_t min_timer_ns = 0;
  };

  // `next` (the layer below, e.g. the core Volume) and `reactor` (its reactor) must outlive the
  // layer. `settings` must be valid (QosSettings::Validate). Any thread.
  static std::shared_ptr<QosLayer> Create(VolumeLayer* next, Reactor* reactor,
                                          std::shared_ptr<PoolScheduler> scheduler,
                                          const QosSettings& settings, const Options& options);
  ~QosLayer() override;
  QosLayer(const QosLayer&) = delete;
  QosLayer& operator=(const QosLayer&) = delete;

  // VolumeLayer: on reactor(). io->done runs later on reactor(), exactly once.
  void Submit(VolumeIo* io) override;
  // BackgroundAdmission: on reactor(). `go` runs from a deferred task (never inside the
  // scheduler); the layer stays alive until `done()`.
  void Admit(uint64_t bytes, std::function<void(Done done)> go) override;

  // --- reactor thread ---
  // Live change: buckets are reconfigured in place (levels kept, clamped to the new
  // capacities), scheduler parameters updated, and the waiting requests re-evaluated now.
  // Nothing is drained or failed. `settings` must be valid.
  void Apply(const QosSettings& settings);
  // Re-evaluates the waiting requests against the clock now (the timer does this by itself;
  // tests driving a ManualClock call it after advancing time).
  void Poll();
  // Live figures (the caller fills volume/pool names).
  QosStats Stats() const;

  Reactor* reactor() const { return reactor_; }
  const QosSettings& settings() const { return settings_; }

 private:
  QosLayer(VolumeLayer* next, Reactor* reactor, std::shared_ptr<PoolScheduler> scheduler,
           const QosSettings& settings, const Options& options);
  PoolScheduler::ClientParams SchedParams() const;
  // PoolScheduler::Sink: sends io below with its completion intercepted.
  void DispatchReady(VolumeIo* io) override;
  static void OnDone(VolumeIo* io);
  void Reject(VolumeIo* io);
  void Enqueue(VolumeIo* io, uint64_t now);
  void ArmTimer(uint64_t now);
  void OnTimer();
  // Poll() after a wake-up `late_ns` past its deadline (Limiter::Admit's catch-up).
  void PollLate(uint64_t late_ns);
  void RecordCompletion(const VolumeIo* io, uint64_t now);
  uint32_t Waiting() const;

  VolumeLayer* const next_;
  Reactor* const reactor_;
  const std::shared_ptr<PoolScheduler> scheduler_;
  PoolScheduler::Client* client_ = nullptr;
  Clock* const clock_;
  const Options options_;
  QosSettings settings_;
  Limiter limiter_;

  // Requests held by a limit, FIFO through layer_state[0].
  VolumeIo* head_ = nullptr;
  VolumeIo* tail_ = nullptr;
  uint32_t held_ = 0;
  uint64_t timer_id_ = 0;
  uint64_t timer_deadline_ = 0;   // clock time the armed timer is for
  uint64_t throttled_since_ = 0;  // clock time the FIFO became non-empty

  uint32_t in_flight_ = 0;
  uint32_t admitted_ = 0;  // background admissions holding a budget slot
  // Completions per 100 ms slot over the last second (rates), and totals.
  struct Slot {
    uint64_t epoch = UINT64_MAX;
    uint64_t reads = 0, writes = 0, read_bytes = 0, write_bytes = 0;
  };
  static constexpr uint64_t kSlotNs = 100'000'000;
  static constexpr size_t kSlots = 10;
  std::array<Slot, kSlots> slots_{};
  uint64_t start_ns_ = 0;
  uint64_t reads_ = 0, writes_ = 0, bytes_read_ = 0, bytes_written_ = 0, errors_ = 0;
  uint64_t throttled_ns_ = 0, throttled_requests_ = 0, rejected_ = 0, timer_fires_ = 0;
};

}  // namespace shale::qos
