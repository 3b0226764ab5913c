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

}  // namespace shale::snapshot
