#include "qos/token_bucket.h"

#include <algorithm>

#include "engine/common/assert.h"

namespace shale::qos {

TokenBucket::TokenBucket(uint64_t rate, Int128 capacity_nt, uint64_t now_ns)
    : rate_(rate), capacity_(capacity_nt), level_(capacity_nt), last_ns_(now_ns) {
  SHALE_CHECK(rate > 0 && capacity_nt > 0, "TokenBucket needs a positive rate and capacity");
}

void TokenBucket::Reconfigure(uint64_t rate, Int128 capacity_nt, uint64_t now_ns) {
  SHALE_CHECK(rate > 0 && capacity_nt > 0, "TokenBucket needs a positive rate and capacity");
  Refill(now_ns);
  rate_ = rate;
  capacity_ = capacity_nt;
  level_ = std::min(level_, capacity_);
}

Int128 TokenBucket::LevelAt(uint64_t now_ns) const {
  if (now_ns <= last_ns_ || level_ >= capacity_) return level_;
  // rate < 2^47 and elapsed < 2^64: the product fits easily in 127 bits.
  const Int128 gained = static_cast<Int128>(rate_) * static_cast<Int128>(now_ns - last_ns_);
  return std::min(capacity_, level_ + gained);
}

void TokenBucket::Refill(uint64_t now_ns, Int128 extra_nt) {
  if (now_ns <= last_ns_) return;
  const Int128 cap = capacity_ + std::max<Int128>(0, extra_nt);
  if (level_ < cap) {
    const Int128 gained = static_cast<Int128>(rate_) * static_cast<Int128>(now_ns - last_ns_);
    level_ = std::min(cap, level_ + gained);
  }
  last_ns_ = now_ns;
}

uint64_t TokenBucket::NanosUntilAbove(Int128 threshold_nt, uint64_t now_ns) const {
  const Int128 level = LevelAt(now_ns);
  if (level > threshold_nt) return 0;
  if (threshold_nt >= capacity_) return UINT64_MAX;
  // Smallest dt with level + rate * dt > threshold.
  const Int128 dt = (threshold_nt - level) / static_cast<Int128>(rate_) + 1;
  return dt >= static_cast<Int128>(UINT64_MAX) ? UINT64_MAX : static_cast<uint64_t>(dt);
}

}  // namespace shale::qos
