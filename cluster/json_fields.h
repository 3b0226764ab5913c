// Internal to cluster/: strict reading of the JSON records Shale keeps in etcd. A JsonObject
// reads the fields of one object, each of an exact type, remembers the first problem (naming the
// field by its path, "replicas[1].state"), and Finish() refuses fields nobody read.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale::cluster::internal {

using Json = nlohmann::ordered_json;

// Parses `text` (at most `max_bytes`) into a JSON object; Corruption naming `what` otherwise.
Result<Json> ParseJsonObject(std::string_view text, std::string_view what, size_t max_bytes);
// Compact JSON; invalid UTF-8 in strings is replaced, never thrown.
std::string DumpJson(const Json& json);

class JsonObject {
 public:
  // `object` must outlive this reader. `path` prefixes field names in errors ("" at the top).
  // A reader of a nested object passes the top reader as `root`: problems are recorded there.
  JsonObject(const Json& object, std::string path, JsonObject* root = nullptr);

  uint64_t Unsigned(const char* name, bool required = true);
  std::string String(const char* name, bool required = true);
  bool Boolean(const char* name, bool required = true);  // false when absent
  // The array (nullptr, with the error recorded, when missing or of another type).
  const Json* Array(const char* name);
  // The object (nullptr when absent and not required, or with the error recorded when of
  // another type).
  const Json* Object(const char* name, bool required = true);
  // Records a problem with a field's value.
  void Fail(const std::string& field, const std::string& problem);
  // The path of a field or element: "replicas[1]", "replicas[1].state".
  std::string Path(const std::string& field) const;

  bool failed() const;
  // Records a problem for the first field that was not read.
  void CheckUnknown();
  // Top reader: CheckUnknown(), then OK or the first problem as a Corruption naming `what`.
  Status Finish(std::string_view what);

 private:
  const Json* Field(const char* name, bool required);

  const Json& object_;
  std::string path_;
  JsonObject* root_;
  std::set<std::string> read_;
  std::string error_;
};

}  // namespace shale::cluster::internal
