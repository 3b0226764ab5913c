// VolumeLifecycle group snapshots: members taken at one instant as ordinary snapshots, the group
// record (name, id, members, volumes, labels, time) across restarts, idempotency, refusals,
// deletes with clones depending on members (docs/lifecycle.md, "Group snapshots").
#include <gtest/gtest.h>

#include <filesystem>

#include "daemon/lifecycle/lifecycle_test_fixture.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/block.h"
#include "engine/volume/volume_test_util.h"

namespace shale::daemon {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// The lifecycle's view of the replication (the daemon's ReplicatedVolumes, tested end to end in
// e2e_replication_snapshot_test): records the order of the calls the lifecycle makes.
class RecordingReplication final : public SnapshotReplication {
 public:
  class Hold final : public GroupHold {
   public:
    explicit Hold(RecordingReplication* owner) : owner_(owner) {}
    ~Hold() override { owner_->events.push_back("resume"); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    const std::map<std::string, Labels>& MemberLabels() const override { return owner_->labels; }
    const std::set<std::string>& RemoteOnly() const override { return owner_->remote_only; }
    Status SnapshotRemotes(const std::string& name, const Labels& labels) override {
      owner_->events.push_back("copies " + name);
      owner_->copy_labels = labels;
      return owner_->copies;
    }

   private:
    RecordingReplication* const owner_;
  };
  Result<std::optional<snapshot::SnapshotInfo>> Snapshot(
      std::string_view, std::string_view, const snapshot::CreateSnapshotOptions&) override {
    return std::optional<snapshot::SnapshotInfo>();
  }
  Result<bool> DeleteCopiesElsewhere(const std::string&, const std::string&) override {
    return false;
  }
  void SnapshotDeleted(const snapshot::SnapshotInfo& deleted) override {
    events.push_back("deleted " + deleted.full_name());
  }
  Result<std::unique_ptr<GroupHold>> HoldGroup(const std::vector<std::string>& volumes) override {
    if (!refuse.ok()) return refuse;
    std::string joined;
    for (const std::string& v : volumes) joined += (joined.empty() ? "" : ",") + v;
    events.push_back("hold " + joined);
    return std::unique_ptr<GroupHold>(std::make_unique<Hold>(this));
  }

  Result<snapshot::SnapshotInfo> RemoteSnapshot(const std::string& volume,
                                                const std::string& name) override {
    if (remote_snapshots.contains(volume + "@" + name)) {
      snapshot::SnapshotInfo info;
      info.volume = volume;
      info.name = name;
      return info;
    }
    return Status::NotFound("no copy of " + volume + "@" + name);
  }

  Status refuse, copies;
  std::map<std::string, Labels> labels;
  std::set<std::string> remote_only;
  std::set<std::string> remote_snapshots;  // "VOL@SNAP" the replicas hold
  Labels copy_labels;                      // what the last SnapshotRemotes was given
  std::vector<std::string> events;
};

class GroupSnapshotTest : public LifecycleTest {
 protected:
  GroupSnapshotTest() : LifecycleTest("shale-group-lifecycle") {}
  void CreateVolume(const std::string& name) {
    VolumeSpec spec;
    spec.params.name = name;
    spec.params.size_bytes = 4 * kMiB;
    ASSERT_TRUE(lifecycle_->Create(spec).ok());
  }
  void WriteByte(const std::string& volume, uint8_t value) {
    auto h = engine_->OpenVolume(volume);
    ASSERT_TRUE(h.ok());
    AlignedBuffer buf = AllocateAligned(kBlockSize);
    std::memset(buf.get(), value, kBlockSize);
    ASSERT_TRUE(
        testing::RunVolumeIo((*h)->volume(), VolumeOp::kWrite, 0, kBlockSize, buf.get()).ok());
  }
  uint8_t ReadByte(const std::string& volume) {
    auto h = engine_->OpenVolume(volume);
    EXPECT_TRUE(h.ok());
    AlignedBuffer buf = AllocateAligned(kBlockSize);
    EXPECT_TRUE(
        testing::RunVolumeIo((*h)->volume(), VolumeOp::kRead, 0, kBlockSize, buf.get()).ok());
    return buf.get()[0];
  }
};

TEST_F(GroupSnapshotTest, MembersAreOrdinarySnapshotsAndTheRecordSurvivesRestart) {
  for (const char* v : {"data", "features", "model"}) CreateVolume(v);
  WriteByte("data", 1);
  WriteByte("features", 2);
  bool created = false;
  auto g = lifecycle_->CreateGroupSnapshot(
      {.name = "exp1", .volumes = {"data", "features", "model"}, .labels = {{"run", "7"}}},
      &created);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(created);
  EXPECT_EQ(g->snapshots, (std::vector<std::string>{"data@exp1", "features@exp1", "model@exp1"}));
  EXPECT_EQ(g->id.size(), 16u);
  for (const std::string& s : g->snapshots) {
    auto info = snapshots_->Get(s);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->labels.at("run"), "7");
    EXPECT_EQ(info->labels.at(std::string(kGroupLabel)), "exp1");
    EXPECT_EQ(info->labels.at(std::string(kGroupIdLabel)), g->id);
    auto digest = snapshots_->WaitDigest(s);
    ASSERT_TRUE(digest.ok()) << digest.status();
    EXPECT_EQ(digest->digest_state, snapshot::DigestState::kReady);
  }
  WriteByte("data", 9);  // after the group: not in it
  CloneSpec clone{.source = "data@exp1", .name = "data-clone"};
  ASSERT_TRUE(lifecycle_->Clone(clone).ok());
  EXPECT_EQ(ReadByte("data-clone"), 1);

  Close();
  Open();
  auto again = lifecycle_->GetGroupSnapshot("exp1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id, g->id);
  EXPECT_EQ(again->volumes, g->volumes);
  EXPECT_EQ(again->labels, g->labels);
  EXPECT_EQ(again->created_unix_ns, g->created_unix_ns);
  auto list = lifecycle_->ListGroupSnapshots();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ(list->front().name, "exp1");
}

TEST_F(GroupSnapshotTest, IdempotentByNameAndVolumes) {
  for (const char* v : {"a", "b", "c"}) CreateVolume(v);
  auto first = lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "b"}});
  ASSERT_TRUE(first.ok()) << first.status();
  bool created = true;
  auto same = lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"b", "a"}}, &created);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_FALSE(created);
  EXPECT_EQ(same->id, first->id);
  EXPECT_EQ(lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "c"}}).status().code(),
            StatusCode::kAlreadyExists);
}

TEST_F(GroupSnapshotTest, RefusalsLeaveNothingBehind) {
  for (const char* v : {"a", "b"}) CreateVolume(v);
  ASSERT_TRUE(snapshots_->Create("b", "taken").ok());
  EXPECT_EQ(lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "a"}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(lifecycle_->CreateGroupSnapshot({.name = "bad name", .volumes = {"a"}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(
      lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "nope"}}).status().code(),
      StatusCode::kNotFound);
  EXPECT_EQ(
      lifecycle_->CreateGroupSnapshot({.name = "taken", .volumes = {"a", "b"}}).status().code(),
      StatusCode::kAlreadyExists);
  // The replication refusing to hold a member (its target is elsewhere).
  RecordingReplication replication;
  replication.refuse = Status::FailedPrecondition("volume 'b' is served by node x");
  lifecycle_->SetSnapshotReplication(&replication);
  auto replicated = lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "b"}});
  lifecycle_->SetSnapshotReplication(nullptr);
  EXPECT_EQ(replicated.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(replicated.status().message().find("node x"), std::string::npos);
  auto snaps = snapshots_->List({.with_space = false});
  ASSERT_TRUE(snaps.ok());
  EXPECT_EQ(snaps->size(), 1u);  // only b@taken
  auto groups = lifecycle_->ListGroupSnapshots();
  ASSERT_TRUE(groups.ok());
  EXPECT_TRUE(groups->empty());
}

TEST_F(GroupSnapshotTest, ReplicatedMembersAreHeldAcrossTheFreezeAndAFailedCopyUndoesAll) {
  for (const char* v : {"a", "b"}) CreateVolume(v);
  RecordingReplication replication;
  replication.labels["b"] = {{"shale.io/snapshot-replicas", "n1,n2"}};
  lifecycle_->SetSnapshotReplication(&replication);
  auto made = lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "b"}});
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(replication.events, (std::vector<std::string>{"hold a,b", "copies g", "resume"}));
  // The hold ends before the create returns; the member of b carries its replication labels.
  auto b = snapshots_->Get("b@g");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->labels["shale.io/snapshot-replicas"], "n1,n2");
  EXPECT_EQ(b->labels["shale.io/group"], "g");
  EXPECT_FALSE(snapshots_->Get("a@g")->labels.contains("shale.io/snapshot-replicas"));

  // A copy that fails: the group, its members and their copies go again.
  replication.events.clear();
  replication.copies = Status::Unavailable("node n2 is down");
  auto failed = lifecycle_->CreateGroupSnapshot({.name = "h", .volumes = {"a", "b"}});
  lifecycle_->SetSnapshotReplication(nullptr);
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(failed.status().message().find("node n2"), std::string::npos);
  EXPECT_EQ(replication.events, (std::vector<std::string>{"hold a,b", "copies h", "resume",
                                                          "deleted a@h", "deleted b@h"}));
  EXPECT_EQ(lifecycle_->GetGroupSnapshot("h").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(snapshots_->Get("a@h").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(snapshots_->Get("b@h").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(lifecycle_->GetGroupSnapshot("g").ok()) << "the earlier group stays";
}

TEST_F(GroupSnapshotTest, AMemberServedWithoutAReplicaIsNotFrozenHere) {
  for (const char* v : {"a", "b"}) CreateVolume(v);
  RecordingReplication replication;
  replication.remote_only = {"b"};
  lifecycle_->SetSnapshotReplication(&replication);
  auto made = lifecycle_->CreateGroupSnapshot(
      {.name = "g", .volumes = {"b", "a"}, .labels = {{"team", "nlp"}}});
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(replication.events, (std::vector<std::string>{"hold b,a", "copies g", "resume"}));
  EXPECT_EQ(replication.copy_labels["shale.io/group"], "g") << "the copies are group members";
  EXPECT_EQ(replication.copy_labels["team"], "nlp");
  EXPECT_TRUE(snapshots_->Get("a@g").ok());
  EXPECT_EQ(snapshots_->Get("b@g").status().code(), StatusCode::kNotFound) << "no local copy";
  auto got = lifecycle_->GetGroupSnapshot("g");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->snapshots, (std::vector<std::string>{"b@g", "a@g"}));
  EXPECT_EQ(got->pool, snapshots_->Get("a@g")->pool) << "the record goes with a's freeze";

  // Only such members: no freeze here; the record is committed alone, after the copies; a copy
  // that fails leaves no record.
  replication.events.clear();
  auto alone = lifecycle_->CreateGroupSnapshot({.name = "solo", .volumes = {"b"}});
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_EQ(replication.events, (std::vector<std::string>{"hold b", "copies solo", "resume"}));
  EXPECT_TRUE(lifecycle_->GetGroupSnapshot("solo").ok());
  replication.copies = Status::Unavailable("node n2 is down");
  auto failed = lifecycle_->CreateGroupSnapshot({.name = "lost", .volumes = {"b"}});
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(lifecycle_->GetGroupSnapshot("lost").status().code(), StatusCode::kNotFound);

  // A snapshot of that name on the replicas: the group would replace it; refused before any hold.
  replication.copies = Status::Ok();
  replication.remote_snapshots = {"b@daily"};
  replication.events.clear();
  auto taken = lifecycle_->CreateGroupSnapshot({.name = "daily", .volumes = {"a", "b"}});
  EXPECT_EQ(taken.status().code(), StatusCode::kAlreadyExists) << taken.status();
  EXPECT_NE(taken.status().message().find("b@daily"), std::string_view::npos) << taken.status();
  EXPECT_TRUE(replication.events.empty()) << "nothing quiesced, nothing copied";
  EXPECT_EQ(snapshots_->Get("a@daily").status().code(), StatusCode::kNotFound);
  lifecycle_->SetSnapshotReplication(nullptr);
}

TEST_F(GroupSnapshotTest, DeleteKeepsClonesOfMembersWorking) {
  for (const char* v : {"a", "b"}) CreateVolume(v);
  WriteByte("a", 5);
  ASSERT_TRUE(lifecycle_->CreateGroupSnapshot({.name = "g", .volumes = {"a", "b"}}).ok());
  ASSERT_TRUE(lifecycle_->Clone({.source = "a@g", .name = "a-clone"}).ok());
  WriteByte("a", 6);
  ASSERT_TRUE(lifecycle_->DeleteGroupSnapshot("g").ok());
  EXPECT_EQ(lifecycle_->GetGroupSnapshot("g").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(snapshots_->Get("a@g").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadByte("a-clone"), 5);
  EXPECT_EQ(ReadByte("a"), 6);
  EXPECT_EQ(lifecycle_->DeleteGroupSnapshot("g").code(), StatusCode::kNotFound);
  auto check = engine_->CheckPool("default");
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->clean());
}

}  // namespace
}  // namespace shale::daemon
