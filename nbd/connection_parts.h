// Small pieces of the connection state machine (connection.cc), internal to the NBD server:
// its limits, the completion-handler adapter and the per-connection buffer cache.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/common/units.h"
#include "engine/io/block_device.h"
#include "engine/io/reactor.h"

namespace shale::nbd {

// Write payloads with at least this much still to come are received straight into the
// request's buffer (no copy through the receive buffer).
inline constexpr uint64_t kDirectRecvThreshold = 64 * kKiB;
// Sends of at least this many bytes (and direct receives) are punted to io_uring's workers.
inline constexpr uint64_t kAsyncCopyThreshold = 64 * kKiB;
// iovecs per SENDMSG (the kernel's IOV_MAX is 1024).
inline constexpr size_t kMaxIov = 512;
// One NBD_CMD_BLOCK_STATUS looks at most this far and returns at most this many extents;
// clients ask again from where the reply ended (the protocol allows short replies).
inline constexpr uint64_t kMaxBlockStatusSpan = 1 * kGiB;
inline constexpr size_t kMaxBlockStatusExtents = 2048;
// Buffers a connection keeps for reuse (power-of-two size classes, 4 KiB .. 32 MiB).
inline constexpr uint64_t kMaxCachedBufferBytes = 32 * kMiB;
inline constexpr int kBufferClasses = 14;

// Calls a member of `Owner` for one kind of SQE completion.
template <typename Owner>
class MemberHandler final : public CompletionHandler {
 public:
  using Fn = void (Owner::*)(int32_t res);
  MemberHandler(Owner* owner, Fn fn) : owner_(owner), fn_(fn) {}
  void OnCompletion(int32_t res, uint32_t /*flags*/) override { (owner_->*fn_)(res); }

 private:
  Owner* owner_;
  Fn fn_;
};

// Aligned I/O buffers of one connection, recycled by power-of-two size class.
class BufferCache {
 public:
  // A buffer of at least `len` bytes (4 KiB-aligned); *cap receives its real size.
  AlignedBuffer Get(uint64_t len, uint64_t* cap) {
    const int c = ClassOf(len);
    *cap = ClassSize(c);
    if (!free_[c].empty()) {
      AlignedBuffer b = std::move(free_[c].back());
      free_[c].pop_back();
      cached_ -= *cap;
      return b;
    }
    return AllocateAligned(*cap);
  }
  void Put(AlignedBuffer buf, uint64_t cap) {
    if (!buf || cached_ + cap > kMaxCachedBufferBytes) return;  // freed
    free_[ClassOf(cap)].push_back(std::move(buf));
    cached_ += cap;
  }

 private:
  static int ClassOf(uint64_t len) {
    int c = 0;
    while (c + 1 < kBufferClasses && ClassSize(c) < len) ++c;
    return c;
  }
  static uint64_t ClassSize(int c) { return (4 * kKiB) << c; }

  std::vector<AlignedBuffer> free_[kBufferClasses];
  uint64_t cached_ = 0;
};

}  // namespace shale::nbd
