#include "backup/location.h"

#include <ctime>
#include <random>

#include "engine/common/units.h"

namespace shale::backup {

namespace {

constexpr std::string_view kScheme = "s3://";

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z'); }
bool IsSegmentChar(char c) { return IsAlnum(c) || c == '.' || c == '_' || c == '-'; }

Status ValidateBucket(std::string_view bucket, std::string_view url) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("bucket '" + std::string(bucket) + "' in '" + std::string(url) +
                                   "' " + why);
  };
  if (bucket.empty()) return Status::InvalidArgument("'" + std::string(url) + "' names no bucket");
  if (bucket.size() < 3 || bucket.size() > 63) return bad("must be 3..63 bytes long");
  for (char c : bucket) {
    if (!IsLowerAlnum(c) && c != '.' && c != '-') {
      return bad("may only hold lowercase letters, digits, '.' and '-'");
    }
  }
  if (!IsLowerAlnum(bucket.front()) || !IsLowerAlnum(bucket.back())) {
    return bad("must start and end with a lowercase letter or digit");
  }
  return Status::Ok();
}

Status ValidatePrefix(std::string_view prefix, std::string_view url) {
  if (prefix.size() > kMaxPrefixLength) {
    return Status::InvalidArgument("prefix of '" + std::string(url) + "' is " +
                                   std::to_string(prefix.size()) + " bytes long; the limit is " +
                                   std::to_string(kMaxPrefixLength));
  }
  size_t start = 0;
  while (start <= prefix.size() && !prefix.empty()) {
    size_t end = prefix.find('/', start);
    if (end == std::string_view::npos) end = prefix.size();
    std::string_view seg = prefix.substr(start, end - start);
    if (seg.empty() || seg == "." || seg == "..") {
      return Status::InvalidArgument("prefix of '" + std::string(url) +
                                     "' has an empty, '.' or '..' path segment");
    }
    for (char c : seg) {
      if (!IsSegmentChar(c)) {
        return Status::InvalidArgument(
            "prefix of '" + std::string(url) + "' holds '" + std::string(1, c) +
            "'; path segments may only hold letters, digits, '.', '_' and '-'");
      }
    }
    start = end + 1;
  }
  return Status::Ok();
}

}  // namespace

std::string Location::ToString() const {
  return std::string(kScheme) + bucket + (prefix.empty() ? "" : "/" + prefix);
}

std::string Location::Key(std::string_view name) const {
  return prefix.empty() ? std::string(name) : prefix + "/" + std::string(name);
}

Result<Location> ParseLocation(std::string_view url) {
  if (!url.starts_with(kScheme)) {
    return Status::InvalidArgument("'" + std::string(url) +
                                   "' is not an S3 location (expected s3://BUCKET/PREFIX)");
  }
  std::string_view rest = url.substr(kScheme.size());
  while (rest.ends_with('/')) rest.remove_suffix(1);
  Location loc;
  const size_t slash = rest.find('/');
  loc.bucket = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) loc.prefix = std::string(rest.substr(slash + 1));
  SHALE_RETURN_IF_ERROR(ValidateBucket(loc.bucket, url));
  SHALE_RETURN_IF_ERROR(ValidatePrefix(loc.prefix, url));
  return loc;
}

std::string BackupRef::ToString() const { return location.ToString() + "/" + id; }

Result<BackupRef> ParseBackupRef(std::string_view url) {
  SHALE_ASSIGN_OR_RETURN(Location whole, ParseLocation(url));
  BackupRef ref;
  const size_t slash = whole.prefix.rfind('/');
  if (whole.prefix.empty()) {
    return Status::InvalidArgument("'" + std::string(url) +
                                   "' names no backup (expected s3://BUCKET/PREFIX/BACKUP-ID, "
                                   "the id `shale backup list` shows)");
  }
  ref.id = slash == std::string::npos ? whole.prefix : whole.prefix.substr(slash + 1);
  ref.location.bucket = whole.bucket;
  ref.location.prefix = slash == std::string::npos ? "" : whole.prefix.substr(0, slash);
  Status valid = ValidateBackupId(ref.id);
  if (!valid.ok()) {
    return Status::InvalidArgument("'" + std::string(url) + "': " + std::string(valid.message()));
  }
  return ref;
}

Status Endpoint::Validate() const {
  if (!url.empty()) {
    std::string_view rest = url;
    if (rest.starts_with("https://")) {
      rest.remove_prefix(8);
    } else if (rest.starts_with("http://")) {
      rest.remove_prefix(7);
    } else {
      return Status::InvalidArgument("S3 endpoint '" + url +
                                     "' must start with http:// or https://");
    }
    while (rest.ends_with('/')) rest.remove_suffix(1);
    if (rest.empty()) return Status::InvalidArgument("S3 endpoint '" + url + "' names no host");
    for (char c : rest) {
      if (c == '/' || c == '?' || c == '#' || c == '@' || c <= ' ' || c == 127) {
        return Status::InvalidArgument("S3 endpoint '" + url +
                                       "' must be scheme://host[:port] only (no path, query or "
                                       "credentials)");
      }
    }
  }
  if (region.size() > 32) return Status::InvalidArgument("S3 region is longer than 32 bytes");
  for (char c : region) {
    if (!IsLowerAlnum(c) && c != '-') {
      return Status::InvalidArgument("S3 region '" + region +
                                     "' may only hold lowercase letters, digits and '-'");
    }
  }
  return Status::Ok();
}

std::string Endpoint::BucketUrl(std::string_view bucket) const {
  if (url.empty()) {
    return "https://" + std::string(bucket) + ".s3." + RegionOrDefault() + ".amazonaws.com";
  }
  std::string base = url;
  while (base.ends_with('/')) base.pop_back();
  return base + "/" + std::string(bucket);
}

std::string Endpoint::Describe() const {
  if (url.empty()) return "AWS S3 (" + RegionOrDefault() + ")";
  std::string base = url;
  while (base.ends_with('/')) base.pop_back();
  return base;
}

std::string NewBackupId(std::string_view volume, uint64_t unix_ns) {
  const time_t secs = static_cast<time_t>(unix_ns / 1000000000ull);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char stamp[32];
  strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
  std::random_device rd;
  char tail[8];
  snprintf(tail, sizeof(tail), "%06x", rd() & 0xffffffu);
  return std::string(volume) + "." + stamp + "." + tail;
}

Result<std::string> VolumeOfBackupId(std::string_view id) {
  SHALE_RETURN_IF_ERROR(ValidateBackupId(id));
  // The stamp and the tail hold no '.', so the volume is everything before the last two dots.
  const size_t tail = id.rfind('.');
  const size_t stamp = id.rfind('.', tail - 1);
  return std::string(id.substr(0, stamp));
}

Status ValidateBackupId(std::string_view id) {
  auto bad = [&] {
    return Status::InvalidArgument("'" + std::string(id) +
                                   "' is not a backup id (VOLUME.YYYYMMDDTHHMMSSZ.XXXXXX, as "
                                   "`shale backup list` shows)");
  };
  const size_t tail = id.rfind('.');
  if (tail == std::string_view::npos || tail == 0) return bad();
  const size_t stamp = id.rfind('.', tail - 1);
  if (stamp == std::string_view::npos || stamp == 0) return bad();
  std::string_view hex = id.substr(tail + 1);
  std::string_view when = id.substr(stamp + 1, tail - stamp - 1);
  if (hex.size() != 6 || when.size() != 16 || when[8] != 'T' || when[15] != 'Z') return bad();
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return bad();
  }
  for (size_t i = 0; i < 15; ++i) {
    if (i != 8 && (when[i] < '0' || when[i] > '9')) return bad();
  }
  if (!ValidateName("volume", id.substr(0, stamp)).ok()) return bad();
  return Status::Ok();
}

}  // namespace shale::backup
