// The replica protocol's placement and snapshot-administration payloads (types 13..19:
// docs/format/replica-protocol.md).
#include <cstring>

#include "replication/protocol.h"
#include "replication/protocol_codec.h"

namespace shale::replication {

using namespace protocol_codec;  // NOLINT: the codec helpers

void Encode(const CreateReplicaRequest& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireCreateReplica));
  std::memcpy(w + FIELD(WireCreateReplica, volume_uuid), m.volume_uuid.data(), 16);
  PutU64(w + FIELD(WireCreateReplica, size_bytes), m.size_bytes);
  PutU16(w + FIELD(WireCreateReplica, volume_name_length), static_cast<uint16_t>(m.volume.size()));
  PutU16(w + FIELD(WireCreateReplica, pool_name_length), static_cast<uint16_t>(m.pool.size()));
  PutU16(w + FIELD(WireCreateReplica, source_length), static_cast<uint16_t>(m.source.size()));
  out->append(m.volume);
  out->append(m.pool);
  out->append(m.source);
}

Status Decode(std::span<const uint8_t> p, CreateReplicaRequest* m) {
  if (p.size() < sizeof(WireCreateReplica)) return Malformed("CREATE_REPLICA payload too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(
      ReservedZero(GetU16(r + FIELD(WireCreateReplica, reserved)), "CREATE_REPLICA"));
  std::memcpy(m->volume_uuid.data(), r + FIELD(WireCreateReplica, volume_uuid), 16);
  m->size_bytes = GetU64(r + FIELD(WireCreateReplica, size_bytes));
  const uint16_t name_length = GetU16(r + FIELD(WireCreateReplica, volume_name_length));
  const uint16_t pool_length = GetU16(r + FIELD(WireCreateReplica, pool_name_length));
  const uint16_t source_length = GetU16(r + FIELD(WireCreateReplica, source_length));
  if (name_length == 0 || name_length > kMaxVolumeNameLength || pool_length > kMaxPoolNameLength ||
      source_length > kMaxSourceLength || (source_length > 0 && source_length < 3)) {
    return Malformed("CREATE_REPLICA name lengths out of range");
  }
  if (p.size() != sizeof(WireCreateReplica) + name_length + pool_length + source_length) {
    return Malformed("CREATE_REPLICA name lengths do not match the payload");
  }
  if (m->size_bytes == 0) return Malformed("CREATE_REPLICA of size 0");
  const auto* names = reinterpret_cast<const char*>(r + sizeof(WireCreateReplica));
  m->volume.assign(names, name_length);
  m->pool.assign(names + name_length, pool_length);
  m->source.assign(names + name_length + pool_length, source_length);
  if (!m->source.empty() && m->source.find('@') == std::string::npos) {
    return Malformed("CREATE_REPLICA source is not VOLUME@SNAP");
  }
  return Status::Ok();
}

void Encode(const ReplicaRef& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireReplicaRef));
  std::memcpy(w + FIELD(WireReplicaRef, volume_uuid), m.volume_uuid.data(), 16);
  PutU16(w + FIELD(WireReplicaRef, volume_name_length), static_cast<uint16_t>(m.volume.size()));
  out->append(m.volume);
}

Status Decode(std::span<const uint8_t> p, ReplicaRef* m) {
  if (p.size() < sizeof(WireReplicaRef)) return Malformed("replica reference too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(
      GetU16(r + FIELD(WireReplicaRef, reserved)) | GetU32(r + FIELD(WireReplicaRef, reserved2)),
      "replica reference"));
  std::memcpy(m->volume_uuid.data(), r + FIELD(WireReplicaRef, volume_uuid), 16);
  return TakeString(p, sizeof(WireReplicaRef),
                    GetU16(r + FIELD(WireReplicaRef, volume_name_length)), kMaxVolumeNameLength,
                    false, "replica volume name", &m->volume);
}

void Encode(const SnapshotRef& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireSnapshotRef));
  std::memcpy(w + FIELD(WireSnapshotRef, volume_uuid), m.volume_uuid.data(), 16);
  PutU16(w + FIELD(WireSnapshotRef, volume_name_length), static_cast<uint16_t>(m.volume.size()));
  PutU16(w + FIELD(WireSnapshotRef, snapshot_name_length),
         static_cast<uint16_t>(m.snapshot.size()));
  const std::string labels = LabelLines(m.labels);
  PutU32(w + FIELD(WireSnapshotRef, labels_length), static_cast<uint32_t>(labels.size()));
  out->append(m.volume);
  out->append(m.snapshot);
  out->append(labels);
}

Status Decode(std::span<const uint8_t> p, SnapshotRef* m) {
  if (p.size() < sizeof(WireSnapshotRef)) return Malformed("snapshot reference too short");
  const uint8_t* r = p.data();
  std::memcpy(m->volume_uuid.data(), r + FIELD(WireSnapshotRef, volume_uuid), 16);
  const uint16_t volume_length = GetU16(r + FIELD(WireSnapshotRef, volume_name_length));
  const uint16_t snapshot_length = GetU16(r + FIELD(WireSnapshotRef, snapshot_name_length));
  const uint32_t labels_length = GetU32(r + FIELD(WireSnapshotRef, labels_length));
  if (volume_length == 0 || volume_length > kMaxVolumeNameLength || snapshot_length == 0 ||
      snapshot_length > kMaxSnapshotNameLength || labels_length > kMaxSnapshotLabelsLength) {
    return Malformed("snapshot reference lengths out of range");
  }
  if (p.size() != sizeof(WireSnapshotRef) + volume_length + snapshot_length + labels_length) {
    return Malformed("snapshot reference lengths do not match the payload");
  }
  const auto* names = reinterpret_cast<const char*>(r + sizeof(WireSnapshotRef));
  m->volume.assign(names, volume_length);
  m->snapshot.assign(names + volume_length, snapshot_length);
  return ParseLabelLines(std::string_view(names + volume_length + snapshot_length, labels_length),
                         &m->labels);
}

void Encode(const SnapshotDigest& m, std::string* out) {
  AppendString(out, m.digest, kMaxDigestLength);
}

Status Decode(std::span<const uint8_t> p, SnapshotDigest* m) {
  return TakeWireString(p, kMaxDigestLength, false, "snapshot digest", &m->digest);
}

void Encode(const SnapshotList& m, std::string* out) {
  const size_t at = out->size();
  (void)Tail(out, sizeof(WireCount));  // filled in at the end
  uint32_t count = 0;
  bool truncated = m.truncated;
  for (const SnapshotEntry& e : m.snapshots) {
    const std::string labels = LabelLines(e.labels);
    const size_t entry =
        sizeof(WireSnapshotEntry) + e.name.size() + e.digest.size() + labels.size();
    if (out->size() - at + entry > kMaxSnapshotListBytes) {
      truncated = true;
      break;
    }
    uint8_t* x = Tail(out, sizeof(WireSnapshotEntry));
    PutU64(x + FIELD(WireSnapshotEntry, created_unix_ns), e.created_unix_ns);
    PutU64(x + FIELD(WireSnapshotEntry, size_bytes), e.size_bytes);
    PutU16(x + FIELD(WireSnapshotEntry, name_length), static_cast<uint16_t>(e.name.size()));
    PutU16(x + FIELD(WireSnapshotEntry, digest_length), static_cast<uint16_t>(e.digest.size()));
    PutU32(x + FIELD(WireSnapshotEntry, labels_length), static_cast<uint32_t>(labels.size()));
    out->append(e.name);
    out->append(e.digest);
    out->append(labels);
    ++count;
  }
  uint8_t* head = reinterpret_cast<uint8_t*>(out->data() + at);
  PutU32(head + FIELD(WireCount, count), count);
  PutU32(head + FIELD(WireCount, reserved), truncated ? kListTruncated : 0);
}

Status Decode(std::span<const uint8_t> p, SnapshotList* m) {
  if (p.size() < sizeof(WireCount)) return Malformed("snapshot list too short");
  const uint32_t count = GetU32(p.data() + FIELD(WireCount, count));
  const uint32_t flags = GetU32(p.data() + FIELD(WireCount, reserved));
  if ((flags & ~kListTruncated) != 0) return Malformed("snapshot list: unknown flags");
  m->truncated = (flags & kListTruncated) != 0;
  m->snapshots.clear();
  p = p.subspan(sizeof(WireCount));
  for (uint32_t i = 0; i < count; ++i) {
    if (p.size() < sizeof(WireSnapshotEntry)) return Malformed("snapshot list: entry cut short");
    const uint8_t* x = p.data();
    const uint16_t name_length = GetU16(x + FIELD(WireSnapshotEntry, name_length));
    const uint16_t digest_length = GetU16(x + FIELD(WireSnapshotEntry, digest_length));
    const uint32_t labels_length = GetU32(x + FIELD(WireSnapshotEntry, labels_length));
    if (name_length == 0 || name_length > kMaxSnapshotNameLength ||
        digest_length > kMaxDigestLength || labels_length > kMaxSnapshotLabelsLength) {
      return Malformed("snapshot list: lengths out of range");
    }
    const size_t size = sizeof(WireSnapshotEntry) + name_length + digest_length + labels_length;
    if (p.size() < size) return Malformed("snapshot list: entry cut short");
    SnapshotEntry e;
    e.created_unix_ns = GetU64(x + FIELD(WireSnapshotEntry, created_unix_ns));
    e.size_bytes = GetU64(x + FIELD(WireSnapshotEntry, size_bytes));
    const auto* text = reinterpret_cast<const char*>(x + sizeof(WireSnapshotEntry));
    e.name.assign(text, name_length);
    e.digest.assign(text + name_length, digest_length);
    SHALE_RETURN_IF_ERROR(ParseLabelLines(
        std::string_view(text + name_length + digest_length, labels_length), &e.labels));
    m->snapshots.push_back(std::move(e));
    p = p.subspan(size);
  }
  if (!p.empty()) return Malformed("snapshot list: bytes after the last entry");
  return Status::Ok();
}

void Encode(const ReplicaStat& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireReplicaStat));
  PutU64(w + FIELD(WireReplicaStat, size_bytes), m.size_bytes);
  PutU64(w + FIELD(WireReplicaStat, allocated_bytes), m.allocated_bytes);
  PutU64(w + FIELD(WireReplicaStat, epoch), m.epoch);
  PutU64(w + FIELD(WireReplicaStat, generation), m.generation);
  PutU32(w + FIELD(WireReplicaStat, flags), m.created ? kStatCreated : 0);
}

Status Decode(std::span<const uint8_t> p, ReplicaStat* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireReplicaStat), "replica stat"));
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(r + FIELD(WireReplicaStat, reserved)), "replica stat"));
  const uint32_t flags = GetU32(r + FIELD(WireReplicaStat, flags));
  if ((flags & ~kStatCreated) != 0) return Malformed("replica stat: unknown flags");
  m->size_bytes = GetU64(r + FIELD(WireReplicaStat, size_bytes));
  m->allocated_bytes = GetU64(r + FIELD(WireReplicaStat, allocated_bytes));
  m->epoch = GetU64(r + FIELD(WireReplicaStat, epoch));
  m->generation = GetU64(r + FIELD(WireReplicaStat, generation));
  m->created = (flags & kStatCreated) != 0;
  if (m->generation > m->epoch) return Malformed("replica stat: generation above the epoch");
  return Status::Ok();
}

}  // namespace shale::replication
