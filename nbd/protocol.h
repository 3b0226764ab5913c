// NBD wire format: constants, request parsing and validation, reply encoding. No I/O.
//
// Follows the NBD protocol as specified by the NBD project (doc/proto.md in
// github.com/NetworkBlockDevice/nbd): fixed newstyle handshake, simple and structured replies,
// the base:allocation metadata context. Every multi-byte field is big-endian. The option
// negotiation state machine lives in handshake.h; the server (server.h) does the I/O.
//
// Everything here is a pure function of its inputs, so the fuzz target (tests/fuzz) and the
// malformed-input tests drive it directly. Nothing here may crash on any input.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "engine/common/status.h"

namespace shale::nbd {

// --- Magic numbers ------------------------------------------------------------------------------
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943;     // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454F5054;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

// --- Handshake flags (server, 16 bits) and client flags (32 bits) -------------------------------
inline constexpr uint16_t kFlagFixedNewstyle = 1u << 0;
inline constexpr uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1u << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1u << 1;

// --- Transmission flags (16 bits) ---------------------------------------------------------------
inline constexpr uint16_t kTxHasFlags = 1u << 0;
inline constexpr uint16_t kTxReadOnly = 1u << 1;
inline constexpr uint16_t kTxSendFlush = 1u << 2;
inline constexpr uint16_t kTxSendFua = 1u << 3;
inline constexpr uint16_t kTxRotational = 1u << 4;
inline constexpr uint16_t kTxSendTrim = 1u << 5;
inline constexpr uint16_t kTxSendWriteZeroes = 1u << 6;
inline constexpr uint16_t kTxSendDf = 1u << 7;
inline constexpr uint16_t kTxCanMultiConn = 1u << 8;
inline constexpr uint16_t kTxSendResize = 1u << 9;
inline constexpr uint16_t kTxSendCache = 1u << 10;
inline constexpr uint16_t kTxSendFastZero = 1u << 11;

// --- Options
// --------------------------------------------------------------------------------------
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptPeekExport = 4;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// --- Option reply types
// ---------------------------------------------------------------------------
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepFlagError = 1u << 31;
inline constexpr uint32_t kRepErrUnsup = kRepFlagError | 1;
inline constexpr uint32_t kRepErrPolicy = kRepFlagError | 2;
inline constexpr uint32_t kRepErrInvalid = kRepFlagError | 3;
inline constexpr uint32_t kRepErrPlatform = kRepFlagError | 4;
inline constexpr uint32_t kRepErrTlsReqd = kRepFlagError | 5;
inline constexpr uint32_t kRepErrUnknown = kRepFlagError | 6;
inline constexpr uint32_t kRepErrShutdown = kRepFlagError | 7;
inline constexpr uint32_t kRepErrBlockSizeReqd = kRepFlagError | 8;
inline constexpr uint32_t kRepErrTooBig = kRepFlagError | 9;

// --- NBD_INFO types (in NBD_REP_INFO replies and NBD_OPT_INFO/GO requests)
// -------------------------
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// --- Commands and command flags ---------------------------------------------------------------
inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

inline constexpr uint16_t kCmdFlagFua = 1u << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr uint16_t kCmdFlagDf = 1u << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1u << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1u << 4;

// --- Structured replies
// ---------------------------------------------------------------------------
inline constexpr uint16_t kReplyFlagDone = 1u << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeOffsetHole = 2;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = (1u << 15) | 1;
inline constexpr uint16_t kReplyTypeErrorOffset = (1u << 15) | 2;

// --- base:allocation
// ------------------------------------------------------------------------------
inline constexpr std::string_view kBaseAllocation = "base:allocation";
inline constexpr uint32_t kStateHole = 1u << 0;
inline constexpr uint32_t kStateZero = 1u << 1;

// --- Errors (the only values the error fields may carry)
// --------------------------------------------
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// --- Sizes
// ------------------------------------------------------------------------------------------
inline constexpr size_t kGreetingSize = 18;  // NBDMAGIC, IHAVEOPT, handshake flags
inline constexpr size_t kClientFlagsSize = 4;
inline constexpr size_t kOptionHeaderSize = 16;       // IHAVEOPT, option, length
inline constexpr size_t kOptionReplyHeaderSize = 20;  // magic, option, type, length
inline constexpr size_t kExportNameReplySize = 10;    // size, transmission flags (+124 zeroes)
inline constexpr size_t kExportNameZeroes = 124;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kStructuredHeaderSize = 20;
inline constexpr size_t kOffsetDataHeaderSize = kStructuredHeaderSize + 8;
inline constexpr size_t kMaxStringLength = 4096;  // export names, queries, messages
inline constexpr size_t kMaxErrorMessage = 256;   // error strings Shale sends (well below 4096)

// --- Big-endian helpers
// -----------------------------------------------------------------------------
inline void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline void PutU64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
inline uint64_t GetU64(const uint8_t* p) { return (uint64_t{GetU32(p)} << 32) | GetU32(p + 4); }
void AppendU16(std::string* out, uint16_t v);
void AppendU32(std::string* out, uint32_t v);
void AppendU64(std::string* out, uint64_t v);

// Names for logs and error messages ("NBD_CMD_READ", "NBD_OPT_GO"); "unknown (N)" otherwise.
std::string CommandName(uint16_t type);
std::string OptionName(uint32_t option);

// --- Handshake encoding
// ----------------------------------------------------------------------------- The server's first
// message: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES.
void AppendGreeting(std::string* out);
// One option reply: magic, option, type, payload length, payload.
void AppendOptionReply(std::string* out, uint32_t option, uint32_t type,
                       std::string_view payload = {});
// NBD_REP_INFO payloads.
std::string InfoExportPayload(uint64_t size, uint16_t transmission_flags);
std::string InfoBlockSizePayload(uint32_t min_block, uint32_t preferred_block, uint32_t max_block);
std::string InfoStringPayload(uint16_t info_type, std::string_view text);  // NAME, DESCRIPTION
// NBD_REP_SERVER payload: the export name.
std::string ServerPayload(std::string_view name);
// NBD_REP_META_CONTEXT payload: context id and name.
std::string MetaContextPayload(uint32_t id, std::string_view name);
// The reply to NBD_OPT_EXPORT_NAME: size, flags and (unless no_zeroes) 124 zero bytes.
void AppendExportNameReply(std::string* out, uint64_t size, uint16_t transmission_flags,
                           bool no_zeroes);

// --- Transmission: requests
// ---------------------------------------------------------------------------
struct RequestHeader {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Decodes the 28-byte request header. False when the magic is wrong: the stream cannot be
// resynchronised and the connection must be dropped.
[[nodiscard]] bool DecodeRequestHeader(std::span<const uint8_t, kRequestHeaderSize> in,
                                       RequestHeader* out);
void EncodeRequestHeader(const RequestHeader& h, std::span<uint8_t, kRequestHeaderSize> out);

// What the transmission phase of one connection agreed on; requests are checked against it.
struct SessionParams {
  uint64_t export_size = 0;         // as negotiated; later resizes are not seen
  uint16_t transmission_flags = 0;  // as sent to the client
  bool structured_replies = false;
  bool block_status = false;       // base:allocation was selected for this export
  uint32_t min_block = 512;        // offsets and lengths must be multiples of it
  uint32_t max_block = 32u << 20;  // largest READ, WRITE and CACHE
};

// The verdict on one request header, before any I/O.
struct RequestCheck {
  enum class Action {
    kExecute,     // valid: run it
    kReply,       // nothing to do but reply (zero-length I/O, CACHE): success, no I/O
    kError,       // reply with `error` (and `reason` as the message where the reply allows one)
    kDisconnect,  // NBD_CMD_DISC: finish what is in flight, then close
  };
  Action action = Action::kExecute;
  uint32_t error = 0;
  std::string_view reason;  // static text, for error replies and logs
  // Bytes of payload that follow the header on the wire and belong to this request (the data of
  // an NBD_CMD_WRITE, whether or not the request is valid): the reader must consume them.
  uint64_t payload = 0;
};

// Checks a request against the session: known command, flags valid for it, read-only export,
// alignment to min_block, length within max_block, range within the export. Error values follow
// the protocol: EPERM for writes to a read-only export, ENOSPC for writes past the end, EINVAL
// for the rest, ENOTSUP for a FAST_ZERO request that cannot be fast (NO_HOLE).
RequestCheck CheckRequest(const RequestHeader& h, const SessionParams& s);

// --- Transmission: replies
// ----------------------------------------------------------------------------
void EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize> out, uint64_t handle, uint32_t error);
void EncodeStructuredHeader(std::span<uint8_t, kStructuredHeaderSize> out, uint16_t flags,
                            uint16_t type, uint64_t handle, uint32_t payload_length);
// Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk carrying `data_length` bytes read at `offset`
// (the data itself follows on the wire).
void EncodeOffsetDataHeader(std::span<uint8_t, kOffsetDataHeaderSize> out, uint64_t handle,
                            uint64_t offset, uint32_t data_length, bool done);
// A complete NBD_REPLY_TYPE_ERROR chunk (always the final one) with a message for people
// (truncated to kMaxErrorMessage bytes).
void AppendErrorChunk(std::string* out, uint64_t handle, uint32_t error, std::string_view message);

struct BlockDescriptor {
  uint32_t length;
  uint32_t flags;  // kStateHole | kStateZero
};
// A complete, final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one metadata context.
void AppendBlockStatusChunk(std::string* out, uint64_t handle, uint32_t context_id,
                            std::span<const BlockDescriptor> extents);

// The one mapping of Shale errors to NBD errors: EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW,
// ENOTSUP or ESHUTDOWN (errno values outside that set become EIO; EDQUOT and EFBIG ENOSPC).
uint32_t NbdErrorFromStatus(const Status& status);

}  // namespace shale::nbd
