// Bad input through the real CLI: each case is a clear one-line error on stderr with a non-zero
// exit, changes nothing, and the daemon keeps answering. One daemon serves the whole suite.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

struct Case {
  std::vector<std::string> args;
  std::string needle;  // must appear in the error line
};

class BadInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    harness_ = new Harness();
    ASSERT_TRUE(harness_->StartDaemon());
    CommandResult r = harness_->Shale({"volume", "create", "v1", "--size", "1G"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }
  static void TearDownTestSuite() {
    delete harness_;
    harness_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(harness_, nullptr); }

  // Runs every case, then checks the daemon still answers and nothing changed.
  void Check(const std::vector<Case>& cases) {
    Harness& h = *harness_;
    const nlohmann::json volumes = h.Shale({"volume", "list", "-o", "json"}).Json();
    const nlohmann::json pools = h.Shale({"pool", "list", "-o", "json"}).Json();
    for (const Case& c : cases) {
      std::string cmdline;
      for (const std::string& a : c.args)
        cmdline += " " + (a.size() > 40 ? a.substr(0, 40) + "..." : a);
      SCOPED_TRACE("shale" + cmdline);
      ExpectOneLineError(h.Shale(c.args), c.needle);
      CommandResult status = h.Shale({"status"});
      ASSERT_EQ(status.exit_code, 0) << "daemon stopped answering: " << status.Describe();
    }
    EXPECT_EQ(h.Shale({"volume", "list", "-o", "json"}).Json(), volumes);
    EXPECT_EQ(h.Shale({"pool", "list", "-o", "json"}).Json(), pools);
    EXPECT_TRUE(h.daemon_running());
  }

  static Harness* harness_;
};

Harness* BadInput::harness_ = nullptr;

TEST_F(BadInput, MissingArguments) {
  Check({
      {{}, "missing command"},
      {{"volume"}, "missing command"},
      {{"pool"}, "missing command"},
      {{"volume", "create"}, "NAME is required"},
      {{"volume", "create", "x"}, "--size is required"},
      {{"volume", "resize", "v1"}, "--size is required"},
      {{"volume", "show"}, "NAME is required"},
      {{"volume", "delete"}, "NAME is required"},
      {{"pool", "create", "p"}, "--device is required"},
      {{"pool", "delete"}, "NAME is required"},
      {{"volume", "create", "x", "--size"}, "--size"},
  });
}

TEST_F(BadInput, UnknownCommandsAndFlags) {
  Check({
      {{"frobnicate"}, "unknown command 'frobnicate'"},
      {{"volume", "explode"}, "unknown command 'explode'"},
      {{"pool", "destroy", "default"}, "unknown command 'destroy'"},
      {{"volume", "list", "--frob"}, "unexpected argument '--frob'"},
      {{"--frob", "status"}, "--frob"},
      {{"status", "now"}, "unexpected argument 'now'"},
      {{"volume", "list", "-o", "yaml"}, "yaml"},
  });
}

TEST_F(BadInput, Sizes) {
  Check({
      {{"volume", "create", "x", "--size", "-1"}, "invalid size '-1'"},
      {{"volume", "create", "x", "--size", "12Q"}, "invalid size '12Q'"},
      {{"volume", "create", "x", "--size", "1.5G"}, "invalid size '1.5G'"},
      {{"volume", "create", "x", "--size", "0"}, "size must be greater than 0"},
      {{"volume", "create", "x", "--size", "G"}, "invalid size 'G'"},
      {{"volume", "create", "x", "--size", "99999999999999999999"}, "too large"},
      {{"volume", "create", "x", "--size", "1P"}, "exceeds the maximum"},
      {{"volume", "resize", "v1", "--size", "-1"}, "invalid size '-1'"},
      {{"volume", "resize", "v1", "--size", "12Q"}, "invalid size '12Q'"},
      {{"volume", "resize", "v1", "--size", "1.5G"}, "invalid size '1.5G'"},
      {{"volume", "resize", "v1", "--size", "0"}, "size must be greater than 0"},
      {{"pool", "create", "p", "--device", "/tmp/x.img", "--size", "12Q"}, "invalid size '12Q'"},
  });
}

TEST_F(BadInput, Names) {
  const std::string long_name(300, 'n');
  Check({
      {{"volume", "create", "a/b", "--size", "1G"}, "volume name 'a/b' may contain only"},
      {{"volume", "create", "a@b", "--size", "1G"}, "volume name 'a@b' may contain only"},
      {{"volume", "create", long_name, "--size", "1G"}, "300 bytes long; the limit is 128"},
      {{"volume", "create", ".hidden", "--size", "1G"}, "must start with a letter or digit"},
      {{"volume", "show", "a/b"}, "may contain only"},
      {{"volume", "create", "x", "--size", "1G", "--pool", "p@1"}, "pool name 'p@1'"},
      {{"pool", "create", "a/b", "--device", "/tmp/never.img", "--size", "64M"},
       "pool name 'a/b' may contain only"},
      {{"pool", "create", "a@b", "--device", "/tmp/never.img", "--size", "64M"},
       "pool name 'a@b' may contain only"},
      {{"pool", "create", long_name, "--device", "/tmp/never.img", "--size", "64M"},
       "300 bytes long"},
      {{"volume", "create", "x", "--size", "1G", "--label", "novalue"}, "KEY=VALUE"},
      {{"volume", "create", "x", "--size", "1G", "--label", "bad key=1"}, "label key 'bad key'"},
  });
}

TEST_F(BadInput, ConflictsAndMissingVolumes) {
  Check({
      {{"volume", "create", "v1", "--size", "1G"}, "volume 'v1' already exists"},
      {{"volume", "delete", "ghost"}, "volume 'ghost' not found"},
      {{"volume", "show", "ghost"}, "volume 'ghost' not found"},
      {{"volume", "resize", "ghost", "--size", "2G"}, "volume 'ghost' not found"},
      {{"volume", "resize", "v1", "--size", "512M"}, "shrinking is not supported"},
      {{"volume", "create", "x", "--size", "1G", "--pool", "nowhere"}, "pool 'nowhere' not found"},
      {{"volume", "list", "--pool", "nowhere"}, "pool 'nowhere' not found"},
      {{"pool", "show", "nowhere"}, "pool 'nowhere' not found"},
      {{"pool", "check", "nowhere"}, "pool 'nowhere' not found"},
      {{"pool", "delete", "nowhere"}, "pool 'nowhere' not found"},
      {{"pool", "delete", "default"}, "holds 1 volume(s)"},
  });
}

TEST_F(BadInput, PoolDevices) {
  const std::string missing = harness_->root() + "/missing.img";
  Check({
      {{"pool", "create", "p", "--device", missing}, "does not exist; give --size"},
      {{"pool", "create", "p", "--device", missing, "--size", "256M", "--cluster-size", "3K"},
       "must be a power of two"},
      {{"pool", "create", "p", "--device", missing, "--size", "256M", "--cluster-size", "1M"},
       "must be a power of two"},
      {{"pool", "create", "p", "--device", missing, "--size", "256M", "--cluster-size", "8G"},
       "too large"},
      {{"pool", "create", "default", "--device", missing, "--size", "256M"},
       "pool 'default' already exists"},
      {{"pool", "create", "p", "--device", harness_->data_dir() + "/default-pool.img"},
       "already used by pool 'default'"},
  });
  EXPECT_FALSE(std::filesystem::exists(missing)) << "a refused pool leaves no file behind";
}

}  // namespace
}  // namespace shale::e2e
