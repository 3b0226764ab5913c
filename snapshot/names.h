// Names of snapshots ("VOLUME@SNAP"): parsing and validation with errors a user can act on.
// Snapshot and volume names follow shale::ValidateName.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "engine/common/labels.h"
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

// Labels follow the one set of rules in engine/common/labels.h.
using shale::Labels;
using shale::ParseLabel;
using shale::ValidateLabels;

}  // namespace shale::snapshot
