#include "engine/pool/keys.h"

#include "engine/common/assert.h"

namespace shale::keys {

void AppendU64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((v >> shift) & 0xff));
}

uint64_t DecodeU64At(std::string_view key, size_t pos) {
  SHALE_CHECK(key.size() >= pos + 8, "key too short");
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(key[pos + i]);
  return v;
}

std::string Pool() { return "P"; }
std::string VolumePrefix() { return "V"; }
std::string Volume(uint64_t id) {
  std::string k = "V";
  AppendU64(k, id);
  return k;
}
std::string VolumeName(std::string_view name) { return "N" + std::string(name); }
std::string ImagePrefix() { return "I"; }
std::string Image(uint64_t id) {
  std::string k = "I";
  AppendU64(k, id);
  return k;
}
std::string MapPrefix() { return "M"; }
std::string MapImagePrefix(uint64_t image_id) {
  std::string k = "M";
  AppendU64(k, image_id);
  return k;
}
std::string Map(uint64_t image_id, uint64_t vcluster) {
  std::string k = MapImagePrefix(image_id);
  AppendU64(k, vcluster);
  return k;
}
std::string MapCheckpointPrefix() { return "C"; }
std::string MapCheckpoint(uint64_t volume_id) {
  std::string k = "C";
  AppendU64(k, volume_id);
  return k;
}
std::string BitmapPrefix() { return "A"; }
std::string Bitmap(uint64_t chunk) {
  std::string k = "A";
  AppendU64(k, chunk);
  return k;
}
std::string ExtensionPrefix(std::string_view ns) {
  std::string k = "X";
  k += ns;
  k.push_back('\0');
  return k;
}
std::string Extension(std::string_view ns, std::string_view key) {
  return ExtensionPrefix(ns) + std::string(key);
}

}  // namespace shale::keys
