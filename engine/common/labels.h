// Labels: KEY=VALUE pairs attached to volumes and snapshots (provenance, team, notebook id).
// The one set of rules every entry point uses (control API, CSI, snapshot streams, the CLI).
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "engine/common/result.h"

namespace shale {

// Limits: labels are stored with every volume and snapshot record and copied into streams.
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelKeyLength = 128;
// Values hold provenance such as source URLs, hence the generous limit.
inline constexpr size_t kMaxLabelValueLength = 1024;

using Labels = std::map<std::string, std::string>;

// Keys: 1..128 bytes of [A-Za-z0-9._/-] starting with a letter or digit (Kubernetes-style
// "example.com/notebook" keys fit). Values: up to 1024 bytes, no control characters.
Status ValidateLabel(std::string_view key, std::string_view value);
// At most kMaxLabels labels, each valid.
Status ValidateLabels(const Labels& labels);
// Parses one "KEY=VALUE" (the value may be empty and may contain '='); checks the key/value.
Result<std::pair<std::string, std::string>> ParseLabel(std::string_view text);

}  // namespace shale
