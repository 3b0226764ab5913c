// The backup format (docs/format/backup.md): content-addressed, zstd-compressed chunks and one
// manifest per backup, written last.
//
//   PREFIX/chunks/<32 hex>            one chunk: a zstd frame (content size + checksum) of up to
//                                     4 MiB of volume data; the name is the XXH3-128 of the
//                                     uncompressed bytes (canonical hex, as `xxhsum -H2` prints)
//   PREFIX/backups/<ID>.manifest      one backup: a JSON header line, then one line per stored
//                                     chunk "INDEX HASH STORED_BYTES"
//   PREFIX/locks/<kind>-<ID>.lock     a backup or a garbage collection in progress (JSON)
//
// Chunks that read as zeros (holes, zeroed ranges, written zeros) are not stored: a manifest
// lists only the chunks that hold data, and a restore leaves the rest unallocated.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/checksum.h"
#include "engine/common/labels.h"
#include "engine/common/result.h"

namespace shale::backup {

inline constexpr uint64_t kChunkSize = uint64_t{4} << 20;
inline constexpr uint32_t kManifestVersion = 1;
inline constexpr std::string_view kManifestFormat = "shale-backup-manifest";
// Bounds checked on decode: a manifest is never trusted to size anything.
inline constexpr uint64_t kMaxVolumeSize = uint64_t{256} << 40;
inline constexpr size_t kMaxManifestHeaderBytes = 256 * 1024;
inline constexpr size_t kMaxChunkObjectBytes = kChunkSize + (kChunkSize >> 4) + 4096;

// Object names under a place's prefix.
std::string ChunkName(const Hash128& hash);     // "chunks/<hex>"
std::string ManifestName(std::string_view id);  // "backups/<id>.manifest"
inline constexpr std::string_view kChunksDir = "chunks/";
inline constexpr std::string_view kManifestsDir = "backups/";
inline constexpr std::string_view kManifestSuffix = ".manifest";
inline constexpr std::string_view kLocksDir = "locks/";

struct ChunkRef {
  uint64_t index = 0;         // the chunk covers [index * chunk_size, +chunk_length)
  Hash128 hash;               // XXH3-128 of the uncompressed bytes: the object's name
  uint64_t stored_bytes = 0;  // size of the object (compressed)
  bool operator==(const ChunkRef&) const = default;
};

// Where a backup came from; informational except image_id/pool_uuid/volume_id, which tell an
// incremental backup whether a local snapshot is the one the manifest was made from.
struct Provenance {
  std::string host;
  std::string shale_version;
  std::string pool;
  uint64_t volume_id = 0;
  uint64_t image_id = 0;
  bool operator==(const Provenance&) const = default;
};

struct Manifest {
  std::string id;
  std::string volume;
  std::string snapshot;  // the part after '@'
  uint64_t size_bytes = 0;
  uint64_t chunk_size = kChunkSize;
  std::string digest;            // the snapshot's digest (docs/format/snapshot-digest.md), 32 hex
  uint64_t created_unix_ns = 0;  // when the backup completed
  uint64_t snapshot_created_unix_ns = 0;  // when the snapshot was taken
  Labels labels;                          // the snapshot's labels
  Provenance provenance;
  std::string base;  // the backup this one was made incrementally against ("" = full)
  // What this backup transferred (the rest was already in the bucket).
  uint64_t uploaded_chunks = 0;
  uint64_t uploaded_bytes = 0;
  uint64_t read_bytes = 0;       // volume bytes read and hashed
  std::vector<ChunkRef> chunks;  // sorted by index, unique; chunks not listed read as zeros
  bool header_only = false;      // decoded from the header line only (chunks empty)
  uint64_t chunk_count = 0;      // chunks listed (also when header_only)
  uint64_t stored_bytes = 0;     // sum of stored_bytes of the chunks
  uint64_t data_bytes = 0;       // sum of the chunks' uncompressed lengths

  uint64_t ChunkCountOfVolume() const { return (size_bytes + chunk_size - 1) / chunk_size; }
  uint64_t ChunkLength(uint64_t index) const;
  // Fills chunk_count, stored_bytes, data_bytes from `chunks`.
  void Summarize();
  bool operator==(const Manifest&) const = default;
};

std::string EncodeManifest(const Manifest& manifest);
// Checks everything (version, names, sizes, sorted unique in-range chunks, the chunk-list
// checksum); Corruption naming what is wrong. With header_only, stops after the first line
// (the text may be a prefix of the object).
Result<Manifest> DecodeManifest(std::string_view text, bool header_only = false);

// Chunk objects: a zstd frame with the content size and checksum flags set.
std::string CompressChunk(const uint8_t* data, size_t len, int level);
// Decompresses and checks the name: Corruption ("... is corrupt: ...") when the object is not a
// frame of exactly `expected_len` bytes whose XXH3-128 is `expected`.
Result<std::string> DecompressChunk(std::string_view object, const Hash128& expected,
                                    uint64_t expected_len);

// True when the bytes are all zero.
bool IsZero(const uint8_t* data, size_t len);

}  // namespace shale::backup
