// Always-on assertions for programmer errors (broken invariants), never for bad input.
#pragma once

#include <sstream>
#include <string>

namespace shale::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond, const std::string& msg);

template <typename... Args>
std::string CheckMessage(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace shale::internal

// SHALE_CHECK(cond, message parts...): aborts with file:line and the message when cond is false.
#define SHALE_CHECK(cond, ...)                                                      \
  do {                                                                              \
    if (__builtin_expect(!(cond), 0))                                               \
      ::shale::internal::CheckFailed(__FILE__, __LINE__, #cond,                     \
                                     ::shale::internal::CheckMessage(__VA_ARGS__)); \
  } while (0)
