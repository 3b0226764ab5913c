#include "engine/common/labels.h"

#include <cctype>

namespace shale {

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

Status ValidateLabels(const Labels& labels) {
  if (labels.size() > kMaxLabels) {
    return Status::InvalidArgument("too many labels (" + std::to_string(labels.size()) +
                                   "); the limit is " + std::to_string(kMaxLabels));
  }
  for (const auto& [k, v] : labels) SHALE_RETURN_IF_ERROR(ValidateLabel(k, v));
  return Status::Ok();
}

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

}  // namespace shale
