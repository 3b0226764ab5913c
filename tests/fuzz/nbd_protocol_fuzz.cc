// libFuzzer target for the NBD protocol codec (nbd/protocol.h, nbd/handshake.h).
//
// The input is what a client sends on a fresh connection, preceded by one byte that sets how
// many bytes arrive per read (1..64, its low six bits), so partial headers and options are
// exercised too, and whether the server requires TLS (its top bit: FORCEDTLS, as shaled's TCP
// listener with --nbd-tls-*). In that mode nothing may be looked up or listed before
// NBD_OPT_STARTTLS, every reply before it must be NBD_REP_ERR_TLS_REQD, NBD_REP_ACK (STARTTLS,
// ABORT) or NBD_REP_ERR_INVALID (STARTTLS with data); at STARTTLS the target plays a completed
// TLS handshake and the rest of the input is what the client sends inside TLS. The
// handshake machine negotiates against two fake exports ("vol", read-write, and "ro",
// read-only; any other name is unknown); once it reaches the transmission phase, the rest of
// the input is parsed as requests, each checked by CheckRequest and answered by the reply
// encoders. Every output is parsed back and checked: option replies must be well formed and
// requests CheckRequest lets through must be safe to execute. A violated invariant aborts.
//
// Built with -fsanitize=fuzzer by `scripts/build --fuzz` (tests/fuzz/CMakeLists.txt); the same
// entry point runs over the seed corpus in the normal build (nbd_protocol_corpus_test).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace shale::nbd {
namespace {

#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "nbd fuzz invariant failed at line %d: %s\n", __LINE__, #cond); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

constexpr uint64_t kVolSize = 1 << 20;

bool IsNbdError(uint32_t e) {
  return e == kEperm || e == kEio || e == kEnomem || e == kEinval || e == kEnospc ||
         e == kEoverflow || e == kEnotsup || e == kEshutdown;
}

// True if [pos, end) of the server's output is a sequence of well-formed option replies.
bool WalkOptionReplies(const uint8_t* p, size_t pos, size_t end) {
  while (pos < end) {
    const size_t left = end - pos;
    if (left < kOptionReplyHeaderSize || GetU64(p + pos) != kOptionReplyMagic) return false;
    const uint32_t type = GetU32(p + pos + 12);
    const uint32_t len = GetU32(p + pos + 16);
    if (len > left - kOptionReplyHeaderSize) return false;
    const uint8_t* payload = p + pos + kOptionReplyHeaderSize;
    if (type == kRepAck && len != 0) return false;
    if (type == kRepInfo) {
      if (len < 2) return false;
      const uint16_t info = GetU16(payload);
      if (info == kInfoExport && len != 12) return false;
      if (info == kInfoBlockSize && len != 14) return false;
    }
    if (type == kRepServer && (len < 4 || GetU32(payload) > len - 4)) return false;
    if (type == kRepMetaContext && len < 4) return false;
    pos += kOptionReplyHeaderSize + len;
  }
  return true;
}

// The server's handshake output: greeting, option replies, and after NBD_OPT_EXPORT_NAME its
// reply (10 bytes, or 134 with the zero padding).
void CheckHandshakeOutput(const std::string& out, const Handshake& hs) {
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  const size_t size = out.size();
  FUZZ_CHECK(size >= kGreetingSize);
  FUZZ_CHECK(GetU64(p) == kNbdMagic && GetU64(p + 8) == kOptionMagic);
  if (hs.state() == Handshake::State::kDone && hs.session().via_export_name) {
    bool ok = false;
    for (size_t tail : {kExportNameReplySize, kExportNameReplySize + kExportNameZeroes}) {
      if (size >= kGreetingSize + tail && GetU64(p + size - tail) == kVolSize &&
          WalkOptionReplies(p, kGreetingSize, size - tail)) {
        ok = true;
      }
    }
    FUZZ_CHECK(ok);
    return;
  }
  FUZZ_CHECK(WalkOptionReplies(p, kGreetingSize, size));
}

// FORCEDTLS before STARTTLS: the option replies in `out` (after the greeting) say nothing but
// "TLS required", acknowledge STARTTLS or ABORT, or refuse a malformed STARTTLS.
void CheckRepliesBeforeTls(const std::string& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  for (size_t pos = kGreetingSize; pos + kOptionReplyHeaderSize <= out.size();) {
    const uint32_t option = GetU32(p + pos + 8);
    const uint32_t type = GetU32(p + pos + 12);
    FUZZ_CHECK(type == kRepErrTlsReqd ||
               (type == kRepAck && (option == kOptStartTls || option == kOptAbort)) ||
               (type == kRepErrInvalid && option == kOptStartTls));
    pos += kOptionReplyHeaderSize + GetU32(p + pos + 16);
  }
}

// The transmission phase: parse requests, check them, encode replies.
void RunTransmission(const Session& session, const uint8_t* data, size_t size) {
  const SessionParams& s = session.params;
  FUZZ_CHECK(s.export_size == kVolSize);
  FUZZ_CHECK(s.min_block == 512 && s.max_block >= s.min_block);
  FUZZ_CHECK(((s.transmission_flags & kTxReadOnly) != 0) == session.export_info.read_only);
  size_t pos = 0;
  while (size - pos >= kRequestHeaderSize) {
    RequestHeader h;
    if (!DecodeRequestHeader(
            std::span<const uint8_t, kRequestHeaderSize>(data + pos, kRequestHeaderSize), &h)) {
      return;  // the server hangs up
    }
    pos += kRequestHeaderSize;
    uint8_t again[kRequestHeaderSize];
    EncodeRequestHeader(h, again);
    FUZZ_CHECK(std::equal(again, again + kRequestHeaderSize, data + pos - kRequestHeaderSize));

    const RequestCheck c = CheckRequest(h, s);
    FUZZ_CHECK(c.payload == (h.type == kCmdWrite ? h.length : 0));
    std::string reply;
    switch (c.action) {
      case RequestCheck::Action::kDisconnect:
        FUZZ_CHECK(h.type == kCmdDisc);
        return;
      case RequestCheck::Action::kError:
        FUZZ_CHECK(IsNbdError(c.error));
        FUZZ_CHECK(!c.reason.empty());
        if (s.structured_replies) {
          AppendErrorChunk(&reply, h.handle, c.error, c.reason);
          FUZZ_CHECK(reply.size() == kStructuredHeaderSize + 6 + c.reason.size());
        }
        break;
      case RequestCheck::Action::kReply:
        FUZZ_CHECK(h.type == kCmdCache || h.length == 0);
        FUZZ_CHECK(h.type != kCmdBlockStatus && h.type != kCmdFlush);
        break;
      case RequestCheck::Action::kExecute: {
        FUZZ_CHECK(h.type == kCmdRead || h.type == kCmdWrite || h.type == kCmdFlush ||
                   h.type == kCmdTrim || h.type == kCmdWriteZeroes || h.type == kCmdBlockStatus);
        if (h.type == kCmdFlush) {
          FUZZ_CHECK(h.offset == 0 && h.length == 0);
          break;
        }
        FUZZ_CHECK(h.length > 0);
        FUZZ_CHECK(h.offset <= s.export_size && h.length <= s.export_size - h.offset);
        FUZZ_CHECK(h.offset % s.min_block == 0 && h.length % s.min_block == 0);
        if (h.type == kCmdRead || h.type == kCmdWrite) FUZZ_CHECK(h.length <= s.max_block);
        if (s.transmission_flags & kTxReadOnly) {
          FUZZ_CHECK(h.type != kCmdWrite && h.type != kCmdTrim && h.type != kCmdWriteZeroes);
        }
        if (h.type == kCmdBlockStatus) {
          FUZZ_CHECK(s.block_status);
          const BlockDescriptor d[2] = {{h.length / 2, kStateHole | kStateZero},
                                        {h.length - h.length / 2, 0}};
          AppendBlockStatusChunk(&reply, h.handle, kBaseAllocationContextId, d);
          FUZZ_CHECK(reply.size() == kStructuredHeaderSize + 4 + 16);
        }
        if (h.type == kCmdRead && s.structured_replies) {
          uint8_t hdr[kOffsetDataHeaderSize];
          EncodeOffsetDataHeader(hdr, h.handle, h.offset, h.length, true);
          FUZZ_CHECK(GetU32(hdr + 16) == h.length + 8);
        }
        break;
      }
    }
    uint8_t simple[kSimpleReplySize];
    EncodeSimpleReply(simple, h.handle, c.error);
    FUZZ_CHECK(GetU64(simple + 8) == h.handle);
    // Skip the payload (a real server receives or discards it).
    if (c.payload > size - pos) return;
    pos += static_cast<size_t>(c.payload);
  }
}

}  // namespace
}  // namespace shale::nbd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shale::nbd;  // NOLINT(google-build-using-namespace)
  if (size == 0) return 0;
  const size_t chunk = data[0] % 64 + 1;
  const bool tls_required = (data[0] & 0x80) != 0;
  ++data;
  --size;

  HandshakeLimits limits;
  limits.max_option_length = 4096;  // small, so the fuzzer reaches the skip path too
  limits.max_options = 64;
  Handshake hs(limits, tls_required);
  std::string out;
  AppendGreeting(&out);
  std::vector<uint8_t> buf;
  size_t fed = 0;
  while (true) {
    const Handshake::State state = hs.state();
    if (state == Handshake::State::kDone || state == Handshake::State::kClosed) break;
    // FORCEDTLS: no export is looked up or listed before TLS.
    if (state == Handshake::State::kNeedExport || state == Handshake::State::kNeedExportList) {
      FUZZ_CHECK(!tls_required || hs.tls_active());
    }
    if (state == Handshake::State::kStartTls) {
      FUZZ_CHECK(tls_required && !hs.tls_active());
      CheckRepliesBeforeTls(out);
      hs.TlsEstablished();
      FUZZ_CHECK(hs.state() == Handshake::State::kReading && hs.tls_active());
      continue;
    }
    if (state == Handshake::State::kNeedExport) {
      const std::string& name = hs.export_name();
      if (name == "vol" || name == "ro") {
        hs.ProvideExport(ExportInfo{name, kVolSize, name == "ro", "a fuzzed export"}, &out);
      } else {
        hs.ProvideExport(shale::Status::NotFound("no such export"), &out);
      }
      FUZZ_CHECK(hs.state() != Handshake::State::kNeedExport);
      continue;
    }
    if (state == Handshake::State::kNeedExportList) {
      hs.ProvideExportList({"vol", "ro"}, &out);
      FUZZ_CHECK(hs.state() == Handshake::State::kReading);
      continue;
    }
    // kReading. Output past the high-water mark stops Consume: "send" it (check, drop).
    if (out.size() > Handshake::kOutputHighWater) {
      CheckHandshakeOutput(out, hs);
      out.clear();
      AppendGreeting(&out);  // keeps the checker's framing
    }
    // Hand over what a read of `chunk` bytes would bring.
    const size_t n = std::min(chunk, size - fed);
    buf.insert(buf.end(), data + fed, data + fed + n);
    fed += n;
    const size_t used = hs.Consume(buf, &out);
    FUZZ_CHECK(used <= buf.size());
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    FUZZ_CHECK(hs.bytes_wanted() >= 1 && hs.bytes_wanted() <= limits.max_option_length);
    if (n == 0 && used == 0 && hs.state() == Handshake::State::kReading) break;  // input is over
  }
  CheckHandshakeOutput(out, hs);
  if (tls_required && !hs.tls_active()) CheckRepliesBeforeTls(out);
  if (hs.state() == Handshake::State::kDone) {
    FUZZ_CHECK(!tls_required || hs.tls_active());
    // What is left (buffered and not yet read) is the transmission stream.
    buf.insert(buf.end(), data + fed, data + size);
    RunTransmission(hs.session(), buf.data(), buf.size());
  }
  return 0;
}
