#include "engine/pool/map_entry.h"

#include <bit>
#include <cstring>

namespace shale {

namespace {
constexpr uint8_t kMapEntryVersion = 1;
constexpr size_t kHeader = 1 + 1 + 8;
constexpr size_t kFragment = 4 + 8;
static_assert(std::endian::native == std::endian::little, "on-disk format is little-endian");

template <typename T>
void Put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}
template <typename T>
T Get(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
}  // namespace

std::string MapEntry::Encode() const {
  SHALE_CHECK(fragments.size() <= 64, "too many fragments in a map entry: ", fragments.size());
  std::string out;
  out.reserve(kHeader + fragments.size() * kFragment);
  Put<uint8_t>(out, kMapEntryVersion);
  Put<uint8_t>(out, static_cast<uint8_t>(fragments.size()));
  Put<uint64_t>(out, zero_blocks);
  for (const auto& f : fragments) {
    Put<uint32_t>(out, f.pcluster);
    Put<uint64_t>(out, f.blocks);
  }
  return out;
}

Result<MapEntry> MapEntry::Decode(std::string_view bytes) {
  MapEntry e;
  SHALE_RETURN_IF_ERROR(DecodeInto(bytes, &e));
  return e;
}

Status MapEntry::DecodeInto(std::string_view bytes, MapEntry* out) {
  if (bytes.size() < kHeader) return Status::Corruption("map entry truncated");
  if (static_cast<uint8_t>(bytes[0]) != kMapEntryVersion) {
    return Status::Corruption("map entry has unknown version " +
                              std::to_string(static_cast<uint8_t>(bytes[0])));
  }
  size_t n = static_cast<uint8_t>(bytes[1]);
  if (bytes.size() != kHeader + n * kFragment) return Status::Corruption("map entry size mismatch");
  out->zero_blocks = Get<uint64_t>(bytes.data() + 2);
  uint64_t seen = out->zero_blocks;
  out->fragments.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = bytes.data() + kHeader + i * kFragment;
    StoredFragment& f = out->fragments[i];
    f.pcluster = Get<uint32_t>(p);
    f.blocks = Get<uint64_t>(p + 4);
    if (f.blocks & seen) return Status::Corruption("map entry fragments overlap");
    seen |= f.blocks;
  }
  return Status::Ok();
}

}  // namespace shale
