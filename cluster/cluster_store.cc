#include "cluster/cluster_store.h"

#include <algorithm>
#include <map>
#include <utility>

#include "cluster/etcd_rpc.h"
#include "cluster/node_registration.h"
#include "engine/common/units.h"

namespace shale::cluster {
namespace {

constexpr std::string_view kNodes = "nodes/";
constexpr std::string_view kNodeInfo = "node-info/";
constexpr std::string_view kVolumes = "volumes/";
constexpr std::string_view kCordoned = "cordoned/";
constexpr std::string_view kNodeLabels = "node-labels/";
// The value of cordoned/<node>: cordoned, or draining too.
constexpr std::string_view kCordonedValue = "cordoned";
constexpr std::string_view kDrainingValue = "draining";

Status CheckVolumeName(std::string_view volume) { return ValidateName("volume", volume); }
Status CheckNodeName(std::string_view node) { return ValidateName("node", node); }

// A volume record from its key-value; `name_offset`: where the name starts in the key.
VolumeRecord DecodeVolume(const KeyValue& kv, size_t name_offset) {
  VolumeRecord r;
  r.name = kv.key.substr(name_offset);
  r.mod_revision = kv.mod_revision;
  Result<Membership> m = DecodeMembership(kv.value, "volume " + r.name + " (" + kv.key + ")");
  if (m.ok()) {
    r.membership = std::move(m).value();
  } else {
    r.status = m.status();
  }
  return r;
}

}  // namespace

Result<std::unique_ptr<ClusterStore>> ClusterStore::Create(std::shared_ptr<EtcdClient> client,
                                                           ClusterStoreOptions options) {
  if (client == nullptr) return Status::InvalidArgument("cluster store: no etcd client");
  const std::string& p = options.prefix;
  if (p.size() < 2 || p.front() != '/' || p.back() != '/') {
    return Status::InvalidArgument("cluster store: key prefix '" + p +
                                   "' must start and end with '/'");
  }
  if (options.node_lease.count() < 1) {
    return Status::InvalidArgument("cluster store: the node lease must be at least 1 s");
  }
  return std::unique_ptr<ClusterStore>(new ClusterStore(std::move(client), std::move(options)));
}

ClusterStore::ClusterStore(std::shared_ptr<EtcdClient> client, ClusterStoreOptions options)
    : client_(std::move(client)), options_(std::move(options)) {}

ClusterStore::~ClusterStore() = default;

std::string ClusterStore::NodeKey(std::string_view node) const {
  return options_.prefix + std::string(kNodes) + std::string(node);
}
std::string ClusterStore::NodeInfoKey(std::string_view node) const {
  return options_.prefix + std::string(kNodeInfo) + std::string(node);
}

std::string ClusterStore::CordonKey(std::string_view node) const {
  return options_.prefix + std::string(kCordoned) + std::string(node);
}
std::string ClusterStore::NodeLabelsKey(std::string_view node) const {
  return options_.prefix + std::string(kNodeLabels) + std::string(node);
}
std::string ClusterStore::VolumeKey(std::string_view volume) const {
  return options_.prefix + std::string(kVolumes) + std::string(volume);
}

// ---- this node

Status ClusterStore::RegisterNode(std::string_view node, const NodeInfo& info, Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckNodeName(node));
  SHALE_RETURN_IF_ERROR(info.Validate());
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (registration_ != nullptr || registering_) {
      return Status::FailedPrecondition("node " + std::string(node) +
                                        ": this cluster store already registered a node");
    }
    registering_ = true;
  }
  auto registration = std::make_shared<NodeRegistration>(
      client_, std::string(node), NodeKey(node), NodeInfoKey(node), info, options_.node_lease,
      options_.on_registration_change);
  Status s = registration->Start(timeout);
  std::lock_guard<std::mutex> lock(mu_);
  registering_ = false;
  if (s.ok()) registration_ = std::move(registration);
  return s;
}

Status ClusterStore::UpdateNodeInfo(const NodeInfo& info, Timeout timeout) {
  std::shared_ptr<NodeRegistration> registration;
  {
    std::lock_guard<std::mutex> lock(mu_);
    registration = registration_;
  }
  if (registration == nullptr) {
    return Status::FailedPrecondition("node info: this node is not registered");
  }
  return registration->Update(info, timeout);
}

Status ClusterStore::Deregister(Timeout timeout) {
  std::shared_ptr<NodeRegistration> registration;
  {
    std::lock_guard<std::mutex> lock(mu_);
    registration = std::move(registration_);
  }
  if (registration == nullptr) return Status::Ok();
  return registration->Revoke(timeout);
}

bool ClusterStore::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registration_ != nullptr && registration_->registered();
}

int64_t ClusterStore::lease() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registration_ != nullptr ? registration_->lease() : 0;
}

// ---- nodes

Result<std::vector<NodeRecord>> ClusterStore::ListNodes(Timeout timeout) {
  const std::string live_prefix = options_.prefix + std::string(kNodes);
  const std::string info_prefix = options_.prefix + std::string(kNodeInfo);
  SHALE_ASSIGN_OR_RETURN(RangeResult live, client_->RangeAll(live_prefix, timeout));
  RangeOptions at;
  at.prefix = true;
  at.revision = live.revision;  // both prefixes as of one revision
  SHALE_ASSIGN_OR_RETURN(RangeResult known, client_->Range(info_prefix, at, timeout));
  std::map<std::string, NodeRecord> nodes;
  auto add = [&](const KeyValue& kv, size_t prefix_length, bool up) {
    NodeRecord r;
    r.name = kv.key.substr(prefix_length);
    r.up = up;
    Result<NodeInfo> info = DecodeNodeInfo(kv.value, "node " + r.name + " (" + kv.key + ")");
    if (info.ok()) {
      r.info = std::move(info).value();
    } else {
      r.status = info.status();
    }
    nodes[r.name] = std::move(r);
  };
  for (const KeyValue& kv : known.kvs) add(kv, info_prefix.size(), false);
  for (const KeyValue& kv : live.kvs) add(kv, live_prefix.size(), true);  // fresher, and up
  const std::string cordon_prefix = options_.prefix + std::string(kCordoned);
  SHALE_ASSIGN_OR_RETURN(RangeResult cordoned, client_->Range(cordon_prefix, at, timeout));
  for (const KeyValue& kv : cordoned.kvs) {
    auto it = nodes.find(kv.key.substr(cordon_prefix.size()));
    if (it == nodes.end()) continue;  // (a forgotten node's key is ignored)
    it->second.cordoned = true;
    it->second.draining = kv.value == kDrainingValue;
  }
  const std::string labels_prefix = options_.prefix + std::string(kNodeLabels);
  SHALE_ASSIGN_OR_RETURN(RangeResult labelled, client_->Range(labels_prefix, at, timeout));
  for (const KeyValue& kv : labelled.kvs) {
    auto it = nodes.find(kv.key.substr(labels_prefix.size()));
    if (it == nodes.end()) continue;
    Result<Labels> labels = DecodeNodeLabels(kv.value, "labels of node " + it->first);
    if (labels.ok()) {
      it->second.labels = std::move(labels).value();
    } else if (it->second.status.ok()) {
      it->second.status = labels.status();
    }
  }
  std::vector<NodeRecord> out;
  out.reserve(nodes.size());
  for (auto& [name, record] : nodes) out.push_back(std::move(record));
  return out;
}

Status ClusterStore::SetCordoned(std::string_view node, bool cordoned, Timeout timeout) {
  return PutCordon(node, cordoned ? kCordonedValue : std::string_view(), timeout);
}

Status ClusterStore::SetDraining(std::string_view node, Timeout timeout) {
  return PutCordon(node, kDrainingValue, timeout);
}

Status ClusterStore::CheckNodeKnown(std::string_view node, Timeout timeout) {
  SHALE_ASSIGN_OR_RETURN(std::optional<KeyValue> known, client_->Get(NodeInfoKey(node), timeout));
  if (!known.has_value()) {
    return Status::NotFound("node " + std::string(node) + " is not known (see `shale node list`)");
  }
  return Status::Ok();
}

Status ClusterStore::PutCordon(std::string_view node, std::string_view value, Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckNodeName(node));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  SHALE_RETURN_IF_ERROR(CheckNodeKnown(node, internal::TimeLeft(deadline)));
  if (!value.empty()) {
    return client_->Put(CordonKey(node), std::string(value), 0, internal::TimeLeft(deadline))
        .status();
  }
  return client_->Delete(CordonKey(node), false, internal::TimeLeft(deadline)).status();
}

Result<Labels> ClusterStore::UpdateNodeLabels(std::string_view node, const Labels& set,
                                              const std::vector<std::string>& remove,
                                              Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckNodeName(node));
  for (const auto& [key, value] : set) SHALE_RETURN_IF_ERROR(ValidateLabel(key, value));
  for (const std::string& key : remove) SHALE_RETURN_IF_ERROR(ValidateLabel(key, ""));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  SHALE_RETURN_IF_ERROR(CheckNodeKnown(node, internal::TimeLeft(deadline)));
  const std::string key = NodeLabelsKey(node);
  for (int attempt = 0; attempt < 8; ++attempt) {
    SHALE_ASSIGN_OR_RETURN(std::optional<KeyValue> now,
                           client_->Get(key, internal::TimeLeft(deadline)));
    Labels labels;
    if (now.has_value()) {
      SHALE_ASSIGN_OR_RETURN(labels, DecodeNodeLabels(now->value, "labels of node " + key));
    }
    for (const std::string& k : remove) labels.erase(k);
    for (const auto& [k, v] : set) labels[k] = v;
    TxnRequest txn;
    txn.compares.push_back(Compare::ModRevision(key, now.has_value() ? now->mod_revision : 0));
    if (labels.empty()) {
      txn.then_ops.push_back(TxnOp::Delete(key));
    } else {
      SHALE_ASSIGN_OR_RETURN(std::string value, EncodeNodeLabels(labels));
      txn.then_ops.push_back(TxnOp::Put(key, std::move(value)));
    }
    SHALE_ASSIGN_OR_RETURN(TxnResult result, client_->Txn(txn, internal::TimeLeft(deadline)));
    if (result.succeeded) return labels;
  }
  return Status::Aborted("the labels of node " + std::string(node) +
                         " kept changing meanwhile; try again");
}

Status ClusterStore::ForgetNode(std::string_view node, Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckNodeName(node));
  TxnRequest txn;
  txn.compares.push_back(Compare::Version(NodeKey(node), 0));  // not up
  txn.then_ops.push_back(TxnOp::Delete(NodeInfoKey(node)));
  txn.then_ops.push_back(TxnOp::Delete(CordonKey(node)));
  txn.then_ops.push_back(TxnOp::Delete(NodeLabelsKey(node)));
  SHALE_ASSIGN_OR_RETURN(TxnResult result, client_->Txn(txn, timeout));
  if (!result.succeeded) {
    return Status::FailedPrecondition("node " + std::string(node) +
                                      " is up (its lease lives); stop it first");
  }
  if (result.results.empty() || result.results[0].deleted == 0) {
    return Status::NotFound("node " + std::string(node) + " is not known");
  }
  return Status::Ok();
}

Result<std::unique_ptr<Watcher>> ClusterStore::WatchNodes(
    std::function<void(const NodeUpdate&)> callback, Timeout timeout) {
  const std::string prefix = options_.prefix + std::string(kNodes);
  auto convert = [prefix, callback = std::move(callback)](const WatchUpdate& update) {
    NodeUpdate out;
    out.reset = update.reset;
    out.revision = update.revision;
    auto add = [&](const KeyValue& kv, bool up) {
      NodeRecord r;
      r.name = kv.key.substr(prefix.size());
      r.up = up;
      if (up) {
        Result<NodeInfo> info = DecodeNodeInfo(kv.value, "node " + r.name + " (" + kv.key + ")");
        if (info.ok()) {
          r.info = std::move(info).value();
        } else {
          r.status = info.status();
        }
      }
      out.changes.push_back(std::move(r));
    };
    for (const KeyValue& kv : update.kvs) add(kv, true);
    for (const WatchEvent& e : update.events) add(e.kv, e.type == WatchEvent::Type::kPut);
    callback(out);
  };
  return client_->Watch(prefix, 0, std::move(convert), timeout);
}

// ---- volumes

size_t ClusterStore::VolumeNameOffset() const { return options_.prefix.size() + kVolumes.size(); }

Result<VolumeRecord> ClusterStore::GetVolume(std::string_view volume, Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckVolumeName(volume));
  SHALE_ASSIGN_OR_RETURN(std::optional<KeyValue> kv, client_->Get(VolumeKey(volume), timeout));
  if (!kv.has_value()) {
    return Status::NotFound("volume " + std::string(volume) + " has no membership record");
  }
  VolumeRecord r = DecodeVolume(*kv, VolumeNameOffset());
  if (!r.status.ok()) return r.status;
  return r;
}

Result<int64_t> ClusterStore::CreateVolume(std::string_view volume, const Membership& membership,
                                           Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckVolumeName(volume));
  SHALE_ASSIGN_OR_RETURN(const std::string value, EncodeMembership(membership));
  const std::string key = VolumeKey(volume);
  TxnRequest txn;
  txn.compares.push_back(Compare::CreateRevision(key, 0));  // the key does not exist
  txn.then_ops.push_back(TxnOp::Put(key, value));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  Result<TxnResult> result = client_->Txn(txn, internal::TimeLeft(deadline));
  if (!result.ok()) {
    if (result.status().code() != StatusCode::kUnavailable) return result.status();
    // The outcome may be unknown: the create happened if the key now holds our value.
    Result<std::optional<KeyValue>> now = client_->Get(key, internal::TimeLeft(deadline));
    if (now.ok() && now->has_value() && (*now)->value == value) return (*now)->mod_revision;
    return result.status();
  }
  if (!result->succeeded) {
    return Status::AlreadyExists("volume " + std::string(volume) +
                                 " already has a membership record in etcd");
  }
  return result->revision;
}

Status ClusterStore::CompareAndSwapVolume(std::string_view volume, int64_t expected_mod_revision,
                                          const Membership& next, VolumeRecord* current,
                                          Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckVolumeName(volume));
  if (expected_mod_revision <= 0) {
    return Status::InvalidArgument("volume " + std::string(volume) +
                                   ": compare-and-swap needs the mod_revision of the record read");
  }
  SHALE_ASSIGN_OR_RETURN(const std::string value, EncodeMembership(next));
  const std::string key = VolumeKey(volume);
  TxnRequest txn;
  txn.compares.push_back(Compare::ModRevision(key, expected_mod_revision));
  txn.then_ops.push_back(TxnOp::Put(key, value));
  txn.else_ops.push_back(TxnOp::Get(key));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  Result<TxnResult> result = client_->Txn(txn, internal::TimeLeft(deadline));
  if (!result.ok()) {
    if (result.status().code() != StatusCode::kUnavailable) return result.status();
    // Outcome unknown: the swap happened if the key now holds our value at a newer revision.
    Result<std::optional<KeyValue>> now = client_->Get(key, internal::TimeLeft(deadline));
    if (now.ok() && now->has_value() && (*now)->value == value &&
        (*now)->mod_revision > expected_mod_revision) {
      if (current != nullptr) *current = DecodeVolume(**now, VolumeNameOffset());
      return Status::Ok();
    }
    return result.status();
  }
  if (result->succeeded) {
    if (current != nullptr) {
      *current = VolumeRecord{std::string(volume), next, result->revision, Status::Ok()};
    }
    return Status::Ok();
  }
  if (result->results.empty() || result->results[0].range.kvs.empty()) {
    return Status::NotFound("volume " + std::string(volume) +
                            " has no membership record (deleted meanwhile)");
  }
  VolumeRecord now = DecodeVolume(result->results[0].range.kvs[0], VolumeNameOffset());
  if (!now.status.ok()) return now.status;
  const int64_t revision = now.mod_revision;
  if (current != nullptr) *current = std::move(now);
  return Status::FailedPrecondition(
      "volume " + std::string(volume) + ": membership changed meanwhile (mod_revision " +
      std::to_string(revision) + ", expected " + std::to_string(expected_mod_revision) +
      "); retry from the current record");
}

Status ClusterStore::DeleteVolume(std::string_view volume, int64_t expected_mod_revision,
                                  Timeout timeout) {
  SHALE_RETURN_IF_ERROR(CheckVolumeName(volume));
  const std::string key = VolumeKey(volume);
  TxnRequest txn;
  if (expected_mod_revision > 0) {
    txn.compares.push_back(Compare::ModRevision(key, expected_mod_revision));
  } else {
    txn.compares.push_back(Compare::CreateRevision(key, 0, Compare::Op::kGreater));  // exists
  }
  txn.then_ops.push_back(TxnOp::Delete(key));
  txn.else_ops.push_back(TxnOp::Get(key));
  const internal::Deadline deadline =
      internal::DeadlineAfter(timeout, client_->options().call_timeout);
  Result<TxnResult> result = client_->Txn(txn, internal::TimeLeft(deadline));
  if (!result.ok()) {
    if (result.status().code() != StatusCode::kUnavailable) return result.status();
    Result<std::optional<KeyValue>> now = client_->Get(key, internal::TimeLeft(deadline));
    if (now.ok() && !now->has_value()) return Status::Ok();
    return result.status();
  }
  if (result->succeeded) return Status::Ok();
  const bool exists = !result->results.empty() && !result->results[0].range.kvs.empty();
  if (!exists)
    return Status::NotFound("volume " + std::string(volume) + " has no membership record");
  return Status::FailedPrecondition("volume " + std::string(volume) +
                                    ": membership changed meanwhile (mod_revision " +
                                    std::to_string(result->results[0].range.kvs[0].mod_revision) +
                                    ", expected " + std::to_string(expected_mod_revision) + ")");
}

Result<std::vector<VolumeRecord>> ClusterStore::ListVolumes(Timeout timeout) {
  SHALE_ASSIGN_OR_RETURN(RangeResult range,
                         client_->RangeAll(options_.prefix + std::string(kVolumes), timeout));
  std::vector<VolumeRecord> out;
  out.reserve(range.kvs.size());
  for (const KeyValue& kv : range.kvs) out.push_back(DecodeVolume(kv, VolumeNameOffset()));
  return out;
}

Result<std::unique_ptr<Watcher>> ClusterStore::WatchVolumes(
    std::function<void(const VolumeUpdate&)> callback, Timeout timeout) {
  // Captures no `this`: the watcher may outlive the store.
  auto convert = [offset = VolumeNameOffset(),
                  callback = std::move(callback)](const WatchUpdate& update) {
    VolumeUpdate out;
    out.reset = update.reset;
    out.revision = update.revision;
    for (const KeyValue& kv : update.kvs) {
      out.changes.push_back(VolumeChange{false, DecodeVolume(kv, offset)});
    }
    for (const WatchEvent& e : update.events) {
      if (e.type == WatchEvent::Type::kPut) {
        out.changes.push_back(VolumeChange{false, DecodeVolume(e.kv, offset)});
      } else {
        VolumeRecord r;
        r.name = e.kv.key.substr(offset);
        out.changes.push_back(VolumeChange{true, std::move(r)});
      }
    }
    callback(out);
  };
  return client_->Watch(options_.prefix + std::string(kVolumes), 0, std::move(convert), timeout);
}

}  // namespace shale::cluster
