// Changed regions and the Rebuilder over real ReplicaServers on TCP loopback
// (replication_test_cluster.h): what a cut replica missed is recorded durably and survives a
// restart of the target's engine; the returning replica is rebuilt incrementally (only the
// blocks that differ cross the network: bytes sent <= 1.1 x bytes written while it was out, plus
// metadata); it is never read before its rebuild completes; client writes during the rebuild
// are never overwritten by older data; a rebuild stopped midway resumes after a restart of the
// target and copies only what was left; each window is admitted (QoS) and the cap changes live;
// a new replica's full rebuild skips unallocated space.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>

#include "replication/replication_test_cluster.h"

namespace shale::replication::testing {
namespace {

class RebuilderTest : public ReplicationCluster {
 protected:
  // Cuts node-c, waits until it is out, writes `writes` scattered 4 KiB blocks (one per region
  // `stride` regions apart) through the layer and returns the bytes written while it was out.
  uint64_t DegradeAndWrite(int writes, uint64_t stride, uint64_t seed) {
    fault_.Cut(servers_[2]->address());
    EXPECT_TRUE(Write(kMiB / 2, Pattern(4096, seed)).ok());
    uint64_t written = 4096;
    EXPECT_EQ(StateOf("node-c"), MemberState::kOut);
    for (int i = 0; i < writes; ++i) {
      const uint64_t off = (uint64_t(i) * stride + 1) * kMiB + uint64_t(i % 7) * 8192;
      EXPECT_TRUE(Write(off, Pattern(4096, seed + 1 + i)).ok());
      written += 4096;
    }
    EXPECT_TRUE(Flush().ok());
    fault_.HealAll();
    return written;
  }
  // node-c misses `bytes` written from offset 0 in 1 MiB writes (one changed range); then the
  // layer is made again with node-c rebuilding.
  void MissThenRebuilding(uint64_t bytes, uint64_t seed) {
    MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
    fault_.Cut(servers_[2]->address());
    for (uint64_t off = 0; off < bytes; off += kMiB) {
      ASSERT_TRUE(Write(off, Pattern(kMiB, seed + off)).ok());
    }
    fault_.HealAll();
    ASSERT_EQ(ChangedRanges("node-c").size(), 1u);
    MakeLayer(1, true, MemberState::kInSync, MemberState::kRebuilding);
  }
  // Starts `rebuilder` on the reactor (its result goes to `result`); true once it copied
  // `at_least` bytes.
  bool StartAndWaitFor(Rebuilder& rebuilder, std::promise<Status>& result, uint64_t at_least) {
    reactor_->Post([&] { rebuilder.Start([&](Status s) { result.set_value(s); }); });
    return WaitFor([&] {
      uint64_t done = 0;
      reactor_->RunSync([&] { done = rebuilder.progress().done_bytes; });
      return done >= at_least;
    });
  }
  void ExpectAllReplicasEqualTheOracle(std::vector<std::string> nodes) {
    for (uint64_t off = 0; off < kVolSize; off += 8 * kMiB) {
      const std::vector<uint8_t> expect(oracle_.begin() + off, oracle_.begin() + off + 8 * kMiB);
      ExpectReplicas(nodes, off, expect);
    }
  }
};

TEST_F(RebuilderTest, ChangedRegionsSurviveATargetRestartAndTheRebuildIsIncremental) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(16 * kMiB, 1)).ok());  // in sync everywhere
  ASSERT_TRUE(Flush().ok());                          // and durable: not marked when node-c leaves
  const uint64_t written = DegradeAndWrite(24, 2, 100);
  const auto before = ChangedRanges("node-c");
  uint64_t marked = 0;
  for (const auto& [off, len] : before) marked += len;
  ASSERT_EQ(marked, 25 * kMiB);  // the first write's region and the 24 scattered ones

  // The target restarts: the record is in node-a's pool metadata.
  CloseTarget();
  OpenTarget();
  EXPECT_EQ(ChangedRanges("node-c"), before);

  // node-c returns: rebuilt from node-a's copy, only the blocks that differ are sent.
  MakeLayer(1, true, MemberState::kInSync, MemberState::kRebuilding);
  const uint64_t sent_before = [&] {
    uint64_t n = 0;
    reactor_->RunSync([&] {
      n = static_cast<RemoteReplica*>(layer_->Target("node-c").get())->client().stats().bytes_sent;
    });
    return n;
  }();
  Rebuilder::Progress progress;
  ASSERT_TRUE(Rebuild("node-a", "node-c", {}, &progress).ok());
  uint64_t sent = 0, requests = 0;
  reactor_->RunSync([&] {
    const auto st = static_cast<RemoteReplica*>(layer_->Target("node-c").get())->client().stats();
    sent = st.bytes_sent - sent_before;
    requests = st.requests;
  });
  const uint64_t metadata = requests * (kFrameHeaderSize + 64);
  std::printf(
      "rebuild: %llu bytes written while out, %llu bytes of blocks sent, %llu bytes on "
      "the wire to node-c in %llu requests (metadata allowance %llu), %llu bytes of "
      "regions covered\n",
      (unsigned long long)written, (unsigned long long)progress.sent_bytes,
      (unsigned long long)sent, (unsigned long long)requests, (unsigned long long)metadata,
      (unsigned long long)progress.total_bytes);
  EXPECT_EQ(progress.total_bytes, 25 * kMiB);
  EXPECT_LE(progress.sent_bytes, written * 11 / 10);
  EXPECT_LE(sent, written * 11 / 10 + metadata);
  EXPECT_TRUE(ChangedRanges("node-c").empty());
  ExpectAllReplicasEqualTheOracle({"node-a", "node-b", "node-c"});

  // It joins: recorded in the store (epoch + 1), its generation persisted on node-c, in sync.
  const uint64_t epoch = membership_->epoch();
  std::promise<Status> joined;
  reactor_->Post([&] { layer_->Join("node-c", [&](Status st) { joined.set_value(st); }); });
  auto f = joined.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  ASSERT_TRUE(f.get().ok());
  EXPECT_EQ(membership_->joins(), std::vector<std::string>{"node-c"});
  EXPECT_EQ(StateOf("node-c"), MemberState::kInSync);
  EXPECT_EQ(layer_->epoch(), epoch + 1);
  const ReplicaAdminOptions admin{servers_[2]->address(), "node-a",
                                  *ClusterSecret::FromBytes(kSecret), &tcp_};
  auto stat = StatReplica(admin, {"vol", uuid_, kVolSize, ""});
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->generation, epoch + 1);
  ASSERT_TRUE(Write(40 * kMiB, Pattern(4096, 9)).ok());
  ASSERT_TRUE(Flush().ok());
  ExpectReplicas({"node-c"}, 40 * kMiB, Pattern(4096, 9));
}

TEST_F(RebuilderTest, AReturningReplicaIsNeverReadAndClientWritesDuringItsRebuildSurvive) {
  // No local replica: reads go round-robin over the remote in-sync replicas.
  MakeLayer(1, false, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(16 * kMiB, 1)).ok());
  fault_.Cut(servers_[2]->address());
  for (uint64_t off = 0; off < 16 * kMiB; off += kMiB) {
    ASSERT_TRUE(Write(off, Pattern(kMiB, 2 + off)).ok());
  }
  fault_.HealAll();
  Reconnect(2, MemberState::kRebuilding);
  // node-c still holds the old data everywhere: a read served by it would differ.
  for (int i = 0; i < 16; ++i) {
    auto got = Read(uint64_t(i) * kMiB, kMiB);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(std::equal(got->begin(), got->end(), oracle_.begin() + i * kMiB)) << i;
  }
  // Rebuild slowly from node-b while the client writes into the regions being copied.
  Rebuilder::Options o;
  o.bps = 8 * kMiB;
  o.window_regions = 2;
  Rebuilder::Progress progress;
  int writes = 0;
  const Status st = Rebuild("node-b", "node-c", o, &progress, [&] {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 200; ++i) {
      const uint64_t off = (rng() % (16 * kMiB / 4096)) * 4096;
      ASSERT_TRUE(Write(off, Pattern(4096, 1000 + i)).ok());
      ++writes;
      auto got = Read(off & ~(kMiB - 1), kMiB);  // never served by node-c
      ASSERT_TRUE(got.ok());
      ASSERT_TRUE(std::equal(got->begin(), got->end(), oracle_.begin() + (off & ~(kMiB - 1))));
    }
  });
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(writes, 200);
  EXPECT_EQ(progress.total_bytes, 16 * kMiB);
  ASSERT_TRUE(Flush().ok());
  const std::vector<uint8_t> head(oracle_.begin(), oracle_.begin() + 16 * kMiB);
  ExpectReplicas({"node-b", "node-c"}, 0, head);
}

TEST_F(RebuilderTest, AStoppedRebuildResumesAfterATargetRestart) {
  ASSERT_NO_FATAL_FAILURE(MissThenRebuilding(24 * kMiB, 50));
  // A slow rebuild that records its progress every region, stopped after a few.
  Rebuilder::Options o;
  o.bps = 4 * kMiB;
  o.window_regions = 1;
  o.persist_bytes = kMiB;
  {
    Rebuilder rebuilder(reactor_, layer_.get(), changed_.get(), "node-a", "node-c", o);
    std::promise<Status> p;
    auto f = p.get_future();
    ASSERT_TRUE(StartAndWaitFor(rebuilder, p, 6 * kMiB));
    reactor_->RunSync([&] { rebuilder.Cancel(); });
    ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
    EXPECT_EQ(f.get().code(), StatusCode::kAborted);
  }
  CloseTarget();
  OpenTarget();
  uint64_t left = 0;
  for (const auto& [off, len] : ChangedRanges("node-c")) left += len;
  EXPECT_GT(left, 0u);
  EXPECT_LE(left, 24 * kMiB - 5 * kMiB) << "progress was persisted";
  MakeLayer(1, true, MemberState::kInSync, MemberState::kRebuilding);
  Rebuilder::Progress progress;
  ASSERT_TRUE(Rebuild("node-a", "node-c", {}, &progress).ok());
  EXPECT_EQ(progress.total_bytes, left) << "only what was left";
  ExpectAllReplicasEqualTheOracle({"node-a", "node-c"});
}

// A BackgroundAdmission that lets every unit start from a later reactor task (as QoS does) and
// records how many were admitted and how many held their admission at once.
class CountingAdmission final : public BackgroundAdmission {
 public:
  explicit CountingAdmission(Reactor* reactor) : reactor_(reactor) {}
  void Admit(uint64_t bytes, std::function<void(Done done)> go) override {
    ++admitted;
    bytes_admitted += bytes;
    max_unit = std::max(max_unit, bytes);
    reactor_->Post([this, go = std::move(go)] {
      max_held = std::max(max_held, ++held);
      go([this] { --held; });
    });
  }
  bool ForegroundBusy() const override { return busy; }
  uint32_t admitted = 0, held = 0, max_held = 0;
  uint64_t bytes_admitted = 0, max_unit = 0;
  bool busy = false;

 private:
  Reactor* const reactor_;
};

// Each copy window waits for the admission (QoS's background class in shaled) and holds it
// until it is done; the cap changes live: at 64 KiB/s the 8 MiB left would take two minutes,
// lifted with SetRate(0) the rebuild ends at once.
TEST_F(RebuilderTest, WindowsAreAdmittedAndTheCapChangesLive) {
  ASSERT_NO_FATAL_FAILURE(MissThenRebuilding(9 * kMiB, 70));
  auto admission = std::make_shared<CountingAdmission>(reactor_);
  Rebuilder::Options o;
  o.bps = 64 * kKiB;
  o.window_regions = 1;
  o.admission = admission;
  Rebuilder rebuilder(reactor_, layer_.get(), changed_.get(), "node-a", "node-c", o);
  std::promise<Status> p;
  auto f = p.get_future();
  ASSERT_TRUE(StartAndWaitFor(rebuilder, p, kMiB));
  EXPECT_NE(f.wait_for(std::chrono::seconds(2)), std::future_status::ready) << "capped";
  reactor_->RunSync([&] { rebuilder.SetRate(0); });
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "lifted";
  EXPECT_TRUE(f.get().ok());
  uint64_t total = 0;
  reactor_->RunSync([&] {
    total = rebuilder.progress().total_bytes;
    EXPECT_EQ(admission->admitted, total / kMiB) << "one unit per window";
    EXPECT_EQ(admission->bytes_admitted, total);
    EXPECT_GE(admission->max_held, 1u);
    EXPECT_LE(admission->max_held, o.windows_in_flight) << "at most windows_in_flight at once";
    EXPECT_EQ(admission->held, 0u) << "every admission released";
    // Nine windows, copied in at most windows_in_flight buffers (a fresh 8 MiB buffer per
    // window cost the rebuild more than half its speed in page faults and munmaps).
    EXPECT_GE(rebuilder.progress().window_buffers, 1u);
    EXPECT_LE(rebuilder.progress().window_buffers, o.windows_in_flight) << "buffers reused";
  });
  EXPECT_EQ(total, 9 * kMiB);
  ExpectAllReplicasEqualTheOracle({"node-a", "node-c"});
}

// While the admission says clients keep the device busy, the rebuild keeps one 1 MiB region in
// flight (a client request waits behind little); idle, it copies 8-region windows, two at once.
TEST_F(RebuilderTest, WhileClientsAreBusyTheRebuildCopiesOneRegionAtATime) {
  ASSERT_NO_FATAL_FAILURE(MissThenRebuilding(24 * kMiB, 80));
  auto admission = std::make_shared<CountingAdmission>(reactor_);
  admission->busy = true;
  Rebuilder::Options o;
  o.admission = admission;
  Rebuilder::Progress progress;
  ASSERT_TRUE(Rebuild("node-a", "node-c", o, &progress).ok());
  reactor_->RunSync([&] {
    EXPECT_EQ(admission->admitted, 24u) << "one unit per region";
    EXPECT_EQ(admission->max_unit, kMiB);
    EXPECT_EQ(admission->max_held, 1u) << "one window at a time";
  });
  EXPECT_EQ(progress.busy_windows, 24u);
  ExpectAllReplicasEqualTheOracle({"node-a", "node-c"});

  // The same rebuild with the device idle: three 8-region windows, up to two at once.
  ASSERT_NO_FATAL_FAILURE(MissThenRebuilding(24 * kMiB, 81));
  admission = std::make_shared<CountingAdmission>(reactor_);
  o.admission = admission;
  ASSERT_TRUE(Rebuild("node-a", "node-c", o, &progress).ok());
  reactor_->RunSync([&] {
    EXPECT_EQ(admission->admitted, 3u);
    EXPECT_EQ(admission->max_unit, 8 * kMiB);
    EXPECT_LE(admission->max_held, 2u);
  });
  EXPECT_EQ(progress.busy_windows, 0u);
  ExpectAllReplicasEqualTheOracle({"node-a", "node-c"});
}

TEST_F(RebuilderTest, ANewReplicaGetsAFullRebuildThatSkipsUnallocatedSpace) {
  MakeLayer(1, true, MemberState::kInSync, std::nullopt);
  uint64_t written = 0;
  for (int i = 0; i < 12; ++i) {  // 64 KiB in 12 regions spread over the volume
    ASSERT_TRUE(Write(uint64_t(i) * 5 * kMiB + 128 * kKiB, Pattern(64 * kKiB, 300 + i)).ok());
    written += 64 * kKiB;
  }
  ASSERT_TRUE(Flush().ok());
  // node-c joins as a new, empty replica.
  Reconnect(2, MemberState::kRebuilding);
  std::promise<Status> marked;
  reactor_->Post([&] {
    Rebuilder::MarkAllocated(&handle_->volume(), changed_.get(), "node-c",
                             [&](Status st) { marked.set_value(st); });
  });
  auto f = marked.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  ASSERT_TRUE(f.get().ok());
  uint64_t marked_bytes = 0;
  for (const auto& [off, len] : ChangedRanges("node-c")) marked_bytes += len;
  EXPECT_EQ(marked_bytes, 12 * kMiB) << "only the allocated regions";
  Rebuilder::Progress progress;
  ASSERT_TRUE(Rebuild("node-a", "node-c", {}, &progress).ok());
  EXPECT_EQ(progress.total_bytes, 12 * kMiB);
  EXPECT_LE(progress.sent_bytes, written * 11 / 10) << "holes inside regions are not sent";
  ExpectAllReplicasEqualTheOracle({"node-a", "node-b", "node-c"});
}

// Comparing hashes costs a read of the target's copy. node-c misses 16 MiB rewritten end to end,
// then one 4 KiB block in each of the next 16 regions: the first window (8 regions, compared)
// differs everywhere, so the next sends its regions whole but for a probe region; the probe of
// the third window finds one block differing, so that window's other 7 regions go whole (the
// bounded cost of the guess) and the fourth compares every region again.
TEST_F(RebuilderTest, WindowsDifferingEverywhereAreSentWholeUntilAProbeSaysOtherwise) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(32 * kMiB, 400)).ok());
  ASSERT_TRUE(Flush().ok());
  fault_.Cut(servers_[2]->address());
  ASSERT_TRUE(Write(0, Pattern(kMiB, 401)).ok());
  ASSERT_EQ(StateOf("node-c"), MemberState::kOut);
  ASSERT_TRUE(Write(kMiB, Pattern(15 * kMiB, 402)).ok());
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(Write((16 + uint64_t(i)) * kMiB + 64 * kKiB, Pattern(4096, 403 + i)).ok());
  }
  ASSERT_TRUE(Flush().ok());
  fault_.HealAll();
  ASSERT_EQ(ChangedRanges("node-c").size(), 1u);
  MakeLayer(1, true, MemberState::kInSync, MemberState::kRebuilding);
  Rebuilder::Options o;
  o.windows_in_flight = 1;  // each window decided after the one before
  Rebuilder::Progress progress;
  ASSERT_TRUE(Rebuild("node-a", "node-c", o, &progress).ok());
  EXPECT_EQ(progress.total_bytes, 32 * kMiB);
  // Compared: all of windows 1 and 4, the probe regions of windows 2 and 3.
  EXPECT_EQ(progress.compared_bytes, 18 * kMiB);
  // Sent: the 16 MiB rewritten, the 7 regions sent whole on the guess, the 9 blocks compared.
  EXPECT_EQ(progress.sent_bytes, 16 * kMiB + 7 * kMiB + 9 * 4096);
  ExpectAllReplicasEqualTheOracle({"node-a", "node-c"});
}

// Rounds of concurrent writes while a replica is cut mid-batch, stays out, returns, is rebuilt
// with writes going on and joins again, alternating node-b and node-c: no client write ever
// fails, and every replica ends equal to the oracle.
TEST_F(RebuilderTest, RandomCutsRebuildsAndJoinsUnderLoadConverge) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  std::mt19937_64 rng(42);
  // 32 writes at once into distinct 256 KiB slots (no overlap within a batch: a defined oracle).
  const auto batch = [&](int seed, const std::function<void()>& midway) {
    std::vector<uint64_t> slots(kVolSize / (256 * kKiB));
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<std::unique_ptr<LayerIo>> ios;
    for (int i = 0; i < 32; ++i) {
      const uint64_t len = 4096 * (1 + rng() % 64);
      const uint64_t off = slots[i] * 256 * kKiB + 4096 * (rng() % ((256 * kKiB - len) / 4096 + 1));
      ios.push_back(std::make_unique<LayerIo>(VolumeOp::kWrite, off, len));
      ios.back()->buf = Pattern(len, uint64_t(seed) * 100 + i);
      ios.back()->io.buf = ios.back()->buf.data();
      Submit(ios.back().get());
      if (i == 15 && midway) midway();
    }
    for (auto& io : ios) {
      ASSERT_TRUE(io->Wait().ok()) << "a client write failed";
      std::memcpy(oracle_.data() + io->io.offset, io->buf.data(), io->buf.size());
    }
  };
  for (int round = 0; round < 4; ++round) {
    const int victim = 1 + round % 2;
    const std::string node = kNodes[victim];
    batch(round * 10, [&] { fault_.Cut(servers_[victim]->address()); });
    ASSERT_TRUE(WaitFor([&] { return StateOf(node) == MemberState::kOut; })) << node;
    batch(round * 10 + 1, nullptr);
    fault_.HealAll();
    Reconnect(victim, MemberState::kRebuilding);
    Rebuilder::Progress progress;
    ASSERT_TRUE(
        Rebuild("node-a", node, {}, &progress, [&] { batch(round * 10 + 2, nullptr); }).ok());
    std::promise<Status> joined;
    reactor_->Post([&] { layer_->Join(node, [&](Status st) { joined.set_value(st); }); });
    auto f = joined.get_future();
    ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
    ASSERT_TRUE(f.get().ok()) << node;
    ASSERT_EQ(StateOf(node), MemberState::kInSync);
    batch(round * 10 + 3, nullptr);
  }
  ASSERT_TRUE(Flush().ok());
  EXPECT_EQ(membership_->calls().size(), 4u);
  EXPECT_EQ(membership_->joins().size(), 4u);
  ExpectAllReplicasEqualTheOracle({"node-a", "node-b", "node-c"});
}

}  // namespace
}  // namespace shale::replication::testing
