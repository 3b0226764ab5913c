// ClusterStore against a real etcd: volume records and their races, node registration under a
// lease, re-registration after an etcd restart, watches, malformed values.
#include "cluster/cluster_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/cluster/etcd_test_util.h"

namespace shale::cluster {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

Membership Volume(uint64_t epoch = 1) {
  Membership m;
  m.uuid = "0f6f1c0e-8c1a-4e8b-9d3e-2a7b5c9d1e4f";
  m.size_bytes = 1ull << 30;
  m.epoch = epoch;
  m.target = "node-a";
  m.replicas = {{"node-a", ReplicaState::kHealthy, 0}, {"node-b", ReplicaState::kHealthy, 0}};
  m.in_sync = {"node-a", "node-b"};
  return m;
}

// `m` after node-b failed: out of in_sync, epoch + 1.
Membership Fault(Membership m, const std::string& node) {
  for (ReplicaMember& r : m.replicas) {
    if (r.node == node) r.state = ReplicaState::kFaulted;
  }
  m.in_sync.erase(std::remove(m.in_sync.begin(), m.in_sync.end(), node), m.in_sync.end());
  ++m.epoch;
  for (ReplicaMember& r : m.replicas) {
    if (r.node == node) r.since_epoch = m.epoch;
  }
  m.RecordChange(node + " failed");
  return m;
}

NodeInfo Info(const std::string& address, uint64_t free_bytes = 100) {
  return NodeInfo{address, {{"default", free_bytes, 1000}}};
}

std::unique_ptr<ClusterStore> MakeStore(std::shared_ptr<EtcdClient> client,
                                        const std::string& prefix, seconds lease = seconds(1),
                                        ClusterStoreOptions options = {}) {
  options.prefix = prefix;
  options.node_lease = lease;
  Result<std::unique_ptr<ClusterStore>> store = ClusterStore::Create(std::move(client), options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

const NodeRecord* FindNode(const std::vector<NodeRecord>& nodes, const std::string& name) {
  for (const NodeRecord& n : nodes) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

// Whether `node` is listed as up (false on any error).
bool NodeUp(ClusterStore& store, const std::string& node) {
  Result<std::vector<NodeRecord>> nodes = store.ListNodes();
  if (!nodes.ok()) return false;
  const NodeRecord* n = FindNode(*nodes, node);
  return n != nullptr && n->up;
}

using ClusterStoreTest = SharedEtcdTest;

TEST_F(ClusterStoreTest, CreateGetSwapDeleteVolume) {
  auto store = MakeStore(client_, prefix_);
  Result<int64_t> rev = store->CreateVolume("vol1", Volume());
  ASSERT_TRUE(rev.ok()) << rev.status();
  EXPECT_EQ(store->CreateVolume("vol1", Volume()).status().code(), StatusCode::kAlreadyExists);

  Result<VolumeRecord> got = store->GetVolume("vol1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->membership, Volume());
  EXPECT_EQ(got->mod_revision, *rev);
  EXPECT_EQ(got->name, "vol1");

  const Membership next = Fault(Volume(), "node-b");
  ASSERT_TRUE(CheckMembershipTransition(got->membership, next).ok());
  VolumeRecord current;
  ASSERT_TRUE(store->CompareAndSwapVolume("vol1", *rev, next, &current).ok());
  EXPECT_GT(current.mod_revision, *rev);
  EXPECT_EQ(current.membership, next);

  // A writer that still holds the old revision loses, and learns the current record.
  VolumeRecord seen;
  const Status lost = store->CompareAndSwapVolume("vol1", *rev, Volume(2), &seen);
  EXPECT_EQ(lost.code(), StatusCode::kFailedPrecondition) << lost;
  EXPECT_EQ(seen.mod_revision, current.mod_revision);
  EXPECT_EQ(seen.membership, next);

  // An invalid record is refused before it reaches etcd.
  Membership invalid = next;
  invalid.in_sync.clear();
  EXPECT_EQ(store->CompareAndSwapVolume("vol1", current.mod_revision, invalid, &seen).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->CreateVolume("bad/name", Volume()).status().code(),
            StatusCode::kInvalidArgument);

  Result<std::vector<VolumeRecord>> list = store->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "vol1");

  EXPECT_EQ(store->DeleteVolume("vol1", *rev).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store->DeleteVolume("vol1", current.mod_revision).ok());
  EXPECT_TRUE(store->GetVolume("vol1").status().IsNotFound());
  EXPECT_TRUE(store->DeleteVolume("vol1").IsNotFound());
  EXPECT_TRUE(store->CompareAndSwapVolume("vol1", current.mod_revision, next, &seen).IsNotFound());
  ASSERT_TRUE(store->CreateVolume("vol1", Volume()).ok());
  ASSERT_TRUE(store->DeleteVolume("vol1").ok());
}

TEST_F(ClusterStoreTest, CompareAndSwapRaceOneTargetWins) {
  auto a = MakeStore(client_, prefix_);
  auto b = MakeStore(Connect(etcd_->endpoint()), prefix_);
  Result<int64_t> created = a->CreateVolume("raced", Volume());
  ASSERT_TRUE(created.ok()) << created.status();
  for (int round = 0; round < 10; ++round) {
    Result<VolumeRecord> now = a->GetVolume("raced");
    ASSERT_TRUE(now.ok()) << now.status();
    // Both targets fault a different replica from the same record: only one may win.
    const Membership by_a = Fault(now->membership, "node-b");
    const Membership by_b = Fault(now->membership, "node-a");
    std::latch go(2);
    Status sa, sb;
    VolumeRecord ra, rb;
    std::thread ta([&] {
      go.arrive_and_wait();
      sa = a->CompareAndSwapVolume("raced", now->mod_revision, by_a, &ra);
    });
    std::thread tb([&] {
      go.arrive_and_wait();
      sb = b->CompareAndSwapVolume("raced", now->mod_revision, by_b, &rb);
    });
    ta.join();
    tb.join();
    ASSERT_NE(sa.ok(), sb.ok()) << sa << " / " << sb;
    const Status& lost = sa.ok() ? sb : sa;
    const VolumeRecord& winner = sa.ok() ? ra : rb;
    const VolumeRecord& loser_saw = sa.ok() ? rb : ra;
    EXPECT_EQ(lost.code(), StatusCode::kFailedPrecondition) << lost;
    EXPECT_EQ(loser_saw.mod_revision, winner.mod_revision);
    EXPECT_EQ(loser_saw.membership, winner.membership);
    // Put both replicas back for the next round (epoch + 1).
    Membership healed = winner.membership;
    for (ReplicaMember& r : healed.replicas) r = {r.node, ReplicaState::kHealthy, 0};
    healed.in_sync = {"node-a", "node-b"};
    ++healed.epoch;
    healed.RecordChange("rebuilt");
    ASSERT_TRUE(a->CompareAndSwapVolume("raced", winner.mod_revision, healed, &ra).ok());
  }
}

TEST_F(ClusterStoreTest, MalformedValuesAreErrorsNotCrashes) {
  auto store = MakeStore(client_, prefix_);
  ASSERT_TRUE(store->CreateVolume("good", Volume()).ok());
  ASSERT_TRUE(client_->Put(store->VolumeKey("bad"), "{\"epoch\": \"seven\"").ok());
  std::string negative = EncodeMembership(Volume()).value();
  negative.replace(negative.find("\"epoch\":1"), 9, "\"epoch\":-1");
  ASSERT_TRUE(client_->Put(store->VolumeKey("worse"), negative).ok());
  Result<VolumeRecord> bad = store->GetVolume("bad");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find(store->VolumeKey("bad")), std::string_view::npos)
      << bad.status();
  Result<VolumeRecord> worse = store->GetVolume("worse");
  ASSERT_FALSE(worse.ok());
  EXPECT_NE(worse.status().message().find("'epoch' must be a non-negative integer"),
            std::string_view::npos)
      << worse.status();

  Result<std::vector<VolumeRecord>> list = store->ListVolumes();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 3u);
  EXPECT_EQ((*list)[0].name, "bad");
  EXPECT_EQ((*list)[0].status.code(), StatusCode::kCorruption);
  EXPECT_TRUE((*list)[1].status.ok()) << (*list)[1].status;
  EXPECT_EQ((*list)[1].membership, Volume());

  // A swap against a malformed current value reports it instead of overwriting blindly.
  Result<std::optional<KeyValue>> raw = client_->Get(store->VolumeKey("bad"));
  ASSERT_TRUE(raw.ok() && raw->has_value());
  VolumeRecord current;
  EXPECT_EQ(
      store->CompareAndSwapVolume("bad", (*raw)->mod_revision - 1, Volume(2), &current).code(),
      StatusCode::kCorruption);

  ASSERT_TRUE(client_->Put(store->NodeInfoKey("n-bad"), "[]").ok());
  Result<std::vector<NodeRecord>> nodes = store->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  const NodeRecord* n = FindNode(*nodes, "n-bad");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->status.code(), StatusCode::kCorruption);
  EXPECT_FALSE(n->up);
}

TEST_F(ClusterStoreTest, RegisterListUpdateDeregisterForget) {
  auto one = MakeStore(client_, prefix_, seconds(5));
  auto two = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(5));
  ASSERT_TRUE(one->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  EXPECT_EQ(one->RegisterNode("n1", Info("10.0.0.1:7480")).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(two->RegisterNode("bad name", Info("h:1")).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(two->RegisterNode("n2", Info("no-port")).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  EXPECT_TRUE(one->registered());
  EXPECT_NE(one->lease(), 0);

  Result<std::vector<NodeRecord>> nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_EQ((*nodes)[0].name, "n1");
  EXPECT_TRUE((*nodes)[0].up);
  EXPECT_EQ((*nodes)[0].info, Info("10.0.0.1:7480"));
  Result<std::optional<KeyValue>> live = client_->Get(one->NodeKey("n1"));
  ASSERT_TRUE(live.ok() && live->has_value());
  EXPECT_EQ((*live)->lease, one->lease());

  ASSERT_TRUE(one->UpdateNodeInfo(Info("10.0.0.1:7480", 42)).ok());
  nodes = two->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_EQ(FindNode(*nodes, "n1")->info.pools.at(0).free_bytes, 42u);

  EXPECT_EQ(two->ForgetNode("n2").code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(two->Deregister().ok());
  EXPECT_FALSE(two->registered());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  const NodeRecord* n2 = FindNode(*nodes, "n2");
  ASSERT_NE(n2, nullptr) << "a down node stays listed";
  EXPECT_FALSE(n2->up);
  EXPECT_EQ(n2->info, Info("10.0.0.2:7480"));
  EXPECT_EQ(two->UpdateNodeInfo(Info("h:1")).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(one->ForgetNode("n2").ok());
  EXPECT_TRUE(one->ForgetNode("n2").IsNotFound());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_EQ(FindNode(*nodes, "n2"), nullptr);
  // Registered again after a deregistration.
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  EXPECT_TRUE(NodeUp(*one, "n2"));
}

TEST_F(ClusterStoreTest, CordonOutlivesTheLeaseAndGoesWithForget) {
  auto one = MakeStore(client_, prefix_, seconds(5));
  auto two = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(5));
  ASSERT_TRUE(one->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  EXPECT_TRUE(one->SetCordoned("nope", true).IsNotFound());
  EXPECT_EQ(one->SetCordoned("bad name", true).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(one->SetCordoned("n2", true).ok());
  Status again = one->SetCordoned("n2", true);
  ASSERT_TRUE(again.ok()) << "idempotent: " << again;
  Result<std::vector<NodeRecord>> nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_TRUE(FindNode(*nodes, "n2")->cordoned);
  EXPECT_FALSE(FindNode(*nodes, "n1")->cordoned);
  // The node going down and up again keeps it cordoned.
  ASSERT_TRUE(two->Deregister().ok());
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_TRUE(FindNode(*nodes, "n2")->cordoned);
  Status uncordoned = one->SetCordoned("n2", false);
  ASSERT_TRUE(uncordoned.ok()) << uncordoned;
  uncordoned = one->SetCordoned("n2", false);
  ASSERT_TRUE(uncordoned.ok()) << "idempotent: " << uncordoned;
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_FALSE(FindNode(*nodes, "n2")->cordoned);
  // A drain cordons the node too; a cordon alone is no drain; uncordon ends both.
  EXPECT_TRUE(one->SetDraining("nope").IsNotFound());
  ASSERT_TRUE(one->SetDraining("n2").ok());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_TRUE(FindNode(*nodes, "n2")->cordoned);
  EXPECT_TRUE(FindNode(*nodes, "n2")->draining);
  ASSERT_TRUE(one->SetCordoned("n2", true).ok());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_TRUE(FindNode(*nodes, "n2")->cordoned);
  EXPECT_FALSE(FindNode(*nodes, "n2")->draining);
  ASSERT_TRUE(one->SetDraining("n2").ok());
  ASSERT_TRUE(one->SetCordoned("n2", false).ok());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_FALSE(FindNode(*nodes, "n2")->cordoned);
  EXPECT_FALSE(FindNode(*nodes, "n2")->draining);
  // Forgetting a node forgets its cordon.
  ASSERT_TRUE(one->SetCordoned("n2", true).ok());
  ASSERT_TRUE(two->Deregister().ok());
  ASSERT_TRUE(one->ForgetNode("n2").ok());
  Result<std::optional<KeyValue>> left = client_->Get(one->CordonKey("n2"));
  ASSERT_TRUE(left.ok());
  EXPECT_FALSE(left->has_value());
}

TEST_F(ClusterStoreTest, NodeLabelsAreEditedInPlaceOutliveTheLeaseAndGoWithForget) {
  auto one = MakeStore(client_, prefix_, seconds(5));
  auto two = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(5));
  ASSERT_TRUE(one->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  EXPECT_TRUE(one->UpdateNodeLabels("nope", {{"disk", "ssd"}}, {}).status().IsNotFound());
  EXPECT_EQ(one->UpdateNodeLabels("n2", {{"-bad", "x"}}, {}).status().code(),
            StatusCode::kInvalidArgument);
  Result<Labels> labels = one->UpdateNodeLabels("n2", {{"disk", "ssd"}, {"zone", "a"}}, {});
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(*labels, (Labels{{"disk", "ssd"}, {"zone", "a"}}));
  // Set one, remove one (and one never set), keep the rest.
  labels = two->UpdateNodeLabels("n2", {{"zone", "b"}}, {"disk", "never-set"});
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(*labels, (Labels{{"zone", "b"}}));
  // Down and up again: the labels stay; other nodes have none.
  ASSERT_TRUE(two->Deregister().ok());
  ASSERT_TRUE(two->RegisterNode("n2", Info("10.0.0.2:7480")).ok());
  Result<std::vector<NodeRecord>> nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_EQ(FindNode(*nodes, "n2")->labels, (Labels{{"zone", "b"}}));
  EXPECT_TRUE(FindNode(*nodes, "n1")->labels.empty());
  // A malformed value in etcd marks that node's record, nothing else.
  ASSERT_TRUE(client_->Put(one->NodeLabelsKey("n1"), "{\"disk\": 7}").ok());
  nodes = one->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_EQ(FindNode(*nodes, "n1")->status.code(), StatusCode::kCorruption);
  EXPECT_TRUE(FindNode(*nodes, "n2")->status.ok());
  // Removing the last label removes the key; forgetting a node forgets its labels.
  labels = one->UpdateNodeLabels("n2", {}, {"zone"});
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_TRUE(labels->empty());
  Result<std::optional<KeyValue>> left = client_->Get(one->NodeLabelsKey("n2"));
  ASSERT_TRUE(left.ok());
  EXPECT_FALSE(left->has_value());
  ASSERT_TRUE(one->UpdateNodeLabels("n2", {{"disk", "hdd"}}, {}).ok());
  ASSERT_TRUE(two->Deregister().ok());
  ASSERT_TRUE(one->ForgetNode("n2").ok());
  left = client_->Get(one->NodeLabelsKey("n2"));
  ASSERT_TRUE(left.ok());
  EXPECT_FALSE(left->has_value());
}

TEST_F(ClusterStoreTest, NodeKeyLivesWhileKeptAliveAndExpiresWhenTheNodeStops) {
  auto watcher_store = MakeStore(client_, prefix_);
  auto node = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(1));
  ASSERT_TRUE(node->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  // Three TTLs: the keep-alive holds the key.
  for (int i = 0; i < 15; ++i) {
    ASSERT_TRUE(NodeUp(*watcher_store, "n1")) << "after " << i * 200 << " ms";
    std::this_thread::sleep_for(milliseconds(200));
  }
  EXPECT_TRUE(node->registered());
  node.reset();  // the daemon dies: no revoke, the key expires with the lease
  EXPECT_TRUE(WaitFor([&] { return !NodeUp(*watcher_store, "n1"); }, seconds(6)));
  Result<std::vector<NodeRecord>> nodes = watcher_store->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_NE(FindNode(*nodes, "n1"), nullptr);
  EXPECT_FALSE(FindNode(*nodes, "n1")->up);
}

TEST_F(ClusterStoreTest, WatchVolumesAndNodes) {
  auto store = MakeStore(client_, prefix_, seconds(5));
  ASSERT_TRUE(store->CreateVolume("v0", Volume()).ok());
  std::mutex mu;
  std::vector<VolumeUpdate> volumes;
  std::vector<NodeUpdate> nodes;
  Result<std::unique_ptr<Watcher>> vw = store->WatchVolumes([&](const VolumeUpdate& u) {
    std::lock_guard<std::mutex> lock(mu);
    volumes.push_back(u);
  });
  ASSERT_TRUE(vw.ok()) << vw.status();
  Result<std::unique_ptr<Watcher>> nw = store->WatchNodes([&](const NodeUpdate& u) {
    std::lock_guard<std::mutex> lock(mu);
    nodes.push_back(u);
  });
  ASSERT_TRUE(nw.ok()) << nw.status();

  Result<int64_t> rev = store->CreateVolume("v1", Volume());
  ASSERT_TRUE(rev.ok()) << rev.status();
  VolumeRecord current;
  ASSERT_TRUE(store->CompareAndSwapVolume("v1", *rev, Fault(Volume(), "node-b"), &current).ok());
  ASSERT_TRUE(store->DeleteVolume("v0").ok());
  ASSERT_TRUE(store->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  ASSERT_TRUE(store->Deregister().ok());

  auto volume_changes = [&] {
    std::lock_guard<std::mutex> lock(mu);
    size_t n = 0;
    for (const VolumeUpdate& u : volumes) n += u.reset ? 0 : u.changes.size();
    return n;
  };
  auto node_changes = [&] {
    std::lock_guard<std::mutex> lock(mu);
    size_t n = 0;
    for (const NodeUpdate& u : nodes) n += u.reset ? 0 : u.changes.size();
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return volume_changes() == 3 && node_changes() == 2; }));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_TRUE(volumes[0].reset);
  ASSERT_EQ(volumes[0].changes.size(), 1u);
  EXPECT_EQ(volumes[0].changes[0].record.name, "v0");
  std::vector<VolumeChange> changes;
  for (size_t i = 1; i < volumes.size(); ++i) {
    changes.insert(changes.end(), volumes[i].changes.begin(), volumes[i].changes.end());
  }
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].record.name, "v1");
  EXPECT_EQ(changes[0].record.membership.epoch, 1u);
  EXPECT_EQ(changes[1].record.membership.epoch, 2u);
  EXPECT_EQ(changes[1].record.mod_revision, current.mod_revision);
  EXPECT_TRUE(changes[2].deleted);
  EXPECT_EQ(changes[2].record.name, "v0");

  ASSERT_TRUE(nodes[0].reset);
  EXPECT_TRUE(nodes[0].changes.empty());
  std::vector<NodeRecord> node_events;
  for (size_t i = 1; i < nodes.size(); ++i) {
    node_events.insert(node_events.end(), nodes[i].changes.begin(), nodes[i].changes.end());
  }
  ASSERT_EQ(node_events.size(), 2u);
  EXPECT_TRUE(node_events[0].up);
  EXPECT_EQ(node_events[0].info, Info("10.0.0.1:7480"));
  EXPECT_FALSE(node_events[1].up);
  EXPECT_EQ(node_events[1].name, "n1");
}

// ---- with an etcd of its own

using ClusterStoreOutageTest = OwnEtcdTest;

TEST_F(ClusterStoreOutageTest, NodeRegistersAgainAfterEtcdRestarts) {
  std::mutex mu;
  std::vector<bool> changes;
  ClusterStoreOptions options;
  options.on_registration_change = [&](bool registered, const Status&) {
    std::lock_guard<std::mutex> lock(mu);
    changes.push_back(registered);
  };
  auto store = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(1), options);
  ASSERT_TRUE(store->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  const int64_t first_lease = store->lease();
  ASSERT_TRUE(etcd_->Kill().ok());
  // The lease cannot be renewed: lost within its TTL (plus a renewal period).
  ASSERT_TRUE(WaitFor([&] { return !store->registered(); }, seconds(4)));
  EXPECT_EQ(store->UpdateNodeInfo(Info("10.0.0.1:7480", 7)).code(), StatusCode::kUnavailable);
  ASSERT_TRUE(etcd_->Restart().ok());
  ASSERT_TRUE(WaitFor([&] { return store->registered(); }, seconds(15)));
  EXPECT_NE(store->lease(), first_lease);
  // Up under the new lease, with the info given while it was lost, and it stays up.
  std::shared_ptr<EtcdClient> observer_client = Connect(etcd_->endpoint());
  auto observer = MakeStore(observer_client, prefix_);
  for (int i = 0; i < 10; ++i) {
    Result<std::optional<KeyValue>> live = observer_client->Get(store->NodeKey("n1"));
    ASSERT_TRUE(live.ok() && live->has_value()) << "after " << i * 300 << " ms";
    EXPECT_EQ((*live)->lease, store->lease());
    std::this_thread::sleep_for(milliseconds(300));
  }
  Result<std::vector<NodeRecord>> nodes = observer->ListNodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_NE(FindNode(*nodes, "n1"), nullptr);
  EXPECT_EQ(FindNode(*nodes, "n1")->info.pools.at(0).free_bytes, 7u);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(changes, (std::vector<bool>{false, true}));
}

TEST_F(ClusterStoreOutageTest, ShortOutageKeepsTheLease) {
  auto store = MakeStore(Connect(etcd_->endpoint()), prefix_, seconds(5));
  ASSERT_TRUE(store->RegisterNode("n1", Info("10.0.0.1:7480")).ok());
  const int64_t lease = store->lease();
  ASSERT_TRUE(etcd_->Kill().ok());
  ASSERT_TRUE(etcd_->Restart().ok());
  // A few renewals after the restart: still the same lease, never reported lost.
  std::this_thread::sleep_for(seconds(3));
  EXPECT_TRUE(store->registered());
  EXPECT_EQ(store->lease(), lease);
  EXPECT_TRUE(NodeUp(*store, "n1"));
}

}  // namespace
}  // namespace shale::cluster
