#include "engine/common/assert.h"

#include <cstdio>
#include <cstdlib>

namespace shale::internal {
void CheckFailed(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "shale: invariant broken at %s:%d: %s %s\n", file, line, cond, msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace shale::internal
