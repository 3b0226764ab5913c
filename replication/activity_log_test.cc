// ActivityLog through the ReplicationLayer over real replica servers on loopback
// (replication_test_cluster.h): only the first write to a region pays a commit of the log; the
// log survives a restart of the target; a flush with nothing in flight frees the regions; the log
// is bounded (a write that needs room waits for a flush the layer issues); a replica that leaves
// gets the logged regions marked changed (it may have lost its unflushed writes). Prints the
// write-path cost of the log (a figure, not a timed assertion).
#include <chrono>
#include <iostream>

#include "replication/replication_test_cluster.h"

namespace shale::replication::testing {
namespace {

class ActivityLogTest : public ReplicationCluster {
 protected:
  uint64_t LoggedRegions() {
    uint64_t n = 0;
    reactor_->RunSync([&] { n = activity_->RegionCount(); });
    return n;
  }
  std::vector<std::pair<uint64_t, uint64_t>> LoggedRanges() {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    reactor_->RunSync([&] { out = activity_->Ranges(); });
    return out;
  }
};

using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;

TEST_F(ActivityLogTest, FirstWritePerRegionCommitsAndTheLogSurvivesARestart) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  OpenActivityLog();
  EXPECT_FALSE(activity_->kept_before()) << "a new volume had no log";
  ASSERT_TRUE(Write(0, Pattern(4096, 1)).ok());
  ASSERT_TRUE(Write(5 * kMiB, Pattern(4096, 2)).ok());
  ASSERT_TRUE(Write(9 * kMiB + 4096, Pattern(8192, 3)).ok());
  EXPECT_EQ(log_commits_.load(), 3u) << "one commit per first write to a region";
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(Write(5 * kMiB + 8192 * i, Pattern(4096, 10 + i)).ok());
  }
  EXPECT_EQ(log_commits_.load(), 3u) << "later writes to a logged region commit nothing";
  EXPECT_EQ(LoggedRegions(), 3u);

  // The target stops without a flush: the log is what it persisted.
  CloseTarget();
  OpenTarget();
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  OpenActivityLog();
  EXPECT_TRUE(activity_->kept_before());
  EXPECT_EQ(LoggedRanges(), (Ranges{{0, kMiB}, {5 * kMiB, kMiB}, {9 * kMiB, kMiB}}));

  // A flush with nothing in flight frees them, and the record follows (lazily).
  ASSERT_TRUE(Flush().ok());
  EXPECT_EQ(LoggedRegions(), 0u);
  CloseTarget();
  OpenTarget();
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  OpenActivityLog();
  EXPECT_TRUE(LoggedRanges().empty()) << "the frees were persisted";
}

TEST_F(ActivityLogTest, TheLogIsBoundedAndAFlushMakesRoom) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  OpenActivityLog(4);
  for (uint64_t r = 0; r < 10; ++r) ASSERT_TRUE(Write(r * kMiB, Pattern(4096, r)).ok()) << r;
  EXPECT_LE(LoggedRegions(), 4u);
  EXPECT_GE(activity_->freed(), 6u) << "regions left the log through the layer's flushes";
  ASSERT_TRUE(Flush().ok());
  ExpectReplicas({"node-a", "node-b", "node-c"}, 0,
                 std::vector<uint8_t>(oracle_.begin(), oracle_.begin() + 10 * kMiB));
}

TEST_F(ActivityLogTest, ALeavingReplicaGetsTheLoggedRegionsMarked) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  OpenActivityLog();
  ASSERT_TRUE(Write(12 * kMiB, Pattern(4096, 1)).ok());
  ASSERT_TRUE(Flush().ok());  // region 12 is durable everywhere: out of the log
  ASSERT_TRUE(Write(2 * kMiB, Pattern(4096, 2)).ok());  // acknowledged, not flushed
  fault_.Cut(servers_[2]->address());
  ASSERT_TRUE(Write(7 * kMiB, Pattern(4096, 3)).ok());
  ASSERT_TRUE(WaitFor([&] { return StateOf("node-c") == MemberState::kOut; }));
  // node-c may have lost the unflushed write to region 2 (a crash of its own): it is marked,
  // as is the write that failed on it; region 12 is not.
  EXPECT_EQ(ChangedRanges("node-c"), (Ranges{{2 * kMiB, kMiB}, {7 * kMiB, kMiB}}));
}

// The cost on the write path: 4 KiB writes at QD 1 to 48 regions not in the log (each pays one
// commit of the log), then to the same regions again (nothing to commit), and without a log.
TEST_F(ActivityLogTest, WritePathCostFigure) {
  constexpr int kRegions = 48;
  const auto time_writes = [&](uint64_t base, uint64_t seed) {
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < kRegions; ++r) {
      EXPECT_TRUE(Write(base + r * kMiB, Pattern(4096, seed + r)).ok());
    }
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
               .count() /
           kRegions;
  };
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  const double without = time_writes(8192, 100);
  OpenActivityLog();
  const double first = time_writes(0, 200);
  const uint64_t commits = log_commits_.load();
  const double later = time_writes(4096, 300);
  EXPECT_EQ(commits, static_cast<uint64_t>(kRegions));
  EXPECT_EQ(log_commits_.load(), commits) << "writes to logged regions commit nothing";
  std::cout << "activity log, 4 KiB writes at QD 1 over 3 replicas (loopback): first write to a "
               "region "
            << first << " us, later writes " << later << " us, without the log " << without
            << " us\n";
}

}  // namespace
}  // namespace shale::replication::testing
