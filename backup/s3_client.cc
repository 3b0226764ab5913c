#include "backup/s3_client.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <ctime>
#include <random>
#include <thread>

#include "engine/common/assert.h"

namespace shale::backup {

namespace s3internal {

namespace {

std::string DecodeEntities(std::string_view s) {
  static constexpr std::pair<std::string_view, char> kEntities[] = {
      {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    bool replaced = false;
    if (s[i] == '&') {
      for (const auto& [entity, c] : kEntities) {
        if (s.substr(i).starts_with(entity)) {
          out += c;
          i += entity.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out += s[i++];
  }
  return out;
}

}  // namespace

std::vector<std::string_view> XmlElements(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  size_t pos = 0;
  while (true) {
    const size_t a = xml.find(open, pos);
    if (a == std::string_view::npos) break;
    const size_t b = xml.find(close, a + open.size());
    if (b == std::string_view::npos) break;
    out.push_back(xml.substr(a + open.size(), b - a - open.size()));
    pos = b + close.size();
  }
  return out;
}

std::vector<std::string> XmlValues(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  for (std::string_view v : XmlElements(xml, tag)) out.push_back(DecodeEntities(v));
  return out;
}

std::optional<int64_t> ParseIsoTime(std::string_view text) {
  struct tm tm {};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0;
  const std::string s(text.substr(0, 19));
  if (sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &year, &mon, &day, &hour, &min, &sec) != 6) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  return static_cast<int64_t>(timegm(&tm));
}

std::string UriEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  SHALE_CHECK(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1,
              "EVP_Digest(sha256)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

}  // namespace s3internal

namespace {

std::once_flag g_curl_init;

constexpr uint64_t kMaxResponseBytes = uint64_t{1} << 31;

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* body = static_cast<std::string*>(user);
  const size_t len = size * n;
  if (body->size() + len > kMaxResponseBytes) return 0;  // aborts the transfer
  body->append(data, len);
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* date = static_cast<std::string*>(user);
  std::string_view line(data, size * n);
  if (line.size() > 5 && (line.starts_with("Date:") || line.starts_with("date:"))) {
    std::string_view v = line.substr(5);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n')) v.remove_suffix(1);
    *date = std::string(v);
  }
  return size * n;
}

bool RetryableHttp(long http, std::string_view body) {
  if (http == 429 || http == 500 || http == 502 || http == 503 || http == 504) return true;
  return http == 400 && body.find("<Code>RequestTimeout</Code>") != std::string_view::npos;
}

bool TlsVerification(int code) {
  return code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE ||
         code == CURLE_SSL_CERTPROBLEM || code == CURLE_SSL_ISSUER_ERROR;
}

}  // namespace

struct S3Client::Request {
  std::string method;  // GET, PUT, DELETE
  std::string key;     // "" = the bucket itself
  std::string query;   // canonical (sorted, encoded) query string, or ""
  std::string_view body;
  std::optional<std::pair<uint64_t, uint64_t>> range;
};

struct S3Client::Response {
  int curl_code = CURLE_OK;
  std::string curl_error;
  long http = 0;
  std::string body;
  std::string date;
};

S3Client::S3Client(S3Config config, std::string bucket)
    : config_(std::move(config)),
      bucket_(std::move(bucket)),
      base_url_(config_.endpoint.BucketUrl(bucket_)),
      sigv4_("aws:amz:" + config_.endpoint.RegionOrDefault() + ":s3") {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

S3Client::~S3Client() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

std::string S3Client::Describe() const {
  return "s3://" + bucket_ + " at " + config_.endpoint.Describe();
}

void* S3Client::TakeHandle() {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  CURL* h = curl_easy_init();
  SHALE_CHECK(h != nullptr, "curl_easy_init");
  return h;
}

void S3Client::ReturnHandle(void* curl) {
  std::lock_guard lock(mu_);
  idle_.push_back(curl);
}

Result<S3Client::Response> S3Client::PerformOnce(void* handle, const Request& r) {
  CURL* curl = static_cast<CURL*>(handle);
  curl_easy_reset(curl);
  Response resp;
  char errbuf[CURL_ERROR_SIZE] = {0};
  std::string url = base_url_;
  if (!r.key.empty()) url += "/" + r.key;
  if (!r.query.empty()) url += "?" + r.query;
  curl_slist* headers = nullptr;
  const std::string sha = "x-amz-content-sha256: " + s3internal::Sha256Hex(r.body);
  headers = curl_slist_append(headers, sha.c_str());
  std::string token;
  if (!config_.credentials.session_token.empty()) {
    token = "x-amz-security-token: " + config_.credentials.session_token;
    headers = curl_slist_append(headers, token.c_str());
  }
  std::string range;
  if (r.range) {
    range =
        "Range: bytes=" + std::to_string(r.range->first) + "-" + std::to_string(r.range->second);
    headers = curl_slist_append(headers, range.c_str());
  }
  if (r.method == "PUT") {
    headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, r.body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
  } else if (r.method == "DELETE") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, sigv4_.c_str());
  curl_easy_setopt(curl, CURLOPT_USERNAME, config_.credentials.access_key_id.c_str());
  curl_easy_setopt(curl, CURLOPT_PASSWORD, config_.credentials.secret_access_key.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp.body);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp.date);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT,
                   static_cast<long>(config_.connect_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, static_cast<long>(config_.stall_timeout.count()));
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!config_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, config_.ca_file.c_str());
  const CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  resp.curl_code = code;
  if (code != CURLE_OK) {
    resp.curl_error = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(code);
    return resp;
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.http);
  stats_.bytes_sent += r.body.size();
  stats_.bytes_received += resp.body.size();
  return resp;
}

Result<S3Client::Response> S3Client::Perform(const Request& r) {
  std::mt19937_64 rng(std::random_device{}());
  std::chrono::milliseconds backoff = config_.first_backoff;
  Response last;
  const unsigned attempts = std::max(1u, config_.max_attempts);
  for (unsigned attempt = 1; attempt <= attempts; ++attempt) {
    if (config_.cancel != nullptr && config_.cancel->load()) {
      return Status::Aborted("cancelled (shaled is stopping or the client went away)");
    }
    ++stats_.requests;
    void* h = TakeHandle();
    Result<Response> resp = PerformOnce(h, r);
    ReturnHandle(h);
    if (!resp.ok()) return resp.status();
    last = std::move(resp).value();
    if (last.curl_code == CURLE_OK && !RetryableHttp(last.http, last.body)) return last;
    if (last.curl_code != CURLE_OK && TlsVerification(last.curl_code)) break;
    if (attempt == attempts) break;
    ++stats_.retries;
    // Full jitter over [backoff/2, backoff], waking up early when cancelled.
    const auto wait = backoff / 2 + std::chrono::milliseconds(rng() % (backoff.count() / 2 + 1));
    const auto until = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < until) {
      if (config_.cancel != nullptr && config_.cancel->load()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(5));
  }
  if (last.curl_code != CURLE_OK) {
    const std::string where = config_.endpoint.Describe();
    if (TlsVerification(last.curl_code)) {
      return Status::FailedPrecondition("TLS verification of S3 endpoint " + where +
                                        " failed: " + last.curl_error +
                                        " (trust its CA with shaled --backup-ca-file)");
    }
    return Status::Unavailable("cannot reach S3 endpoint " + where + ": " + last.curl_error + " (" +
                               std::to_string(attempts) + " attempts)");
  }
  return last;  // a retryable HTTP error that persisted: Explain() words it
}

Status S3Client::Explain(const Request& r, const Response& resp) const {
  const std::vector<std::string> codes = s3internal::XmlValues(resp.body, "Code");
  const std::vector<std::string> messages = s3internal::XmlValues(resp.body, "Message");
  const std::string code = codes.empty() ? std::string() : codes.front();
  std::string detail = "HTTP " + std::to_string(resp.http);
  if (!code.empty()) detail += " " + code;
  if (!messages.empty()) detail += " (" + messages.front() + ")";
  const std::string object = "s3://" + bucket_ + (r.key.empty() ? "" : "/" + r.key);
  const std::string where = config_.endpoint.Describe();
  if (resp.http == 404 && code == "NoSuchBucket") {
    return Status::NotFound("bucket '" + bucket_ + "' does not exist at " + where);
  }
  if (resp.http == 404) return Status::NotFound(object + " does not exist");
  if (resp.http == 403) {
    return Status::PermissionDenied("S3 at " + where + " refused " + r.method + " " + object +
                                    ": " + detail +
                                    "; check shaled's S3 credentials and the "
                                    "bucket's policy");
  }
  if (resp.http >= 500 || resp.http == 429) {
    return Status::Unavailable("S3 at " + where + " kept failing " + r.method + " " + object +
                               ": " + detail + " (" + std::to_string(config_.max_attempts) +
                               " attempts)");
  }
  return Status::FailedPrecondition("S3 at " + where + " refused " + r.method + " " + object +
                                    ": " + detail);
}

Status S3Client::Put(const std::string& key, std::string_view body) {
  Request r{.method = "PUT", .key = key, .body = body};
  SHALE_ASSIGN_OR_RETURN(Response resp, Perform(r));
  if (resp.http / 100 != 2) return Explain(r, resp);
  return Status::Ok();
}

Result<std::string> S3Client::Get(const std::string& key,
                                  std::optional<std::pair<uint64_t, uint64_t>> range) {
  Request r{.method = "GET", .key = key, .range = range};
  SHALE_ASSIGN_OR_RETURN(Response resp, Perform(r));
  if (resp.http == 416) return std::string();  // a range past the end of an empty object
  if (resp.http / 100 != 2) return Explain(r, resp);
  return std::move(resp.body);
}

Status S3Client::Delete(const std::string& key) {
  Request r{.method = "DELETE", .key = key};
  SHALE_ASSIGN_OR_RETURN(Response resp, Perform(r));
  if (resp.http / 100 != 2 && resp.http != 404) return Explain(r, resp);
  if (resp.http == 404 && resp.body.find("NoSuchBucket") != std::string::npos) {
    return Explain(r, resp);
  }
  return Status::Ok();
}

Result<S3Listing> S3Client::List(const std::string& prefix) {
  S3Listing out;
  std::string token;
  for (int page = 0; page < 1000000; ++page) {
    // Parameters in canonical (sorted) order, values encoded: the SigV4 canonical query.
    std::string query;
    if (!token.empty()) query += "continuation-token=" + s3internal::UriEncode(token) + "&";
    query += "list-type=2&prefix=" + s3internal::UriEncode(prefix);
    Request r{.method = "GET", .query = query};
    SHALE_ASSIGN_OR_RETURN(Response resp, Perform(r));
    if (resp.http / 100 != 2) return Explain(r, resp);
    for (std::string_view entry : s3internal::XmlElements(resp.body, "Contents")) {
      S3Object obj;
      const auto keys = s3internal::XmlValues(entry, "Key");
      const auto sizes = s3internal::XmlValues(entry, "Size");
      const auto times = s3internal::XmlValues(entry, "LastModified");
      if (keys.empty() || sizes.empty()) continue;
      obj.key = keys.front();
      obj.size = std::strtoull(sizes.front().c_str(), nullptr, 10);
      if (!times.empty())
        obj.last_modified_unix = s3internal::ParseIsoTime(times.front()).value_or(0);
      out.objects.push_back(std::move(obj));
    }
    if (!resp.date.empty()) {
      const time_t t = curl_getdate(resp.date.c_str(), nullptr);
      if (t > 0) out.server_time_unix = t;
    }
    const auto truncated = s3internal::XmlValues(resp.body, "IsTruncated");
    const auto next = s3internal::XmlValues(resp.body, "NextContinuationToken");
    if (truncated.empty() || truncated.front() != "true" || next.empty()) break;
    token = next.front();
  }
  if (out.server_time_unix == 0) out.server_time_unix = static_cast<int64_t>(time(nullptr));
  return out;
}

}  // namespace shale::backup
