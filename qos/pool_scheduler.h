// PoolScheduler: shares one pool's device between its volumes by reservation and weight (MClock)
// once the pool is contended, i.e. once a budget of dispatched-but-not-completed requests is in
// use. Below the budget a request passes straight through with two atomic operations and no
// lock; at the budget it waits in its volume's queue (client or background class) and is
// dispatched, when a request of the pool completes, in mClock order. A volume that is the only
// one with requests outstanding is not held by the budget (there is nobody to share with, and
// a deep queue is what the device needs for its throughput); as soon as a second volume has a
// request outstanding or waiting, the budget applies to everyone.
//
// Threading: a pool's volumes may live on different reactors. Queues, tags and parameters are
// guarded by one mutex, never held while calling out. A dispatched request is handed to its
// volume's Sink on the volume's own reactor: inline when the deciding thread is that reactor,
// else through Reactor::Post. Requests of one client and class reach the sink in the order they
// were submitted (they pass through a per-client "ready" FIFO that only the client's reactor
// drains). The budget counter and the waiting counter are atomics checked in a Dekker pattern
// (both sides seq_cst) so that a request queued just as the last outstanding one completes is
// never forgotten.
//
// Slots: while a request waits here, io->layer_state[0] links the queue and io->layer_value[0]
// holds its enqueue time (the QoS module's slots; see qos_layer.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/common/clock.h"
#include "engine/volume/volume_io.h"
#include "qos/scheduler.h"

namespace shale {
class Reactor;
}

namespace shale::qos {

// Default budget of dispatched-but-not-completed requests per pool (docs/qos.md: measured).
inline constexpr uint32_t kDefaultPoolBudget = 32;
inline constexpr uint32_t kMaxPoolBudget = 4096;
// Weight of a volume's background class (flatten, export, digest, rebuild) under contention,
// against client weights of 1..10000 (default 100): ~9% of the device next to one default
// client, all of it when clients are idle.
inline constexpr uint32_t kDefaultBackgroundWeight = 10;

class PoolScheduler {
 public:
  struct Options {
    uint32_t budget = kDefaultPoolBudget;
    uint32_t background_weight = kDefaultBackgroundWeight;
    // A volume alone (the only one with requests outstanding) passes beyond the budget.
    bool solo_bypass = true;
    Clock* clock = nullptr;  // nullptr: Clock::Real()
  };
  // Receives the requests the scheduler lets through.
  class Sink {
   public:
    // On the client's reactor, in submission order per class.
    virtual void DispatchReady(VolumeIo* io) = 0;

   protected:
    ~Sink() = default;
  };
  struct ClientParams {
    uint32_t weight = 100;
    uint64_t reservation_iops = 0;  // in iops_unit operations per second
    uint64_t iops_unit = 4096;      // cost of a request = ceil(length / iops_unit)
  };
  struct ClientStats {
    uint64_t reservation_dispatches = 0;
    uint64_t weight_dispatches = 0;
    uint64_t contended = 0;          // requests that waited for the budget
    uint64_t contended_wait_ns = 0;  // their total wait
    uint32_t waiting = 0;            // waiting now
  };
  struct Stats {
    uint32_t budget = 0;
    uint32_t outstanding = 0;
    uint32_t waiting = 0;
    uint32_t clients = 0;
    uint32_t active = 0;  // clients with requests outstanding
  };
  struct Client;

  explicit PoolScheduler(const Options& options);
  ~PoolScheduler();  // every client must be unregistered
  PoolScheduler(const PoolScheduler&) = delete;
  PoolScheduler& operator=(const PoolScheduler&) = delete;

  // --- any thread ---
  // `sink` is kept as a weak reference; a cross-reactor hand-off holds it strongly until it
  // has run. `reactor` runs the client's I/O.
  Client* Register(std::weak_ptr<Sink> sink, Reactor* reactor, const ClientParams& params);
  // The client must have nothing waiting or ready (its volume is idle).
  void Unregister(Client* client);
  void SetParams(Client* client, const ClientParams& params);
  // Takes effect at once (a larger budget dispatches waiting requests now).
  void SetBudget(uint32_t budget);
  Stats GetStats() const;
  ClientStats GetClientStats(const Client* client) const;

  // --- on the client's reactor ---
  // Dispatches `io` (sink->DispatchReady, inline) or queues it. Never completes it.
  void Submit(Client* client, VolumeIo* io);
  // A request this scheduler dispatched to `client` has completed: frees its budget slot and
  // dispatches waiting requests (of any client).
  void Complete(Client* client);
  // Requests of this client queued or picked but not yet handed to its sink.
  uint32_t pending(const Client* client) const;
  // Clients other than `client` with requests outstanding (dispatched, not completed).
  uint32_t ActiveOthers(const Client* client) const;

 private:
  bool TryAcquire();
  bool FastAdmit(Client* client);
  void Dispatched(Client* client, VolumeIo* io);
  void RunDispatch();
  void Drain(Client* client, bool from_post);

  Clock* const clock_;
  const uint32_t background_weight_;
  const bool solo_bypass_;
  std::atomic<uint32_t> budget_;
  std::atomic<uint32_t> active_{0};  // clients with requests outstanding
  std::atomic<uint32_t> outstanding_{0};
  std::atomic<uint32_t> waiting_{0};

  mutable std::mutex mu_;
  MClock mclock_;
  struct Owner {
    Client* client = nullptr;
    int cls = 0;
  };
  std::vector<Owner> owners_;  // by MClock queue id
  uint32_t clients_ = 0;
};

}  // namespace shale::qos
