// ExportAuthz: which TLS clients may open which exports (shaled --nbd-tls-authz FILE; the
// format is documented in docs/security.md).
//
//   # IDENTITY          EXPORT PATTERNS...
//   cn:notebook-42      data-42 scratch-42-*
//   dns:backup.example  *
//   psk:alice           vol1 vol2@v1
//
// An identity is one of the names a TLS client proved (tls::PeerIdentity::Names()): cn:, dns:,
// ip:, email:, uri: from its verified certificate, or psk: for a PSK user name; compared
// exactly. A pattern is an export name or a glob (`*`, `?`, `[...]`, as fnmatch); a pattern
// without `@` also grants the snapshots of the volumes it names (`data` grants `data@v1`), since
// they hold that volume's data. Rules add up; whatever no rule grants is refused, and a client
// is never told whether a refused export exists (NBD_REP_ERR_POLICY for GO/INFO, absent from
// NBD_OPT_LIST).
//
// Immutable after parsing; thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale::nbd {

class ExportAuthz {
 public:
  // InvalidArgument naming the line for a malformed rule.
  static Result<std::shared_ptr<const ExportAuthz>> Parse(const std::string& text);
  static Result<std::shared_ptr<const ExportAuthz>> Load(const std::string& path);

  // True if a client that proved `names` may open (or see) `export_name`.
  bool Allows(const std::vector<std::string>& names, std::string_view export_name) const;
  // Number of identities with at least one rule.
  size_t identities() const { return rules_.size(); }

 private:
  std::map<std::string, std::vector<std::string>, std::less<>> rules_;  // identity -> patterns
};

}  // namespace shale::nbd
