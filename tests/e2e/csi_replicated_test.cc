// Replicated volumes through CSI against three real shaled in cluster mode and a real etcd
// (docs/kubernetes.md, "Replicated volumes"; issue 12): CreateVolume with the StorageClass
// parameter `replicas` places one replica per node (this node first), honours the requisite
// topology, answers RESOURCE_EXHAUSTED when too few nodes qualify and reports every replica's node
// as accessible. NodeStage on a node starts the volume's target there (ext4 mounted through
// nbdfuse + loop); a second node's NodeStage is FAILED_PRECONDITION naming the owner; after
// NodeUnstage the other node stages it and reads the file the first one wrote; after the
// staging node's shaled is killed (-9), another node's NodeStage takes the volume over once the
// dead node's lease expired, with every fsynced byte; the dead node, restarted, never serves it
// again and its NodeUnstage cleans its stage up. A VolumeSnapshot of a replicated volume is
// cloned read-only on several nodes at once, and writable as a replicated volume of its own; a
// 1-replica PVC of the controller's node is cloned as a replicated one, and a backup handle (a
// real S3 server, s3rver) restored as one.
//
// Skipped (with the reason) where etcd is not installed; the staging test also where root, FUSE,
// loop devices or a tool is missing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_attach.h"
#include "tests/e2e/replication_fixture.h"
#include "tests/e2e/s3_server.h"

namespace shale::e2e {
namespace {

constexpr int64_t kMiB = 1 << 20;

class CsiReplicatedTest : public EtcdE2eTest {
 protected:
  void SetUp() override {
    EtcdE2eTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // A test named ...Backup... gets a real S3 server (s3rver) as node-a's backup endpoint.
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::vector<std::string> backups;
    if (test.find("Backup") != std::string::npos) {
      if (S3rverBinary().empty()) {
        GTEST_SKIP() << "s3rver is not installed (scripts/deps installs it into tests/tools)";
      }
      ASSERT_TRUE(s3_.Start(nodes_[0].root(), {"backups"}));
      setenv("AWS_ACCESS_KEY_ID", kS3AccessKey, 1);  // the daemons inherit the credentials
      setenv("AWS_SECRET_ACCESS_KEY", kS3SecretKey, 1);
      backups = {"--backup-endpoint", s3_.url()};
    }
    const char* names[] = {"node-a", "node-b", "node-c"};
    for (int i = 0; i < 3; ++i) {
      // No --node-id: in cluster mode the CSI node id is the node name.
      std::vector<std::string> flags = NodeFlags(nodes_[i], *etcd_, names[i]);
      if (i == 0) flags.insert(flags.end(), backups.begin(), backups.end());
      ASSERT_TRUE(csi_[i].Start(nodes_[i], flags, ""));
    }
    ASSERT_TRUE(WaitPublished(nodes_[0], 3));
  }
  void TearDown() override {
    for (Harness& h : nodes_) CleanUpCsiAttachments(h.root());
    EtcdE2eTest::TearDown();
  }

  // A replicated CreateVolume on node-a.
  grpc::Status Create(const std::string& name, const std::string& replicas,
                      csiv1::CreateVolumeResponse* resp,
                      const std::vector<std::string>& requisite = {}) {
    csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest(name, 32 * kMiB);
    (*req.mutable_parameters())["replicas"] = replicas;
    for (const std::string& node : requisite) {
      (*req.mutable_accessibility_requirements()
            ->add_requisite()
            ->mutable_segments())["topology.csi.shale.io/node"] = node;
    }
    return csi_[0].CreateVolume(req, resp);
  }
  // The nodes holding a replica of `vol` (its membership, through node-a).
  std::set<std::string> ReplicaNodeSet(const std::string& vol) {
    std::set<std::string> out;
    for (const auto& [node, r] : Replicas(nodes_[0], vol)) out.insert(node);
    return out;
  }
  // The accessible topology's nodes; empty for a replicated volume (every node: its target runs
  // where the pod does).
  static std::set<std::string> Topology(const csiv1::CreateVolumeResponse& resp) {
    std::set<std::string> nodes;
    for (const auto& t : resp.volume().accessible_topology()) {
      nodes.insert(t.segments().at("topology.csi.shale.io/node"));
    }
    return nodes;
  }

  // Writes `data` to `path` and makes it durable (the file and its directory entry).
  static void WriteDurably(const std::string& path, const std::string& data) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0) << path;
    EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    EXPECT_EQ(fsync(fd), 0);
    close(fd);
    const std::string dir = path.substr(0, path.rfind('/'));
    const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    ASSERT_GE(dfd, 0) << dir;
    EXPECT_EQ(fsync(dfd), 0);
    close(dfd);
  }
  static std::string ReadAll(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream got;
    got << in.rdbuf();
    return got.str();
  }
  // A 3-replica ext4 volume created on node-a and staged on node-b at <node-b root>/staging.
  void CreateAndStageOnNodeB(const std::string& name, std::string* vol) {
    csiv1::CreateVolumeResponse resp;
    grpc::Status st = Create(name, "3", &resp);
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
    *vol = resp.volume().volume_id();
    st = csi_[1].Stage(*vol, nodes_[1].root() + "/staging", MountCap());
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[1].DaemonLog();
  }
  // ControllerExpandVolume through `csi` to `bytes`: the capacity answered (0 on an error, with
  // a failure unless `expect` says otherwise).
  static int64_t Expand(CsiClient& csi, const std::string& vol, int64_t bytes,
                        grpc::StatusCode expect = grpc::StatusCode::OK,
                        std::string* message = nullptr) {
    csiv1::ControllerExpandVolumeRequest grow;
    grow.set_volume_id(vol);
    grow.mutable_capacity_range()->set_required_bytes(bytes);
    csiv1::ControllerExpandVolumeResponse grown;
    grpc::Status st = csi.Call(csi.controller.get(),
                               &csiv1::Controller::Stub::ControllerExpandVolume, grow, &grown);
    EXPECT_EQ(st.error_code(), expect) << Describe(st);
    if (message != nullptr) *message = st.error_message();
    if (st.ok()) {
      EXPECT_TRUE(grown.node_expansion_required());
    }
    return st.ok() ? grown.capacity_bytes() : 0;
  }
  static std::string WhyNoMounts() {
    return NbdfuseLoopUnavailable(
        {"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "blkid", "mount", "umount"},
        "libnbd-bin, fuse3, util-linux, e2fsprogs");
  }

  Harness nodes_[3];
  CsiClient csi_[3];
  S3Server s3_;
};

TEST_F(CsiReplicatedTest, PlacementHonoursTheTopologyAndTheNodeCount) {
  csiv1::CreateVolumeResponse resp;
  grpc::Status st = Create("pvc-three", "3", &resp);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(Topology(resp).empty()) << "a replicated volume is accessible from every node";
  EXPECT_EQ(ReplicaNodeSet(resp.volume().volume_id()),
            (std::set<std::string>{"node-a", "node-b", "node-c"}));
  EXPECT_EQ(resp.volume().capacity_bytes(), 32 * kMiB);
  // The same request again: the same volume (idempotent).
  csiv1::CreateVolumeResponse again;
  ASSERT_TRUE(Create("pvc-three", "3", &again).ok());
  EXPECT_EQ(again.volume().volume_id(), resp.volume().volume_id());
  // Created detached: any node holding a replica may stage it.
  nlohmann::json whole;
  EXPECT_EQ(Replicas(nodes_[1], resp.volume().volume_id(), &whole).size(), 3u);
  EXPECT_EQ(whole["detached"], true) << whole;

  // A snapshot of the detached volume through another node's controller: taken there (the
  // volume attached for it, on every replica, then detached again).
  csiv1::CreateSnapshotResponse snap;
  st = csi_[1].CreateSnapshot(resp.volume().volume_id(), "snapshot-1", &snap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[1].DaemonLog();
  EXPECT_TRUE(snap.snapshot().ready_to_use());
  CommandResult shown =
      nodes_[1].Shale({"snapshot", "show", snap.snapshot().snapshot_id(), "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["labels"]["shale.io/snapshot-replicas"], "node-b,node-a,node-c")
      << shown.out;
  Replicas(nodes_[0], resp.volume().volume_id(), &whole);
  EXPECT_EQ(whole["detached"], true) << "detached again: " << whole;
  EXPECT_TRUE(csi_[1].DeleteSnapshot(snap.snapshot().snapshot_id()).ok());

  csiv1::CreateVolumeResponse two;
  ASSERT_TRUE(Create("pvc-two", "2", &two, {"node-a", "node-c"}).ok());
  EXPECT_TRUE(Topology(two).empty());
  EXPECT_EQ(ReplicaNodeSet(two.volume().volume_id()), (std::set<std::string>{"node-a", "node-c"}));

  csiv1::CreateVolumeResponse none;
  st = Create("pvc-four", "4", &none);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(st);
  EXPECT_NE(st.error_message().find("4 replicas"), std::string::npos) << st.error_message();
  st = Create("pvc-narrow", "3", &none, {"node-a", "node-b"});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(st);
  EXPECT_EQ(csi_[0].DeleteVolume("pvc-four").error_code(), grpc::StatusCode::OK);
  EXPECT_NE(nodes_[0].Shale({"volume", "show", "pvc-four"}).exit_code, 0) << "nothing was left";

  // replicaNodeSelector: replicas only on nodes whose `shale node label` labels meet it.
  ASSERT_EQ(nodes_[2].Shale({"node", "label", "node-a", "tier=fast"}).exit_code, 0);
  ASSERT_EQ(nodes_[2].Shale({"node", "label", "node-b", "tier=fast"}).exit_code, 0);
  auto selective = [&](const std::string& name, const std::string& replicas,
                       const std::string& selector, csiv1::CreateVolumeResponse* out) {
    csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest(name, 32 * kMiB);
    (*req.mutable_parameters())["replicas"] = replicas;
    (*req.mutable_parameters())["replicaNodeSelector"] = selector;
    return csi_[0].CreateVolume(req, out);
  };
  csiv1::CreateVolumeResponse fast;
  st = selective("pvc-fast", "2", "tier=fast", &fast);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_EQ(ReplicaNodeSet(fast.volume().volume_id()), (std::set<std::string>{"node-a", "node-b"}));
  st = selective("pvc-fast3", "3", "tier=fast", &none);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(st);
  EXPECT_NE(st.error_message().find("node-c: its labels do not meet the node selector (tier=fast)"),
            std::string::npos)
      << st.error_message();
  st = selective("pvc-badsel", "2", "tier=fast,,", &none);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(st);
  EXPECT_TRUE(csi_[0].DeleteVolume(fast.volume().volume_id()).ok());

  // Expansion of the detached volume through another node: the membership grows (that node's
  // replica at once, the others when next opened); a smaller request keeps the size.
  EXPECT_EQ(Expand(csi_[1], resp.volume().volume_id(), 64 * kMiB), 64 * kMiB);
  CommandResult grown_b =
      nodes_[1].Shale({"volume", "show", resp.volume().volume_id(), "-o", "json"});
  ASSERT_EQ(grown_b.exit_code, 0) << grown_b.Describe();
  EXPECT_EQ(grown_b.Json()["size_bytes"], 64 * kMiB) << grown_b.out;
  EXPECT_EQ(Expand(csi_[2], resp.volume().volume_id(), 48 * kMiB), 64 * kMiB);
  // ModifyVolume (a VolumeAttributesClass) through any node: the QoS in the membership, which
  // the node serving the volume applies.
  csiv1::ControllerModifyVolumeRequest modify;
  modify.set_volume_id(resp.volume().volume_id());
  (*modify.mutable_mutable_parameters())["iops"] = "500";
  csiv1::ControllerModifyVolumeResponse modified;
  st = csi_[2].Call(csi_[2].controller.get(), &csiv1::Controller::Stub::ControllerModifyVolume,
                    modify, &modified);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  CommandResult qos = nodes_[0].Shale({"qos", "show", resp.volume().volume_id(), "-o", "json"});
  ASSERT_EQ(qos.exit_code, 0) << qos.Describe();
  EXPECT_EQ(qos.Json()["qos"]["iops"], 500) << qos.out;
  (*modify.mutable_mutable_parameters())["iops"] = "-5";
  st = csi_[1].Call(csi_[1].controller.get(), &csiv1::Controller::Stub::ControllerModifyVolume,
                    modify, &modified);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(st);

  // DeleteVolume removes every replica.
  ASSERT_TRUE(csi_[0].DeleteVolume(resp.volume().volume_id()).ok());
  for (Harness& h : nodes_) {
    EXPECT_NE(h.Shale({"volume", "show", resp.volume().volume_id()}).exit_code, 0);
  }
}

TEST_F(CsiReplicatedTest, StagedWhereThePodRunsOneWriterAndTheDataMovesWithIt) {
  if (const std::string why = WhyNoMounts(); !why.empty()) GTEST_SKIP() << why;
  // The pod runs on node-b: its target moves there; the file written is fsynced.
  std::string vol;
  ASSERT_NO_FATAL_FAILURE(CreateAndStageOnNodeB("pvc-notebook", &vol));
  const csiv1::VolumeCapability cap = MountCap();
  const std::string staging_b = nodes_[1].root() + "/staging";
  grpc::Status st;
  const std::string data = "notebook results " + std::string(100000, 'r');
  ASSERT_NO_FATAL_FAILURE(WriteDurably(staging_b + "/results.txt", data));
  nlohmann::json whole;
  Replicas(nodes_[0], vol, &whole);
  EXPECT_EQ(whole["target"], "node-b") << whole;
  EXPECT_EQ(whole["detached"], false) << whole;

  // One writer: node-c cannot stage it while node-b has it.
  const std::string staging_c = nodes_[2].root() + "/staging";
  st = csi_[2].Stage(vol, staging_c, cap);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(st);
  EXPECT_NE(st.error_message().find("node-b"), std::string::npos) << st.error_message();

  // A VolumeSnapshot through another node's controller: node-b, which serves it, takes it.
  csiv1::CreateSnapshotResponse snap;
  st = csi_[0].CreateSnapshot(vol, "snapshot-in-use", &snap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog() << nodes_[1].DaemonLog();
  EXPECT_TRUE(snap.snapshot().ready_to_use());
  EXPECT_TRUE(csi_[0].DeleteSnapshot(snap.snapshot().snapshot_id()).ok());

  // Expansion waits while a node serves it with clients (the resizer retries), elsewhere and there.
  std::string why;
  Expand(csi_[0], vol, 96 * kMiB, grpc::StatusCode::FAILED_PRECONDITION, &why);
  EXPECT_NE(why.find("attached on node node-b"), std::string::npos) << why;
  Expand(csi_[1], vol, 96 * kMiB, grpc::StatusCode::FAILED_PRECONDITION, &why);
  EXPECT_NE(why.find("has clients on node-b"), std::string::npos) << why;

  // The pod moves: unstaged on node-b, the volume grown meanwhile, staged on node-c with the
  // data, where NodeExpandVolume grows the filesystem.
  st = csi_[1].Unstage(vol, staging_b);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[1].DaemonLog();
  EXPECT_EQ(Expand(csi_[0], vol, 96 * kMiB), 96 * kMiB);
  st = csi_[2].Stage(vol, staging_c, cap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  const std::string got = ReadAll(staging_c + "/results.txt");
  EXPECT_TRUE(got == data) << "the file written on node-b, read on node-c: " << got.size()
                           << " bytes";
  csiv1::NodeExpandVolumeRequest node_grow;
  node_grow.set_volume_id(vol);
  node_grow.set_volume_path(staging_c);
  node_grow.mutable_capacity_range()->set_required_bytes(96 * kMiB);
  csiv1::NodeExpandVolumeResponse node_grown;
  st = csi_[2].Call(csi_[2].node.get(), &csiv1::Node::Stub::NodeExpandVolume, node_grow,
                    &node_grown);
  // The device under the filesystem has the new size (the target opened with it).
  EXPECT_EQ(MountedDeviceBytes(staging_c), 96 * kMiB);
  if (HasCapSysResource()) {
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
    EXPECT_EQ(node_grown.capacity_bytes(), 96 * kMiB);
    const std::filesystem::space_info space = std::filesystem::space(staging_c);
    EXPECT_GT(space.capacity, 64 * kMiB) << "the filesystem grew to the new size";
  } else {
    // The kernel grows a mounted ext4 only with CAP_SYS_RESOURCE, which this sandbox lacks.
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(st);
    EXPECT_NE(st.error_message().find("CAP_SYS_RESOURCE"), std::string::npos) << Describe(st);
    std::cout << "[ note ] ext4 online resize not checked: no CAP_SYS_RESOURCE here\n";
  }
  EXPECT_TRUE(ReadAll(staging_c + "/results.txt") == data) << "the file survives the growth";
  nlohmann::json grown;
  Replicas(nodes_[2], vol, &grown);
  for (const nlohmann::json& r : grown["replicas"]) {
    EXPECT_EQ(r["state"], "healthy") << "every replica grew at its OPEN: " << grown;
  }
  Replicas(nodes_[0], vol, &whole);
  EXPECT_EQ(whole["target"], "node-c") << whole;
  st = csi_[2].Unstage(vol, staging_c);
  ASSERT_TRUE(st.ok()) << Describe(st);
  st = csi_[0].DeleteVolume(vol);
  EXPECT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
}

// A replicated volume is accessible from every node: its pod on node-c, which holds no replica,
// is served there from node-a's and node-b's (docs/replication.md, "Targets on nodes without a
// replica").
TEST_F(CsiReplicatedTest, APodOnANodeWithoutAReplicaIsServedFromTheOthers) {
  if (const std::string why = WhyNoMounts(); !why.empty()) GTEST_SKIP() << why;
  csiv1::CreateVolumeResponse resp;
  grpc::Status st = Create("pvc-elsewhere", "2", &resp, {"node-a", "node-b"});
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  const std::string vol = resp.volume().volume_id();
  EXPECT_TRUE(Topology(resp).empty()) << "accessible from every node";
  ASSERT_EQ(ReplicaNodeSet(vol), (std::set<std::string>{"node-a", "node-b"}));
  EXPECT_NE(nodes_[2].Shale({"volume", "show", vol}).exit_code, 0) << "nothing of it on node-c";

  const csiv1::VolumeCapability cap = MountCap();
  const std::string staging_c = nodes_[2].root() + "/staging";
  st = csi_[2].Stage(vol, staging_c, cap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  const std::string data = "trained on node-c " + std::string(200000, 'c');
  ASSERT_NO_FATAL_FAILURE(WriteDurably(staging_c + "/model.bin", data));
  nlohmann::json whole;
  std::map<std::string, nlohmann::json> replicas = Replicas(nodes_[2], vol, &whole);
  EXPECT_EQ(whole["target"], "node-c") << whole;
  EXPECT_FALSE(replicas.contains("node-c")) << whole;
  for (const auto& [node, r] : replicas) EXPECT_EQ(r["state"], "healthy") << node << whole;

  // A VolumeSnapshot through node-a's controller: node-c, which serves it, takes it on the two
  // replicas (their copies are the snapshot); deleted through node-a, both copies go.
  csiv1::CreateSnapshotResponse snap;
  st = csi_[0].CreateSnapshot(vol, "snapshot-elsewhere", &snap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_TRUE(snap.snapshot().ready_to_use());
  CommandResult shown =
      nodes_[1].Shale({"snapshot", "show", snap.snapshot().snapshot_id(), "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["labels"]["shale.io/snapshot-replicas"], "node-a,node-b") << shown.out;
  EXPECT_TRUE(csi_[0].DeleteSnapshot(snap.snapshot().snapshot_id()).ok());
  EXPECT_NE(nodes_[1].Shale({"snapshot", "show", snap.snapshot().snapshot_id()}).exit_code, 0)
      << "node-b's copy went with it";

  // A VolumeGroupSnapshot through node-c, which serves the volume without a replica: its member
  // is the copies on the replicas, reported ready; deleted with the group.
  csiv1::CreateVolumeGroupSnapshotRequest group;
  group.set_name("groupsnapshot-elsewhere");
  group.add_source_volume_ids(vol);
  csiv1::CreateVolumeGroupSnapshotResponse grouped;
  st = csi_[2].Call(csi_[2].group.get(), &csiv1::GroupController::Stub::CreateVolumeGroupSnapshot,
                    group, &grouped);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_TRUE(grouped.group_snapshot().ready_to_use()) << grouped.DebugString();
  ASSERT_EQ(grouped.group_snapshot().snapshots_size(), 1) << grouped.DebugString();
  const std::string member = grouped.group_snapshot().snapshots(0).snapshot_id();
  CommandResult member_b = nodes_[1].Shale({"snapshot", "show", member, "-o", "json"});
  ASSERT_EQ(member_b.exit_code, 0) << member_b.Describe();
  EXPECT_EQ(member_b.Json()["labels"]["shale.io/group"],
            grouped.group_snapshot().group_snapshot_id())
      << member_b.out;
  csiv1::DeleteVolumeGroupSnapshotRequest ungroup;
  ungroup.set_group_snapshot_id(grouped.group_snapshot().group_snapshot_id());
  csiv1::DeleteVolumeGroupSnapshotResponse ungrouped;
  st = csi_[2].Call(csi_[2].group.get(), &csiv1::GroupController::Stub::DeleteVolumeGroupSnapshot,
                    ungroup, &ungrouped);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_NE(nodes_[1].Shale({"snapshot", "show", member}).exit_code, 0) << "the copy went";

  // The pod moves to node-a: unstaged on node-c (nothing of the volume stays there), staged on
  // node-a with the file.
  st = csi_[2].Unstage(vol, staging_c);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_NE(nodes_[2].Shale({"volume", "show", vol}).exit_code, 0) << "the anchor went";
  const std::string staging_a = nodes_[0].root() + "/staging";
  st = csi_[0].Stage(vol, staging_a, cap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(ReadAll(staging_a + "/model.bin") == data) << "written on node-c, read on node-a";
  st = csi_[0].Unstage(vol, staging_a);
  ASSERT_TRUE(st.ok()) << Describe(st);
  st = csi_[0].DeleteVolume(vol);
  EXPECT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
}

// The pod's node cannot hold a replica (the class's replicaNodeSelector leaves it out; so would
// a cordon or a full pool): its controller still provisions the volume, with every replica on
// other nodes and none of it on this node; answers for it (idempotent CreateVolume, GetVolume,
// ValidateVolumeCapabilities, DeleteVolume) from the cluster's record; and its node plugin
// serves it from the replicas.
TEST_F(CsiReplicatedTest, AControllerOnANodeWithoutAReplicaProvisionsItAndDeletesIt) {
  if (const std::string why = WhyNoMounts(); !why.empty()) GTEST_SKIP() << why;
  ASSERT_EQ(nodes_[0].Shale({"node", "label", "node-a", "disk=ssd"}).exit_code, 0);
  ASSERT_EQ(nodes_[0].Shale({"node", "label", "node-b", "disk=ssd"}).exit_code, 0);
  auto request = [](int64_t bytes) {
    csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest("pvc-ssd", bytes);
    (*req.mutable_parameters())["replicas"] = "2";
    (*req.mutable_parameters())["replicaNodeSelector"] = "disk=ssd";
    return req;
  };
  csiv1::CreateVolumeResponse resp;
  grpc::Status st = csi_[2].CreateVolume(request(32 * kMiB), &resp);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  const std::string vol = resp.volume().volume_id();
  EXPECT_EQ(resp.volume().capacity_bytes(), 32 * kMiB);
  EXPECT_TRUE(Topology(resp).empty()) << "accessible from every node";
  EXPECT_EQ(ReplicaNodeSet(vol), (std::set<std::string>{"node-a", "node-b"}));
  nlohmann::json whole;
  Replicas(nodes_[2], vol, &whole);
  EXPECT_EQ(whole["detached"], true) << whole;
  CommandResult listed = nodes_[2].Shale({"volume", "list", "-o", "json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.Describe();
  EXPECT_EQ(listed.out.find(vol), std::string::npos) << "nothing of it on node-c: " << listed.out;

  // The same request again through node-c: the same volume (its labels are in the cluster's
  // record); another capacity under that name: ALREADY_EXISTS.
  csiv1::CreateVolumeResponse again;
  st = csi_[2].CreateVolume(request(32 * kMiB), &again);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(again.volume().volume_id(), vol);
  EXPECT_EQ(again.volume().capacity_bytes(), 32 * kMiB);
  st = csi_[2].CreateVolume(request(64 * kMiB), &again);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << Describe(st);

  // GetVolume and ValidateVolumeCapabilities through node-c: from the cluster's record.
  csiv1::ControllerGetVolumeRequest get;
  get.set_volume_id(vol);
  csiv1::ControllerGetVolumeResponse got;
  st = csi_[2].Call(csi_[2].controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get,
                    &got);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(got.volume().capacity_bytes(), 32 * kMiB);
  EXPECT_FALSE(got.status().volume_condition().abnormal()) << got.DebugString();
  EXPECT_EQ(got.status().volume_condition().message(), "2 of 2 replicas in sync, detached");
  csiv1::ValidateVolumeCapabilitiesRequest validate;
  validate.set_volume_id(vol);
  *validate.add_volume_capabilities() = MountCap();
  csiv1::ValidateVolumeCapabilitiesResponse validated;
  st = csi_[2].Call(csi_[2].controller.get(), &csiv1::Controller::Stub::ValidateVolumeCapabilities,
                    validate, &validated);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_TRUE(validated.has_confirmed()) << validated.DebugString();

  // The pod on node-c: served from the replicas on node-a and node-b.
  const std::string staging = nodes_[2].root() + "/staging";
  st = csi_[2].Stage(vol, staging, MountCap());
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  const std::string data = "features " + std::string(100000, 'f');
  ASSERT_NO_FATAL_FAILURE(WriteDurably(staging + "/features.bin", data));
  // Not deleted while node-c serves it (its lease lives).
  st = csi_[0].DeleteVolume(vol);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(st);
  st = csi_[2].Unstage(vol, staging);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  st = csi_[0].Stage(vol, nodes_[0].root() + "/staging", MountCap());
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(ReadAll(nodes_[0].root() + "/staging/features.bin") == data)
      << "written on node-c, read on node-a";
  st = csi_[0].Unstage(vol, nodes_[0].root() + "/staging");
  ASSERT_TRUE(st.ok()) << Describe(st);

  // A VolumeSnapshot through node-c's controller while no node serves it: node-c attaches it for
  // the snapshot (taken on both replicas) and detaches it; the same request again answers the
  // same snapshot (read from a replica); deleted through node-c, both copies go.
  csiv1::CreateSnapshotResponse snap, snap_again;
  st = csi_[2].CreateSnapshot(vol, "snapshot-ssd", &snap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_TRUE(snap.snapshot().ready_to_use());
  EXPECT_EQ(snap.snapshot().source_volume_id(), vol);
  st = csi_[2].CreateSnapshot(vol, "snapshot-ssd", &snap_again);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_EQ(snap_again.snapshot().snapshot_id(), snap.snapshot().snapshot_id());
  EXPECT_TRUE(snap_again.snapshot().ready_to_use());
  CommandResult shown =
      nodes_[1].Shale({"snapshot", "show", snap.snapshot().snapshot_id(), "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["labels"]["shale.io/snapshot-replicas"], "node-a,node-b") << shown.out;
  Replicas(nodes_[2], vol, &whole);
  EXPECT_EQ(whole["detached"], true) << "detached again after the snapshot: " << whole;
  // ListSnapshots through node-c (the snapshotter's readiness check, by id or by volume): from
  // the replicas.
  auto list_snapshots = [&](const std::string& id, const std::string& source) {
    csiv1::ListSnapshotsRequest req;
    req.set_snapshot_id(id);
    req.set_source_volume_id(source);
    csiv1::ListSnapshotsResponse page;
    grpc::Status listed_st =
        csi_[2].Call(csi_[2].controller.get(), &csiv1::Controller::Stub::ListSnapshots, req, &page);
    EXPECT_TRUE(listed_st.ok()) << Describe(listed_st);
    std::vector<std::string> ids;
    for (const auto& e : page.entries()) {
      EXPECT_TRUE(e.snapshot().ready_to_use()) << e.DebugString();
      EXPECT_EQ(e.snapshot().source_volume_id(), vol) << e.DebugString();
      ids.push_back(e.snapshot().snapshot_id());
    }
    return ids;
  };
  const std::vector<std::string> just_it = {snap.snapshot().snapshot_id()};
  EXPECT_EQ(list_snapshots(snap.snapshot().snapshot_id(), ""), just_it);
  EXPECT_EQ(list_snapshots("", vol), just_it);
  EXPECT_TRUE(csi_[2].DeleteSnapshot(snap.snapshot().snapshot_id()).ok());
  EXPECT_TRUE(list_snapshots(snap.snapshot().snapshot_id(), "").empty()) << "gone everywhere";
  EXPECT_NE(nodes_[1].Shale({"snapshot", "show", snap.snapshot().snapshot_id()}).exit_code, 0)
      << "node-b's copy went with it";

  // DeleteVolume through node-c, which holds none of it: the membership and both replicas go.
  st = csi_[2].DeleteVolume(vol);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  EXPECT_NE(nodes_[0].Shale({"replica", "list", vol}).exit_code, 0) << "its membership is gone";
  for (int i : {0, 1}) {
    EXPECT_NE(nodes_[i].Shale({"volume", "show", vol}).exit_code, 0) << nodes_[i].DaemonLog();
  }
  EXPECT_TRUE(csi_[2].DeleteVolume(vol).ok()) << "deleting is idempotent";
}

TEST_F(CsiReplicatedTest, ANodeDeathLetsTheNextNodeStageItWithEveryFsyncedWrite) {
  if (const std::string why = WhyNoMounts(); !why.empty()) GTEST_SKIP() << why;
  std::string vol;
  ASSERT_NO_FATAL_FAILURE(CreateAndStageOnNodeB("pvc-survivor", &vol));
  const csiv1::VolumeCapability cap = MountCap();
  const std::string staging_b = nodes_[1].root() + "/staging";
  grpc::Status st;
  std::string model(300000, '\0');
  for (size_t i = 0; i < model.size(); ++i) model[i] = static_cast<char>('a' + i * 7 % 26);
  ASSERT_NO_FATAL_FAILURE(WriteDurably(staging_b + "/model.bin", model));

  // node-b's shaled dies with the volume staged (its mount is left dead; TearDown clears it).
  // node-c's NodeStage is refused while node-b's lease lives, then takes the volume over.
  nodes_[1].KillDaemon();
  const std::string staging_c = nodes_[2].root() + "/staging";
  int refused = 0;
  ASSERT_TRUE(WaitFor(
      [&] {
        st = csi_[2].Stage(vol, staging_c, cap);
        if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) ++refused;
        return st.ok();
      },
      std::chrono::seconds(30)))
      << Describe(st) << nodes_[2].DaemonLog();
  std::cout << "NodeStage on node-c refused " << refused << " times before node-b's lease "
            << "expired\n";
  EXPECT_GT(refused, 0) << "refused while node-b's lease lived";
  const std::string got = ReadAll(staging_c + "/model.bin");
  EXPECT_TRUE(got == model) << "every fsynced byte written on node-b is on node-c: " << got.size()
                            << " of " << model.size() << " bytes";
  nlohmann::json whole;
  Replicas(nodes_[0], vol, &whole);
  EXPECT_EQ(whole["target"], "node-c") << whole;
  EXPECT_EQ(Replicas(nodes_[2], vol)["node-b"]["state"], "faulted") << "node-b is out";

  // node-b restarted (its lease expired long ago): it never serves the volume again (node-c's
  // epoch fences it), and kubelet's NodeUnstage of its dead stage cleans it up.
  ASSERT_TRUE(csi_[1].Start(nodes_[1], NodeFlags(nodes_[1], *etcd_, "node-b"), ""));
  {
    auto direct = NbdRawClient::Unix(nodes_[1].root() + "/data/nbd.sock");
    ASSERT_NE(direct, nullptr);
    EXPECT_FALSE(direct->Go(vol).has_value()) << "the old target serves it again";
  }
  EXPECT_TRUE(std::filesystem::exists(nodes_[1].root() + "/data/csi/node/" + vol + ".json"));
  st = csi_[1].Unstage(vol, staging_b);
  EXPECT_TRUE(st.ok()) << Describe(st) << nodes_[1].DaemonLog();
  EXPECT_FALSE(std::filesystem::exists(nodes_[1].root() + "/data/csi/node/" + vol + ".json"))
      << "node-b's stage state is gone";
  Replicas(nodes_[0], vol, &whole);
  EXPECT_EQ(whole["target"], "node-c") << "node-b's unstage moved nothing: " << whole;
  EXPECT_EQ(ReadAll(staging_c + "/model.bin"), model) << "node-c still serves it";

  st = csi_[2].Unstage(vol, staging_c);
  EXPECT_TRUE(st.ok()) << Describe(st);
}

// A read-only clone of a replicated volume's snapshot (the notebook's dataset): the snapshot has
// a copy on every replica node, so the clone is accessible on each of them and staged on two
// nodes at once (each makes its own clone of its copy) with identical files; a node's copy goes
// with its NodeUnstage, the clone with DeleteVolume.
TEST_F(CsiReplicatedTest, ItsSnapshotIsClonedReadOnlyOnTwoNodesAndWritableWithReplicas) {
  if (const std::string why = WhyNoMounts(); !why.empty()) GTEST_SKIP() << why;
  if (FindProgram("fsfreeze").empty()) GTEST_SKIP() << "fsfreeze is not installed (util-linux)";
  std::string vol;
  ASSERT_NO_FATAL_FAILURE(CreateAndStageOnNodeB("pvc-dataset", &vol));
  const std::string staging_b = nodes_[1].root() + "/staging";
  std::vector<std::string> files;
  for (int i = 0; i < 4; ++i) {
    files.push_back("part" + std::to_string(i) + " " + std::string(50000 * (i + 1), 'a' + i));
    ASSERT_NO_FATAL_FAILURE(WriteDurably(staging_b + "/part" + std::to_string(i), files.back()));
  }
  // The snapshot through the staging node's controller (its target), the filesystem frozen.
  ASSERT_EQ(RunProcess({FindProgram("fsfreeze"), "-f", staging_b}).exit_code, 0);
  csiv1::CreateSnapshotResponse snap;
  grpc::Status st = csi_[1].CreateSnapshot(vol, "snapshot-dataset", &snap);
  ASSERT_EQ(RunProcess({FindProgram("fsfreeze"), "-u", staging_b}).exit_code, 0);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[1].DaemonLog();
  ASSERT_NO_FATAL_FAILURE(WriteDurably(staging_b + "/late", "after the snapshot"));

  // The clone, created through node-a's controller, is accessible on all three nodes.
  const auto ro = MountCap(AccessMode::MULTI_NODE_READER_ONLY);
  csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest("pvc-dataset-ro");
  *req.mutable_volume_capabilities(0) = ro;
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      snap.snapshot().snapshot_id());
  csiv1::CreateVolumeResponse clone;
  st = csi_[0].CreateVolume(req, &clone);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_EQ(Topology(clone), (std::set<std::string>{"node-a", "node-b", "node-c"}));
  const std::string ro_vol = clone.volume().volume_id();
  const auto& context = clone.volume().volume_context();

  // Staged and published on node-b and node-c at once.
  for (int n : {1, 2}) {
    const std::string root = nodes_[n].root();
    st = csi_[n].Stage(ro_vol, root + "/ro-staging", ro, context);
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[n].DaemonLog();
    st = csi_[n].Publish(ro_vol, root + "/ro-staging", root + "/pod/data", ro, true);
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[n].DaemonLog();
  }
  for (int n : {1, 2}) {
    const std::string data = nodes_[n].root() + "/pod/data/";
    for (size_t i = 0; i < files.size(); ++i) {
      EXPECT_TRUE(ReadAll(data + "part" + std::to_string(i)) == files[i])
          << "part" << i << " on node " << n;
    }
    EXPECT_FALSE(std::filesystem::exists(data + "late")) << "the snapshot's files only";
    EXPECT_LT(open((data + "x").c_str(), O_CREAT | O_WRONLY, 0644), 0) << "read-only";
  }
  // A node's own copy goes with its NodeUnstage; the clone with DeleteVolume.
  for (int n : {1, 2}) {
    const std::string root = nodes_[n].root();
    ASSERT_TRUE(csi_[n].Unpublish(ro_vol, root + "/pod/data").ok());
    st = csi_[n].Unstage(ro_vol, root + "/ro-staging");
    ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[n].DaemonLog();
    EXPECT_NE(nodes_[n].Shale({"volume", "show", ro_vol}).exit_code, 0) << "copy left on " << n;
  }
  EXPECT_EQ(nodes_[0].Shale({"volume", "show", ro_vol}).exit_code, 0);
  st = csi_[0].DeleteVolume(ro_vol);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_NE(nodes_[0].Shale({"volume", "show", ro_vol}).exit_code, 0);

  // A writable replicated clone of the snapshot (a PVC from the VolumeSnapshot in a class with
  // replicas "3"), created through node-a: node-a's clone of its copy is in sync, the others
  // (clones of their copies) are compared with it at the first attach.
  csiv1::CreateVolumeRequest rw = CsiClient::VolumeRequest("pvc-dataset-rw", 32 * kMiB);
  (*rw.mutable_parameters())["replicas"] = "3";
  rw.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      snap.snapshot().snapshot_id());
  csiv1::CreateVolumeResponse rw_clone;
  st = csi_[0].CreateVolume(rw, &rw_clone);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(Topology(rw_clone).empty());
  const std::string rw_vol = rw_clone.volume().volume_id();
  std::map<std::string, nlohmann::json> rw_replicas = Replicas(nodes_[0], rw_vol);
  EXPECT_EQ(rw_replicas["node-a"]["state"], "healthy");
  EXPECT_EQ(rw_replicas["node-c"]["state"], "stale");
  EXPECT_NE(nodes_[2].DaemonLog().find("replica created from a snapshot"), std::string::npos)
      << "node-c's replica is a clone of its copy (nothing copied over the network)";
  // The first pod runs on node-a (WaitForFirstConsumer created it there): the stale replicas
  // are compared and join while it serves.
  const csiv1::VolumeCapability cap = MountCap();
  const std::string rw_a = nodes_[0].root() + "/rw-staging";
  st = csi_[0].Stage(rw_vol, rw_a, cap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(ReadAll(rw_a + "/part3") == files[3]);
  ASSERT_NO_FATAL_FAILURE(WriteDurably(rw_a + "/notebook-output", "written to the clone"));
  ASSERT_TRUE(WaitFor(
      [&] {
        rw_replicas = Replicas(nodes_[0], rw_vol, nullptr, /*quiet=*/true);
        return rw_replicas.size() == 3 &&
               std::all_of(rw_replicas.begin(), rw_replicas.end(),
                           [](const auto& r) { return r.second["state"] == "healthy"; });
      },
      std::chrono::seconds(30)))
      << nodes_[0].DaemonLog();
  // The pod moves to node-c: its own replica serves the snapshot's files and the new one; the
  // source volume (still staged on node-b) never saw the clone's write.
  ASSERT_TRUE(csi_[0].Unstage(rw_vol, rw_a).ok());
  const std::string rw_c = nodes_[2].root() + "/rw-staging";
  st = csi_[2].Stage(rw_vol, rw_c, cap);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[2].DaemonLog();
  for (size_t i = 0; i < files.size(); ++i) {
    EXPECT_TRUE(ReadAll(rw_c + "/part" + std::to_string(i)) == files[i]) << "part" << i;
  }
  EXPECT_EQ(ReadAll(rw_c + "/notebook-output"), "written to the clone");
  EXPECT_FALSE(std::filesystem::exists(staging_b + "/notebook-output"));
  ASSERT_TRUE(csi_[2].Unstage(rw_vol, rw_c).ok());
  // More replicas than nodes, or a replicated clone of a volume: refused, nothing left.
  (*rw.mutable_parameters())["replicas"] = "4";
  rw.set_name("pvc-dataset-rw4");
  csiv1::CreateVolumeResponse refused;
  st = csi_[0].CreateVolume(rw, &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(st);
  (*rw.mutable_parameters())["replicas"] = "3";
  rw.set_name("pvc-volume-clone");
  rw.mutable_volume_content_source()->mutable_volume()->set_volume_id(vol);
  st = csi_[1].CreateVolume(rw, &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(st);
  st = csi_[0].DeleteVolume(rw_vol);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  for (Harness& h : nodes_) EXPECT_NE(h.Shale({"volume", "show", rw_vol}).exit_code, 0);
  ASSERT_TRUE(csi_[1].Unstage(vol, staging_b).ok());

  // A replicated PVC from a 1-replica PVC of the controller's node: its replica there is a clone
  // of it, the others start empty and stale (filled from it at the first NodeStage, as above).
  csiv1::CreateVolumeResponse local;
  st = Create("pvc-local", "1", &local);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(Topology(local), (std::set<std::string>{"node-a"}));
  rw.set_name("pvc-local-clone");
  rw.mutable_volume_content_source()->mutable_volume()->set_volume_id(local.volume().volume_id());
  csiv1::CreateVolumeResponse from_local;
  st = csi_[0].CreateVolume(rw, &from_local);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  EXPECT_TRUE(Topology(from_local).empty());
  rw_replicas = Replicas(nodes_[0], from_local.volume().volume_id());
  EXPECT_EQ(rw_replicas["node-a"]["state"], "healthy");
  // The others are not in sync: stale, or rebuilding when the create's short-lived target had
  // begun to fill them before it detached (the next attach goes on with it).
  for (const char* node : {"node-b", "node-c"}) {
    const std::string state = rw_replicas[node]["state"];
    EXPECT_TRUE(state == "stale" || state == "rebuilding") << node << ": " << state;
  }
  ASSERT_TRUE(csi_[0].DeleteVolume(from_local.volume().volume_id()).ok());
  ASSERT_TRUE(csi_[0].DeleteVolume(local.volume().volume_id()).ok());
}

// A PVC from a backup in a class with replicas "3": node-a (the provisioning node) restores its
// replica from S3 (the digest checked), the other two start empty and are filled at the first
// NodeStage, after which node-c's replica serves the backup's bytes.
TEST_F(CsiReplicatedTest, ABackupHandleIsRestoredIntoAReplicatedVolume) {
  ASSERT_EQ(nodes_[0].Shale({"volume", "create", "src", "--size", "16M"}).exit_code, 0);
  std::string data(6 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) >> 12);
  {
    auto nbd = NbdRawClient::Tcp(nodes_[0].NbdAddress());
    ASSERT_TRUE(nbd != nullptr && nbd->Go("src").has_value());
    ASSERT_TRUE(WriteRange(*nbd, data, 0, data.size()));
    ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }
  ASSERT_EQ(nodes_[0].Shale({"snapshot", "create", "src@b"}).exit_code, 0);
  CommandResult backed =
      nodes_[0].Shale({"backup", "create", "src@b", "--to", "s3://backups/k8s", "-o", "json"});
  ASSERT_EQ(backed.exit_code, 0) << backed.Describe() << nodes_[0].DaemonLog();
  const nlohmann::json backup = backed.Json();

  csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest("pvc-restored", 16 * kMiB);
  (*req.mutable_parameters())["replicas"] = "3";
  req.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      backup["url"].get<std::string>());
  csiv1::CreateVolumeResponse made;
  grpc::Status st = csi_[0].CreateVolume(req, &made);
  ASSERT_TRUE(st.ok()) << Describe(st) << nodes_[0].DaemonLog();
  const std::string vol = made.volume().volume_id();
  EXPECT_TRUE(Topology(made).empty());
  std::map<std::string, nlohmann::json> replicas = Replicas(nodes_[0], vol);
  EXPECT_EQ(replicas["node-a"]["state"], "healthy");
  EXPECT_EQ(replicas["node-c"]["state"], "stale");
  CommandResult shown = nodes_[0].Shale({"volume", "show", vol, "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["labels"]["backup.shale.io/digest"], backup["digest"]) << shown.out;

  // The first attach (here through the CLI, as NodeStage does) fills the others; then node-c
  // serves the restored bytes from its own replica.
  ASSERT_EQ(nodes_[0].Shale({"volume", "attach", vol}).exit_code, 0) << nodes_[0].DaemonLog();
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(nodes_[0], vol, nullptr, true);
        return replicas.size() == 3 &&
               std::all_of(replicas.begin(), replicas.end(),
                           [](const auto& r) { return r.second["state"] == "healthy"; });
      },
      std::chrono::seconds(30)))
      << nodes_[0].DaemonLog();
  ASSERT_EQ(nodes_[0].Shale({"volume", "detach", vol}).exit_code, 0);
  ASSERT_EQ(nodes_[2].Shale({"volume", "attach", vol}).exit_code, 0) << nodes_[2].DaemonLog();
  auto nbd = NbdRawClient::Tcp(nodes_[2].NbdAddress());
  ASSERT_TRUE(nbd != nullptr && nbd->Go(vol).has_value());
  ExpectContent(*nbd, data, "node-c's replica of the restored volume");
  nbd.reset();
  ASSERT_EQ(nodes_[2].Shale({"volume", "detach", vol}).exit_code, 0);
  ASSERT_TRUE(csi_[0].DeleteVolume(vol).ok());
}

}  // namespace
}  // namespace shale::e2e
