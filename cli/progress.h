// Progress of long CLI operations (flatten; docs/operations.md, "Progress") and what Ctrl-C does
// to them.
//
// ProgressMeter: on a terminal, one line redrawn in place ("\r"): a bar, percent, done/total,
// rate and ETA; otherwise plain lines ("flattening 'v': 40% (...), 12 MiB/s, ETA 3s"), at most
// one per `plain_interval`, and always one for the end — so logs and CI output show progress
// without control characters.
//
// InterruptNotice: while one lives, SIGINT (Ctrl-C) prints "shale: interrupted: MESSAGE" on
// stderr and exits 130; MESSAGE says what state the operation is left in (cancelled in shaled,
// or still running there). The gRPC connection closes with the process, which is what shaled
// sees as the cancellation.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>

namespace shale::cli {

class ProgressMeter {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  enum class Unit { kBytes, kCount };

  // `what` starts every line ("flattening 'v'"); `count_name` names kCount units ("clusters").
  // `clock` (tests) defaults to steady_clock.
  ProgressMeter(std::ostream& err, bool terminal, std::string what, Unit unit,
                std::string count_name = {}, Clock clock = nullptr,
                std::chrono::milliseconds plain_interval = std::chrono::seconds(2));
  ProgressMeter(const ProgressMeter&) = delete;
  ProgressMeter& operator=(const ProgressMeter&) = delete;

  void Update(uint64_t done, uint64_t total);
  // The end: the bar at 100 % and the terminal line ended; plain: a 100 % line unless the last
  // line said so already. Nothing if there was no Update().
  void Finish();
  // Ends a terminal line without a final state (before an error message).
  void Abandon();

  // "[#####.....] 50% 32 MiB of 64 MiB, 8.0 MiB/s, ETA 4s" without the leading "what: ".
  std::string Describe(bool bar) const;

 private:
  std::string Amount(uint64_t n) const;

  std::ostream& err_;
  const bool terminal_;
  const std::string what_;
  const Unit unit_;
  const std::string count_name_;
  const Clock clock_;
  const std::chrono::milliseconds plain_interval_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_plain_{};
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  uint64_t printed_done_ = UINT64_MAX;  // `done` of the last plain line
  bool updated_ = false;
  bool drawn_ = false;  // a terminal line is open
};

class InterruptNotice {
 public:
  explicit InterruptNotice(const std::string& message);
  ~InterruptNotice();
  InterruptNotice(const InterruptNotice&) = delete;
  InterruptNotice& operator=(const InterruptNotice&) = delete;
};

}  // namespace shale::cli
