// Reading shaled's /metrics in end-to-end tests: GET through curl, the value of one sample, and
// `promtool check metrics`. Header-only (metrics_test.cc, capacity_test.cc, replication_test.cc).
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "tests/e2e/harness.h"

namespace shale::e2e {

// GET http://ADDRESS/PATH with curl; the body, or "" (with a test failure) on an error.
inline std::string HttpGet(const std::string& address, const std::string& path) {
  CommandResult r = RunProcess(
      {FindProgram("curl"), "-sS", "--fail", "--max-time", "20", "http://" + address + path});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  return r.exit_code == 0 ? r.out : std::string();
}

// The value of the first sample of `series` ("name" or "name_count") whose labels contain
// `matcher` (e.g. volume="v"); nullopt when there is none.
inline std::optional<double> Sample(const std::string& text, const std::string& series,
                                    const std::string& matcher) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with(series + "{") && line != series && !line.starts_with(series + " ")) {
      continue;
    }
    const size_t close = line.rfind('}');
    const std::string labels = close == std::string::npos ? "" : line.substr(0, close + 1);
    if (!matcher.empty() && labels.find(matcher) == std::string::npos) continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return std::nullopt;
}

// `promtool check metrics` on `text` (written to `file`); its verdict for a failure message, ""
// when it passes.
inline std::string PromtoolCheckMetrics(const std::string& promtool, const std::string& file,
                                        const std::string& text) {
  std::ofstream(file) << text;
  CommandResult r =
      RunProcess({"/bin/sh", "-c", "'" + promtool + "' check metrics < '" + file + "'"});
  return r.exit_code == 0 ? std::string() : r.Describe();
}

}  // namespace shale::e2e
