// The replica server's snapshot administration and fencing hooks (docs/format/replica-protocol.md,
// "Snapshots"; docs/replication.md, "Moving the target and fencing"): SNAPSHOT_DIGEST and
// DELETE_SNAPSHOT reach the daemon's handlers for a replica of the right uuid only, a delete
// is fenced by the epoch, a server without handlers answers NOT_SUPPORTED; on_epoch_raised
// reports every raise of a replica's persisted epoch (OPEN, RaiseEpoch) and nothing else.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"

namespace shale::replication {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSize = 16 * kMiB;

ClusterSecret Secret() { return *ClusterSecret::FromBytes("replica-snapshot-test-secret"); }

class ReplicaServerSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/shale-replica-snap-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    uuid_ = Uuid::Random();
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 128 * kMiB;
    options.reactors = 1;
    auto engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    ASSERT_TRUE(engine_
                    ->CreateVolume({.name = "vol",
                                    .size_bytes = kSize,
                                    .labels = {{kReplicaUuidLabel, uuid_.ToString()}}})
                    .ok());
    auto reactor = Reactor::Start({.name = "target"});
    ASSERT_TRUE(reactor.ok()) << reactor.status();
    reactor_ = std::move(reactor).value();
  }
  void TearDown() override {
    if (server_) server_->Stop();
    server_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
    reactor_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Start(ReplicaServerOptions o) {
    o.listen_address = "127.0.0.1:0";
    o.node_name = "node-b";
    o.secret = Secret();
    server_ = std::make_unique<ReplicaServer>(engine_.get(), &tcp_, std::move(o));
    ASSERT_TRUE(server_->Start().ok());
  }
  ReplicaAdminOptions Admin() { return {server_->address(), "node-a", Secret(), &tcp_}; }
  ReplicaSpec Spec(Uuid uuid) { return {"vol", uuid, kSize, ""}; }

  std::string dir_;
  Uuid uuid_;
  TcpTransport tcp_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<ReplicaServer> server_;
};

TEST_F(ReplicaServerSnapshotTest, CreateFromASnapshotClonesItGrowsItAndFencesIt) {
  std::vector<std::string> calls;
  ReplicaServerOptions o;
  o.clone_snapshot = [&](const std::string& source, const std::string& volume,
                         const std::map<std::string, std::string>& labels) -> Result<VolumeInfo> {
    calls.push_back(source + " -> " + volume + " " + labels.at(kReplicaUuidLabel));
    if (source == "vol@gone") return Status::NotFound("no snapshot " + source);
    // Stands in for the snapshot layer's clone: a volume of the snapshot's (smaller) size.
    return engine_->CreateVolume({.name = volume, .size_bytes = kSize / 2, .labels = labels});
  };
  Start(std::move(o));
  const Uuid clone_uuid = Uuid::Random();
  ReplicaSpec spec{"clone", clone_uuid, kSize, "", "vol@s1"};
  Result<ReplicaStat> made = CreateReplica(Admin(), spec, 3);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_TRUE(made->created);
  EXPECT_EQ(made->epoch, 3u);
  EXPECT_EQ(made->size_bytes, kSize) << "grown to the replicated volume's size";
  EXPECT_EQ(engine_->GetVolume("clone").value().size_bytes, kSize);
  // Again: the replica is found (no second clone).
  made = CreateReplica(Admin(), spec, 3);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_FALSE(made->created);
  // A snapshot this node does not hold: NOT_FOUND (the creator then places an empty replica).
  ReplicaSpec missing{"clone2", Uuid::Random(), kSize, "", "vol@gone"};
  EXPECT_TRUE(CreateReplica(Admin(), missing, 3).status().IsNotFound());
  EXPECT_FALSE(engine_->GetVolume("clone2").ok());
  EXPECT_EQ(calls, (std::vector<std::string>{"vol@s1 -> clone " + clone_uuid.ToString(),
                                             "vol@gone -> clone2 " + missing.uuid.ToString()}));
}

TEST_F(ReplicaServerSnapshotTest, DigestAndDeleteReachTheHandlersFencedByTheEpoch) {
  std::mutex mu;
  std::vector<std::string> calls;
  ReplicaServerOptions o;
  o.snapshot_digest = [&](const std::string& volume,
                          const std::string& snap) -> Result<std::string> {
    std::lock_guard lock(mu);
    calls.push_back("digest " + volume + "@" + snap);
    if (snap == "gone") return Status::NotFound("no snapshot " + snap);
    return std::string("00112233445566778899aabbccddeeff");
  };
  o.delete_snapshot = [&](const std::string& volume, const std::string& snap) {
    std::lock_guard lock(mu);
    calls.push_back("delete " + volume + "@" + snap);
    return Status::Ok();
  };
  o.take_snapshot = [&](const std::string& volume, const std::string& snap, const Labels& labels) {
    std::lock_guard lock(mu);
    std::string with;
    for (const auto& [k, v] : labels) with += " " + k + "=" + v;
    calls.push_back("take " + volume + "@" + snap + with);
    return snap == "elsewhere" ? Status::FailedPrecondition("not served here") : Status::Ok();
  };
  Start(std::move(o));
  // TAKE_SNAPSHOT reaches the daemon's handler (which decides whether it serves the volume), with
  // its labels; its refusal arrives as FailedPrecondition (status PRECONDITION) with its message.
  EXPECT_TRUE(TakeSnapshotOnTarget(Admin(), Spec(uuid_), "s0").ok());
  EXPECT_TRUE(
      TakeSnapshotOnTarget(Admin(), Spec(uuid_), "s9", {{"team", "nb"}, {"source", "s3://b/p?x=1"}})
          .ok());
  const Status elsewhere = TakeSnapshotOnTarget(Admin(), Spec(uuid_), "elsewhere");
  EXPECT_EQ(elsewhere.code(), StatusCode::kFailedPrecondition) << elsewhere;
  EXPECT_NE(elsewhere.ToString().find("not served here"), std::string::npos) << elsewhere;
  EXPECT_EQ(TakeSnapshotOnTarget(Admin(), Spec(uuid_), "s8", {{"bad key", "v"}}).code(),
            StatusCode::kInvalidArgument)
      << "labels are checked before they go";
  EXPECT_EQ(TakeSnapshotOnTarget(Admin(), Spec(Uuid::Random()), "s0").code(),
            StatusCode::kInvalidArgument);
  auto digest = SnapshotDigestOf(Admin(), Spec(uuid_), "s1");
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, "00112233445566778899aabbccddeeff");
  EXPECT_TRUE(SnapshotDigestOf(Admin(), Spec(uuid_), "gone").status().IsNotFound());
  // Another volume's uuid: refused before any handler runs.
  EXPECT_EQ(SnapshotDigestOf(Admin(), Spec(Uuid::Random()), "s1").status().code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(server_->RaiseEpoch("vol", 4).ok());
  EXPECT_EQ(DeleteReplicaSnapshot(Admin(), Spec(uuid_), "s1", 3).sys_errno(), ESTALE)
      << "a fenced target cannot delete";
  EXPECT_TRUE(DeleteReplicaSnapshot(Admin(), Spec(uuid_), "s1", 4).ok());
  std::lock_guard lock(mu);
  const std::vector<std::string> expect = {
      "take vol@s0",        "take vol@s9 source=s3://b/p?x=1 team=nb",
      "take vol@elsewhere", "digest vol@s1",
      "digest vol@gone",    "delete vol@s1"};
  EXPECT_EQ(calls, expect);
}

// LIST_SNAPSHOTS: what the daemon's handler lists for the replica, with digests and labels; a
// replica of another uuid and a target-only anchor are refused before the handler runs.
TEST_F(ReplicaServerSnapshotTest, ListReachesTheHandlerForAReplicaOnly) {
  std::vector<std::string> asked;
  ReplicaServerOptions o;
  o.list_snapshots = [&](const std::string& volume) -> Result<std::vector<SnapshotEntry>> {
    asked.push_back(volume);
    return std::vector<SnapshotEntry>{
        {"s1", 5, kSize, "00112233445566778899aabbccddeeff", {{"team", "nb"}}},
        {"s2", 6, kSize, "", {}}};
  };
  Start(std::move(o));
  Result<SnapshotList> listed = ListReplicaSnapshots(Admin(), Spec(uuid_));
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->snapshots.size(), 2u);
  EXPECT_EQ(listed->snapshots[0].name, "s1");
  EXPECT_EQ(listed->snapshots[0].digest, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(listed->snapshots[0].labels, (Labels{{"team", "nb"}}));
  EXPECT_EQ(listed->snapshots[1].created_unix_ns, 6u);
  EXPECT_EQ(ListReplicaSnapshots(Admin(), Spec(Uuid::Random())).status().code(),
            StatusCode::kInvalidArgument);
  ASSERT_TRUE(engine_
                  ->CreateVolume({.name = "anchor",
                                  .size_bytes = kSize,
                                  .labels = {{kReplicaUuidLabel, uuid_.ToString()},
                                             {kTargetOnlyLabel, "true"}}})
                  .ok());
  EXPECT_EQ(ListReplicaSnapshots(Admin(), {"anchor", uuid_, kSize, ""}).status().code(),
            StatusCode::kInvalidArgument)
      << "an anchor holds no snapshots of the volume";
  EXPECT_TRUE(ListReplicaSnapshots(Admin(), {"nope", uuid_, kSize, ""}).status().IsNotFound());
  EXPECT_EQ(asked, std::vector<std::string>{"vol"});
}

TEST_F(ReplicaServerSnapshotTest, WithoutHandlersSnapshotsAreNotSupported) {
  Start({});
  EXPECT_EQ(SnapshotDigestOf(Admin(), Spec(uuid_), "s1").status().code(),
            StatusCode::kNotSupported);
  EXPECT_EQ(DeleteReplicaSnapshot(Admin(), Spec(uuid_), "s1", 1).code(), StatusCode::kNotSupported);
  EXPECT_EQ(ListReplicaSnapshots(Admin(), Spec(uuid_)).status().code(), StatusCode::kNotSupported);
}

TEST_F(ReplicaServerSnapshotTest, EveryRaiseOfAReplicasEpochIsReported) {
  std::mutex mu;
  std::vector<std::pair<std::string, uint64_t>> raised;
  ReplicaServerOptions o;
  o.on_epoch_raised = [&](const std::string& volume, uint64_t epoch) {
    std::lock_guard lock(mu);
    raised.emplace_back(volume, epoch);
  };
  Start(std::move(o));
  auto open = [&](uint64_t epoch) {
    ReplicaClientOptions c;
    c.address = server_->address();
    c.node_name = "node-a";
    c.secret = Secret();
    c.volume = "vol";
    c.volume_uuid = uuid_;
    c.size_bytes = kSize;
    c.epoch = epoch;
    c.transport = &tcp_;
    c.completion_reactor = reactor_.get();
    return ReplicaClient::Connect(std::move(c));
  };
  auto first = open(2);
  ASSERT_TRUE(first.ok()) << first.status();
  (*first)->Close();
  auto same = open(2);  // not higher: not reported
  ASSERT_TRUE(same.ok()) << same.status();
  (*same)->Close();
  ASSERT_TRUE(server_->RaiseEpoch("vol", 5).ok());
  ASSERT_TRUE(server_->RaiseEpoch("vol", 3).ok());  // lower: a no-op
  EXPECT_TRUE(IsStaleEpoch(open(4).status())) << "the raise is persisted and fences";
  EXPECT_FALSE(server_->RaiseEpoch("nope", 9).ok());
  std::lock_guard lock(mu);
  const std::vector<std::pair<std::string, uint64_t>> expect = {{"vol", 2}, {"vol", 5}};
  EXPECT_EQ(raised, expect);
}

}  // namespace
}  // namespace shale::replication
