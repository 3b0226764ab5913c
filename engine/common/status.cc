#include "engine/common/status.h"

#include <cerrno>
#include <cstring>

namespace shale {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalidArgument:
      return "invalid argument";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kAlreadyExists:
      return "already exists";
    case StatusCode::kNoSpace:
      return "no space";
    case StatusCode::kIoError:
      return "I/O error";
    case StatusCode::kCorruption:
      return "corruption";
    case StatusCode::kPermissionDenied:
      return "permission denied";
    case StatusCode::kFailedPrecondition:
      return "failed precondition";
    case StatusCode::kOutOfRange:
      return "out of range";
    case StatusCode::kNotSupported:
      return "not supported";
    case StatusCode::kBusy:
      return "busy";
    case StatusCode::kUnavailable:
      return "unavailable";
    case StatusCode::kAborted:
      return "aborted";
    case StatusCode::kInternal:
      return "internal error";
  }
  return "unknown";
}

Status::Status(StatusCode code, std::string_view msg, int err)
    : rep_(code == StatusCode::kOk ? nullptr
                                   : std::make_unique<Rep>(Rep{code, err, std::string(msg)})) {}

Status::Status(const Status& other)
    : rep_(other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr) {}

Status& Status::operator=(const Status& other) {
  if (this != &other) rep_ = other.rep_ ? std::make_unique<Rep>(*other.rep_) : nullptr;
  return *this;
}

Status Status::FromErrno(int err, std::string_view context) {
  if (err < 0) err = -err;
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  StatusCode code;
  switch (err) {
    case 0:
      return Status();
    case ENOSPC:
    case EDQUOT:
      code = StatusCode::kNoSpace;
      break;
    case ENOENT:
      code = StatusCode::kNotFound;
      break;
    case EEXIST:
      code = StatusCode::kAlreadyExists;
      break;
    case EINVAL:
      code = StatusCode::kInvalidArgument;
      break;
    case EPERM:
    case EACCES:
    case EROFS:
      code = StatusCode::kPermissionDenied;
      break;
    case EOPNOTSUPP:
    case ENOSYS:
    case ENOTTY:
      code = StatusCode::kNotSupported;
      break;
    case EBUSY:
      code = StatusCode::kBusy;
      break;
    case ECANCELED:
      code = StatusCode::kAborted;
      break;
    case EFBIG:
    case ERANGE:
      code = StatusCode::kOutOfRange;
      break;
    default:
      code = StatusCode::kIoError;
      break;
  }
  return Status(code, msg, err);
}

int Status::ToErrno() const {
  if (!rep_) return 0;
  if (rep_->err != 0) return rep_->err;
  switch (rep_->code) {
    case StatusCode::kOk:
      return 0;
    case StatusCode::kInvalidArgument:
      return EINVAL;
    case StatusCode::kNotFound:
      return ENOENT;
    case StatusCode::kAlreadyExists:
      return EEXIST;
    case StatusCode::kNoSpace:
      return ENOSPC;
    case StatusCode::kPermissionDenied:
      return EPERM;
    case StatusCode::kOutOfRange:
      return EINVAL;
    case StatusCode::kNotSupported:
      return EOPNOTSUPP;
    case StatusCode::kBusy:
      return EBUSY;
    case StatusCode::kAborted:
      return ECANCELED;
    case StatusCode::kUnavailable:
      return ESHUTDOWN;
    default:
      return EIO;
  }
}

std::string Status::ToString() const {
  if (!rep_) return "OK";
  std::string s(StatusCodeName(rep_->code));
  if (!rep_->msg.empty()) {
    s += ": ";
    s += rep_->msg;
  }
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (!rep_) return Status();
  std::string msg(context);
  msg += ": ";
  msg += rep_->msg;
  return Status(rep_->code, msg, rep_->err);
}

std::ostream& operator<<(std::ostream& os, const Status& s) { return os << s.ToString(); }

}  // namespace shale
