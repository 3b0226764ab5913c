// The replica protocol codec: header and payload round trips, and the rejection of every
// malformed field (magic, version, type, flags, status, lengths, checksums, names, counts).
#include "replication/protocol.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace shale::replication {
namespace {

std::span<const uint8_t, kFrameHeaderSize> Hdr(const std::string& s) {
  return std::span<const uint8_t, kFrameHeaderSize>(reinterpret_cast<const uint8_t*>(s.data()),
                                                    kFrameHeaderSize);
}

FrameHeader Req(MsgType t, uint32_t payload = 0, uint16_t flags = 0) {
  FrameHeader h;
  h.type = static_cast<uint8_t>(t);
  h.flags = flags;
  h.payload_length = payload;
  h.request_id = 42;
  h.epoch = 7;
  return h;
}

FrameHeader Rep(MsgType t, uint32_t payload, WireStatus status = WireStatus::kOk) {
  FrameHeader h = Req(t, payload);
  h.type |= kReplyBit;
  h.status = static_cast<uint32_t>(status);
  return h;
}

Status DecodeOnly(const FrameHeader& h) {
  std::string bytes(kFrameHeaderSize, '\0');
  EncodeHeader(h, reinterpret_cast<uint8_t*>(bytes.data()));
  FrameHeader out;
  return DecodeHeader(Hdr(bytes), &out);
}

TEST(ReplicaProtocol, HeaderRoundTrip) {
  FrameHeader h = Req(MsgType::kWrite, 16 + 4096, kFlagFua);
  h.request_id = 0x0102030405060708;
  h.epoch = 0x1112131415161718;
  h.checksum = 0x2122232425262728;
  std::string bytes(kFrameHeaderSize, '\0');
  EncodeHeader(h, reinterpret_cast<uint8_t*>(bytes.data()));
  EXPECT_EQ(bytes.substr(0, 4), "SHRP");
  FrameHeader out;
  ASSERT_TRUE(DecodeHeader(Hdr(bytes), &out).ok());
  EXPECT_EQ(out.type, h.type);
  EXPECT_EQ(out.flags, h.flags);
  EXPECT_EQ(out.payload_length, h.payload_length);
  EXPECT_EQ(out.request_id, h.request_id);
  EXPECT_EQ(out.epoch, h.epoch);
  EXPECT_EQ(out.checksum, h.checksum);
  EXPECT_EQ(static_cast<uint8_t>(bytes[16]), 0x08);  // little-endian request id
}

TEST(ReplicaProtocol, HeaderRejectsEveryBadField) {
  FrameHeader h = Req(MsgType::kFlush);
  ASSERT_TRUE(DecodeOnly(h).ok());

  FrameHeader bad = h;
  bad.magic = 0x4e42444d;
  EXPECT_EQ(DecodeOnly(bad).code(), StatusCode::kCorruption);
  bad = h;
  bad.version = 2;
  EXPECT_FALSE(DecodeOnly(bad).ok());
  for (uint8_t t : {0, 18, 0x7f, 0x80, 0x90, 0xff, 0x81 /* HELLO reply */}) {
    bad = h;
    bad.type = t;
    EXPECT_FALSE(DecodeOnly(bad).ok()) << int{t};
  }
  bad = h;
  bad.status = 1;  // status on a request
  EXPECT_FALSE(DecodeOnly(bad).ok());
  // Flags: FUA only on WRITE/WRITE_ZEROES/DISCARD, NO_UNMAP only on WRITE_ZEROES, none on replies.
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kRead, 16, kFlagFua)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kWrite, 17, kFlagNoUnmap)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kWrite, 17, 1u << 7)).ok());
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kWriteZeroes, 16, kFlagFua | kFlagNoUnmap)).ok());
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kDiscard, 16, kFlagFua)).ok());
  FrameHeader rep = Rep(MsgType::kWrite, 0);
  EXPECT_TRUE(DecodeOnly(rep).ok());
  rep.flags = kFlagFua;
  EXPECT_FALSE(DecodeOnly(rep).ok());
  EXPECT_FALSE(
      DecodeOnly(Rep(MsgType::kWrite, 8, static_cast<WireStatus>(kMaxWireStatus + 1))).ok());
}

TEST(ReplicaProtocol, HeaderBoundsEveryLength) {
  // Fixed-size requests: one byte more or less is refused.
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kRead, 16)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kRead, 15)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kRead, 17)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kFlush, 1)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kHashRanges, 23)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kSetGeneration, 9)).ok());
  // WRITE: at least one byte of data, at most 8 MiB.
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kWrite, 16)).ok());
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kWrite, 16 + kMaxIoBytes)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kWrite, 16 + kMaxIoBytes + 1)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kWrite, 0xffffffff)).ok());
  // Names: bounded.
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kOpen, sizeof(WireOpenRequest))).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kOpen, sizeof(WireOpenRequest) + 129)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kAuth, sizeof(WireAuthRequest) + 129)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kCreateReplica, sizeof(WireCreateReplica))).ok());
  // Volume and pool names, and a source VOLUME@SNAP: 128 + 128 + 257 bytes at most.
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kCreateReplica, sizeof(WireCreateReplica) + 513)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kCreateReplica, sizeof(WireCreateReplica) + 514)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kDeleteReplica, sizeof(WireReplicaRef) + 129)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kStatReplica, sizeof(WireReplicaRef))).ok());
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kListSnapshots, sizeof(WireReplicaRef) + 128)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kListSnapshots, sizeof(WireReplicaRef) + 129)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kListSnapshots, sizeof(WireCount) - 1)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kSnapshotDigest, sizeof(WireSnapshotRef) + 1)).ok());
  EXPECT_TRUE(DecodeOnly(Req(MsgType::kDeleteSnapshot, sizeof(WireSnapshotRef) + 256)).ok());
  EXPECT_FALSE(DecodeOnly(Req(MsgType::kDeleteSnapshot, sizeof(WireSnapshotRef) + 257)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kDeleteReplica, 1)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kStatReplica, sizeof(WireReplicaStat) - 1)).ok());
  EXPECT_TRUE(DecodeOnly(Rep(MsgType::kCreateReplica, sizeof(WireReplicaStat))).ok());
  // Replies: READ data up to 8 MiB, nothing for WRITE, bounded error messages.
  EXPECT_TRUE(DecodeOnly(Rep(MsgType::kRead, kMaxIoBytes)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kRead, kMaxIoBytes + 1)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kRead, 0)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kWrite, 1)).ok());
  EXPECT_TRUE(DecodeOnly(Rep(MsgType::kRead, 8, WireStatus::kIoError)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kRead, 7, WireStatus::kIoError)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kRead, 8 + 1025, WireStatus::kIoError)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kOpen, 39)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kHashRanges, 8)).ok());
  EXPECT_FALSE(DecodeOnly(Rep(MsgType::kGetInfo, 48 + 16 * (kMaxInfoExtents + 1))).ok());
  // No payload type allows more than kMaxPayload.
  for (uint8_t t = 1; t <= kMaxMsgType; ++t) {
    for (uint32_t status : {0u, 1u}) {
      EXPECT_LE(PayloadBounds(t, status).second, kMaxPayload);
      EXPECT_LE(PayloadBounds(t | kReplyBit, status).second, kMaxPayload);
    }
  }
}

TEST(ReplicaProtocol, FramesAreChecksummed) {
  std::string payload;
  Encode(IoRange{4096, 8}, &payload);
  payload += "abcdefgh";
  const std::string frame = EncodeFrame(Req(MsgType::kWrite), payload);
  ASSERT_EQ(frame.size(), kFrameHeaderSize + 24);
  auto parsed = ParseFrame(AsBytes(frame));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->has_value());
  EXPECT_EQ((*parsed)->size, frame.size());
  EXPECT_EQ((*parsed)->header.payload_length, 24u);
  IoRange r;
  ASSERT_TRUE(DecodeWrite((*parsed)->payload.first(16), 8, &r).ok());
  EXPECT_EQ(r.offset, 4096u);
  EXPECT_FALSE(DecodeWrite((*parsed)->payload.first(16), 9, &r).ok());

  // Truncated: more bytes needed, at every length.
  for (size_t n = 0; n < frame.size(); ++n) {
    auto p = ParseFrame(AsBytes(std::string_view(frame).substr(0, n)));
    ASSERT_TRUE(p.ok()) << n;
    EXPECT_FALSE(p->has_value()) << n;
  }
  // Any flipped bit in the payload, or in a header field the decoder accepts, is caught by the
  // checksum.
  for (size_t i : {size_t{16}, size_t{24}, kFrameHeaderSize, frame.size() - 1}) {
    std::string bad = frame;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    auto p = ParseFrame(AsBytes(bad));
    ASSERT_FALSE(p.ok()) << i;
    EXPECT_EQ(p.status().code(), StatusCode::kCorruption);
  }
  // The checksum of the header covers the checksum field as zero.
  HeaderBytes h;
  std::memcpy(h.data(), frame.data(), kFrameHeaderSize);
  EXPECT_EQ(FrameChecksum(h, {AsBytes(payload)}), (*parsed)->header.checksum);
}

template <typename T>
T RoundTrip(const T& in) {
  std::string bytes;
  Encode(in, &bytes);
  T out;
  const Status st = Decode(AsBytes(bytes), &out);
  EXPECT_TRUE(st.ok()) << st;
  // Truncated or extended by a byte: refused.
  if (!bytes.empty()) {
    T t;
    EXPECT_FALSE(Decode(AsBytes(std::string_view(bytes).substr(0, bytes.size() - 1)), &t).ok());
  }
  T t;
  EXPECT_FALSE(Decode(AsBytes(bytes + "x"), &t).ok());
  return out;
}

TEST(ReplicaProtocol, PayloadRoundTrips) {
  Hello hello;
  hello.server_nonce.fill(7);
  hello.max_requests_in_flight = 256;
  hello.max_bytes_in_flight = 32 << 20;
  hello.server_node = "node-b";
  Hello h2 = RoundTrip(hello);
  EXPECT_EQ(h2.server_nonce, hello.server_nonce);
  EXPECT_EQ(h2.max_bytes_in_flight, hello.max_bytes_in_flight);
  EXPECT_EQ(h2.server_node, "node-b");

  AuthRequest auth;
  auth.client_nonce.fill(1);
  auth.client_proof.fill(2);
  auth.client_node = "node-a";
  AuthRequest a2 = RoundTrip(auth);
  EXPECT_EQ(a2.client_proof, auth.client_proof);
  EXPECT_EQ(a2.client_node, "node-a");

  OpenRequest open;
  open.volume_uuid.fill(9);
  open.size_bytes = 1 << 30;
  open.volume = "data";
  OpenRequest o2 = RoundTrip(open);
  EXPECT_EQ(o2.volume, "data");
  EXPECT_EQ(o2.size_bytes, 1u << 30);

  OpenReply reply{1 << 30, 3, 7, 256, 1 << 25};
  OpenReply r2 = RoundTrip(reply);
  EXPECT_EQ(r2.generation, 3u);
  EXPECT_EQ(r2.epoch, 7u);
  EXPECT_EQ(r2.max_requests_in_flight, 256u);

  EXPECT_EQ(RoundTrip(IoRange{512, 4096}).length, 4096u);
  EXPECT_EQ(RoundTrip(ZeroRange{0, 1ull << 40}).length, 1ull << 40);
  EXPECT_EQ(RoundTrip(HashRangesRequest{0, 8 << 20, 1 << 20}).region_size, 1u << 20);
  HashRangesReply hashes;
  hashes.hashes = {Hash128{1, 2}, Hash128{3, 4}};
  EXPECT_EQ(RoundTrip(hashes).hashes, hashes.hashes);
  InfoReply info;
  info.size_bytes = 1 << 20;
  info.allocated_bytes = 8192;
  info.generation = 2;
  info.epoch = 5;
  info.next_offset = 1 << 20;
  info.allocated = {{0, 4096}, {65536, 4096}};
  EXPECT_EQ(RoundTrip(info).allocated, info.allocated);
  EXPECT_EQ(RoundTrip(SetGenerationRequest{6}).generation, 6u);
  EXPECT_EQ(RoundTrip(StateReply{7, 6}).generation, 6u);
  EXPECT_EQ(RoundTrip(SnapshotRequest{"snap-1"}).name, "snap-1");
  EXPECT_EQ(RoundTrip(ErrorReply{"disk on fire"}).message, "disk on fire");

  CreateReplicaRequest create;
  create.volume_uuid.fill(3);
  create.size_bytes = 1 << 30;
  create.volume = "data";
  create.pool = "fast";
  CreateReplicaRequest c2 = RoundTrip(create);
  EXPECT_EQ(c2.volume_uuid, create.volume_uuid);
  EXPECT_EQ(c2.size_bytes, create.size_bytes);
  EXPECT_EQ(c2.volume, "data");
  EXPECT_EQ(c2.pool, "fast");
  create.pool.clear();
  EXPECT_EQ(RoundTrip(create).pool, "");
  EXPECT_EQ(RoundTrip(create).source, "");
  create.source = "data@snap-1";
  c2 = RoundTrip(create);
  EXPECT_EQ(c2.source, "data@snap-1");
  EXPECT_EQ(c2.volume, "data");
  ReplicaRef ref;
  ref.volume_uuid.fill(4);
  ref.volume = "data";
  EXPECT_EQ(RoundTrip(ref).volume_uuid, ref.volume_uuid);
  ReplicaStat stat{1 << 30, 8192, 7, 5, true};
  ReplicaStat s2 = RoundTrip(stat);
  EXPECT_EQ(s2.allocated_bytes, 8192u);
  EXPECT_EQ(s2.epoch, 7u);
  EXPECT_EQ(s2.generation, 5u);
  EXPECT_TRUE(s2.created);
  stat.created = false;
  EXPECT_FALSE(RoundTrip(stat).created);
  SnapshotRef sref;
  sref.volume_uuid.fill(5);
  sref.volume = "data";
  sref.snapshot = "nightly";
  SnapshotRef sr2 = RoundTrip(sref);
  EXPECT_EQ(sr2.volume_uuid, sref.volume_uuid);
  EXPECT_EQ(sr2.volume, "data");
  EXPECT_EQ(sr2.snapshot, "nightly");
  EXPECT_EQ(RoundTrip(SnapshotDigest{"00112233445566778899aabbccddeeff"}).digest,
            "00112233445566778899aabbccddeeff");
}

TEST(ReplicaProtocol, PayloadDecodersNeverTrustLengths) {
  // A name length that disagrees with the payload, an empty name, a long one.
  std::string open;
  Encode(OpenRequest{{}, 4096, "vol"}, &open);
  std::string bad = open;
  bad[offsetof(WireOpenRequest, volume_name_length)] = 4;
  OpenRequest o;
  EXPECT_FALSE(Decode(AsBytes(bad), &o).ok());
  bad = open;
  bad[offsetof(WireOpenRequest, volume_name_length)] = static_cast<char>(0xff);
  EXPECT_FALSE(Decode(AsBytes(bad), &o).ok());
  bad = open;
  bad[offsetof(WireOpenRequest, reserved)] = 1;
  EXPECT_FALSE(Decode(AsBytes(bad), &o).ok());
  std::string empty;
  Encode(OpenRequest{{}, 4096, ""}, &empty);
  EXPECT_FALSE(Decode(AsBytes(empty), &o).ok());

  // Counts that disagree with the payload.
  std::string hashes;
  Encode(HashRangesReply{{Hash128{1, 2}}}, &hashes);
  hashes[0] = 2;
  HashRangesReply hr;
  EXPECT_FALSE(Decode(AsBytes(hashes), &hr).ok());
  std::string zero;
  Encode(HashRangesReply{}, &zero);
  EXPECT_FALSE(Decode(AsBytes(zero), &hr).ok());

  // Extents must be sorted, non-empty and inside the volume.
  InfoReply info;
  info.size_bytes = 1 << 20;
  info.next_offset = 1 << 20;
  for (auto extents : std::vector<std::vector<std::pair<uint64_t, uint64_t>>>{
           {{4096, 4096}, {0, 4096}}, {{0, 0}}, {{1 << 20, 4096}}, {{0, ~0ull}}}) {
    info.allocated = extents;
    std::string bytes;
    Encode(info, &bytes);
    InfoReply out;
    EXPECT_FALSE(Decode(AsBytes(bytes), &out).ok());
  }
  // Zero in-flight bounds, a generation above the epoch, I/O lengths out of range.
  Hello hello;
  hello.server_node = "n";
  std::string hb;
  Encode(hello, &hb);
  Hello ho;
  EXPECT_FALSE(Decode(AsBytes(hb), &ho).ok());
  std::string sb;
  Encode(StateReply{3, 4}, &sb);
  StateReply so;
  EXPECT_FALSE(Decode(AsBytes(sb), &so).ok());
  // Placement: names that disagree with the payload, size 0, unknown flags, generation > epoch.
  std::string create;
  Encode(CreateReplicaRequest{{}, 4096, "vol", "pool"}, &create);
  CreateReplicaRequest co;
  ASSERT_TRUE(Decode(AsBytes(create), &co).ok());
  for (size_t field : {offsetof(WireCreateReplica, volume_name_length),
                       offsetof(WireCreateReplica, pool_name_length)}) {
    bad = create;
    bad[field] = static_cast<char>(bad[field] + 1);
    EXPECT_FALSE(Decode(AsBytes(bad), &co).ok()) << field;
  }
  bad = create;
  bad[offsetof(WireCreateReplica, reserved)] = 1;
  EXPECT_FALSE(Decode(AsBytes(bad), &co).ok());
  std::string nameless;
  Encode(CreateReplicaRequest{{}, 4096, "", "pool"}, &nameless);
  EXPECT_FALSE(Decode(AsBytes(nameless), &co).ok());
  std::string sizeless;
  Encode(CreateReplicaRequest{{}, 0, "vol", ""}, &sizeless);
  EXPECT_FALSE(Decode(AsBytes(sizeless), &co).ok());
  // A source must be VOLUME@SNAP (3 bytes at least) and its length must match the payload.
  for (const char* source : {"ab", "volsnap"}) {
    std::string sourced;
    Encode(CreateReplicaRequest{{}, 4096, "vol", "", source}, &sourced);
    EXPECT_FALSE(Decode(AsBytes(sourced), &co).ok()) << source;
  }
  std::string sourced;
  Encode(CreateReplicaRequest{{}, 4096, "vol", "", "a@b"}, &sourced);
  ASSERT_TRUE(Decode(AsBytes(sourced), &co).ok());
  bad = sourced;
  bad[offsetof(WireCreateReplica, source_length)] = 4;
  EXPECT_FALSE(Decode(AsBytes(bad), &co).ok());
  std::string ref;
  Encode(ReplicaRef{{}, "vol"}, &ref);
  ReplicaRef ro;
  bad = ref;
  bad[offsetof(WireReplicaRef, volume_name_length)] = 2;
  EXPECT_FALSE(Decode(AsBytes(bad), &ro).ok());
  bad = ref;
  bad[offsetof(WireReplicaRef, reserved2)] = 1;
  EXPECT_FALSE(Decode(AsBytes(bad), &ro).ok());
  std::string sref;
  Encode(SnapshotRef{{}, "vol", "s"}, &sref);
  SnapshotRef sro;
  EXPECT_TRUE(Decode(AsBytes(sref), &sro).ok());
  bad = sref;
  bad[offsetof(WireSnapshotRef, snapshot_name_length)] = 0;  // empty snapshot name
  EXPECT_FALSE(Decode(AsBytes(bad), &sro).ok());
  bad = sref;
  bad[offsetof(WireSnapshotRef, snapshot_name_length)] = 2;  // past the end
  EXPECT_FALSE(Decode(AsBytes(bad), &sro).ok());
  bad = sref;
  bad[offsetof(WireSnapshotRef, labels_length)] = 1;  // labels past the end
  EXPECT_FALSE(Decode(AsBytes(bad), &sro).ok());
  // TAKE_SNAPSHOT's labels: "KEY=VALUE\n" lines, each checked like any label.
  std::string labelled;
  Encode(SnapshotRef{{}, "vol", "s", {{"team", "nb"}, {"url", "s3://b/p?a=b"}}}, &labelled);
  ASSERT_TRUE(Decode(AsBytes(labelled), &sro).ok());
  EXPECT_EQ(sro.labels, (Labels{{"team", "nb"}, {"url", "s3://b/p?a=b"}}));
  for (const std::string& text :
       {std::string("team=nb"), std::string("bad key=v\n"), std::string("a=1\na=2\n"),
        std::string("b=1\na=2\n"), std::string("=v\n")}) {
    bad = sref;
    bad[offsetof(WireSnapshotRef, labels_length)] = static_cast<char>(text.size());
    bad += text;
    EXPECT_FALSE(Decode(AsBytes(bad), &sro).ok()) << text;
  }
  // SNAPSHOT's labels (a target without a replica sends them): the WireString's second word is
  // their length; the same lines, checked the same way.
  std::string snap;
  Encode(SnapshotRequest{"s1", {{"shale.io/snapshot-replicas", "node-a,node-b"}}}, &snap);
  SnapshotRequest snapped;
  ASSERT_TRUE(Decode(AsBytes(snap), &snapped).ok());
  EXPECT_EQ(snapped.name, "s1");
  EXPECT_EQ(snapped.labels, (Labels{{"shale.io/snapshot-replicas", "node-a,node-b"}}));
  for (const std::string& text : {std::string("a=1"), std::string("a=1\na=1\n")}) {
    std::string bad_snap;
    Encode(SnapshotRequest{"s1", {}}, &bad_snap);
    bad_snap[offsetof(WireString, reserved)] = static_cast<char>(text.size());
    bad_snap += text;
    EXPECT_FALSE(Decode(AsBytes(bad_snap), &snapped).ok()) << text;
  }
  std::string short_snap;
  Encode(SnapshotRequest{"s1", {}}, &short_snap);
  short_snap[offsetof(WireString, reserved)] = 1;  // labels past the end
  EXPECT_FALSE(Decode(AsBytes(short_snap), &snapped).ok());
  short_snap[offsetof(WireString, reserved)] = 0;
  short_snap[offsetof(WireString, length)] = 0;  // an empty name
  EXPECT_FALSE(Decode(AsBytes(short_snap), &snapped).ok());

  // LIST_SNAPSHOTS: entries with names, digests and labels; every length and flag checked.
  SnapshotList listed;
  listed.snapshots.push_back({"s1", 7, 8192, "0123abcd", {{"shale.io/snapshot-replicas", "b,c"}}});
  listed.snapshots.push_back({"s2", 9, 4096, "", {}});
  std::string list;
  Encode(listed, &list);
  SnapshotList got;
  ASSERT_TRUE(Decode(AsBytes(list), &got).ok());
  ASSERT_EQ(got.snapshots.size(), 2u);
  EXPECT_EQ(got.snapshots[0].name, "s1");
  EXPECT_EQ(got.snapshots[0].created_unix_ns, 7u);
  EXPECT_EQ(got.snapshots[0].size_bytes, 8192u);
  EXPECT_EQ(got.snapshots[0].digest, "0123abcd");
  EXPECT_EQ(got.snapshots[0].labels, (Labels{{"shale.io/snapshot-replicas", "b,c"}}));
  EXPECT_EQ(got.snapshots[1].digest, "");
  EXPECT_FALSE(got.truncated);
  EXPECT_FALSE(Decode(AsBytes(list + "x"), &got).ok()) << "bytes after the last entry";
  EXPECT_FALSE(Decode(AsBytes(list.substr(0, list.size() - 1)), &got).ok()) << "cut short";
  std::string bad_list = list;
  bad_list[offsetof(WireCount, count)] = 3;  // more entries than there are
  EXPECT_FALSE(Decode(AsBytes(bad_list), &got).ok());
  bad_list = list;
  bad_list[offsetof(WireCount, reserved)] = 2;  // unknown flag
  EXPECT_FALSE(Decode(AsBytes(bad_list), &got).ok());
  bad_list = list;
  bad_list[sizeof(WireCount) + offsetof(WireSnapshotEntry, name_length)] = 0;
  bad_list[sizeof(WireCount) + offsetof(WireSnapshotEntry, name_length) + 1] = 0;
  EXPECT_FALSE(Decode(AsBytes(bad_list), &got).ok()) << "an empty name";
  bad_list = list;
  bad_list[sizeof(WireCount) + offsetof(WireSnapshotEntry, digest_length)] = 65;
  EXPECT_FALSE(Decode(AsBytes(bad_list), &got).ok()) << "a digest over 64 bytes";
  // A list that would not fit one frame is cut, and says so.
  SnapshotList many;
  const std::string value(1000, 'v');
  Labels big;
  for (int i = 0; i < 60; ++i) big["k" + std::to_string(100 + i)] = value;
  for (int i = 0; i < 200; ++i) many.snapshots.push_back({"s" + std::to_string(i), 1, 1, "", big});
  std::string cut;
  Encode(many, &cut);
  EXPECT_LE(cut.size(), kMaxSnapshotListBytes);
  ASSERT_TRUE(Decode(AsBytes(cut), &got).ok());
  EXPECT_TRUE(got.truncated);
  EXPECT_LT(got.snapshots.size(), 200u);
  EXPECT_GT(got.snapshots.size(), 0u);

  std::string stat;
  Encode(ReplicaStat{4096, 0, 3, 4, false}, &stat);
  ReplicaStat st;
  EXPECT_FALSE(Decode(AsBytes(stat), &st).ok());
  stat.clear();
  Encode(ReplicaStat{4096, 0, 3, 3, false}, &stat);
  ASSERT_TRUE(Decode(AsBytes(stat), &st).ok());
  stat[offsetof(WireReplicaStat, flags)] = 2;
  EXPECT_FALSE(Decode(AsBytes(stat), &st).ok());

  for (uint32_t len : {0u, kMaxIoBytes + 1}) {
    std::string io;
    Encode(IoRange{0, len}, &io);
    IoRange r;
    EXPECT_FALSE(Decode(AsBytes(io), &r).ok()) << len;
  }
}

TEST(ReplicaProtocol, SemanticChecks) {
  const uint64_t size = 1 << 20;
  EXPECT_TRUE(CheckIo(MsgType::kWrite, 0, 4096, size).ok());
  EXPECT_TRUE(CheckIo(MsgType::kWrite, size - 512, 512, size).ok());
  EXPECT_FALSE(CheckIo(MsgType::kWrite, 100, 512, size).ok());
  EXPECT_FALSE(CheckIo(MsgType::kWrite, 0, 100, size).ok());
  EXPECT_FALSE(CheckIo(MsgType::kWrite, 0, 0, size).ok());
  EXPECT_EQ(CheckIo(MsgType::kWrite, size, 512, size).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(CheckIo(MsgType::kDiscard, ~0ull - 511, 512, size).code(), StatusCode::kOutOfRange);
  EXPECT_FALSE(CheckIo(MsgType::kRead, 0, kMaxIoBytes + 512, 1ull << 40).ok());
  EXPECT_TRUE(CheckIo(MsgType::kWriteZeroes, 0, 1ull << 30, 1ull << 40).ok());

  EXPECT_TRUE(CheckHashRanges({0, size, 65536}, size).ok());
  EXPECT_EQ(HashRegionCount({0, size, 65536}), 16u);
  EXPECT_EQ(HashRegionCount({0, size - 4096, 65536}), 16u);
  EXPECT_FALSE(CheckHashRanges({0, size, 1000}, size).ok());
  EXPECT_FALSE(CheckHashRanges({0, size, 16 << 20}, size).ok());
  EXPECT_FALSE(CheckHashRanges({512, 4096, 4096}, size).ok());
  EXPECT_FALSE(CheckHashRanges({0, 0, 4096}, size).ok());
  EXPECT_TRUE(CheckHashRanges({0, size + 4096, 4096}, size + 8192).ok());  // 257 regions
  EXPECT_FALSE(CheckHashRanges({0, 4096ull * 1025, 4096}, 1ull << 30).ok());
}

TEST(ReplicaProtocol, StatusMapping) {
  EXPECT_EQ(WireStatusFromStatus(Status::NoSpace("x")), WireStatus::kNoSpace);
  EXPECT_EQ(WireStatusFromStatus(Status::IoError("x")), WireStatus::kIoError);
  EXPECT_EQ(WireStatusFromStatus(Status::OutOfRange("x")), WireStatus::kInvalid);
  EXPECT_EQ(WireStatusFromStatus(Status::PermissionDenied("x")), WireStatus::kReadOnly);
  EXPECT_EQ(WireStatusFromStatus(Status::Corruption("x")), WireStatus::kIoError);
  EXPECT_EQ(WireStatusFromStatus(Status::FailedPrecondition("x")), WireStatus::kPrecondition);
  EXPECT_EQ(StatusFromWire(WireStatus::kPrecondition, "served elsewhere").code(),
            StatusCode::kFailedPrecondition);
  EXPECT_TRUE(StatusFromWire(WireStatus::kNoSpace, "full").IsNoSpace());
  EXPECT_EQ(StatusFromWire(WireStatus::kStaleEpoch, "").sys_errno(), ESTALE);
  EXPECT_EQ(StatusFromWire(WireStatus::kIoError, "bad").ToErrno(), EIO);
  EXPECT_NE(StatusFromWire(WireStatus::kIoError, "bad sector").message().find("bad sector"),
            std::string_view::npos);
}

}  // namespace
}  // namespace shale::replication
