// Status: the error value every Shale function returns instead of throwing.
//
// OK costs one null pointer; an error carries a code, an optional errno and a message.
// Codes are Shale's own; -errno becomes a Status once, in the io layer (FromErrno), and gRPC
// status codes appear only at the edges (csi/).
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>

namespace shale {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller's input is wrong (bad size, bad name, unaligned I/O)
  kNotFound,            // a named thing does not exist
  kAlreadyExists,       // a name is taken
  kNoSpace,             // the pool is full (ENOSPC to clients)
  kIoError,             // the device failed (EIO to clients)
  kCorruption,          // on-disk or metadata content is inconsistent (checksum, magic, version)
  kPermissionDenied,    // write to a read-only volume (EPERM to clients)
  kFailedPrecondition,  // the system is not in a state that allows the operation
  kOutOfRange,          // offset/length beyond the end of a volume or device
  kNotSupported,        // the operation is not available on this backend/kernel
  kBusy,                // in use (e.g. volume has connected clients)
  kUnavailable,         // shutting down, or a dependency is not reachable
  kAborted,             // cancelled (e.g. reactor stopped while the request was queued)
  kInternal,            // a bug: an invariant was broken
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(const Status& other);
  Status& operator=(const Status& other);
  Status(Status&&) noexcept = default;
  Status& operator=(Status&&) noexcept = default;
  ~Status() = default;

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string_view msg) {
    return {StatusCode::kInvalidArgument, msg};
  }
  static Status NotFound(std::string_view msg) { return {StatusCode::kNotFound, msg}; }
  static Status AlreadyExists(std::string_view msg) { return {StatusCode::kAlreadyExists, msg}; }
  static Status NoSpace(std::string_view msg) { return {StatusCode::kNoSpace, msg}; }
  static Status IoError(std::string_view msg, int err = 0) {
    return {StatusCode::kIoError, msg, err};
  }
  static Status Corruption(std::string_view msg) { return {StatusCode::kCorruption, msg}; }
  static Status PermissionDenied(std::string_view msg) {
    return {StatusCode::kPermissionDenied, msg};
  }
  static Status FailedPrecondition(std::string_view msg) {
    return {StatusCode::kFailedPrecondition, msg};
  }
  static Status OutOfRange(std::string_view msg) { return {StatusCode::kOutOfRange, msg}; }
  static Status NotSupported(std::string_view msg) { return {StatusCode::kNotSupported, msg}; }
  static Status Busy(std::string_view msg) { return {StatusCode::kBusy, msg}; }
  static Status Unavailable(std::string_view msg) { return {StatusCode::kUnavailable, msg}; }
  static Status Aborted(std::string_view msg) { return {StatusCode::kAborted, msg}; }
  static Status Internal(std::string_view msg) { return {StatusCode::kInternal, msg}; }
  // Maps a positive errno value (EIO, ENOSPC, EPERM, ...) to the matching code, keeping errno.
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  // errno carried by the status (0 if none). ToErrno() picks one for any code.
  int sys_errno() const { return rep_ ? rep_->err : 0; }
  int ToErrno() const;
  std::string_view message() const {
    return rep_ ? std::string_view(rep_->msg) : std::string_view();
  }
  std::string ToString() const;

  bool IsNotFound() const { return code() == StatusCode::kNotFound; }
  bool IsNoSpace() const { return code() == StatusCode::kNoSpace; }
  bool IsAlreadyExists() const { return code() == StatusCode::kAlreadyExists; }

  // Prefixes the message with context ("open pool default: ...").
  Status WithContext(std::string_view context) const;
  // Explicitly drops a status; greppable so every ignored error is a decision.
  void IgnoreError() const {}

 private:
  Status(StatusCode code, std::string_view msg, int err = 0);
  struct Rep {
    StatusCode code;
    int err;
    std::string msg;
  };
  std::unique_ptr<Rep> rep_;
};

std::ostream& operator<<(std::ostream& os, const Status& s);

}  // namespace shale

#define SHALE_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::shale::Status shale_status_ = (expr);        \
    if (!shale_status_.ok()) return shale_status_; \
  } while (0)
