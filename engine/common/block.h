// The block: the unit of mapping inside a cluster and of the volume's data path (4 KiB).
// Requests that are not whole blocks take the read-modify-write path (engine/volume). Every
// size and offset rounding to blocks goes through these helpers.
#pragma once

#include <cstdint>

namespace shale {

inline constexpr uint32_t kBlockShift = 12;
inline constexpr uint32_t kBlockSize = 1u << kBlockShift;  // 4096
inline constexpr uint64_t kBlockMask = kBlockSize - 1;

// Whether `v` is a multiple of the block size.
constexpr bool IsBlockAligned(uint64_t v) { return (v & kBlockMask) == 0; }
// `v` rounded down / up to a multiple of the block size. RoundUpToBlock wraps for
// v > UINT64_MAX - kBlockMask: check sizes from outside against a maximum first.
constexpr uint64_t RoundDownToBlock(uint64_t v) { return v & ~kBlockMask; }
constexpr uint64_t RoundUpToBlock(uint64_t v) { return (v + kBlockMask) & ~kBlockMask; }
// Blocks covering [0, v).
constexpr uint64_t BlocksCovering(uint64_t v) { return (v + kBlockMask) >> kBlockShift; }

static_assert(RoundUpToBlock(1) == kBlockSize && RoundDownToBlock(kBlockSize + 1) == kBlockSize);

}  // namespace shale
