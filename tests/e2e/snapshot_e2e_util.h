// Helpers shared by the snapshot end-to-end tests (snapshot_test.cc, snapshot_crash_test.cc,
// notebook_test.cc): real clients (qemu-io, nbdcopy) against shaled's NBD exports, and the
// CLI's JSON answers about snapshots, volumes and pools.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {

inline constexpr uint64_t kMiB = 1024 * 1024;

// The tool, or a skip naming the package (scripts/deps installs them all).
#define SHALE_REQUIRE_TOOL(var, name, package)                              \
  const std::string var = FindProgram(name);                                \
  if (var.empty()) {                                                        \
    GTEST_SKIP() << name << " is not installed (Debian package " << package \
                 << "; scripts/deps installs it)";                          \
  }

inline CommandResult Tool(const std::vector<std::string>& argv, int timeout_s = 120) {
  return RunProcess(argv, {.timeout = std::chrono::seconds(timeout_s)});
}

// qemu-io on an NBD URI running `commands` ("write -P 0xaa 0 1M", "read -P 0 1M 4k", ...).
inline CommandResult QemuIo(const std::string& qemu_io, const std::string& uri,
                            const std::vector<std::string>& commands, bool read_only = false) {
  std::vector<std::string> argv = {qemu_io, "-f", "raw"};
  if (read_only) argv.push_back("-r");
  argv.push_back(uri);
  for (const std::string& c : commands) {
    argv.push_back("-c");
    argv.push_back(c);
  }
  return Tool(argv);
}

// qemu-io exits 0 even when a pattern check fails; it says so on stdout.
inline bool QemuOk(const CommandResult& r) {
  return r.exit_code == 0 && r.out.find("failed") == std::string::npos &&
         r.err.find("failed") == std::string::npos;
}

// `shale ... -o json`, asserting success; null JSON (and a test failure) otherwise.
inline nlohmann::json ShaleJson(Harness& h, std::vector<std::string> args) {
  args.push_back("-o");
  args.push_back("json");
  CommandResult r = h.Shale(args);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  if (r.exit_code != 0) return nullptr;
  return r.Json();
}

// The snapshot's recorded digest ("" when it has none yet or the lookup failed).
inline std::string SnapshotDigest(Harness& h, const std::string& ref) {
  nlohmann::json j = ShaleJson(h, {"snapshot", "show", ref});
  if (!j.is_object() || j["digest_state"] != "ready") return "";
  return j["digest"].get<std::string>();
}

// `pool check default` is clean (exit 0); records the report otherwise.
inline void ExpectPoolClean(Harness& h, const std::string& when) {
  CommandResult r = h.Shale({"pool", "check", "default"});
  EXPECT_EQ(r.exit_code, 0) << "pool check " << when << ": " << r.Describe();
}

inline uint64_t PoolFreeBytes(Harness& h) {
  nlohmann::json j = ShaleJson(h, {"pool", "show", "default"});
  return j.is_object() ? j["free_bytes"].get<uint64_t>() : 0;
}

}  // namespace shale::e2e
