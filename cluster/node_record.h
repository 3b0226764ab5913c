// What a node publishes about itself in etcd: the value of /shale/v1/nodes/<node> (under the
// node's lease) and of /shale/v1/node-info/<node> (the last known copy, kept while it is down).
// Decoding is strict, as for the membership (membership.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/labels.h"
#include "engine/common/result.h"

namespace shale::cluster {

struct PoolCapacity {
  std::string name;
  uint64_t free_bytes = 0;  // <= capacity_bytes
  uint64_t capacity_bytes = 0;

  bool operator==(const PoolCapacity&) const = default;
};

struct NodeInfo {
  static constexpr size_t kMaxPools = 64;
  static constexpr size_t kMaxAddressLength = 256;
  static constexpr size_t kMaxEncodedBytes = 64 * 1024;
  // The format version written in the record ("version"); a newer one is refused.
  static constexpr uint64_t kFormatVersion = 1;

  // HOST:PORT of the node's replica listener; empty when it runs none (no --replica-listen).
  std::string replica_address;
  std::vector<PoolCapacity> pools;  // distinct valid pool names, at most kMaxPools

  // InvalidArgument naming the first broken rule.
  Status Validate() const;
  bool operator==(const NodeInfo&) const = default;
};

// {"replica_address": ..., "pools": [{"name", "free_bytes", "capacity_bytes"}], "version": 1};
// validates first.
Result<std::string> EncodeNodeInfo(const NodeInfo& info);
// Corruption naming `what` and the field for anything but a valid record.
Result<NodeInfo> DecodeNodeInfo(std::string_view json, std::string_view what = "node record");

// The labels an admin gave a node (`shale node label`), matched by replica node selectors
// (node_selector.h): the value of /shale/v1/node-labels/<node>, a flat JSON object of strings,
// at most kMaxLabels valid labels. Decoding is strict (Corruption naming `what`).
Result<std::string> EncodeNodeLabels(const Labels& labels);
Result<Labels> DecodeNodeLabels(std::string_view json, std::string_view what = "node labels");

}  // namespace shale::cluster
