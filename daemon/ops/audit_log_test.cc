#include "daemon/ops/audit_log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace shale::daemon::ops {
namespace {

namespace fs = std::filesystem;

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-audit-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<AuditLog> Open(uint64_t max_bytes = uint64_t{64} << 20, unsigned files = 5) {
    auto log =
        AuditLog::Open({.path = dir_ + "/audit.log", .max_bytes = max_bytes, .max_files = files});
    EXPECT_TRUE(log.ok()) << log.status();
    return log.ok() ? std::move(log).value() : nullptr;
  }
  static nlohmann::json Record(uint64_t t, const std::string& volume) {
    return {{"time_unix_ns", t}, {"action", "CreateVolume"}, {"volumes", {volume}}};
  }
  std::string dir_;
};

TEST_F(AuditLogTest, AppendsDurableLinesAndFiltersThem) {
  auto log = Open();
  ASSERT_NE(log, nullptr);
  for (uint64_t t = 1; t <= 5; ++t) {
    ASSERT_TRUE(log->Append(Record(t * 100, t % 2 ? "odd" : "even")).ok());
  }
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/audit.log").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(log->records_written(), 5u);
  bool truncated = true;
  auto all = log->Read({}, &truncated);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 5u);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(nlohmann::json::parse(all->front())["time_unix_ns"], 100u);
  auto odd = log->Read({.volume = "odd"}, &truncated);
  EXPECT_EQ(odd->size(), 3u);
  auto recent = log->Read({.since_unix_ns = 300}, &truncated);
  EXPECT_EQ(recent->size(), 3u);
  auto newest = log->Read({.limit = 2}, &truncated);
  ASSERT_EQ(newest->size(), 2u);
  EXPECT_TRUE(truncated);
  EXPECT_EQ(nlohmann::json::parse(newest->back())["time_unix_ns"], 500u);
  // Reopened: appends after what is there; a torn last line (a crash mid-write) is skipped.
  log.reset();
  std::ofstream(dir_ + "/audit.log", std::ios::app) << "{\"time_unix_ns\": 6";
  log = Open();
  ASSERT_TRUE(log->Append(Record(700, "odd")).ok());
  auto after = log->Read({}, &truncated);
  ASSERT_EQ(after->size(), 5u) << "the torn line and the next one share a line: both skipped";
}

TEST_F(AuditLogTest, RotatesBySizeKeepingTheNewestFiles) {
  auto log = Open(/*max_bytes=*/4096, /*files=*/2);
  ASSERT_NE(log, nullptr);
  const std::string pad(300, 'x');
  for (uint64_t t = 1; t <= 60; ++t) {
    nlohmann::json r = Record(t, "v");
    r["pad"] = pad;
    ASSERT_TRUE(log->Append(r).ok());
  }
  EXPECT_TRUE(fs::exists(dir_ + "/audit.log.1"));
  EXPECT_TRUE(fs::exists(dir_ + "/audit.log.2"));
  EXPECT_FALSE(fs::exists(dir_ + "/audit.log.3"));
  for (const char* f : {"/audit.log", "/audit.log.1", "/audit.log.2"}) {
    EXPECT_LE(fs::file_size(dir_ + f), 4096u) << f;
  }
  bool truncated = false;
  auto all = log->Read({.limit = 1000}, &truncated);
  ASSERT_TRUE(all.ok());
  ASSERT_GT(all->size(), 10u);
  // Oldest first, ending with the newest, no gaps within what is kept.
  uint64_t prev = 0;
  for (const std::string& line : *all) {
    const uint64_t t = nlohmann::json::parse(line)["time_unix_ns"];
    if (prev != 0) {
      EXPECT_EQ(t, prev + 1);
    }
    prev = t;
  }
  EXPECT_EQ(prev, 60u);
}

// A failed append is an error and breaks the log: CheckWritable() (the daemon's change gate)
// refuses until a probe record can be written again, then records the recovery.
TEST_F(AuditLogTest, AFailedAppendRefusesChangesUntilTheLogWorksAgain) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  const std::string path = dir_ + "/audit.log";
  fs::create_symlink("/dev/full", path);  // every write: ENOSPC
  auto log = Open();
  ASSERT_NE(log, nullptr);
  EXPECT_TRUE(log->CheckWritable().ok()) << "nothing failed yet";
  Status st = log->Append(Record(1, "v"));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(log->write_errors(), 1u);
  Status gate = log->CheckWritable();
  EXPECT_EQ(gate.code(), StatusCode::kUnavailable) << gate;
  EXPECT_NE(gate.ToString().find("audit log " + path + " cannot be written"), std::string::npos)
      << gate;
  EXPECT_FALSE(log->CheckWritable().ok()) << "still broken";
  fs::remove(path);  // the disk has room again
  EXPECT_TRUE(log->CheckWritable().ok());
  bool truncated = false;
  auto records = log->Read({}, &truncated);
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 1u);
  const nlohmann::json probe = nlohmann::json::parse(records->front());
  EXPECT_EQ(probe["action"], "AuditLogRecovered");
  EXPECT_NE(probe["error"].get<std::string>().find("No space left"), std::string::npos) << probe;
  EXPECT_TRUE(log->Append(Record(2, "v")).ok());
}

}  // namespace
}  // namespace shale::daemon::ops
