// BufferCache: aligned I/O buffers kept for reuse by one owner (an NBD connection, a rebuild, a
// replica server connection), in power-of-two size classes from 4 KiB to 32 MiB. A buffer freed
// and allocated again per request costs, from 1 MiB up, a fresh mmap each time: page faults,
// zeroing and an munmap with its TLB shootdown (docs/performance.md, "Replicated volumes": more
// than half a rebuild's speed). Not thread-safe: an owner used by two threads locks around it
// (replication/replica_server_conn.h, SharedBufferCache).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/common/units.h"
#include "engine/io/block_device.h"

namespace shale {

class BufferCache {
 public:
  static constexpr int kClasses = 14;  // 4 KiB << 13 = 32 MiB
  static constexpr uint64_t kLargestClass = (4 * kKiB) << (kClasses - 1);

  // Keeps at most `max_cached_bytes` of idle buffers; what does not fit is freed.
  explicit BufferCache(uint64_t max_cached_bytes) : max_cached_(max_cached_bytes) {}

  // A 4 KiB-aligned buffer of at least `len` bytes; *cap receives its real size (pass it back to
  // Put). A length above the largest class gets a buffer of exactly that size, never kept.
  AlignedBuffer Get(uint64_t len, uint64_t* cap) {
    if (len > kLargestClass) {
      *cap = len;
      ++allocations_;
      return AllocateAligned(len);
    }
    const int c = ClassOf(len);
    *cap = ClassSize(c);
    if (!free_[c].empty()) {
      AlignedBuffer b = std::move(free_[c].back());
      free_[c].pop_back();
      cached_ -= *cap;
      return b;
    }
    ++allocations_;
    return AllocateAligned(*cap);
  }
  void Put(AlignedBuffer buf, uint64_t cap) {
    if (!buf || cap > kLargestClass || cached_ + cap > max_cached_) return;  // freed
    free_[ClassOf(cap)].push_back(std::move(buf));
    cached_ += cap;
  }
  // Frees every idle buffer.
  void Clear() {
    for (auto& list : free_) list.clear();
    cached_ = 0;
  }
  // The real size of the buffer Get(len) returns.
  static uint64_t CapacityFor(uint64_t len) {
    return len > kLargestClass ? len : ClassSize(ClassOf(len));
  }
  uint64_t allocations() const { return allocations_; }  // Gets that allocated
  uint64_t cached_bytes() const { return cached_; }

 private:
  static int ClassOf(uint64_t len) {
    int c = 0;
    while (c + 1 < kClasses && ClassSize(c) < len) ++c;
    return c;
  }
  static uint64_t ClassSize(int c) { return (4 * kKiB) << c; }

  const uint64_t max_cached_;
  std::vector<AlignedBuffer> free_[kClasses];
  uint64_t cached_ = 0;
  uint64_t allocations_ = 0;
};

}  // namespace shale
