#include "snapshot/names.h"

#include <cctype>

#include "engine/common/units.h"

namespace shale::snapshot {

Result<SnapshotRef> ParseSnapshotRef(std::string_view text) {
  const std::string quoted = "'" + std::string(text) + "'";
  const size_t at = text.find('@');
  if (at == std::string_view::npos) {
    return Status::InvalidArgument("snapshot name " + quoted +
                                   " must have the form VOLUME@SNAPSHOT (missing '@')");
  }
  if (text.find('@', at + 1) != std::string_view::npos) {
    return Status::InvalidArgument("snapshot name " + quoted +
                                   " must have the form VOLUME@SNAPSHOT (more than one '@')");
  }
  SnapshotRef ref{std::string(text.substr(0, at)), std::string(text.substr(at + 1))};
  if (ref.volume.empty()) {
    return Status::InvalidArgument("snapshot name " + quoted +
                                   " has an empty volume part (expected VOLUME@SNAPSHOT)");
  }
  if (ref.snapshot.empty()) {
    return Status::InvalidArgument("snapshot name " + quoted +
                                   " has an empty snapshot part (expected VOLUME@SNAPSHOT)");
  }
  SHALE_RETURN_IF_ERROR(ValidateName("volume", ref.volume));
  SHALE_RETURN_IF_ERROR(ValidateName("snapshot", ref.snapshot));
  return ref;
}

namespace {

Status ValidateLabel(std::string_view key, std::string_view value) {
  const std::string k(key);
  if (key.empty()) return Status::InvalidArgument("label key must not be empty");
  if (key.size() > kMaxLabelKeyLength) {
    return Status::InvalidArgument("label key '" + k + "' is longer than " +
                                   std::to_string(kMaxLabelKeyLength) + " bytes");
  }
  if (!std::isalnum(static_cast<unsigned char>(key[0]))) {
    return Status::InvalidArgument("label key '" + k + "' must start with a letter or digit");
  }
  for (char c : key) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
          c == '/')) {
      return Status::InvalidArgument("label key '" + k +
                                     "' may contain only letters, digits, '.', '_', '-' and '/'");
    }
  }
  if (value.size() > kMaxLabelValueLength) {
    return Status::InvalidArgument("value of label '" + k + "' is longer than " +
                                   std::to_string(kMaxLabelValueLength) + " bytes");
  }
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      return Status::InvalidArgument("value of label '" + k + "' contains a control character");
    }
  }
  return Status::Ok();
}

}  // namespace

Result<std::pair<std::string, std::string>> ParseLabel(std::string_view text) {
  const size_t eq = text.find('=');
  if (eq == std::string_view::npos) {
    return Status::InvalidArgument("label '" + std::string(text) +
                                   "' must have the form KEY=VALUE");
  }
  std::pair<std::string, std::string> kv{std::string(text.substr(0, eq)),
                                         std::string(text.substr(eq + 1))};
  SHALE_RETURN_IF_ERROR(ValidateLabel(kv.first, kv.second));
  return kv;
}

Status ValidateLabels(const Labels& labels) {
  if (labels.size() > kMaxLabels) {
    return Status::InvalidArgument("too many labels (" + std::to_string(labels.size()) +
                                   "); the limit is " + std::to_string(kMaxLabels));
  }
  for (const auto& [k, v] : labels) SHALE_RETURN_IF_ERROR(ValidateLabel(k, v));
  return Status::Ok();
}

}  // namespace shale::snapshot
