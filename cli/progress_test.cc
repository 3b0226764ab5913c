#include "cli/progress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

namespace shale::cli {
namespace {

using std::chrono::seconds;

struct FakeClock {
  std::chrono::steady_clock::time_point now{std::chrono::hours(1)};
  ProgressMeter::Clock fn() {
    return [this] { return now; };
  }
};

TEST(ProgressMeterTest, TerminalRedrawsOneLineWithBarRateAndEta) {
  FakeClock clock;
  std::ostringstream err;
  ProgressMeter meter(err, /*terminal=*/true, "exporting 'v@s'", ProgressMeter::Unit::kBytes, "",
                      clock.fn());
  clock.now += seconds(2);
  meter.Update(16 << 20, 64 << 20);
  EXPECT_EQ(err.str(),
            "\rexporting 'v@s' [######..................] 25% (16 MiB of 64 MiB), "
            "8 MiB/s, ETA 6s   ");
  clock.now += seconds(2);
  meter.Update(32 << 20, 64 << 20);
  meter.Finish();
  const std::string out = err.str();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(out.find("\rexporting 'v@s' [########################] 100% (64 MiB of 64 MiB)"),
            std::string::npos)
      << out;
}

TEST(ProgressMeterTest, PlainLinesAreRateLimitedAndTheEndIsAlwaysShown) {
  FakeClock clock;
  std::ostringstream err;
  ProgressMeter meter(err, /*terminal=*/false, "flattening 'c'", ProgressMeter::Unit::kCount,
                      "clusters", clock.fn(), seconds(2));
  clock.now += seconds(1);
  meter.Update(10, 100);  // first: shown
  clock.now += seconds(1);
  meter.Update(20, 100);  // 1 s later: not
  clock.now += seconds(1);
  meter.Update(30, 100);  // 2 s after the first: shown
  meter.Finish();
  EXPECT_EQ(err.str(),
            "flattening 'c': 10% (10 of 100 clusters), 10/s, ETA 9s\n"
            "flattening 'c': 30% (30 of 100 clusters), 10/s, ETA 7s\n"
            "flattening 'c': 100% (100 of 100 clusters), 33/s\n");
  EXPECT_EQ(err.str().find('\r'), std::string::npos);
}

TEST(ProgressMeterTest, NothingWithoutProgressAndAbandonEndsTheLine) {
  std::ostringstream quiet;
  ProgressMeter none(quiet, true, "x", ProgressMeter::Unit::kBytes);
  none.Finish();
  none.Abandon();
  EXPECT_EQ(quiet.str(), "");
  std::ostringstream err;
  ProgressMeter meter(err, true, "x", ProgressMeter::Unit::kBytes);
  meter.Update(1, 2);
  meter.Abandon();
  EXPECT_EQ(err.str().back(), '\n');
}

}  // namespace
}  // namespace shale::cli
