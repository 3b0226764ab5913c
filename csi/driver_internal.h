// Helpers shared by the driver's service files; not part of its interface.
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "csi/csi.pb.h"
#include "csi/params.h"
#include "engine/common/result.h"
#include "engine/common/status.h"

namespace shale {
class Engine;
struct VolumeInfo;
namespace snapshot {
struct SnapshotInfo;
}
}  // namespace shale

namespace shale::csi {

// The driver's engine extension record of a CSI volume (docs/csi.md, "Names and ids").
struct CsiRecord {
  std::string csi_name;  // the CSI name as given (it may not be a valid label value)
  uint64_t capacity = 0;
  std::string source;  // "snapshot:ID", "volume:ID" or ""
};
// The record of `info` (the lifecycle's frontend record "csi", keyed by the volume's id), nullopt
// when there is none (a volume made outside CSI) or it is unreadable.
std::optional<CsiRecord> ReadCsiRecord(Engine* engine, const VolumeInfo& info);
// The record as the lifecycle stores it with the volume's operations.
std::string EncodeCsiRecord(const CsiRecord& record);
inline constexpr std::string_view kCsiRecordFrontend = "csi";

// The CSI capacity of a volume: the driver's record, else the capacity label set at creation,
// else the engine size (volumes not made through CSI have no expansion headroom).
uint64_t CsiCapacity(Engine* engine, const VolumeInfo& info);

// An id that names no volume: not found, or not even a valid volume name (no volume can have
// it). Deletes treat it as done, lookups as NOT_FOUND.
bool IsMissingVolume(const Status& status);
// Volume `id` for an RPC that needs it; NotFound ("<what> ID not found") when IsMissingVolume.
Result<VolumeInfo> FindVolume(Engine* engine, const std::string& id,
                              std::string_view what = "volume");

// A snapshot as CSI describes it (controller.cc): id "VOLUME@SNAP", capacity, creation time,
// and the group it belongs to (its shale.io/group label).
void FillCsiSnapshot(const snapshot::SnapshotInfo& s, ::csi::v1::Snapshot* out);
google::protobuf::Timestamp TimestampOf(uint64_t unix_ns);

// Block metadata (SnapshotMetadata, snapshot_metadata.cc): (offset, length) byte ranges.
using ByteRange = std::pair<uint64_t, uint64_t>;
inline constexpr size_t kDefaultMetadataPage = 1024;  // ranges per message when max_results is 0
// The ranges (sorted, disjoint) from `starting_offset` on, in pages of at most `max_results`
// (0: kDefaultMetadataPage): a range containing the offset starts at the offset rounded down
// to 4 KiB; every range after it is whole. Resuming at the end of the last range received
// returns each remaining range exactly once.
std::vector<std::vector<ByteRange>> PageRanges(const std::vector<ByteRange>& ranges,
                                               uint64_t starting_offset, size_t max_results);

// A Shale status as a gRPC status: the one table of api/grpc_status.h (docs/csi.md, "Errors").
grpc::Status ToGrpc(const Status& status);
inline grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}
inline grpc::Status Precondition(const std::string& message) {
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, message);
}

// A REQUIRED field of a request: its name and whether the request has it.
struct RequiredField {
  std::string_view name;
  bool present;
};
// INVALID_ARGUMENT "<rpc>: <field> is required" for the first missing field, else OK.
grpc::Status RequireFields(std::string_view rpc, std::initializer_list<RequiredField> fields);

// Access modes Shale serves (all on this one node). Writers need a writable volume.
bool IsReaderOnlyMode(::csi::v1::VolumeCapability::AccessMode::Mode mode);
// InvalidArgument for a capability without access mode/type, an unknown or multi-node writer
// mode, an unsupported fsType; and for writer modes when `read_only`.
Status CheckCapability(const ::csi::v1::VolumeCapability& cap, bool read_only);

inline std::map<std::string, std::string> ToMap(
    const google::protobuf::Map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

// Where a ListVolumes/ListSnapshots page starts: after the id in `token` ("" = the start).
// A token this driver did not issue is ABORTED (spec).
inline grpc::Status PageStart(int32_t max_entries, const std::string& token, std::string* after) {
  if (max_entries < 0) return Invalid("max_entries must not be negative");
  if (token.empty()) return grpc::Status::OK;
  std::optional<std::string> parsed = ParseToken(token);
  if (!parsed) {
    return grpc::Status(grpc::StatusCode::ABORTED,
                        "starting_token \"" + token + "\" was not issued by this driver");
  }
  *after = *parsed;
  return grpc::Status::OK;
}

// One page of `items` sorted by id: those after `after`, at most `max_entries` (0: all), each
// passed to `add`. Returns the next token, "" after the last page. Ids after the token's: an
// item deleted between pages does not invalidate the token, one created after it shows up if
// its id sorts later.
template <typename T, typename IdOf, typename Add>
std::string Page(std::vector<T> items, const std::string& after, int32_t max_entries, IdOf id_of,
                 Add add) {
  std::sort(items.begin(), items.end(),
            [&](const T& a, const T& b) { return id_of(a) < id_of(b); });
  const size_t max = max_entries > 0 ? static_cast<size_t>(max_entries) : items.size();
  size_t added = 0;
  std::string last;
  for (const T& item : items) {
    if (!after.empty() && id_of(item) <= after) continue;
    if (added == max) return MakeToken(last);
    add(item);
    last = id_of(item);
    ++added;
  }
  return std::string();
}

}  // namespace shale::csi
