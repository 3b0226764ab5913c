// Where the snapshot layer's records live in a pool's metadata (keys::Extension) and helpers
// for the digest bytes they hold. Formats: snapshot.proto; key space: docs/format/metadata.md.
#pragma once

#include <string>
#include <string_view>

#include "engine/common/assert.h"
#include "engine/pool/keys.h"
#include "snapshot/digest.h"

namespace shale::snapshot {

inline constexpr std::string_view kSnapshotNamespace =
    "snapshot";                                                 // "VOLUME@SNAP" -> SnapshotRecord
inline constexpr std::string_view kCloneNamespace = "clone";    // volume -> CloneRecord
inline constexpr std::string_view kImportNamespace = "import";  // volume -> ImportRecord

inline std::string SnapshotKey(std::string_view volume_at_snap) {
  return keys::Extension(kSnapshotNamespace, volume_at_snap);
}
inline std::string CloneKey(std::string_view volume) {
  return keys::Extension(kCloneNamespace, volume);
}
inline std::string ImportKey(std::string_view volume) {
  return keys::Extension(kImportNamespace, volume);
}

// A digest as stored in records (16 canonical bytes) to 32 hex digits; "" when absent.
inline std::string DigestHex(const std::string& bytes) {
  if (bytes.size() != 16) return "";
  return HashFromCanonical(reinterpret_cast<const uint8_t*>(bytes.data())).ToHex();
}
inline const uint8_t* DigestBytes(const std::string& bytes) {
  SHALE_CHECK(bytes.size() == 16, "stored digest of ", bytes.size(), " bytes");
  return reinterpret_cast<const uint8_t*>(bytes.data());
}
inline std::string DigestToBytes(const Hash128& h) {
  const auto c = CanonicalHash(h);
  return std::string(reinterpret_cast<const char*>(c.data()), c.size());
}

}  // namespace shale::snapshot
