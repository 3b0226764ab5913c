// ReplicationLayer over real ReplicaServers on TCP loopback (replication_test_cluster.h): writes
// fan out and read back identically from every replica; a cut replica leaves the in-sync set
// through the membership store before the write that failed on it is acknowledged, and I/O goes
// on without a client-visible error (also when a partitioned one times out); below --min-in-sync
// writes fail with EIO; a membership store that cannot be reached fails the write rather than
// acknowledging it on fewer replicas; a target whose epoch is older than a replica's is fenced
// (EIO, no membership change); snapshots quiesce the writes and reach every in-sync replica.
#include "engine/volume/volume_test_util.h"
#include "replication/replication_test_cluster.h"

namespace shale::replication::testing {
namespace {

class ReplicationLayerTest : public ReplicationCluster {};

TEST_F(ReplicationLayerTest, WritesFanOutAndReadBackIdenticallyFromEveryReplica) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(4096, 1)).ok());
  ASSERT_TRUE(Write(3 * kMiB + 512, Pattern(3 * kMiB, 2)).ok());
  // Larger than one replica frame: split into several requests per remote replica.
  ASSERT_TRUE(Write(16 * kMiB, Pattern(kMaxIoBytes + 2 * kMiB, 3)).ok());
  // Zeroes and a discard over written data read back as zeros everywhere.
  {
    LayerIo z(VolumeOp::kWriteZeroes, 17 * kMiB, 64 * kKiB);
    Submit(&z);
    ASSERT_TRUE(z.Wait().ok());
    LayerIo d(VolumeOp::kDiscard, 20 * kMiB, kMiB);
    Submit(&d);
    ASSERT_TRUE(d.Wait().ok());
    std::memset(oracle_.data() + 17 * kMiB, 0, 64 * kKiB);
    std::memset(oracle_.data() + 20 * kMiB, 0, kMiB);
  }
  ASSERT_TRUE(Flush().ok());
  for (uint64_t off = 0; off < 32 * kMiB; off += 8 * kMiB) {
    const std::vector<uint8_t> expect(oracle_.begin() + off, oracle_.begin() + off + 8 * kMiB);
    ExpectReplicas({"node-a", "node-b", "node-c"}, off, expect);
    auto got = Read(off, 8 * kMiB);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == expect) << "layer read at " << off;
  }
  EXPECT_TRUE(membership_->calls().empty());
}

TEST_F(ReplicationLayerTest, ACutReplicaLeavesInTheStoreBeforeTheWriteIsAcknowledged) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(kMiB, 1)).ok());
  membership_->Hold(true);
  fault_.Cut(servers_[2]->address());
  LayerIo w(VolumeOp::kWrite, 5 * kMiB, 64 * kKiB);
  w.buf = Pattern(64 * kKiB, 2);
  w.io.buf = w.buf.data();
  Submit(&w);
  ASSERT_TRUE(WaitFor([&] { return membership_->calls().size() == 1; }));
  EXPECT_EQ(membership_->calls()[0], "node-c");
  // The leave is not recorded yet: the write that failed on node-c is not acknowledged, and a
  // new write waits behind it.
  LayerIo later(VolumeOp::kWrite, 9 * kMiB, 4096);
  later.buf = Pattern(4096, 3);
  later.io.buf = later.buf.data();
  Submit(&later);
  EXPECT_FALSE(w.Done(300ms));
  EXPECT_FALSE(later.Done());
  EXPECT_EQ(StateOf("node-c"), MemberState::kLeaving);
  // The regions of the write in flight are marked for node-c before anything is acknowledged.
  EXPECT_FALSE(ChangedRanges("node-c").empty());
  membership_->Release();
  ASSERT_TRUE(w.Wait().ok()) << "no client-visible error";
  ASSERT_TRUE(later.Wait().ok());
  std::memcpy(oracle_.data() + 5 * kMiB, w.buf.data(), w.buf.size());
  std::memcpy(oracle_.data() + 9 * kMiB, later.buf.data(), later.buf.size());
  EXPECT_EQ(StateOf("node-c"), MemberState::kOut);
  EXPECT_EQ(layer_->epoch(), 2u);
  // I/O goes on, on the other two; what node-c missed is recorded.
  ASSERT_TRUE(Write(12 * kMiB + 4096, Pattern(8192, 4)).ok());
  ASSERT_TRUE(Flush().ok());
  // Region 0 too: written before the cut and never flushed, node-c may have lost it.
  const auto changed = ChangedRanges("node-c");
  const std::vector<std::pair<uint64_t, uint64_t>> expect = {
      {0, kMiB}, {5 * kMiB, kMiB}, {9 * kMiB, kMiB}, {12 * kMiB, kMiB}};
  EXPECT_EQ(changed, expect);
  const std::vector<uint8_t> head(oracle_.begin(), oracle_.begin() + 16 * kMiB);
  ExpectReplicas({"node-a", "node-b"}, 0, head);
  EXPECT_EQ(membership_->calls().size(), 1u);
}

// A replica acknowledges writes before they are durable: one that dies may lose every write since
// the last FLUSH it completed, so those regions are marked for it when it leaves (not only the
// writes in flight); what a completed flush made durable is not.
TEST_F(ReplicationLayerTest, WritesNotFlushedWhenAReplicaLeavesAreMarkedForIt) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(kMiB, 1)).ok());
  ASSERT_TRUE(Flush().ok());                                   // durable on every replica
  ASSERT_TRUE(Write(3 * kMiB + 4096, Pattern(8192, 2)).ok());  // acknowledged, not flushed
  ASSERT_TRUE(Write(4 * kMiB - 4096, Pattern(8192, 3)).ok());  // two regions
  fault_.Cut(servers_[2]->address());
  ASSERT_TRUE(Write(9 * kMiB, Pattern(4096, 4)).ok());
  EXPECT_EQ(StateOf("node-c"), MemberState::kOut);
  const std::vector<std::pair<uint64_t, uint64_t>> expect = {{3 * kMiB, 2 * kMiB},
                                                             {9 * kMiB, kMiB}};
  EXPECT_EQ(ChangedRanges("node-c"), expect);
}

TEST_F(ReplicationLayerTest, APartitionedReplicaTimesOutAndLeavesWithoutAClientError) {
  request_timeout_ = 2000ms;
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  fault_.Partition({servers_[1]->address()});
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(Write(kMiB, Pattern(8192, 1)).ok());
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 1900ms) << "the write waited for node-b's timeout";
  EXPECT_LT(took, 10s);
  EXPECT_EQ(membership_->calls(), std::vector<std::string>{"node-b"});
  EXPECT_EQ(StateOf("node-b"), MemberState::kOut);
  // Later writes go to the others only.
  ASSERT_TRUE(Write(2 * kMiB, Pattern(8192, 2)).ok());
  EXPECT_EQ(membership_->calls().size(), 1u);
  ExpectReplicas({"node-a", "node-c"}, kMiB,
                 std::vector<uint8_t>(oracle_.begin() + kMiB, oracle_.begin() + 2 * kMiB + 8192));
}

TEST_F(ReplicationLayerTest, BelowMinInSyncWritesFailWithEio) {
  MakeLayer(2, true, MemberState::kInSync, MemberState::kInSync);
  fault_.Cut(servers_[2]->address());
  ASSERT_TRUE(Write(0, Pattern(4096, 1)).ok());  // three -> two: still >= 2
  fault_.Cut(servers_[1]->address());
  const Status st = Write(kMiB, Pattern(4096, 2));
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  EXPECT_EQ(Write(2 * kMiB, Pattern(4096, 3)).code(), StatusCode::kIoError);
  EXPECT_EQ(Flush().code(), StatusCode::kIoError);
  // Reads still come from the in-sync replica.
  auto got = Read(0, 4096);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Pattern(4096, 1));
}

// Replacing a replica (a drained node's, or a dead node's): a removed replica gets nothing more,
// is no longer listed or marked, and I/O goes on without a client error while its connection
// closes under requests in flight. The last min_in_sync in-sync replicas stay.
TEST_F(ReplicationLayerTest, ARemovedReplicaGetsNothingMoreAndItsMarksGo) {
  MakeLayer(2, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(kMiB, 1)).ok());
  auto remove = [&](const std::string& node) {
    std::promise<Status> done;
    reactor_->Post([&] { layer_->RemoveReplica(node, [&](Status st) { done.set_value(st); }); });
    return done.get_future().get();
  };
  EXPECT_TRUE(remove("node-z").IsNotFound());
  // node-b, in sync, is removed while writes run; its connection closes with them in flight.
  std::shared_ptr<ReplicaTarget> b;
  reactor_->RunSync([&] { b = layer_->Target("node-b"); });
  ASSERT_NE(b, nullptr);
  std::vector<std::unique_ptr<LayerIo>> writes;
  for (int i = 0; i < 16; ++i) {
    auto w = std::make_unique<LayerIo>(VolumeOp::kWrite, (2 + i) * kMiB, 64 * kKiB);
    w->buf = Pattern(64 * kKiB, 10 + i);
    w->io.buf = w->buf.data();
    Submit(w.get());
    writes.push_back(std::move(w));
  }
  ASSERT_TRUE(remove("node-b").ok());
  static_cast<RemoteReplica*>(b.get())->client().Close();
  for (auto& w : writes) {
    ASSERT_TRUE(w->Wait().ok()) << "no client-visible error";
    std::memcpy(oracle_.data() + w->io.offset, w->buf.data(), w->buf.size());
  }
  EXPECT_TRUE(membership_->calls().empty()) << "a removal is no failure";
  std::vector<ReplicaStatus> listed;
  reactor_->RunSync([&] { listed = layer_->Replicas(); });
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].node, "node-a");
  EXPECT_EQ(listed[1].node, "node-c");
  EXPECT_EQ(layer_->Target("node-b"), nullptr);
  // Now node-a and node-c are the last two of min_in_sync 2.
  EXPECT_EQ(remove("node-c").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(remove("node-a").code(), StatusCode::kFailedPrecondition) << "nor the local one";
  // Writes go on, node-b gets nothing and nothing is marked for it.
  ASSERT_TRUE(Write(30 * kMiB, Pattern(4096, 40)).ok());
  ASSERT_TRUE(Flush().ok());
  EXPECT_TRUE(ChangedRanges("node-b").empty());
  const std::vector<uint8_t> expect(oracle_.begin(), oracle_.begin() + 32 * kMiB);
  ExpectReplicas({"node-a", "node-c"}, 0, expect);
  b.reset();
  Reconnect(1, MemberState::kOut);  // a fresh connection, only to read what node-b holds
  auto on_b = ReadReplica("node-b", 30 * kMiB, 4096);
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_NE(*on_b, Pattern(4096, 40)) << "node-b got a write after its removal";
}

// A drain of the node that serves the volume: its local replica is removed once the others
// suffice; reads are served by the remote in-sync replicas and the local volume gets nothing more.
TEST_F(ReplicationLayerTest, TheLocalReplicaIsRemovedAndReadsGoToTheOthers) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(kMiB, 1)).ok());
  std::promise<Status> removed;
  reactor_->Post(
      [&] { layer_->RemoveReplica("node-a", [&](Status st) { removed.set_value(st); }); });
  ASSERT_TRUE(removed.get_future().get().ok());
  ASSERT_TRUE(Write(2 * kMiB, Pattern(kMiB, 2)).ok());
  ASSERT_TRUE(Flush().ok());
  const std::vector<uint8_t> expect(oracle_.begin(), oracle_.begin() + 4 * kMiB);
  for (int i = 0; i < 4; ++i) {  // round-robin: both remote replicas serve reads
    auto got = Read(0, 4 * kMiB);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == expect) << "read " << i;
  }
  ExpectReplicas({"node-b", "node-c"}, 0, expect);
  std::vector<ReplicaStatus> listed;
  reactor_->RunSync([&] { listed = layer_->Replicas(); });
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_FALSE(listed[0].local);
  AlignedBuffer local = AllocateAligned(kMiB);
  ASSERT_TRUE(
      shale::testing::RunVolumeIo(handle_->volume(), VolumeOp::kRead, 2 * kMiB, kMiB, local.get())
          .ok());
  EXPECT_NE(std::vector<uint8_t>(local.get(), local.get() + kMiB), Pattern(kMiB, 2))
      << "the removed local replica got a write";
}

TEST_F(ReplicationLayerTest, AnUnreachableStoreFailsTheWriteInsteadOfAcknowledgingIt) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  membership_->Fail(true);
  fault_.Cut(servers_[1]->address());
  const auto t0 = std::chrono::steady_clock::now();
  const Status st = Write(0, Pattern(4096, 1));
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 2500ms) << "waited for the store, bounded";
  EXPECT_GE(membership_->calls().size(), 2u) << "the change is retried";
  EXPECT_EQ(StateOf("node-b"), MemberState::kLeaving);
  // Once the store answers again the leave is recorded and writes succeed.
  membership_->Fail(false);
  ASSERT_TRUE(WaitFor([&] { return StateOf("node-b") == MemberState::kOut; }));
  EXPECT_TRUE(Write(kMiB, Pattern(4096, 2)).ok());
}

// A store that does not answer at all (etcd stopped: the call hangs until the client's deadline)
// still fails the waiting write once the membership timeout (3 s here) has passed, not later.
TEST_F(ReplicationLayerTest, AHangingStoreFailsTheWriteAtTheMembershipTimeout) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  membership_->Hold(true);
  fault_.Cut(servers_[1]->address());
  const auto t0 = std::chrono::steady_clock::now();
  const Status st = Write(0, Pattern(4096, 1));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  EXPECT_GE(took, 2900ms);
  EXPECT_LT(took, 6s) << "bounded by the membership timeout, not by the store";
  EXPECT_EQ(Write(kMiB, Pattern(4096, 2)).code(), StatusCode::kIoError) << "until recorded";
  membership_->Release();
  membership_->Hold(false);
  ASSERT_TRUE(WaitFor([&] { return StateOf("node-b") == MemberState::kOut; }));
  EXPECT_TRUE(Write(2 * kMiB, Pattern(4096, 3)).ok());
}

TEST_F(ReplicationLayerTest, AReplicaWithANewerEpochFencesTheOldTarget) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(4096, 1)).ok());
  // A new target takes the volume over: its OPEN persists epoch 5 on node-b.
  auto newer = Connect(1, 5);
  ASSERT_NE(newer, nullptr);
  const Status st = Write(kMiB, Pattern(4096, 2));
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  EXPECT_TRUE(layer_->fenced());
  EXPECT_EQ(Write(2 * kMiB, Pattern(4096, 3)).code(), StatusCode::kIoError);
  EXPECT_FALSE(Read(0, 4096).ok()) << "a fenced target serves nothing";
  EXPECT_TRUE(membership_->calls().empty()) << "fencing is not a replica failure";
  EXPECT_GE(servers_[1]->stats().stale_epoch_replies, 1u);
  // node-b refuses the fenced target's requests of every kind.
  EXPECT_FALSE(ReadReplica("node-b", 0, 4096).ok());
  newer->Close();
}

// Snapshots: Quiesce holds new writes until Resume and lets reads through; SNAPSHOT goes to every
// in-sync remote replica (these servers have no snapshot handler: NOT_SUPPORTED, reported per
// replica, not a replica failure). FenceAt: a newer epoch seen on the local replica fences.
TEST_F(ReplicationLayerTest, QuiesceHoldsWritesAndSnapshotsReachEveryInSyncReplica) {
  MakeLayer(1, true, MemberState::kInSync, MemberState::kInSync);
  ASSERT_TRUE(Write(0, Pattern(4096, 1)).ok());
  std::promise<void> quiet;
  reactor_->RunSync([&] { layer_->Quiesce([&] { quiet.set_value(); }); });
  ASSERT_EQ(quiet.get_future().wait_for(5s), std::future_status::ready);
  LayerIo held(VolumeOp::kWrite, kMiB, 4096);
  held.buf = Pattern(4096, 2);
  held.io.buf = held.buf.data();
  Submit(&held);
  EXPECT_FALSE(held.Done(300ms)) << "a write waits while the volume is quiesced";
  EXPECT_TRUE(Read(0, 4096).ok()) << "reads go on";
  std::promise<ReplicationLayer::SnapshotResults> results;
  reactor_->RunSync([&] {
    layer_->SnapshotRemotes(
        "s1", {}, [&](ReplicationLayer::SnapshotResults r) { results.set_value(std::move(r)); });
  });
  auto got = results.get_future();
  ASSERT_EQ(got.wait_for(5s), std::future_status::ready);
  const ReplicationLayer::SnapshotResults r = got.get();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].first, "node-b");
  EXPECT_EQ(r[1].first, "node-c");
  for (const auto& [node, st] : r) EXPECT_EQ(st.code(), StatusCode::kNotSupported) << node << st;
  EXPECT_FALSE(held.Done());
  reactor_->RunSync([&] { layer_->Resume(); });
  ASSERT_TRUE(held.Wait().ok());
  EXPECT_EQ(StateOf("node-b"), MemberState::kInSync) << "a refused snapshot is no failure";
  EXPECT_TRUE(membership_->calls().empty());

  reactor_->RunSync([&] { layer_->FenceAt(layer_->epoch()); });
  EXPECT_FALSE(layer_->fenced()) << "the same epoch does not fence";
  reactor_->RunSync([&] { layer_->FenceAt(layer_->epoch() + 1); });
  EXPECT_TRUE(layer_->fenced());
  EXPECT_EQ(Write(2 * kMiB, Pattern(4096, 3)).code(), StatusCode::kIoError);
  EXPECT_TRUE(membership_->calls().empty()) << "fencing records nothing";
}

}  // namespace
}  // namespace shale::replication::testing
