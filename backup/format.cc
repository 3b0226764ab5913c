#include "backup/format.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "backup/location.h"
#include "engine/common/assert.h"
#include "engine/common/units.h"

namespace shale::backup {

namespace {

using Json = nlohmann::ordered_json;

Result<Hash128> ParseHex128(std::string_view hex) {
  if (hex.size() != 32) return Status::Corruption("bad hash '" + std::string(hex) + "'");
  Hash128 h;
  for (size_t i = 0; i < 32; ++i) {
    const char c = hex[i];
    uint64_t v = 0;
    if (c >= '0' && c <= '9') {
      v = static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v = static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return Status::Corruption("bad hash '" + std::string(hex) + "'");
    }
    uint64_t& half = i < 16 ? h.high : h.low;
    half = (half << 4) | v;
  }
  return h;
}

std::string ChunkLines(const std::vector<ChunkRef>& chunks) {
  std::string out;
  out.reserve(chunks.size() * 56);
  for (const ChunkRef& c : chunks) {
    out += std::to_string(c.index);
    out += ' ';
    out += c.hash.ToHex();
    out += ' ';
    out += std::to_string(c.stored_bytes);
    out += '\n';
  }
  return out;
}

Result<uint64_t> ParseU64(std::string_view text, std::string_view what) {
  if (text.empty() || text.size() > 20) {
    return Status::Corruption("manifest: bad " + std::string(what));
  }
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return Status::Corruption("manifest: bad " + std::string(what));
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

template <typename T>
Result<T> Field(const Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end())
    return Status::Corruption(std::string("manifest: missing field '") + key + "'");
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) {
      return Status::Corruption(std::string("manifest: field '") + key + "' is not a string");
    }
  } else {
    if (!it->is_number_unsigned()) {
      return Status::Corruption(std::string("manifest: field '") + key +
                                "' is not an unsigned number");
    }
  }
  return it->get<T>();
}

Result<Manifest> DecodeHeader(std::string_view line) {
  Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Status::Corruption("manifest: the header line is not a JSON object");
  SHALE_ASSIGN_OR_RETURN(std::string format, Field<std::string>(j, "format"));
  if (format != kManifestFormat) {
    return Status::Corruption("manifest: format '" + format + "' is not " +
                              std::string(kManifestFormat));
  }
  SHALE_ASSIGN_OR_RETURN(uint64_t version, Field<uint64_t>(j, "version"));
  if (version != kManifestVersion) {
    return Status::NotSupported("backup manifest version " + std::to_string(version) +
                                " is not supported (this shale reads version " +
                                std::to_string(kManifestVersion) + ")");
  }
  Manifest m;
  SHALE_ASSIGN_OR_RETURN(m.id, Field<std::string>(j, "id"));
  SHALE_ASSIGN_OR_RETURN(m.volume, Field<std::string>(j, "volume"));
  SHALE_ASSIGN_OR_RETURN(m.snapshot, Field<std::string>(j, "snapshot"));
  SHALE_ASSIGN_OR_RETURN(m.size_bytes, Field<uint64_t>(j, "size_bytes"));
  SHALE_ASSIGN_OR_RETURN(m.chunk_size, Field<uint64_t>(j, "chunk_size"));
  SHALE_ASSIGN_OR_RETURN(m.digest, Field<std::string>(j, "digest"));
  SHALE_ASSIGN_OR_RETURN(m.created_unix_ns, Field<uint64_t>(j, "created_unix_ns"));
  SHALE_ASSIGN_OR_RETURN(m.snapshot_created_unix_ns,
                         Field<uint64_t>(j, "snapshot_created_unix_ns"));
  SHALE_ASSIGN_OR_RETURN(m.base, Field<std::string>(j, "base"));
  SHALE_ASSIGN_OR_RETURN(m.uploaded_chunks, Field<uint64_t>(j, "uploaded_chunks"));
  SHALE_ASSIGN_OR_RETURN(m.uploaded_bytes, Field<uint64_t>(j, "uploaded_bytes"));
  SHALE_ASSIGN_OR_RETURN(m.read_bytes, Field<uint64_t>(j, "read_bytes"));
  SHALE_ASSIGN_OR_RETURN(m.chunk_count, Field<uint64_t>(j, "chunk_count"));
  SHALE_ASSIGN_OR_RETURN(m.stored_bytes, Field<uint64_t>(j, "stored_bytes"));
  SHALE_ASSIGN_OR_RETURN(m.data_bytes, Field<uint64_t>(j, "data_bytes"));
  auto labels = j.find("labels");
  if (labels == j.end() || !labels->is_object()) {
    return Status::Corruption("manifest: missing field 'labels'");
  }
  for (const auto& [k, v] : labels->items()) {
    if (!v.is_string()) return Status::Corruption("manifest: label '" + k + "' is not a string");
    m.labels[k] = v.get<std::string>();
  }
  auto prov = j.find("provenance");
  if (prov == j.end() || !prov->is_object()) {
    return Status::Corruption("manifest: missing field 'provenance'");
  }
  SHALE_ASSIGN_OR_RETURN(m.provenance.host, Field<std::string>(*prov, "host"));
  SHALE_ASSIGN_OR_RETURN(m.provenance.shale_version, Field<std::string>(*prov, "shale_version"));
  SHALE_ASSIGN_OR_RETURN(m.provenance.pool, Field<std::string>(*prov, "pool"));
  SHALE_ASSIGN_OR_RETURN(m.provenance.volume_id, Field<uint64_t>(*prov, "volume_id"));
  SHALE_ASSIGN_OR_RETURN(m.provenance.image_id, Field<uint64_t>(*prov, "image_id"));

  auto bad = [&](const std::string& why) { return Status::Corruption("manifest: " + why); };
  if (!ValidateBackupId(m.id).ok()) return bad("bad id '" + m.id + "'");
  if (VolumeOfBackupId(m.id).value() != m.volume) return bad("id and volume disagree");
  if (!ValidateName("snapshot", m.snapshot).ok()) return bad("bad snapshot name");
  if (!m.base.empty() && !ValidateBackupId(m.base).ok()) return bad("bad base id");
  if (m.size_bytes == 0 || m.size_bytes > kMaxVolumeSize || m.size_bytes % 4096 != 0) {
    return bad("bad size_bytes " + std::to_string(m.size_bytes));
  }
  if (m.chunk_size != kChunkSize) return bad("chunk_size " + std::to_string(m.chunk_size));
  if (!ParseHex128(m.digest).ok()) return bad("bad digest");
  if (!ValidateLabels(m.labels).ok()) return bad("bad labels");
  if (m.chunk_count > m.ChunkCountOfVolume()) return bad("more chunks than the volume holds");
  return m;
}

}  // namespace

std::string ChunkName(const Hash128& hash) { return std::string(kChunksDir) + hash.ToHex(); }

std::string ManifestName(std::string_view id) {
  return std::string(kManifestsDir) + std::string(id) + std::string(kManifestSuffix);
}

uint64_t Manifest::ChunkLength(uint64_t index) const {
  const uint64_t start = index * chunk_size;
  return start >= size_bytes ? 0 : std::min(chunk_size, size_bytes - start);
}

void Manifest::Summarize() {
  chunk_count = chunks.size();
  stored_bytes = 0;
  data_bytes = 0;
  for (const ChunkRef& c : chunks) {
    stored_bytes += c.stored_bytes;
    data_bytes += ChunkLength(c.index);
  }
}

std::string EncodeManifest(const Manifest& m) {
  const std::string lines = ChunkLines(m.chunks);
  Json j;
  j["format"] = kManifestFormat;
  j["version"] = kManifestVersion;
  j["id"] = m.id;
  j["volume"] = m.volume;
  j["snapshot"] = m.snapshot;
  j["size_bytes"] = m.size_bytes;
  j["chunk_size"] = m.chunk_size;
  j["digest"] = m.digest;
  j["created_unix_ns"] = m.created_unix_ns;
  j["snapshot_created_unix_ns"] = m.snapshot_created_unix_ns;
  j["labels"] = Json::object();
  for (const auto& [k, v] : m.labels) j["labels"][k] = v;
  j["provenance"] = {{"host", m.provenance.host},
                     {"shale_version", m.provenance.shale_version},
                     {"pool", m.provenance.pool},
                     {"volume_id", m.provenance.volume_id},
                     {"image_id", m.provenance.image_id}};
  j["base"] = m.base;
  j["uploaded_chunks"] = m.uploaded_chunks;
  j["uploaded_bytes"] = m.uploaded_bytes;
  j["read_bytes"] = m.read_bytes;
  uint64_t stored = 0, data = 0;
  for (const ChunkRef& c : m.chunks) {
    stored += c.stored_bytes;
    data += m.ChunkLength(c.index);
  }
  j["chunk_count"] = m.chunks.size();
  j["stored_bytes"] = stored;
  j["data_bytes"] = data;
  j["chunks_xxh64"] = std::to_string(Hash64(lines.data(), lines.size()));
  return j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n" + lines;
}

Result<Manifest> DecodeManifest(std::string_view text, bool header_only) {
  const size_t nl = text.find('\n');
  if (nl == std::string_view::npos) {
    return Status::Corruption("manifest: no header line (truncated?)");
  }
  if (nl > kMaxManifestHeaderBytes) return Status::Corruption("manifest: header line too long");
  SHALE_ASSIGN_OR_RETURN(Manifest m, DecodeHeader(text.substr(0, nl)));
  if (header_only) {
    m.header_only = true;
    return m;
  }
  std::string_view lines = text.substr(nl + 1);
  Json j = Json::parse(text.substr(0, nl), nullptr, false);
  auto sum = j.find("chunks_xxh64");
  if (sum == j.end() || !sum->is_string() ||
      sum->get<std::string>() != std::to_string(Hash64(lines.data(), lines.size()))) {
    return Status::Corruption("manifest: the chunk list does not match its checksum");
  }
  m.chunks.reserve(m.chunk_count);
  uint64_t line_no = 0;
  while (!lines.empty()) {
    ++line_no;
    const size_t end = lines.find('\n');
    if (end == std::string_view::npos) return Status::Corruption("manifest: truncated chunk list");
    std::string_view line = lines.substr(0, end);
    lines.remove_prefix(end + 1);
    const size_t a = line.find(' ');
    const size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
    if (b == std::string_view::npos) {
      return Status::Corruption("manifest: chunk line " + std::to_string(line_no) +
                                " is malformed");
    }
    ChunkRef c;
    SHALE_ASSIGN_OR_RETURN(c.index, ParseU64(line.substr(0, a), "chunk index"));
    SHALE_ASSIGN_OR_RETURN(c.hash, ParseHex128(line.substr(a + 1, b - a - 1)));
    SHALE_ASSIGN_OR_RETURN(c.stored_bytes, ParseU64(line.substr(b + 1), "chunk size"));
    if (c.index >= m.ChunkCountOfVolume()) {
      return Status::Corruption("manifest: chunk " + std::to_string(c.index) +
                                " lies past the volume's end");
    }
    if (!m.chunks.empty() && c.index <= m.chunks.back().index) {
      return Status::Corruption("manifest: chunks are not sorted by index");
    }
    if (c.stored_bytes == 0 || c.stored_bytes > kMaxChunkObjectBytes) {
      return Status::Corruption("manifest: chunk " + std::to_string(c.index) + " has a bad size");
    }
    m.chunks.push_back(c);
  }
  const uint64_t stored = m.stored_bytes, data = m.data_bytes, count = m.chunk_count;
  m.Summarize();
  if (m.chunk_count != count || m.stored_bytes != stored || m.data_bytes != data) {
    return Status::Corruption("manifest: totals do not match the chunk list");
  }
  return m;
}

std::string CompressChunk(const uint8_t* data, size_t len, int level) {
  ZSTD_CCtx* ctx = ZSTD_createCCtx();
  SHALE_CHECK(ctx != nullptr, "ZSTD_createCCtx");
  ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(ctx, ZSTD_c_checksumFlag, 1);
  ZSTD_CCtx_setParameter(ctx, ZSTD_c_contentSizeFlag, 1);
  std::string out(ZSTD_compressBound(len), '\0');
  const size_t n = ZSTD_compress2(ctx, out.data(), out.size(), data, len);
  ZSTD_freeCCtx(ctx);
  SHALE_CHECK(!ZSTD_isError(n), "ZSTD_compress2: ", ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

Result<std::string> DecompressChunk(std::string_view object, const Hash128& expected,
                                    uint64_t expected_len) {
  const std::string name = ChunkName(expected);
  const unsigned long long size = ZSTD_getFrameContentSize(object.data(), object.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN) {
    return Status::Corruption("chunk " + name + " is corrupt: not a zstd frame with a size");
  }
  if (size != expected_len) {
    return Status::Corruption("chunk " + name + " is corrupt: it holds " + std::to_string(size) +
                              " bytes, the manifest expects " + std::to_string(expected_len));
  }
  std::string out(size, '\0');
  const size_t n = ZSTD_decompress(out.data(), out.size(), object.data(), object.size());
  if (ZSTD_isError(n) || n != size) {
    return Status::Corruption(
        "chunk " + name + " is corrupt: " +
        (ZSTD_isError(n) ? std::string(ZSTD_getErrorName(n)) : std::string("short frame")));
  }
  const Hash128 got = HashContent128(out.data(), out.size());
  if (!(got == expected)) {
    return Status::Corruption("chunk " + name + " is corrupt: its content hashes to " +
                              got.ToHex());
  }
  return out;
}

bool IsZero(const uint8_t* data, size_t len) {
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    if (w != 0) return false;
  }
  for (; i < len; ++i) {
    if (data[i] != 0) return false;
  }
  return true;
}

}  // namespace shale::backup
