// Content hashing (xxHash XXH3): superblock/record checksums, content digests, replica frames.
//
// Every call goes through libxxhash's run-time dispatch, which uses AVX-512 or AVX2 where the CPU
// has them (3-4x the SSE2 code a baseline x86-64 build compiles in; the same hash values). The
// library's vector code returns without VZEROUPPER; these functions clear the upper vector state
// after it, or every legacy-SSE instruction that follows in the thread would pay for it
// (docs/performance.md, "XXH3 with run-time dispatch").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

struct XXH3_state_s;  // libxxhash's XXH3_state_t

namespace shale {

uint64_t Hash64(const void* data, size_t len, uint64_t seed = 0);

struct Hash128 {
  uint64_t low = 0;
  uint64_t high = 0;
  bool operator==(const Hash128&) const = default;
  std::string ToHex() const;  // 32 lowercase hex digits, high half first
};
Hash128 HashContent128(const void* data, size_t len);

// XXH3-64 (seed 0) of several pieces, equal to Hash64 of the pieces laid end to end.
class Hash64Stream {
 public:
  Hash64Stream();
  void Update(const void* data, size_t len);
  uint64_t Digest() const;

 private:
  XXH3_state_s* State();
  static constexpr size_t kStateBytes = 576;  // sizeof(XXH3_state_t) (checked in checksum.cc)
  alignas(64) std::array<unsigned char, kStateBytes> state_;
};

}  // namespace shale
