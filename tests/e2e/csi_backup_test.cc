// Backups through CSI (docs/kubernetes.md, "Backups to S3") against a real shaled with
// --csi-endpoint and a real S3 server (s3rver): a VolumeSnapshotClass parameter backupTo makes
// CreateSnapshot back the snapshot up (ready_to_use only once the manifest is in the bucket), and
// CreateVolume from a pre-provisioned snapshot whose handle names a backup restores it (same
// bytes as the snapshot, checked with qemu-img compare); ListSnapshots describes a handle, bad
// parameters and unknown backups get the CSI codes.
#include <gtest/gtest.h>
#include <stdlib.h>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/s3_server.h"
#include "tests/e2e/snapshot_e2e_util.h"

namespace shale::e2e {
namespace {

constexpr char kBucket[] = "k8s-backups";

class CsiBackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (S3rverBinary().empty()) {
      GTEST_SKIP() << "s3rver is not installed (scripts/deps installs it into tests/tools with "
                      "npm)";
    }
    SHALE_REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
    SHALE_REQUIRE_TOOL(qemu_img, "qemu-img", "qemu-utils");
    qemu_io_ = qemu_io;
    qemu_img_ = qemu_img;
    ASSERT_TRUE(s3_.Start(h_.root(), {kBucket}));
    setenv("AWS_ACCESS_KEY_ID", kS3AccessKey, 1);
    setenv("AWS_SECRET_ACCESS_KEY", kS3SecretKey, 1);
    ASSERT_TRUE(c_.Start(h_, {"--backup-endpoint", s3_.url()}));
  }

  // CreateSnapshot with `params` until ready_to_use (the snapshotter's retries), at most 2 min.
  csiv1::Snapshot SnapshotUntilReady(const std::string& volume, const std::string& name,
                                     const std::map<std::string, std::string>& params) {
    csiv1::CreateSnapshotResponse resp;
    grpc::Status st;
    const bool ready = WaitFor(
        [&] {
          resp.Clear();
          st = c_.CreateSnapshot(volume, name, &resp, params);
          return !st.ok() || resp.snapshot().ready_to_use();
        },
        std::chrono::minutes(2));
    EXPECT_TRUE(st.ok()) << Describe(st);
    EXPECT_TRUE(ready) << "the snapshot never became ready";
    return resp.snapshot();
  }

  Harness h_;
  S3Server s3_;
  CsiClient c_;
  std::string qemu_io_, qemu_img_;
};

TEST_F(CsiBackupTest, SnapshotClassBackupToAndRestoreFromAHandle) {
  csiv1::CreateVolumeResponse created;
  ASSERT_TRUE(c_.CreateVolume(CsiClient::VolumeRequest("pvc-data", 24 * kMiB), &created).ok());
  const std::string vol = created.volume().volume_id();
  CommandResult w =
      QemuIo(qemu_io_, h_.NbdUri(vol), {"write -P 0x5c 0 5M", "write -P 0x3a 13M 2M", "flush"});
  ASSERT_TRUE(QemuOk(w)) << w.Describe();

  // The first answer comes before the upload finished (not ready); ready once it has.
  const std::map<std::string, std::string> cls = {
      {"backupTo", std::string("s3://") + kBucket + "/csi"}, {"team", "nb"}};
  csiv1::Snapshot snap = SnapshotUntilReady(vol, "snap-1", cls);
  ASSERT_FALSE(snap.snapshot_id().empty());
  nlohmann::json list = ShaleJson(h_, {"backup", "list", std::string("s3://") + kBucket + "/csi"});
  ASSERT_EQ(list["backups"].size(), 1u) << list;
  const nlohmann::json& b = list["backups"][0];
  EXPECT_EQ(b["volume"], vol);
  EXPECT_EQ(b["digest"], SnapshotDigest(h_, snap.snapshot_id()));
  EXPECT_EQ(b["labels"]["team"], "nb") << "other class parameters stay labels";
  EXPECT_EQ(b["labels"].count("backupTo"), 0u) << b;
  // The manifest is in the bucket for an independent client, the snapshot is ready only now.
  EXPECT_EQ(s3_.Keys(kBucket, "csi/backups/").size(), 1u);
  // Asking again is idempotent: still one backup.
  SnapshotUntilReady(vol, "snap-1", cls);
  EXPECT_EQ(
      ShaleJson(h_, {"backup", "list", std::string("s3://") + kBucket + "/csi"})["backups"].size(),
      1u);

  // A pre-provisioned VolumeSnapshotContent names the backup: CreateVolume restores it.
  const std::string handle = b["url"];
  csiv1::ListSnapshotsRequest by_id;
  by_id.set_snapshot_id(handle);
  csiv1::ListSnapshotsResponse listed;
  ASSERT_TRUE(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListSnapshots, by_id, &listed).ok());
  ASSERT_EQ(listed.entries_size(), 1);
  EXPECT_EQ(listed.entries(0).snapshot().snapshot_id(), handle);
  EXPECT_EQ(listed.entries(0).snapshot().source_volume_id(), vol);
  EXPECT_TRUE(listed.entries(0).snapshot().ready_to_use());
  EXPECT_EQ(listed.entries(0).snapshot().size_bytes(), snap.size_bytes());

  csiv1::CreateVolumeRequest from_backup = CsiClient::VolumeRequest("pvc-restored");
  from_backup.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(handle);
  csiv1::CreateVolumeResponse restored;
  grpc::Status st = c_.CreateVolume(from_backup, &restored);
  ASSERT_TRUE(st.ok()) << Describe(st) << "\n" << h_.DaemonLog();
  const std::string copy = restored.volume().volume_id();
  EXPECT_EQ(restored.volume().capacity_bytes(), snap.size_bytes());
  CommandResult cmp = Tool({qemu_img_, "compare", "-f", "raw", "-F", "raw",
                            h_.NbdUri(snap.snapshot_id()), h_.NbdUri(copy)});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
  nlohmann::json shown = ShaleJson(h_, {"volume", "show", copy});
  EXPECT_EQ(shown["labels"]["backup.shale.io/digest"], b["digest"]);
  EXPECT_EQ(shown["read_only"], false) << shown;
  // The provisioner's retry finds the finished volume.
  ASSERT_TRUE(c_.CreateVolume(from_backup, &restored).ok());
  EXPECT_EQ(restored.volume().volume_id(), copy);

  // An unknown backup is NOT_FOUND and leaves no volume; readOnlyClone does not apply.
  csiv1::CreateVolumeRequest missing = CsiClient::VolumeRequest("pvc-missing");
  missing.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      std::string("s3://") + kBucket + "/csi/" + vol + ".20200101T000000Z.000000");
  EXPECT_EQ(c_.CreateVolume(missing, &restored).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(h_.Shale({"volume", "show", "pvc-missing"}).exit_code, 0);
  csiv1::CreateVolumeRequest ro = from_backup;
  ro.set_name("pvc-ro");
  (*ro.mutable_parameters())["readOnlyClone"] = "true";
  EXPECT_EQ(c_.CreateVolume(ro, &restored).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CsiBackupTest, BadBackupParametersAreInvalidArgument) {
  csiv1::CreateVolumeResponse created;
  ASSERT_TRUE(c_.CreateVolume(CsiClient::VolumeRequest("pvc-x", 8 * kMiB), &created).ok());
  const std::string vol = created.volume().volume_id();
  csiv1::CreateSnapshotResponse resp;
  EXPECT_EQ(c_.CreateSnapshot(vol, "s1", &resp, {{"backupTo", "http://not-s3/x"}}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(c_.CreateSnapshot(vol, "s2", &resp, {{"backupRegion", "eu-west-1"}}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // A missing bucket: the backup fails and CreateSnapshot reports it (the snapshotter retries).
  grpc::Status st;
  const bool failed = WaitFor(
      [&] {
        st = c_.CreateSnapshot(vol, "s3", &resp, {{"backupTo", "s3://no-such-bucket/p"}});
        return !st.ok();
      },
      std::chrono::minutes(1));
  EXPECT_TRUE(failed) << "a backup into a missing bucket became ready";
  EXPECT_NE(st.error_message().find("no-such-bucket"), std::string::npos) << Describe(st);
}

}  // namespace
}  // namespace shale::e2e
