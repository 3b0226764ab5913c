// The replica protocol's wire codec: pure functions over bytes, no I/O (fuzzed by
// tests/fuzz/replica_frame_fuzz.cc). Format and rules: docs/format/replica-protocol.md.
//
// Every message is a frame: a 40-byte header (little-endian) and a payload of at most
// kMaxPayload bytes. The header names the payload's length; DecodeHeader bounds it per message
// type before anyone reads or allocates for the payload, and the XXH3-64 checksum (of the header
// with the checksum field zero, then the payload) is verified before the payload is used.
// Payload decoders never trust a length field: every one is checked against the bytes present.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/common/checksum.h"
#include "engine/common/labels.h"
#include "engine/common/result.h"
#include "engine/common/units.h"

namespace shale::replication {

inline constexpr uint32_t kFrameMagic = 0x50524853;  // "SHRP" as bytes on the wire
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kFrameHeaderSize = 40;
// Largest READ/WRITE data of one request; callers split larger I/O.
inline constexpr uint32_t kMaxIoBytes = 8 * kMiB;
// Largest payload of any frame: a WRITE's 16-byte prefix and kMaxIoBytes of data, with room.
inline constexpr uint32_t kMaxPayload = kMaxIoBytes + 64;
inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kMacSize = 32;  // HMAC-SHA256
inline constexpr size_t kMaxNodeNameLength = 128;
inline constexpr size_t kMaxVolumeNameLength = 128;
inline constexpr size_t kMaxPoolNameLength = 128;
inline constexpr size_t kMaxSnapshotNameLength = 128;
// "VOLUME@SNAP" of CREATE_REPLICA's source.
inline constexpr size_t kMaxSourceLength = kMaxVolumeNameLength + 1 + kMaxSnapshotNameLength;
// TAKE_SNAPSHOT's and SNAPSHOT's labels: "KEY=VALUE\n" per label, at most kMaxLabels of the
// longest.
inline constexpr size_t kMaxSnapshotLabelsLength =
    kMaxLabels * (kMaxLabelKeyLength + 1 + kMaxLabelValueLength + 1);
inline constexpr size_t kMaxErrorMessageLength = 1024;
inline constexpr uint32_t kMaxHashRegions = 1024;         // per HASH_RANGES request
inline constexpr uint32_t kMinHashRegionSize = 4 * kKiB;  // and a multiple of it
inline constexpr uint32_t kMaxHashRegionSize = kMaxIoBytes;
inline constexpr uint32_t kMaxInfoExtents = 4096;  // allocated ranges per GET_INFO reply
inline constexpr uint32_t kIoAlignment = 512;      // offsets and lengths of volume I/O

// Message types. A reply has the request's type with kReplyBit set; HELLO has no reply.
enum class MsgType : uint8_t {
  kHello = 1,           // server -> client, first frame: server nonce, limits, node name
  kAuth = 2,            // client nonce, client node name, client proof; reply: server proof
  kOpen = 3,            // volume name, uuid, size (epoch in the header); reply: OpenReply
  kRead = 4,            // IoRange; reply: the data
  kWrite = 5,           // IoRange + data
  kWriteZeroes = 6,     // ZeroRange
  kDiscard = 7,         // ZeroRange
  kFlush = 8,           // empty
  kHashRanges = 9,      // HashRangesRequest; reply: HashRangesReply
  kGetInfo = 10,        // InfoRequest; reply: InfoReply
  kSetGeneration = 11,  // SetGenerationRequest; reply: StateReply
  kSnapshot = 12,       // snapshot name; reply: empty
  // Replica placement, before OPEN on a connection (any number of them, then OPEN or close).
  kCreateReplica = 13,  // CreateReplicaRequest; reply: ReplicaStat (idempotent by uuid)
  kDeleteReplica = 14,  // ReplicaRef; reply: empty (idempotent: a missing replica is OK)
  kStatReplica = 15,    // ReplicaRef; reply: ReplicaStat
  // Snapshots of a replica, before OPEN like placement (docs/replication.md, "Snapshots").
  kSnapshotDigest = 16,  // SnapshotRef; reply: SnapshotDigest (recomputed from the data)
  kDeleteSnapshot = 17,  // SnapshotRef; reply: empty (idempotent: a missing snapshot is OK)
  // Asks the node serving the volume (its target) to take snapshot `snapshot` of it, as
  // `shale snapshot create` there would (docs/replication.md, "Snapshots through any node").
  kTakeSnapshot = 18,  // SnapshotRef; reply: empty
  // The snapshots a replica volume holds (before OPEN, like placement): what a target on a node
  // without a replica lists as the volume's snapshots.
  kListSnapshots = 19,  // ReplicaRef; reply: SnapshotList
};
inline constexpr uint8_t kReplyBit = 0x80;
inline constexpr uint8_t kMaxMsgType = 19;
inline constexpr size_t kMaxDigestLength = 64;  // a snapshot digest: 32 hex digits today
std::string_view MsgTypeName(MsgType type);

// Request flags (header.flags). Replies carry none.
inline constexpr uint16_t kFlagFua = 1u << 0;      // WRITE, WRITE_ZEROES, DISCARD: durable first
inline constexpr uint16_t kFlagNoUnmap = 1u << 1;  // WRITE_ZEROES: keep the blocks allocated

// Status of a reply (header.status; always 0 in requests).
enum class WireStatus : uint32_t {
  kOk = 0,
  kIoError = 1,        // EIO: the replica's device or pool failed
  kNoSpace = 2,        // ENOSPC
  kStaleEpoch = 3,     // the request's epoch is older than the replica's persisted epoch
  kNotFound = 4,       // no such volume (OPEN)
  kInvalid = 5,        // bad arguments (range, alignment, uuid or size mismatch at OPEN)
  kReadOnly = 6,       // write to a read-only volume
  kNotSupported = 7,   // not available here (e.g. SNAPSHOT without a snapshot handler)
  kAuthFailed = 8,     // the peer did not prove the cluster secret
  kUnavailable = 9,    // the server is shutting down or the volume is closing
  kPrecondition = 10,  // refused in the replica's present state (e.g. TAKE_SNAPSHOT of a volume
                       // this node does not serve)
};
inline constexpr uint32_t kMaxWireStatus = 10;
std::string_view WireStatusName(WireStatus status);
// Engine status -> wire status (server side) and back (client side, with the peer's message).
WireStatus WireStatusFromStatus(const Status& status);
Status StatusFromWire(WireStatus status, std::string_view message);

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  uint8_t version = kProtocolVersion;
  uint8_t type = 0;  // MsgType, | kReplyBit for replies
  uint16_t flags = 0;
  uint32_t payload_length = 0;
  uint32_t status = 0;  // WireStatus in replies
  uint64_t request_id = 0;
  uint64_t epoch = 0;
  uint64_t checksum = 0;

  bool is_reply() const { return (type & kReplyBit) != 0; }
  MsgType msg() const { return static_cast<MsgType>(type & ~kReplyBit); }
  WireStatus wire_status() const { return static_cast<WireStatus>(status); }
};

// The header as laid out on the wire (little-endian fields, no padding).
struct WireFrameHeader {
  uint32_t magic;
  uint8_t version;
  uint8_t type;
  uint16_t flags;
  uint32_t payload_length;
  uint32_t status;
  uint64_t request_id;
  uint64_t epoch;
  uint64_t checksum;
};
static_assert(sizeof(WireFrameHeader) == kFrameHeaderSize);

using HeaderBytes = std::array<uint8_t, kFrameHeaderSize>;

// Writes the header as it is (checksum field included).
void EncodeHeader(const FrameHeader& h, uint8_t* out);
// Parses and checks a header: magic, version, type, flags valid for the type, status (0 in
// requests, known in replies), payload length within the bounds of the type. The message says
// which field is wrong. Does not check the checksum (the payload is not there yet).
Status DecodeHeader(std::span<const uint8_t, kFrameHeaderSize> bytes, FrameHeader* out);
// Bounds [min, max] of the payload length of a frame of this type/status.
std::pair<uint32_t, uint32_t> PayloadBounds(uint8_t type, uint32_t status);

// Checksum of a frame: XXH3-64 of the header with its checksum field zero, then the payload
// (given in pieces, in order).
uint64_t FrameChecksum(std::span<const uint8_t, kFrameHeaderSize> header,
                       std::initializer_list<std::span<const uint8_t>> payload);
// Encodes `h` with payload_length = total size of `payload` and its checksum.
HeaderBytes SealFrame(FrameHeader h, std::initializer_list<std::span<const uint8_t>> payload);
// A whole frame (header + payload) as one string, sealed.
std::string EncodeFrame(const FrameHeader& h, std::string_view payload);

// Where a frame's bulk data starts in its payload: 16 for a WRITE request, 0 for an OK READ
// reply; nullopt for frames without bulk data (their payloads are small and bounded).
std::optional<size_t> DataOffset(const FrameHeader& h);

// A whole frame parsed out of a buffer (for tests and the fuzz target; connections use
// FrameReader, transport.h, which receives large data in place).
struct ParsedFrame {
  FrameHeader header;
  std::span<const uint8_t> payload;
  size_t size = 0;  // bytes consumed: header + payload
};
// nullopt: more bytes are needed. Error: bad header or checksum (the stream is unusable).
Result<std::optional<ParsedFrame>> ParseFrame(std::span<const uint8_t> bytes);

// --- payloads --------------------------------------------------------------------------------
// Each has Encode (appends to a string) and Decode (the whole payload; extra or missing bytes
// are errors). Fixed-size ones have a Wire struct with a static_assert on its size.

struct Hello {  // kHello
  std::array<uint8_t, kNonceSize> server_nonce{};
  uint32_t max_requests_in_flight = 0;  // the server's per-connection bounds
  uint64_t max_bytes_in_flight = 0;
  std::string server_node;
};
struct WireHello {  // followed by the node name
  uint8_t server_nonce[kNonceSize];
  uint64_t max_bytes_in_flight;
  uint32_t max_requests_in_flight;
  uint16_t node_name_length;
  uint16_t reserved;
};
static_assert(sizeof(WireHello) == 48);

struct AuthRequest {  // kAuth
  std::array<uint8_t, kNonceSize> client_nonce{};
  std::array<uint8_t, kMacSize> client_proof{};
  std::string client_node;
};
struct WireAuthRequest {  // followed by the node name
  uint8_t client_nonce[kNonceSize];
  uint8_t client_proof[kMacSize];
  uint16_t node_name_length;
  uint16_t reserved;
  uint32_t reserved2;
};
static_assert(sizeof(WireAuthRequest) == 72);

struct AuthReply {  // kAuth | reply, OK
  std::array<uint8_t, kMacSize> server_proof{};
};
struct WireAuthReply {
  uint8_t server_proof[kMacSize];
};
static_assert(sizeof(WireAuthReply) == 32);

struct OpenRequest {  // kOpen (the epoch is the header's)
  std::array<uint8_t, 16> volume_uuid{};
  uint64_t size_bytes = 0;
  std::string volume;
};
struct WireOpenRequest {  // followed by the volume name
  uint8_t volume_uuid[16];
  uint64_t size_bytes;
  uint16_t volume_name_length;
  uint16_t reserved;
  uint32_t reserved2;
};
static_assert(sizeof(WireOpenRequest) == 32);

struct OpenReply {  // kOpen | reply, OK
  uint64_t size_bytes = 0;
  uint64_t generation = 0;
  uint64_t epoch = 0;  // the replica's persisted epoch after the OPEN
  uint32_t max_requests_in_flight = 0;
  uint64_t max_bytes_in_flight = 0;
};
struct WireOpenReply {
  uint64_t size_bytes;
  uint64_t generation;
  uint64_t epoch;
  uint64_t max_bytes_in_flight;
  uint32_t max_requests_in_flight;
  uint32_t reserved;
};
static_assert(sizeof(WireOpenReply) == 40);

struct IoRange {  // kRead, and the prefix of kWrite
  uint64_t offset = 0;
  uint32_t length = 0;
};
struct WireIoRange {
  uint64_t offset;
  uint32_t length;
  uint32_t reserved;
};
static_assert(sizeof(WireIoRange) == 16);

struct ZeroRange {  // kWriteZeroes, kDiscard
  uint64_t offset = 0;
  uint64_t length = 0;
};
struct WireZeroRange {
  uint64_t offset;
  uint64_t length;
};
static_assert(sizeof(WireZeroRange) == 16);

struct HashRangesRequest {  // kHashRanges: XXH3-128 of each region of [offset, offset+length)
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t region_size = 0;
};
struct WireHashRangesRequest {
  uint64_t offset;
  uint64_t length;
  uint32_t region_size;
  uint32_t reserved;
};
static_assert(sizeof(WireHashRangesRequest) == 24);
struct HashRangesReply {
  std::vector<Hash128> hashes;  // one per region, in order (the last may be shorter)
};
struct WireCount {  // count of the entries that follow (hashes, extents)
  uint32_t count;
  uint32_t reserved;
};
static_assert(sizeof(WireCount) == 8);
struct WireHash128 {
  uint64_t low;
  uint64_t high;
};
static_assert(sizeof(WireHash128) == 16);

struct InfoRequest {  // kGetInfo: allocated ranges of [offset, offset+length) (length 0: none)
  uint64_t offset = 0;
  uint64_t length = 0;
};
struct InfoReply {
  uint64_t size_bytes = 0;
  uint64_t allocated_bytes = 0;
  uint64_t generation = 0;
  uint64_t epoch = 0;
  uint64_t next_offset = 0;  // where the report of allocated ranges ended (ask again from here)
  std::vector<std::pair<uint64_t, uint64_t>> allocated;  // (offset, length), sorted
};
struct WireInfoReply {  // followed by extent_count WireExtents
  uint64_t size_bytes;
  uint64_t allocated_bytes;
  uint64_t generation;
  uint64_t epoch;
  uint64_t next_offset;
  uint32_t extent_count;
  uint32_t reserved;
};
static_assert(sizeof(WireInfoReply) == 48);
struct WireExtent {
  uint64_t offset;
  uint64_t length;
};
static_assert(sizeof(WireExtent) == 16);

struct SetGenerationRequest {  // kSetGeneration: generation <= the header's epoch
  uint64_t generation = 0;
};
struct WireSetGeneration {
  uint64_t generation;
};
static_assert(sizeof(WireSetGeneration) == 8);
struct StateReply {  // kSetGeneration | reply, OK: the persisted state
  uint64_t epoch = 0;
  uint64_t generation = 0;
};
struct WireStateReply {
  uint64_t epoch;
  uint64_t generation;
};
static_assert(sizeof(WireStateReply) == 16);

struct SnapshotRequest {  // kSnapshot: WireString (length = the name's, reserved = the labels')
  std::string name;
  Labels labels;  // the copy's labels (a target without a replica sends them; else none)
};
// CREATE_REPLICA: makes volume `volume` in `pool` (empty: the server's replica pool) of
// `size_bytes`, labelled as a replica of `volume_uuid`, with the header's epoch persisted.
// Idempotent: an existing replica of the same uuid, size (and pool, if named) is OK.
struct CreateReplicaRequest {
  std::array<uint8_t, 16> volume_uuid{};
  uint64_t size_bytes = 0;
  std::string volume;
  std::string pool;
  // "VOLUME@SNAP": the replica is a clone of that local snapshot (a replicated clone), else empty.
  std::string source;
};
struct WireCreateReplica {  // followed by the volume name, the pool name, then the source
  uint8_t volume_uuid[16];
  uint64_t size_bytes;
  uint16_t volume_name_length;  // 1..128
  uint16_t pool_name_length;    // 0..128
  uint16_t source_length;       // 0, or 3..257 ("VOLUME@SNAP")
  uint16_t reserved;
};
static_assert(sizeof(WireCreateReplica) == 32);
// DELETE_REPLICA and STAT_REPLICA: the replica volume `volume` of `volume_uuid`.
struct ReplicaRef {
  std::array<uint8_t, 16> volume_uuid{};
  std::string volume;
};
struct WireReplicaRef {  // followed by the volume name
  uint8_t volume_uuid[16];
  uint16_t volume_name_length;  // 1..128
  uint16_t reserved;
  uint32_t reserved2;
};
static_assert(sizeof(WireReplicaRef) == 24);
// SNAPSHOT_DIGEST and DELETE_SNAPSHOT: snapshot `snapshot` of the replica volume `volume` of
// `volume_uuid`.
struct SnapshotRef {
  std::array<uint8_t, 16> volume_uuid{};
  std::string volume;
  std::string snapshot;
  Labels labels;  // TAKE_SNAPSHOT only (the others' payload bounds leave no room for them)
};
struct WireSnapshotRef {  // followed by the volume name, the snapshot name, then the labels
  uint8_t volume_uuid[16];
  uint16_t volume_name_length;    // 1..128
  uint16_t snapshot_name_length;  // 1..128
  uint32_t labels_length;  // 0..kMaxSnapshotLabelsLength: "KEY=VALUE\n" per label, keys ascending
};
static_assert(sizeof(WireSnapshotRef) == 24);
struct SnapshotDigest {  // SNAPSHOT_DIGEST reply, OK: WireString + the digest (1..64 bytes)
  std::string digest;
};
// LIST_SNAPSHOTS reply, OK: WireCount {count, flags} then per snapshot a WireSnapshotEntry, its
// name, its digest and its labels ("KEY=VALUE\n" lines, as SNAPSHOT's). Entries that would take
// the reply past kMaxSnapshotListBytes (a frame the reader holds whole) are left out and flag
// kListTruncated says so.
struct SnapshotEntry {
  std::string name;  // the part after '@'
  uint64_t created_unix_ns = 0;
  uint64_t size_bytes = 0;
  std::string digest;  // "" while the replica has not computed it
  Labels labels;
};
struct SnapshotList {
  std::vector<SnapshotEntry> snapshots;
  bool truncated = false;
};
inline constexpr uint32_t kListTruncated = 1;
inline constexpr uint32_t kMaxSnapshotListBytes = 192 * 1024;
struct WireSnapshotEntry {
  uint64_t created_unix_ns;
  uint64_t size_bytes;
  uint16_t name_length;    // 1..128
  uint16_t digest_length;  // 0..kMaxDigestLength
  uint32_t labels_length;  // 0..kMaxSnapshotLabelsLength
};
static_assert(sizeof(WireSnapshotEntry) == 24);
struct ReplicaStat {  // CREATE_REPLICA and STAT_REPLICA replies, OK
  uint64_t size_bytes = 0;
  uint64_t allocated_bytes = 0;
  uint64_t epoch = 0;       // persisted
  uint64_t generation = 0;  // persisted
  bool created = false;     // CREATE_REPLICA: made by this request (false: it existed)
};
struct WireReplicaStat {
  uint64_t size_bytes;
  uint64_t allocated_bytes;
  uint64_t epoch;
  uint64_t generation;
  uint32_t flags;  // bit 0: created
  uint32_t reserved;
};
static_assert(sizeof(WireReplicaStat) == 40);
inline constexpr uint32_t kStatCreated = 1;

struct ErrorReply {  // any reply with a status other than OK
  std::string message;
};
struct WireString {  // a name or message: its length, then its bytes
  uint32_t length;
  uint32_t reserved;
};
static_assert(sizeof(WireString) == 8);

void Encode(const Hello& m, std::string* out);
void Encode(const AuthRequest& m, std::string* out);
void Encode(const AuthReply& m, std::string* out);
void Encode(const OpenRequest& m, std::string* out);
void Encode(const OpenReply& m, std::string* out);
void Encode(const IoRange& m, std::string* out);
void Encode(const ZeroRange& m, std::string* out);
void Encode(const HashRangesRequest& m, std::string* out);
void Encode(const HashRangesReply& m, std::string* out);
void Encode(const InfoRequest& m, std::string* out);
void Encode(const InfoReply& m, std::string* out);
void Encode(const SetGenerationRequest& m, std::string* out);
void Encode(const StateReply& m, std::string* out);
void Encode(const SnapshotRequest& m, std::string* out);
void Encode(const CreateReplicaRequest& m, std::string* out);
void Encode(const ReplicaRef& m, std::string* out);
void Encode(const ReplicaStat& m, std::string* out);
void Encode(const SnapshotRef& m, std::string* out);
void Encode(const SnapshotDigest& m, std::string* out);
void Encode(const SnapshotList& m, std::string* out);
void Encode(const ErrorReply& m, std::string* out);  // truncates to kMaxErrorMessageLength

Status Decode(std::span<const uint8_t> p, Hello* m);
Status Decode(std::span<const uint8_t> p, AuthRequest* m);
Status Decode(std::span<const uint8_t> p, AuthReply* m);
Status Decode(std::span<const uint8_t> p, OpenRequest* m);
Status Decode(std::span<const uint8_t> p, OpenReply* m);
Status Decode(std::span<const uint8_t> p, IoRange* m);  // a READ; length in [1, kMaxIoBytes]
// A WRITE's prefix (its first 16 payload bytes); its length must equal data_length.
Status DecodeWrite(std::span<const uint8_t> prefix, size_t data_length, IoRange* m);
Status Decode(std::span<const uint8_t> p, ZeroRange* m);
Status Decode(std::span<const uint8_t> p, HashRangesRequest* m);
Status Decode(std::span<const uint8_t> p, HashRangesReply* m);
Status Decode(std::span<const uint8_t> p, InfoRequest* m);
Status Decode(std::span<const uint8_t> p, InfoReply* m);
Status Decode(std::span<const uint8_t> p, SetGenerationRequest* m);
Status Decode(std::span<const uint8_t> p, StateReply* m);
Status Decode(std::span<const uint8_t> p, SnapshotRequest* m);
Status Decode(std::span<const uint8_t> p, CreateReplicaRequest* m);
Status Decode(std::span<const uint8_t> p, ReplicaRef* m);
Status Decode(std::span<const uint8_t> p, ReplicaStat* m);
Status Decode(std::span<const uint8_t> p, SnapshotList* m);
Status Decode(std::span<const uint8_t> p, SnapshotRef* m);
Status Decode(std::span<const uint8_t> p, SnapshotDigest* m);
Status Decode(std::span<const uint8_t> p, ErrorReply* m);

// Semantic checks of decoded requests (the server runs them before any I/O; the reply is
// kInvalid, the connection stays up). `size` is the volume's size.
Status CheckIo(MsgType type, uint64_t offset, uint64_t length, uint64_t size);
Status CheckHashRanges(const HashRangesRequest& r, uint64_t size);
// Number of regions a valid HASH_RANGES request covers.
uint32_t HashRegionCount(const HashRangesRequest& r);

// Little-endian helpers shared by the codec and its tests.
void PutU16(uint8_t* p, uint16_t v);
void PutU32(uint8_t* p, uint32_t v);
void PutU64(uint8_t* p, uint64_t v);
uint16_t GetU16(const uint8_t* p);
uint32_t GetU32(const uint8_t* p);
uint64_t GetU64(const uint8_t* p);

inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace shale::replication
