// The membership edits of replacing a replica (daemon/replica_membership.h; docs/replication.md,
// "Replacing a replica"): each is a pure function of the record, checked here against the
// record's invariants (Membership::Validate) and the epoch rules (CheckMembershipTransition).
// Also the membership form of a replicated volume's QoS (replicated_qos.cc).
#include "daemon/replica_membership.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "daemon/replicated_volumes.h"

namespace shale::daemon {
namespace {

using cluster::Membership;
using cluster::ReplicaState;

// node-a (target) and node-b in sync, node-c faulted since epoch 4.
Membership Record() {
  Membership m;
  m.uuid = "0f6f1c0e-8c1a-4e8b-9d3e-2a7b5c9d1e4f";
  m.size_bytes = 1ull << 30;
  m.min_in_sync = 1;
  m.epoch = 4;
  m.target = "node-a";
  m.replicas = {{"node-a", ReplicaState::kHealthy, 0},
                {"node-b", ReplicaState::kHealthy, 0},
                {"node-c", ReplicaState::kFaulted, 4}};
  m.in_sync = {"node-a", "node-b"};
  return m;
}

// Applies `edit` to `m`; the result must be valid and a legal transition when it changed.
Result<bool> Apply(const MembershipEdit& edit, Membership* m) {
  const Membership before = *m;
  Result<bool> changed = edit(m);
  if (changed.ok() && *changed) {
    EXPECT_TRUE(m->Validate().ok()) << m->Validate();
    EXPECT_TRUE(cluster::CheckMembershipTransition(before, *m).ok())
        << cluster::CheckMembershipTransition(before, *m);
  }
  if (!changed.ok() || !*changed) {
    EXPECT_EQ(*m, before) << "nothing changed on a refusal";
  }
  return changed;
}

TEST(ReplicaMembershipEdits, AReplacementIsAddedRebuildingAndNamesTheReplicaItReplaces) {
  Membership m = Record();
  Result<bool> added = Apply(ReplicaAdded("node-d", "node-c"), &m);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_TRUE(*added);
  ASSERT_EQ(m.replicas.size(), 4u);
  EXPECT_EQ(m.replicas[3].node, "node-d");
  EXPECT_EQ(m.replicas[3].state, ReplicaState::kRebuilding);
  EXPECT_EQ(m.replicas[3].replaces, "node-c");
  EXPECT_EQ(m.epoch, 4u) << "in_sync did not change";
  // Refused: a node holding one already, a replaced node that holds none, a second replacement.
  EXPECT_EQ(Apply(ReplicaAdded("node-b", "node-c"), &m).status().code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(Apply(ReplicaAdded("node-e", "node-z"), &m).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(Apply(ReplicaAdded("node-e", "node-c"), &m).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(ReplicaMembershipEdits, RemovingAnOutReplicaKeepsTheEpochAndAnInSyncOneBumpsIt) {
  Membership m = Record();
  ASSERT_TRUE(Apply(ReplicaAdded("node-d", "node-c"), &m).ok());
  // node-d rebuilt and joined; node-c (faulted) goes: no change of in_sync, no new epoch.
  ASSERT_TRUE(Apply(ReplicaJoins("node-d"), &m).ok());
  const uint64_t joined = m.epoch;
  Result<bool> removed = Apply(ReplicaRemoved("node-c", "replaced by node-d"), &m);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_TRUE(*removed);
  EXPECT_EQ(m.epoch, joined);
  EXPECT_EQ(m.Find("node-c"), nullptr);
  EXPECT_TRUE(m.Find("node-d")->replaces.empty()) << "the replacement no longer names it";
  EXPECT_FALSE(*Apply(ReplicaRemoved("node-c", "again"), &m)) << "idempotent";
  // A drained node's healthy replica leaves in_sync too: epoch + 1 and a history entry.
  removed = Apply(ReplicaRemoved("node-b", "replaced by node-e"), &m);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(m.epoch, joined + 1);
  EXPECT_EQ(m.in_sync, (std::vector<std::string>{"node-a", "node-d"}));
  ASSERT_FALSE(m.history.empty());
  EXPECT_EQ(m.history.back().reason, "node-b removed: replaced by node-e");
  // Never below --min-in-sync replicas.
  m.min_in_sync = 2;
  EXPECT_EQ(Apply(ReplicaRemoved("node-d", "x"), &m).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST(ReplicaMembershipEdits, AReplicaRemovedMeanwhileHasNothingToLeave) {
  Membership m = Record();
  ASSERT_TRUE(Apply(ReplicaRemoved("node-b", "drained"), &m).ok());
  // The layer's leave of node-b, recorded after its removal: nothing to change, no error (the
  // writes waiting on it are acknowledged on the recorded in_sync set).
  Result<bool> left = Apply(ReplicaLeaves("node-b", "connection lost"), &m);
  ASSERT_TRUE(left.ok()) << left.status();
  EXPECT_FALSE(*left);
}

TEST(ReplicatedQos, SettingsRoundTripThroughTheMembershipForm) {
  qos::QosSettings s;
  s.iops = 1000;
  s.burst_iops = 5000;
  s.burst_seconds = 10;
  s.weight = 300;
  s.read_bps = 1 << 20;
  const std::map<std::string, uint64_t> fields = QosToMembership(s);
  EXPECT_EQ(fields, (std::map<std::string, uint64_t>{{"burst_iops", 5000},
                                                     {"burst_seconds", 10},
                                                     {"iops", 1000},
                                                     {"read_bps", 1 << 20},
                                                     {"weight", 300}}));
  Result<qos::QosSettings> back = QosFromMembership(fields);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, s);
  EXPECT_TRUE(QosToMembership(qos::QosSettings{}).empty()) << "no limits: no fields";
  // Unknown fields and invalid settings (a burst below its limit) are refused.
  EXPECT_EQ(QosFromMembership({{"colour", 1}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QosFromMembership({{"iops", 100}, {"burst_iops", 50}}).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shale::daemon
