// A small S3 client on libcurl: PUT, GET (whole or a byte range), DELETE and ListObjectsV2 of
// one bucket, signed with libcurl's built-in AWS SigV4 (CURLOPT_AWS_SIGV4; the caller-side
// x-amz-content-sha256 header carries the payload's SHA-256, which this curl version needs).
//
// Every request is retried with exponential backoff (and jitter) on connection failures,
// timeouts, 429, 5xx and S3's RequestTimeout; other answers fail at once. TLS peers are always
// verified (the system CAs, or S3Config::ca_file). Errors are one line meant for people, naming
// the endpoint, bucket and key and S3's error code — never the credentials:
//   Unavailable         the endpoint could not be reached (after the retries)
//   NotFound            NoSuchBucket (names the bucket) or NoSuchKey
//   PermissionDenied    403 (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, ...)
//   FailedPrecondition  TLS verification failed, other 4xx
//   Aborted             the cancel flag was raised
//
// Threading: thread-safe; requests from several threads run in parallel on their own curl
// handles, which are pooled so connections are reused.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backup/credentials.h"
#include "backup/location.h"
#include "engine/common/result.h"

namespace shale::backup {

struct S3Config {
  Endpoint endpoint;
  Credentials credentials;
  std::string ca_file;        // PEM bundle to trust instead of the system's (custom CAs)
  unsigned max_attempts = 5;  // per request, the first one included
  std::chrono::milliseconds first_backoff{200};  // doubled per retry, capped at 5 s
  std::chrono::seconds connect_timeout{10};
  std::chrono::seconds stall_timeout{60};     // abort a transfer that moves nothing for this long
  const std::atomic<bool>* cancel = nullptr;  // checked before every attempt and while waiting
};

struct S3Object {
  std::string key;
  uint64_t size = 0;
  int64_t last_modified_unix = 0;  // seconds, the server's clock
};

struct S3Listing {
  std::vector<S3Object> objects;  // sorted by key (as S3 returns them)
  int64_t server_time_unix = 0;   // the Date of the last answer: "now" on the server's clock
};

// Transfer counters of one client (benchmarks, the incremental test's byte budget).
struct S3Stats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> retries{0};
  std::atomic<uint64_t> bytes_sent{0};      // request bodies (PUT payloads)
  std::atomic<uint64_t> bytes_received{0};  // response bodies
};

class S3Client {
 public:
  S3Client(S3Config config, std::string bucket);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  Status Put(const std::string& key, std::string_view body);
  // The object, or [first, last] of it (inclusive, as HTTP ranges). NotFound when missing.
  Result<std::string> Get(const std::string& key,
                          std::optional<std::pair<uint64_t, uint64_t>> range = std::nullopt);
  // Deleting a missing key succeeds (S3 semantics).
  Status Delete(const std::string& key);
  // Every object whose key starts with `prefix` (all pages).
  Result<S3Listing> List(const std::string& prefix);

  const std::string& bucket() const { return bucket_; }
  std::string Describe() const;  // "s3://BUCKET at ENDPOINT"
  const S3Stats& stats() const { return stats_; }

 private:
  struct Request;
  struct Response;
  Result<Response> Perform(const Request& request);
  Result<Response> PerformOnce(void* curl, const Request& request);
  void* TakeHandle();
  void ReturnHandle(void* curl);
  Status Explain(const Request& request, const Response& response) const;

  const S3Config config_;
  const std::string bucket_;
  const std::string base_url_;  // no trailing '/'
  std::string userpwd_;         // "KEY:SECRET" for CURLOPT_USERPWD; never printed
  std::string sigv4_;           // "aws:amz:REGION:s3"
  std::mutex mu_;
  std::vector<void*> idle_;  // pooled CURL easy handles
  S3Stats stats_;
};

// Pure helpers, unit-tested.
namespace s3internal {
// Values of every <tag>...</tag> at any depth, entities decoded.
std::vector<std::string> XmlValues(std::string_view xml, std::string_view tag);
// The text of every <tag>...</tag> element (raw), for nested parsing.
std::vector<std::string_view> XmlElements(std::string_view xml, std::string_view tag);
// "2026-12-05T17:38:38.000Z" -> Unix seconds; nullopt when malformed.
std::optional<int64_t> ParseIsoTime(std::string_view text);
// RFC 3986 percent-encoding of a query value (unreserved characters stay).
std::string UriEncode(std::string_view text);
std::string Sha256Hex(std::string_view data);
}  // namespace s3internal

}  // namespace shale::backup
