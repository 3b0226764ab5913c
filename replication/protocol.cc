#include "replication/protocol.h"

#include <cerrno>
#include <cstddef>
#include <cstring>

#include "engine/common/checksum.h"
#include "replication/protocol_codec.h"

namespace shale::replication {

using namespace protocol_codec;  // NOLINT: the codec helpers

namespace {

bool IsKnownType(uint8_t t) { return t >= 1 && t <= kMaxMsgType; }

// Flags a request of this type may carry.
uint16_t AllowedFlags(MsgType t) {
  switch (t) {
    case MsgType::kWrite:
    case MsgType::kDiscard:
      return kFlagFua;
    case MsgType::kWriteZeroes:
      return kFlagFua | kFlagNoUnmap;
    default:
      return 0;
  }
}

// Payload bounds of an OK reply.
std::pair<uint32_t, uint32_t> OkReplyBounds(MsgType t) {
  switch (t) {
    case MsgType::kAuth:
      return {sizeof(WireAuthReply), sizeof(WireAuthReply)};
    case MsgType::kOpen:
      return {sizeof(WireOpenReply), sizeof(WireOpenReply)};
    case MsgType::kRead:
      return {1, kMaxIoBytes};
    case MsgType::kHashRanges:
      return {sizeof(WireCount) + sizeof(WireHash128),
              sizeof(WireCount) + kMaxHashRegions * sizeof(WireHash128)};
    case MsgType::kGetInfo:
      return {sizeof(WireInfoReply), sizeof(WireInfoReply) + kMaxInfoExtents * sizeof(WireExtent)};
    case MsgType::kSetGeneration:
      return {sizeof(WireStateReply), sizeof(WireStateReply)};
    case MsgType::kCreateReplica:
    case MsgType::kStatReplica:
      return {sizeof(WireReplicaStat), sizeof(WireReplicaStat)};
    case MsgType::kSnapshotDigest:
      return {sizeof(WireString) + 1, sizeof(WireString) + kMaxDigestLength};
    case MsgType::kListSnapshots:
      return {sizeof(WireCount), kMaxSnapshotListBytes};
    default:  // WRITE, WRITE_ZEROES, DISCARD, FLUSH, SNAPSHOT, DELETE_REPLICA, DELETE_SNAPSHOT,
              // TAKE_SNAPSHOT
      return {0, 0};
  }
}

std::pair<uint32_t, uint32_t> RequestBounds(MsgType t) {
  switch (t) {
    case MsgType::kHello:
      return {sizeof(WireHello) + 1, sizeof(WireHello) + kMaxNodeNameLength};
    case MsgType::kAuth:
      return {sizeof(WireAuthRequest) + 1, sizeof(WireAuthRequest) + kMaxNodeNameLength};
    case MsgType::kOpen:
      return {sizeof(WireOpenRequest) + 1, sizeof(WireOpenRequest) + kMaxVolumeNameLength};
    case MsgType::kRead:
      return {sizeof(WireIoRange), sizeof(WireIoRange)};
    case MsgType::kWrite:
      return {sizeof(WireIoRange) + 1, sizeof(WireIoRange) + kMaxIoBytes};
    case MsgType::kWriteZeroes:
    case MsgType::kDiscard:
      return {sizeof(WireZeroRange), sizeof(WireZeroRange)};
    case MsgType::kFlush:
      return {0, 0};
    case MsgType::kHashRanges:
      return {sizeof(WireHashRangesRequest), sizeof(WireHashRangesRequest)};
    case MsgType::kGetInfo:
      return {sizeof(WireZeroRange), sizeof(WireZeroRange)};
    case MsgType::kSetGeneration:
      return {sizeof(WireSetGeneration), sizeof(WireSetGeneration)};
    case MsgType::kSnapshot:
      return {sizeof(WireString) + 1,
              sizeof(WireString) + kMaxSnapshotNameLength + kMaxSnapshotLabelsLength};
    case MsgType::kCreateReplica:
      return {sizeof(WireCreateReplica) + 1, sizeof(WireCreateReplica) + kMaxVolumeNameLength +
                                                 kMaxPoolNameLength + kMaxSourceLength};
    case MsgType::kDeleteReplica:
    case MsgType::kStatReplica:
    case MsgType::kListSnapshots:
      return {sizeof(WireReplicaRef) + 1, sizeof(WireReplicaRef) + kMaxVolumeNameLength};
    case MsgType::kSnapshotDigest:
    case MsgType::kDeleteSnapshot:
      return {sizeof(WireSnapshotRef) + 2,
              sizeof(WireSnapshotRef) + kMaxVolumeNameLength + kMaxSnapshotNameLength};
    case MsgType::kTakeSnapshot:
      return {sizeof(WireSnapshotRef) + 2, sizeof(WireSnapshotRef) + kMaxVolumeNameLength +
                                               kMaxSnapshotNameLength + kMaxSnapshotLabelsLength};
  }
  return {0, 0};
}

}  // namespace

void PutU16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t GetU32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string_view MsgTypeName(MsgType type) {
  switch (type) {
    case MsgType::kHello:
      return "HELLO";
    case MsgType::kAuth:
      return "AUTH";
    case MsgType::kOpen:
      return "OPEN";
    case MsgType::kRead:
      return "READ";
    case MsgType::kWrite:
      return "WRITE";
    case MsgType::kWriteZeroes:
      return "WRITE_ZEROES";
    case MsgType::kDiscard:
      return "DISCARD";
    case MsgType::kFlush:
      return "FLUSH";
    case MsgType::kHashRanges:
      return "HASH_RANGES";
    case MsgType::kGetInfo:
      return "GET_INFO";
    case MsgType::kSetGeneration:
      return "SET_GENERATION";
    case MsgType::kSnapshot:
      return "SNAPSHOT";
    case MsgType::kCreateReplica:
      return "CREATE_REPLICA";
    case MsgType::kDeleteReplica:
      return "DELETE_REPLICA";
    case MsgType::kStatReplica:
      return "STAT_REPLICA";
    case MsgType::kSnapshotDigest:
      return "SNAPSHOT_DIGEST";
    case MsgType::kDeleteSnapshot:
      return "DELETE_SNAPSHOT";
    case MsgType::kTakeSnapshot:
      return "TAKE_SNAPSHOT";
    case MsgType::kListSnapshots:
      return "LIST_SNAPSHOTS";
  }
  return "UNKNOWN";
}

std::string_view WireStatusName(WireStatus status) {
  switch (status) {
    case WireStatus::kOk:
      return "OK";
    case WireStatus::kIoError:
      return "EIO";
    case WireStatus::kNoSpace:
      return "ENOSPC";
    case WireStatus::kStaleEpoch:
      return "STALE_EPOCH";
    case WireStatus::kNotFound:
      return "NOT_FOUND";
    case WireStatus::kInvalid:
      return "INVALID";
    case WireStatus::kReadOnly:
      return "READ_ONLY";
    case WireStatus::kNotSupported:
      return "NOT_SUPPORTED";
    case WireStatus::kAuthFailed:
      return "AUTH_FAILED";
    case WireStatus::kUnavailable:
      return "UNAVAILABLE";
    case WireStatus::kPrecondition:
      return "PRECONDITION";
  }
  return "UNKNOWN";
}

WireStatus WireStatusFromStatus(const Status& status) {
  switch (status.code()) {
    case StatusCode::kOk:
      return WireStatus::kOk;
    case StatusCode::kNoSpace:
      return WireStatus::kNoSpace;
    case StatusCode::kNotFound:
      return WireStatus::kNotFound;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return WireStatus::kInvalid;
    case StatusCode::kPermissionDenied:
      return WireStatus::kReadOnly;
    case StatusCode::kNotSupported:
      return WireStatus::kNotSupported;
    case StatusCode::kFailedPrecondition:
      return WireStatus::kPrecondition;
    case StatusCode::kUnavailable:
    case StatusCode::kAborted:
    case StatusCode::kBusy:  // e.g. DELETE_REPLICA of a volume that is open
      return WireStatus::kUnavailable;
    default:
      return WireStatus::kIoError;
  }
}

Status StatusFromWire(WireStatus status, std::string_view message) {
  std::string msg = "replica: " + std::string(WireStatusName(status));
  if (!message.empty()) msg += ": " + std::string(message);
  switch (status) {
    case WireStatus::kOk:
      return Status::Ok();
    case WireStatus::kNoSpace:
      return Status::NoSpace(msg);
    case WireStatus::kStaleEpoch:
      return Status::FromErrno(ESTALE, msg);
    case WireStatus::kNotFound:
      return Status::NotFound(msg);
    case WireStatus::kInvalid:
      return Status::InvalidArgument(msg);
    case WireStatus::kReadOnly:
      return Status::PermissionDenied(msg);
    case WireStatus::kNotSupported:
      return Status::NotSupported(msg);
    case WireStatus::kAuthFailed:
      return Status::PermissionDenied(msg);
    case WireStatus::kUnavailable:
      return Status::Unavailable(msg);
    case WireStatus::kPrecondition:
      return Status::FailedPrecondition(msg);
    case WireStatus::kIoError:
      break;
  }
  return Status::IoError(msg, EIO);
}

void EncodeHeader(const FrameHeader& h, uint8_t* out) {
  PutU32(out + FIELD(WireFrameHeader, magic), h.magic);
  out[FIELD(WireFrameHeader, version)] = h.version;
  out[FIELD(WireFrameHeader, type)] = h.type;
  PutU16(out + FIELD(WireFrameHeader, flags), h.flags);
  PutU32(out + FIELD(WireFrameHeader, payload_length), h.payload_length);
  PutU32(out + FIELD(WireFrameHeader, status), h.status);
  PutU64(out + FIELD(WireFrameHeader, request_id), h.request_id);
  PutU64(out + FIELD(WireFrameHeader, epoch), h.epoch);
  PutU64(out + FIELD(WireFrameHeader, checksum), h.checksum);
}

std::pair<uint32_t, uint32_t> PayloadBounds(uint8_t type, uint32_t status) {
  const auto msg = static_cast<MsgType>(type & ~kReplyBit);
  if ((type & kReplyBit) == 0) return RequestBounds(msg);
  if (status != 0) return {sizeof(WireString), sizeof(WireString) + kMaxErrorMessageLength};
  return OkReplyBounds(msg);
}

Status DecodeHeader(std::span<const uint8_t, kFrameHeaderSize> bytes, FrameHeader* out) {
  const uint8_t* p = bytes.data();
  FrameHeader h;
  h.magic = GetU32(p + FIELD(WireFrameHeader, magic));
  h.version = p[FIELD(WireFrameHeader, version)];
  h.type = p[FIELD(WireFrameHeader, type)];
  h.flags = GetU16(p + FIELD(WireFrameHeader, flags));
  h.payload_length = GetU32(p + FIELD(WireFrameHeader, payload_length));
  h.status = GetU32(p + FIELD(WireFrameHeader, status));
  h.request_id = GetU64(p + FIELD(WireFrameHeader, request_id));
  h.epoch = GetU64(p + FIELD(WireFrameHeader, epoch));
  h.checksum = GetU64(p + FIELD(WireFrameHeader, checksum));
  if (h.magic != kFrameMagic) return Malformed("bad frame magic");
  if (h.version != kProtocolVersion) {
    return Malformed("unsupported protocol version " + std::to_string(h.version));
  }
  const uint8_t base = h.type & ~kReplyBit;
  if (!IsKnownType(base)) return Malformed("unknown frame type " + std::to_string(h.type));
  if (h.is_reply() && h.msg() == MsgType::kHello) return Malformed("HELLO has no reply");
  if (h.is_reply()) {
    if (h.flags != 0) return Malformed("flags on a reply");
    if (h.status > kMaxWireStatus) return Malformed("unknown status " + std::to_string(h.status));
  } else {
    if (h.status != 0) return Malformed("status set on a request");
    if ((h.flags & ~AllowedFlags(h.msg())) != 0) {
      return Malformed("flags " + std::to_string(h.flags) + " not valid for " +
                       std::string(MsgTypeName(h.msg())));
    }
  }
  const auto [min, max] = PayloadBounds(h.type, h.status);
  if (h.payload_length < min || h.payload_length > max) {
    return Malformed("payload length " + std::to_string(h.payload_length) + " of " +
                     std::string(MsgTypeName(h.msg())) + (h.is_reply() ? " reply" : "") +
                     " outside [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  *out = h;
  return Status::Ok();
}

uint64_t FrameChecksum(std::span<const uint8_t, kFrameHeaderSize> header,
                       std::initializer_list<std::span<const uint8_t>> payload) {
  HeaderBytes zeroed;
  std::memcpy(zeroed.data(), header.data(), kFrameHeaderSize);
  std::memset(zeroed.data() + FIELD(WireFrameHeader, checksum), 0, sizeof(uint64_t));
  Hash64Stream hash;
  hash.Update(zeroed.data(), zeroed.size());
  for (const auto& piece : payload) {
    if (!piece.empty()) hash.Update(piece.data(), piece.size());
  }
  return hash.Digest();
}

HeaderBytes SealFrame(FrameHeader h, std::initializer_list<std::span<const uint8_t>> payload) {
  size_t total = 0;
  for (const auto& piece : payload) total += piece.size();
  h.payload_length = static_cast<uint32_t>(total);
  h.checksum = 0;
  HeaderBytes out;
  EncodeHeader(h, out.data());
  PutU64(out.data() + FIELD(WireFrameHeader, checksum), FrameChecksum(out, payload));
  return out;
}

std::string EncodeFrame(const FrameHeader& h, std::string_view payload) {
  const HeaderBytes header = SealFrame(h, {AsBytes(payload)});
  std::string out(reinterpret_cast<const char*>(header.data()), header.size());
  out.append(payload);
  return out;
}

std::optional<size_t> DataOffset(const FrameHeader& h) {
  if (!h.is_reply() && h.msg() == MsgType::kWrite) return sizeof(WireIoRange);
  if (h.is_reply() && h.msg() == MsgType::kRead && h.status == 0) return 0;
  return std::nullopt;
}

Result<std::optional<ParsedFrame>> ParseFrame(std::span<const uint8_t> bytes) {
  if (bytes.size() < kFrameHeaderSize) return std::optional<ParsedFrame>();
  ParsedFrame f;
  SHALE_RETURN_IF_ERROR(DecodeHeader(bytes.first<kFrameHeaderSize>(), &f.header));
  const size_t size = kFrameHeaderSize + f.header.payload_length;
  if (bytes.size() < size) return std::optional<ParsedFrame>();
  f.payload = bytes.subspan(kFrameHeaderSize, f.header.payload_length);
  f.size = size;
  if (FrameChecksum(bytes.first<kFrameHeaderSize>(), {f.payload}) != f.header.checksum) {
    return Malformed("checksum mismatch");
  }
  return std::optional<ParsedFrame>(f);
}

// --- payloads --------------------------------------------------------------------------------

void Encode(const Hello& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireHello));
  std::memcpy(w + FIELD(WireHello, server_nonce), m.server_nonce.data(), kNonceSize);
  PutU64(w + FIELD(WireHello, max_bytes_in_flight), m.max_bytes_in_flight);
  PutU32(w + FIELD(WireHello, max_requests_in_flight), m.max_requests_in_flight);
  PutU16(w + FIELD(WireHello, node_name_length), static_cast<uint16_t>(m.server_node.size()));
  out->append(m.server_node);
}

Status Decode(std::span<const uint8_t> p, Hello* m) {
  if (p.size() < sizeof(WireHello)) return Malformed("HELLO payload too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU16(r + FIELD(WireHello, reserved)), "HELLO"));
  std::memcpy(m->server_nonce.data(), r + FIELD(WireHello, server_nonce), kNonceSize);
  m->max_bytes_in_flight = GetU64(r + FIELD(WireHello, max_bytes_in_flight));
  m->max_requests_in_flight = GetU32(r + FIELD(WireHello, max_requests_in_flight));
  if (m->max_requests_in_flight == 0 || m->max_bytes_in_flight == 0) {
    return Malformed("HELLO with a zero in-flight bound");
  }
  return TakeString(p, sizeof(WireHello), GetU16(r + FIELD(WireHello, node_name_length)),
                    kMaxNodeNameLength, false, "HELLO node name", &m->server_node);
}

void Encode(const AuthRequest& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireAuthRequest));
  std::memcpy(w + FIELD(WireAuthRequest, client_nonce), m.client_nonce.data(), kNonceSize);
  std::memcpy(w + FIELD(WireAuthRequest, client_proof), m.client_proof.data(), kMacSize);
  PutU16(w + FIELD(WireAuthRequest, node_name_length), static_cast<uint16_t>(m.client_node.size()));
  out->append(m.client_node);
}

Status Decode(std::span<const uint8_t> p, AuthRequest* m) {
  if (p.size() < sizeof(WireAuthRequest)) return Malformed("AUTH payload too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(
      GetU16(r + FIELD(WireAuthRequest, reserved)) | GetU32(r + FIELD(WireAuthRequest, reserved2)),
      "AUTH"));
  std::memcpy(m->client_nonce.data(), r + FIELD(WireAuthRequest, client_nonce), kNonceSize);
  std::memcpy(m->client_proof.data(), r + FIELD(WireAuthRequest, client_proof), kMacSize);
  return TakeString(p, sizeof(WireAuthRequest),
                    GetU16(r + FIELD(WireAuthRequest, node_name_length)), kMaxNodeNameLength, false,
                    "AUTH node name", &m->client_node);
}

void Encode(const AuthReply& m, std::string* out) {
  out->append(reinterpret_cast<const char*>(m.server_proof.data()), kMacSize);
}

Status Decode(std::span<const uint8_t> p, AuthReply* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireAuthReply), "AUTH reply"));
  std::memcpy(m->server_proof.data(), p.data(), kMacSize);
  return Status::Ok();
}

void Encode(const OpenRequest& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireOpenRequest));
  std::memcpy(w + FIELD(WireOpenRequest, volume_uuid), m.volume_uuid.data(), 16);
  PutU64(w + FIELD(WireOpenRequest, size_bytes), m.size_bytes);
  PutU16(w + FIELD(WireOpenRequest, volume_name_length), static_cast<uint16_t>(m.volume.size()));
  out->append(m.volume);
}

Status Decode(std::span<const uint8_t> p, OpenRequest* m) {
  if (p.size() < sizeof(WireOpenRequest)) return Malformed("OPEN payload too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(
      GetU16(r + FIELD(WireOpenRequest, reserved)) | GetU32(r + FIELD(WireOpenRequest, reserved2)),
      "OPEN"));
  std::memcpy(m->volume_uuid.data(), r + FIELD(WireOpenRequest, volume_uuid), 16);
  m->size_bytes = GetU64(r + FIELD(WireOpenRequest, size_bytes));
  return TakeString(p, sizeof(WireOpenRequest),
                    GetU16(r + FIELD(WireOpenRequest, volume_name_length)), kMaxVolumeNameLength,
                    false, "OPEN volume name", &m->volume);
}

void Encode(const OpenReply& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireOpenReply));
  PutU64(w + FIELD(WireOpenReply, size_bytes), m.size_bytes);
  PutU64(w + FIELD(WireOpenReply, generation), m.generation);
  PutU64(w + FIELD(WireOpenReply, epoch), m.epoch);
  PutU64(w + FIELD(WireOpenReply, max_bytes_in_flight), m.max_bytes_in_flight);
  PutU32(w + FIELD(WireOpenReply, max_requests_in_flight), m.max_requests_in_flight);
}

Status Decode(std::span<const uint8_t> p, OpenReply* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireOpenReply), "OPEN reply"));
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(r + FIELD(WireOpenReply, reserved)), "OPEN reply"));
  m->size_bytes = GetU64(r + FIELD(WireOpenReply, size_bytes));
  m->generation = GetU64(r + FIELD(WireOpenReply, generation));
  m->epoch = GetU64(r + FIELD(WireOpenReply, epoch));
  m->max_bytes_in_flight = GetU64(r + FIELD(WireOpenReply, max_bytes_in_flight));
  m->max_requests_in_flight = GetU32(r + FIELD(WireOpenReply, max_requests_in_flight));
  if (m->max_requests_in_flight == 0 || m->max_bytes_in_flight == 0) {
    return Malformed("OPEN reply with a zero in-flight bound");
  }
  return Status::Ok();
}

void Encode(const IoRange& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireIoRange));
  PutU64(w + FIELD(WireIoRange, offset), m.offset);
  PutU32(w + FIELD(WireIoRange, length), m.length);
}

Status Decode(std::span<const uint8_t> p, IoRange* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireIoRange), "I/O range"));
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(p.data() + FIELD(WireIoRange, reserved)), "I/O"));
  m->offset = GetU64(p.data() + FIELD(WireIoRange, offset));
  m->length = GetU32(p.data() + FIELD(WireIoRange, length));
  if (m->length == 0 || m->length > kMaxIoBytes) {
    return Malformed("I/O length " + std::to_string(m->length) + " outside [1, 8 MiB]");
  }
  return Status::Ok();
}

Status DecodeWrite(std::span<const uint8_t> prefix, size_t data_length, IoRange* m) {
  SHALE_RETURN_IF_ERROR(Decode(prefix, m));
  if (m->length != data_length) {
    return Malformed("WRITE length " + std::to_string(m->length) + " but " +
                     std::to_string(data_length) + " bytes of data");
  }
  return Status::Ok();
}

void Encode(const ZeroRange& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireZeroRange));
  PutU64(w + FIELD(WireZeroRange, offset), m.offset);
  PutU64(w + FIELD(WireZeroRange, length), m.length);
}

Status Decode(std::span<const uint8_t> p, ZeroRange* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireZeroRange), "range"));
  m->offset = GetU64(p.data() + FIELD(WireZeroRange, offset));
  m->length = GetU64(p.data() + FIELD(WireZeroRange, length));
  return Status::Ok();
}

void Encode(const HashRangesRequest& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireHashRangesRequest));
  PutU64(w + FIELD(WireHashRangesRequest, offset), m.offset);
  PutU64(w + FIELD(WireHashRangesRequest, length), m.length);
  PutU32(w + FIELD(WireHashRangesRequest, region_size), m.region_size);
}

Status Decode(std::span<const uint8_t> p, HashRangesRequest* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireHashRangesRequest), "HASH_RANGES"));
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(
      ReservedZero(GetU32(r + FIELD(WireHashRangesRequest, reserved)), "HASH_RANGES"));
  m->offset = GetU64(r + FIELD(WireHashRangesRequest, offset));
  m->length = GetU64(r + FIELD(WireHashRangesRequest, length));
  m->region_size = GetU32(r + FIELD(WireHashRangesRequest, region_size));
  return Status::Ok();
}

void Encode(const HashRangesReply& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireCount));
  PutU32(w + FIELD(WireCount, count), static_cast<uint32_t>(m.hashes.size()));
  for (const Hash128& h : m.hashes) {
    uint8_t* e = Tail(out, sizeof(WireHash128));
    PutU64(e + FIELD(WireHash128, low), h.low);
    PutU64(e + FIELD(WireHash128, high), h.high);
  }
}

Status Decode(std::span<const uint8_t> p, HashRangesReply* m) {
  if (p.size() < sizeof(WireCount)) return Malformed("HASH_RANGES reply too short");
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(p.data() + FIELD(WireCount, reserved)), "hashes"));
  const uint32_t count = GetU32(p.data() + FIELD(WireCount, count));
  if (count == 0 || count > kMaxHashRegions) return Malformed("HASH_RANGES reply count");
  SHALE_RETURN_IF_ERROR(
      Exactly(p, sizeof(WireCount) + size_t{count} * sizeof(WireHash128), "HASH_RANGES reply"));
  m->hashes.resize(count);
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = p.data() + sizeof(WireCount) + size_t{i} * sizeof(WireHash128);
    m->hashes[i] =
        Hash128{GetU64(e + FIELD(WireHash128, low)), GetU64(e + FIELD(WireHash128, high))};
  }
  return Status::Ok();
}

void Encode(const InfoRequest& m, std::string* out) { Encode(ZeroRange{m.offset, m.length}, out); }

Status Decode(std::span<const uint8_t> p, InfoRequest* m) {
  ZeroRange r;
  SHALE_RETURN_IF_ERROR(Decode(p, &r));
  m->offset = r.offset;
  m->length = r.length;
  return Status::Ok();
}

void Encode(const InfoReply& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireInfoReply));
  PutU64(w + FIELD(WireInfoReply, size_bytes), m.size_bytes);
  PutU64(w + FIELD(WireInfoReply, allocated_bytes), m.allocated_bytes);
  PutU64(w + FIELD(WireInfoReply, generation), m.generation);
  PutU64(w + FIELD(WireInfoReply, epoch), m.epoch);
  PutU64(w + FIELD(WireInfoReply, next_offset), m.next_offset);
  PutU32(w + FIELD(WireInfoReply, extent_count), static_cast<uint32_t>(m.allocated.size()));
  for (const auto& [offset, length] : m.allocated) {
    uint8_t* e = Tail(out, sizeof(WireExtent));
    PutU64(e + FIELD(WireExtent, offset), offset);
    PutU64(e + FIELD(WireExtent, length), length);
  }
}

Status Decode(std::span<const uint8_t> p, InfoReply* m) {
  if (p.size() < sizeof(WireInfoReply)) return Malformed("GET_INFO reply too short");
  const uint8_t* r = p.data();
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(r + FIELD(WireInfoReply, reserved)), "GET_INFO"));
  const uint32_t count = GetU32(r + FIELD(WireInfoReply, extent_count));
  if (count > kMaxInfoExtents) return Malformed("GET_INFO reply: too many extents");
  SHALE_RETURN_IF_ERROR(
      Exactly(p, sizeof(WireInfoReply) + size_t{count} * sizeof(WireExtent), "GET_INFO reply"));
  m->size_bytes = GetU64(r + FIELD(WireInfoReply, size_bytes));
  m->allocated_bytes = GetU64(r + FIELD(WireInfoReply, allocated_bytes));
  m->generation = GetU64(r + FIELD(WireInfoReply, generation));
  m->epoch = GetU64(r + FIELD(WireInfoReply, epoch));
  m->next_offset = GetU64(r + FIELD(WireInfoReply, next_offset));
  m->allocated.resize(count);
  uint64_t end = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = r + sizeof(WireInfoReply) + size_t{i} * sizeof(WireExtent);
    const uint64_t offset = GetU64(e + FIELD(WireExtent, offset));
    const uint64_t length = GetU64(e + FIELD(WireExtent, length));
    if (length == 0 || offset < end || length > m->size_bytes || offset > m->size_bytes - length) {
      return Malformed("GET_INFO reply: extents unsorted, empty or past the end");
    }
    end = offset + length;
    m->allocated[i] = {offset, length};
  }
  if (end > m->next_offset) return Malformed("GET_INFO reply: extent past next_offset");
  return Status::Ok();
}

void Encode(const SetGenerationRequest& m, std::string* out) {
  PutU64(Tail(out, sizeof(WireSetGeneration)) + FIELD(WireSetGeneration, generation), m.generation);
}

Status Decode(std::span<const uint8_t> p, SetGenerationRequest* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireSetGeneration), "SET_GENERATION"));
  m->generation = GetU64(p.data() + FIELD(WireSetGeneration, generation));
  return Status::Ok();
}

void Encode(const StateReply& m, std::string* out) {
  uint8_t* w = Tail(out, sizeof(WireStateReply));
  PutU64(w + FIELD(WireStateReply, epoch), m.epoch);
  PutU64(w + FIELD(WireStateReply, generation), m.generation);
}

Status Decode(std::span<const uint8_t> p, StateReply* m) {
  SHALE_RETURN_IF_ERROR(Exactly(p, sizeof(WireStateReply), "state reply"));
  m->epoch = GetU64(p.data() + FIELD(WireStateReply, epoch));
  m->generation = GetU64(p.data() + FIELD(WireStateReply, generation));
  if (m->generation > m->epoch) return Malformed("state reply: generation above the epoch");
  return Status::Ok();
}

void Encode(const SnapshotRequest& m, std::string* out) {
  const std::string labels = LabelLines(m.labels);
  uint8_t* w = Tail(out, sizeof(WireString));
  PutU32(w + FIELD(WireString, length), static_cast<uint32_t>(m.name.size()));
  PutU32(w + FIELD(WireString, reserved), static_cast<uint32_t>(labels.size()));
  out->append(m.name);
  out->append(labels);
}

Status Decode(std::span<const uint8_t> p, SnapshotRequest* m) {
  if (p.size() < sizeof(WireString)) return Malformed("SNAPSHOT payload too short");
  const uint32_t name_length = GetU32(p.data() + FIELD(WireString, length));
  const uint32_t labels_length = GetU32(p.data() + FIELD(WireString, reserved));
  if (name_length == 0 || name_length > kMaxSnapshotNameLength ||
      labels_length > kMaxSnapshotLabelsLength) {
    return Malformed("SNAPSHOT lengths out of range");
  }
  if (p.size() != sizeof(WireString) + name_length + labels_length) {
    return Malformed("SNAPSHOT lengths do not match the payload");
  }
  const auto* text = reinterpret_cast<const char*>(p.data() + sizeof(WireString));
  m->name.assign(text, name_length);
  return ParseLabelLines(std::string_view(text + name_length, labels_length), &m->labels);
}

void Encode(const ErrorReply& m, std::string* out) {
  AppendString(out, m.message, kMaxErrorMessageLength);
}

Status Decode(std::span<const uint8_t> p, ErrorReply* m) {
  return TakeWireString(p, kMaxErrorMessageLength, true, "error message", &m->message);
}

Status CheckIo(MsgType type, uint64_t offset, uint64_t length, uint64_t size) {
  if (length == 0) return Status::InvalidArgument("zero-length request");
  if (offset % kIoAlignment != 0 || length % kIoAlignment != 0) {
    return Status::InvalidArgument("offset and length must be multiples of 512");
  }
  if ((type == MsgType::kRead || type == MsgType::kWrite) && length > kMaxIoBytes) {
    return Status::InvalidArgument("READ/WRITE longer than 8 MiB");
  }
  if (offset > size || length > size - offset) {
    return Status::OutOfRange("range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                              ") past the end (" + std::to_string(size) + ")");
  }
  return Status::Ok();
}

Status CheckHashRanges(const HashRangesRequest& r, uint64_t size) {
  if (r.region_size < kMinHashRegionSize || r.region_size > kMaxHashRegionSize ||
      r.region_size % kMinHashRegionSize != 0) {
    return Status::InvalidArgument("region size must be a multiple of 4 KiB up to 8 MiB");
  }
  if (r.length == 0 || r.offset % kMinHashRegionSize != 0 || r.length % kIoAlignment != 0) {
    return Status::InvalidArgument("HASH_RANGES range must start 4 KiB-aligned and not be empty");
  }
  if (r.offset > size || r.length > size - r.offset) {
    return Status::OutOfRange("HASH_RANGES range past the end of the volume");
  }
  if ((r.length - 1) / r.region_size + 1 > kMaxHashRegions) {
    return Status::InvalidArgument("HASH_RANGES covers more than 1024 regions");
  }
  return Status::Ok();
}

uint32_t HashRegionCount(const HashRangesRequest& r) {
  return static_cast<uint32_t>((r.length - 1) / r.region_size + 1);
}

}  // namespace shale::replication
