#include "engine/common/units.h"

#include <cctype>
#include <cstdio>

namespace shale {

Result<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("invalid size '" + std::string(text) + "': " + std::string(why) +
                                   " (use a whole number with an optional K, M, G or T suffix)");
  };
  if (text.empty()) return bad("empty");
  size_t i = 0;
  uint64_t value = 0;
  if (!std::isdigit(static_cast<unsigned char>(text[0]))) return bad("not a non-negative number");
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (UINT64_MAX - digit) / 10) return bad("too large");
    value = value * 10 + digit;
    ++i;
  }
  std::string_view suffix = text.substr(i);
  uint64_t mult = 1;
  if (!suffix.empty()) {
    char c = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    switch (c) {
      case 'B':
        mult = 1;
        break;
      case 'K':
        mult = kKiB;
        break;
      case 'M':
        mult = kMiB;
        break;
      case 'G':
        mult = kGiB;
        break;
      case 'T':
        mult = kTiB;
        break;
      case 'P':
        mult = kTiB * 1024;
        break;
      default:
        return bad("unknown suffix");
    }
    std::string_view rest = suffix.substr(1);
    if (c != 'B' && !rest.empty()) {
      std::string r;
      for (char ch : rest) r += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      if (r != "B" && r != "IB") return bad("unknown suffix");
    } else if (c == 'B' && !rest.empty()) {
      return bad("unknown suffix");
    }
  }
  if (mult != 1 && value > UINT64_MAX / mult) return bad("too large");
  return value * mult;
}

std::string FormatSize(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int unit = 0;
  double v = static_cast<double>(bytes);
  while (v >= 1024.0 && unit < 5) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0 || v >= 100 || v == static_cast<double>(static_cast<uint64_t>(v))) {
    std::snprintf(buf, sizeof(buf), "%.0f %s", v, kUnits[unit]);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[unit]);
  }
  return buf;
}

Status ValidateName(std::string_view kind, std::string_view name) {
  std::string k(kind);
  if (name.empty()) return Status::InvalidArgument(k + " name must not be empty");
  if (name.size() > kMaxNameLength) {
    return Status::InvalidArgument(k + " name is " + std::to_string(name.size()) +
                                   " bytes long; the limit is " + std::to_string(kMaxNameLength));
  }
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) {
    return Status::InvalidArgument(k + " name '" + std::string(name) +
                                   "' must start with a letter or digit");
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      return Status::InvalidArgument(k + " name '" + std::string(name) +
                                     "' may contain only letters, digits, '.', '_' and '-'");
    }
  }
  return Status::Ok();
}

}  // namespace shale
