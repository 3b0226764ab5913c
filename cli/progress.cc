#include "cli/progress.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <sstream>

#include "engine/common/units.h"

namespace shale::cli {
namespace {

std::string Duration(double seconds) {
  const auto s = static_cast<uint64_t>(seconds + 0.5);
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
  return std::to_string(s / 3600) + "h" + std::to_string(s / 60 % 60) + "m";
}

// The message of the live InterruptNotice (async-signal-safe to write).
char g_interrupt_message[512];
size_t g_interrupt_length = 0;
struct sigaction g_previous {};

void OnInterrupt(int /*signal*/) {
  ssize_t ignored = write(STDERR_FILENO, g_interrupt_message, g_interrupt_length);
  (void)ignored;
  _exit(130);
}

}  // namespace

ProgressMeter::ProgressMeter(std::ostream& err, bool terminal, std::string what, Unit unit,
                             std::string count_name, Clock clock,
                             std::chrono::milliseconds plain_interval)
    : err_(err),
      terminal_(terminal),
      what_(std::move(what)),
      unit_(unit),
      count_name_(std::move(count_name)),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::steady_clock::now(); })),
      plain_interval_(plain_interval),
      start_(clock_()) {}

std::string ProgressMeter::Amount(uint64_t n) const {
  return unit_ == Unit::kBytes ? FormatSize(n) : std::to_string(n);
}

std::string ProgressMeter::Describe(bool bar) const {
  constexpr int kWidth = 24;
  const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done_) / total_;
  std::ostringstream out;
  if (bar) {
    const int filled = static_cast<int>(fraction * kWidth);
    out << "[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] ";
  }
  out << static_cast<int>(fraction * 100) << "% (" << Amount(done_) << " of " << Amount(total_)
      << (unit_ == Unit::kCount && !count_name_.empty() ? " " + count_name_ : "") << ")";
  const double elapsed = std::chrono::duration<double>(clock_() - start_).count();
  if (elapsed > 0 && done_ > 0) {
    const double rate = done_ / elapsed;
    out << ", "
        << (unit_ == Unit::kBytes ? FormatSize(static_cast<uint64_t>(rate))
                                  : std::to_string(static_cast<uint64_t>(rate)))
        << "/s";
    if (done_ < total_) out << ", ETA " << Duration((total_ - done_) / rate);
  }
  return out.str();
}

void ProgressMeter::Update(uint64_t done, uint64_t total) {
  done_ = done;
  total_ = total;
  updated_ = true;
  if (terminal_) {
    err_ << "\r" << what_ << " " << Describe(/*bar=*/true) << "   " << std::flush;
    drawn_ = true;
    return;
  }
  const auto now = clock_();
  if (last_plain_ != std::chrono::steady_clock::time_point{} &&
      now - last_plain_ < plain_interval_) {
    return;
  }
  last_plain_ = now;
  printed_done_ = done;
  err_ << what_ << ": " << Describe(/*bar=*/false) << "\n" << std::flush;
}

void ProgressMeter::Finish() {
  if (!updated_) return;
  if (terminal_) {
    done_ = total_;
    err_ << "\r" << what_ << " " << Describe(/*bar=*/true) << "   \n" << std::flush;
  } else if (printed_done_ != total_ || done_ != total_) {
    done_ = total_;
    err_ << what_ << ": " << Describe(/*bar=*/false) << "\n" << std::flush;
  }
  drawn_ = false;
}

void ProgressMeter::Abandon() {
  if (drawn_) err_ << "\n" << std::flush;
  drawn_ = false;
}

InterruptNotice::InterruptNotice(const std::string& message) {
  const std::string line = "\nshale: interrupted: " + message + "\n";
  g_interrupt_length = std::min(line.size(), sizeof(g_interrupt_message));
  std::memcpy(g_interrupt_message, line.data(), g_interrupt_length);
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_previous);
}

InterruptNotice::~InterruptNotice() { sigaction(SIGINT, &g_previous, nullptr); }

}  // namespace shale::cli
