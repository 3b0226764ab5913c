#include "nbd/authz.h"

#include <fnmatch.h>

#include <fstream>
#include <sstream>

namespace shale::nbd {

namespace {

constexpr size_t kMaxAuthzFileBytes = 4 << 20;
constexpr const char* kIdentityKinds[] = {"cn:", "dns:", "ip:", "email:", "uri:", "psk:"};

bool Matches(const std::string& pattern, std::string_view name) {
  const std::string n(name);
  if (fnmatch(pattern.c_str(), n.c_str(), 0) == 0) return true;
  // A volume's pattern grants its snapshots.
  const size_t at = n.find('@');
  if (at == std::string::npos || pattern.find('@') != std::string::npos) return false;
  return fnmatch(pattern.c_str(), n.substr(0, at).c_str(), 0) == 0;
}

}  // namespace

Result<std::shared_ptr<const ExportAuthz>> ExportAuthz::Parse(const std::string& text) {
  auto authz = std::make_shared<ExportAuthz>();
  std::istringstream in(text);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string identity;
    if (!(words >> identity)) continue;  // blank or comment
    const auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("authz line " + std::to_string(n) + ": " + why);
    };
    bool known = false;
    for (const char* kind : kIdentityKinds) {
      const std::string_view k(kind);
      if (identity.starts_with(k) && identity.size() > k.size()) known = true;
    }
    if (!known) {
      return bad("'" + identity +
                 "' is not an identity (cn:NAME, dns:NAME, ip:ADDRESS, email:ADDRESS, uri:URI or "
                 "psk:USER)");
    }
    std::vector<std::string>& patterns = authz->rules_[identity];
    std::string pattern;
    size_t count = 0;
    while (words >> pattern) {
      patterns.push_back(pattern);
      ++count;
    }
    if (count == 0) return bad("'" + identity + "' names no export pattern");
  }
  return std::shared_ptr<const ExportAuthz>(std::move(authz));
}

Result<std::shared_ptr<const ExportAuthz>> ExportAuthz::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::FromErrno(errno, "read authz file " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > kMaxAuthzFileBytes) {
    return Status::InvalidArgument("authz file " + path + " is larger than 4 MiB");
  }
  Result<std::shared_ptr<const ExportAuthz>> authz = Parse(ss.str());
  if (!authz.ok())
    return Status::InvalidArgument(path + ": " + std::string(authz.status().message()));
  return authz;
}

bool ExportAuthz::Allows(const std::vector<std::string>& names,
                         std::string_view export_name) const {
  for (const std::string& name : names) {
    const auto it = rules_.find(name);
    if (it == rules_.end()) continue;
    for (const std::string& pattern : it->second) {
      if (Matches(pattern, export_name)) return true;
    }
  }
  return false;
}

}  // namespace shale::nbd
