// Limiter: a volume's set of token buckets — the IOPS and bandwidth limits of its QosSettings,
// each with an optional burst — and the admission rule over them.
//
// Per configured limit with base rate r (docs/qos.md, "Limits and bursts"):
//   without a burst: one bucket, refilled at r, capacity r*q;
//   with burst rate B > r and length T: a credit bucket refilled at r with capacity
//   (B - r)*T + r*q, and a peak bucket refilled at B with capacity B*q.
// A request is admitted when every bucket it charges has a positive level; then each is charged
// its full cost (operations = ceil(length / iops_unit), or bytes). After an idle period a
// saturating client runs at B for about T seconds, then at r.
//
// Not thread-safe: one per volume, used on the volume's reactor. Time comes from the caller.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/volume/volume_io.h"
#include "qos/settings.h"
#include "qos/stats.h"
#include "qos/token_bucket.h"

namespace shale::qos {

enum class Direction : uint8_t { kNone, kRead, kWrite };

// What a request costs the limits.
struct RequestCost {
  Direction dir = Direction::kNone;
  uint64_t ops = 0;    // charged to IOPS limits
  uint64_t bytes = 0;  // charged to bandwidth limits
};

// read/write: ceil(length / iops_unit) operations (at least 1) and `length` bytes.
// write-zeroes with kVolumeNoUnmap writes zeros on the device: charged like a write.
// discard and unmapping write-zeroes change metadata only: one write operation, no bytes.
// flush: nothing (it is never held by QoS).
RequestCost CostOf(VolumeOp op, uint32_t flags, uint64_t length, uint64_t iops_unit);

class Limiter {
 public:
  Limiter() = default;  // no limits: everything passes

  // Applies (validated, normalized) settings in place. A limit that stays keeps its levels
  // (clamped to the new capacities, see TokenBucket::Reconfigure); a new limit starts full;
  // a removed limit disappears.
  void Configure(const QosSettings& settings, uint64_t now_ns);
  bool enabled() const { return active_count_ > 0; }
  uint64_t iops_unit() const { return iops_unit_; }

  // 0: the request may pass and has been charged. Otherwise the nanoseconds after which it
  // could pass (nothing charged). A request no limit applies to always passes.
  //
  // `late_ns`: how long after the moment it was due the caller got to run (a reactor timer
  // that fired late). Requests were waiting all that time, so an ideal limiter would have
  // admitted them as the tokens arrived; each bucket may refill beyond its capacity by what
  // it earned in those `late_ns` (rate x late_ns), so a stalled reactor catches up instead of
  // losing the tokens above r*q. Call ClampToCapacity() once the waiting requests are through.
  uint64_t Admit(const RequestCost& cost, uint64_t now_ns, uint64_t late_ns = 0);
  // Drops credit above each bucket's capacity (what a late catch-up did not spend).
  void ClampToCapacity();
  // Nanoseconds until `count` (>= 1) requests costing `cost` could pass back to back;
  // UINT64_MAX if the buckets cannot hold that much. For batching timer wake-ups.
  uint64_t NanosUntil(const RequestCost& cost, uint64_t count, uint64_t now_ns) const;

  std::vector<QosBucketStats> Stats(uint64_t now_ns) const;

 private:
  enum Kind : uint8_t { kIops = 0, kReadIops, kWriteIops, kBps, kReadBps, kWriteBps, kKinds };
  struct Limit {
    bool active = false;
    bool has_peak = false;
    uint64_t rate = 0, burst = 0, burst_seconds = 0;
    TokenBucket credit;
    TokenBucket peak;
  };
  static uint64_t ChargeOf(int kind, const RequestCost& cost);

  std::array<Limit, kKinds> limits_{};
  int active_count_ = 0;
  uint64_t iops_unit_ = kDefaultIopsUnit;
};

}  // namespace shale::qos
