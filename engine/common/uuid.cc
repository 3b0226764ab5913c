#include "engine/common/uuid.h"

#include <sys/random.h>

#include <cstdio>

namespace shale {

Uuid Uuid::Random() {
  Uuid u;
  size_t got = 0;
  while (got < u.bytes.size()) {
    ssize_t n = getrandom(u.bytes.data() + got, u.bytes.size() - got, 0);
    SHALE_CHECK(n > 0, "getrandom failed");
    got += static_cast<size_t>(n);
  }
  u.bytes[6] = static_cast<uint8_t>((u.bytes[6] & 0x0f) | 0x40);
  u.bytes[8] = static_cast<uint8_t>((u.bytes[8] & 0x3f) | 0x80);
  return u;
}

std::string Uuid::ToString() const {
  char buf[37];
  const auto& b = bytes;
  std::snprintf(buf, sizeof(buf),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return buf;
}

Result<Uuid> Uuid::Parse(std::string_view text) {
  Uuid u;
  size_t out = 0;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '-') {
      ++i;
      continue;
    }
    if (i + 1 >= text.size() || out >= 16) break;
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0)
      return Status::InvalidArgument("malformed UUID '" + std::string(text) + "'");
    u.bytes[out++] = static_cast<uint8_t>(hi * 16 + lo);
    i += 2;
  }
  if (out != 16 || text.size() != 36) {
    return Status::InvalidArgument("malformed UUID '" + std::string(text) + "'");
  }
  return u;
}

bool Uuid::IsNil() const {
  for (uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

}  // namespace shale
