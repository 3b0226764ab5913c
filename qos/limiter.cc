#include "qos/limiter.h"

#include <algorithm>
#include <bit>

namespace shale::qos {
namespace {

constexpr const char* kKindNames[] = {"iops", "read_iops", "write_iops",
                                      "bps",  "read_bps",  "write_bps"};

}  // namespace

RequestCost CostOf(VolumeOp op, uint32_t flags, uint64_t length, uint64_t iops_unit) {
  RequestCost c;
  // The default unit (4 KiB) is a power of two: a shift instead of a division per request.
  const uint64_t ops =
      std::max<uint64_t>(1, (iops_unit & (iops_unit - 1)) == 0
                                ? (length + iops_unit - 1) >> std::countr_zero(iops_unit)
                                : (length + iops_unit - 1) / iops_unit);
  switch (op) {
    case VolumeOp::kRead:
      c = {Direction::kRead, ops, length};
      break;
    case VolumeOp::kWrite:
      c = {Direction::kWrite, ops, length};
      break;
    case VolumeOp::kWriteZeroes:
      c = (flags & kVolumeNoUnmap) ? RequestCost{Direction::kWrite, ops, length}
                                   : RequestCost{Direction::kWrite, 1, 0};
      break;
    case VolumeOp::kDiscard:
      c = {Direction::kWrite, 1, 0};
      break;
    case VolumeOp::kFlush:
      break;
  }
  return c;
}

uint64_t Limiter::ChargeOf(int kind, const RequestCost& cost) {
  switch (kind) {
    case kIops:
      return cost.dir == Direction::kNone ? 0 : cost.ops;
    case kReadIops:
      return cost.dir == Direction::kRead ? cost.ops : 0;
    case kWriteIops:
      return cost.dir == Direction::kWrite ? cost.ops : 0;
    case kBps:
      return cost.dir == Direction::kNone ? 0 : cost.bytes;
    case kReadBps:
      return cost.dir == Direction::kRead ? cost.bytes : 0;
    case kWriteBps:
      return cost.dir == Direction::kWrite ? cost.bytes : 0;
    default:
      return 0;
  }
}

void Limiter::Configure(const QosSettings& in, uint64_t now_ns) {
  const QosSettings s = in.Normalized();
  const int64_t rates[kKinds] = {s.iops, s.read_iops, s.write_iops, s.bps, s.read_bps, s.write_bps};
  const int64_t bursts[kKinds] = {s.burst_iops, s.burst_read_iops, s.burst_write_iops,
                                  s.burst_bps,  s.burst_read_bps,  s.burst_write_bps};
  iops_unit_ = static_cast<uint64_t>(s.iops_unit);
  active_count_ = 0;
  for (int k = 0; k < kKinds; ++k) {
    Limit& l = limits_[k];
    const uint64_t r = static_cast<uint64_t>(std::max<int64_t>(0, rates[k]));
    if (r == 0) {
      l = Limit{};
      continue;
    }
    const uint64_t b = static_cast<uint64_t>(std::max<int64_t>(0, bursts[k]));
    const bool burst = b > r;
    const uint64_t t_ns = static_cast<uint64_t>(s.burst_seconds) * 1'000'000'000ull;
    // Capacities in nanotokens: rate (tokens/s) x duration (ns) / 1e9 x 1e9.
    const Int128 credit_cap =
        static_cast<Int128>(r) * kQuantumNs +
        (burst ? static_cast<Int128>(b - r) * static_cast<Int128>(t_ns) : Int128{0});
    if (l.active) {
      l.credit.Reconfigure(r, credit_cap, now_ns);
    } else {
      l.credit = TokenBucket(r, credit_cap, now_ns);
    }
    if (burst) {
      const Int128 peak_cap = static_cast<Int128>(b) * kQuantumNs;
      if (l.has_peak) {
        l.peak.Reconfigure(b, peak_cap, now_ns);
      } else {
        l.peak = TokenBucket(b, peak_cap, now_ns);
      }
    }
    l.active = true;
    l.has_peak = burst;
    l.rate = r;
    l.burst = burst ? b : 0;
    l.burst_seconds = burst ? static_cast<uint64_t>(s.burst_seconds) : 0;
    ++active_count_;
  }
}

uint64_t Limiter::Admit(const RequestCost& cost, uint64_t now_ns, uint64_t late_ns) {
  if (active_count_ == 0) return 0;
  uint64_t wait = 0;
  const Int128 late = static_cast<Int128>(late_ns);
  for (int k = 0; k < kKinds; ++k) {
    Limit& l = limits_[k];
    if (!l.active || ChargeOf(k, cost) == 0) continue;
    l.credit.Refill(now_ns, static_cast<Int128>(l.rate) * late);
    wait = std::max(wait, l.credit.NanosUntilAbove(0, now_ns));
    if (l.has_peak) {
      l.peak.Refill(now_ns, static_cast<Int128>(l.burst) * late);
      wait = std::max(wait, l.peak.NanosUntilAbove(0, now_ns));
    }
  }
  if (wait != 0) return wait;
  for (int k = 0; k < kKinds; ++k) {
    Limit& l = limits_[k];
    const uint64_t charge = ChargeOf(k, cost);
    if (!l.active || charge == 0) continue;
    l.credit.Charge(charge);
    if (l.has_peak) l.peak.Charge(charge);
  }
  return 0;
}

void Limiter::ClampToCapacity() {
  for (Limit& l : limits_) {
    if (!l.active) continue;
    l.credit.ClampToCapacity();
    if (l.has_peak) l.peak.ClampToCapacity();
  }
}

uint64_t Limiter::NanosUntil(const RequestCost& cost, uint64_t count, uint64_t now_ns) const {
  uint64_t wait = 0;
  for (int k = 0; k < kKinds; ++k) {
    const Limit& l = limits_[k];
    const uint64_t charge = ChargeOf(k, cost);
    if (!l.active || charge == 0) continue;
    const Int128 threshold =
        static_cast<Int128>(count - 1) * static_cast<Int128>(charge) * kNanoPerToken;
    wait = std::max(wait, l.credit.NanosUntilAbove(threshold, now_ns));
    if (l.has_peak) wait = std::max(wait, l.peak.NanosUntilAbove(threshold, now_ns));
  }
  return wait;
}

std::vector<QosBucketStats> Limiter::Stats(uint64_t now_ns) const {
  std::vector<QosBucketStats> out;
  for (int k = 0; k < kKinds; ++k) {
    const Limit& l = limits_[k];
    if (!l.active) continue;
    QosBucketStats b;
    b.limit = kKindNames[k];
    b.rate = l.rate;
    b.burst_rate = l.burst;
    b.tokens = static_cast<double>(l.credit.LevelAt(now_ns)) / static_cast<double>(kNanoPerToken);
    b.capacity = l.credit.capacity_tokens();
    if (l.has_peak) {
      b.peak_tokens =
          static_cast<double>(l.peak.LevelAt(now_ns)) / static_cast<double>(kNanoPerToken);
      b.peak_capacity = l.peak.capacity_tokens();
    }
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace shale::qos
