// AuditLog: <data-dir>/audit.log, one JSON object per line for every state-changing action of
// the control plane (docs/operations.md, "Audit log").
//
// Append() writes the line with O_APPEND and fdatasync()s it before it returns, so a record the
// caller waited for survives kill -9 and power loss; the gRPC interceptor (audit_interceptor.h)
// calls it before the response goes out. Rotation by size: when the next line would take the
// file past max_bytes, audit.log becomes audit.log.1 (audit.log.1 becomes .2, ...; the oldest
// beyond max_files is removed), and the directory is fsync'ed. A torn last line (a crash in the
// middle of a write) is skipped by Read().
//
// Failing closed: after an append failed the log is "broken"; CheckWritable() (the daemon's
// change gate, called before every volume and pool change) then tries to append a
// "AuditLogRecovered" record and refuses with UNAVAILABLE until that works, so no further change
// happens unrecorded. The failed append itself is logged at ERROR with the record.
//
// Threading: every method is thread-safe (one mutex; appends are serialized).
#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/common/result.h"

namespace shale::daemon::ops {

struct AuditLogOptions {
  std::string path;                         // <data-dir>/audit.log
  uint64_t max_bytes = uint64_t{64} << 20;  // per file, before rotation
  unsigned max_files = 5;                   // rotated files kept besides the current one
};

struct AuditQuery {
  uint64_t since_unix_ns = 0;  // records at or after this time
  std::string volume;          // records naming this volume in "volumes"; empty: all
  size_t limit = 1000;         // the newest this many of the matching records
};

// A new record: "time" (RFC 3339, UTC, milliseconds), "time_unix_ns", "source" ("control", "csi",
// "shaled") and "action" (the RPC's name, or "ShaledStart", "AuditLogRecovered").
nlohmann::json NewAuditRecord(std::string_view source, std::string_view action);

class AuditLog {
 public:
  // Opens (creates, mode 0600) the log for appending.
  static Result<std::unique_ptr<AuditLog>> Open(const AuditLogOptions& options);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Appends `record` (an object) as one line and makes it durable. On failure the error is
  // logged, counted (write_errors) and returned.
  Status Append(const nlohmann::json& record);
  // Matching records, oldest first (across the rotated files); `truncated` says whether older
  // matches were left out for the limit.
  Result<std::vector<std::string>> Read(const AuditQuery& query, bool* truncated);

  // OK when the last append worked, or when a probe record ("AuditLogRecovered") could be
  // written now; else Unavailable naming the file and the error.
  Status CheckWritable();

  const std::string& path() const { return options_.path; }
  uint64_t records_written() const;
  uint64_t write_errors() const;

 private:
  explicit AuditLog(AuditLogOptions options) : options_(std::move(options)) {}
  Status OpenFileLocked();
  Status RotateLocked();
  Status AppendLocked(const std::string& line);

  const AuditLogOptions options_;
  mutable std::mutex mu_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t records_ = 0;
  uint64_t errors_ = 0;
  std::string last_error_;  // of the last failed append; empty while the log works
};

}  // namespace shale::daemon::ops
