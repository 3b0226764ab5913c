// TokenBucket: one rate with a bounded store of credit, in exact integer arithmetic.
//
// The level is kept in nanotokens (1e-9 token) so that refilling is `rate * elapsed_ns` with no
// rounding: a bucket at 1000 tokens/s gains exactly one token per millisecond, and admission
// sequences are reproducible to the nanosecond (tests rely on it). 128-bit integers keep a day
// of credit at 1 TiB/s (~1e26 nanotokens) and the product rate x elapsed far from overflow.
//
// Contract (docs/qos.md): a request may pass when the level is positive; it is then charged its
// full cost, so the level may go negative and the next requests wait until it is positive
// again. Over any interval the tokens charged are at most rate x interval + capacity + one
// request's cost, which is what makes long-run rates exact even for requests larger than the
// capacity.
//
// Not thread-safe: a bucket belongs to one volume's limiter, on its reactor.
#pragma once

#include <cstdint>

namespace shale::qos {

__extension__ typedef __int128 Int128;  // GCC/Clang; __extension__ keeps -Wpedantic quiet

inline constexpr int64_t kNanoPerToken = 1'000'000'000;

class TokenBucket {
 public:
  TokenBucket() = default;
  // A full bucket refilled at `rate` tokens/s (> 0) holding at most `capacity_nt` nanotokens
  // (> 0; may be less than one token).
  TokenBucket(uint64_t rate, Int128 capacity_nt, uint64_t now_ns);

  // Changes rate and capacity in place (live reconfiguration): credits earned up to now at the
  // old rate are kept, then the level is clamped to the new capacity. Debt (a negative level)
  // is kept as it is.
  void Reconfigure(uint64_t rate, Int128 capacity_nt, uint64_t now_ns);
  // Brings the level up to now. Time going backwards is ignored. `extra_nt` lets this refill
  // go that far above the capacity (catch-up after a late wake-up, see Limiter::Admit); a level
  // above the capacity gains nothing more and stays until spent or ClampToCapacity().
  void Refill(uint64_t now_ns, Int128 extra_nt = 0);
  void ClampToCapacity() { level_ = level_ < capacity_ ? level_ : capacity_; }
  // Level after Refill(now) without changing the bucket.
  Int128 LevelAt(uint64_t now_ns) const;
  // Nanoseconds from now until the level exceeds `threshold_nt` (0 if it already does);
  // UINT64_MAX if it never will (threshold at or above the capacity).
  uint64_t NanosUntilAbove(Int128 threshold_nt, uint64_t now_ns) const;
  // Removes `tokens` (call after Refill(now)).
  void Charge(uint64_t tokens) { level_ -= static_cast<Int128>(tokens) * kNanoPerToken; }

  uint64_t rate() const { return rate_; }
  Int128 level_nt() const { return level_; }
  Int128 capacity_nt() const { return capacity_; }
  double tokens() const { return static_cast<double>(level_) / static_cast<double>(kNanoPerToken); }
  double capacity_tokens() const {
    return static_cast<double>(capacity_) / static_cast<double>(kNanoPerToken);
  }

 private:
  uint64_t rate_ = 0;  // tokens per second == nanotokens per nanosecond
  Int128 capacity_ = 0;
  Int128 level_ = 0;
  uint64_t last_ns_ = 0;  // time up to which level_ includes the refill
};

}  // namespace shale::qos
