#include "replication/replica_admin.h"

#include <cstring>

#include "engine/common/log.h"

namespace shale::replication {

namespace {

Status SendFrame(Connection* c, const std::string& frame, Deadline deadline) {
  const ConstBuffer b = AsBytes(frame);
  return c->Send(std::span(&b, 1), deadline);
}

// Connects, authenticates, sends one request and returns the OK reply's payload (copied), or
// the replica's error.
Result<std::string> Call(const ReplicaAdminOptions& o, MsgType type, uint64_t epoch,
                         const std::string& payload, const std::string& volume) {
  if (o.transport == nullptr) return Status::InvalidArgument("replica admin needs a transport");
  if (!o.secret.valid()) return Status::InvalidArgument("replica admin needs a secret");
  if (o.node_name.empty() || o.node_name.size() > kMaxNodeNameLength) {
    return Status::InvalidArgument("replica admin: node name must be 1..128 bytes");
  }
  const std::string context =
      std::string(MsgTypeName(type)) + " " + volume + " on replica server " + o.address;
  const Deadline deadline = DeadlineIn(o.timeout);
  Result<std::unique_ptr<Connection>> conn = o.transport->Connect(o.address, deadline);
  if (!conn.ok()) return conn.status().WithContext(context);
  Connection* c = conn->get();
  FrameReader reader(c);
  auto run = [&]() -> Result<std::string> {
    SHALE_RETURN_IF_ERROR(
        AuthenticateToServer(c, &reader, o.secret, o.node_name, o.address, deadline).status());
    FrameHeader h;
    h.type = static_cast<uint8_t>(type);
    h.request_id = 1;
    h.epoch = epoch;
    SHALE_RETURN_IF_ERROR(SendFrame(c, EncodeFrame(h, payload), deadline));
    SHALE_ASSIGN_OR_RETURN(FrameReader::Frame f, reader.Next(deadline));
    if (!f.header.is_reply() || f.header.msg() != type || f.header.request_id != 1) {
      return Status::Corruption("replica protocol: expected the " + std::string(MsgTypeName(type)) +
                                " reply");
    }
    if (f.header.wire_status() != WireStatus::kOk) {
      ErrorReply e;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &e));
      return StatusFromWire(f.header.wire_status(), e.message);
    }
    return std::string(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
  };
  Result<std::string> r = run();
  c->Shutdown();
  if (!r.ok()) return r.status().WithContext(context);
  return r;
}

Status CheckSpec(const ReplicaSpec& spec) {
  if (spec.volume.empty() || spec.volume.size() > kMaxVolumeNameLength ||
      spec.pool.size() > kMaxPoolNameLength) {
    return Status::InvalidArgument("replica volume name must be 1..128 bytes, pool 0..128");
  }
  if (spec.uuid.IsNil()) return Status::InvalidArgument("replica uuid must not be nil");
  return Status::Ok();
}

ReplicaRef RefOf(const ReplicaSpec& spec) {
  ReplicaRef m;
  m.volume_uuid = spec.uuid.bytes;
  m.volume = spec.volume;
  return m;
}

}  // namespace

Result<Hello> AuthenticateToServer(Connection* connection, FrameReader* reader,
                                   const ClusterSecret& secret, const std::string& node_name,
                                   const std::string& address, Deadline deadline) {
  SHALE_ASSIGN_OR_RETURN(const Nonce nonce, RandomNonce());
  ClientHandshake hs(secret, node_name, nonce);
  SHALE_ASSIGN_OR_RETURN(FrameReader::Frame f, reader->Next(deadline));
  std::string frame;
  SHALE_RETURN_IF_ERROR(hs.OnHello(f.header, f.payload, &frame));
  SHALE_RETURN_IF_ERROR(SendFrame(connection, frame, deadline));
  SHALE_ASSIGN_OR_RETURN(f, reader->Next(deadline));
  if (Status st = hs.OnAuthReply(f.header, f.payload); !st.ok()) {
    SHALE_LOG_WARN("replica server failed authentication", {"address", address},
                   {"error", st.ToString()});
    return st;
  }
  return hs.hello();
}

Result<ReplicaStat> CreateReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                                  uint64_t epoch) {
  SHALE_RETURN_IF_ERROR(CheckSpec(spec));
  if (spec.size_bytes == 0 || spec.size_bytes % 4096 != 0) {
    return Status::InvalidArgument("replica size must be a positive multiple of 4096");
  }
  CreateReplicaRequest m;
  m.volume_uuid = spec.uuid.bytes;
  m.size_bytes = spec.size_bytes;
  m.volume = spec.volume;
  m.pool = spec.pool;
  m.source = spec.source;
  std::string payload;
  Encode(m, &payload);
  SHALE_ASSIGN_OR_RETURN(const std::string reply,
                         Call(options, MsgType::kCreateReplica, epoch, payload, spec.volume));
  ReplicaStat stat;
  SHALE_RETURN_IF_ERROR(Decode(AsBytes(reply), &stat));
  return stat;
}

namespace {

// A request whose payload is the replica's reference (DELETE_REPLICA, STAT_REPLICA,
// LIST_SNAPSHOTS); its reply payload.
Result<std::string> RefCall(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                            MsgType type, uint64_t epoch) {
  SHALE_RETURN_IF_ERROR(CheckSpec(spec));
  std::string payload;
  Encode(RefOf(spec), &payload);
  return Call(options, type, epoch, payload, spec.volume);
}

template <typename Reply>
Result<Reply> DecodeReply(const std::string& bytes) {
  Reply reply;
  SHALE_RETURN_IF_ERROR(Decode(AsBytes(bytes), &reply));
  return reply;
}

}  // namespace

Status DeleteReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec, uint64_t epoch) {
  return RefCall(options, spec, MsgType::kDeleteReplica, epoch).status();
}

Result<ReplicaStat> StatReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec) {
  // STAT raises no epoch: it carries 0 and reads only.
  SHALE_ASSIGN_OR_RETURN(const std::string reply, RefCall(options, spec, MsgType::kStatReplica, 0));
  return DecodeReply<ReplicaStat>(reply);
}

Result<SnapshotList> ListReplicaSnapshots(const ReplicaAdminOptions& options,
                                          const ReplicaSpec& spec) {
  SHALE_ASSIGN_OR_RETURN(const std::string reply,
                         RefCall(options, spec, MsgType::kListSnapshots, 0));
  return DecodeReply<SnapshotList>(reply);
}

namespace {

Result<std::string> SnapshotCall(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                                 const std::string& snapshot, MsgType type, uint64_t epoch,
                                 const Labels& labels = {}) {
  SHALE_RETURN_IF_ERROR(CheckSpec(spec));
  if (snapshot.empty() || snapshot.size() > kMaxSnapshotNameLength) {
    return Status::InvalidArgument("snapshot name must be 1..128 bytes");
  }
  SHALE_RETURN_IF_ERROR(ValidateLabels(labels));
  std::string payload;
  Encode(SnapshotRef{spec.uuid.bytes, spec.volume, snapshot, labels}, &payload);
  return Call(options, type, epoch, payload, spec.volume + "@" + snapshot);
}

}  // namespace

Result<std::string> SnapshotDigestOf(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                                     const std::string& snapshot) {
  SHALE_ASSIGN_OR_RETURN(const std::string reply,
                         SnapshotCall(options, spec, snapshot, MsgType::kSnapshotDigest, 0));
  SnapshotDigest d;
  SHALE_RETURN_IF_ERROR(Decode(AsBytes(reply), &d));
  return d.digest;
}

Status DeleteReplicaSnapshot(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                             const std::string& snapshot, uint64_t epoch) {
  return SnapshotCall(options, spec, snapshot, MsgType::kDeleteSnapshot, epoch).status();
}

Status DeleteCopyOfDeletedVolume(const ReplicaAdminOptions& options, const std::string& volume,
                                 const std::string& snapshot) {
  if (volume.empty() || volume.size() > kMaxVolumeNameLength || snapshot.empty() ||
      snapshot.size() > kMaxSnapshotNameLength) {
    return Status::InvalidArgument("volume and snapshot names must be 1..128 bytes");
  }
  std::string payload;
  Encode(SnapshotRef{Uuid{}.bytes, volume, snapshot, {}}, &payload);
  return Call(options, MsgType::kDeleteSnapshot, 0, payload, volume + "@" + snapshot).status();
}

Status TakeSnapshotOnTarget(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                            const std::string& snapshot, const Labels& labels) {
  return SnapshotCall(options, spec, snapshot, MsgType::kTakeSnapshot, 0, labels).status();
}

}  // namespace shale::replication
