#include "qos/scheduler.h"

#include <algorithm>

#include "engine/common/assert.h"

namespace shale::qos {
namespace {

constexpr uint64_t kNoTag = UINT64_MAX;
// P tags grow with the work done; well before 64 bits run out every P tag is shifted down.
constexpr uint64_t kRebaseAt = uint64_t{1} << 62;

uint64_t RStep(uint64_t cost, uint64_t reservation) {
  return reservation == 0 ? 0 : cost * 1'000'000'000ull / reservation;
}

}  // namespace

MClock::QueueId MClock::AddQueue(const Params& params) {
  SHALE_CHECK(params.weight >= 1, "MClock weight must be >= 1");
  QueueId id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    id = static_cast<QueueId>(queues_.size());
    queues_.emplace_back();
  }
  Queue& q = queues_[id];
  q = Queue{};
  q.in_use = true;
  q.weight = params.weight;
  q.reservation = params.reservation;
  q.next_p = vtime_;
  return id;
}

void MClock::RemoveQueue(QueueId id) {
  Queue& q = queues_.at(id);
  SHALE_CHECK(q.in_use && !q.has_head, "MClock::RemoveQueue of a queue with a head");
  q.in_use = false;
  free_.push_back(id);
}

void MClock::SetParams(QueueId id, const Params& params, uint64_t now_ns) {
  SHALE_CHECK(params.weight >= 1, "MClock weight must be >= 1");
  Queue& q = queues_.at(id);
  if (q.has_head && params.reservation != q.reservation) {
    if (params.reservation == 0) {
      q.head_r = kNoTag;
    } else if (q.reservation == 0) {
      q.head_r = now_ns;
    }
  }
  if (params.reservation != 0 && q.reservation == 0) q.next_r = now_ns;
  q.weight = params.weight;
  q.reservation = params.reservation;
}

void MClock::SetHead(QueueId id, uint64_t cost, uint64_t arrival_ns) {
  Queue& q = queues_.at(id);
  SHALE_CHECK(q.in_use && !q.has_head, "MClock::SetHead on a queue that has a head");
  q.head_cost = std::max<uint64_t>(1, cost);
  q.head_r = q.reservation == 0 ? kNoTag : std::max(q.next_r, arrival_ns);
  q.head_p = std::max(q.next_p, vtime_);
  q.has_head = true;
  q.active_pos = active_.size();
  active_.push_back(id);
}

void MClock::Deactivate(Queue& q) {
  const QueueId moved = active_.back();
  active_[q.active_pos] = moved;
  queues_[moved].active_pos = q.active_pos;
  active_.pop_back();
  q.has_head = false;
}

void MClock::ClearHead(QueueId id) {
  Queue& q = queues_.at(id);
  if (q.has_head) Deactivate(q);
}

std::optional<MClock::Pick> MClock::Next(uint64_t now_ns) {
  if (active_.empty()) return std::nullopt;
  // Reservation phase: the most overdue head whose R tag has come.
  Queue* best = nullptr;
  QueueId best_id = 0;
  for (QueueId id : active_) {
    Queue& q = queues_[id];
    if (q.head_r <= now_ns && (best == nullptr || q.head_r < best->head_r)) {
      best = &q;
      best_id = id;
    }
  }
  if (best != nullptr) {
    best->next_r = best->head_r + RStep(best->head_cost, best->reservation);
    best->next_p = best->head_p + best->head_cost * (kPScale / best->weight);
    Deactivate(*best);
    return Pick{best_id, Phase::kReservation};
  }
  // Weight phase: the smallest P tag (ties: the first found, which rotates as queues churn).
  for (QueueId id : active_) {
    Queue& q = queues_[id];
    if (best == nullptr || q.head_p < best->head_p) {
      best = &q;
      best_id = id;
    }
  }
  vtime_ = std::max(vtime_, best->head_p);
  best->next_r = best->head_r == kNoTag ? best->next_r : best->head_r;  // not advanced by weight
  best->next_p = best->head_p + best->head_cost * (kPScale / best->weight);
  Deactivate(*best);
  if (vtime_ >= kRebaseAt) Rebase();
  return Pick{best_id, Phase::kWeight};
}

void MClock::Rebase() {
  // Keep 2^40 of history below v so recently idle queues keep their relative position.
  const uint64_t offset = vtime_ - (uint64_t{1} << 40);
  auto shift = [offset](uint64_t& tag) { tag = tag > offset ? tag - offset : 0; };
  for (Queue& q : queues_) {
    if (!q.in_use) continue;
    shift(q.next_p);
    if (q.has_head) shift(q.head_p);
  }
  vtime_ -= offset;
}

}  // namespace shale::qos
