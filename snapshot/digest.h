// Content digest of a snapshot: an XXH3-128 Merkle tree over its 4 KiB blocks
// (docs/format/snapshot-digest.md defines it byte for byte).
//
//   leaf     = XXH3-128(block)                       (the last block zero-padded to 4 KiB)
//   node     = XXH3-128(canonical(child_0) || ... )  (up to 256 children, in order)
//   levels repeat until one hash is left: the top
//   root     = XXH3-128("SHALE-DIGEST-V1\0" || u64le size || u32le 4096 || u32le 256 ||
//                       canonical(top))
//
// The digest depends only on the bytes (unwritten blocks hash like written zeros) and the size,
// so equal content gives equal digests whatever the history. DigestBuilder consumes content in
// order in O(1) memory per level; zero runs aligned to a full subtree cost one precomputed hash.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/checksum.h"
#include "engine/common/result.h"

namespace shale::snapshot {

inline constexpr uint32_t kDigestBlockSize = 4096;
inline constexpr uint32_t kDigestFanout = 256;
inline constexpr uint32_t kDigestVersion = 1;
// The tree of a 2^64-byte volume has 7 levels above the leaves; 8 bounds every loop.
inline constexpr int kDigestMaxLevels = 8;

// 16-byte canonical form of a hash: big-endian, high half first (XXH128_canonical_t, and the
// order Hash128::ToHex prints).
std::array<uint8_t, 16> CanonicalHash(const Hash128& h);
Hash128 HashFromCanonical(const uint8_t* bytes);
// Parses the 32 hex digits ToHex prints.
Result<Hash128> ParseDigestHex(std::string_view hex);

// Hash of a full subtree of zero blocks at `level` (0: one zero block; k: 256^k zero blocks).
const Hash128& ZeroSubtreeHash(int level);

class DigestBuilder {
 public:
  // `size_bytes` is the content's length (any value; the last block is zero-padded).
  explicit DigestBuilder(uint64_t size_bytes);

  // Appends the next `len` bytes. Every call but the one reaching size_bytes must end on a
  // block boundary (content is added in whole blocks); the total must not pass size_bytes.
  void AddData(const uint8_t* data, uint64_t len);
  // Appends `len` zero bytes, with the same contract. O(255 x levels) hashes at most.
  void AddZeros(uint64_t len);
  uint64_t position() const { return position_; }
  uint64_t size_bytes() const { return size_; }
  // The root. position() must equal size_bytes(); the builder is spent afterwards.
  Hash128 Finish();

 private:
  void Push(int level, const Hash128& h);
  void CheckAdd(uint64_t len) const;

  const uint64_t size_;
  uint64_t position_ = 0;
  uint64_t blocks_ = 0;  // leaves so far (whole or padded)
  // Per level: canonical hashes of the completed nodes not yet grouped (< 256 each).
  std::array<std::vector<uint8_t>, kDigestMaxLevels> pending_;
  bool finished_ = false;
};

// Digest of an in-memory buffer (tests, small content).
Hash128 DigestOf(const uint8_t* data, uint64_t len);

}  // namespace shale::snapshot
