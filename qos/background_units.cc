#include "qos/background_units.h"

#include "engine/common/assert.h"
#include "engine/io/reactor.h"

namespace shale::qos {
namespace {

struct Unit {
  VolumeIo io;  // what the scheduler queues: background class, the unit's length
  std::function<void(BackgroundAdmission::Done)> go;
  std::shared_ptr<void> keep;
};

// io->done of a unit's placeholder: never called, it only marks one.
void UnitMarker(VolumeIo*) {
  SHALE_CHECK(false, "qos: a background unit's placeholder was completed like a request");
}

}  // namespace

void SubmitBackgroundUnit(PoolScheduler* scheduler, PoolScheduler::Client* client, uint64_t bytes,
                          std::function<void(BackgroundAdmission::Done done)> go,
                          std::shared_ptr<void> keep) {
  auto* u = new Unit();
  u->io.op = VolumeOp::kRead;  // any data op: CostOf charges ceil(length / iops_unit)
  u->io.length = bytes;
  u->io.io_class = IoClass::kBackground;
  u->io.ctx = u;
  u->io.done = &UnitMarker;
  u->go = std::move(go);
  u->keep = std::move(keep);
  scheduler->Submit(client, &u->io);
}

bool IsBackgroundUnit(const VolumeIo* io) { return io->done == &UnitMarker; }

void StartBackgroundUnit(VolumeIo* io, Reactor* reactor, std::function<void()> release) {
  auto* u = static_cast<Unit*>(io->ctx);
  // Deferred: DispatchReady may run inside the scheduler's dispatch loop, and the unit's own
  // done() (which re-enters the scheduler) may come straight from `go`.
  reactor->Defer([u, reactor, release = std::move(release)]() mutable {
    std::unique_ptr<Unit> owned(u);
    std::function<void(BackgroundAdmission::Done)> go = std::move(u->go);
    auto released = std::make_shared<bool>(false);
    go([reactor, released, release = std::move(release)] {
      SHALE_CHECK(reactor->IsCurrent() && !*released,
                  "qos: a background unit released twice or off its reactor");
      *released = true;
      release();
    });
  });
}

std::shared_ptr<PoolAdmission> PoolAdmission::Create(std::shared_ptr<PoolScheduler> scheduler,
                                                     Reactor* reactor) {
  std::shared_ptr<PoolAdmission> a(new PoolAdmission(std::move(scheduler), reactor));
  a->client_ = a->scheduler_->Register(std::weak_ptr<PoolScheduler::Sink>(a), reactor,
                                       PoolScheduler::ClientParams{});
  return a;
}

PoolAdmission::PoolAdmission(std::shared_ptr<PoolScheduler> scheduler, Reactor* reactor)
    : scheduler_(std::move(scheduler)), reactor_(reactor) {}

PoolAdmission::~PoolAdmission() {
  if (client_ != nullptr) scheduler_->Unregister(client_);
}

void PoolAdmission::Admit(uint64_t bytes, std::function<void(Done done)> go) {
  SubmitBackgroundUnit(scheduler_.get(), client_, bytes, std::move(go), shared_from_this());
}

bool PoolAdmission::ForegroundBusy() const { return scheduler_->ActiveOthers(client_) > 0; }

void PoolAdmission::DispatchReady(VolumeIo* io) {
  SHALE_CHECK(IsBackgroundUnit(io), "PoolAdmission: dispatched something that is not a unit");
  StartBackgroundUnit(io, reactor_,
                      [self = shared_from_this()] { self->scheduler_->Complete(self->client_); });
}

}  // namespace shale::qos
