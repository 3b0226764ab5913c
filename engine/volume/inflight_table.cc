#include "engine/volume/inflight_table.h"

#include <bit>

#include "engine/common/assert.h"

namespace shale {

namespace {
constexpr size_t kInitialCapacity = 64;
}  // namespace

void InflightTable::Increment(uint32_t pcluster) {
  SHALE_CHECK(pcluster != kEmpty, "I/O in flight on no cluster");
  if ((size_ + 1) * 2 > slots_.size()) {
    Rehash(slots_.empty() ? kInitialCapacity : slots_.size() * 2);
  }
  for (size_t i = Home(pcluster);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == pcluster) {
      ++s.count;
      return;
    }
    if (s.key == kEmpty) {
      s = Slot{pcluster, 1};
      ++size_;
      return;
    }
  }
}

uint32_t InflightTable::Decrement(uint32_t pcluster) {
  if (slots_.empty()) return 0;
  size_t i = Home(pcluster);
  for (;; i = (i + 1) & mask_) {
    if (slots_[i].key == pcluster) break;
    if (slots_[i].key == kEmpty) return 0;
  }
  const uint32_t before = slots_[i].count--;
  if (before > 1) return before;
  // Backward-shift deletion: pull later members of the probe run into the hole when their home
  // is not cyclically inside (hole, their slot].
  --size_;
  for (size_t j = (i + 1) & mask_; slots_[j].key != kEmpty; j = (j + 1) & mask_) {
    const size_t home = Home(slots_[j].key);
    const bool stays = (i < j) ? (home > i && home <= j) : (home > i || home <= j);
    if (stays) continue;
    slots_[i] = slots_[j];
    i = j;
  }
  slots_[i] = Slot{};
  return before;
}

void InflightTable::Rehash(size_t capacity) {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
  for (const Slot& s : old) {
    if (s.key == kEmpty) continue;
    size_t i = Home(s.key);
    while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

}  // namespace shale
