// Small pieces of the connection state machine (connection.cc), internal to the NBD server:
// its limits and the completion-handler adapter.
#pragma once

#include <cstdint>

#include "engine/common/units.h"
#include "engine/io/buffer_cache.h"
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
// Buffers a connection keeps for reuse (BufferCache: size classes of 4 KiB .. 32 MiB).
inline constexpr uint64_t kMaxCachedBufferBytes = 32 * kMiB;

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

}  // namespace shale::nbd
