// The replica protocol's payload codec helpers (bounds-checked reads, canonical label lines),
// shared by protocol.cc and protocol_admin.cc. Private to them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "replication/protocol.h"

namespace shale::replication::protocol_codec {

#define FIELD(wire, field) offsetof(wire, field)

inline Status Malformed(std::string_view what) {
  return Status::Corruption("replica protocol: " + std::string(what));
}

// The payload must be exactly `size` bytes.
inline Status Exactly(std::span<const uint8_t> p, size_t size, std::string_view what) {
  if (p.size() != size) {
    return Malformed(std::string(what) + " payload of " + std::to_string(p.size()) +
                     " bytes, expected " + std::to_string(size));
  }
  return Status::Ok();
}

inline Status ReservedZero(uint64_t v, std::string_view what) {
  return v == 0 ? Status::Ok() : Malformed(std::string(what) + ": reserved field is not zero");
}

// A string of at most `max` bytes after a fixed part at `p[fixed..]`, exactly filling the rest.
inline Status TakeString(std::span<const uint8_t> p, size_t fixed, uint32_t length, size_t max,
                         bool allow_empty, std::string_view what, std::string* out) {
  if (length > max) return Malformed(std::string(what) + " longer than " + std::to_string(max));
  if (length == 0 && !allow_empty) return Malformed(std::string(what) + " is empty");
  if (p.size() - fixed != length) {
    return Malformed(std::string(what) + " length " + std::to_string(length) +
                     " does not match the payload");
  }
  out->assign(reinterpret_cast<const char*>(p.data() + fixed), length);
  return Status::Ok();
}

inline void AppendZeros(std::string* out, size_t n) { out->append(n, '\0'); }

// Snapshot labels on the wire: "KEY=VALUE\n" per label, keys in increasing order (a Labels map's
// order: one encoding per set of labels).
inline std::string LabelLines(const Labels& labels) {
  std::string out;
  for (const auto& [k, v] : labels) out += k + "=" + v + "\n";
  return out;
}

inline Status ParseLabelLines(std::string_view lines, Labels* out) {
  out->clear();
  while (!lines.empty()) {
    const size_t end = lines.find('\n');
    if (end == std::string_view::npos) return Malformed("snapshot labels: a line without its end");
    Result<std::pair<std::string, std::string>> label = ParseLabel(lines.substr(0, end));
    if (!label.ok()) return Malformed("snapshot labels: " + label.status().ToString());
    if (!out->empty() && !(out->rbegin()->first < label->first)) {
      return Malformed("snapshot labels: keys repeated or out of order");
    }
    out->insert(out->end(), std::move(label).value());
    lines.remove_prefix(end + 1);
  }
  if (out->size() > kMaxLabels) return Malformed("snapshot labels: too many");
  return Status::Ok();
}
inline uint8_t* Tail(std::string* out, size_t n) {
  const size_t at = out->size();
  AppendZeros(out, n);
  return reinterpret_cast<uint8_t*>(out->data() + at);
}

inline void AppendString(std::string* out, std::string_view s, size_t max) {
  s = s.substr(0, max);
  uint8_t* w = Tail(out, sizeof(WireString));
  PutU32(w + FIELD(WireString, length), static_cast<uint32_t>(s.size()));
  out->append(s);
}

inline Status TakeWireString(std::span<const uint8_t> p, size_t max, bool allow_empty,
                             std::string_view what, std::string* out) {
  if (p.size() < sizeof(WireString)) return Malformed(std::string(what) + ": payload too short");
  SHALE_RETURN_IF_ERROR(ReservedZero(GetU32(p.data() + FIELD(WireString, reserved)), what));
  return TakeString(p, sizeof(WireString), GetU32(p.data() + FIELD(WireString, length)), max,
                    allow_empty, what, out);
}

}  // namespace shale::replication::protocol_codec
