#include "cluster/node_record.h"

#include <set>

#include "cluster/json_fields.h"
#include "engine/common/units.h"

namespace shale::cluster {

using internal::Json;
using internal::JsonObject;

Status NodeInfo::Validate() const {
  // Empty: the node runs no replica listener (it holds no replicas of other nodes' volumes).
  if (!replica_address.empty() && (replica_address.size() > kMaxAddressLength ||
                                   replica_address.find_first_of(" \t\r\n/") != std::string::npos ||
                                   replica_address.rfind(':') == std::string::npos)) {
    return Status::InvalidArgument("node record: replica_address '" + replica_address +
                                   "' is not HOST:PORT");
  }
  if (pools.size() > kMaxPools) {
    return Status::InvalidArgument("node record: " + std::to_string(pools.size()) +
                                   " pools; the limit is " + std::to_string(kMaxPools));
  }
  std::set<std::string_view> names;
  for (const PoolCapacity& p : pools) {
    SHALE_RETURN_IF_ERROR(ValidateName("pool", p.name).WithContext("node record"));
    if (!names.insert(p.name).second) {
      return Status::InvalidArgument("node record: pool '" + p.name + "' is listed twice");
    }
    if (p.free_bytes > p.capacity_bytes) {
      return Status::InvalidArgument("node record: pool '" + p.name + "' has more free bytes (" +
                                     std::to_string(p.free_bytes) + ") than capacity (" +
                                     std::to_string(p.capacity_bytes) + ")");
    }
  }
  return Status::Ok();
}

Result<std::string> EncodeNodeInfo(const NodeInfo& info) {
  SHALE_RETURN_IF_ERROR(info.Validate());
  Json j = Json::object();
  j["replica_address"] = info.replica_address;
  Json pools = Json::array();
  for (const PoolCapacity& p : info.pools) {
    Json e = Json::object();
    e["name"] = p.name;
    e["free_bytes"] = p.free_bytes;
    e["capacity_bytes"] = p.capacity_bytes;
    pools.push_back(std::move(e));
  }
  j["pools"] = std::move(pools);
  j["version"] = NodeInfo::kFormatVersion;
  return internal::DumpJson(j);
}

Result<NodeInfo> DecodeNodeInfo(std::string_view json, std::string_view what) {
  SHALE_ASSIGN_OR_RETURN(Json j, internal::ParseJsonObject(json, what, NodeInfo::kMaxEncodedBytes));
  JsonObject top(j, "");
  NodeInfo info;
  const uint64_t version = top.Unsigned("version");
  if (version > NodeInfo::kFormatVersion) {
    top.Fail("version", std::to_string(version) + " is newer than this Shale (" +
                            std::to_string(NodeInfo::kFormatVersion) + ")");
  }
  info.replica_address = top.String("replica_address");
  const Json* pools = top.Array("pools");
  if (pools != nullptr && pools->size() > NodeInfo::kMaxPools) {
    top.Fail("pools", "has more than " + std::to_string(NodeInfo::kMaxPools) + " entries");
    pools = nullptr;
  }
  for (size_t i = 0; pools != nullptr && i < pools->size() && !top.failed(); ++i) {
    const std::string field = "pools[" + std::to_string(i) + "]";
    if (!(*pools)[i].is_object()) {
      top.Fail(field, "must be an object");
      break;
    }
    JsonObject p((*pools)[i], top.Path(field), &top);
    PoolCapacity pool;
    pool.name = p.String("name");
    pool.free_bytes = p.Unsigned("free_bytes");
    pool.capacity_bytes = p.Unsigned("capacity_bytes");
    p.CheckUnknown();
    info.pools.push_back(std::move(pool));
  }
  SHALE_RETURN_IF_ERROR(top.Finish(what));
  Status valid = info.Validate();
  if (!valid.ok())
    return Status::Corruption(std::string(what) + ": " + std::string(valid.message()));
  return info;
}

Result<std::string> EncodeNodeLabels(const Labels& labels) {
  SHALE_RETURN_IF_ERROR(ValidateLabels(labels).WithContext("node labels"));
  Json j = Json::object();
  for (const auto& [key, value] : labels) j[key] = value;
  return internal::DumpJson(j);
}

Result<Labels> DecodeNodeLabels(std::string_view json, std::string_view what) {
  SHALE_ASSIGN_OR_RETURN(Json j, internal::ParseJsonObject(json, what, NodeInfo::kMaxEncodedBytes));
  Labels labels;
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      return Status::Corruption(std::string(what) + ": label " + key + " is not a string");
    }
    labels[key] = value.get<std::string>();
  }
  if (Status st = ValidateLabels(labels); !st.ok()) {
    return Status::Corruption(std::string(what) + ": " + std::string(st.message()));
  }
  return labels;
}

}  // namespace shale::cluster
