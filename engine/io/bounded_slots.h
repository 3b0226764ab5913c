// BoundedSlots: the bounded queue depth of one reactor's queue on a device.
//
// A fixed array of in-flight slots with a free list, and a FIFO of the requests that arrived
// while every slot was taken (linked through IoRequest::next_waiting, so waiting costs no
// allocation). UringDevice and AioDevice keep one per reactor; only that reactor's thread
// touches it.
//
// `Slot` must have the members `IoRequest* req` (null while free) and `Slot* next_free`.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "engine/io/block_device.h"

namespace shale {

template <typename Slot>
class BoundedSlots {
 public:
  explicit BoundedSlots(unsigned count) : slots_(std::make_unique<Slot[]>(count)), count_(count) {
    for (unsigned i = 0; i < count; ++i) {
      slots_[i].next_free = i + 1 < count ? &slots_[i + 1] : nullptr;
    }
    free_ = count > 0 ? &slots_[0] : nullptr;
  }
  BoundedSlots(const BoundedSlots&) = delete;
  BoundedSlots& operator=(const BoundedSlots&) = delete;

  unsigned size() const { return count_; }
  Slot& operator[](unsigned i) { return slots_[i]; }

  // A free slot, now holding `req`; or nullptr, and `req` waits (FIFO) until Release() hands
  // it a slot.
  Slot* Acquire(IoRequest* req) {
    if (free_ == nullptr) {
      req->next_waiting = nullptr;
      if (wait_tail_ == nullptr) {
        wait_head_ = req;
      } else {
        wait_tail_->next_waiting = req;
      }
      wait_tail_ = req;
      ++waiting_;
      return nullptr;
    }
    Slot* slot = free_;
    free_ = slot->next_free;
    Take(slot, req);
    return slot;
  }

  // `slot`'s request is finished. Returns the oldest waiting request, which now holds `slot`
  // (the caller starts it), or nullptr when none waits (the slot is free again).
  IoRequest* Release(Slot* slot) {
    --in_flight_;
    if (wait_head_ != nullptr) {
      IoRequest* next = wait_head_;
      wait_head_ = next->next_waiting;
      if (wait_head_ == nullptr) wait_tail_ = nullptr;
      next->next_waiting = nullptr;
      --waiting_;
      Take(slot, next);
      return next;
    }
    slot->req = nullptr;
    slot->next_free = free_;
    free_ = slot;
    return nullptr;
  }

  // Nothing in flight and nothing waiting.
  bool idle() const { return in_flight_ == 0 && wait_head_ == nullptr; }
  uint64_t in_flight() const { return in_flight_; }            // slots taken (<= size())
  uint64_t waiting() const { return waiting_; }                // requests queued behind them
  uint64_t peak_in_flight() const { return peak_in_flight_; }  // high-water mark of in_flight

 private:
  void Take(Slot* slot, IoRequest* req) {
    slot->req = req;
    slot->next_free = nullptr;
    ++in_flight_;
    peak_in_flight_ = std::max(peak_in_flight_, in_flight_);
  }

  std::unique_ptr<Slot[]> slots_;
  const unsigned count_;
  Slot* free_ = nullptr;
  IoRequest* wait_head_ = nullptr;
  IoRequest* wait_tail_ = nullptr;
  uint64_t in_flight_ = 0;
  uint64_t waiting_ = 0;
  uint64_t peak_in_flight_ = 0;
};

}  // namespace shale
