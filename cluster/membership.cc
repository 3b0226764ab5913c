#include "cluster/membership.h"

#include <algorithm>
#include <set>

#include "cluster/json_fields.h"
#include "cluster/node_selector.h"
#include "engine/common/units.h"
#include "engine/common/uuid.h"

namespace shale::cluster {
namespace {

using internal::Json;
using internal::JsonObject;

constexpr ReplicaState kStates[] = {ReplicaState::kHealthy, ReplicaState::kRebuilding,
                                    ReplicaState::kFaulted, ReplicaState::kStale};

Status Invalid(const std::string& problem) {
  return Status::InvalidArgument("volume membership: " + problem);
}

// Node names in `nodes` are valid and distinct.
Status CheckNodeList(const std::vector<std::string>& nodes, const std::string& field) {
  std::set<std::string_view> seen;
  for (const std::string& node : nodes) {
    SHALE_RETURN_IF_ERROR(ValidateName("node", node).WithContext("volume membership: " + field));
    if (!seen.insert(node).second) return Invalid(field + " names node '" + node + "' twice");
  }
  return Status::Ok();
}

Status ValidateReplicas(const Membership& m) {
  if (m.replicas.empty() || m.replicas.size() > Membership::kMaxReplicas) {
    return Invalid("has " + std::to_string(m.replicas.size()) + " replicas; 1 to " +
                   std::to_string(Membership::kMaxReplicas) + " are allowed");
  }
  std::vector<std::string> nodes;
  for (const ReplicaMember& r : m.replicas) {
    nodes.push_back(r.node);
    if (!r.replaces.empty() && (r.replaces == r.node || m.Find(r.replaces) == nullptr)) {
      return Invalid("replica on '" + r.node + "' replaces '" + r.replaces +
                     "', which is not another replica of the volume");
    }
    if (r.since_epoch > m.epoch) {
      return Invalid("replica on '" + r.node + "' is in its state since epoch " +
                     std::to_string(r.since_epoch) + ", after the current epoch " +
                     std::to_string(m.epoch));
    }
  }
  SHALE_RETURN_IF_ERROR(CheckNodeList(nodes, "replicas"));
  if (m.min_in_sync < 1 || m.min_in_sync > m.replicas.size()) {
    return Invalid("min_in_sync " + std::to_string(m.min_in_sync) + " is not within 1.." +
                   std::to_string(m.replicas.size()) + " (the number of replicas)");
  }
  return Status::Ok();
}

Status ValidateInSync(const Membership& m) {
  if (m.in_sync.empty()) return Invalid("in_sync is empty");
  SHALE_RETURN_IF_ERROR(CheckNodeList(m.in_sync, "in_sync"));
  for (const std::string& node : m.in_sync) {
    const ReplicaMember* r = m.Find(node);
    if (r == nullptr) return Invalid("in_sync names '" + node + "', which holds no replica");
    if (r->state != ReplicaState::kHealthy) {
      return Invalid("in_sync names '" + node + "', whose replica is " +
                     std::string(ReplicaStateName(r->state)) + ", not healthy");
    }
  }
  for (const ReplicaMember& r : m.replicas) {
    if (r.state == ReplicaState::kHealthy && !m.InSync(r.node)) {
      return Invalid("replica on '" + r.node + "' is healthy but not in in_sync");
    }
  }
  return Status::Ok();
}

Status ValidateHistory(const Membership& m) {
  if (m.history.size() > Membership::kMaxHistory) {
    return Invalid("history has " + std::to_string(m.history.size()) + " entries; the limit is " +
                   std::to_string(Membership::kMaxHistory));
  }
  uint64_t previous = 0;
  for (size_t i = 0; i < m.history.size(); ++i) {
    const MembershipChange& c = m.history[i];
    const std::string field = "history[" + std::to_string(i) + "]";
    if (c.epoch <= previous || c.epoch > m.epoch) {
      return Invalid(field + " has epoch " + std::to_string(c.epoch) +
                     "; epochs must increase and not pass the current epoch " +
                     std::to_string(m.epoch));
    }
    previous = c.epoch;
    if (c.reason.size() > Membership::kMaxReasonLength) {
      return Invalid(field + " has a reason longer than " +
                     std::to_string(Membership::kMaxReasonLength) + " bytes");
    }
    SHALE_RETURN_IF_ERROR(CheckNodeList(c.in_sync, field + ".in_sync"));
  }
  return Status::Ok();
}

Json EncodeNodes(const std::vector<std::string>& nodes) {
  Json out = Json::array();
  for (const std::string& n : nodes) out.push_back(n);
  return out;
}

std::vector<std::string> DecodeNodes(JsonObject& object, const char* name) {
  std::vector<std::string> out;
  const Json* array = object.Array(name);
  if (array == nullptr) return out;
  if (array->size() > Membership::kMaxReplicas) {
    object.Fail(name, "has more than " + std::to_string(Membership::kMaxReplicas) + " entries");
    return out;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const Json& v = (*array)[i];
    if (!v.is_string()) {
      object.Fail(std::string(name) + "[" + std::to_string(i) + "]", "must be a string");
      return out;
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

void DecodeReplicas(JsonObject& top, Membership* m) {
  const Json* array = top.Array("replicas");
  if (array == nullptr) return;
  if (array->size() > Membership::kMaxReplicas) {
    top.Fail("replicas", "has more than " + std::to_string(Membership::kMaxReplicas) + " entries");
    return;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string field = "replicas[" + std::to_string(i) + "]";
    if (!(*array)[i].is_object()) return top.Fail(field, "must be an object");
    JsonObject r((*array)[i], top.Path(field), &top);
    ReplicaMember member;
    member.node = r.String("node");
    const std::string state = r.String("state");
    member.since_epoch = r.Unsigned("since_epoch", /*required=*/false);
    member.replaces = r.String("replaces", /*required=*/false);
    r.CheckUnknown();
    if (top.failed()) return;
    Result<ReplicaState> parsed = ParseReplicaState(state);
    if (!parsed.ok()) return top.Fail(field + ".state", std::string(parsed.status().message()));
    member.state = *parsed;
    m->replicas.push_back(std::move(member));
  }
}

void DecodeHistory(JsonObject& top, Membership* m) {
  const Json* array = top.Array("history");
  if (array == nullptr) return;
  if (array->size() > Membership::kMaxHistory) {
    top.Fail("history", "has more than " + std::to_string(Membership::kMaxHistory) + " entries");
    return;
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const std::string field = "history[" + std::to_string(i) + "]";
    if (!(*array)[i].is_object()) return top.Fail(field, "must be an object");
    JsonObject h((*array)[i], top.Path(field), &top);
    MembershipChange change;
    change.epoch = h.Unsigned("epoch");
    change.in_sync = DecodeNodes(h, "in_sync");
    change.reason = h.String("reason", /*required=*/false);
    h.CheckUnknown();
    if (top.failed()) return;
    m->history.push_back(std::move(change));
  }
}

}  // namespace

std::string_view ReplicaStateName(ReplicaState state) {
  switch (state) {
    case ReplicaState::kHealthy:
      return "healthy";
    case ReplicaState::kRebuilding:
      return "rebuilding";
    case ReplicaState::kFaulted:
      return "faulted";
    case ReplicaState::kStale:
      return "stale";
  }
  return "unknown";
}

Result<ReplicaState> ParseReplicaState(std::string_view name) {
  for (ReplicaState s : kStates) {
    if (ReplicaStateName(s) == name) return s;
  }
  return Status::InvalidArgument("unknown replica state '" + std::string(name) +
                                 "' (healthy, rebuilding, faulted, stale)");
}

const ReplicaMember* Membership::Find(std::string_view node) const {
  for (const ReplicaMember& r : replicas) {
    if (r.node == node) return &r;
  }
  return nullptr;
}

bool Membership::InSync(std::string_view node) const {
  return std::find(in_sync.begin(), in_sync.end(), node) != in_sync.end();
}

void Membership::RecordChange(std::string_view reason) {
  history.push_back(
      MembershipChange{epoch, in_sync, std::string(reason.substr(0, kMaxReasonLength))});
  if (history.size() > kMaxHistory) {
    history.erase(history.begin(), history.end() - static_cast<ptrdiff_t>(kMaxHistory));
  }
}

Status Membership::Validate() const {
  Result<Uuid> parsed = Uuid::Parse(uuid);
  if (!parsed.ok() || parsed->IsNil()) return Invalid("uuid '" + uuid + "' is not a UUID");
  if (size_bytes == 0) return Invalid("size_bytes is 0");
  if (epoch == 0) return Invalid("epoch is 0 (epochs start at 1)");
  SHALE_RETURN_IF_ERROR(ValidateName("node", target).WithContext("volume membership: target"));
  if (!node_selector.empty()) {
    Result<NodeSelector> selector = NodeSelector::Parse(node_selector);
    if (!selector.ok()) return Invalid(std::string(selector.status().message()));
    if (selector->ToString() != node_selector) {
      return Invalid("node_selector '" + node_selector + "' is not in its canonical form '" +
                     selector->ToString() + "'");
    }
  }
  if (qos.size() > kMaxQosFields) {
    return Invalid("qos has " + std::to_string(qos.size()) + " fields; at most " +
                   std::to_string(kMaxQosFields));
  }
  for (const auto& [field, value] : qos) {
    if (field.empty() || field.size() > 32 ||
        field.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos) {
      return Invalid("qos field '" + field + "' is not a field name");
    }
    if (value > kMaxQosValue) return Invalid("qos field '" + field + "' is too large");
  }
  if (labels.size() > kMaxLabels) {
    return Invalid("labels has " + std::to_string(labels.size()) + " entries; at most " +
                   std::to_string(kMaxLabels));
  }
  size_t label_bytes = 0;
  for (const auto& [key, value] : labels) {
    if (key.empty() || key.size() > kMaxLabelKey) {
      return Invalid("label key '" + key.substr(0, 64) + "' is empty or too long");
    }
    if (value.size() > kMaxLabelValue) return Invalid("label '" + key + "' is too long");
    label_bytes += key.size() + value.size();
  }
  if (label_bytes > kMaxLabelBytes) {
    return Invalid("labels take " + std::to_string(label_bytes) + " bytes; at most " +
                   std::to_string(kMaxLabelBytes));
  }
  SHALE_RETURN_IF_ERROR(ValidateReplicas(*this));
  SHALE_RETURN_IF_ERROR(ValidateInSync(*this));
  return ValidateHistory(*this);
}

Result<std::string> EncodeMembership(const Membership& m) {
  SHALE_RETURN_IF_ERROR(m.Validate());
  Json j = Json::object();
  j["uuid"] = m.uuid;
  j["size_bytes"] = m.size_bytes;
  j["min_in_sync"] = m.min_in_sync;
  j["epoch"] = m.epoch;
  j["target"] = m.target;
  if (m.detached) j["detached"] = true;
  if (!m.node_selector.empty()) j["node_selector"] = m.node_selector;
  if (!m.qos.empty()) {
    Json qos = Json::object();
    for (const auto& [field, value] : m.qos) qos[field] = value;
    j["qos"] = std::move(qos);
  }
  if (!m.labels.empty()) {
    Json labels = Json::object();
    for (const auto& [key, value] : m.labels) labels[key] = value;
    j["labels"] = std::move(labels);
  }
  Json replicas = Json::array();
  for (const ReplicaMember& r : m.replicas) {
    Json e = Json::object();
    e["node"] = r.node;
    e["state"] = std::string(ReplicaStateName(r.state));
    if (r.since_epoch != 0) e["since_epoch"] = r.since_epoch;
    if (!r.replaces.empty()) e["replaces"] = r.replaces;
    replicas.push_back(std::move(e));
  }
  j["replicas"] = std::move(replicas);
  j["in_sync"] = EncodeNodes(m.in_sync);
  Json history = Json::array();
  for (const MembershipChange& c : m.history) {
    Json e = Json::object();
    e["epoch"] = c.epoch;
    e["in_sync"] = EncodeNodes(c.in_sync);
    e["reason"] = c.reason;
    history.push_back(std::move(e));
  }
  j["history"] = std::move(history);
  std::string encoded = internal::DumpJson(j);
  // Never write what no node could read back (DecodeMembership's bound).
  if (encoded.size() > Membership::kMaxEncodedBytes) {
    return Status::InvalidArgument("membership record of " + std::to_string(encoded.size()) +
                                   " bytes; at most " +
                                   std::to_string(Membership::kMaxEncodedBytes));
  }
  return encoded;
}

Result<Membership> DecodeMembership(std::string_view json, std::string_view what) {
  SHALE_ASSIGN_OR_RETURN(Json j,
                         internal::ParseJsonObject(json, what, Membership::kMaxEncodedBytes));
  JsonObject top(j, "");
  Membership m;
  m.uuid = top.String("uuid");
  m.size_bytes = top.Unsigned("size_bytes");
  const uint64_t min_in_sync = top.Unsigned("min_in_sync");
  if (min_in_sync > Membership::kMaxReplicas) top.Fail("min_in_sync", "is too large");
  m.min_in_sync = static_cast<uint32_t>(min_in_sync);
  m.epoch = top.Unsigned("epoch");
  m.target = top.String("target");
  m.detached = top.Boolean("detached", /*required=*/false);
  m.node_selector = top.String("node_selector", /*required=*/false);
  if (const Json* qos = top.Object("qos", /*required=*/false); qos != nullptr) {
    for (const auto& [field, value] : qos->items()) {
      if (!value.is_number_unsigned()) {
        top.Fail("qos." + field, "must be a non-negative integer");
        break;
      }
      m.qos[field] = value.get<uint64_t>();
    }
  }
  if (const Json* labels = top.Object("labels", /*required=*/false); labels != nullptr) {
    for (const auto& [key, value] : labels->items()) {
      if (!value.is_string()) {
        top.Fail("labels." + key, "must be a string");
        break;
      }
      m.labels[key] = value.get<std::string>();
    }
  }
  DecodeReplicas(top, &m);
  m.in_sync = DecodeNodes(top, "in_sync");
  DecodeHistory(top, &m);
  SHALE_RETURN_IF_ERROR(top.Finish(what));
  Status valid = m.Validate();
  if (!valid.ok())
    return Status::Corruption(std::string(what) + ": " + std::string(valid.message()));
  return m;
}

Status CheckMembershipTransition(const Membership& from, const Membership& to) {
  auto fail = [](const std::string& why) {
    return Status::FailedPrecondition("volume membership change: " + why);
  };
  if (from.uuid != to.uuid) return fail("the uuid changed from " + from.uuid + " to " + to.uuid);
  if (to.epoch < from.epoch) {
    return fail("the epoch went back from " + std::to_string(from.epoch) + " to " +
                std::to_string(to.epoch));
  }
  if (to.epoch > from.epoch + 1) {
    return fail("the epoch jumped from " + std::to_string(from.epoch) + " to " +
                std::to_string(to.epoch) + " (one change, one increment)");
  }
  auto sorted = [](std::vector<std::string> nodes) {
    std::sort(nodes.begin(), nodes.end());
    return nodes;
  };
  const bool members_changed =
      sorted(from.in_sync) != sorted(to.in_sync) || from.target != to.target;
  if (members_changed && to.epoch != from.epoch + 1) {
    return fail("in_sync or target changed but the epoch stayed " + std::to_string(to.epoch));
  }
  return Status::Ok();
}

}  // namespace shale::cluster
