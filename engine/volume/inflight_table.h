// InflightTable: how many device I/Os of one volume are in flight on each physical cluster.
//
// It lives beside the volume's ClusterMap instead of in every map slot, which keeps a slot at
// 16 bytes: only clusters with I/O in flight have an entry, so the table is as small as the
// volume's queue depth while the map covers every mapped cluster. The physical cluster alone
// names a fragment: ownership is single (docs/format/metadata.md), so a physical cluster appears
// in at most one fragment of a volume's merged map.
//
// Open addressing with linear probing and backward-shift deletion (no tombstones); the capacity
// doubles when the table is half full and never shrinks. Not thread-safe: the volume's reactor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace shale {

class InflightTable {
 public:
  // I/Os in flight on pcluster (0 when it has no entry).
  uint32_t Get(uint32_t pcluster) const {
    if (slots_.empty()) return 0;
    for (size_t i = Home(pcluster);; i = (i + 1) & mask_) {
      if (slots_[i].key == pcluster) return slots_[i].count;
      if (slots_[i].key == kEmpty) return 0;
    }
  }
  void Increment(uint32_t pcluster);
  // Returns the count before the decrement (0: there was no entry — a bug the caller checks);
  // the entry goes when its count reaches 0.
  uint32_t Decrement(uint32_t pcluster);
  // Physical clusters with I/O in flight.
  size_t size() const { return size_; }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;  // never a physical cluster (kNoCluster)
  struct Slot {
    uint32_t key = kEmpty;
    uint32_t count = 0;
  };
  size_t Home(uint32_t key) const {
    return static_cast<size_t>((static_cast<uint64_t>(key) * 0x9e3779b97f4a7c15ull) >> shift_);
  }
  void Rehash(size_t capacity);

  std::vector<Slot> slots_;  // capacity a power of two
  size_t mask_ = 0;
  unsigned shift_ = 64;
  size_t size_ = 0;
};

}  // namespace shale
