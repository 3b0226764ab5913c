// CSI GroupController and SnapshotMetadata of csi.shale.io over gRPC against a real shaled
// (docs/csi.md): a group snapshot of three volumes under a concurrent NBD writer is one instant
// (never a gap between members), idempotency and the spec's errors, members as clone sources,
// deleting a group whose members have clones; the allocated ranges of a snapshot written by
// qemu-io (512-byte, unaligned, discards) and the changed ranges between two snapshots, paged
// and resumed; `shale snapshot create-group|list-groups|show-group|delete-group`.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/sequence_writer.h"
#include "tests/e2e/snapshot_e2e_util.h"

namespace shale::e2e {
namespace {

constexpr int64_t kKiB = 1024, kMiB = 1 << 20;
using grpc::StatusCode;
using Ranges = std::vector<std::pair<int64_t, int64_t>>;

class CsiGroupTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(c_.Start(h_)); }

  std::string MustCreateVolume(const std::string& name, int64_t size) {
    csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest(name, size);
    *req.mutable_volume_capabilities(0) = BlockCap();
    csiv1::CreateVolumeResponse resp;
    grpc::Status st = c_.CreateVolume(req, &resp);
    EXPECT_TRUE(st.ok()) << Describe(st);
    return resp.volume().volume_id();
  }
  grpc::Status CreateGroup(const std::string& name, const std::vector<std::string>& volumes,
                           csiv1::CreateVolumeGroupSnapshotResponse* resp) {
    csiv1::CreateVolumeGroupSnapshotRequest req;
    req.set_name(name);
    for (const std::string& v : volumes) req.add_source_volume_ids(v);
    return c_.Call(c_.group.get(), &csiv1::GroupController::Stub::CreateVolumeGroupSnapshot, req,
                   resp);
  }
  grpc::Status GetGroup(const std::string& id, csiv1::GetVolumeGroupSnapshotResponse* resp) {
    csiv1::GetVolumeGroupSnapshotRequest req;
    req.set_group_snapshot_id(id);
    return c_.Call(c_.group.get(), &csiv1::GroupController::Stub::GetVolumeGroupSnapshot, req,
                   resp);
  }
  grpc::Status DeleteGroup(const std::string& id) {
    csiv1::DeleteVolumeGroupSnapshotRequest req;
    req.set_group_snapshot_id(id);
    csiv1::DeleteVolumeGroupSnapshotResponse resp;
    return c_.Call(c_.group.get(), &csiv1::GroupController::Stub::DeleteVolumeGroupSnapshot, req,
                   &resp);
  }
  // Block 0 of an export as the writer put it there: a sequence number.
  uint64_t ReadSeq(const std::string& export_name) {
    auto client = NbdRawClient::Unix(h_.nbd_socket_path());
    EXPECT_NE(client, nullptr);
    if (client == nullptr || !client->Go(export_name)) return UINT64_MAX;
    std::string data;
    EXPECT_EQ(client->Request(NbdRawClient::kCmdRead, 0, 4096, "", &data), 0);
    return SequenceWriter::SeqOf(data);
  }
  // Every range the stream returns, and the number of messages; the status in *status.
  template <typename Req, typename Resp>
  Ranges ReadStream(std::unique_ptr<grpc::ClientReader<Resp>> (csiv1::SnapshotMetadata::Stub::*fn)(
                        grpc::ClientContext*, const Req&),
                    const Req& req, grpc::Status* status, int* messages = nullptr,
                    int64_t* capacity = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = (c_.metadata.get()->*fn)(&ctx, req);
    Ranges out;
    Resp resp;
    int n = 0;
    while (reader->Read(&resp) && n < 100000) {
      ++n;
      EXPECT_EQ(resp.block_metadata_type(), csiv1::VARIABLE_LENGTH);
      if (capacity != nullptr) *capacity = resp.volume_capacity_bytes();
      if (req.max_results() > 0) {
        EXPECT_LE(resp.block_metadata_size(), req.max_results());
      }
      for (const auto& b : resp.block_metadata()) out.emplace_back(b.byte_offset(), b.size_bytes());
    }
    *status = reader->Finish();
    if (messages != nullptr) *messages = n;
    return out;
  }
  Ranges Allocated(const std::string& snap, int64_t offset, int32_t max, grpc::Status* st,
                   int* messages = nullptr, int64_t* capacity = nullptr) {
    csiv1::GetMetadataAllocatedRequest req;
    req.set_snapshot_id(snap);
    req.set_starting_offset(offset);
    req.set_max_results(max);
    return ReadStream(&csiv1::SnapshotMetadata::Stub::GetMetadataAllocated, req, st, messages,
                      capacity);
  }
  Ranges Delta(const std::string& base, const std::string& target, int64_t offset, int32_t max,
               grpc::Status* st, int* messages = nullptr) {
    csiv1::GetMetadataDeltaRequest req;
    req.set_base_snapshot_id(base);
    req.set_target_snapshot_id(target);
    req.set_starting_offset(offset);
    req.set_max_results(max);
    return ReadStream(&csiv1::SnapshotMetadata::Stub::GetMetadataDelta, req, st, messages);
  }
  void QemuIoUnmap(const std::string& volume, const std::vector<std::string>& commands) {
    const std::string qemu_io = FindProgram("qemu-io");
    std::vector<std::string> argv = {
        qemu_io, "-f",    "raw",
        "-d",    "unmap", "nbd+unix:///" + volume + "?socket=" + h_.nbd_socket_path()};
    for (const std::string& c : commands) {
      argv.push_back("-c");
      argv.push_back(c);
    }
    CommandResult r = Tool(argv);
    ASSERT_TRUE(QemuOk(r)) << r.Describe();
  }

  Harness h_;
  CsiClient c_;
};

TEST_F(CsiGroupTest, IdentityAdvertisesBothServices) {
  csiv1::GetPluginCapabilitiesResponse caps;
  ASSERT_TRUE(c_.Call(c_.identity.get(), &csiv1::Identity::Stub::GetPluginCapabilities,
                      csiv1::GetPluginCapabilitiesRequest(), &caps)
                  .ok());
  std::set<int> services;
  for (const auto& cap : caps.capabilities()) {
    if (cap.has_service()) services.insert(cap.service().type());
  }
  EXPECT_TRUE(services.count(csiv1::PluginCapability::Service::GROUP_CONTROLLER_SERVICE));
  EXPECT_TRUE(services.count(csiv1::PluginCapability::Service::SNAPSHOT_METADATA_SERVICE));
  csiv1::GroupControllerGetCapabilitiesResponse gcaps;
  ASSERT_TRUE(c_.Call(c_.group.get(), &csiv1::GroupController::Stub::GroupControllerGetCapabilities,
                      csiv1::GroupControllerGetCapabilitiesRequest(), &gcaps)
                  .ok());
  ASSERT_EQ(gcaps.capabilities_size(), 1);
  EXPECT_EQ(gcaps.capabilities(0).rpc().type(),
            csiv1::GroupControllerServiceCapability::RPC::CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT);
}

// A writer puts sequence number n into block 0 of each of three volumes in turn over NBD (each
// write acknowledged before the next) while group snapshots are taken: every group's members
// read k+1 up to some member and k after it — the same or adjacent sequence, never a gap.
TEST_F(CsiGroupTest, GroupOfThreeVolumesUnderConcurrentWritesIsOneInstant) {
  const std::vector<std::string> vols = {MustCreateVolume("pvc-data", 16 * kMiB),
                                         MustCreateVolume("pvc-features", 16 * kMiB),
                                         MustCreateVolume("pvc-model", 16 * kMiB)};
  std::vector<std::unique_ptr<NbdRawClient>> clients;
  for (const std::string& v : vols) {
    clients.push_back(NbdRawClient::Unix(h_.nbd_socket_path()));
    ASSERT_NE(clients.back(), nullptr);
    ASSERT_TRUE(clients.back()->Go(v));
  }
  SequenceWriter writer(std::move(clients));
  std::vector<std::pair<std::string, uint64_t>> groups;  // id, rounds acknowledged before
  for (int g = 0; g < 5; ++g) {
    ASSERT_TRUE(writer.WaitMore(20)) << h_.DaemonLog();
    const uint64_t before = writer.rounds();
    csiv1::CreateVolumeGroupSnapshotResponse resp;
    grpc::Status st = CreateGroup("groupsnapshot-" + std::to_string(g), vols, &resp);
    ASSERT_TRUE(st.ok()) << Describe(st);
    EXPECT_TRUE(resp.group_snapshot().ready_to_use());
    ASSERT_EQ(resp.group_snapshot().snapshots_size(), 3);
    groups.emplace_back(resp.group_snapshot().group_snapshot_id(), before);
  }
  writer.Stop();
  ASSERT_FALSE(writer.failed()) << h_.DaemonLog();
  for (const auto& [id, before] : groups) {
    csiv1::GetVolumeGroupSnapshotResponse got;
    ASSERT_TRUE(GetGroup(id, &got).ok());
    std::vector<uint64_t> seqs;
    for (const auto& s : got.group_snapshot().snapshots()) {
      EXPECT_EQ(s.group_snapshot_id(), id);
      seqs.push_back(ReadSeq(s.snapshot_id()));
    }
    ASSERT_EQ(seqs.size(), 3u);
    // Members in the writer's order: data, features, model.
    EXPECT_GE(seqs[2], before) << id << ": an acknowledged round is missing";
    EXPECT_GE(seqs[0], seqs[1]) << id;
    EXPECT_GE(seqs[1], seqs[2]) << id;
    EXPECT_LE(seqs[0], seqs[2] + 1) << id << ": a gap between members";
  }
}

TEST_F(CsiGroupTest, IdempotencyErrorsClonesAndDelete) {
  const std::string a = MustCreateVolume("pvc-a", 8 * kMiB),
                    b = MustCreateVolume("pvc-b", 8 * kMiB),
                    c = MustCreateVolume("pvc-c", 8 * kMiB);
  QemuIoUnmap(a, {"write -P 0x11 0 64k"});
  QemuIoUnmap(b, {"write -P 0x22 0 64k"});
  csiv1::CreateVolumeGroupSnapshotResponse first, again, other;
  ASSERT_TRUE(CreateGroup("groupsnapshot-x", {a, b}, &first).ok());
  ASSERT_TRUE(CreateGroup("groupsnapshot-x", {b, a}, &again).ok());
  EXPECT_EQ(again.group_snapshot().group_snapshot_id(), first.group_snapshot().group_snapshot_id());
  std::set<std::string> ids1, ids2;
  for (const auto& s : first.group_snapshot().snapshots()) ids1.insert(s.snapshot_id());
  for (const auto& s : again.group_snapshot().snapshots()) ids2.insert(s.snapshot_id());
  EXPECT_EQ(ids1, ids2);
  EXPECT_EQ(CreateGroup("groupsnapshot-x", {a, c}, &other).error_code(),
            StatusCode::ALREADY_EXISTS);
  // Required fields, unknown ids.
  EXPECT_EQ(CreateGroup("", {a}, &other).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(CreateGroup("groupsnapshot-y", {}, &other).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(CreateGroup("groupsnapshot-y", {a, "pvc-nope"}, &other).error_code(),
            StatusCode::NOT_FOUND);
  csiv1::GetVolumeGroupSnapshotResponse got;
  EXPECT_EQ(GetGroup("", &got).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(GetGroup("groupsnapshot-nope", &got).error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(DeleteGroup("").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(DeleteGroup("groupsnapshot-nope").ok());
  // Nothing was left behind by the refusals.
  csiv1::ListSnapshotsResponse list;
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListSnapshots,
                      csiv1::ListSnapshotsRequest(), &list)
                  .ok());
  EXPECT_EQ(list.entries_size(), 2);

  // A member is an ordinary snapshot: a clone source.
  std::string member_a;
  for (const auto& s : first.group_snapshot().snapshots()) {
    if (s.source_volume_id() == a) member_a = s.snapshot_id();
  }
  ASSERT_FALSE(member_a.empty());
  csiv1::CreateVolumeRequest clone = CsiClient::VolumeRequest("pvc-a-clone", 8 * kMiB);
  clone.mutable_volume_content_source()->mutable_snapshot()->set_snapshot_id(member_a);
  csiv1::CreateVolumeResponse cloned;
  ASSERT_TRUE(c_.CreateVolume(clone, &cloned).ok());
  QemuIoUnmap(a, {"write -P 0x33 0 64k"});
  // Deleting the group while a clone depends on a member: the clone keeps its data.
  ASSERT_TRUE(DeleteGroup(first.group_snapshot().group_snapshot_id()).ok());
  EXPECT_EQ(GetGroup(first.group_snapshot().group_snapshot_id(), &got).error_code(),
            StatusCode::NOT_FOUND);
  ASSERT_TRUE(c_.Call(c_.controller.get(), &csiv1::Controller::Stub::ListSnapshots,
                      csiv1::ListSnapshotsRequest(), &list)
                  .ok());
  EXPECT_EQ(list.entries_size(), 0);
  const std::string qemu_io = FindProgram("qemu-io");
  CommandResult r = QemuIo(
      qemu_io, "nbd+unix:///" + cloned.volume().volume_id() + "?socket=" + h_.nbd_socket_path(),
      {"read -P 0x11 0 64k"}, /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << r.Describe();
  EXPECT_TRUE(DeleteGroup(first.group_snapshot().group_snapshot_id()).ok());  // again: OK
}

// qemu-io writes a sparse pattern (aligned, 512-byte, unaligned across blocks) and discards;
// GetMetadataAllocated returns exactly the 4 KiB blocks that hold data, GetMetadataDelta
// exactly those changed between two snapshots; paged and resumed, every range exactly once.
TEST_F(CsiGroupTest, MetadataAllocatedAndDeltaAreTheRangesWritten) {
  // 32 MiB: CSI sizes are whole multiples of the driver's granularity (docs/csi.md, "Capacity").
  constexpr int64_t kSize = 32 * kMiB;
  const std::string v = MustCreateVolume("pvc-meta", kSize);
  QemuIoUnmap(v, {"write -P 1 0 64k", "write -P 2 " + std::to_string(kMiB + 512) + " 512",
                  "write -P 3 " + std::to_string(2 * kMiB + 1000) + " 3000",
                  "write -P 4 " + std::to_string(5 * kMiB - 2048) + " 8k", "discard 16k 16k"});
  csiv1::CreateSnapshotResponse s1, s2, other;
  ASSERT_TRUE(c_.CreateSnapshot(v, "snapshot-1", &s1).ok());
  const Ranges allocated1 = {{0, 16 * kKiB},
                             {32 * kKiB, 32 * kKiB},
                             {kMiB, 4 * kKiB},
                             {2 * kMiB, 4 * kKiB},
                             {5 * kMiB - 4 * kKiB, 12 * kKiB}};
  grpc::Status st;
  int messages = 0;
  int64_t capacity = 0;
  EXPECT_EQ(Allocated(s1.snapshot().snapshot_id(), 0, 0, &st, &messages, &capacity), allocated1);
  EXPECT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(messages, 1);
  // The snapshot's size as the engine has it (at least the request).
  const int64_t size =
      ShaleJson(h_, {"snapshot", "show", s1.snapshot().snapshot_id()})["size_bytes"].get<int64_t>();
  EXPECT_GE(size, kSize);
  EXPECT_EQ(capacity, size);
  // max_results 1: one range per message, each exactly once.
  EXPECT_EQ(Allocated(s1.snapshot().snapshot_id(), 0, 1, &st, &messages), allocated1);
  EXPECT_EQ(messages, static_cast<int>(allocated1.size()));
  // Resuming where an interrupted stream stopped (the end of the last range received).
  Ranges resumed;
  int64_t offset = 0;
  for (int call = 0; call < 20; ++call) {
    csiv1::GetMetadataAllocatedRequest req;
    req.set_snapshot_id(s1.snapshot().snapshot_id());
    req.set_starting_offset(offset);
    req.set_max_results(2);
    grpc::ClientContext ctx;
    auto reader = c_.metadata->GetMetadataAllocated(&ctx, req);
    csiv1::GetMetadataAllocatedResponse resp;
    if (!reader->Read(&resp) || resp.block_metadata_size() == 0) break;
    for (const auto& b : resp.block_metadata())
      resumed.emplace_back(b.byte_offset(), b.size_bytes());
    ctx.TryCancel();
    reader->Finish().IgnoreError();
    offset = resumed.back().first + resumed.back().second;
    if (offset >= size) break;
  }
  EXPECT_EQ(resumed, allocated1);
  // A starting offset inside a range: the range from that block on.
  EXPECT_EQ(Allocated(s1.snapshot().snapshot_id(), 40 * kKiB + 100, 0, &st),
            (Ranges{{40 * kKiB, 24 * kKiB},
                    {kMiB, 4 * kKiB},
                    {2 * kMiB, 4 * kKiB},
                    {5 * kMiB - 4 * kKiB, 12 * kKiB}}));

  QemuIoUnmap(v, {"write -P 5 " + std::to_string(3 * kMiB) + " 4k", "write -P 6 4096 100",
                  "discard 32k 32k"});
  ASSERT_TRUE(c_.CreateSnapshot(v, "snapshot-2", &s2).ok());
  const Ranges delta = {{4 * kKiB, 4 * kKiB}, {32 * kKiB, 32 * kKiB}, {3 * kMiB, 4 * kKiB}};
  EXPECT_EQ(Delta(s1.snapshot().snapshot_id(), s2.snapshot().snapshot_id(), 0, 0, &st), delta);
  EXPECT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(Delta(s1.snapshot().snapshot_id(), s2.snapshot().snapshot_id(), 0, 1, &st, &messages),
            delta);
  EXPECT_EQ(messages, 3);
  EXPECT_EQ(Delta(s1.snapshot().snapshot_id(), s2.snapshot().snapshot_id(), 40 * kKiB, 0, &st),
            (Ranges{{40 * kKiB, 24 * kKiB}, {3 * kMiB, 4 * kKiB}}));
  EXPECT_EQ(Allocated(s2.snapshot().snapshot_id(), 0, 0, &st),
            (Ranges{{0, 16 * kKiB},
                    {kMiB, 4 * kKiB},
                    {2 * kMiB, 4 * kKiB},
                    {3 * kMiB, 4 * kKiB},
                    {5 * kMiB - 4 * kKiB, 12 * kKiB}}));

  // Errors: unknown snapshots, snapshots of different volumes, offsets past the end, missing
  // and invalid fields.
  Allocated("pvc-meta@nope", 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);
  Allocated("not a snapshot id", 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);
  Allocated("", 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  Allocated(s1.snapshot().snapshot_id(), size, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::OUT_OF_RANGE);
  Allocated(s1.snapshot().snapshot_id(), -1, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  Delta(s1.snapshot().snapshot_id(), s2.snapshot().snapshot_id(), size + kMiB, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::OUT_OF_RANGE);
  Delta("pvc-meta@nope", s2.snapshot().snapshot_id(), 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);
  Delta(s1.snapshot().snapshot_id(), "", 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  Delta(s2.snapshot().snapshot_id(), s1.snapshot().snapshot_id(), 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  const std::string w = MustCreateVolume("pvc-other", 8 * kMiB);
  ASSERT_TRUE(c_.CreateSnapshot(w, "snapshot-3", &other).ok());
  Delta(s1.snapshot().snapshot_id(), other.snapshot().snapshot_id(), 0, 0, &st);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
}

// The same through the admin CLI: create-group, list-groups, show-group, delete-group.
TEST_F(CsiGroupTest, CliCreateListShowDeleteGroup) {
  ASSERT_EQ(h_.Shale({"volume", "create", "nb-data", "--size", "8M"}).exit_code, 0);
  ASSERT_EQ(h_.Shale({"volume", "create", "nb-model", "--size", "8M"}).exit_code, 0);
  nlohmann::json g = ShaleJson(h_, {"snapshot", "create-group", "exp-1", "nb-data", "nb-model",
                                    "--label", "notebook=nb-42"});
  ASSERT_TRUE(g.is_object());
  EXPECT_EQ(g["snapshots"], nlohmann::json({"nb-data@exp-1", "nb-model@exp-1"}));
  EXPECT_EQ(g["labels"]["notebook"], "nb-42");
  nlohmann::json snap = ShaleJson(h_, {"snapshot", "show", "nb-model@exp-1"});
  EXPECT_EQ(snap["labels"]["shale.io/group"], "exp-1");
  EXPECT_EQ(snap["labels"]["shale.io/group-id"], g["id"]);
  nlohmann::json list = ShaleJson(h_, {"snapshot", "list-groups"});
  ASSERT_EQ(list["groups"].size(), 1u);
  EXPECT_EQ(ShaleJson(h_, {"snapshot", "show-group", "exp-1"})["id"], g["id"]);
  CommandResult clash = h_.Shale({"snapshot", "create-group", "exp-1", "nb-data"});
  EXPECT_NE(clash.exit_code, 0);
  EXPECT_NE(clash.err.find("already exists"), std::string::npos) << clash.err;
  ASSERT_EQ(h_.Shale({"snapshot", "delete-group", "exp-1"}).exit_code, 0);
  EXPECT_TRUE(ShaleJson(h_, {"snapshot", "list-groups"})["groups"].empty());
  EXPECT_NE(h_.Shale({"snapshot", "show-group", "exp-1"}).exit_code, 0);
}

}  // namespace
}  // namespace shale::e2e
