// CSI conformance of csi.shale.io, over gRPC against a real shaled started with --csi-endpoint:
// every Identity/Controller RPC, the node RPCs that need no mounts, required-field errors,
// idempotency, pagination, snapshot and volume sources, missing sources, names of maximum
// length and beyond, capacity arithmetic (docs/csi.md). The node lifecycle with real mounts is
// csi_node_test.cc.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_attach.h"

namespace shale::e2e {
namespace {

constexpr int64_t kMiB = 1 << 20;
using grpc::StatusCode;

class CsiConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(c_.Start(h_)); }

  csiv1::Volume MustCreate(const csiv1::CreateVolumeRequest& req) {
    csiv1::CreateVolumeResponse resp;
    grpc::Status st = c_.CreateVolume(req, &resp);
    EXPECT_TRUE(st.ok()) << req.name() << ": " << Describe(st);
    return resp.volume();
  }
  StatusCode CreateCode(const csiv1::CreateVolumeRequest& req) {
    csiv1::CreateVolumeResponse resp;
    return c_.CreateVolume(req, &resp).error_code();
  }

  Harness h_;
  CsiClient c_;
};

TEST_F(CsiConformanceTest, Identity) {
  csiv1::GetPluginInfoResponse info;
  ASSERT_TRUE(c_.Call(c_.identity.get(), &csiv1::Identity::Stub::GetPluginInfo,
                      csiv1::GetPluginInfoRequest(), &info)
                  .ok());
  EXPECT_EQ(info.name(), "csi.shale.io");
  EXPECT_FALSE(info.vendor_version().empty());
  CommandResult version = RunProcess({ShaledBinary(), "--version"});
  EXPECT_NE(version.out.find(info.vendor_version()), std::string::npos) << version.out;

  csiv1::GetPluginCapabilitiesResponse caps;
  ASSERT_TRUE(c_.Call(c_.identity.get(), &csiv1::Identity::Stub::GetPluginCapabilities,
                      csiv1::GetPluginCapabilitiesRequest(), &caps)
                  .ok());
  std::set<int> services;
  bool online_expansion = false;
  for (const auto& cap : caps.capabilities()) {
    if (cap.has_service()) services.insert(cap.service().type());
    if (cap.has_volume_expansion()) {
      online_expansion =
          cap.volume_expansion().type() == csiv1::PluginCapability::VolumeExpansion::ONLINE;
    }
  }
  EXPECT_TRUE(services.count(csiv1::PluginCapability::Service::CONTROLLER_SERVICE));
  EXPECT_TRUE(services.count(csiv1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS));
  EXPECT_TRUE(online_expansion);

  csiv1::ProbeResponse probe;
  ASSERT_TRUE(
      c_.Call(c_.identity.get(), &csiv1::Identity::Stub::Probe, csiv1::ProbeRequest(), &probe)
          .ok());
  EXPECT_TRUE(probe.ready().value());
}

TEST_F(CsiConformanceTest, CapabilitiesAndNodeInfo) {
  csiv1::ControllerGetCapabilitiesResponse ccaps;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetCapabilities,
                      csiv1::ControllerGetCapabilitiesRequest(), &ccaps)
                  .ok());
  std::set<int> rpcs;
  for (const auto& cap : ccaps.capabilities()) rpcs.insert(cap.rpc().type());
  using Rpc = csiv1::ControllerServiceCapability::RPC;
  for (Rpc::Type t :
       {Rpc::CREATE_DELETE_VOLUME, Rpc::LIST_VOLUMES, Rpc::GET_CAPACITY,
        Rpc::CREATE_DELETE_SNAPSHOT, Rpc::LIST_SNAPSHOTS, Rpc::CLONE_VOLUME, Rpc::EXPAND_VOLUME,
        Rpc::VOLUME_CONDITION, Rpc::GET_VOLUME, Rpc::MODIFY_VOLUME}) {
    EXPECT_TRUE(rpcs.count(t)) << Rpc::Type_Name(t);
  }
  // Not implemented, so not advertised.
  EXPECT_FALSE(rpcs.count(Rpc::PUBLISH_UNPUBLISH_VOLUME));
  EXPECT_FALSE(rpcs.count(Rpc::LIST_VOLUMES_PUBLISHED_NODES));
  csiv1::ControllerPublishVolumeRequest pub;
  pub.set_volume_id("x");
  csiv1::ControllerPublishVolumeResponse pub_resp;
  EXPECT_EQ(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerPublishVolume, pub,
                    &pub_resp)
                .error_code(),
            StatusCode::UNIMPLEMENTED);

  csiv1::NodeGetCapabilitiesResponse ncaps;
  ASSERT_TRUE(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeGetCapabilities,
                      csiv1::NodeGetCapabilitiesRequest(), &ncaps)
                  .ok());
  std::set<int> node_rpcs;
  for (const auto& cap : ncaps.capabilities()) node_rpcs.insert(cap.rpc().type());
  using NRpc = csiv1::NodeServiceCapability::RPC;
  for (NRpc::Type t : {NRpc::STAGE_UNSTAGE_VOLUME, NRpc::GET_VOLUME_STATS, NRpc::EXPAND_VOLUME,
                       NRpc::VOLUME_CONDITION}) {
    EXPECT_TRUE(node_rpcs.count(t)) << NRpc::Type_Name(t);
  }

  csiv1::NodeGetInfoResponse info;
  ASSERT_TRUE(
      c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeGetInfo, csiv1::NodeGetInfoRequest(), &info)
          .ok());
  EXPECT_EQ(info.node_id(), "test-node");
  EXPECT_EQ(info.accessible_topology().segments().at("topology.csi.shale.io/node"), "test-node");
}

TEST_F(CsiConformanceTest, CreateVolumeRequiredFieldsAndBadInput) {
  auto req = CsiClient::VolumeRequest("");
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "no name";
  req = CsiClient::VolumeRequest("pvc-nocaps");
  req.clear_volume_capabilities();
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "no capabilities";
  req = CsiClient::VolumeRequest("pvc-nomode");
  req.mutable_volume_capabilities(0)->clear_access_mode();
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "no access mode";
  req = CsiClient::VolumeRequest("pvc-notype");
  req.mutable_volume_capabilities(0)->clear_mount();
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "no access type";
  req = CsiClient::VolumeRequest("pvc-mnmw");
  req.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      AccessMode::MULTI_NODE_MULTI_WRITER);
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "multi-node writers";
  req = CsiClient::VolumeRequest("pvc-btrfs");
  req.mutable_volume_capabilities(0)->mutable_mount()->set_fs_type("btrfs");
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT);
  for (const auto& [k, v] : std::map<std::string, std::string>{{"replicas", "3"},
                                                               {"colour", "blue"},
                                                               {"iops", "-5"},
                                                               {"readOnlyClone", "maybe"},
                                                               {"pool", "bad/name"}}) {
    req = CsiClient::VolumeRequest("pvc-params");
    (*req.mutable_parameters())[k] = v;
    EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << k << "=" << v;
  }
  req = CsiClient::VolumeRequest("pvc-ro-nosource");
  (*req.mutable_parameters())["readOnlyClone"] = "true";
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT) << "readOnlyClone needs a source";
  req = CsiClient::VolumeRequest("pvc-nopool");
  (*req.mutable_parameters())["pool"] = "nosuchpool";
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT);
  req = CsiClient::VolumeRequest("pvc-neg", -1, 0);
  EXPECT_EQ(CreateCode(req), StatusCode::INVALID_ARGUMENT);
  // Nothing was created by any of these.
  csiv1::ListVolumesResponse list;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListVolumes,
                      csiv1::ListVolumesRequest(), &list)
                  .ok());
  EXPECT_EQ(list.entries_size(), 0);
  EXPECT_TRUE(h_.daemon_running());
}

// MULTI_NODE_READER_ONLY without a content source is served (docs/csi.md, "Access modes"): a
// blank writable volume, published read-only. Only a clone becomes read-only in the engine.
TEST_F(CsiConformanceTest, ReaderOnlyModeWithoutSourceIsAWritableVolume) {
  auto req = CsiClient::VolumeRequest("pvc-rox-blank", 4 * kMiB);
  req.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      AccessMode::MULTI_NODE_READER_ONLY);
  const csiv1::Volume v = MustCreate(req);
  EXPECT_EQ(v.volume_context().count("readOnly"), 0u);
  CommandResult show = h_.Shale({"volume", "show", "pvc-rox-blank", "-o", "json"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_FALSE(show.Json()["read_only"].get<bool>());
  EXPECT_EQ(MustCreate(req).volume_id(), "pvc-rox-blank") << "idempotent";
  EXPECT_TRUE(c_.DeleteVolume("pvc-rox-blank").ok());
}

TEST_F(CsiConformanceTest, CapacityArithmetic) {
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest("pvc-default")).capacity_bytes(), 1024 * kMiB);
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest("pvc-one", 1)).capacity_bytes(), 4096);
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest("pvc-round", 4097, 8192)).capacity_bytes(), 8192);
  EXPECT_EQ(
      MustCreate(CsiClient::VolumeRequest("pvc-exact", 64 * kMiB, 64 * kMiB)).capacity_bytes(),
      64 * kMiB);
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest("pvc-limit", 0, 10000)).capacity_bytes(), 8192);
  EXPECT_EQ(CreateCode(CsiClient::VolumeRequest("pvc-tight", 1, 2)), StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(CreateCode(CsiClient::VolumeRequest("pvc-huge", int64_t{300} << 40)),
            StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(CreateCode(CsiClient::VolumeRequest("pvc-inverted", 8192, 4096)),
            StatusCode::INVALID_ARGUMENT);
  // The reported capacity is what the node sees; the engine volume holds expansion headroom.
  CommandResult show = h_.Shale({"volume", "show", "pvc-round", "-o", "json"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_GE(show.Json()["size_bytes"].get<int64_t>(), 8192);
  csiv1::ControllerGetVolumeRequest get;
  get.set_volume_id("pvc-round");
  csiv1::ControllerGetVolumeResponse got;
  ASSERT_TRUE(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get, &got).ok());
  EXPECT_EQ(got.volume().capacity_bytes(), 8192);
}

// A volume deleted through the CLI takes its CSI record with it: a later volume of the same name
// made outside CSI reports its own size, not the deleted volume's capacity (the lifecycle
// service commits every layer's records of a volume together, docs/lifecycle.md).
TEST_F(CsiConformanceTest, CliDeleteTakesTheCsiRecordWithIt) {
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest("pvc-reused", 8192)).capacity_bytes(), 8192);
  ASSERT_EQ(h_.Shale({"volume", "delete", "pvc-reused"}).exit_code, 0);
  ASSERT_EQ(h_.Shale({"volume", "create", "pvc-reused", "--size", "64M"}).exit_code, 0);
  csiv1::ControllerGetVolumeRequest get;
  get.set_volume_id("pvc-reused");
  csiv1::ControllerGetVolumeResponse got;
  ASSERT_TRUE(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get, &got).ok());
  EXPECT_EQ(got.volume().capacity_bytes(), 64 * kMiB)
      << "the new volume inherited the deleted CSI volume's record";
  // Expanding it through CSI starts from its own size.
  csiv1::ControllerExpandVolumeRequest expand;
  expand.set_volume_id("pvc-reused");
  expand.mutable_capacity_range()->set_required_bytes(128 * kMiB);
  csiv1::ControllerExpandVolumeResponse expanded;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerExpandVolume, expand,
                      &expanded)
                  .ok());
  EXPECT_EQ(expanded.capacity_bytes(), 128 * kMiB);
  CommandResult show = h_.Shale({"volume", "show", "pvc-reused", "-o", "json"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_GE(show.Json()["size_bytes"].get<int64_t>(), 128 * kMiB);
}

TEST_F(CsiConformanceTest, IdempotencyAndNameMapping) {
  auto req = CsiClient::VolumeRequest("pvc-idem", 32 * kMiB);
  (*req.mutable_parameters())["fsType"] = "xfs";
  (*req.mutable_parameters())["csi.storage.k8s.io/pvc/name"] = "data";
  (*req.mutable_parameters())["csi.storage.k8s.io/pvc/namespace"] = "team-a";
  const csiv1::Volume first = MustCreate(req);
  const csiv1::Volume second = MustCreate(req);
  EXPECT_EQ(first.volume_id(), "pvc-idem");
  EXPECT_EQ(second.volume_id(), first.volume_id());
  EXPECT_EQ(second.capacity_bytes(), first.capacity_bytes());
  EXPECT_EQ(first.accessible_topology(0).segments().at("topology.csi.shale.io/node"), "test-node");
  // Provenance from the sidecar's extra metadata is kept as labels.
  CommandResult show = h_.Shale({"volume", "show", "pvc-idem", "-o", "json"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_EQ(show.Json()["labels"]["csi.storage.k8s.io/pvc/name"], "data");
  // Same name, different parameters or an incompatible capacity: ALREADY_EXISTS.
  auto other = req;
  (*other.mutable_parameters())["fsType"] = "ext4";
  EXPECT_EQ(CreateCode(other), StatusCode::ALREADY_EXISTS);
  other = req;
  other.mutable_capacity_range()->set_required_bytes(64 * kMiB);
  EXPECT_EQ(CreateCode(other), StatusCode::ALREADY_EXISTS);
  // A volume made outside CSI under that name is not ours either.
  ASSERT_EQ(h_.Shale({"volume", "create", "pvc-admin", "--size", "16M"}).exit_code, 0);
  EXPECT_EQ(CreateCode(CsiClient::VolumeRequest("pvc-admin", 16 * kMiB)),
            StatusCode::ALREADY_EXISTS);

  // Names of the maximum length pass through; longer or unusual names map to a hash.
  const std::string max_name(128, 'v');
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest(max_name, 4096)).volume_id(), max_name);
  const std::string long_name = "pvc with spaces, ünïcødé and / slashes " + std::string(200, 'x');
  const csiv1::Volume mapped = MustCreate(CsiClient::VolumeRequest(long_name, 4096));
  EXPECT_EQ(mapped.volume_id().rfind("csi-", 0), 0u) << mapped.volume_id();
  EXPECT_EQ(MustCreate(CsiClient::VolumeRequest(long_name, 4096)).volume_id(), mapped.volume_id());
  EXPECT_TRUE(c_.DeleteVolume(mapped.volume_id()).ok());

  // Delete: required id, idempotent, unknown ids succeed.
  EXPECT_EQ(c_.DeleteVolume("").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(c_.DeleteVolume("pvc-idem").ok());
  EXPECT_TRUE(c_.DeleteVolume("pvc-idem").ok());
  EXPECT_TRUE(c_.DeleteVolume("never-existed").ok());
  EXPECT_TRUE(c_.DeleteVolume("not a valid id!").ok());
  EXPECT_NE(h_.Shale({"volume", "show", "pvc-idem"}).exit_code, 0);
}

TEST_F(CsiConformanceTest, ValidateVolumeCapabilities) {
  MustCreate(CsiClient::VolumeRequest("pvc-validate", 4 * kMiB));
  csiv1::ValidateVolumeCapabilitiesRequest req;
  csiv1::ValidateVolumeCapabilitiesResponse resp;
  auto call = [&] {
    resp.Clear();
    return c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ValidateVolumeCapabilities, req,
                   &resp);
  };
  *req.add_volume_capabilities() = MountCap();
  EXPECT_EQ(call().error_code(), StatusCode::INVALID_ARGUMENT) << "no id";
  req.set_volume_id("pvc-validate");
  req.clear_volume_capabilities();
  EXPECT_EQ(call().error_code(), StatusCode::INVALID_ARGUMENT) << "no capabilities";
  *req.add_volume_capabilities() = MountCap();
  *req.add_volume_capabilities() = BlockCap(AccessMode::SINGLE_NODE_SINGLE_WRITER);
  ASSERT_TRUE(call().ok());
  EXPECT_TRUE(resp.has_confirmed());
  EXPECT_EQ(resp.confirmed().volume_capabilities_size(), 2);
  *req.add_volume_capabilities() = MountCap(AccessMode::MULTI_NODE_MULTI_WRITER);
  ASSERT_TRUE(call().ok());
  EXPECT_FALSE(resp.has_confirmed());
  EXPECT_FALSE(resp.message().empty());
  req.set_volume_id("pvc-missing");
  EXPECT_EQ(call().error_code(), StatusCode::NOT_FOUND);
}

TEST_F(CsiConformanceTest, ListVolumesPaginates) {
  std::set<std::string> want;
  for (int i = 0; i < 7; ++i) {
    want.insert(
        MustCreate(CsiClient::VolumeRequest("pvc-list-" + std::to_string(i), 4096)).volume_id());
  }
  std::set<std::string> seen;
  csiv1::ListVolumesRequest req;
  req.set_max_entries(3);
  int pages = 0;
  for (;;) {
    csiv1::ListVolumesResponse resp;
    ASSERT_TRUE(
        c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListVolumes, req, &resp).ok());
    EXPECT_LE(resp.entries_size(), 3);
    for (const auto& e : resp.entries()) {
      EXPECT_TRUE(seen.insert(e.volume().volume_id()).second) << "listed twice";
      EXPECT_GT(e.volume().capacity_bytes(), 0);
      EXPECT_FALSE(e.status().volume_condition().abnormal());
    }
    ++pages;
    if (resp.next_token().empty()) break;
    req.set_starting_token(resp.next_token());
    // A volume deleted between pages does not break the token.
    if (pages == 1) {
      ASSERT_TRUE(c_.DeleteVolume("pvc-list-0").ok());
    }
  }
  EXPECT_EQ(pages, 3);
  want.erase("pvc-list-0");
  for (const std::string& v : want) EXPECT_TRUE(seen.count(v)) << v;

  req.set_starting_token("invalid-token");
  csiv1::ListVolumesResponse resp;
  EXPECT_EQ(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListVolumes, req, &resp).error_code(),
      StatusCode::ABORTED);
  req.set_starting_token("");
  req.set_max_entries(-1);
  EXPECT_EQ(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListVolumes, req, &resp).error_code(),
      StatusCode::INVALID_ARGUMENT);
}

TEST_F(CsiConformanceTest, GetCapacityAndTopology) {
  csiv1::GetCapacityRequest req;
  csiv1::GetCapacityResponse resp;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::GetCapacity, req, &resp).ok());
  // What the overcommit limit (300 % of the 1 GiB test pool by default) still allows.
  EXPECT_GT(resp.available_capacity(), int64_t{2} << 30);
  EXPECT_LE(resp.available_capacity(), int64_t{3} << 30) << "300 % of the 1 GiB test pool";
  EXPECT_EQ(resp.maximum_volume_size().value(), resp.available_capacity());
  const int64_t available = resp.available_capacity();
  (*req.mutable_accessible_topology()->mutable_segments())["topology.csi.shale.io/node"] =
      "other-node";
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::GetCapacity, req, &resp).ok());
  EXPECT_EQ(resp.available_capacity(), 0);
  req.clear_accessible_topology();
  (*req.mutable_parameters())["pool"] = "nosuchpool";
  EXPECT_EQ(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::GetCapacity, req, &resp).error_code(),
      StatusCode::INVALID_ARGUMENT);

  auto vreq = CsiClient::VolumeRequest("pvc-topo", 4096);
  (*vreq.mutable_accessibility_requirements()
        ->add_requisite()
        ->mutable_segments())["topology.csi.shale.io/node"] = "other-node";
  EXPECT_EQ(CreateCode(vreq), StatusCode::RESOURCE_EXHAUSTED);
  (*vreq.mutable_accessibility_requirements()
        ->add_requisite()
        ->mutable_segments())["topology.csi.shale.io/node"] = "test-node";
  EXPECT_EQ(MustCreate(vreq).accessible_topology(0).segments().at("topology.csi.shale.io/node"),
            "test-node");

  // Beyond the overcommit limit: RESOURCE_EXHAUSTED naming the limit; GetCapacity went down by
  // what was provisioned.
  req.clear_parameters();
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::GetCapacity, req, &resp).ok());
  EXPECT_EQ(resp.available_capacity(), available - 4096);
  csiv1::CreateVolumeResponse created;
  grpc::Status over = c_.Call(c_.controller.get(), &csiv1::Controller::Stub::CreateVolume,
                              CsiClient::VolumeRequest("pvc-too-big", available + kMiB), &created);
  EXPECT_EQ(over.error_code(), StatusCode::RESOURCE_EXHAUSTED) << over.error_message();
  EXPECT_NE(over.error_message().find("overcommit limit of 300 %"), std::string::npos)
      << over.error_message();
  EXPECT_EQ(CreateCode(CsiClient::VolumeRequest("pvc-fits", available - 4096)), StatusCode::OK);
}

TEST_F(CsiConformanceTest, SnapshotsAndClones) {
  MustCreate(CsiClient::VolumeRequest("pvc-src", 8 * kMiB));
  MustCreate(CsiClient::VolumeRequest("pvc-other", 4 * kMiB));
  csiv1::CreateSnapshotResponse snap;
  EXPECT_EQ(c_.CreateSnapshot("pvc-src", "", &snap).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(c_.CreateSnapshot("", "snap-a", &snap).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(c_.CreateSnapshot("pvc-nosuch", "snap-a", &snap).error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(c_.CreateSnapshot("pvc-src", "snap-a", &snap, {{"bad key!", "x"}}).error_code(),
            StatusCode::INVALID_ARGUMENT);
  const std::map<std::string, std::string> params = {
      {"csi.storage.k8s.io/volumesnapshot/name", "nb-snap"},
      {"csi.storage.k8s.io/volumesnapshot/namespace", "team-a"},
      {"csi.storage.k8s.io/volumesnapshotcontent/name", "snapcontent-1"},
      {"team", "ml"}};
  ASSERT_TRUE(c_.CreateSnapshot("pvc-src", "snap-a", &snap, params).ok());
  EXPECT_EQ(snap.snapshot().snapshot_id(), "pvc-src@snap-a");
  EXPECT_EQ(snap.snapshot().source_volume_id(), "pvc-src");
  EXPECT_EQ(snap.snapshot().size_bytes(), 8 * kMiB);
  // The answer comes at the cut; ready_to_use may still be false while the snapshot's commit is
  // in flight (the snapshotter then calls again, as below).
  EXPECT_GT(snap.snapshot().creation_time().seconds(), 1'600'000'000);
  csiv1::CreateSnapshotResponse again;
  ASSERT_TRUE(c_.CreateSnapshot("pvc-src", "snap-a", &again, params).ok()) << "idempotent";
  EXPECT_TRUE(again.snapshot().ready_to_use()) << "a repeated call answers once it is durable";
  EXPECT_EQ(again.snapshot().snapshot_id(), snap.snapshot().snapshot_id());
  EXPECT_EQ(again.snapshot().creation_time().seconds(), snap.snapshot().creation_time().seconds());
  EXPECT_EQ(c_.CreateSnapshot("pvc-other", "snap-a", &again).error_code(),
            StatusCode::ALREADY_EXISTS);
  // Parameters and provenance became labels.
  CommandResult show = h_.Shale({"snapshot", "show", "pvc-src@snap-a", "-o", "json"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_EQ(show.Json()["labels"]["csi.storage.k8s.io/volumesnapshot/name"], "nb-snap");
  EXPECT_EQ(show.Json()["labels"]["team"], "ml");
  ASSERT_TRUE(c_.CreateSnapshot("pvc-src", "snap-b", &again).ok());
  ASSERT_TRUE(c_.CreateSnapshot("pvc-other", "snap-c", &again).ok());

  // ListSnapshots: all, by id, by source, paginated, bad token.
  auto list = [&](csiv1::ListSnapshotsRequest req, grpc::Status* st = nullptr) {
    csiv1::ListSnapshotsResponse resp;
    grpc::Status s =
        c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListSnapshots, req, &resp);
    if (st != nullptr) *st = s;
    return resp;
  };
  EXPECT_EQ(list({}).entries_size(), 3);
  csiv1::ListSnapshotsRequest by_id;
  by_id.set_snapshot_id("pvc-src@snap-b");
  ASSERT_EQ(list(by_id).entries_size(), 1);
  EXPECT_EQ(list(by_id).entries(0).snapshot().snapshot_id(), "pvc-src@snap-b");
  by_id.set_snapshot_id("pvc-src@nosuch");
  EXPECT_EQ(list(by_id).entries_size(), 0);
  by_id.set_snapshot_id("garbage");
  EXPECT_EQ(list(by_id).entries_size(), 0);
  csiv1::ListSnapshotsRequest by_source;
  by_source.set_source_volume_id("pvc-src");
  EXPECT_EQ(list(by_source).entries_size(), 2);
  by_source.set_source_volume_id("pvc-nosuch");
  EXPECT_EQ(list(by_source).entries_size(), 0);
  csiv1::ListSnapshotsRequest paged;
  paged.set_max_entries(2);
  auto page1 = list(paged);
  ASSERT_EQ(page1.entries_size(), 2);
  ASSERT_FALSE(page1.next_token().empty());
  paged.set_starting_token(page1.next_token());
  auto page2 = list(paged);
  EXPECT_EQ(page2.entries_size(), 1);
  EXPECT_TRUE(page2.next_token().empty());
  paged.set_starting_token("bogus");
  grpc::Status st;
  list(paged, &st);
  EXPECT_EQ(st.error_code(), StatusCode::ABORTED);

  // Clones: from a snapshot, from a live volume, read-only; missing sources are NOT_FOUND.
  auto from_snap = CsiClient::VolumeRequest("pvc-clone", 4096);
  from_snap.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("pvc-src@snap-a");
  const csiv1::Volume clone = MustCreate(from_snap);
  EXPECT_EQ(clone.capacity_bytes(), 8 * kMiB) << "at least the snapshot's size";
  EXPECT_EQ(clone.content_source().snapshot().snapshot_id(), "pvc-src@snap-a");
  EXPECT_EQ(MustCreate(from_snap).volume_id(), "pvc-clone") << "idempotent";
  auto too_small = CsiClient::VolumeRequest("pvc-clone-small", 4096, 4096);
  *too_small.mutable_volume_content_source() = from_snap.volume_content_source();
  EXPECT_EQ(CreateCode(too_small), StatusCode::OUT_OF_RANGE);
  auto bigger = CsiClient::VolumeRequest("pvc-clone-big", 16 * kMiB);
  *bigger.mutable_volume_content_source() = from_snap.volume_content_source();
  EXPECT_EQ(MustCreate(bigger).capacity_bytes(), 16 * kMiB);
  auto missing = CsiClient::VolumeRequest("pvc-clone-missing", 4096);
  missing.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("pvc-src@nosuch");
  EXPECT_EQ(CreateCode(missing), StatusCode::NOT_FOUND);
  missing.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id("garbage");
  EXPECT_EQ(CreateCode(missing), StatusCode::NOT_FOUND);
  missing.mutable_volume_content_source()->mutable_volume()->set_volume_id("pvc-nosuch");
  EXPECT_EQ(CreateCode(missing), StatusCode::NOT_FOUND);
  auto from_volume = CsiClient::VolumeRequest("pvc-vclone", 0);
  from_volume.mutable_volume_content_source()->mutable_volume()->set_volume_id("pvc-other");
  EXPECT_EQ(MustCreate(from_volume).capacity_bytes(), 4 * kMiB);
  // Spec CreateVolume "Unsupported capacity": a source larger than limit_bytes is OUT_OF_RANGE.
  auto vclone_small = CsiClient::VolumeRequest("pvc-vclone-small", 0, 2 * kMiB);
  *vclone_small.mutable_volume_content_source() = from_volume.volume_content_source();
  EXPECT_EQ(CreateCode(vclone_small), StatusCode::OUT_OF_RANGE);

  auto ro = CsiClient::VolumeRequest("pvc-roclone", 0);
  ro.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      AccessMode::MULTI_NODE_READER_ONLY);
  *ro.mutable_volume_content_source() = from_snap.volume_content_source();
  const csiv1::Volume rov = MustCreate(ro);
  EXPECT_EQ(rov.volume_context().at("readOnly"), "true");
  CommandResult ro_show = h_.Shale({"volume", "show", "pvc-roclone", "-o", "json"});
  EXPECT_TRUE(ro_show.Json()["read_only"].get<bool>()) << ro_show.Describe();
  auto ro_writer = CsiClient::VolumeRequest("pvc-roclone-w", 0);
  (*ro_writer.mutable_parameters())["readOnlyClone"] = "true";
  *ro_writer.mutable_volume_content_source() = from_snap.volume_content_source();
  EXPECT_EQ(CreateCode(ro_writer), StatusCode::INVALID_ARGUMENT)
      << "a writer mode cannot be served by a read-only clone";
  csiv1::ValidateVolumeCapabilitiesRequest vreq;
  vreq.set_volume_id("pvc-roclone");
  *vreq.add_volume_capabilities() = MountCap(AccessMode::SINGLE_NODE_WRITER);
  csiv1::ValidateVolumeCapabilitiesResponse vresp;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ValidateVolumeCapabilities,
                      vreq, &vresp)
                  .ok());
  EXPECT_FALSE(vresp.has_confirmed());
  // Spec NodeStage/NodePublish "Exceeds capabilities": a valid writer mode that this read-only
  // clone cannot serve is FAILED_PRECONDITION (an invalid capability stays INVALID_ARGUMENT).
  csiv1::NodeStageVolumeRequest ro_stage;
  ro_stage.set_volume_id("pvc-roclone");
  ro_stage.set_staging_target_path(h_.root() + "/ro-staging");
  *ro_stage.mutable_volume_capability() = MountCap(AccessMode::SINGLE_NODE_WRITER);
  csiv1::NodeStageVolumeResponse ro_stage_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeStageVolume, ro_stage, &ro_stage_resp)
                .error_code(),
            StatusCode::FAILED_PRECONDITION);
  *ro_stage.mutable_volume_capability() = MountCap(AccessMode::MULTI_NODE_MULTI_WRITER);
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeStageVolume, ro_stage, &ro_stage_resp)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);

  // Snapshots outlive their volume's deletion; deleting them is idempotent.
  EXPECT_EQ(c_.DeleteSnapshot("").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(c_.DeleteSnapshot("pvc-src@snap-b").ok());
  EXPECT_TRUE(c_.DeleteSnapshot("pvc-src@snap-b").ok());
  EXPECT_TRUE(c_.DeleteSnapshot("garbage").ok());
  EXPECT_TRUE(c_.DeleteVolume("pvc-other").ok());
  EXPECT_EQ(list({}).entries_size(), 2);
  // DeleteVolume keeps the volume's snapshots (docs/csi.md): still listed under their source
  // volume id, and still a content source.
  by_source.set_source_volume_id("pvc-other");
  ASSERT_EQ(list(by_source).entries_size(), 1);
  EXPECT_EQ(list(by_source).entries(0).snapshot().snapshot_id(), "pvc-other@snap-c");
  auto orphan_clone = CsiClient::VolumeRequest("pvc-orphan-clone", 0);
  orphan_clone.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(
      "pvc-other@snap-c");
  EXPECT_EQ(MustCreate(orphan_clone).capacity_bytes(), 4 * kMiB);
  EXPECT_TRUE(c_.DeleteVolume("pvc-orphan-clone").ok());
  for (const char* v : {"pvc-clone", "pvc-clone-big", "pvc-vclone", "pvc-roclone", "pvc-src"}) {
    EXPECT_TRUE(c_.DeleteVolume(v).ok()) << v;
  }
  EXPECT_TRUE(c_.DeleteSnapshot("pvc-src@snap-a").ok());
  EXPECT_TRUE(c_.DeleteSnapshot("pvc-other@snap-c").ok());
  EXPECT_EQ(list({}).entries_size(), 0);
}

TEST_F(CsiConformanceTest, ExpandGetAndModify) {
  MustCreate(CsiClient::VolumeRequest("pvc-grow", 8 * kMiB));
  csiv1::ControllerExpandVolumeRequest req;
  csiv1::ControllerExpandVolumeResponse resp;
  auto expand = [&] {
    resp.Clear();
    return c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerExpandVolume, req,
                   &resp);
  };
  req.mutable_capacity_range()->set_required_bytes(16 * kMiB);
  EXPECT_EQ(expand().error_code(), StatusCode::INVALID_ARGUMENT) << "no id";
  req.set_volume_id("pvc-nosuch");
  EXPECT_EQ(expand().error_code(), StatusCode::NOT_FOUND);
  req.set_volume_id("pvc-grow");
  req.clear_capacity_range();
  EXPECT_EQ(expand().error_code(), StatusCode::INVALID_ARGUMENT) << "no capacity";
  req.mutable_capacity_range()->set_required_bytes(16 * kMiB + 1);
  ASSERT_TRUE(expand().ok());
  EXPECT_EQ(resp.capacity_bytes(), 16 * kMiB + 4096);
  EXPECT_TRUE(resp.node_expansion_required());
  ASSERT_TRUE(expand().ok()) << "idempotent";
  EXPECT_EQ(resp.capacity_bytes(), 16 * kMiB + 4096);
  req.mutable_capacity_range()->set_required_bytes(4 * kMiB);
  ASSERT_TRUE(expand().ok()) << "never shrinks";
  EXPECT_EQ(resp.capacity_bytes(), 16 * kMiB + 4096);
  // Beyond the headroom: the engine volume grows too.
  req.mutable_capacity_range()->set_required_bytes(512 * kMiB);
  ASSERT_TRUE(expand().ok());
  EXPECT_EQ(resp.capacity_bytes(), 512 * kMiB);
  CommandResult show = h_.Shale({"volume", "show", "pvc-grow", "-o", "json"});
  EXPECT_GE(show.Json()["size_bytes"].get<int64_t>(), 512 * kMiB) << show.Describe();

  csiv1::ControllerGetVolumeRequest get;
  csiv1::ControllerGetVolumeResponse got;
  EXPECT_EQ(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get, &got)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);
  get.set_volume_id("pvc-nosuch");
  EXPECT_EQ(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get, &got)
                .error_code(),
            StatusCode::NOT_FOUND);
  get.set_volume_id("pvc-grow");
  ASSERT_TRUE(
      c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerGetVolume, get, &got).ok());
  EXPECT_EQ(got.volume().capacity_bytes(), 512 * kMiB);
  EXPECT_FALSE(got.status().volume_condition().abnormal());
  EXPECT_FALSE(got.status().volume_condition().message().empty());

  // QoS at creation, then through ControllerModifyVolume (VolumeAttributesClass).
  auto qreq = CsiClient::VolumeRequest("pvc-qos", 4 * kMiB);
  (*qreq.mutable_parameters())["iops"] = "1000";
  (*qreq.mutable_parameters())["burstIops"] = "5000";
  (*qreq.mutable_parameters())["burstSeconds"] = "10";
  MustCreate(qreq);
  csiv1::ControllerModifyVolumeRequest mod;
  csiv1::ControllerModifyVolumeResponse mod_resp;
  auto modify = [&] {
    return c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ControllerModifyVolume, mod,
                   &mod_resp);
  };
  (*mod.mutable_mutable_parameters())["iops"] = "500";
  EXPECT_EQ(modify().error_code(), StatusCode::INVALID_ARGUMENT) << "no id";
  mod.set_volume_id("pvc-nosuch");
  EXPECT_EQ(modify().error_code(), StatusCode::NOT_FOUND);
  mod.set_volume_id("pvc-qos");
  (*mod.mutable_mutable_parameters())["colour"] = "blue";
  EXPECT_EQ(modify().error_code(), StatusCode::INVALID_ARGUMENT);
  mod.mutable_mutable_parameters()->erase("colour");
  (*mod.mutable_mutable_parameters())["weight"] = "0x10";
  EXPECT_EQ(modify().error_code(), StatusCode::INVALID_ARGUMENT);
  (*mod.mutable_mutable_parameters())["weight"] = "300";
  ASSERT_TRUE(modify().ok()) << Describe(modify());
  CommandResult qos = h_.Shale({"volume", "qos", "get", "pvc-qos", "-o", "json"});
  if (qos.exit_code == 0) {
    const std::string out = qos.out;
    EXPECT_NE(out.find("500"), std::string::npos) << out;
    EXPECT_NE(out.find("300"), std::string::npos) << out;
  }
  EXPECT_TRUE(c_.DeleteVolume("pvc-qos").ok());
}

TEST_F(CsiConformanceTest, NodeRequiredFieldsAndUnknownVolumes) {
  csiv1::NodeStageVolumeRequest stage;
  csiv1::NodeStageVolumeResponse stage_resp;
  auto do_stage = [&] {
    return c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeStageVolume, stage, &stage_resp);
  };
  EXPECT_EQ(do_stage().error_code(), StatusCode::INVALID_ARGUMENT);
  stage.set_volume_id("pvc-x");
  EXPECT_EQ(do_stage().error_code(), StatusCode::INVALID_ARGUMENT) << "no staging path";
  stage.set_staging_target_path(h_.root() + "/staging");
  EXPECT_EQ(do_stage().error_code(), StatusCode::INVALID_ARGUMENT) << "no capability";
  *stage.mutable_volume_capability() = MountCap();
  EXPECT_EQ(do_stage().error_code(), StatusCode::NOT_FOUND);

  csiv1::NodePublishVolumeRequest pub;
  csiv1::NodePublishVolumeResponse pub_resp;
  auto do_pub = [&] {
    return c_.Call(c_.node.get(), &csiv1::Node::Stub::NodePublishVolume, pub, &pub_resp);
  };
  EXPECT_EQ(do_pub().error_code(), StatusCode::INVALID_ARGUMENT);
  pub.set_volume_id("pvc-x");
  pub.set_staging_target_path(h_.root() + "/staging");
  EXPECT_EQ(do_pub().error_code(), StatusCode::INVALID_ARGUMENT) << "no target";
  pub.set_target_path(h_.root() + "/target");
  EXPECT_EQ(do_pub().error_code(), StatusCode::INVALID_ARGUMENT) << "no capability";
  *pub.mutable_volume_capability() = MountCap();
  EXPECT_EQ(do_pub().error_code(), StatusCode::NOT_FOUND);

  csiv1::NodeUnstageVolumeRequest unstage;
  csiv1::NodeUnstageVolumeResponse unstage_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnstageVolume, unstage, &unstage_resp)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);
  unstage.set_volume_id("pvc-x");
  unstage.set_staging_target_path(h_.root() + "/staging");
  EXPECT_TRUE(
      c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnstageVolume, unstage, &unstage_resp).ok());

  csiv1::NodeUnpublishVolumeRequest unpub;
  csiv1::NodeUnpublishVolumeResponse unpub_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnpublishVolume, unpub, &unpub_resp)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);
  unpub.set_volume_id("pvc-x");
  unpub.set_target_path(h_.root() + "/target");
  EXPECT_TRUE(
      c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnpublishVolume, unpub, &unpub_resp).ok());

  csiv1::NodeGetVolumeStatsRequest stats;
  csiv1::NodeGetVolumeStatsResponse stats_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeGetVolumeStats, stats, &stats_resp)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);
  stats.set_volume_id("pvc-x");
  stats.set_volume_path(h_.root() + "/nowhere");
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeGetVolumeStats, stats, &stats_resp)
                .error_code(),
            StatusCode::NOT_FOUND);

  csiv1::NodeExpandVolumeRequest expand;
  csiv1::NodeExpandVolumeResponse expand_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeExpandVolume, expand, &expand_resp)
                .error_code(),
            StatusCode::INVALID_ARGUMENT);
  expand.set_volume_id("pvc-x");
  expand.set_volume_path(h_.root() + "/target");
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeExpandVolume, expand, &expand_resp)
                .error_code(),
            StatusCode::NOT_FOUND);
}

// Node idempotency and compatibility on a really staged volume (block access: no filesystem
// needed, but nbdfuse + loop, so root): CSI spec "NodeStageVolume Errors", "NodePublishVolume"
// (the second-publish table) and "NodeExpandVolume Errors".
TEST_F(CsiConformanceTest, NodeRepeatsAndIncompatibleRequests) {
  const std::string why =
      NbdfuseLoopUnavailable({"nbdfuse", "fusermount3", "losetup", "mount", "umount", "blkid"},
                             "libnbd-bin, fuse3, util-linux");
  if (!why.empty()) GTEST_SKIP() << why;
  auto vreq = CsiClient::VolumeRequest("pvc-node-rules", 8 * kMiB);
  *vreq.mutable_volume_capabilities(0) = BlockCap(AccessMode::SINGLE_NODE_SINGLE_WRITER);
  MustCreate(vreq);
  const std::string staging = h_.root() + "/rules-staging";
  const std::string target_a = h_.root() + "/rules-a";
  const std::string target_b = h_.root() + "/rules-b";

  csiv1::NodeStageVolumeRequest stage;
  stage.set_volume_id("pvc-node-rules");
  stage.set_staging_target_path(staging);
  *stage.mutable_volume_capability() = BlockCap(AccessMode::SINGLE_NODE_SINGLE_WRITER);
  csiv1::NodeStageVolumeResponse stage_resp;
  auto do_stage = [&] {
    return c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeStageVolume, stage, &stage_resp);
  };
  ASSERT_TRUE(do_stage().ok()) << Describe(do_stage());
  EXPECT_TRUE(do_stage().ok()) << "idempotent";
  *stage.mutable_volume_capability() = BlockCap(AccessMode::SINGLE_NODE_WRITER);
  EXPECT_EQ(do_stage().error_code(), StatusCode::ALREADY_EXISTS) << "another capability";
  *stage.mutable_volume_capability() = BlockCap(AccessMode::SINGLE_NODE_SINGLE_WRITER);

  csiv1::NodePublishVolumeRequest pub;
  pub.set_volume_id("pvc-node-rules");
  pub.set_staging_target_path(staging);
  pub.set_target_path(target_a);
  *pub.mutable_volume_capability() = BlockCap(AccessMode::SINGLE_NODE_SINGLE_WRITER);
  csiv1::NodePublishVolumeResponse pub_resp;
  auto do_pub = [&] {
    return c_.Call(c_.node.get(), &csiv1::Node::Stub::NodePublishVolume, pub, &pub_resp);
  };
  ASSERT_TRUE(do_pub().ok()) << Describe(do_pub());
  EXPECT_TRUE(do_pub().ok()) << "idempotent";
  pub.set_readonly(true);
  EXPECT_EQ(do_pub().error_code(), StatusCode::ALREADY_EXISTS) << "same target, readonly differs";
  pub.set_readonly(false);
  pub.set_target_path(target_b);
  EXPECT_EQ(do_pub().error_code(), StatusCode::FAILED_PRECONDITION)
      << "SINGLE_NODE_SINGLE_WRITER at a second target";

  csiv1::NodeExpandVolumeRequest expand;
  expand.set_volume_id("pvc-node-rules");
  expand.set_volume_path(target_a);
  expand.mutable_capacity_range()->set_limit_bytes(4096);
  csiv1::NodeExpandVolumeResponse expand_resp;
  EXPECT_EQ(c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeExpandVolume, expand, &expand_resp)
                .error_code(),
            StatusCode::OUT_OF_RANGE)
      << "the volume is larger than limit_bytes";

  csiv1::NodeUnpublishVolumeRequest unpub;
  unpub.set_volume_id("pvc-node-rules");
  unpub.set_target_path(target_a);
  csiv1::NodeUnpublishVolumeResponse unpub_resp;
  auto do_unpub = [&] {
    return c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnpublishVolume, unpub, &unpub_resp);
  };
  EXPECT_TRUE(do_unpub().ok());
  EXPECT_TRUE(do_unpub().ok()) << "idempotent";
  unpub.set_target_path(h_.root() + "/never-published");
  EXPECT_TRUE(do_unpub().ok()) << "a target that was never published";
  // With target A gone, B is the only target: allowed now.
  EXPECT_TRUE(do_pub().ok()) << Describe(do_pub());
  unpub.set_target_path(target_b);
  EXPECT_TRUE(do_unpub().ok());

  csiv1::NodeUnstageVolumeRequest unstage;
  unstage.set_volume_id("pvc-node-rules");
  unstage.set_staging_target_path(staging);
  csiv1::NodeUnstageVolumeResponse unstage_resp;
  EXPECT_TRUE(
      c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnstageVolume, unstage, &unstage_resp).ok());
  EXPECT_TRUE(
      c_.Call(c_.node.get(), &csiv1::Node::Stub::NodeUnstageVolume, unstage, &unstage_resp).ok());
  EXPECT_TRUE(c_.DeleteVolume("pvc-node-rules").ok());
}

TEST(CsiFlags, BadEndpointIsOneLineUsageError) {
  CommandResult r = RunProcess({ShaledBinary(), "--csi-endpoint", "tcp://127.0.0.1:1"});
  EXPECT_EQ(r.exit_code, 2);
  ExpectOneLineError(r, "--csi-endpoint", "shaled: ");
  CommandResult help = RunProcess({ShaledBinary(), "--help"});
  EXPECT_NE(help.out.find("--csi-endpoint"), std::string::npos);
  EXPECT_NE(help.out.find("--node-id"), std::string::npos);
}

}  // namespace
}  // namespace shale::e2e
