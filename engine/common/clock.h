// Clock seam: production code asks a Clock for the time so tests (QoS, timeouts) can drive time
// by hand instead of sleeping.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace shale {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds since an arbitrary epoch.
  virtual uint64_t NowNanos() const = 0;
  // Wall-clock nanoseconds since the Unix epoch (for timestamps shown to people).
  virtual uint64_t WallNanos() const = 0;

  // The process-wide real clock.
  static Clock* Real();
};

// A clock that only moves when told to. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(uint64_t start_nanos = 1'000'000'000) : now_(start_nanos) {}
  uint64_t NowNanos() const override { return now_.load(std::memory_order_acquire); }
  uint64_t WallNanos() const override { return NowNanos(); }
  void Advance(std::chrono::nanoseconds d) { now_.fetch_add(static_cast<uint64_t>(d.count())); }
  void Set(uint64_t nanos) { now_.store(nanos); }

 private:
  std::atomic<uint64_t> now_;
};

}  // namespace shale
