// Background units: work that is not a request of the volume's own I/O path (a flatten batch,
// a replica rebuild's copy window) scheduled like one request of its size in a pool
// scheduler's background (low) class. The shared mechanics of QosLayer's admissions and of
// PoolAdmission.
//
// A unit is a placeholder VolumeIo (op kRead, the unit's length: cost ceil(bytes / iops_unit),
// class kBackground) submitted to the scheduler. When the scheduler hands it to the Sink, the
// Sink calls StartBackgroundUnit: the unit's `go(done)` runs from a deferred task on the
// reactor (never inside the scheduler's dispatch loop, never inside Admit), and `done()` —
// called once by the worker when the unit's I/O completed — frees the budget slot.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "engine/volume/volume_io.h"
#include "qos/pool_scheduler.h"

namespace shale {
class Reactor;
}

namespace shale::qos {

// Submits one unit of `bytes` for `client` of `scheduler`, on the client's reactor. `keep` is
// held until the unit has started (e.g. the Sink, which keeps the client registered).
void SubmitBackgroundUnit(PoolScheduler* scheduler, PoolScheduler::Client* client, uint64_t bytes,
                          std::function<void(BackgroundAdmission::Done done)> go,
                          std::shared_ptr<void> keep);

// Whether `io`, handed to a Sink's DispatchReady, is a unit (and not a request).
bool IsBackgroundUnit(const VolumeIo* io);

// From DispatchReady of a unit: runs its go from a deferred task on `reactor` with a done that
// calls `release` (on the reactor, exactly once; a second call is a fatal error).
void StartBackgroundUnit(VolumeIo* io, Reactor* reactor, std::function<void()> release);

// A BackgroundAdmission of its own in a pool's scheduler (not a volume's QoS layer): a replica
// rebuild paces its copy windows through one, so they yield to the pool's client I/O under
// contention (the background weight) and take the whole device when clients are idle.
class PoolAdmission final : public BackgroundAdmission,
                            public PoolScheduler::Sink,
                            public std::enable_shared_from_this<PoolAdmission> {
 public:
  // Registers a scheduler client whose units run on `reactor`.
  static std::shared_ptr<PoolAdmission> Create(std::shared_ptr<PoolScheduler> scheduler,
                                               Reactor* reactor);
  ~PoolAdmission();  // unregisters (no unit waits: each holds the object until it started)
  PoolAdmission(const PoolAdmission&) = delete;
  PoolAdmission& operator=(const PoolAdmission&) = delete;

  // BackgroundAdmission: on the reactor. Busy while another client of the pool (a volume's
  // I/O, another background job) has requests outstanding.
  void Admit(uint64_t bytes, std::function<void(Done done)> go) override;
  bool ForegroundBusy() const override;
  // PoolScheduler::Sink.
  void DispatchReady(VolumeIo* io) override;

 private:
  PoolAdmission(std::shared_ptr<PoolScheduler> scheduler, Reactor* reactor);

  const std::shared_ptr<PoolScheduler> scheduler_;
  Reactor* const reactor_;
  PoolScheduler::Client* client_ = nullptr;
};

}  // namespace shale::qos
