#include "qos/settings.h"

#include <initializer_list>
#include <string_view>

#include "engine/volume/volume_io.h"

namespace shale::qos {
namespace {

std::string Num(int64_t v) { return std::to_string(v); }

Status CheckRange(const char* field, int64_t v, int64_t max, const char* zero_means) {
  if (v < 0 || v > max) {
    return Status::InvalidArgument(std::string("qos: ") + field + " must be between 0 (" +
                                   zero_means + ") and " + Num(max) + ", got " + Num(v));
  }
  return Status::Ok();
}

// A burst rate needs its base limit and may not be below it.
Status CheckBurst(const char* burst_name, int64_t burst, const char* base_name, int64_t base) {
  if (burst == 0) return Status::Ok();
  if (base == 0) {
    return Status::InvalidArgument(std::string("qos: ") + burst_name + " (" + Num(burst) +
                                   ") needs " + base_name + ", the base rate it bursts above");
  }
  if (burst < base) {
    return Status::InvalidArgument(std::string("qos: ") + burst_name + " (" + Num(burst) +
                                   ") is below " + base_name + " (" + Num(base) +
                                   "); the burst rate must be at least the base rate");
  }
  return Status::Ok();
}

bool AnyBurst(const QosSettings& s) {
  return s.burst_iops || s.burst_read_iops || s.burst_write_iops || s.burst_bps ||
         s.burst_read_bps || s.burst_write_bps;
}

}  // namespace

Status QosSettings::Validate() const {
  struct Field {
    const char* name;
    int64_t value;
    int64_t max;
  };
  for (const Field& f :
       {Field{"iops", iops, kMaxIops}, Field{"read_iops", read_iops, kMaxIops},
        Field{"write_iops", write_iops, kMaxIops}, Field{"bps", bps, kMaxBps},
        Field{"read_bps", read_bps, kMaxBps}, Field{"write_bps", write_bps, kMaxBps},
        Field{"burst_iops", burst_iops, kMaxIops},
        Field{"burst_read_iops", burst_read_iops, kMaxIops},
        Field{"burst_write_iops", burst_write_iops, kMaxIops},
        Field{"burst_bps", burst_bps, kMaxBps}, Field{"burst_read_bps", burst_read_bps, kMaxBps},
        Field{"burst_write_bps", burst_write_bps, kMaxBps}}) {
    SHALE_RETURN_IF_ERROR(
        CheckRange(f.name, f.value, f.max,
                   std::string_view(f.name).starts_with("burst_") ? "no burst" : "unlimited"));
  }
  SHALE_RETURN_IF_ERROR(CheckRange("reservation_iops", reservation_iops, kMaxIops, "none"));
  SHALE_RETURN_IF_ERROR(
      CheckRange("burst_seconds", burst_seconds, kMaxBurstSeconds, "1 s when a burst is set"));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_iops", burst_iops, "iops", iops));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_read_iops", burst_read_iops, "read_iops", read_iops));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_write_iops", burst_write_iops, "write_iops", write_iops));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_bps", burst_bps, "bps", bps));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_read_bps", burst_read_bps, "read_bps", read_bps));
  SHALE_RETURN_IF_ERROR(CheckBurst("burst_write_bps", burst_write_bps, "write_bps", write_bps));
  if (burst_seconds != 0 && !AnyBurst(*this)) {
    return Status::InvalidArgument("qos: burst_seconds (" + Num(burst_seconds) +
                                   ") is set but no burst rate is (burst_iops, burst_bps, ...)");
  }
  if (iops_unit != 0 &&
      (iops_unit < static_cast<int64_t>(kSectorSize) ||
       iops_unit > static_cast<int64_t>(kMaxVolumeIoBytes) || iops_unit % kSectorSize != 0)) {
    return Status::InvalidArgument(
        "qos: iops_unit must be 0 (default 4096) or a multiple of 512 between 512 and " +
        Num(static_cast<int64_t>(kMaxVolumeIoBytes)) + " bytes, got " + Num(iops_unit));
  }
  if (weight != 0 && (weight < kMinWeight || weight > kMaxWeight)) {
    return Status::InvalidArgument("qos: weight must be between " + Num(kMinWeight) + " and " +
                                   Num(kMaxWeight) + " (0 = default " + Num(kDefaultWeight) +
                                   "), got " + Num(weight));
  }
  if (reservation_iops != 0 && iops != 0 && reservation_iops > iops) {
    return Status::InvalidArgument("qos: reservation_iops (" + Num(reservation_iops) +
                                   ") exceeds the iops limit (" + Num(iops) +
                                   "); a volume cannot be guaranteed more than it may use");
  }
  return Status::Ok();
}

QosSettings QosSettings::Normalized() const {
  QosSettings s = *this;
  if (s.weight == 0) s.weight = kDefaultWeight;
  if (s.iops_unit == 0) s.iops_unit = kDefaultIopsUnit;
  if (s.burst_seconds == 0 && AnyBurst(s)) s.burst_seconds = kDefaultBurstSeconds;
  return s;
}

bool QosSettings::has_limits() const {
  return iops || read_iops || write_iops || bps || read_bps || write_bps;
}

std::string QosSettings::ToString() const {
  std::string out;
  auto add = [&](const char* name, int64_t v) {
    if (v == 0) return;
    if (!out.empty()) out += ' ';
    out += name;
    out += '=';
    out += Num(v);
  };
  add("iops", iops);
  add("read_iops", read_iops);
  add("write_iops", write_iops);
  add("bps", bps);
  add("read_bps", read_bps);
  add("write_bps", write_bps);
  add("burst_iops", burst_iops);
  add("burst_read_iops", burst_read_iops);
  add("burst_write_iops", burst_write_iops);
  add("burst_bps", burst_bps);
  add("burst_read_bps", burst_read_bps);
  add("burst_write_bps", burst_write_bps);
  add("burst_seconds", burst_seconds);
  add("iops_unit", iops_unit);
  add("weight", weight);
  add("reservation_iops", reservation_iops);
  return out.empty() ? "unlimited" : out;
}

}  // namespace shale::qos
