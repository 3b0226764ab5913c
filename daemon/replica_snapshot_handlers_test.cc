// The replica server's handler for a DELETE_SNAPSHOT whose replica volume is gone
// (ReplicatedVolumes::ServeReplicaSnapshots, `delete_snapshot_of_deleted`; docs/format/
// replica-protocol.md): with the volume's uuid, the copy labelled with it goes; with a nil uuid
// (the sender knows the volume only by name), a copy goes only if no volume record of its uuid is
// left in the cluster — here a fake of that lookup — and a local volume's snapshot never does.
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "daemon/lifecycle/lifecycle_test_fixture.h"
#include "daemon/replicated_volumes.h"
#include "replication/replica_server.h"

namespace shale::daemon {
namespace {

constexpr char kUuid[] = "0f6f1c0e-8c1a-4e8b-9d3e-2a7b5c9d1e4f";
constexpr char kOtherUuid[] = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";

class ReplicaSnapshotHandlersTest : public LifecycleTest {
 protected:
  ReplicaSnapshotHandlersTest() : LifecycleTest("shale-replica-snapshot-handlers") {}
  void SetUp() override {
    LifecycleTest::SetUp();
    ReplicatedVolumes::ServeReplicaSnapshots(
        lifecycle_.get(),
        [this](const std::string& volume) -> Result<std::optional<std::string>> {
          looked_up = volume;
          return recorded;
        },
        &options_);
    ASSERT_TRUE(options_.delete_snapshot_of_deleted);

    // Volume "v" with a replicated volume's copy (both labels) and a local snapshot, then deleted
    // (its snapshots outlive it).
    VolumeSpec spec;
    spec.params.name = "v";
    spec.params.size_bytes = 4 * kMiB;
    ASSERT_TRUE(lifecycle_->Create(spec).ok());
    ASSERT_TRUE(lifecycle_
                    ->Snapshot("v", "copy",
                               {.labels = {{kSnapshotVolumeUuidLabel, kUuid},
                                           {kSnapshotReplicasLabel, "node-a,node-b"}}})
                    .ok());
    ASSERT_TRUE(lifecycle_->Snapshot("v", "local").ok());
    ASSERT_TRUE(lifecycle_->Delete("v").ok());
  }

  Status Delete(const std::string& name, const Uuid& uuid = Uuid{}) {
    return options_.delete_snapshot_of_deleted("v", name, uuid);
  }
  bool Has(const std::string& ref) { return snapshots_->Get(ref).ok(); }

  Result<std::optional<std::string>> recorded = std::optional<std::string>();
  std::string looked_up;
  replication::ReplicaServerOptions options_;
};

TEST_F(ReplicaSnapshotHandlersTest, ANilUuidDeletesOnlyACopyWhoseVolumeNoRecordHolds) {
  // etcd unreadable: nothing is deleted, the error says so.
  recorded = Status::Unavailable("etcd is down");
  EXPECT_EQ(Delete("copy").code(), StatusCode::kUnavailable);
  EXPECT_EQ(looked_up, "v");
  EXPECT_TRUE(Has("v@copy"));
  // The cluster still has a volume of the copy's uuid (e.g. its replica moved off this node).
  recorded = std::optional<std::string>(kUuid);
  EXPECT_EQ(Delete("copy").code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Has("v@copy"));
  // A local volume's snapshot (no uuid label) stays whatever the cluster holds.
  recorded = std::optional<std::string>();
  EXPECT_EQ(Delete("local").code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Has("v@local"));
  // A volume of that name with another uuid (made again after the deletion): the copy goes.
  recorded = std::optional<std::string>(kOtherUuid);
  EXPECT_TRUE(Delete("copy").ok());
  EXPECT_FALSE(Has("v@copy"));
  // Gone: NotFound for a nil uuid (the sender counts the nodes that held one).
  EXPECT_EQ(Delete("copy").code(), StatusCode::kNotFound);
  EXPECT_TRUE(Has("v@local"));
}

TEST_F(ReplicaSnapshotHandlersTest, AUuidDeletesTheCopyLabelledWithItAndNothingElse) {
  recorded = Status::Unavailable("not asked: the uuid decides");
  EXPECT_EQ(Delete("copy", *Uuid::Parse(kOtherUuid)).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Has("v@copy"));
  EXPECT_EQ(Delete("local", *Uuid::Parse(kUuid)).code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Has("v@local"));
  EXPECT_TRUE(Delete("copy", *Uuid::Parse(kUuid)).ok());
  EXPECT_FALSE(Has("v@copy"));
  EXPECT_TRUE(Delete("copy", *Uuid::Parse(kUuid)).ok()) << "idempotent";
  EXPECT_TRUE(looked_up.empty());
}

}  // namespace
}  // namespace shale::daemon
