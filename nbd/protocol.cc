#include "nbd/protocol.h"

#include <cerrno>

namespace shale::nbd {

void AppendU16(std::string* out, uint16_t v) {
  uint8_t b[2];
  PutU16(b, v);
  out->append(reinterpret_cast<const char*>(b), sizeof(b));
}

void AppendU32(std::string* out, uint32_t v) {
  uint8_t b[4];
  PutU32(b, v);
  out->append(reinterpret_cast<const char*>(b), sizeof(b));
}

void AppendU64(std::string* out, uint64_t v) {
  uint8_t b[8];
  PutU64(b, v);
  out->append(reinterpret_cast<const char*>(b), sizeof(b));
}

std::string CommandName(uint16_t type) {
  switch (type) {
    case kCmdRead:
      return "NBD_CMD_READ";
    case kCmdWrite:
      return "NBD_CMD_WRITE";
    case kCmdDisc:
      return "NBD_CMD_DISC";
    case kCmdFlush:
      return "NBD_CMD_FLUSH";
    case kCmdTrim:
      return "NBD_CMD_TRIM";
    case kCmdCache:
      return "NBD_CMD_CACHE";
    case kCmdWriteZeroes:
      return "NBD_CMD_WRITE_ZEROES";
    case kCmdBlockStatus:
      return "NBD_CMD_BLOCK_STATUS";
  }
  return "unknown command (" + std::to_string(type) + ")";
}

std::string OptionName(uint32_t option) {
  switch (option) {
    case kOptExportName:
      return "NBD_OPT_EXPORT_NAME";
    case kOptAbort:
      return "NBD_OPT_ABORT";
    case kOptList:
      return "NBD_OPT_LIST";
    case kOptPeekExport:
      return "NBD_OPT_PEEK_EXPORT";
    case kOptStartTls:
      return "NBD_OPT_STARTTLS";
    case kOptInfo:
      return "NBD_OPT_INFO";
    case kOptGo:
      return "NBD_OPT_GO";
    case kOptStructuredReply:
      return "NBD_OPT_STRUCTURED_REPLY";
    case kOptListMetaContext:
      return "NBD_OPT_LIST_META_CONTEXT";
    case kOptSetMetaContext:
      return "NBD_OPT_SET_META_CONTEXT";
  }
  return "unknown option (" + std::to_string(option) + ")";
}

// ---------------------------------------------------------------------------------------------
// Handshake

void AppendGreeting(std::string* out) {
  AppendU64(out, kNbdMagic);
  AppendU64(out, kOptionMagic);
  AppendU16(out, kFlagFixedNewstyle | kFlagNoZeroes);
}

void AppendOptionReply(std::string* out, uint32_t option, uint32_t type, std::string_view payload) {
  AppendU64(out, kOptionReplyMagic);
  AppendU32(out, option);
  AppendU32(out, type);
  AppendU32(out, static_cast<uint32_t>(payload.size()));
  out->append(payload);
}

std::string InfoExportPayload(uint64_t size, uint16_t transmission_flags) {
  std::string p;
  AppendU16(&p, kInfoExport);
  AppendU64(&p, size);
  AppendU16(&p, transmission_flags);
  return p;
}

std::string InfoBlockSizePayload(uint32_t min_block, uint32_t preferred_block, uint32_t max_block) {
  std::string p;
  AppendU16(&p, kInfoBlockSize);
  AppendU32(&p, min_block);
  AppendU32(&p, preferred_block);
  AppendU32(&p, max_block);
  return p;
}

std::string InfoStringPayload(uint16_t info_type, std::string_view text) {
  std::string p;
  AppendU16(&p, info_type);
  p.append(text.substr(0, kMaxStringLength));
  return p;
}

std::string ServerPayload(std::string_view name) {
  std::string p;
  AppendU32(&p, static_cast<uint32_t>(name.size()));
  p.append(name);
  return p;
}

std::string MetaContextPayload(uint32_t id, std::string_view name) {
  std::string p;
  AppendU32(&p, id);
  p.append(name);
  return p;
}

void AppendExportNameReply(std::string* out, uint64_t size, uint16_t transmission_flags,
                           bool no_zeroes) {
  AppendU64(out, size);
  AppendU16(out, transmission_flags);
  if (!no_zeroes) out->append(kExportNameZeroes, '\0');
}

// ---------------------------------------------------------------------------------------------
// Requests

bool DecodeRequestHeader(std::span<const uint8_t, kRequestHeaderSize> in, RequestHeader* out) {
  const uint8_t* p = in.data();
  if (GetU32(p) != kRequestMagic) return false;
  out->flags = GetU16(p + 4);
  out->type = GetU16(p + 6);
  out->handle = GetU64(p + 8);
  out->offset = GetU64(p + 16);
  out->length = GetU32(p + 24);
  return true;
}

void EncodeRequestHeader(const RequestHeader& h, std::span<uint8_t, kRequestHeaderSize> out) {
  uint8_t* p = out.data();
  PutU32(p, kRequestMagic);
  PutU16(p + 4, h.flags);
  PutU16(p + 6, h.type);
  PutU64(p + 8, h.handle);
  PutU64(p + 16, h.offset);
  PutU32(p + 24, h.length);
}

RequestCheck CheckRequest(const RequestHeader& h, const SessionParams& s) {
  using Action = RequestCheck::Action;
  RequestCheck c;
  // The data of a WRITE follows its header whatever we think of the request.
  if (h.type == kCmdWrite) c.payload = h.length;
  auto fail = [&c](uint32_t error, std::string_view reason) {
    c.action = Action::kError;
    c.error = error;
    c.reason = reason;
    return c;
  };

  const uint16_t tx = s.transmission_flags;
  const bool is_write = h.type == kCmdWrite || h.type == kCmdTrim || h.type == kCmdWriteZeroes;
  uint16_t allowed = (tx & kTxSendFua) ? kCmdFlagFua : 0;
  switch (h.type) {
    case kCmdRead:
      if (tx & kTxSendDf) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
    case kCmdFlush:
    case kCmdTrim:
    case kCmdCache:
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole;
      if (tx & kTxSendFastZero) allowed |= kCmdFlagFastZero;
      break;
    case kCmdBlockStatus:
      allowed |= kCmdFlagReqOne;
      break;
    case kCmdDisc:
      // Offset and length must be zero, but a client asking to leave is let go either way.
      c.action = Action::kDisconnect;
      return c;
    default:
      return fail(kEinval, "unknown command");
  }
  if (is_write && (tx & kTxReadOnly)) return fail(kEperm, "the export is read-only");
  if (h.flags & ~allowed) return fail(kEinval, "command flags not valid for this command");
  if (h.type == kCmdBlockStatus && !s.block_status) {
    return fail(kEinval, "block status without a negotiated metadata context");
  }
  if (h.type == kCmdFlush) {
    if (h.offset != 0 || h.length != 0) return fail(kEinval, "flush with nonzero offset or length");
    return c;
  }
  if (s.min_block > 1 && (h.offset % s.min_block != 0 || h.length % s.min_block != 0)) {
    return fail(kEinval, "offset or length not aligned to the minimum block size");
  }
  // WRITE_ZEROES is not held to max_block (the protocol says the server SHOULD refuse a longer
  // one): it carries no payload, the volume zeroes any length in bounded steps, and clients in
  // the wild (nbdcopy of libnbd 1.14) zero whole images in one request.
  const bool bounded_by_max = h.type == kCmdRead || h.type == kCmdWrite || h.type == kCmdCache;
  if (bounded_by_max && h.length > s.max_block) {
    return fail(kEinval, "length exceeds the maximum block size");
  }
  if (h.offset > s.export_size || h.length > s.export_size - h.offset) {
    if (h.type == kCmdWrite || h.type == kCmdWriteZeroes) {
      return fail(kEnospc, "request extends beyond the end of the export");
    }
    return fail(kEinval, "request extends beyond the end of the export");
  }
  if (h.type == kCmdWriteZeroes && (h.flags & kCmdFlagFastZero) && (h.flags & kCmdFlagNoHole)) {
    // Zeroes that must stay allocated are written like data: not faster than a write.
    return fail(kEnotsup, "fast zero cannot keep the range allocated");
  }
  if (h.length == 0) {
    if (h.type == kCmdBlockStatus) return fail(kEinval, "zero-length block status");
    c.action = Action::kReply;
    return c;
  }
  if (h.type == kCmdCache) c.action = Action::kReply;  // advisory; Shale keeps no cache
  return c;
}

// ---------------------------------------------------------------------------------------------
// Replies

void EncodeSimpleReply(std::span<uint8_t, kSimpleReplySize> out, uint64_t handle, uint32_t error) {
  uint8_t* p = out.data();
  PutU32(p, kSimpleReplyMagic);
  PutU32(p + 4, error);
  PutU64(p + 8, handle);
}

void EncodeStructuredHeader(std::span<uint8_t, kStructuredHeaderSize> out, uint16_t flags,
                            uint16_t type, uint64_t handle, uint32_t payload_length) {
  uint8_t* p = out.data();
  PutU32(p, kStructuredReplyMagic);
  PutU16(p + 4, flags);
  PutU16(p + 6, type);
  PutU64(p + 8, handle);
  PutU32(p + 16, payload_length);
}

void EncodeOffsetDataHeader(std::span<uint8_t, kOffsetDataHeaderSize> out, uint64_t handle,
                            uint64_t offset, uint32_t data_length, bool done) {
  EncodeStructuredHeader(out.first<kStructuredHeaderSize>(), done ? kReplyFlagDone : 0,
                         kReplyTypeOffsetData, handle, data_length + 8);
  PutU64(out.data() + kStructuredHeaderSize, offset);
}

void AppendErrorChunk(std::string* out, uint64_t handle, uint32_t error, std::string_view message) {
  message = message.substr(0, kMaxErrorMessage);
  uint8_t header[kStructuredHeaderSize];
  EncodeStructuredHeader(header, kReplyFlagDone, kReplyTypeError, handle,
                         static_cast<uint32_t>(6 + message.size()));
  out->append(reinterpret_cast<const char*>(header), sizeof(header));
  AppendU32(out, error);
  AppendU16(out, static_cast<uint16_t>(message.size()));
  out->append(message);
}

void AppendBlockStatusChunk(std::string* out, uint64_t handle, uint32_t context_id,
                            std::span<const BlockDescriptor> extents) {
  uint8_t header[kStructuredHeaderSize];
  EncodeStructuredHeader(header, kReplyFlagDone, kReplyTypeBlockStatus, handle,
                         static_cast<uint32_t>(4 + 8 * extents.size()));
  out->append(reinterpret_cast<const char*>(header), sizeof(header));
  AppendU32(out, context_id);
  for (const BlockDescriptor& e : extents) {
    AppendU32(out, e.length);
    AppendU32(out, e.flags);
  }
}

uint32_t NbdErrorFromStatus(const Status& status) {
  switch (status.ToErrno()) {
    case 0:
      return 0;
    case EPERM:
    case EACCES:
    case EROFS:
      return kEperm;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case EOPNOTSUPP:
      return kEnotsup;
    case ESHUTDOWN:
    case ECANCELED:
      return kEshutdown;
    default:
      return kEio;
  }
}

}  // namespace shale::nbd
