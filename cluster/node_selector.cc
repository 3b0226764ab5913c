#include "cluster/node_selector.h"

#include <utility>

namespace shale::cluster {

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

}  // namespace

bool NodeSelector::Requirement::Meets(const Labels& labels) const {
  auto it = labels.find(key);
  switch (op) {
    case Op::kEquals:
      return it != labels.end() && it->second == value;
    case Op::kNotEquals:
      return it == labels.end() || it->second != value;
    case Op::kExists:
      return it != labels.end();
    case Op::kNotExists:
      return it == labels.end();
  }
  return false;
}

std::string NodeSelector::Requirement::ToString() const {
  switch (op) {
    case Op::kEquals:
      return key + "=" + value;
    case Op::kNotEquals:
      return key + "!=" + value;
    case Op::kExists:
      return key;
    case Op::kNotExists:
      return "!" + key;
  }
  return key;
}

Result<NodeSelector> NodeSelector::Parse(std::string_view text) {
  NodeSelector out;
  if (text.size() > kMaxLength) {
    return Status::InvalidArgument("node selector is longer than " + std::to_string(kMaxLength) +
                                   " bytes");
  }
  if (Trim(text).empty()) return out;
  while (true) {
    const size_t comma = text.find(',');
    const std::string_view part = Trim(text.substr(0, comma));
    auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("node selector requirement '" + std::string(part) +
                                     "': " + why + " (KEY=VALUE, KEY!=VALUE, KEY or !KEY)");
    };
    if (part.empty()) return bad("empty");
    Requirement r;
    if (const size_t ne = part.find("!="); ne != std::string_view::npos) {
      r.op = Op::kNotEquals;
      r.key = std::string(Trim(part.substr(0, ne)));
      r.value = std::string(Trim(part.substr(ne + 2)));
    } else if (const size_t eq = part.find('='); eq != std::string_view::npos) {
      r.op = Op::kEquals;
      r.key = std::string(Trim(part.substr(0, eq)));
      std::string_view value = part.substr(eq + 1);
      if (!value.empty() && value.front() == '=') value.remove_prefix(1);  // key==value
      r.value = std::string(Trim(value));
    } else if (part.front() == '!') {
      r.op = Op::kNotExists;
      r.key = std::string(Trim(part.substr(1)));
    } else {
      r.op = Op::kExists;
      r.key = std::string(part);
    }
    if (Status st = ValidateLabel(r.key, r.value); !st.ok()) return bad(std::string(st.message()));
    if (out.requirements_.size() == kMaxRequirements) {
      return bad("more than " + std::to_string(kMaxRequirements) + " requirements");
    }
    out.requirements_.push_back(std::move(r));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

bool NodeSelector::Matches(const Labels& labels) const {
  for (const Requirement& r : requirements_) {
    if (!r.Meets(labels)) return false;
  }
  return true;
}

std::string NodeSelector::Unmet(const Labels& labels) const {
  std::string out;
  for (const Requirement& r : requirements_) {
    if (!r.Meets(labels)) out += (out.empty() ? "" : ", ") + r.ToString();
  }
  return out;
}

std::string NodeSelector::ToString() const {
  std::string out;
  for (const Requirement& r : requirements_) out += (out.empty() ? "" : ", ") + r.ToString();
  return out;
}

}  // namespace shale::cluster
