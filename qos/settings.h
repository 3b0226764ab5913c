// QosSettings: what an operator asks of one volume — limits (with bursts), a weight and a
// reservation. Plain data: the limiter, the scheduler and the records all derive from it.
//
// Every rate is per second; 0 means "unlimited" (or "none" / "the default", as noted). The fields
// are signed so that bad input from any edge (CLI, gRPC, a damaged record) reaches Validate()
// unchanged and gets a clear InvalidArgument instead of wrapping into a huge unsigned value.
// The model behind the numbers is in docs/qos.md.
#pragma once

#include <cstdint>
#include <string>

#include "engine/common/status.h"

namespace shale::qos {

namespace pb {
class Settings;
}

// Bounds beyond which a value is treated as a typo rather than a wish.
inline constexpr int64_t kMaxIops = 100'000'000;      // 100 M operations/s
inline constexpr int64_t kMaxBps = int64_t{1} << 40;  // 1 TiB/s
inline constexpr int64_t kMaxBurstSeconds = 86'400;   // one day of credit
inline constexpr int64_t kMinWeight = 1, kMaxWeight = 10'000;
inline constexpr int64_t kDefaultWeight = 100;
inline constexpr int64_t kDefaultIopsUnit = 4096;   // the example: 4 KiB
inline constexpr int64_t kDefaultBurstSeconds = 1;  // QEMU's default burst length
// Smoothing quantum q: a limit without burst may run q ahead of its rate (bucket capacity r*q),
// and the burst "peak" bucket holds B*q. Small enough that 100 ms windows stay within ~10%.
inline constexpr uint64_t kQuantumNs = 10'000'000;

struct QosSettings {
  // Limits; 0 = unlimited. IOPS count a request as ceil(length / iops_unit) operations.
  int64_t iops = 0, read_iops = 0, write_iops = 0;
  int64_t bps = 0, read_bps = 0, write_bps = 0;  // bytes per second
  // Burst rate B of each limit (0 = no burst). Needs the matching base limit and must be >= it.
  int64_t burst_iops = 0, burst_read_iops = 0, burst_write_iops = 0;
  int64_t burst_bps = 0, burst_read_bps = 0, burst_write_bps = 0;
  // Burst length T: seconds a full credit bucket sustains B. 0 = 1 s when a burst is set.
  int64_t burst_seconds = 0;
  int64_t iops_unit = 0;         // bytes per counted operation; 0 = 4096; 512..32 MiB, x512
  int64_t weight = 0;            // share under contention; 0 = 100; 1..10000
  int64_t reservation_iops = 0;  // floor under contention (ops/s, by iops_unit); 0 = none

  // InvalidArgument naming the field and the value for: negative or absurd values, a burst
  // without its base limit or below it, burst_seconds without a burst, a bad iops_unit or
  // weight, a reservation above the total IOPS limit.
  Status Validate() const;
  // Fills the defaults in (weight, iops_unit, burst_seconds when a burst is set). Settings are
  // stored and reported normalized so that `get` shows what is in force.
  QosSettings Normalized() const;
  // Any limit set (the limiter has work to do).
  bool has_limits() const;
  // "iops=1000 burst_iops=5000 burst_seconds=10 weight=100" (non-default fields only).
  std::string ToString() const;

  bool operator==(const QosSettings&) const = default;
};

void ToProto(const QosSettings& s, pb::Settings* out);
QosSettings FromProto(const pb::Settings& p);

}  // namespace shale::qos
