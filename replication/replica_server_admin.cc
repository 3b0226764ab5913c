// ReplicaServer: replica placement before OPEN (CREATE_REPLICA, DELETE_REPLICA, STAT_REPLICA;
// docs/format/replica-protocol.md, "Placing replicas"). Runs on the connection's receiver
// thread: blocking engine calls are fine there.
#include <cerrno>

#include "engine/common/log.h"
#include "engine/common/uuid.h"
#include "engine/engine.h"
#include "engine/pool/metadata_store.h"
#include "replication/replica_server.h"
#include "replication/replica_state.h"

namespace shale::replication {

namespace {

Uuid UuidOf(const std::array<uint8_t, 16>& bytes) {
  Uuid u;
  u.bytes = bytes;
  return u;
}

}  // namespace

// Whether `info` is a replica volume of `uuid`; the refusal otherwise.
ReplicaServer::Refusal ReplicaServer::CheckReplica(const VolumeInfo& info, const Uuid& uuid,
                                                   bool anchor_too) {
  const auto label = info.labels.find(kReplicaUuidLabel);
  if (label == info.labels.end()) {
    return {WireStatus::kInvalid, "volume '" + info.name +
                                      "' exists and is not a replica (no label " +
                                      kReplicaUuidLabel + ")"};
  }
  if (!anchor_too && info.labels.contains(kTargetOnlyLabel)) {
    return {WireStatus::kInvalid, "volume '" + info.name +
                                      "' exists and holds no replica: this node serves it from "
                                      "the replicas on other nodes"};
  }
  const Result<Uuid> have = Uuid::Parse(label->second);
  if (!have.ok() || !(*have == uuid)) {
    return {WireStatus::kInvalid, "volume '" + info.name + "' is a replica of " + label->second +
                                      ", not of " + uuid.ToString()};
  }
  return {};
}

bool ReplicaServer::IsAdmin(MsgType type) {
  return type == MsgType::kCreateReplica || type == MsgType::kDeleteReplica ||
         type == MsgType::kStatReplica || type == MsgType::kSnapshotDigest ||
         type == MsgType::kDeleteSnapshot || type == MsgType::kTakeSnapshot ||
         type == MsgType::kListSnapshots;
}

// One placement request; the reply is sent here. Errors: the frame broke the protocol or the
// connection failed (the caller closes it).
Status ReplicaServer::Admin(Connection* conn, const std::string& peer,
                            const std::string& client_node, const FrameReader::Frame& f,
                            Deadline deadline) {
  FrameHeader rh;
  rh.type = f.header.type | kReplyBit;
  rh.request_id = f.header.request_id;
  Refusal refusal;
  ReplicaStat stat;
  std::string volume;
  std::string digest;
  SnapshotList list;
  switch (f.header.msg()) {
    case MsgType::kCreateReplica: {
      CreateReplicaRequest m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      volume = m.volume;
      refusal = CreateReplica(m, f.header.epoch, &stat);
      break;
    }
    case MsgType::kDeleteReplica:
    case MsgType::kStatReplica: {
      ReplicaRef m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      volume = m.volume;
      refusal = f.header.msg() == MsgType::kDeleteReplica ? DeleteReplica(m, f.header.epoch)
                                                          : StatReplica(m, &stat);
      break;
    }
    case MsgType::kListSnapshots: {
      ReplicaRef m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      volume = m.volume;
      refusal = ListSnapshots(m, &list);
      break;
    }
    case MsgType::kSnapshotDigest:
    case MsgType::kDeleteSnapshot:
    case MsgType::kTakeSnapshot: {
      SnapshotRef m;
      SHALE_RETURN_IF_ERROR(Decode(f.payload, &m));
      volume = m.volume + "@" + m.snapshot;
      refusal = SnapshotAdmin(f.header.msg(), m, f.header.epoch, &digest);
      break;
    }
    default:
      return Status::Corruption("not a placement request");
  }
  std::string body;
  if (refusal.status != WireStatus::kOk) {
    if (refusal.status == WireStatus::kStaleEpoch) counters_.stale.fetch_add(1);
    // (A delete of a deleted volume's snapshot asks every node: most have no copy.)
    // (The sender logs what it did not expect.)
    const bool quiet =
        f.header.msg() == MsgType::kDeleteSnapshot &&
        (refusal.status == WireStatus::kNotFound || refusal.status == WireStatus::kPrecondition);
    if (!quiet)
      SHALE_LOG_WARN("replica placement refused", {"peer", peer}, {"node", client_node},
                     {"request", MsgTypeName(f.header.msg())}, {"volume", volume},
                     {"status", WireStatusName(refusal.status)}, {"reason", refusal.why});
    rh.status = static_cast<uint32_t>(refusal.status);
    Encode(ErrorReply{refusal.why}, &body);
  } else if (f.header.msg() == MsgType::kSnapshotDigest) {
    Encode(SnapshotDigest{digest}, &body);
  } else if (f.header.msg() == MsgType::kListSnapshots) {
    Encode(list, &body);
  } else if (f.header.msg() != MsgType::kDeleteReplica &&
             f.header.msg() != MsgType::kDeleteSnapshot &&
             f.header.msg() != MsgType::kTakeSnapshot) {
    Encode(stat, &body);
  }
  counters_.requests.fetch_add(1);
  const std::string frame = EncodeFrame(rh, body);
  const ConstBuffer b = AsBytes(frame);
  return conn->Send(std::span(&b, 1), deadline);
}

// The state of an existing replica volume, its epoch raised to `epoch` if that is higher;
// STALE_EPOCH if `epoch` is older than the persisted one.
ReplicaServer::Refusal ReplicaServer::ExistingReplica(const VolumeInfo& info, uint64_t epoch,
                                                      ReplicaStat* stat) {
  Result<std::shared_ptr<VolumeState>> state = StateOf(info.pool, info.id);
  if (!state.ok()) return {WireStatus::kIoError, state.status().ToString()};
  const uint64_t fence = (*state)->fence.load();
  if (epoch < fence) {
    return {WireStatus::kStaleEpoch, "epoch " + std::to_string(epoch) +
                                         " is older than the replica's " + std::to_string(fence)};
  }
  if (Status st = (*state)->Raise(epoch, info.name); !st.ok()) {
    return {WireStatus::kIoError, st.ToString()};
  }
  stat->size_bytes = info.size_bytes;
  stat->allocated_bytes = info.allocated_bytes;
  stat->epoch = (*state)->fence.load();
  stat->generation = (*state)->generation.load();
  return {};
}

ReplicaServer::Refusal ReplicaServer::CreateReplica(const CreateReplicaRequest& m, uint64_t epoch,
                                                    ReplicaStat* stat) {
  const Uuid uuid = UuidOf(m.volume_uuid);
  if (uuid.IsNil()) return {WireStatus::kInvalid, "replica uuid is nil"};
  if (m.size_bytes % 4096 != 0) {
    return {WireStatus::kInvalid, "replica size must be a multiple of 4096"};
  }
  const std::string pool = m.pool.empty() ? options_.replica_pool : m.pool;
  // Twice at most: a concurrent CREATE of the same replica may win the race to the name.
  for (int attempt = 0; attempt < 2; ++attempt) {
    Result<VolumeInfo> info = engine_->GetVolume(m.volume);
    if (info.ok()) {
      Refusal r = CheckReplica(*info, uuid);
      if (r.status != WireStatus::kOk) return r;
      if (info->size_bytes != m.size_bytes) {
        return {WireStatus::kInvalid, "replica '" + m.volume + "' exists with size " +
                                          std::to_string(info->size_bytes) + ", not " +
                                          std::to_string(m.size_bytes)};
      }
      if (!m.pool.empty() && info->pool != m.pool) {
        return {WireStatus::kInvalid, "replica '" + m.volume + "' exists in pool '" + info->pool +
                                          "', not '" + m.pool + "'"};
      }
      return ExistingReplica(*info, epoch, stat);
    }
    if (info.status().code() != StatusCode::kNotFound) {
      return {WireStatusFromStatus(info.status()), info.status().ToString()};
    }
    if (!m.source.empty()) {
      Refusal cloned = CloneReplica(m, uuid, epoch, stat);
      if (cloned.status == WireStatus::kUnavailable) continue;  // lost the race to the name
      return cloned;
    }
    CreateVolumeParams params;
    params.name = m.volume;
    params.size_bytes = m.size_bytes;
    params.pool = pool;
    params.labels[kReplicaUuidLabel] = uuid.ToString();
    // The epoch is persisted with the volume: a replica never exists without its fence.
    Result<VolumeInfo> made =
        engine_->CreateVolume(params, [epoch](uint64_t volume_id, MetaBatch* batch) {
          batch->Put(ReplicaStateKey(volume_id), EncodeReplicaState(ReplicaState{epoch, 0}));
        });
    if (made.ok()) {
      SHALE_LOG_INFO("replica created", {"volume", m.volume}, {"pool", made->pool},
                     {"uuid", uuid.ToString()}, {"size", m.size_bytes}, {"epoch", epoch});
      *stat = ReplicaStat{made->size_bytes, made->allocated_bytes, epoch, 0, true};
      return {};
    }
    if (made.status().code() != StatusCode::kAlreadyExists) {
      return {WireStatusFromStatus(made.status()), made.status().ToString()};
    }
  }
  return {WireStatus::kUnavailable, "replica '" + m.volume + "' is being created and deleted"};
}

ReplicaServer::Refusal ReplicaServer::CloneReplica(const CreateReplicaRequest& m, const Uuid& uuid,
                                                   uint64_t epoch, ReplicaStat* stat) {
  if (!options_.clone_snapshot) {
    return {WireStatus::kNotSupported, "this node cannot make replicas from snapshots"};
  }
  Result<VolumeInfo> made =
      options_.clone_snapshot(m.source, m.volume, {{kReplicaUuidLabel, uuid.ToString()}});
  if (!made.ok()) {
    if (made.status().code() == StatusCode::kAlreadyExists) {
      return {WireStatus::kUnavailable, "replica '" + m.volume + "' appeared meanwhile"};
    }
    return {WireStatusFromStatus(made.status()), made.status().ToString()};
  }
  if (made->size_bytes > m.size_bytes) {
    return {WireStatus::kInvalid, "snapshot " + m.source + " is larger than the replica's size " +
                                      std::to_string(m.size_bytes)};
  }
  if (made->size_bytes < m.size_bytes) {
    made = engine_->ResizeVolume(m.volume, m.size_bytes);
    if (!made.ok()) return {WireStatusFromStatus(made.status()), made.status().ToString()};
  }
  Refusal r = ExistingReplica(*made, epoch, stat);  // a fresh clone: its epoch raised to E
  if (r.status != WireStatus::kOk) return r;
  stat->created = true;
  SHALE_LOG_INFO("replica created from a snapshot", {"volume", m.volume}, {"source", m.source},
                 {"pool", made->pool}, {"uuid", uuid.ToString()}, {"size", m.size_bytes},
                 {"epoch", epoch});
  return {};
}

ReplicaServer::Refusal ReplicaServer::DeleteReplica(const ReplicaRef& m, uint64_t epoch) {
  Result<VolumeInfo> info = engine_->GetVolume(m.volume);
  if (!info.ok()) {
    if (info.status().code() == StatusCode::kNotFound) return {};  // idempotent
    return {WireStatusFromStatus(info.status()), info.status().ToString()};
  }
  Refusal r = CheckReplica(*info, UuidOf(m.volume_uuid));
  if (r.status != WireStatus::kOk) return r;
  Result<ReplicaState> persisted = LoadReplicaState(engine_, info->pool, info->id);
  if (!persisted.ok()) return {WireStatus::kIoError, persisted.status().ToString()};
  if (epoch < persisted->epoch) {
    return {WireStatus::kStaleEpoch, "epoch " + std::to_string(epoch) +
                                         " is older than the replica's " +
                                         std::to_string(persisted->epoch)};
  }
  const Status st = engine_->DeleteVolume(m.volume, [](uint64_t volume_id, MetaBatch* batch) {
    batch->Delete(ReplicaStateKey(volume_id));
  });
  if (!st.ok()) {
    if (st.code() == StatusCode::kNotFound) return {};
    return {WireStatusFromStatus(st), st.ToString()};
  }
  SHALE_LOG_INFO("replica deleted", {"volume", m.volume}, {"pool", info->pool}, {"epoch", epoch});
  return {};
}

ReplicaServer::Refusal ReplicaServer::StatReplica(const ReplicaRef& m, ReplicaStat* stat) {
  Result<VolumeInfo> info = engine_->GetVolume(m.volume);
  if (!info.ok()) return {WireStatusFromStatus(info.status()), info.status().ToString()};
  Refusal r = CheckReplica(*info, UuidOf(m.volume_uuid));
  if (r.status != WireStatus::kOk) return r;
  Result<std::shared_ptr<VolumeState>> state = StateOf(info->pool, info->id);
  if (!state.ok()) return {WireStatus::kIoError, state.status().ToString()};
  *stat = ReplicaStat{info->size_bytes, info->allocated_bytes, (*state)->fence.load(),
                      (*state)->generation.load(), false};
  return {};
}

ReplicaServer::Refusal ReplicaServer::ListSnapshots(const ReplicaRef& m, SnapshotList* list) {
  if (!options_.list_snapshots) {
    return {WireStatus::kNotSupported, "this replica server handles no snapshots"};
  }
  Result<VolumeInfo> info = engine_->GetVolume(m.volume);
  if (!info.ok()) return {WireStatusFromStatus(info.status()), info.status().ToString()};
  Refusal r = CheckReplica(*info, UuidOf(m.volume_uuid));
  if (r.status != WireStatus::kOk) return r;
  Result<std::vector<SnapshotEntry>> listed = options_.list_snapshots(m.volume);
  if (!listed.ok()) return {WireStatusFromStatus(listed.status()), listed.status().ToString()};
  list->snapshots = std::move(listed).value();
  return {};
}

// SNAPSHOT_DIGEST, DELETE_SNAPSHOT and TAKE_SNAPSHOT of a snapshot of a replica volume (through
// the daemon's handlers: snapshot/ is above replication/). A delete is fenced by the epoch.
ReplicaServer::Refusal ReplicaServer::SnapshotAdmin(MsgType type, const SnapshotRef& m,
                                                    uint64_t epoch, std::string* digest) {
  const bool del = type == MsgType::kDeleteSnapshot;
  const bool take = type == MsgType::kTakeSnapshot;
  if ((del && !options_.delete_snapshot) || (take && !options_.take_snapshot) ||
      (!del && !take && !options_.snapshot_digest)) {
    return {WireStatus::kNotSupported, "this replica server handles no snapshots"};
  }
  Result<VolumeInfo> info = engine_->GetVolume(m.volume);
  const bool any_uuid = UuidOf(m.volume_uuid).IsNil();
  if (del && options_.delete_snapshot_of_deleted &&
      (any_uuid || (!info.ok() && info.status().IsNotFound()))) {
    // The replica volume was deleted and its snapshot copies outlive it: no epoch fences them
    // any more (a volume made again under that name has another uuid), the uuid decides. A nil
    // uuid (the sender no longer knows it) goes there whatever volume of that name is here (an
    // orphan replica of the deleted volume, a new volume's): the copy's own uuid decides.
    const Status st =
        options_.delete_snapshot_of_deleted(m.volume, m.snapshot, UuidOf(m.volume_uuid));
    if (!st.ok()) return {WireStatusFromStatus(st), st.ToString()};
    return {};
  }
  if (!info.ok()) return {WireStatusFromStatus(info.status()), info.status().ToString()};
  // TAKE_SNAPSHOT goes to the node serving the volume, which may hold only its anchor.
  Refusal r = CheckReplica(*info, UuidOf(m.volume_uuid), /*anchor_too=*/take);
  if (r.status != WireStatus::kOk) return r;
  if (take) {
    // The daemon takes it only if it serves the volume (its target decides, not the epoch).
    const Status st = options_.take_snapshot(m.volume, m.snapshot, m.labels);
    if (!st.ok()) return {WireStatusFromStatus(st), st.ToString()};
    return {};
  }
  if (!del) {
    Result<std::string> d = options_.snapshot_digest(m.volume, m.snapshot);
    if (!d.ok()) return {WireStatusFromStatus(d.status()), d.status().ToString()};
    if (d->empty() || d->size() > kMaxDigestLength) {
      return {WireStatus::kIoError, "snapshot digest of unexpected length"};
    }
    *digest = std::move(d).value();
    return {};
  }
  Result<std::shared_ptr<VolumeState>> state = StateOf(info->pool, info->id);
  if (!state.ok()) return {WireStatus::kIoError, state.status().ToString()};
  if (epoch < (*state)->fence.load()) {
    return {WireStatus::kStaleEpoch, "epoch " + std::to_string(epoch) +
                                         " is older than the replica's " +
                                         std::to_string((*state)->fence.load())};
  }
  const Status st = options_.delete_snapshot(m.volume, m.snapshot);
  if (!st.ok()) return {WireStatusFromStatus(st), st.ToString()};
  return {};
}

}  // namespace shale::replication
