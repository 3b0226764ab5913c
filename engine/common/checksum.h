// Content hashing (xxHash XXH3): superblock/record checksums and content digests.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace shale {

uint64_t Hash64(const void* data, size_t len, uint64_t seed = 0);

struct Hash128 {
  uint64_t low = 0;
  uint64_t high = 0;
  bool operator==(const Hash128&) const = default;
  std::string ToHex() const;  // 32 lowercase hex digits, high half first
};
Hash128 HashContent128(const void* data, size_t len);

}  // namespace shale
