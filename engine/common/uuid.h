// 128-bit random (version 4) UUIDs that bind a pool's device to its metadata.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale {

struct Uuid {
  std::array<uint8_t, 16> bytes{};
  static Uuid Random();
  static Result<Uuid> Parse(std::string_view text);
  std::string ToString() const;  // 8-4-4-4-12 lowercase hex
  bool IsNil() const;
  bool operator==(const Uuid&) const = default;
};

}  // namespace shale
