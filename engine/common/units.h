// Parsing and printing of sizes ("8G", "512K", "1.5T") and validation of names.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;
inline constexpr uint64_t kTiB = 1024 * kGiB;

// Accepts an unsigned integer with an optional binary suffix K, M, G, T, P (case-insensitive,
// optional trailing "iB"/"B"). "0" is allowed; negative, fractional, empty, overflowing or
// unknown-suffix input is an InvalidArgument naming the input.
Result<uint64_t> ParseSize(std::string_view text);

// "1.5 GiB", "4 KiB", "0 B".
std::string FormatSize(uint64_t bytes);

// Longest name accepted for pools, volumes and snapshots (CSI names are up to 128 bytes).
inline constexpr size_t kMaxNameLength = 128;

// Names: 1..128 bytes of [A-Za-z0-9._-], starting with a letter or digit. '@' separates a
// volume from a snapshot in export names and '/' would break paths, so neither is allowed.
Status ValidateName(std::string_view kind, std::string_view name);

}  // namespace shale
