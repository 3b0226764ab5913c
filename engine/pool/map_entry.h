// MapEntry: what one image stores for one virtual cluster.
//
// A virtual cluster of a volume covers cluster_size bytes = up to 64 blocks of 4 KiB. The image
// stores the physical clusters it owns for it ("fragments"); bit i of a fragment's `blocks` says
// that block i of the virtual cluster lives at block i of that physical cluster. `zero_blocks`
// marks blocks this image explicitly zeroed over data of a parent image.
// Blocks of a fragment are disjoint from each other fragment's and from zero_blocks.
//
// Encoding (little-endian): u8 version=1 | u8 fragment_count | u64 zero_blocks |
//                           fragment_count x (u32 pcluster | u64 blocks)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale {

struct StoredFragment {
  uint32_t pcluster = 0;
  uint64_t blocks = 0;
  bool operator==(const StoredFragment&) const = default;
};

struct MapEntry {
  std::vector<StoredFragment> fragments;
  uint64_t zero_blocks = 0;

  bool empty() const { return fragments.empty() && zero_blocks == 0; }
  std::string Encode() const;
  static Result<MapEntry> Decode(std::string_view bytes);
  // The same into *out, reusing its fragments' capacity: loops over many entries (loading a map)
  // allocate nothing once it is large enough. *out is unspecified after an error.
  static Status DecodeInto(std::string_view bytes, MapEntry* out);
  bool operator==(const MapEntry&) const = default;
};

}  // namespace shale
