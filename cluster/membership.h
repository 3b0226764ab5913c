// The membership of a replicated volume: the value of /shale/v1/volumes/<volume> in etcd
// (docs/replication.md, "Names and keys in etcd" and "The epoch and generation rules").
//
// Decoding is strict: a value in etcd that is not exactly this record (bad JSON, a missing,
// unknown or mistyped field, a broken invariant) is a Corruption error naming the field, never a
// crash or a half-read record. Unknown fields are refused rather than skipped, because a
// compare-and-swap by a node that skipped them would silently drop them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale::cluster {

enum class ReplicaState {
  kHealthy,     // in sync: a member of `in_sync`
  kRebuilding,  // receiving new writes and a rebuild; never read
  kFaulted,     // left `in_sync` after an error or a timeout
  kStale,       // behind the others (e.g. returned after a cascading failure); never read
};
std::string_view ReplicaStateName(ReplicaState state);  // "healthy", "rebuilding", ...
Result<ReplicaState> ParseReplicaState(std::string_view name);

struct ReplicaMember {
  std::string node;
  ReplicaState state = ReplicaState::kHealthy;
  uint64_t since_epoch = 0;  // the epoch in which it entered `state` (0: not recorded)
  // A replica placed to take the place of the one on node `replaces` (a dead node's, after
  // --replica-replace-after, or a drained node's): once this one is in sync, that one is
  // removed (docs/replication.md, "Replacing a replica"). Empty for every other replica.
  std::string replaces;

  bool operator==(const ReplicaMember&) const = default;
};

// One change of `in_sync` or `target`, as recorded in `history`.
struct MembershipChange {
  uint64_t epoch = 0;                // the epoch the change created
  std::vector<std::string> in_sync;  // `in_sync` after the change
  std::string reason;                // for people: "node-b timed out"

  bool operator==(const MembershipChange&) const = default;
};

struct Membership {
  static constexpr size_t kMaxReplicas = 16;
  static constexpr size_t kMaxHistory = 16;
  static constexpr size_t kMaxReasonLength = 512;
  static constexpr size_t kMaxEncodedBytes = 64 * 1024;
  static constexpr size_t kMaxQosFields = 32;
  static constexpr uint64_t kMaxQosValue = uint64_t{1} << 62;
  static constexpr size_t kMaxLabels = 64;
  static constexpr size_t kMaxLabelKey = 253;
  static constexpr size_t kMaxLabelValue = 1024;
  // The labels' keys and values together: what the record may spend on them and still encode
  // within kMaxEncodedBytes with the largest replicas, history and escaping.
  static constexpr size_t kMaxLabelBytes = 16 * 1024;

  std::string uuid;          // the volume's UUID (one per volume, on every replica)
  uint64_t size_bytes = 0;   // > 0
  uint32_t min_in_sync = 1;  // 1 <= min_in_sync <= replicas.size()
  uint64_t epoch = 1;        // >= 1; +1 with every change of in_sync or target
  std::string target;        // the node serving the volume (or that last did)
  // `shale volume detach` (NodeUnstage): no node serves the volume until one attaches it; any
  // node holding an in-sync replica may then, without waiting for `target`'s lease to expire.
  bool detached = false;
  // --replica-node-selector (node_selector.h, canonical form): where its replicas may go, also
  // those placed later in place of others. Empty: any node.
  std::string node_selector;
  // The volume's QoS settings (docs/qos.md), by field name ("iops", "weight", ...; only those
  // set), applied by whichever node serves it. Names: [a-z_], 1..32 bytes; at most kMaxQosFields.
  std::map<std::string, uint64_t> qos;
  // The volume's labels at its creation (the caller's, CSI's fingerprint and capacity), so that
  // a node holding none of its replicas knows them too (CSI's idempotent CreateVolume there).
  // At most kMaxLabels; keys 1..kMaxLabelKey bytes, values at most kMaxLabelValue, all of them
  // at most kMaxLabelBytes.
  std::map<std::string, std::string> labels;
  std::vector<ReplicaMember> replicas;    // one per node, 1..kMaxReplicas
  std::vector<std::string> in_sync;       // non-empty; exactly the replicas in state healthy
  std::vector<MembershipChange> history;  // oldest first, at most kMaxHistory, epochs increasing

  // Every invariant above; InvalidArgument naming the first one broken.
  Status Validate() const;
  // The replica on `node`, or nullptr.
  const ReplicaMember* Find(std::string_view node) const;
  bool InSync(std::string_view node) const;
  // Appends {epoch, in_sync, reason} to history, dropping the oldest entries beyond kMaxHistory;
  // call after setting the new epoch and in_sync. The reason is cut to kMaxReasonLength bytes.
  void RecordChange(std::string_view reason);

  bool operator==(const Membership&) const = default;
};

// The JSON of docs/replication.md; validates first (InvalidArgument when invalid).
Result<std::string> EncodeMembership(const Membership& membership);
// Corruption (naming the field) for anything but a valid record; `what` names the value in
// messages ("volume vol1").
Result<Membership> DecodeMembership(std::string_view json, std::string_view what = "membership");

// The epoch rules of a compare-and-swap from `from` to `to` (docs/replication.md, rule 1): the
// same uuid; the epoch never goes back; a change of in_sync or target increments it by exactly
// one; other changes keep it or increment it by one. FailedPrecondition naming the broken rule.
Status CheckMembershipTransition(const Membership& from, const Membership& to);

}  // namespace shale::cluster
