// A kill -9 loop over the target and the replicas of a replicated volume, with an oracle (issue
// 11): a real etcd, three shaled on loopback, a 3-replica volume served by node-a (and, issue
// 12, a 2-replica volume served by node-c, which holds no replica of it). Each round a
// writer writes versioned 4 KiB blocks through the target's NBD export and flushes now and then,
// recording what was acknowledged and what was acknowledged-and-flushed; at a random moment
// (after a random number of acknowledged writes) the target's daemon or a replica's daemon is
// killed with -9 and restarted, `shale replica wait` returns, and every block must read back
// through the target with its latest flushed version or a later written one — never older,
// never garbage. After a target kill the resync sends only the activity log's regions (those the
// round wrote), never a full copy. At the end every replica holds the same bytes: each node is
// restarted alone (outside the cluster) and its replica volume read through its own NBD export.
//
// Seeded: SHALE_CRASH_SEED=N repeats a run (the seed is printed). Skipped without etcd.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;

constexpr uint64_t kVolBytes = 32ull << 20;
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kBlocks = kVolBytes / kBlock;
constexpr uint64_t kRegion = 1ull << 20;
constexpr uint64_t kBlocksPerRegion = kRegion / kBlock;
constexpr int kRounds = 8;
constexpr uint64_t kMagic = 0x5348414c45435253ull;  // "SHALECRS"

// Block `block` at `version`: magic ^ block, the version, then bytes of a generator seeded by
// both. Version 0 is the never-written block: zeros.
std::string BlockContent(uint64_t block, uint64_t version) {
  std::string out(kBlock, '\0');
  if (version == 0) return out;
  const uint64_t head[2] = {kMagic ^ block, version};
  std::memcpy(out.data(), head, sizeof(head));
  std::mt19937_64 rng(block * 0x9e3779b97f4a7c15ull ^ version);
  for (size_t i = sizeof(head); i < kBlock; i += 8) {
    const uint64_t x = rng();
    std::memcpy(out.data() + i, &x, 8);
  }
  return out;
}

// The version a block holds, or -1 if it is no version of this block (garbage).
int64_t VersionOf(uint64_t block, std::string_view data) {
  if (data.find_first_not_of('\0') == std::string_view::npos) return 0;
  uint64_t head[2];
  std::memcpy(head, data.data(), sizeof(head));
  if (head[0] != (kMagic ^ block) || head[1] == 0) return -1;
  return data == BlockContent(block, head[1]) ? static_cast<int64_t>(head[1]) : -1;
}

// What the oracle knows of every block (guarded by mu).
struct Oracle {
  std::mutex mu;
  std::vector<uint64_t> submitted = std::vector<uint64_t>(kBlocks, 0);  // highest version sent
  std::vector<uint64_t> acked = std::vector<uint64_t>(kBlocks, 0);
  std::vector<uint64_t> flushed = std::vector<uint64_t>(kBlocks, 0);  // acked before a flush
};

// One round's writer: random blocks of the round's regions, versions counting up per block, a
// flush every few writes. Stops at `stop`, or at the first error (recorded in `error`).
struct Writer {
  Oracle* oracle = nullptr;
  std::vector<uint64_t> regions;
  // Written once `moved` is set (right before a replica's kill): the writes it lost unflushed
  // are in `regions`, which it misses no write of while it is out, so only the activity log
  // says it must get them back.
  std::vector<uint64_t> regions_after;
  std::atomic<bool> moved{false};
  uint64_t seed = 0;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> acked_writes{0};
  std::atomic<bool> failed{false};
  std::string error;  // read after Join
  std::thread thread;

  void Run(const std::string& address) {
    std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(address);
    if (nbd == nullptr || !nbd->Go("kv").has_value()) {
      error = "cannot connect to the target's NBD export";
      failed.store(true);
      return;
    }
    std::mt19937_64 rng(seed);
    uint64_t until_flush = 1 + rng() % 16;
    for (int i = 0; i < 1000000 && !stop.load(); ++i) {
      if (--until_flush == 0) {
        until_flush = 1 + rng() % 16;
        std::vector<uint64_t> acked;
        {
          std::lock_guard lock(oracle->mu);
          acked = oracle->acked;
        }
        if (const int64_t err = nbd->Request(NbdRawClient::kCmdFlush, 0, 0); err != 0) {
          error = "flush failed: " + std::to_string(err);
          failed.store(true);
          return;
        }
        std::lock_guard lock(oracle->mu);
        for (uint64_t b = 0; b < kBlocks; ++b) {
          oracle->flushed[b] = std::max(oracle->flushed[b], acked[b]);
        }
        continue;
      }
      const std::vector<uint64_t>& where = moved.load() ? regions_after : regions;
      const uint64_t block =
          where[rng() % where.size()] * kBlocksPerRegion + rng() % kBlocksPerRegion;
      uint64_t version = 0;
      {
        std::lock_guard lock(oracle->mu);
        version = ++oracle->submitted[block];
      }
      const int64_t err = nbd->Request(NbdRawClient::kCmdWrite, block * kBlock, kBlock,
                                       BlockContent(block, version));
      if (err != 0) {
        error = "write of block " + std::to_string(block) + " failed: " + std::to_string(err);
        failed.store(true);
        return;
      }
      std::lock_guard lock(oracle->mu);
      oracle->acked[block] = std::max(oracle->acked[block], version);
      ++acked_writes;
    }
  }
  void Start(const std::string& address) {
    thread = std::thread([this, address] { Run(address); });
  }
  void Join() {
    stop.store(true);
    if (thread.joinable()) thread.join();
  }
};

// Reads the whole volume through `address`'s export of "kv" (empty on failure, recorded).
std::string ReadVolume(const std::string& address) {
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(address);
  if (nbd == nullptr || nbd->Go("kv") != std::optional<uint64_t>(kVolBytes)) {
    ADD_FAILURE() << "cannot open kv at " << address;
    return {};
  }
  std::string out;
  out.reserve(kVolBytes);
  for (uint64_t at = 0; at < kVolBytes; at += 256 * 1024) {
    std::string data;
    if (nbd->Request(NbdRawClient::kCmdRead, at, 256 * 1024, "", &data) != 0) {
      ADD_FAILURE() << "read at " << at << " failed";
      return {};
    }
    out += data;
  }
  return out;
}

// Every block holds its latest flushed version or a later written one. Returns the failures.
int CheckOracle(Oracle& oracle, const std::string& volume, const std::string& when) {
  std::lock_guard lock(oracle.mu);
  int failures = 0;
  for (uint64_t b = 0; b < kBlocks && failures < 8; ++b) {
    const int64_t v = VersionOf(b, std::string_view(volume).substr(b * kBlock, kBlock));
    if (v < 0 || static_cast<uint64_t>(v) < oracle.flushed[b] ||
        static_cast<uint64_t>(v) > oracle.submitted[b]) {
      ADD_FAILURE() << when << ": block " << b << " holds version " << v << " (flushed "
                    << oracle.flushed[b] << ", acknowledged " << oracle.acked[b] << ", written "
                    << oracle.submitted[b] << ")";
      ++failures;
    }
  }
  return failures;
}

// After a check: what a block reads as is what the next flush makes durable. A version that was
// acknowledged but not flushed before a crash of the target may be gone; it must not count as
// flushed by a later flush.
void Settle(Oracle& oracle, const std::string& volume) {
  std::lock_guard lock(oracle.mu);
  for (uint64_t b = 0; b < kBlocks; ++b) {
    const int64_t v = VersionOf(b, std::string_view(volume).substr(b * kBlock, kBlock));
    if (v >= 0) oracle.acked[b] = static_cast<uint64_t>(v);
  }
}

uint64_t Seed() {
  if (const char* s = std::getenv("SHALE_CRASH_SEED"); s != nullptr && *s != '\0') {
    return std::strtoull(s, nullptr, 10);
  }
  return std::random_device{}();
}

using ReplicationCrashTest = EtcdE2eTest;

// The kill -9 loop: `nodes` are node-a, node-b, node-c (by position), all started; "kv" is
// served by nodes[target] and has a replica on each of `replicas` (the target's own node among
// them, or not: a target without a replica). Each round kills the target (round 0) or any node.
void KillLoop(const test::EtcdProcess& etcd, Harness* const (&nodes)[3], int target,
              const std::vector<int>& replicas, uint64_t seed) {
  const char* names[3] = {"node-a", "node-b", "node-c"};
  std::mt19937_64 rng(seed);
  Harness& t = *nodes[target];
  Oracle oracle;
  std::vector<uint64_t> previous_regions;
  int target_kills = 0;
  for (int round = 0; round < kRounds; ++round) {
    Writer writer;
    writer.oracle = &oracle;
    writer.seed = rng();
    std::set<uint64_t> chosen;
    while (chosen.size() < 6) chosen.insert(rng() % (kVolBytes / kRegion));
    writer.regions.assign(chosen.begin(), std::next(chosen.begin(), 3));
    writer.regions_after.assign(std::next(chosen.begin(), 3), chosen.end());
    // The target at least once.
    const int victim = round == 0 ? target : static_cast<int>(rng() % 3);
    const uint64_t kill_after = 20 + rng() % 300;
    writer.Start(t.NbdAddress());
    const bool written =
        WaitFor([&] { return writer.acked_writes.load() >= kill_after || writer.failed.load(); },
                seconds(30));
    if (!written || writer.failed.load()) {
      writer.Join();
      FAIL() << "the writer made no progress: " << writer.error;
    }
    std::cout << "round " << round << ": kill -9 " << names[victim] << " after "
              << writer.acked_writes.load() << " acknowledged writes\n";
    if (victim != target) writer.moved.store(true);
    nodes[victim]->KillDaemon();
    if (victim == target) writer.Join();  // its connection went with the target
    if (victim == target) ++target_kills;
    ASSERT_TRUE(nodes[victim]->StartDaemon(NodeFlags(*nodes[victim], etcd, names[victim])));
    CommandResult wait = t.Shale({"replica", "wait", "kv", "--timeout", "60"});
    ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << t.DaemonLog();
    writer.Join();
    if (victim != target) {
      EXPECT_EQ(writer.error, "") << "a replica's (or another node's) kill -9 is invisible to "
                                     "the client";
    }
    if (victim == target) {
      // Only the activity log's regions were compared: those this round (or the one before,
      // whose frees may not have been persisted yet) wrote, not the volume.
      std::set<uint64_t> touched(writer.regions.begin(), writer.regions.end());
      touched.insert(previous_regions.begin(), previous_regions.end());
      nlohmann::json list;
      std::map<std::string, nlohmann::json> listed = Replicas(t, "kv", &list);
      for (int r : replicas) {
        if (r == target) continue;
        const uint64_t compared = listed[names[r]]["rebuild_total_bytes"].get<uint64_t>();
        const uint64_t sent = listed[names[r]]["rebuild_sent_bytes"].get<uint64_t>();
        std::cout << "  resync of " << names[r] << ": compared " << compared << " bytes, sent "
                  << sent << " (log bound " << touched.size() * kRegion << ")\n";
        EXPECT_LE(compared, touched.size() * kRegion) << "only logged regions: " << list;
        EXPECT_LE(sent, compared) << list;
      }
    }
    const std::string volume = ReadVolume(t.NbdAddress());
    ASSERT_EQ(volume.size(), kVolBytes);
    ASSERT_EQ(CheckOracle(oracle, volume, "round " + std::to_string(round)), 0)
        << "seed " << seed << ", round " << round;
    Settle(oracle, volume);
    previous_regions = writer.regions;
    if (victim != target) {
      previous_regions.insert(previous_regions.end(), writer.regions_after.begin(),
                              writer.regions_after.end());
    }
  }
  EXPECT_GE(target_kills, 1);

  // Converged: the target's view, then every replica's node alone.
  const std::string target_view = ReadVolume(t.NbdAddress());
  ASSERT_EQ(CheckOracle(oracle, target_view, "end"), 0);
  for (Harness* h : nodes) EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
  for (int r : replicas) {
    ASSERT_TRUE(nodes[r]->StartDaemon());
    const std::string replica = ReadVolume(nodes[r]->NbdAddress());
    ASSERT_EQ(replica.size(), kVolBytes) << names[r];
    EXPECT_TRUE(replica == target_view) << names[r] << " differs from the target's view";
    EXPECT_EQ(nodes[r]->StopDaemon(SIGTERM), 0);
  }
}

TEST_F(ReplicationCrashTest, KillNineLoopKeepsFlushedWritesAndReplicasConverge) {
  const uint64_t seed = Seed();
  std::cout << "replication crash loop: SHALE_CRASH_SEED=" << seed << "\n";
  Harness a, b, c;
  Harness* const nodes[3] = {&a, &b, &c};
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  CommandResult made = a.Shale({"volume", "create", "kv", "--size", "32M", "--replicas", "3"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  KillLoop(*etcd_, nodes, 0, {0, 1, 2}, seed);
}

// The same loop with the volume served by node-c, which holds no replica (docs/replication.md,
// "Targets on nodes without a replica"): its restarts reopen the target from its anchor (the
// activity log kept there), the replicas on node-a and node-b are compared with each other.
TEST_F(ReplicationCrashTest, KillNineLoopWithATargetWithoutAReplica) {
  const uint64_t seed = Seed();
  std::cout << "replication crash loop (target without a replica): SHALE_CRASH_SEED=" << seed
            << "\n";
  Harness a, b, c;
  Harness* const nodes[3] = {&a, &b, &c};
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  CommandResult made = a.Shale({"volume", "create", "kv", "--size", "32M", "--replicas", "2",
                                "--replica-nodes", "node-a,node-b"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  ASSERT_EQ(a.Shale({"volume", "detach", "kv"}).exit_code, 0) << a.DaemonLog();
  CommandResult attached = c.Shale({"volume", "attach", "kv"});
  ASSERT_EQ(attached.exit_code, 0) << attached.Describe() << c.DaemonLog();
  KillLoop(*etcd_, nodes, 2, {0, 1}, seed);
}

// The target killed right after unflushed writes to two regions (after flushed ones to eight
// others): at its restart only the activity log's regions are compared with the replicas (not
// the eight flushed ones, not the volume), what differs is copied from the target's replica,
// and every replica then holds the same bytes.
TEST_F(ReplicationCrashTest, TargetKillResyncsOnlyTheLoggedRegions) {
  Harness a, b, c;
  Harness* nodes[3] = {&a, &b, &c};
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "kv", "--size", "32M", "--replicas", "3"}).exit_code, 0);
  // The client stays connected through the kill (a disconnect would make the server flush).
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_TRUE(nbd->Go("kv").has_value());
  for (uint64_t block = 0; block < 8 * kBlocksPerRegion; block += 16) {
    ASSERT_EQ(nbd->Request(NbdRawClient::kCmdWrite, block * kBlock, kBlock, BlockContent(block, 1)),
              0);
  }
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  // A write to a region of the log makes the frees of the flush durable first (group commit).
  for (uint64_t block :
       {20 * kBlocksPerRegion + 3, 21 * kBlocksPerRegion + 5, 21 * kBlocksPerRegion + 6}) {
    ASSERT_EQ(nbd->Request(NbdRawClient::kCmdWrite, block * kBlock, kBlock, BlockContent(block, 1)),
              0);
  }
  a.KillDaemon();
  nbd.reset();
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  CommandResult wait = a.Shale({"replica", "wait", "kv", "--timeout", "60"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "kv", &list);
  for (const char* n : {"node-b", "node-c"}) {
    const uint64_t compared = replicas[n]["rebuild_total_bytes"].get<uint64_t>();
    const uint64_t sent = replicas[n]["rebuild_sent_bytes"].get<uint64_t>();
    std::cout << "resync of " << n << " after the target's kill -9: compared " << compared
              << " bytes, sent " << sent << "\n";
    EXPECT_EQ(compared, 2 * kRegion) << "regions 20 and 21 only: " << list;
    // Data sent (a block the target's replica lost is zeroed on the others: not counted here);
    // that they agree again is checked below, node by node.
    EXPECT_LE(sent, 3 * kBlock) << list;
  }
  EXPECT_NE(a.DaemonLog().find("activity-log resync at target start"), std::string::npos);

  const std::string target_view = ReadVolume(a.NbdAddress());
  ASSERT_EQ(target_view.size(), kVolBytes);
  for (uint64_t block :
       {20 * kBlocksPerRegion + 3, 21 * kBlocksPerRegion + 5, 21 * kBlocksPerRegion + 6}) {
    // Never flushed: either version; the target's replica normally lost it (its mapping was
    // never committed) while node-b and node-c hold it, so the resync zeroed it there.
    const int64_t v =
        VersionOf(block, std::string_view(target_view).substr(block * kBlock, kBlock));
    std::cout << "unflushed block " << block << " reads version " << v << "\n";
    EXPECT_TRUE(v == 0 || v == 1) << block;
  }
  for (uint64_t block = 0; block < 8 * kBlocksPerRegion; block += 16) {
    ASSERT_EQ(VersionOf(block, std::string_view(target_view).substr(block * kBlock, kBlock)), 1)
        << "flushed block " << block;
  }
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(nodes[i]->StopDaemon(SIGTERM), 0) << nodes[i]->DaemonLog();
    ASSERT_TRUE(nodes[i]->StartDaemon());
    EXPECT_TRUE(ReadVolume(nodes[i]->NbdAddress()) == target_view)
        << "replica " << i << " differs from the target's";
  }
}

}  // namespace
}  // namespace shale::e2e
