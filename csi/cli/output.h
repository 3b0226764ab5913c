// Output of the shale CLI: aligned tables and key/value views for people, JSON for scripts.
//
// JSON field names are snake_case and stable (scripts depend on them); sizes are exact byte
// counts. Tables show sizes through FormatSize ("1.5 GiB").
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "csi/proto/control.pb.h"

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
nlohmann::ordered_json ToJson(const std::string& pool, const v1::CheckPoolResponse& check);
nlohmann::ordered_json ToJson(const v1::ListExportsResponse& exports);

// Human views; each ends with a newline.
std::string StatusView(const v1::GetStatusResponse& status);
std::string PoolView(const v1::Pool& pool);
std::string PoolTable(const v1::ListPoolsResponse& pools);
std::string VolumeView(const v1::Volume& volume);
std::string VolumeTable(const v1::ListVolumesResponse& volumes);
std::string CheckView(const std::string& pool, const v1::CheckPoolResponse& check);
// One row per NBD client; an export without clients gets one row with "-".
std::string ExportTable(const v1::ListExportsResponse& exports);

}  // namespace shale::cli
