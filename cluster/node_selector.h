// Node labels and the selector over them that keeps a volume's replicas on some nodes
// (`shale volume create --replica-node-selector`, StorageClass `replicaNodeSelector`;
// docs/replication.md, "Node labels and selectors").
//
// A selector is a comma-separated list of requirements, all of which a node's labels must meet
// (Kubernetes' equality-based label selectors):
//   key=value   key==value   the node has the label with that value
//   key!=value               the node has no such label, or another value
//   key                      the node has the label (any value)
//   !key                     the node has no such label
// Keys and values follow the label rules of engine/common/labels.h; a value in a selector cannot
// hold ',' (the separator). Spaces around requirements are ignored. The empty selector matches
// every node.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/common/labels.h"
#include "engine/common/result.h"

namespace shale::cluster {

class NodeSelector {
 public:
  static constexpr size_t kMaxRequirements = 16;
  static constexpr size_t kMaxLength = 1024;

  // InvalidArgument naming the requirement that is malformed.
  static Result<NodeSelector> Parse(std::string_view text);

  bool empty() const { return requirements_.empty(); }
  bool Matches(const Labels& labels) const;
  // The requirements `labels` does not meet, as written in the selector ("disk=ssd, !spot").
  std::string Unmet(const Labels& labels) const;
  // The canonical form: requirements in the order given, ", "-separated ("" when empty).
  std::string ToString() const;

 private:
  enum class Op { kEquals, kNotEquals, kExists, kNotExists };
  struct Requirement {
    Op op = Op::kExists;
    std::string key, value;
    bool Meets(const Labels& labels) const;
    std::string ToString() const;
  };
  std::vector<Requirement> requirements_;
};

}  // namespace shale::cluster
