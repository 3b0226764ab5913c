#include "daemon/ops/audit_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>

#include "engine/common/log.h"

namespace shale::daemon::ops {
namespace {

namespace fs = std::filesystem;

Status SyncDirectory(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + dir);
  const int rc = fsync(fd);
  const int err = errno;
  close(fd);
  return rc == 0 ? Status::Ok() : Status::FromErrno(err, "fsync " + dir);
}

bool Matches(const nlohmann::json& record, const AuditQuery& query) {
  if (!record.is_object()) return false;
  if (query.since_unix_ns != 0) {
    auto t = record.find("time_unix_ns");
    if (t == record.end() || !t->is_number_unsigned() || t->get<uint64_t>() < query.since_unix_ns) {
      return false;
    }
  }
  if (!query.volume.empty()) {
    auto v = record.find("volumes");
    if (v == record.end() || !v->is_array()) return false;
    return std::find(v->begin(), v->end(), query.volume) != v->end();
  }
  return true;
}

std::string Rfc3339(uint64_t unix_ns) {
  const time_t secs = static_cast<time_t>(unix_ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof(out), "%.*s.%03uZ", static_cast<int>(n), buf,
                static_cast<unsigned>(unix_ns / 1'000'000 % 1000));
  return out;
}

}  // namespace

nlohmann::json NewAuditRecord(std::string_view source, std::string_view action) {
  const uint64_t now =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  nlohmann::json record = nlohmann::json::object();
  record["time"] = Rfc3339(now);
  record["time_unix_ns"] = now;
  record["source"] = std::string(source);
  record["action"] = std::string(action);
  return record;
}

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const AuditLogOptions& options) {
  if (options.path.empty()) return Status::InvalidArgument("audit log needs a path");
  if (options.max_bytes < 4096) return Status::InvalidArgument("audit log max size below 4 KiB");
  std::unique_ptr<AuditLog> log(new AuditLog(options));
  std::lock_guard lock(log->mu_);
  SHALE_RETURN_IF_ERROR(log->OpenFileLocked());
  return log;
}

AuditLog::~AuditLog() {
  if (fd_ >= 0) close(fd_);
}

Status AuditLog::OpenFileLocked() {
  fd_ = open(options_.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) return Status::FromErrno(errno, "open audit log " + options_.path);
  struct stat st {};
  if (fstat(fd_, &st) != 0) return Status::FromErrno(errno, "stat audit log " + options_.path);
  size_ = static_cast<uint64_t>(st.st_size);
  // A new file must be found after a crash: its directory entry is made durable too.
  return SyncDirectory(fs::path(options_.path).parent_path().string());
}

Status AuditLog::RotateLocked() {
  close(fd_);
  fd_ = -1;
  std::error_code ec;
  const std::string base = options_.path;
  fs::remove(base + "." + std::to_string(options_.max_files), ec);
  for (unsigned i = options_.max_files; i > 1; --i) {
    const std::string from = base + "." + std::to_string(i - 1);
    if (fs::exists(from, ec)) fs::rename(from, base + "." + std::to_string(i), ec);
  }
  if (options_.max_files > 0) {
    fs::rename(base, base + ".1", ec);
    if (ec) return Status::IoError("rotate audit log " + base + ": " + ec.message());
  } else {
    fs::remove(base, ec);
  }
  return OpenFileLocked();
}

Status AuditLog::AppendLocked(const std::string& line) {
  Status st;
  if (fd_ < 0) st = OpenFileLocked();  // an earlier rotation or probe failed half way
  if (st.ok() && size_ > 0 && size_ + line.size() > options_.max_bytes) st = RotateLocked();
  if (st.ok()) {
    size_t done = 0;
    while (done < line.size()) {
      const ssize_t n = write(fd_, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        st = Status::FromErrno(n < 0 ? errno : EIO, "write audit log " + options_.path);
        break;
      }
      done += static_cast<size_t>(n);
    }
    size_ += done;
  }
  if (st.ok() && fdatasync(fd_) != 0) st = Status::FromErrno(errno, "fsync audit log");
  if (!st.ok()) {
    ++errors_;
    last_error_ = st.ToString();
    // A partial line may be in the file: the next append starts on a fresh file descriptor
    // (the torn line is skipped by Read()).
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    return st;
  }
  ++records_;
  return Status::Ok();
}

Status AuditLog::Append(const nlohmann::json& record) {
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  std::lock_guard lock(mu_);
  Status st = AppendLocked(line);
  if (!st.ok()) {
    SHALE_LOG_ERROR(
        "audit record not written; volume and pool changes are refused until the "
        "audit log can be written again",
        {"error", st.ToString()}, {"record", line.substr(0, line.size() - 1)});
  }
  return st;
}

Status AuditLog::CheckWritable() {
  std::lock_guard lock(mu_);
  if (last_error_.empty()) return Status::Ok();
  nlohmann::json probe = NewAuditRecord("shaled", "AuditLogRecovered");
  probe["result"] = "ok";
  probe["error"] = "earlier records were not written: " + last_error_;
  probe["volumes"] = nlohmann::json::array();
  const std::string before = last_error_;
  if (Status st = AppendLocked(probe.dump() + "\n"); !st.ok()) {
    return Status::Unavailable("changes are refused: the audit log " + options_.path +
                               " cannot be written (" + st.ToString() + ")");
  }
  last_error_.clear();
  SHALE_LOG_WARN("audit log writable again; changes are accepted", {"path", options_.path},
                 {"earlier_error", before});
  return Status::Ok();
}

Result<std::vector<std::string>> AuditLog::Read(const AuditQuery& query, bool* truncated) {
  std::vector<std::string> files;
  {
    std::lock_guard lock(mu_);
    for (unsigned i = options_.max_files; i >= 1; --i) {
      files.push_back(options_.path + "." + std::to_string(i));
    }
    files.push_back(options_.path);
  }
  std::deque<std::string> out;
  bool dropped = false;
  const size_t limit = std::max<size_t>(query.limit, 1);
  for (const std::string& file : files) {
    std::ifstream in(file);
    if (!in) continue;  // not rotated that far yet
    for (std::string line; std::getline(in, line);) {
      nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_discarded() || !Matches(record, query)) continue;  // a torn line, a filter
      out.push_back(std::move(line));
      if (out.size() > limit) {
        out.pop_front();
        dropped = true;
      }
    }
  }
  if (truncated != nullptr) *truncated = dropped;
  return std::vector<std::string>(out.begin(), out.end());
}

uint64_t AuditLog::records_written() const {
  std::lock_guard lock(mu_);
  return records_;
}

uint64_t AuditLog::write_errors() const {
  std::lock_guard lock(mu_);
  return errors_;
}

}  // namespace shale::daemon::ops
