// Output of the shale CLI: aligned tables and key/value views for people, JSON for scripts.
//
// JSON field names are snake_case and stable (scripts depend on them); sizes are exact byte
// counts. Tables show sizes through FormatSize ("1.5 GiB").
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "api/control.pb.h"

namespace shale::cli {

// Columns left-aligned under a header row, separated by two spaces, no trailing blanks.
class Table {
 public:
  explicit Table(std::vector<std::string> header);
  // A row with fewer cells than the header is padded with empty cells; extra cells are an error
  // of the caller and are dropped.
  void AddRow(std::vector<std::string> row);
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

// "Key:   value" lines with the values aligned.
std::string RenderKeyValues(const std::vector<std::pair<std::string, std::string>>& rows);

// "2024-05-01T12:00:00Z"; "-" for 0.
std::string FormatUnixNanos(uint64_t unix_ns);
// "3d 4h", "2h 5m", "1m 30s", "12s".
std::string FormatDuration(uint64_t seconds);
// "online", "error", "unknown".
std::string PoolStateName(v1::PoolState state);
// "k1=v1,k2=v2" in key order; "-" when empty.
std::string FormatLabels(const google::protobuf::Map<std::string, std::string>& labels);

nlohmann::ordered_json ToJson(const v1::GetStatusResponse& status);
nlohmann::ordered_json ToJson(const v1::Pool& pool);
nlohmann::ordered_json ToJson(const v1::Volume& volume);
// {"volume", "epoch", "target", "min_in_sync", "in_sync": [...], "fenced", "detached",
// "replicas": [{"node", "state", "generation", "local", "rebuild_done_bytes",
// "rebuild_total_bytes", "rebuild_sent_bytes", "rebuilds", "last_error"}]}, exact byte counts
// (defined in replica_commands.cc).
nlohmann::ordered_json ToJson(const v1::ListReplicasResponse& replicas);
nlohmann::ordered_json ToJson(const std::string& pool, const v1::CheckPoolResponse& check);
nlohmann::ordered_json ToJson(const v1::ListExportsResponse& exports);
nlohmann::ordered_json ToJson(const v1::Snapshot& snapshot);
nlohmann::ordered_json ToJson(const v1::CloneInfo& clone);
nlohmann::ordered_json ToJson(const v1::ExportSnapshotResponse& exported);
nlohmann::ordered_json ToJson(const v1::ImportSnapshotResponse& imported);

// "pending", "ready", "failed", "unknown".
std::string DigestStateName(v1::DigestState state);
// The digest for people: the 32 hex digits; "pending 45% (12 MiB of 26 MiB)"; "failed: why".
std::string DigestText(const v1::Snapshot& snapshot);

// Human views; each ends with a newline.
std::string StatusView(const v1::GetStatusResponse& status);
std::string PoolView(const v1::Pool& pool);
std::string PoolTable(const v1::ListPoolsResponse& pools);
std::string VolumeView(const v1::Volume& volume);
std::string VolumeTable(const v1::ListVolumesResponse& volumes);
std::string CheckView(const std::string& pool, const v1::CheckPoolResponse& check);
// One row per NBD client; an export without clients gets one row with "-".
std::string ExportTable(const v1::ListExportsResponse& exports);
std::string SnapshotView(const v1::Snapshot& snapshot);
std::string SnapshotTable(const v1::ListSnapshotsResponse& snapshots);
std::string CloneTable(const v1::ListClonesResponse& clones);

// --- QoS (qos_output.cc) ---
// Every settings field, snake_case as in the API (0 = unlimited / none).
nlohmann::ordered_json ToJson(const v1::QosSettings& qos);
nlohmann::ordered_json ToJson(const v1::VolumeQos& qos);
nlohmann::ordered_json ToJson(const v1::VolumeIoStats& stats);
nlohmann::ordered_json ToJson(const v1::PoolQos& pool);
nlohmann::ordered_json ToJson(const v1::RebuildQos& rebuild);
// For people: "iops=2000 burst_iops=5000 burst_seconds=10, weight 100" (the limits set, or
// "unlimited"; then the weight, and reservation / iops unit when set).
std::string QosSummary(const v1::QosSettings& qos);
std::string QosView(const v1::VolumeQos& qos);
std::string VolumeStatsView(const v1::VolumeIoStats& stats);
std::string PoolQosView(const v1::PoolQos& pool);
std::string RebuildQosView(const v1::RebuildQos& rebuild);

}  // namespace shale::cli
