// Key space of a pool's RocksDB. Integers are big-endian so keys sort numerically.
//   "P"                              PoolRecord
//   "V" u64 volume_id                VolumeRecord
//   "N" name                         u64 volume_id (name index)
//   "I" u64 image_id                 ImageRecord
//   "M" u64 image_id u64 vcluster    MapEntry (map_entry.h)
//   "C" u64 volume_id                MapCheckpointRecord (docs/format/map-checkpoint.md)
//   "A" u64 chunk                    allocation bitmap of clusters [chunk*32768, +32768)
//   "X" namespace '\0' key           records of upper layers (snapshot, qos, ...)
// See docs/format/metadata.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace shale::keys {

inline constexpr uint64_t kClustersPerBitmapChunk = 32768;  // 4 KiB of bits

std::string Pool();
std::string Volume(uint64_t volume_id);
std::string VolumePrefix();
std::string VolumeName(std::string_view name);
std::string Image(uint64_t image_id);
std::string ImagePrefix();
std::string Map(uint64_t image_id, uint64_t vcluster);
std::string MapImagePrefix(uint64_t image_id);
std::string MapPrefix();
std::string MapCheckpoint(uint64_t volume_id);
std::string MapCheckpointPrefix();
std::string Bitmap(uint64_t chunk);
std::string BitmapPrefix();
std::string Extension(std::string_view ns, std::string_view key);
std::string ExtensionPrefix(std::string_view ns);

// Decoding of the integer parts (key must have the matching prefix; checked).
uint64_t DecodeU64At(std::string_view key, size_t pos);
void AppendU64(std::string& out, uint64_t v);

}  // namespace shale::keys
