// The CLI without a daemon: endpoint resolution, parse errors, help, unreachable daemons.
// Talking to a real shaled is covered by tests/e2e.
#include "cli/cli_commands.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace shale::cli {
namespace {

struct CliRun {
  int code;
  std::string out;
  std::string err;
};

CliRun Shale(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"shale"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  int code = RunShale(static_cast<int>(argv.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

std::string Cwd() { return std::filesystem::current_path().string(); }

// A socket path nobody listens on.
std::string DeadEndpoint() { return "unix:///nonexistent-shale-test/shaled.sock"; }

TEST(ResolveEndpoint, UnixPathsBecomeAbsolute) {
  EXPECT_EQ(*ResolveEndpoint("unix:///run/shaled.sock"), "unix:///run/shaled.sock");
  EXPECT_EQ(*ResolveEndpoint("unix://./shale-data/shaled.sock"),
            "unix://" + Cwd() + "/shale-data/shaled.sock");
  EXPECT_EQ(*ResolveEndpoint("unix:rel.sock"), "unix://" + Cwd() + "/rel.sock");
  EXPECT_EQ(*ResolveEndpoint("/abs/x.sock"), "unix:///abs/x.sock");
  EXPECT_EQ(*ResolveEndpoint("localhost:5000"), "localhost:5000");
  EXPECT_EQ(*ResolveEndpoint(kDefaultEndpoint), "unix://" + Cwd() + "/shale-data/shaled.sock");
  EXPECT_FALSE(ResolveEndpoint("").ok());
  EXPECT_FALSE(ResolveEndpoint("unix://").ok());
  EXPECT_FALSE(ResolveEndpoint("unix:///" + std::string(200, 'x')).ok());
}

TEST(Cli, HelpListsCommandsAndExitsZero) {
  CliRun r = Shale({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* word : {"status", "pool", "volume", "snapshot", "clone", "--endpoint",
                           "--output", "SHALE_ENDPOINT"}) {
    EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
  }
  r = Shale({"volume", "create", "--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* word : {"--size", "--pool", "--read-only", "--label"}) {
    EXPECT_NE(r.out.find(word), std::string::npos) << word << "\n" << r.out;
  }
  r = Shale({"--version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("shale ", 0), 0u);
}

// Each bad command line: exit 2, nothing on stdout, one "shale: ..." line naming the problem.
TEST(Cli, UsageErrorsAreOneLine) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "missing command"},
      {{"frob"}, "unknown command 'frob'"},
      {{"volume"}, "missing command (choose one of: create, list, show, resize, delete"},
      {{"volume", "frob"}, "unknown command 'frob'"},
      {{"volume", "create"}, "NAME is required"},
      {{"volume", "create", "v"}, "--size is required"},
      {{"volume", "create", "v", "--size", "12Q"}, "invalid size '12Q'"},
      {{"volume", "create", "v", "--size", "1.5G"}, "invalid size '1.5G'"},
      {{"volume", "create", "v", "--size=-1"}, "invalid size '-1'"},
      {{"volume", "create", "v", "--size", "0"}, "greater than 0"},
      {{"volume", "create", "v", "--size", "1G", "--label", "novalue"}, "KEY=VALUE"},
      {{"volume", "create", "v", "--size", "1G", "--label", "a=1", "--label", "a=2"}, "'a'"},
      {{"volume", "list", "--frob"}, "--frob"},
      {{"volume", "show", "a", "b"}, "b"},
      {{"pool", "create", "p"}, "--device is required"},
      {{"pool", "create", "p", "--device", "/x", "--cluster-size", "8G"}, "too large"},
      {{"-o", "yaml", "status"}, "yaml"},
      {{"--timeout", "0", "status"}, "--timeout"},
      {{"--endpoint", "unix://", "status"}, "no socket path"},
      // Snapshots and clones.
      {{"snapshot"},
       "missing command (choose one of: create, list, show, delete, verify, "
       "export, import, create-group, list-groups, show-group, delete-group)"},
      {{"snapshot", "create-group", "g"}, "VOLUMES is required"},
      {{"snapshot", "create-group", "g", "v", "--label", "x"}, "KEY=VALUE"},
      {{"snapshot", "show-group"}, "NAME is required"},
      {{"snapshot", "create"}, "VOLUME is required"},
      {{"snapshot", "create", "v"}, "SNAP is required"},
      {{"snapshot", "create", "v", "s", "--label", "novalue"}, "KEY=VALUE"},
      {{"snapshot", "create", "v@s", "--label", "a=1", "--label", "a=2"}, "'a'"},
      {{"snapshot", "show"}, "VOLUME@SNAP is required"},
      {{"snapshot", "delete", "v@s", "extra"}, "extra"},
      {{"snapshot", "export", "v@s"}, "FILE is required"},
      {{"snapshot", "import", "f"}, "VOLUME is required"},
      {{"clone"}, "missing command (choose one of: create, list)"},
      {{"clone", "create", "v@s"}, "NEWVOL is required"},
      {{"clone", "create", "v@s", "c", "--label", "x"}, "KEY=VALUE"},
      {{"volume", "revert", "v"}, "--to is required"},
      {{"volume", "flatten"}, "NAME is required"},
  };
  for (const auto& [args, needle] : cases) {
    CliRun r = Shale(args);
    SCOPED_TRACE(args.empty() ? "(no args)" : args.back());
    EXPECT_EQ(r.code, kExitUsage);
    EXPECT_EQ(r.out, "");
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.rfind("shale: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "one line: " << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  }
}

TEST(Cli, UnreachableDaemonIsOneClearLine) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--endpoint", DeadEndpoint(), "status"},
        std::vector<std::string>{"volume", "list", "-o", "json", "--endpoint", DeadEndpoint()}}) {
    CliRun r = Shale(args);
    EXPECT_EQ(r.code, kExitFailure);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(r.err,
              "shale: cannot reach shaled at " + DeadEndpoint() +
                  ": no such socket; start it with scripts/quickstart or build/bin/shaled, or "
                  "point --endpoint or $SHALE_ENDPOINT at a running shaled\n");
  }
}

TEST(Cli, EndpointFromEnvironment) {
  setenv(kEndpointEnvVar, DeadEndpoint().c_str(), 1);
  CliRun r = Shale({"status"});
  unsetenv(kEndpointEnvVar);
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_NE(r.err.find(DeadEndpoint()), std::string::npos) << r.err;

  // --endpoint wins over the environment.
  setenv(kEndpointEnvVar, "unix:///elsewhere.sock", 1);
  r = Shale({"--endpoint", DeadEndpoint(), "status"});
  unsetenv(kEndpointEnvVar);
  EXPECT_NE(r.err.find(DeadEndpoint()), std::string::npos) << r.err;
}

}  // namespace
}  // namespace shale::cli
