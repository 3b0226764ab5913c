// Handshake: the NBD option negotiation of one connection as a pure state machine (no I/O).
//
// The server sends the greeting (AppendGreeting), then feeds every received byte to Consume(),
// sends whatever it appended to `out`, and looks at state():
//
//   kReading        wants more bytes (at least bytes_wanted() in the caller's buffer)
//   kNeedExport     an option names an export: look export_name() up (off the data path) and
//                   call ProvideExport() with the result
//   kNeedExportList NBD_OPT_LIST: call ProvideExportList()
//   kStartTls       NBD_OPT_STARTTLS acknowledged: send `out`, run the TLS handshake (bytes not
//                   yet consumed are the client's first TLS records), then call TlsEstablished()
//                   and go on feeding the decrypted bytes
//   kDone           transmission phase agreed (NBD_OPT_GO acknowledged or NBD_OPT_EXPORT_NAME
//                   answered): send `out`, then serve session(); bytes not yet consumed belong
//                   to the transmission phase
//   kClosed         send `out` (if anything), then close; close_reason() says why
//
// Supported options: EXPORT_NAME, ABORT, LIST, INFO, GO (with NBD_INFO_EXPORT, _NAME,
// _DESCRIPTION and _BLOCK_SIZE; the block-size constraints are always sent because they are not
// the protocol's defaults), STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT (the one
// context base:allocation). Without TLS, STARTTLS gets NBD_REP_ERR_UNSUP; with `tls_required`
// the machine runs the protocol's FORCEDTLS mode: before TLS every option but STARTTLS and
// ABORT gets NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which has no error reply, and a client without
// fixed newstyle are disconnected), after it a second STARTTLS gets NBD_REP_ERR_INVALID. Every
// other option gets NBD_REP_ERR_UNSUP; malformed ones NBD_REP_ERR_INVALID; options longer than
// max_option_length are skipped and get NBD_REP_ERR_TOO_BIG. Hard disconnects (kClosed) only
// where the protocol leaves no other way: unknown client flags, a bad option magic, an
// NBD_OPT_EXPORT_NAME that cannot be satisfied, or more than max_options options.
//
// Threading: one connection's; not thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"
#include "nbd/protocol.h"

namespace shale::nbd {

// What the server knows about an export when a client asks for it.
struct ExportInfo {
  std::string name;  // canonical name
  uint64_t size_bytes = 0;
  bool read_only = false;
  std::string description;  // optional, for people (NBD_INFO_DESCRIPTION)
};

struct HandshakeLimits {
  uint32_t min_block = 512;            // smallest alignment the exports accept
  uint32_t preferred_block = 4096;     // no read-modify-write from here up
  uint32_t max_block = 32u << 20;      // largest READ/WRITE payload
  uint32_t max_option_length = 16384;  // longer option data is skipped (NBD_REP_ERR_TOO_BIG)
  uint32_t max_options = 4096;         // more options in one handshake: hard disconnect
  bool multi_conn = true;              // advertise NBD_FLAG_CAN_MULTI_CONN
};

// The metadata context id Shale assigns to base:allocation.
inline constexpr uint32_t kBaseAllocationContextId = 1;

// What the handshake agreed on (valid in state kDone).
struct Session {
  ExportInfo export_info;
  uint16_t transmission_flags = 0;
  bool structured_replies = false;
  bool block_status = false;          // base:allocation selected for this export
  bool block_size_requested = false;  // the client promised to honour the block sizes
  bool via_export_name = false;       // entered with NBD_OPT_EXPORT_NAME rather than NBD_OPT_GO
  SessionParams params;
};

class Handshake {
 public:
  enum class State { kReading, kNeedExport, kNeedExportList, kStartTls, kDone, kClosed };

  // `tls_required`: FORCEDTLS mode (the connection can run TLS and must).
  explicit Handshake(const HandshakeLimits& limits, bool tls_required = false);
  Handshake(const Handshake&) = delete;
  Handshake& operator=(const Handshake&) = delete;

  // Processes whole protocol units from `in` while state() is kReading, appending replies to
  // `out`; returns the number of bytes used. Bytes not used must be passed again (with more
  // appended). Stops early once `out` holds more than kOutputHighWater bytes, so a client that
  // pipelines options cannot make the server buffer without bound.
  size_t Consume(std::span<const uint8_t> in, std::string* out);
  // Bytes the caller's buffer must be able to hold for Consume() to make progress.
  size_t bytes_wanted() const;

  // In kNeedExport: the result of looking up export_name(). NotFound (and any lookup error) is
  // NBD_REP_ERR_UNKNOWN for INFO/GO and a hard disconnect for EXPORT_NAME; Unavailable is
  // NBD_REP_ERR_SHUTDOWN; PermissionDenied (the client may not open it) NBD_REP_ERR_POLICY.
  void ProvideExport(const Result<ExportInfo>& info, std::string* out);
  // In kNeedExportList: the names of every export (the client may see).
  void ProvideExportList(const std::vector<std::string>& names, std::string* out);
  // In kStartTls: the TLS handshake succeeded; negotiation goes on inside TLS.
  void TlsEstablished();
  bool tls_active() const { return tls_active_; }

  State state() const { return state_; }
  const std::string& export_name() const { return pending_name_; }
  // True while the pending lookup is for NBD_OPT_GO or NBD_OPT_EXPORT_NAME (the export will be
  // used), false for NBD_OPT_INFO (only described).
  bool export_will_be_used() const { return pending_option_ != kOptInfo; }
  const std::string& close_reason() const { return close_reason_; }
  const Session& session() const { return session_; }
  uint32_t options_handled() const { return options_; }

  static constexpr size_t kOutputHighWater = 64 * 1024;

 private:
  enum class Phase { kClientFlags, kOptionHeader, kOptionData, kSkip };

  void HandleOption(std::span<const uint8_t> data, std::string* out);
  void HandleOptionBeforeTls(std::span<const uint8_t> data, std::string* out);
  void HandleInfoOrGo(std::span<const uint8_t> data, std::string* out);
  void HandleMetaContext(std::span<const uint8_t> data, std::string* out);
  void Reply(std::string* out, uint32_t type, std::string_view payload = {});
  void Close(std::string reason);
  uint16_t TransmissionFlags(bool read_only) const;

  const HandshakeLimits limits_;
  const bool tls_required_;
  bool tls_active_ = false;
  State state_ = State::kReading;
  Phase phase_ = Phase::kClientFlags;
  bool no_zeroes_ = false;
  bool structured_ = false;
  uint32_t options_ = 0;

  // The option being read or skipped.
  uint32_t option_ = 0;
  uint32_t option_length_ = 0;
  uint64_t skip_left_ = 0;
  uint32_t skip_reply_ = 0;

  // The pending export lookup.
  uint32_t pending_option_ = 0;
  std::string pending_name_;
  bool want_name_ = false;
  bool want_description_ = false;
  bool want_block_size_ = false;

  // The last NBD_OPT_SET_META_CONTEXT.
  bool meta_selected_ = false;
  std::string meta_export_;

  Session session_;
  std::string close_reason_;
};

}  // namespace shale::nbd
