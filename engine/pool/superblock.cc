#include "engine/pool/superblock.h"

#include <bit>
#include <cstring>

#include "engine/common/checksum.h"

namespace shale {

namespace {

constexpr char kMagic[8] = {'S', 'H', 'A', 'L', 'E', 'P', 'O', 'L'};

// The encoded layout. Little-endian; static_asserts keep it exactly 4096 bytes.
struct SuperblockDisk {
  char magic[8];
  uint32_t format_version;
  uint32_t header_bytes;
  uint8_t pool_uuid[16];
  char pool_name[136];  // NUL-padded, at most kMaxNameLength bytes used
  uint64_t created_unix_ns;
  uint64_t device_size;
  uint32_t block_size;
  uint32_t cluster_size;
  uint64_t data_offset;
  uint64_t cluster_count;
  uint64_t generation;
  uint8_t reserved[3872];
  uint64_t checksum;  // XXH3-64 of all preceding bytes
};
static_assert(sizeof(SuperblockDisk) == kSuperblockSize, "superblock must be 4096 bytes");
static_assert(offsetof(SuperblockDisk, checksum) == kSuperblockSize - 8);
static_assert(std::endian::native == std::endian::little, "on-disk format is little-endian");

}  // namespace

Status ValidateClusterSize(uint64_t cluster_size) {
  if (cluster_size < kMinClusterSize || cluster_size > kMaxClusterSize ||
      !std::has_single_bit(cluster_size)) {
    return Status::InvalidArgument("cluster size " + std::to_string(cluster_size) +
                                   " must be a power of two between 4K and 256K");
  }
  return Status::Ok();
}

Result<Superblock> Superblock::ForNewPool(std::string name, uint64_t device_size,
                                          uint32_t cluster_size, uint64_t now_unix_ns) {
  SHALE_RETURN_IF_ERROR(ValidateName("pool", name));
  SHALE_RETURN_IF_ERROR(ValidateClusterSize(cluster_size));
  if (device_size < kPoolDataOffset + 16ull * cluster_size) {
    return Status::InvalidArgument("device of " + FormatSize(device_size) +
                                   " is too small for a pool (need at least " +
                                   FormatSize(kPoolDataOffset + 16ull * cluster_size) + ")");
  }
  Superblock sb;
  sb.pool_uuid = Uuid::Random();
  sb.pool_name = std::move(name);
  sb.created_unix_ns = now_unix_ns;
  sb.device_size = device_size;
  sb.cluster_size = cluster_size;
  sb.cluster_count = (device_size - kPoolDataOffset) / cluster_size;
  if (sb.cluster_count > UINT32_MAX - 16) {
    return Status::InvalidArgument("device too large for cluster size " + FormatSize(cluster_size) +
                                   "; choose a larger cluster size");
  }
  return sb;
}

std::string Superblock::Encode() const {
  SuperblockDisk d;
  std::memset(&d, 0, sizeof(d));
  std::memcpy(d.magic, kMagic, sizeof(kMagic));
  d.format_version = format_version;
  d.header_bytes = kSuperblockSize;
  std::memcpy(d.pool_uuid, pool_uuid.bytes.data(), 16);
  std::memcpy(d.pool_name, pool_name.data(), std::min(pool_name.size(), kMaxNameLength));
  d.created_unix_ns = created_unix_ns;
  d.device_size = device_size;
  d.block_size = block_size;
  d.cluster_size = cluster_size;
  d.data_offset = data_offset;
  d.cluster_count = cluster_count;
  d.generation = generation;
  d.checksum = Hash64(&d, offsetof(SuperblockDisk, checksum));
  return std::string(reinterpret_cast<const char*>(&d), sizeof(d));
}

Result<Superblock> Superblock::Decode(const void* data, size_t len) {
  if (len < kSuperblockSize) return Status::Corruption("superblock truncated");
  SuperblockDisk d;
  std::memcpy(&d, data, sizeof(d));
  if (std::memcmp(d.magic, kMagic, sizeof(kMagic)) != 0) {
    return Status::NotFound("no Shale superblock (magic mismatch)");
  }
  if (Hash64(&d, offsetof(SuperblockDisk, checksum)) != d.checksum) {
    return Status::Corruption("superblock checksum mismatch");
  }
  if (d.format_version > kSuperblockFormatVersion) {
    return Status::NotSupported("superblock format version " + std::to_string(d.format_version) +
                                " is newer than this build supports (" +
                                std::to_string(kSuperblockFormatVersion) + ")");
  }
  if (d.format_version == 0 || d.header_bytes != kSuperblockSize || d.block_size != kBlockSize ||
      !ValidateClusterSize(d.cluster_size).ok() || d.data_offset < 2 * kSuperblockBackupOffset ||
      d.data_offset % kBlockSize != 0 ||
      d.data_offset + d.cluster_count * d.cluster_size > d.device_size) {
    return Status::Corruption("superblock describes an impossible geometry");
  }
  Superblock sb;
  sb.format_version = d.format_version;
  std::memcpy(sb.pool_uuid.bytes.data(), d.pool_uuid, 16);
  sb.pool_name.assign(d.pool_name, strnlen(d.pool_name, sizeof(d.pool_name)));
  sb.created_unix_ns = d.created_unix_ns;
  sb.device_size = d.device_size;
  sb.block_size = d.block_size;
  sb.cluster_size = d.cluster_size;
  sb.data_offset = d.data_offset;
  sb.cluster_count = d.cluster_count;
  sb.generation = d.generation;
  return sb;
}

}  // namespace shale
