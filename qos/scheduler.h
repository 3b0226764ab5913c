// MClock: the reservation / weight tag logic of mClock (Gulati et al., OSDI 2010), pure and
// single-threaded, over a set of queues whose items live elsewhere (PoolScheduler keeps them).
//
// Each backlogged queue exposes only its head, with a cost (operations by iops_unit) and two
// tags computed when it became the head:
//   R = max(R_base, arrival)    R_base = R of the previous head + cost / reservation   (ns)
//   P = max(P_base, v)          P_base = P of the previous head + cost * kPScale / weight
// where `arrival` is when the request entered its queue — so the tags are the paper's arrival-
// time tags even though they are computed lazily: a queue that stayed backlogged keeps R tags
// behind `now` and catches up on its reservation when several slots free at once, while a
// queue that was idle starts at its arrival (no credit for idle time) — and v, the virtual time,
// is the P tag of the last request picked by weight (start-time fair queueing: a queue that was
// idle re-enters at v, neither owed nor owing service).
// Next(now) picks
//   1. among heads with R <= now, the smallest R ("reservation phase"); else
//   2. the smallest P ("weight phase"). As in mClock, a pick by weight does not advance the
//      queue's R_base (the paper subtracts 1/r from the remaining R tags), so service received
//      by weight never delays a reservation; every pick advances P_base.
// The limit of mClock is applied before a request reaches this scheduler (Limiter, with
// bursts), so every queue here is eligible.
//
// Not thread-safe. Time comes from the caller (tests drive it with a ManualClock).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace shale::qos {

class MClock {
 public:
  using QueueId = uint32_t;
  enum class Phase : uint8_t { kReservation, kWeight };
  struct Params {
    uint32_t weight = 100;     // >= 1
    uint64_t reservation = 0;  // cost units per second; 0 = none
  };
  struct Pick {
    QueueId queue;
    Phase phase;
  };
  // P tag units per cost unit at weight 1.
  static constexpr uint64_t kPScale = 1'000'000'000;

  QueueId AddQueue(const Params& params);
  // The queue must have no head.
  void RemoveQueue(QueueId q);
  // Takes effect for the next head; a current head's R tag appears (now) or disappears when the
  // reservation is switched on or off.
  void SetParams(QueueId q, const Params& params, uint64_t now_ns);

  // The queue has a new head of `cost` (>= 1) that entered the queue at `arrival_ns`: the queue
  // was empty, or its previous head was picked.
  void SetHead(QueueId q, uint64_t cost, uint64_t arrival_ns);
  // The queue has no head (it became empty after a pick).
  void ClearHead(QueueId q);
  // Picks the next head to dispatch and advances that queue's tags. The picked queue has no head
  // afterwards until SetHead/ClearHead. nullopt when no queue has a head.
  std::optional<Pick> Next(uint64_t now_ns);

  size_t backlogged() const { return active_.size(); }
  bool has_head(QueueId q) const { return queues_[q].has_head; }
  uint64_t virtual_time() const { return vtime_; }

 private:
  struct Queue {
    bool in_use = false;
    bool has_head = false;
    uint32_t weight = 100;
    uint64_t reservation = 0;
    uint64_t head_cost = 0;
    uint64_t head_r = 0, head_p = 0;
    uint64_t next_r = 0, next_p = 0;  // bases for the next head
    size_t active_pos = 0;            // index in active_ while has_head
  };
  void Deactivate(Queue& q);
  void Rebase();

  std::vector<Queue> queues_;
  std::vector<QueueId> free_;
  std::vector<QueueId> active_;  // queues with a head
  uint64_t vtime_ = 0;
};

}  // namespace shale::qos
