// The NBD wire codec: request parsing, every verdict of CheckRequest (the malformed-input
// rules: alignment, maximum length, range, read-only, unknown commands and flags), reply
// encodings byte for byte, and the one Status -> NBD error mapping.
#include "nbd/protocol.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "nbd/handshake.h"

namespace shale::nbd {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

SessionParams RwSession() {
  SessionParams s;
  s.export_size = 1 << 20;
  s.transmission_flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim |
                         kTxSendWriteZeroes | kTxSendFastZero | kTxSendDf | kTxSendCache;
  s.structured_replies = true;
  s.block_status = true;
  s.min_block = 512;
  s.max_block = 32 << 20;
  return s;
}

RequestHeader Req(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  RequestHeader h;
  h.type = type;
  h.offset = offset;
  h.length = length;
  h.flags = flags;
  h.handle = 0x0102030405060708;
  return h;
}

using Action = RequestCheck::Action;

void ExpectError(const RequestCheck& c, uint32_t error) {
  EXPECT_EQ(c.action, Action::kError);
  EXPECT_EQ(c.error, error);
  EXPECT_FALSE(c.reason.empty());
}

TEST(NbdProtocol, RequestHeaderRoundTripsAndRejectsBadMagic) {
  const RequestHeader h = Req(kCmdWrite, 0x1122334455667788, 0x99aabbcc, kCmdFlagFua);
  uint8_t wire[kRequestHeaderSize];
  EncodeRequestHeader(h, wire);
  const uint8_t expected[kRequestHeaderSize] = {
      0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
      0x07, 0x08, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc};
  EXPECT_EQ(std::vector<uint8_t>(wire, wire + kRequestHeaderSize),
            std::vector<uint8_t>(expected, expected + kRequestHeaderSize));
  RequestHeader back;
  ASSERT_TRUE(DecodeRequestHeader(wire, &back));
  EXPECT_EQ(back.type, kCmdWrite);
  EXPECT_EQ(back.flags, kCmdFlagFua);
  EXPECT_EQ(back.handle, h.handle);
  EXPECT_EQ(back.offset, h.offset);
  EXPECT_EQ(back.length, h.length);
  wire[3] ^= 1;
  EXPECT_FALSE(DecodeRequestHeader(wire, &back));
}

TEST(NbdProtocol, ValidRequestsExecute) {
  const SessionParams s = RwSession();
  for (const RequestHeader& h :
       {Req(kCmdRead, 0, 4096), Req(kCmdRead, 512, 512, kCmdFlagDf | kCmdFlagFua),
        Req(kCmdWrite, (1 << 20) - 4096, 4096, kCmdFlagFua), Req(kCmdFlush, 0, 0),
        Req(kCmdTrim, 0, 1 << 20), Req(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagNoHole),
        Req(kCmdWriteZeroes, 4096, 8192, kCmdFlagFastZero),
        Req(kCmdBlockStatus, 0, 1 << 20, kCmdFlagReqOne)}) {
    SCOPED_TRACE(CommandName(h.type));
    const RequestCheck c = CheckRequest(h, s);
    EXPECT_EQ(c.action, Action::kExecute) << c.reason;
    EXPECT_EQ(c.payload, h.type == kCmdWrite ? h.length : 0u);
  }
  // The largest read or write is exactly max_block.
  SessionParams big = s;
  big.export_size = 1ull << 40;
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 0, 32 << 20), big).action, Action::kExecute);
  // Write-zeroes and trim are not bounded by max_block (no payload).
  EXPECT_EQ(CheckRequest(Req(kCmdWriteZeroes, 0, 0xfffffe00u), big).action, Action::kExecute);
  EXPECT_EQ(CheckRequest(Req(kCmdTrim, 0, 0xfffffe00u), big).action, Action::kExecute);
}

TEST(NbdProtocol, MalformedRequestsGetTheProtocolsErrors) {
  const SessionParams s = RwSession();
  // Unknown commands and flags.
  ExpectError(CheckRequest(Req(99, 0, 512), s), kEinval);
  ExpectError(CheckRequest(Req(8 /* NBD_CMD_RESIZE: not supported */, 0, 0), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdRead, 0, 512, 1u << 7), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdWrite, 0, 512, kCmdFlagNoHole), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdRead, 0, 512, kCmdFlagReqOne), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdBlockStatus, 0, 512, kCmdFlagDf), s), kEinval);
  // Alignment to the 512-byte minimum block.
  ExpectError(CheckRequest(Req(kCmdRead, 100, 512), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdRead, 0, 100), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdTrim, 1, 512), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdBlockStatus, 0, 1000), s), kEinval);
  // Over the maximum block size.
  SessionParams big = s;
  big.export_size = 1ull << 40;
  ExpectError(CheckRequest(Req(kCmdRead, 0, (32 << 20) + 512), big), kEinval);
  ExpectError(CheckRequest(Req(kCmdCache, 0, (32 << 20) + 512), big), kEinval);
  // Beyond the end: ENOSPC for writes, EINVAL for the rest (as the protocol asks).
  ExpectError(CheckRequest(Req(kCmdWrite, 1 << 20, 512), s), kEnospc);
  ExpectError(CheckRequest(Req(kCmdWrite, (1 << 20) - 512, 1024), s), kEnospc);
  ExpectError(CheckRequest(Req(kCmdWriteZeroes, (1 << 20) - 512, 1024), s), kEnospc);
  ExpectError(CheckRequest(Req(kCmdRead, (1 << 20) - 512, 1024), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdTrim, 1 << 20, 512), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdBlockStatus, 1 << 20, 512), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdRead, UINT64_MAX - 511, 512), s), kEinval);  // no wrap
  // Flush has no range.
  ExpectError(CheckRequest(Req(kCmdFlush, 512, 0), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdFlush, 0, 512), s), kEinval);
  // Fast zero that must keep the blocks allocated cannot be fast.
  ExpectError(CheckRequest(Req(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero | kCmdFlagNoHole), s),
              kEnotsup);
  // A rejected write still owns its payload on the wire.
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 3, 4096), s).payload, 4096u);
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 0, 64 << 20), s).payload, 64u << 20);
}

TEST(NbdProtocol, FeaturesNotNegotiatedAreRefused) {
  SessionParams s = RwSession();
  s.structured_replies = false;
  s.block_status = false;
  s.transmission_flags &= static_cast<uint16_t>(~(kTxSendDf | kTxSendFastZero));
  ExpectError(CheckRequest(Req(kCmdRead, 0, 512, kCmdFlagDf), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdBlockStatus, 0, 512), s), kEinval);
  ExpectError(CheckRequest(Req(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero), s), kEinval);
}

TEST(NbdProtocol, ReadOnlyExportsRefuseEveryWriteWithEperm) {
  SessionParams s = RwSession();
  s.transmission_flags = kTxHasFlags | kTxReadOnly | kTxSendFlush | kTxSendFua;
  ExpectError(CheckRequest(Req(kCmdWrite, 0, 4096), s), kEperm);
  ExpectError(CheckRequest(Req(kCmdWrite, 3, 7), s), kEperm);  // EPERM before anything else
  ExpectError(CheckRequest(Req(kCmdTrim, 0, 4096), s), kEperm);
  ExpectError(CheckRequest(Req(kCmdWriteZeroes, 0, 4096), s), kEperm);
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 0, 4096), s).payload, 4096u);
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 4096), s).action, Action::kExecute);
  EXPECT_EQ(CheckRequest(Req(kCmdFlush, 0, 0), s).action, Action::kExecute);
}

TEST(NbdProtocol, ZeroLengthCacheAndDisconnect) {
  const SessionParams s = RwSession();
  EXPECT_EQ(CheckRequest(Req(kCmdRead, 0, 0), s).action, Action::kReply);
  EXPECT_EQ(CheckRequest(Req(kCmdWrite, 1 << 20, 0), s).action, Action::kReply);
  EXPECT_EQ(CheckRequest(Req(kCmdTrim, 512, 0), s).action, Action::kReply);
  ExpectError(CheckRequest(Req(kCmdBlockStatus, 0, 0), s), kEinval);
  EXPECT_EQ(CheckRequest(Req(kCmdCache, 0, 4096), s).action, Action::kReply);
  EXPECT_EQ(CheckRequest(Req(kCmdDisc, 0, 0), s).action, Action::kDisconnect);
  EXPECT_EQ(CheckRequest(Req(kCmdDisc, 5, 7, 0xffff), s).action, Action::kDisconnect);
}

TEST(NbdProtocol, RepliesAreEncodedByteForByte) {
  uint8_t simple[kSimpleReplySize];
  EncodeSimpleReply(simple, 0xa1a2a3a4a5a6a7a8, kEnospc);
  const uint8_t expected_simple[] = {0x67, 0x44, 0x66, 0x98, 0,    0,    0,    28,
                                     0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8};
  EXPECT_EQ(std::vector<uint8_t>(simple, simple + sizeof(simple)),
            std::vector<uint8_t>(expected_simple, expected_simple + sizeof(expected_simple)));

  uint8_t data[kOffsetDataHeaderSize];
  EncodeOffsetDataHeader(data, 7, 0x10000, 4096, /*done=*/true);
  const uint8_t expected_data[] = {0x66, 0x8e, 0x33, 0xef, 0,    1,    0, 1, 0, 0, 0, 0, 0, 0,
                                   0,    7,    0,    0,    0x10, 0x08, 0, 0, 0, 0, 0, 1, 0, 0};
  EXPECT_EQ(std::vector<uint8_t>(data, data + sizeof(data)),
            std::vector<uint8_t>(expected_data, expected_data + sizeof(expected_data)));

  std::string err;
  AppendErrorChunk(&err, 9, kEio, "bad");
  const uint8_t expected_err[] = {0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1, 0, 0, 0, 0,   0,   0,  0,
                                  9,    0,    0,    0,    9, 0, 0,    0, 5, 0, 3, 'b', 'a', 'd'};
  EXPECT_EQ(Bytes(err), std::vector<uint8_t>(expected_err, expected_err + sizeof(expected_err)));
  // Messages are bounded.
  std::string long_err;
  AppendErrorChunk(&long_err, 1, kEio, std::string(10000, 'x'));
  EXPECT_EQ(long_err.size(), kStructuredHeaderSize + 6 + kMaxErrorMessage);

  std::string bs;
  const BlockDescriptor extents[] = {{4096, kStateHole | kStateZero}, {8192, 0}};
  AppendBlockStatusChunk(&bs, 3, kBaseAllocationContextId, extents);
  const uint8_t expected_bs[] = {0x66, 0x8e, 0x33, 0xef, 0, 1,  0,    5, 0, 0, 0, 0, 0,    0,
                                 0,    3,    0,    0,    0, 20, 0,    0, 0, 1, 0, 0, 0x10, 0,
                                 0,    0,    0,    3,    0, 0,  0x20, 0, 0, 0, 0, 0};
  EXPECT_EQ(Bytes(bs), std::vector<uint8_t>(expected_bs, expected_bs + sizeof(expected_bs)));
}

TEST(NbdProtocol, OptionRepliesAndGreeting) {
  std::string g;
  AppendGreeting(&g);
  EXPECT_EQ(g, std::string("NBDMAGICIHAVEOPT\x00\x03", 18));
  std::string r;
  AppendOptionReply(&r, kOptGo, kRepErrUnknown, "no");
  const uint8_t expected[] = {0, 3,    0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0,   0,
                              7, 0x80, 0,    0,    6,    0,    0,    0,    2, 'n', 'o'};
  EXPECT_EQ(Bytes(r), std::vector<uint8_t>(expected, expected + sizeof(expected)));
  std::string en;
  AppendExportNameReply(&en, 1 << 20, kTxHasFlags, /*no_zeroes=*/false);
  EXPECT_EQ(en.size(), 134u);
  en.clear();
  AppendExportNameReply(&en, 1 << 20, kTxHasFlags, /*no_zeroes=*/true);
  EXPECT_EQ(en.size(), 10u);
  EXPECT_EQ(InfoExportPayload(1, 2).size(), 12u);
  EXPECT_EQ(InfoBlockSizePayload(512, 4096, 1 << 25).size(), 14u);
}

TEST(NbdProtocol, StatusMapsToTheNbdErrorSetOnce) {
  EXPECT_EQ(NbdErrorFromStatus(Status::Ok()), 0u);
  EXPECT_EQ(NbdErrorFromStatus(Status::InvalidArgument("x")), kEinval);
  EXPECT_EQ(NbdErrorFromStatus(Status::OutOfRange("x")), kEinval);
  EXPECT_EQ(NbdErrorFromStatus(Status::NoSpace("x")), kEnospc);
  EXPECT_EQ(NbdErrorFromStatus(Status::PermissionDenied("x")), kEperm);
  EXPECT_EQ(NbdErrorFromStatus(Status::IoError("x")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::IoError("x", EIO)), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::Corruption("x")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::Internal("x")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::NotSupported("x")), kEnotsup);
  EXPECT_EQ(NbdErrorFromStatus(Status::Unavailable("x")), kEshutdown);
  EXPECT_EQ(NbdErrorFromStatus(Status::Aborted("x")), kEshutdown);
  EXPECT_EQ(NbdErrorFromStatus(Status::Busy("x")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(ENOSPC, "x")), kEnospc);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(EDQUOT, "x")), kEnospc);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(EFBIG, "x")), kEnospc);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(ENOMEM, "x")), kEnomem);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(EROFS, "x")), kEperm);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(ENXIO, "x")), kEio);
  EXPECT_EQ(NbdErrorFromStatus(Status::FromErrno(EOVERFLOW, "x")), kEoverflow);
}

}  // namespace
}  // namespace shale::nbd
