// The main() of every GoogleTest binary (shale_add_test in the top CMakeLists.txt): GoogleTest's
// own, plus an exit code that tells ctest a skipped run from a passed or a failed one. A failure
// exits 1 even when other tests of the binary skipped (an output pattern such as "[  SKIPPED ]"
// would mark the whole binary skipped and hide the failure); otherwise any skip exits
// kSkipExitCode, which ctest reports as "Skipped" (SKIP_RETURN_CODE).
#include <gtest/gtest.h>

namespace {
constexpr int kSkipExitCode = 77;
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (RUN_ALL_TESTS() != 0) return 1;
  return ::testing::UnitTest::GetInstance()->skipped_test_count() > 0 ? kSkipExitCode : 0;
}
