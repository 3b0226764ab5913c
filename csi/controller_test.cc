// The controller's records: CSI records of older versions (keyed by volume name) are upgraded to
// the lifecycle's frontend records, and stale ones are dropped (docs/lifecycle.md).
#include <gtest/gtest.h>

#include <filesystem>

#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"

namespace shale::csi {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// An engine on a 64 MiB file pool, its snapshot manager and the lifecycle service: what the CSI
// services are built on.
class CsiServicesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-csi-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
    EngineOptions o;
    o.data_dir = dir + "/data";
    o.default_pool_size = 64 * kMiB;
    auto opened = Engine::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status();
    engine = std::move(opened).value();
    snapshots = std::make_unique<snapshot::SnapshotManager>(engine.get());
    ASSERT_TRUE(snapshots->Start().ok());
    lifecycle = std::make_unique<daemon::VolumeLifecycle>(engine.get(), snapshots.get(), nullptr);
  }
  void TearDown() override {
    lifecycle.reset();
    if (snapshots != nullptr) snapshots->Stop();
    if (engine != nullptr) {
      EXPECT_TRUE(engine->Shutdown().ok());
    }
    std::filesystem::remove_all(dir);
  }

  std::string dir;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<snapshot::SnapshotManager> snapshots;
  std::unique_ptr<daemon::VolumeLifecycle> lifecycle;
};

TEST_F(CsiServicesTest, LegacyRecordsAreUpgradedOrDropped) {
  // As an older shaled left them: a CSI volume with its record, and the record of a CSI volume
  // deleted through the CLI next to a volume of the same name made by hand.
  ASSERT_TRUE(engine
                  ->CreateVolume({.name = "pvc-a",
                                  .size_bytes = 8 * kMiB,
                                  .labels = {{std::string(kLabelFingerprint), "f"}}})
                  .ok());
  ASSERT_TRUE(engine->CreateVolume({.name = "byhand", .size_bytes = 8 * kMiB}).ok());
  const std::string old_a = EncodeCsiRecord({"pvc-a", 4 * kMiB, ""});
  MetaBatch legacy;
  legacy.Put(keys::Extension("csi", "volume/pvc-a"), old_a);
  legacy.Put(keys::Extension("csi", "volume/byhand"), EncodeCsiRecord({"byhand", kMiB, ""}));
  legacy.Put(keys::Extension("csi", "volume/gone"), EncodeCsiRecord({"gone", kMiB, ""}));
  ASSERT_TRUE(engine->WriteRecords("default", std::move(legacy)).ok());

  ControllerService controller(DriverOptions{.node_id = "n"}, lifecycle.get());
  ASSERT_TRUE(controller.UpgradeRecords().ok());

  auto a = engine->GetVolume("pvc-a");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(CsiCapacity(engine.get(), *a), 4 * kMiB);
  auto byhand = engine->GetVolume("byhand");
  ASSERT_TRUE(byhand.ok());
  EXPECT_FALSE(ReadCsiRecord(engine.get(), *byhand).has_value());
  EXPECT_EQ(CsiCapacity(engine.get(), *byhand), 8 * kMiB);
  size_t left = 0;
  ASSERT_TRUE(engine
                  ->ScanRecords("default", keys::ExtensionPrefix("csi"),
                                [&](std::string_view, std::string_view) {
                                  ++left;
                                  return true;
                                })
                  .ok());
  EXPECT_EQ(left, 0u) << "legacy records left behind";
  // Idempotent.
  ASSERT_TRUE(controller.UpgradeRecords().ok());
  EXPECT_EQ(CsiCapacity(engine.get(), *a), 4 * kMiB);
}

// While the daemon's change gate is closed (the audit log cannot be written), the CSI calls that
// change something outside the lifecycle service are refused with its status; teardown runs.
TEST_F(CsiServicesTest, ClosedChangeGateRefusesModifyStagePublishAndExpand) {
  ASSERT_TRUE(engine->CreateVolume({.name = "v", .size_bytes = 8 * kMiB}).ok());
  const auto closed = [] { return Status::Unavailable("the audit log cannot be written"); };
  lifecycle->SetChangeGate(closed);
  DriverOptions options{.node_id = "n", .data_dir = dir};
  options.change_gate = closed;
  ControllerService controller(options, lifecycle.get());
  NodeService node(options, engine.get());

  grpc::ServerContext c1, c2, c3, c4, c5;
  ::csi::v1::ControllerModifyVolumeRequest modify;
  modify.set_volume_id("v");
  (*modify.mutable_mutable_parameters())["iops"] = "100";
  ::csi::v1::ControllerModifyVolumeResponse modified;
  grpc::Status st = controller.ControllerModifyVolume(&c1, &modify, &modified);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();

  ::csi::v1::NodeStageVolumeRequest stage;
  stage.set_volume_id("v");
  stage.set_staging_target_path(dir + "/staging");
  stage.mutable_volume_capability()->mutable_block();
  ::csi::v1::NodeStageVolumeResponse staged;
  st = node.NodeStageVolume(&c2, &stage, &staged);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_NE(st.error_message().find("audit log"), std::string::npos) << st.error_message();

  ::csi::v1::NodePublishVolumeRequest publish;
  publish.set_volume_id("v");
  publish.set_staging_target_path(dir + "/staging");
  publish.set_target_path(dir + "/target");
  publish.mutable_volume_capability()->mutable_block();
  ::csi::v1::NodePublishVolumeResponse published;
  st = node.NodePublishVolume(&c3, &publish, &published);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();

  ::csi::v1::NodeExpandVolumeRequest expand;
  expand.set_volume_id("v");
  expand.set_volume_path(dir + "/target");
  ::csi::v1::NodeExpandVolumeResponse expanded;
  st = node.NodeExpandVolume(&c4, &expand, &expanded);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();

  // Teardown is not gated: unstaging a volume that was never staged succeeds.
  ::csi::v1::NodeUnstageVolumeRequest unstage;
  unstage.set_volume_id("v");
  unstage.set_staging_target_path(dir + "/staging");
  ::csi::v1::NodeUnstageVolumeResponse unstaged;
  st = node.NodeUnstageVolume(&c5, &unstage, &unstaged);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// ListSnapshots by source volume on a node that holds no copy of a replicated volume any more
// (a drain moved its replica away and left its older snapshot copies here): the replicas'
// snapshots are listed with the local ones, the local copy first for a name both have; a volume
// this node holds lists only its own.
TEST_F(CsiServicesTest, ListSnapshotsOfAVolumeHeldElsewhereAddsItsReplicasSnapshots) {
  ASSERT_TRUE(engine->CreateVolume({.name = "moved", .size_bytes = 8 * kMiB}).ok());
  ASSERT_TRUE(engine->CreateVolume({.name = "here", .size_bytes = 8 * kMiB}).ok());
  ASSERT_TRUE(lifecycle->Snapshot("moved", "old").ok());
  ASSERT_TRUE(lifecycle->Snapshot("here", "mine").ok());
  ASSERT_TRUE(lifecycle->Delete("moved").ok());  // its snapshot stays, as snapshots do
  DriverOptions options{.node_id = "n", .data_dir = dir};
  std::vector<std::string> asked;
  options.remote_snapshots = [&](const std::string& volume) {
    asked.push_back(volume);
    std::vector<snapshot::SnapshotInfo> out;
    for (const char* name : {"old", "new"}) {
      snapshot::SnapshotInfo s;
      s.volume = volume;
      s.name = name;
      s.size_bytes = 8 * kMiB;
      s.labels["from"] = "replica";
      out.push_back(std::move(s));
    }
    return out;
  };
  ControllerService controller(options, lifecycle.get());
  auto list = [&](const std::string& volume) {
    grpc::ServerContext ctx;
    ::csi::v1::ListSnapshotsRequest req;
    req.set_source_volume_id(volume);
    ::csi::v1::ListSnapshotsResponse resp;
    const grpc::Status st = controller.ListSnapshots(&ctx, &req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    std::vector<std::string> ids;
    for (const auto& e : resp.entries()) ids.push_back(e.snapshot().snapshot_id());
    return ids;
  };
  EXPECT_EQ(list("moved"), (std::vector<std::string>{"moved@new", "moved@old"}));
  EXPECT_EQ(asked, std::vector<std::string>{"moved"});
  EXPECT_EQ(list("here"), std::vector<std::string>{"here@mine"}) << "its own list only";
  EXPECT_EQ(asked.size(), 1u) << "a volume held here is not asked of the replicas";
}

// CreateVolume of a replicated volume while the cluster's records cannot be read (etcd down):
// UNAVAILABLE, so that the provisioner retries, never ALREADY_EXISTS or a second volume; a local
// volume does not need the cluster.
TEST_F(CsiServicesTest, CreateVolumeOfAReplicatedVolumeWaitsForTheCluster) {
  DriverOptions options{.node_id = "n", .data_dir = dir};
  int created = 0;
  options.cluster_volume = [](const std::string&) -> Result<DriverOptions::ClusterVolume> {
    return Status::Unavailable("etcd://127.0.0.1:1 cannot be reached");
  };
  options.create_replicated = [&](const DriverOptions::ReplicatedCreate&) {
    ++created;
    return Status::Ok();
  };
  ControllerService controller(options, lifecycle.get());
  auto create = [&](const std::string& name, const std::string& replicas) {
    grpc::ServerContext ctx;
    ::csi::v1::CreateVolumeRequest req;
    req.set_name(name);
    req.mutable_capacity_range()->set_required_bytes(8 * kMiB);
    auto* cap = req.add_volume_capabilities();
    cap->mutable_block();
    cap->mutable_access_mode()->set_mode(
        ::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
    if (!replicas.empty()) (*req.mutable_parameters())["replicas"] = replicas;
    ::csi::v1::CreateVolumeResponse resp;
    return controller.CreateVolume(&ctx, &req, &resp);
  };
  const grpc::Status replicated = create("pvc-r", "2");
  EXPECT_EQ(replicated.error_code(), grpc::StatusCode::UNAVAILABLE) << replicated.error_message();
  EXPECT_NE(replicated.error_message().find("cannot be reached"), std::string::npos);
  EXPECT_EQ(created, 0) << "nothing was created";
  const grpc::Status local = create("pvc-l", "");
  EXPECT_TRUE(local.ok()) << local.error_message();
  EXPECT_TRUE(engine->GetVolume("pvc-l").ok());
}

}  // namespace
}  // namespace shale::csi
