#include "nbd/handshake.h"

#include <algorithm>

namespace shale::nbd {

namespace {

std::string_view AsText(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// Strings on the wire must not contain NUL and must be at most 4096 bytes long.
bool ValidString(std::string_view s) {
  return s.size() <= kMaxStringLength && s.find('\0') == std::string_view::npos;
}

// Reads a 32-bit length-prefixed string at *pos; false if it does not fit in `data`.
bool ReadString(std::span<const uint8_t> data, size_t* pos, std::string_view* out) {
  if (data.size() - *pos < 4) return false;
  const uint32_t len = GetU32(data.data() + *pos);
  *pos += 4;
  if (len > data.size() - *pos) return false;
  *out = AsText(data.subspan(*pos, len));
  *pos += len;
  return true;
}

}  // namespace

Handshake::Handshake(const HandshakeLimits& limits, bool tls_required)
    : limits_(limits), tls_required_(tls_required) {}

size_t Handshake::bytes_wanted() const {
  switch (phase_) {
    case Phase::kClientFlags:
      return kClientFlagsSize;
    case Phase::kOptionHeader:
      return kOptionHeaderSize;
    case Phase::kOptionData:
      return option_length_;
    case Phase::kSkip:
      return 1;
  }
  return 1;
}

void Handshake::Close(std::string reason) {
  state_ = State::kClosed;
  close_reason_ = std::move(reason);
}

void Handshake::Reply(std::string* out, uint32_t type, std::string_view payload) {
  AppendOptionReply(out, option_, type, payload);
}

uint16_t Handshake::TransmissionFlags(bool read_only) const {
  uint16_t flags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendCache;
  if (limits_.multi_conn) flags |= kTxCanMultiConn;
  if (structured_) flags |= kTxSendDf;  // every read is answered with one content chunk
  if (read_only) {
    flags |= kTxReadOnly;
  } else {
    flags |= kTxSendTrim | kTxSendWriteZeroes | kTxSendFastZero;
  }
  return flags;
}

size_t Handshake::Consume(std::span<const uint8_t> in, std::string* out) {
  size_t used = 0;
  while (state_ == State::kReading && out->size() <= kOutputHighWater) {
    const std::span<const uint8_t> avail = in.subspan(used);
    switch (phase_) {
      case Phase::kClientFlags: {
        if (avail.size() < kClientFlagsSize) return used;
        const uint32_t flags = GetU32(avail.data());
        used += kClientFlagsSize;
        // The protocol requires dropping a client that sets flags we do not know.
        if (flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
          Close("client sent unknown handshake flags " + std::to_string(flags));
          return used;
        }
        // TLS needs fixed newstyle (the protocol); a server that requires TLS cannot serve a
        // client without it.
        if (tls_required_ && !(flags & kClientFlagFixedNewstyle)) {
          Close("TLS is required and the client does not use fixed newstyle negotiation");
          return used;
        }
        no_zeroes_ = flags & kClientFlagNoZeroes;
        phase_ = Phase::kOptionHeader;
        break;
      }
      case Phase::kOptionHeader: {
        if (avail.size() < kOptionHeaderSize) return used;
        if (GetU64(avail.data()) != kOptionMagic) {
          Close("bad option magic");
          return used;
        }
        option_ = GetU32(avail.data() + 8);
        option_length_ = GetU32(avail.data() + 12);
        used += kOptionHeaderSize;
        if (++options_ > limits_.max_options) {
          Close("more than " + std::to_string(limits_.max_options) + " options");
          return used;
        }
        if (option_length_ > limits_.max_option_length) {
          if (option_ == kOptExportName) {
            Close("export name of " + std::to_string(option_length_) + " bytes");
            return used;
          }
          const bool known = option_ >= kOptExportName && option_ <= kOptSetMetaContext &&
                             option_ != kOptPeekExport;
          skip_reply_ = known ? kRepErrTooBig : kRepErrUnsup;
          if (tls_required_ && !tls_active_) skip_reply_ = kRepErrTlsReqd;
          skip_left_ = option_length_;
          phase_ = Phase::kSkip;
        } else {
          phase_ = Phase::kOptionData;
        }
        break;
      }
      case Phase::kOptionData: {
        if (avail.size() < option_length_) return used;
        phase_ = Phase::kOptionHeader;
        HandleOption(avail.first(option_length_), out);
        used += option_length_;
        break;
      }
      case Phase::kSkip: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(avail.size(), skip_left_));
        used += n;
        skip_left_ -= n;
        if (skip_left_ > 0) return used;
        Reply(out, skip_reply_,
              skip_reply_ == kRepErrTooBig    ? "option data too long"
              : skip_reply_ == kRepErrTlsReqd ? "TLS is required: send NBD_OPT_STARTTLS first"
                                              : "unsupported option");
        phase_ = Phase::kOptionHeader;
        break;
      }
    }
  }
  return used;
}

// FORCEDTLS before STARTTLS: nothing but STARTTLS and ABORT is answered, so nothing about the
// exports leaks to a client that has not authenticated.
void Handshake::HandleOptionBeforeTls(std::span<const uint8_t> data, std::string* out) {
  switch (option_) {
    case kOptStartTls:
      if (!data.empty()) return Reply(out, kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
      Reply(out, kRepAck);
      state_ = State::kStartTls;
      return;
    case kOptAbort:
      Reply(out, kRepAck);
      Close("client aborted the handshake");
      return;
    case kOptExportName:
      // No error reply exists for it: the protocol's answer is a hard disconnect.
      Close("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS; TLS is required");
      return;
    default:
      return Reply(out, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
  }
}

void Handshake::TlsEstablished() {
  if (state_ != State::kStartTls) return;
  tls_active_ = true;
  state_ = State::kReading;
}

void Handshake::HandleOption(std::span<const uint8_t> data, std::string* out) {
  if (tls_required_ && !tls_active_) return HandleOptionBeforeTls(data, out);
  switch (option_) {
    case kOptExportName: {
      const std::string_view name = AsText(data);
      if (!ValidString(name)) {
        // EXPORT_NAME has no error reply: the protocol's answer is a hard disconnect.
        Close("invalid export name");
        return;
      }
      pending_option_ = option_;
      pending_name_ = std::string(name);
      want_name_ = want_description_ = want_block_size_ = false;
      state_ = State::kNeedExport;
      return;
    }
    case kOptAbort:
      // Any data is ignored (as the protocol asks); the client closes after the ACK.
      Reply(out, kRepAck);
      Close("client aborted the handshake");
      return;
    case kOptList:
      if (!data.empty()) return Reply(out, kRepErrInvalid, "NBD_OPT_LIST takes no data");
      state_ = State::kNeedExportList;
      return;
    case kOptStartTls:
      if (tls_active_) return Reply(out, kRepErrInvalid, "TLS is already active");
      if (!data.empty()) return Reply(out, kRepErrInvalid, "NBD_OPT_STARTTLS takes no data");
      return Reply(out, kRepErrUnsup, "TLS is not offered on this listener");
    case kOptInfo:
    case kOptGo:
      return HandleInfoOrGo(data, out);
    case kOptStructuredReply:
      if (!data.empty()) {
        return Reply(out, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
      }
      structured_ = true;
      return Reply(out, kRepAck);
    case kOptListMetaContext:
    case kOptSetMetaContext:
      return HandleMetaContext(data, out);
    default:
      return Reply(out, kRepErrUnsup, "unsupported option " + OptionName(option_));
  }
}

void Handshake::HandleInfoOrGo(std::span<const uint8_t> data, std::string* out) {
  // 32-bit name length, name, 16-bit count, count x 16-bit information requests.
  size_t pos = 0;
  std::string_view name;
  if (!ReadString(data, &pos, &name) || data.size() - pos < 2) {
    return Reply(out, kRepErrInvalid, "malformed " + OptionName(option_));
  }
  const uint16_t count = GetU16(data.data() + pos);
  pos += 2;
  if (data.size() - pos != size_t{count} * 2) {
    return Reply(out, kRepErrInvalid,
                 OptionName(option_) + ": information request count does not match its length");
  }
  if (!ValidString(name)) return Reply(out, kRepErrInvalid, "invalid export name");
  want_name_ = want_description_ = want_block_size_ = false;
  for (uint16_t i = 0; i < count; ++i, pos += 2) {
    switch (GetU16(data.data() + pos)) {
      case kInfoName:
        want_name_ = true;
        break;
      case kInfoDescription:
        want_description_ = true;
        break;
      case kInfoBlockSize:
        want_block_size_ = true;
        break;
      default:
        break;  // NBD_INFO_EXPORT is always sent; unknown requests are ignored
    }
  }
  pending_option_ = option_;
  pending_name_ = std::string(name);
  state_ = State::kNeedExport;
}

void Handshake::HandleMetaContext(std::span<const uint8_t> data, std::string* out) {
  const bool set = option_ == kOptSetMetaContext;
  // NBD_OPT_SET_META_CONTEXT replaces the selection even when it fails.
  if (set) {
    meta_selected_ = false;
    meta_export_.clear();
  }
  if (set && !structured_) {
    return Reply(out, kRepErrInvalid, "negotiate structured replies before metadata contexts");
  }
  // 32-bit name length, name, 32-bit query count, queries (each 32-bit length + string).
  size_t pos = 0;
  std::string_view name;
  if (!ReadString(data, &pos, &name) || data.size() - pos < 4) {
    return Reply(out, kRepErrInvalid, "malformed " + OptionName(option_));
  }
  const uint32_t count = GetU32(data.data() + pos);
  pos += 4;
  if (!ValidString(name)) return Reply(out, kRepErrInvalid, "invalid export name");
  bool match = false;
  for (uint32_t i = 0; i < count; ++i) {
    std::string_view query;
    if (!ReadString(data, &pos, &query) || !ValidString(query)) {
      return Reply(out, kRepErrInvalid, "malformed query in " + OptionName(option_));
    }
    const size_t colon = query.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return Reply(out, kRepErrInvalid, "metadata context query without a namespace");
    }
    // "base:" lists every base: context; as a selection it selects nothing. Queries of other
    // namespaces, and unknown base: leaves, are ignored as the protocol requires.
    if (query == kBaseAllocation || (!set && query == "base:")) match = true;
  }
  if (pos != data.size()) {
    return Reply(out, kRepErrInvalid, "trailing bytes in " + OptionName(option_));
  }
  if (!set && count == 0) match = true;  // no query: list everything
  if (match) {
    Reply(out, kRepMetaContext,
          MetaContextPayload(set ? kBaseAllocationContextId : 0, kBaseAllocation));
  }
  if (set && match) {
    meta_selected_ = true;
    meta_export_ = std::string(name);
  }
  Reply(out, kRepAck);
}

void Handshake::ProvideExport(const Result<ExportInfo>& info, std::string* out) {
  if (state_ != State::kNeedExport) return;
  state_ = State::kReading;
  // Replies below answer the option that asked for the export.
  option_ = pending_option_;
  if (pending_option_ == kOptExportName) {
    if (!info.ok()) {
      Close("export '" + pending_name_ + "' is not available: " + info.status().ToString());
      return;
    }
    session_.export_info = *info;
    session_.structured_replies = structured_;
    session_.transmission_flags = TransmissionFlags(info->read_only);
    session_.block_status = structured_ && meta_selected_ && meta_export_ == pending_name_;
    session_.block_size_requested = false;
    session_.via_export_name = true;
    AppendExportNameReply(out, info->size_bytes, session_.transmission_flags, no_zeroes_);
  } else {
    if (!info.ok()) {
      const StatusCode code = info.status().code();
      const uint32_t type = code == StatusCode::kUnavailable        ? kRepErrShutdown
                            : code == StatusCode::kPermissionDenied ? kRepErrPolicy
                                                                    : kRepErrUnknown;
      return Reply(out, type, info.status().message().substr(0, kMaxErrorMessage));
    }
    const uint16_t flags = TransmissionFlags(info->read_only);
    Reply(out, kRepInfo, InfoExportPayload(info->size_bytes, flags));
    // Shale's constraints are not the protocol's defaults, so they are sent even unasked.
    Reply(out, kRepInfo,
          InfoBlockSizePayload(limits_.min_block, limits_.preferred_block, limits_.max_block));
    if (want_name_) Reply(out, kRepInfo, InfoStringPayload(kInfoName, info->name));
    if (want_description_ && !info->description.empty()) {
      Reply(out, kRepInfo, InfoStringPayload(kInfoDescription, info->description));
    }
    Reply(out, kRepAck);
    if (pending_option_ == kOptInfo) return;
    session_.export_info = *info;
    session_.structured_replies = structured_;
    session_.transmission_flags = flags;
    session_.block_status = structured_ && meta_selected_ && meta_export_ == pending_name_;
    session_.block_size_requested = want_block_size_;
    session_.via_export_name = false;
  }
  session_.params.export_size = session_.export_info.size_bytes;
  session_.params.transmission_flags = session_.transmission_flags;
  session_.params.structured_replies = session_.structured_replies;
  session_.params.block_status = session_.block_status;
  session_.params.min_block = limits_.min_block;
  session_.params.max_block = limits_.max_block;
  state_ = State::kDone;
}

void Handshake::ProvideExportList(const std::vector<std::string>& names, std::string* out) {
  if (state_ != State::kNeedExportList) return;
  state_ = State::kReading;
  option_ = kOptList;
  for (const std::string& name : names) Reply(out, kRepServer, ServerPayload(name));
  Reply(out, kRepAck);
}

}  // namespace shale::nbd
