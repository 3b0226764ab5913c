// VolumeLifecycle: every operation commits the volume with the records of every layer, and a
// delete leaves none of them behind (docs/lifecycle.md).
#include "daemon/lifecycle/volume_lifecycle.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "daemon/lifecycle/lifecycle_test_fixture.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"
#include "qos/qos_manager.h"

namespace shale::daemon {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Records a frontend's export gate would see: which exports it closed, whose clients it names.
class RecordingGate final : public ExportGate {
 public:
  Status WithExportClosed(const std::string& name, std::chrono::milliseconds,
                          const std::function<Status()>& fn) override {
    closed.push_back(name);
    return fn();
  }
  std::string DescribeClients(const std::string& name) const override {
    return clients_of == name ? "1 connected NBD client(s): tcp 127.0.0.1:1" : "";
  }
  std::vector<std::string> closed;
  std::string clients_of;
};

class VolumeLifecycleTest : public LifecycleTest {
 protected:
  VolumeLifecycleTest() : LifecycleTest("shale-lifecycle-test", /*with_qos=*/true) {}

  // Every extension record of the default pool: key without the "X" prefix byte.
  std::set<std::string> ExtensionKeys() {
    std::set<std::string> out;
    EXPECT_TRUE(engine_
                    ->ScanRecords("default", "X",
                                  [&](std::string_view key, std::string_view) {
                                    out.insert(std::string(key));
                                    return true;
                                  })
                    .ok());
    return out;
  }

  static qos::QosSettings Limited() {
    qos::QosSettings s;
    s.iops = 500;
    return s;
  }
};

TEST_F(VolumeLifecycleTest, CreateCommitsQosAndFrontendRecordsWithTheVolume) {
  VolumeSpec spec;
  spec.params = {.name = "v", .size_bytes = 8 * kMiB, .labels = {{"team", "ds"}}};
  spec.qos = Limited();
  spec.records = {{"csi", "{\"capacity\":1}"}, {"other", "x"}};
  auto v = lifecycle_->Create(spec);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(qos_->Get("v")->iops, 500);
  EXPECT_EQ(lifecycle_->GetFrontendRecord(*v, "csi")->value_or(""), "{\"capacity\":1}");
  EXPECT_EQ(lifecycle_->GetFrontendRecord(*v, "other")->value_or(""), "x");
  EXPECT_FALSE(lifecycle_->GetFrontendRecord(*v, "none")->has_value());
  // Durable: after a restart the QoS manager loads the record that committed with the volume.
  Close();
  Open();
  EXPECT_EQ(qos_->Get("v")->iops, 500);
  auto again = engine_->GetVolume("v");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(lifecycle_->GetFrontendRecord(*again, "csi")->value_or(""), "{\"capacity\":1}");
}

TEST_F(VolumeLifecycleTest, BadInputCreatesNothing) {
  const std::set<std::string> before = ExtensionKeys();
  VolumeSpec spec;
  spec.params = {.name = "v", .size_bytes = 8 * kMiB};
  qos::QosSettings bad;
  bad.weight = 100000;  // out of 1..10000
  spec.qos = bad;
  EXPECT_EQ(lifecycle_->Create(spec).status().code(), StatusCode::kInvalidArgument);
  spec.qos.reset();
  spec.records = {{"Bad Name", "x"}};
  EXPECT_EQ(lifecycle_->Create(spec).status().code(), StatusCode::kInvalidArgument);
  spec.records.clear();
  spec.params.labels = {{"-bad", "x"}};
  EXPECT_EQ(lifecycle_->Create(spec).status().code(), StatusCode::kInvalidArgument);
  spec.params.labels.clear();
  spec.params.size_bytes = 0;
  EXPECT_EQ(lifecycle_->Create(spec).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(engine_->GetVolume("v").ok());
  EXPECT_EQ(ExtensionKeys(), before);
}

TEST_F(VolumeLifecycleTest, DeleteRemovesEveryLayersRecords) {
  const std::set<std::string> before = ExtensionKeys();
  VolumeSpec spec;
  spec.params = {.name = "src", .size_bytes = 8 * kMiB};
  ASSERT_TRUE(lifecycle_->Create(spec).ok());
  ASSERT_TRUE(lifecycle_->Snapshot("src", "s").ok());
  CloneSpec clone;
  clone.source = "src@s";
  clone.name = "c";
  clone.qos = Limited();
  clone.records = {{"csi", "rec"}};
  auto c = lifecycle_->Clone(clone);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(qos_->Get("c")->iops, 500);
  EXPECT_EQ(lifecycle_->GetFrontendRecord(c->volume, "csi")->value_or(""), "rec");

  ASSERT_TRUE(lifecycle_->Delete("c").ok());
  ASSERT_TRUE(lifecycle_->DeleteSnapshot("src@s").ok());
  ASSERT_TRUE(lifecycle_->Delete("src").ok());
  // Clone record, QoS record, frontend records, snapshot record: all gone with their volumes.
  EXPECT_EQ(ExtensionKeys(), before);
  // A new volume of the same name starts without any of them.
  auto fresh = lifecycle_->Create({.params = {.name = "c", .size_bytes = 4 * kMiB}});
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(lifecycle_->GetFrontendRecord(*fresh, "csi")->has_value());
  EXPECT_EQ(qos_->Get("c")->iops, 0);
  EXPECT_FALSE(snapshots_->GetCloneInfo("c")->has_value());
}

// The change gate (shaled: the audit log can be written) refuses every change as it is, and
// nothing is changed; once it passes again, changes go through.
TEST_F(VolumeLifecycleTest, AClosedChangeGateRefusesEveryChange) {
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "src", .size_bytes = 8 * kMiB}}).ok());
  ASSERT_TRUE(lifecycle_->Snapshot("src", "s").ok());
  bool open = false;
  lifecycle_->SetChangeGate([&] { return open ? Status::Ok() : Status::Unavailable("audit"); });
  const std::set<std::string> before = ExtensionKeys();
  auto refused = [](const Status& st) { return st.code() == StatusCode::kUnavailable; };
  EXPECT_TRUE(refused(lifecycle_->Create({.params = {.name = "v", .size_bytes = kMiB}}).status()));
  EXPECT_TRUE(refused(lifecycle_->Clone({.source = "src@s", .name = "c"}).status()));
  EXPECT_TRUE(refused(lifecycle_->Resize("src", 16 * kMiB, {}, 0).status()));
  EXPECT_TRUE(refused(lifecycle_->Snapshot("src", "t").status()));
  EXPECT_TRUE(refused(lifecycle_->DeleteSnapshot("src@s").status()));
  EXPECT_TRUE(refused(lifecycle_->Revert("src", "s")));
  EXPECT_TRUE(refused(lifecycle_->Delete("src")));
  EXPECT_TRUE(refused(lifecycle_->SetPoolCapacity("default", {}).status()));
  EXPECT_TRUE(refused(lifecycle_->ExpandPool("default", 0).status()));
  EXPECT_TRUE(refused(lifecycle_->DeletePool("default", true)));
  EXPECT_EQ(ExtensionKeys(), before);
  EXPECT_EQ(engine_->ListVolumes().size(), 1u);
  EXPECT_EQ(engine_->GetVolume("src")->size_bytes, 8 * kMiB);
  open = true;
  EXPECT_TRUE(lifecycle_->Delete("src").ok());
}

TEST_F(VolumeLifecycleTest, CloneGrowsInTheSameCommit) {
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "src", .size_bytes = 8 * kMiB}}).ok());
  CloneSpec spec;
  spec.source = "src";  // the live volume, through an implicit snapshot
  spec.name = "big";
  spec.size_bytes = 32 * kMiB;
  auto c = lifecycle_->Clone(spec);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->volume.size_bytes, 32 * kMiB);
  EXPECT_TRUE(c->clone.implicit_source);
  spec.name = "small";
  spec.size_bytes = 4 * kMiB;  // smaller than the source
  EXPECT_EQ(lifecycle_->Clone(spec).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(engine_->GetVolume("small").ok());
}

TEST_F(VolumeLifecycleTest, ResizeWritesFrontendRecordsWithTheSize) {
  auto v = lifecycle_->Create(
      {.params = {.name = "v", .size_bytes = 8 * kMiB}, .records = {{"csi", "old"}}});
  ASSERT_TRUE(v.ok());
  auto grown = lifecycle_->Resize("v", 16 * kMiB, {{"csi", "new"}});
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(grown->size_bytes, 16 * kMiB);
  EXPECT_EQ(lifecycle_->GetFrontendRecord(*grown, "csi")->value_or(""), "new");
  // Same size: the record is still written.
  ASSERT_TRUE(lifecycle_->Resize("v", 16 * kMiB, {{"csi", "newer"}}).ok());
  EXPECT_EQ(lifecycle_->GetFrontendRecord(*grown, "csi")->value_or(""), "newer");
  EXPECT_EQ(lifecycle_->Resize("v", 4 * kMiB).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(lifecycle_->Resize("v", UINT64_MAX).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(VolumeLifecycleTest, PutFrontendRecordRefusesAVolumeDeletedMeanwhile) {
  auto v = lifecycle_->Create({.params = {.name = "v", .size_bytes = 8 * kMiB}});
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(lifecycle_->Delete("v").ok());
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "v", .size_bytes = 8 * kMiB}}).ok());
  EXPECT_TRUE(lifecycle_->PutFrontendRecord(*v, "csi", "x").IsNotFound());
}

TEST_F(VolumeLifecycleTest, ForceDeleteClosesTheExportAndBusyNamesItsClients) {
  RecordingGate gate;
  lifecycle_->SetExportGate(&gate);
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "v", .size_bytes = 8 * kMiB}}).ok());
  {
    auto handle = engine_->OpenVolume("v");  // a client holds the volume
    ASSERT_TRUE(handle.ok());
    gate.clients_of = "v";
    Status busy = lifecycle_->Delete("v");
    EXPECT_EQ(busy.code(), StatusCode::kBusy);
    EXPECT_NE(busy.message().find("1 connected NBD client(s)"), std::string_view::npos) << busy;
    EXPECT_NE(busy.message().find("--force"), std::string_view::npos) << busy;
    EXPECT_TRUE(engine_->GetVolume("v").ok());
  }
  ASSERT_TRUE(lifecycle_->Delete("v", {.force = true}).ok());
  EXPECT_EQ(gate.closed, std::vector<std::string>{"v"});
  lifecycle_->SetExportGate(nullptr);
}

TEST_F(VolumeLifecycleTest, DeletePoolForgetsItsVolumesQos) {
  ASSERT_TRUE(
      engine_->CreatePool({.name = "p2", .device_path = dir_ + "/p2.img", .size_bytes = 64 * kMiB})
          .ok());
  VolumeSpec spec;
  spec.params = {.name = "w", .size_bytes = 4 * kMiB, .pool = "p2"};
  spec.qos = Limited();
  ASSERT_TRUE(lifecycle_->Create(spec).ok());
  EXPECT_EQ(lifecycle_->DeletePool("p2", /*force=*/false).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(lifecycle_->DeletePool("p2", /*force=*/true).ok());
  EXPECT_FALSE(engine_->GetVolume("w").ok());
  // A new volume of that name in another pool does not inherit the settings.
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "w", .size_bytes = 4 * kMiB}}).ok());
  EXPECT_EQ(qos_->Get("w")->iops, 0);
}

}  // namespace
}  // namespace shale::daemon
