// Helpers shared by the files that implement Volume: volume.cc (submission, the aligned data
// path, commit, lifecycle), volume_rmw.cc (unaligned requests) and volume_images.cc (map loading
// and image mechanics). Not part of the volume's interface: nothing outside engine/volume/
// volume*.cc includes it.
#pragma once

#include <cstdint>

namespace shale::internal {

// Set on internal requests (read-modify-write steps, flatten copies): they skip range locks,
// the write gate and the client counters.
inline constexpr uint32_t kInternal = 1u << 31;

// Bits [first, first + count) of a cluster's 64-bit block bitmap.
inline uint64_t BlockMask(uint32_t first, uint32_t count) {
  return count >= 64 ? ~0ull << first : ((1ull << count) - 1) << first;
}

}  // namespace shale::internal
