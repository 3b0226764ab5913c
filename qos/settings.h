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

// Copies every field to and from a protobuf message with the same field names: qos.proto's
// pb::Settings (records) and control.proto's shale.v1.QosSettings (the API). Values stay signed
// both ways, so a negative value from a client reaches Validate() unchanged and is refused there.
// Every field of QosSettings by its name in the control API's QosSettings message (and in a
// replicated volume's membership record).
struct SettingsField {
  const char* name;
  int64_t QosSettings::*field;
};
inline constexpr SettingsField kSettingsFields[] = {
    {"iops", &QosSettings::iops},
    {"read_iops", &QosSettings::read_iops},
    {"write_iops", &QosSettings::write_iops},
    {"bps", &QosSettings::bps},
    {"read_bps", &QosSettings::read_bps},
    {"write_bps", &QosSettings::write_bps},
    {"burst_iops", &QosSettings::burst_iops},
    {"burst_read_iops", &QosSettings::burst_read_iops},
    {"burst_write_iops", &QosSettings::burst_write_iops},
    {"burst_bps", &QosSettings::burst_bps},
    {"burst_read_bps", &QosSettings::burst_read_bps},
    {"burst_write_bps", &QosSettings::burst_write_bps},
    {"burst_seconds", &QosSettings::burst_seconds},
    {"iops_unit", &QosSettings::iops_unit},
    {"weight", &QosSettings::weight},
    {"reservation_iops", &QosSettings::reservation_iops},
};

template <typename Message>
void SettingsToMessage(const QosSettings& s, Message* out) {
  out->set_iops(s.iops);
  out->set_read_iops(s.read_iops);
  out->set_write_iops(s.write_iops);
  out->set_bps(s.bps);
  out->set_read_bps(s.read_bps);
  out->set_write_bps(s.write_bps);
  out->set_burst_iops(s.burst_iops);
  out->set_burst_read_iops(s.burst_read_iops);
  out->set_burst_write_iops(s.burst_write_iops);
  out->set_burst_bps(s.burst_bps);
  out->set_burst_read_bps(s.burst_read_bps);
  out->set_burst_write_bps(s.burst_write_bps);
  out->set_burst_seconds(s.burst_seconds);
  out->set_iops_unit(s.iops_unit);
  out->set_weight(s.weight);
  out->set_reservation_iops(s.reservation_iops);
}

template <typename Message>
QosSettings SettingsFromMessage(const Message& p) {
  QosSettings s;
  s.iops = p.iops();
  s.read_iops = p.read_iops();
  s.write_iops = p.write_iops();
  s.bps = p.bps();
  s.read_bps = p.read_bps();
  s.write_bps = p.write_bps();
  s.burst_iops = p.burst_iops();
  s.burst_read_iops = p.burst_read_iops();
  s.burst_write_iops = p.burst_write_iops();
  s.burst_bps = p.burst_bps();
  s.burst_read_bps = p.burst_read_bps();
  s.burst_write_bps = p.burst_write_bps();
  s.burst_seconds = p.burst_seconds();
  s.iops_unit = p.iops_unit();
  s.weight = p.weight();
  s.reservation_iops = p.reservation_iops();
  return s;
}

}  // namespace shale::qos
