// Where backups live: "s3://BUCKET/PREFIX" (a place) and "s3://BUCKET/PREFIX/ID" (one backup),
// plus the S3 endpoint and region a request goes to (docs/backup.md, "Addressing").
//
// Bucket names follow S3's rules (3..63 bytes of [a-z0-9.-], starting and ending with a letter
// or digit). Prefixes are 0..512 bytes of path segments of [A-Za-z0-9._-], separated by '/'
// (no empty, "." or ".." segments): with that alphabet no key ever needs URL escaping, so the
// SigV4 canonical request is the path as written.
#pragma once

#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale::backup {

inline constexpr size_t kMaxPrefixLength = 512;

struct Location {
  std::string bucket;
  std::string prefix;  // without leading or trailing '/'; may be empty

  // "s3://BUCKET" or "s3://BUCKET/PREFIX".
  std::string ToString() const;
  // The object key of `name` under the prefix ("PREFIX/name", or "name").
  std::string Key(std::string_view name) const;
  bool operator==(const Location&) const = default;
};

// Parses "s3://BUCKET[/PREFIX][/]". InvalidArgument naming what is wrong.
Result<Location> ParseLocation(std::string_view url);

// "s3://BUCKET/PREFIX/ID": the place and the backup id (the last path segment).
struct BackupRef {
  Location location;
  std::string id;
  std::string ToString() const;
};
Result<BackupRef> ParseBackupRef(std::string_view url);

// Where requests go. An empty endpoint means AWS: https://BUCKET.s3.REGION.amazonaws.com
// (virtual-hosted style); a custom endpoint ("http://127.0.0.1:4568", "https://minio:9000")
// is addressed path-style: ENDPOINT/BUCKET/KEY.
struct Endpoint {
  std::string url;     // "" = AWS
  std::string region;  // "" = us-east-1

  // Validated: http:// or https://, a host, no path/query/credentials; region [a-z0-9-]{1,32}.
  Status Validate() const;
  std::string RegionOrDefault() const { return region.empty() ? "us-east-1" : region; }
  // "https://BUCKET.s3.REGION.amazonaws.com" or "ENDPOINT/BUCKET" (no trailing '/').
  std::string BucketUrl(std::string_view bucket) const;
  // What errors name: the endpoint URL, or "AWS S3 (REGION)".
  std::string Describe() const;
};

// Backup ids: VOLUME "." YYYYMMDDTHHMMSSZ "." 6 hex digits, e.g.
// "data.20261205T173838Z.3fa9c1" — sortable by time within a volume, unique per place.
std::string NewBackupId(std::string_view volume, uint64_t unix_ns);
// The volume part of a valid id; InvalidArgument for anything else.
Result<std::string> VolumeOfBackupId(std::string_view id);
Status ValidateBackupId(std::string_view id);

}  // namespace shale::backup
