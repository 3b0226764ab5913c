// The CSI node service for real, as root: volumes staged through nbdfuse + loop (this machine
// has no kernel nbd), formatted ext4 / xfs, published to several targets, expanded online,
// unpublished and unstaged without leaving mounts, loop devices or FUSE mounts behind; raw
// block access; and the notebook flow through CSI only (data-source volume -> snapshot ->
// read-only clone published to two targets at once -> scratch volume created and deleted).
//
// Skips (with the reason) when not root or when FUSE, loop devices or a tool is missing.
#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_attach.h"

namespace shale::e2e {
namespace {

constexpr int64_t kMiB = 1 << 20;
using grpc::StatusCode;

uint64_t FsTotalBytes(const std::string& path) {
  struct statvfs st {};
  if (statvfs(path.c_str(), &st) != 0) return 0;
  return st.f_blocks * st.f_frsize;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string Contents(int i) {
  std::string s = "file " + std::to_string(i) + "\n";
  while (s.size() < static_cast<size_t>(1000 * (i + 1)))
    s += static_cast<char>('a' + (i + s.size()) % 26);
  return s;
}

class CsiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why =
        NbdfuseLoopUnavailable({"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mkfs.xfs",
                                "blkid", "resize2fs", "xfs_growfs", "mount", "umount", "fsfreeze"},
                               "libnbd-bin, fuse3, util-linux, e2fsprogs, xfsprogs");
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_TRUE(c_.Start(h_));
  }

  void TearDown() override {
    if (IsSkipped()) return;
    CleanUpCsiAttachments(h_.root());
  }

  std::string Path(const std::string& name) { return h_.root() + "/" + name; }

  void Create(const std::string& name, int64_t bytes, const std::string& fs = "ext4",
              const std::string& snapshot_source = "",
              AccessMode::Mode mode = AccessMode::SINGLE_NODE_WRITER) {
    auto req = CsiClient::VolumeRequest(name, bytes);
    *req.mutable_volume_capabilities(0) = MountCap(mode, fs);
    if (!snapshot_source.empty()) {
      req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(snapshot_source);
    }
    csiv1::CreateVolumeResponse resp;
    grpc::Status st = c_.CreateVolume(req, &resp);
    ASSERT_TRUE(st.ok()) << Describe(st);
  }

  grpc::Status Stage(const std::string& vol, const std::string& staging,
                     const csiv1::VolumeCapability& cap) {
    grpc::Status st = c_.Stage(vol, staging, cap);
    if (!st.ok()) std::cout << "NodeStage " << vol << ": " << Describe(st) << "\n";
    return st;
  }
  grpc::Status Unstage(const std::string& vol, const std::string& staging) {
    return c_.Unstage(vol, staging);
  }
  grpc::Status Publish(const std::string& vol, const std::string& staging,
                       const std::string& target, const csiv1::VolumeCapability& cap,
                       bool readonly) {
    return c_.Publish(vol, staging, target, cap, readonly);
  }
  grpc::Status Unpublish(const std::string& vol, const std::string& target) {
    return c_.Unpublish(vol, target);
  }
  csiv1::NodeGetVolumeStatsResponse Stats(const std::string& vol, const std::string& path) {
    csiv1::NodeGetVolumeStatsRequest req;
    req.set_volume_id(vol);
    req.set_volume_path(path);
    csiv1::NodeGetVolumeStatsResponse resp;
    grpc::Status st = c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeGetVolumeStats, req, &resp);
    EXPECT_TRUE(st.ok()) << Describe(st);
    return resp;
  }

  void ExpectNothingLeft() {
    EXPECT_TRUE(MountsUnder(h_.root()).empty()) << "mounts left behind (FUSE included)";
    EXPECT_EQ(LoopsUsing(h_.root()), "") << "loop devices left behind";
    // No nbdfuse left, so no NBD client connected to the daemon.
    EXPECT_TRUE(WaitFor(
        [&] {
          CommandResult e = h_.Shale({"export", "list", "-o", "json"});
          if (e.exit_code != 0) return false;
          nlohmann::json j = e.Json();
          for (const auto& ex : j["exports"]) {
            if (ex.contains("clients") && !ex["clients"].empty()) return false;
          }
          return true;
        },
        std::chrono::seconds(10)))
        << "NBD clients left: " << h_.Shale({"export", "list"}).out;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
      const std::string cmd = ReadTextFile(entry.path().string() + "/cmdline");
      EXPECT_FALSE(cmd.find("nbdfuse") != std::string::npos &&
                   cmd.find(h_.root()) != std::string::npos)
          << "nbdfuse left running: " << entry.path();
    }
  }

  void Lifecycle(const std::string& fs) {
    const std::string vol = "pvc-life-" + fs;
    const std::string staging = Path("staging-" + fs);
    const std::string t1 = Path("pods/a/" + fs), t2 = Path("pods/b/" + fs);
    ASSERT_NO_FATAL_FAILURE(Create(vol, 320 * kMiB, fs));
    const auto cap = MountCap(AccessMode::SINGLE_NODE_WRITER, fs);
    ASSERT_TRUE(Stage(vol, staging, cap).ok()) << Describe(Stage(vol, staging, cap));
    ASSERT_TRUE(Stage(vol, staging, cap).ok()) << "idempotent";
    EXPECT_EQ(Stage(vol, Path("elsewhere"), cap).error_code(), StatusCode::ALREADY_EXISTS);
    CommandResult blkid = RunProcess({FindProgram("findmnt"), "-n", "-o", "FSTYPE", staging});
    EXPECT_NE(blkid.out.find(fs), std::string::npos) << blkid.Describe();

    ASSERT_TRUE(Publish(vol, staging, t1, cap, false).ok());
    ASSERT_TRUE(Publish(vol, staging, t1, cap, false).ok()) << "idempotent";
    ASSERT_TRUE(Publish(vol, staging, t2, cap, true).ok());
    for (int i = 0; i < 5; ++i) {
      ASSERT_NO_FATAL_FAILURE(WriteFile(t1 + "/f" + std::to_string(i), Contents(i)));
    }
    ::sync();
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(ReadTextFile(t2 + "/f" + std::to_string(i)), Contents(i));
    }
    EXPECT_LT(open((t2 + "/nope").c_str(), O_CREAT | O_WRONLY, 0644), 0) << "t2 is read-only";
    EXPECT_EQ(errno, EROFS);

    auto stats = Stats(vol, t1);
    ASSERT_EQ(stats.usage_size(), 2);
    EXPECT_EQ(stats.usage(0).unit(), csiv1::VolumeUsage::BYTES);
    EXPECT_GT(stats.usage(0).total(), 250 * kMiB);
    EXPECT_GT(stats.usage(0).used(), 0);
    EXPECT_EQ(stats.usage(1).unit(), csiv1::VolumeUsage::INODES);
    EXPECT_GT(stats.usage(1).used(), 5);
    EXPECT_FALSE(stats.volume_condition().abnormal()) << stats.volume_condition().message();

    // Online expansion: the controller grows the volume, the node the loop device and the fs.
    const uint64_t before = FsTotalBytes(t1);
    csiv1::ControllerExpandVolumeRequest creq;
    creq.set_volume_id(vol);
    creq.mutable_capacity_range()->set_required_bytes(640 * kMiB);
    csiv1::ControllerExpandVolumeResponse cresp;
    ASSERT_TRUE(
        c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerExpandVolume, creq, &cresp)
            .ok());
    ASSERT_TRUE(cresp.node_expansion_required());
    csiv1::NodeExpandVolumeRequest nreq;
    nreq.set_volume_id(vol);
    nreq.set_volume_path(t1);
    nreq.set_staging_target_path(staging);
    nreq.mutable_capacity_range()->set_required_bytes(640 * kMiB);
    csiv1::NodeExpandVolumeResponse nresp;
    grpc::Status expanded =
        c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeExpandVolume, nreq, &nresp);
    if (fs == "ext4" && !HasCapSysResource()) {
      // The kernel grows a mounted ext4 only with CAP_SYS_RESOURCE, which this sandbox lacks:
      // the driver must say so (xfs and raw block cover online growth here).
      EXPECT_EQ(expanded.error_code(), StatusCode::FAILED_PRECONDITION) << Describe(expanded);
      EXPECT_NE(expanded.error_message().find("CAP_SYS_RESOURCE"), std::string::npos);
      std::cout << "[ note ] ext4 online resize not checked: no CAP_SYS_RESOURCE here\n";
    } else {
      ASSERT_TRUE(expanded.ok()) << Describe(expanded);
      EXPECT_EQ(nresp.capacity_bytes(), 640 * kMiB);
      const uint64_t after = FsTotalBytes(t1);
      EXPECT_GT(after, before + 250 * static_cast<uint64_t>(kMiB)) << before << " -> " << after;
      CommandResult df = RunProcess({FindProgram("df"), "-B1", t1});
      EXPECT_EQ(df.exit_code, 0);
      for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(ReadTextFile(t1 + "/f" + std::to_string(i)), Contents(i)) << "after expansion";
      }
    }

    // Unstage refuses while published; everything undone is idempotent.
    EXPECT_EQ(Unstage(vol, staging).error_code(), StatusCode::FAILED_PRECONDITION);
    ASSERT_TRUE(Unpublish(vol, t1).ok());
    ASSERT_TRUE(Unpublish(vol, t1).ok());
    ASSERT_TRUE(Unpublish(vol, t2).ok());
    EXPECT_TRUE(Stats(vol, staging).volume_condition().abnormal() == false);
    ASSERT_TRUE(Unstage(vol, staging).ok());
    ASSERT_TRUE(Unstage(vol, staging).ok());
    EXPECT_FALSE(std::filesystem::exists(t1));
    ASSERT_TRUE(c_.DeleteVolume(vol).ok());
  }

  Harness h_;
  CsiClient c_;
};

TEST_F(CsiNodeTest, Ext4Lifecycle) {
  ASSERT_NO_FATAL_FAILURE(Lifecycle("ext4"));
  ExpectNothingLeft();
}

TEST_F(CsiNodeTest, XfsLifecycle) {
  ASSERT_NO_FATAL_FAILURE(Lifecycle("xfs"));
  ExpectNothingLeft();
}

TEST_F(CsiNodeTest, RawBlockAccess) {
  auto req = CsiClient::VolumeRequest("pvc-block", 16 * kMiB);
  *req.mutable_volume_capabilities(0) = BlockCap();
  csiv1::CreateVolumeResponse resp;
  ASSERT_TRUE(c_.CreateVolume(req, &resp).ok());
  const std::string staging = Path("staging-block"), target = Path("pods/c/dev");
  ASSERT_TRUE(Stage("pvc-block", staging, BlockCap()).ok());
  ASSERT_TRUE(Publish("pvc-block", staging, target, BlockCap(), false).ok());
  {
    int fd = open(target.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << target;
    const std::string data(4096, 'z');
    EXPECT_EQ(pwrite(fd, data.data(), data.size(), 8 * kMiB), 4096);
    EXPECT_EQ(fsync(fd), 0);
    EXPECT_EQ(lseek(fd, 0, SEEK_END), 16 * kMiB) << "the CSI capacity, not the engine size";
    char back[4096];
    EXPECT_EQ(pread(fd, back, sizeof(back), 8 * kMiB), 4096);
    EXPECT_EQ(std::string(back, sizeof(back)), data);
    close(fd);
  }
  auto stats = Stats("pvc-block", target);
  ASSERT_GE(stats.usage_size(), 1);
  EXPECT_EQ(stats.usage(0).total(), 16 * kMiB);
  // Online growth of a raw block volume: the loop device's limit moves, no reconnect.
  csiv1::ControllerExpandVolumeRequest creq;
  creq.set_volume_id("pvc-block");
  creq.mutable_capacity_range()->set_required_bytes(48 * kMiB);
  csiv1::ControllerExpandVolumeResponse cresp;
  ASSERT_TRUE(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerExpandVolume, creq, &cresp)
          .ok());
  csiv1::NodeExpandVolumeRequest nreq;
  nreq.set_volume_id("pvc-block");
  nreq.set_volume_path(target);
  nreq.mutable_capacity_range()->set_required_bytes(48 * kMiB);
  csiv1::NodeExpandVolumeResponse nresp;
  grpc::Status grown = c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeExpandVolume, nreq, &nresp);
  ASSERT_TRUE(grown.ok()) << Describe(grown);
  {
    int fd = open(target.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(lseek(fd, 0, SEEK_END), 48 * kMiB);
    char back[4096];
    EXPECT_EQ(pread(fd, back, sizeof(back), 8 * kMiB), 4096);
    EXPECT_EQ(back[0], 'z') << "data kept across the resize";
    close(fd);
  }
  ASSERT_TRUE(Unpublish("pvc-block", target).ok());
  ASSERT_TRUE(Unstage("pvc-block", staging).ok());
  ASSERT_TRUE(c_.DeleteVolume("pvc-block").ok());
  ExpectNothingLeft();
}

// Kubernetes' notebook example, through CSI calls only (csi/deploy/ and docs/kubernetes.md).
TEST_F(CsiNodeTest, NotebookFlow) {
  const auto rw = MountCap(AccessMode::SINGLE_NODE_WRITER, "ext4");
  const auto ro = MountCap(AccessMode::MULTI_NODE_READER_ONLY, "ext4");
  // 1. The data-source volume, filled by a loader pod.
  ASSERT_NO_FATAL_FAILURE(Create("pvc-data", 128 * kMiB));
  const std::string data_staging = Path("st-data"), loader = Path("pods/loader/data");
  ASSERT_TRUE(Stage("pvc-data", data_staging, rw).ok());
  ASSERT_TRUE(Publish("pvc-data", data_staging, loader, rw, false).ok());
  std::filesystem::create_directories(loader + "/dataset");
  for (int i = 0; i < 8; ++i) {
    ASSERT_NO_FATAL_FAILURE(WriteFile(loader + "/dataset/part" + std::to_string(i), Contents(i)));
  }
  // 2. The snapshot, taken while the volume is in use (frozen so the filesystem is clean).
  ASSERT_EQ(RunProcess({FindProgram("fsfreeze"), "-f", data_staging}).exit_code, 0);
  csiv1::CreateSnapshotResponse snap;
  grpc::Status st = c_.CreateSnapshot("pvc-data", "snapshot-nb", &snap,
                                      {{"csi.storage.k8s.io/volumesnapshot/name", "nb"}});
  ASSERT_EQ(RunProcess({FindProgram("fsfreeze"), "-u", data_staging}).exit_code, 0);
  ASSERT_TRUE(st.ok()) << Describe(st);
  // The loader keeps writing; the snapshot does not see it.
  ASSERT_NO_FATAL_FAILURE(WriteFile(loader + "/dataset/late", "after the snapshot"));

  // 3. A read-only clone, staged once, published to two notebook pods at once.
  ASSERT_NO_FATAL_FAILURE(Create("pvc-nb-ro", 0, "ext4", snap.snapshot().snapshot_id(),
                                 AccessMode::MULTI_NODE_READER_ONLY));
  const std::string ro_staging = Path("st-ro"), nb1 = Path("pods/nb1/data"),
                    nb2 = Path("pods/nb2/data");
  ASSERT_TRUE(Stage("pvc-nb-ro", ro_staging, ro).ok())
      << Describe(Stage("pvc-nb-ro", ro_staging, ro));
  ASSERT_TRUE(Publish("pvc-nb-ro", ro_staging, nb1, ro, true).ok());
  ASSERT_TRUE(Publish("pvc-nb-ro", ro_staging, nb2, ro, true).ok());
  for (int i = 0; i < 8; ++i) {
    const std::string rel = "/dataset/part" + std::to_string(i);
    EXPECT_EQ(ReadTextFile(nb1 + rel), Contents(i)) << rel;
    EXPECT_EQ(ReadTextFile(nb2 + rel), Contents(i)) << rel;
  }
  EXPECT_FALSE(std::filesystem::exists(nb1 + "/dataset/late"));
  EXPECT_LT(open((nb1 + "/x").c_str(), O_CREAT | O_WRONLY, 0644), 0);
  EXPECT_EQ(errno, EROFS);

  // 4. A scratch volume per notebook, created and deleted with it.
  ASSERT_NO_FATAL_FAILURE(Create("pvc-scratch", 64 * kMiB));
  const std::string sc_staging = Path("st-scratch"), scratch = Path("pods/nb1/scratch");
  ASSERT_TRUE(Stage("pvc-scratch", sc_staging, rw).ok());
  ASSERT_TRUE(Publish("pvc-scratch", sc_staging, scratch, rw, false).ok());
  ASSERT_NO_FATAL_FAILURE(WriteFile(scratch + "/tmp.bin", Contents(3)));
  EXPECT_EQ(ReadTextFile(scratch + "/tmp.bin"), Contents(3));
  ASSERT_TRUE(Unpublish("pvc-scratch", scratch).ok());
  ASSERT_TRUE(Unstage("pvc-scratch", sc_staging).ok());
  ASSERT_TRUE(c_.DeleteVolume("pvc-scratch").ok());

  // Tear down everything.
  for (const auto& [vol, target] : std::vector<std::pair<std::string, std::string>>{
           {"pvc-nb-ro", nb1}, {"pvc-nb-ro", nb2}, {"pvc-data", loader}}) {
    ASSERT_TRUE(Unpublish(vol, target).ok()) << vol;
  }
  ASSERT_TRUE(Unstage("pvc-nb-ro", ro_staging).ok());
  ASSERT_TRUE(Unstage("pvc-data", data_staging).ok());
  EXPECT_TRUE(c_.DeleteVolume("pvc-nb-ro").ok());
  EXPECT_TRUE(c_.DeleteVolume("pvc-data").ok());
  EXPECT_TRUE(c_.DeleteSnapshot(snap.snapshot().snapshot_id()).ok());
  ExpectNothingLeft();
}

}  // namespace
}  // namespace shale::e2e
