// Superblock: the first bytes of every pool device. It names the pool (UUID) so the device can
// be matched with its metadata, and fixes the geometry (cluster size, data offset).
//
// Two identical copies are kept, at offsets 0 and kSuperblockBackupOffset; a pool opens from the
// first valid one (and says so when the primary is damaged). Format: docs/format/superblock.md.
#pragma once

#include <cstdint>
#include <string>

#include "engine/common/block.h"
#include "engine/common/result.h"
#include "engine/common/units.h"
#include "engine/common/uuid.h"

namespace shale {

inline constexpr uint32_t kSuperblockFormatVersion = 1;
inline constexpr uint64_t kSuperblockSize = 4096;
inline constexpr uint64_t kSuperblockBackupOffset = 64 * kKiB;
inline constexpr uint64_t kPoolDataOffset = 1 * kMiB;  // clusters start here
// kBlockSize (mapping granularity inside clusters): engine/common/block.h
inline constexpr uint32_t kMinClusterSize = 4 * kKiB;
inline constexpr uint32_t kMaxClusterSize = 256 * kKiB;  // 64 blocks: one uint64_t bitmap
inline constexpr uint32_t kDefaultClusterSize = 64 * kKiB;

struct Superblock {
  uint32_t format_version = kSuperblockFormatVersion;
  Uuid pool_uuid;
  std::string pool_name;
  uint64_t created_unix_ns = 0;
  uint64_t device_size = 0;  // bytes of the device when the pool was formatted
  uint32_t block_size = kBlockSize;
  uint32_t cluster_size = kDefaultClusterSize;
  uint64_t data_offset = kPoolDataOffset;
  uint64_t cluster_count = 0;
  uint64_t generation = 1;  // bumped whenever the superblock is rewritten

  // Builds the superblock of a new pool on a device of device_size bytes.
  static Result<Superblock> ForNewPool(std::string name, uint64_t device_size,
                                       uint32_t cluster_size, uint64_t now_unix_ns);

  // 4096 bytes, little-endian, XXH3-64 checksum in the last 8 bytes.
  std::string Encode() const;
  // Errors: NotFound when the bytes carry no Shale magic (blank or foreign device),
  // Corruption for a bad checksum or impossible geometry, NotSupported for a newer version.
  static Result<Superblock> Decode(const void* data, size_t len);

  uint64_t cluster_offset(uint64_t pcluster) const { return data_offset + pcluster * cluster_size; }
  uint32_t blocks_per_cluster() const { return cluster_size / block_size; }
};

Status ValidateClusterSize(uint64_t cluster_size);

}  // namespace shale
