// Map checkpoints: a volume's cluster map written to a file at a clean shutdown and read back
// at the next open instead of scanning its image chain's records (docs/format/map-checkpoint.md).
// This is the file's codec; the engine decides when a checkpoint is written and whether one may
// be used.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/common/result.h"
#include "engine/volume/cluster_map.h"

namespace shale {

// The checkpoint file of `map` for a volume whose head image is `head`: what Volume::LoadMap
// would build from the committed records (a parent's fragment with no visible block is left out).
std::string EncodeMapCheckpoint(const ClusterMap& map, uint32_t head);

// The map a checkpoint file describes. Corruption for anything malformed: a bad header, another
// size than `vclusters`, a record out of order or past the end, a physical cluster outside the
// pool (`pool_clusters`).
Result<ClusterMap> DecodeMapCheckpoint(std::string_view file, uint64_t vclusters,
                                       uint64_t pool_clusters);

// Whether two maps hold the same fragments for every virtual cluster, in any order within a
// cluster (EngineOptions::verify_map_checkpoints).
bool SameMappings(const ClusterMap& a, const ClusterMap& b);

}  // namespace shale
