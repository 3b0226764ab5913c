// Names of snapshots ("VOLUME@SNAP") and labels ("KEY=VALUE"): parsing and validation with
// errors a user can act on. Snapshot and volume names follow shale::ValidateName.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "engine/common/result.h"

namespace shale::snapshot {

// A snapshot's user-level name: the volume it was taken from (its namespace) and its own name.
struct SnapshotRef {
  std::string volume;
  std::string snapshot;
  std::string ToString() const { return volume + "@" + snapshot; }
  bool operator==(const SnapshotRef&) const = default;
};

// Parses "VOLUME@SNAP". InvalidArgument, naming the input, when '@' is missing or repeated,
// when either part is empty, or when a part is not a valid name (too long, bad characters).
Result<SnapshotRef> ParseSnapshotRef(std::string_view text);

// Limits on labels: they are stored with every snapshot record and copied into streams.
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelKeyLength = 128;
inline constexpr size_t kMaxLabelValueLength = 1024;

using Labels = std::map<std::string, std::string>;

// Parses one "KEY=VALUE" (the value may be empty and may contain '='); checks the key/value.
Result<std::pair<std::string, std::string>> ParseLabel(std::string_view text);
// Keys: 1..128 bytes of [A-Za-z0-9._/-] starting with a letter or digit (Kubernetes-style
// "example.com/notebook" keys fit). Values: up to 1024 bytes, no control characters.
Status ValidateLabels(const Labels& labels);

}  // namespace shale::snapshot
