#include "cluster/placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/common/units.h"

namespace shale::cluster {
namespace {

NodeRecord Node(std::string name, std::vector<PoolCapacity> pools, bool up = true,
                std::string address = "127.0.0.1:7000") {
  NodeRecord n;
  n.name = std::move(name);
  n.up = up;
  n.info.replica_address = std::move(address);
  n.info.pools = std::move(pools);
  return n;
}

std::vector<std::string> Names(const std::vector<ReplicaPlacement>& placement) {
  std::vector<std::string> out;
  for (const ReplicaPlacement& p : placement) out.push_back(p.node);
  return out;
}

// a: local, little space; b: most space; c: some; d: down; e: no listener; f: too small.
std::vector<NodeRecord> Cluster() {
  return {Node("b", {{"p1", 90 * kGiB, 100 * kGiB}}),
          Node("a", {{"small", 20 * kGiB, 50 * kGiB}, {"big", 30 * kGiB, 50 * kGiB}}, true, ""),
          Node("c", {{"p1", 50 * kGiB, 100 * kGiB}}),
          Node("d", {{"p1", 500 * kGiB, 500 * kGiB}}, /*up=*/false),
          Node("e", {{"p1", 400 * kGiB, 500 * kGiB}}, true, ""),
          Node("f", {{"p1", 5 * kGiB, 500 * kGiB}})};
}

TEST(Placement, LocalFirstThenByFreeSpaceOnTheBestPool) {
  PlacementRequest r{.local_node = "a", .size_bytes = 10 * kGiB, .replicas = 3};
  Result<std::vector<ReplicaPlacement>> p = PlaceReplicas(Cluster(), r);
  ASSERT_TRUE(p.ok()) << p.status();
  // The local node needs no listener; b (90 GiB) before c (50 GiB); d down, e no listener.
  EXPECT_EQ(*p, (std::vector<ReplicaPlacement>{{"a", "big"}, {"b", "p1"}, {"c", "p1"}}));

  r.replicas = 1;
  EXPECT_EQ(Names(PlaceReplicas(Cluster(), r).value()), std::vector<std::string>{"a"});
  // A local node that cannot take one is skipped, not forced.
  r.local_node = "f";
  r.replicas = 2;
  EXPECT_EQ(Names(PlaceReplicas(Cluster(), r).value()), (std::vector<std::string>{"b", "c"}));
  // Ties by name.
  std::vector<NodeRecord> tie = {Node("y", {{"p", kGiB, kGiB}}), Node("x", {{"p", kGiB, kGiB}})};
  r = {.local_node = "z", .size_bytes = kMiB, .replicas = 2};
  EXPECT_EQ(Names(PlaceReplicas(tie, r).value()), (std::vector<std::string>{"x", "y"}));
}

TEST(Placement, WhyNotPlacedNamesWhatANodeLacks) {
  PlacementRequest r{.local_node = "a", .size_bytes = 10 * kGiB, .replicas = 2};
  const std::vector<NodeRecord> nodes = Cluster();
  EXPECT_EQ(WhyNotPlaced(nodes, r, "a"), "") << "the local node needs no listener";
  EXPECT_EQ(WhyNotPlaced(nodes, r, "b"), "");
  EXPECT_EQ(WhyNotPlaced(nodes, r, "d"), "it is down");
  EXPECT_EQ(WhyNotPlaced(nodes, r, "e"), "it runs no replica listener");
  EXPECT_NE(WhyNotPlaced(nodes, r, "f").find("its largest free space is"), std::string::npos);
  EXPECT_EQ(WhyNotPlaced(nodes, r, "zz"), "it is not in the cluster");
  r.only_nodes = {"b", "c"};
  EXPECT_EQ(WhyNotPlaced(nodes, r, "a"), "it is not among --replica-nodes");
  EXPECT_EQ(WhyNotPlaced(nodes, r, "c"), "");
}

TEST(Placement, ANodeSelectorKeepsReplicasOnNodesWhoseLabelsMeetIt) {
  std::vector<NodeRecord> nodes = Cluster();
  for (NodeRecord& n : nodes) {
    if (n.name == "a" || n.name == "c" || n.name == "f") n.labels["disk"] = "ssd";
    if (n.name == "b") n.labels["disk"] = "hdd";
  }
  PlacementRequest r{.local_node = "a", .size_bytes = 4 * kGiB, .replicas = 3};
  r.selector = NodeSelector::Parse("disk=ssd").value();
  // b has the most space but the wrong disk; f qualifies by its label and has room for 4 GiB.
  EXPECT_EQ(Names(PlaceReplicas(nodes, r).value()), (std::vector<std::string>{"a", "c", "f"}));
  r.selector = NodeSelector::Parse("disk!=hdd").value();  // a node without the label qualifies
  r.replicas = 3;
  EXPECT_EQ(Names(PlaceReplicas(nodes, r).value()), (std::vector<std::string>{"a", "c", "f"}));
  r.selector = NodeSelector::Parse("disk=ssd, !spot").value();
  for (NodeRecord& n : nodes) {
    if (n.name == "c") n.labels["spot"] = "true";
  }
  Result<std::vector<ReplicaPlacement>> p = PlaceReplicas(nodes, r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("b: its labels do not meet the node selector (disk=ssd)"),
            std::string::npos)
      << p.status();
  EXPECT_NE(p.status().message().find("c: its labels do not meet the node selector (!spot)"),
            std::string::npos)
      << p.status();
}

TEST(Placement, ACordonedNodeTakesNoNewReplica) {
  std::vector<NodeRecord> nodes = Cluster();
  for (NodeRecord& n : nodes) n.cordoned = n.name == "b";
  PlacementRequest r{.local_node = "a", .size_bytes = 10 * kGiB, .replicas = 2};
  EXPECT_EQ(Names(PlaceReplicas(nodes, r).value()), (std::vector<std::string>{"a", "c"}));
  r.replicas = 3;
  Result<std::vector<ReplicaPlacement>> p = PlaceReplicas(nodes, r);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("b: it is cordoned (shale node uncordon b)"),
            std::string::npos)
      << p.status();
}

TEST(Placement, TooFewNodesIsAClearError) {
  PlacementRequest r{.local_node = "a", .size_bytes = 40 * kGiB, .replicas = 3};
  Result<std::vector<ReplicaPlacement>> p = PlaceReplicas(Cluster(), r);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  const std::string msg(p.status().message());
  EXPECT_NE(msg.find("3 replicas need 3 nodes that can take one; 2 can (b, c)"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("a: its largest free space is 30 GiB (pool big), 40 GiB needed"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("d: it is down"), std::string::npos) << msg;
  EXPECT_NE(msg.find("e: it runs no replica listener"), std::string::npos) << msg;

  NodeRecord broken = Node("g", {});
  broken.status = Status::Corruption("bad json");
  p = PlaceReplicas({broken}, {.local_node = "g", .size_bytes = kGiB, .replicas = 1});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("g: its record in etcd is malformed"), std::string::npos);
  p = PlaceReplicas({Node("h", {})}, {.local_node = "h", .size_bytes = kGiB, .replicas = 1});
  EXPECT_NE(p.status().message().find("h: it has no pool"), std::string::npos) << p.status();
}

TEST(Placement, ReplicaNodesRestrictTheChoice) {
  PlacementRequest r{
      .local_node = "a", .size_bytes = 10 * kGiB, .replicas = 2, .only_nodes = {"c", "b", "f"}};
  Result<std::vector<ReplicaPlacement>> p = PlaceReplicas(Cluster(), r);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(Names(*p), (std::vector<std::string>{"b", "c"})) << "a is not among them";
  r.replicas = 3;
  p = PlaceReplicas(Cluster(), r);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("f: its largest free space is 5 GiB"), std::string::npos)
      << p.status();
  r.only_nodes = {"b", "nosuch"};
  r.replicas = 2;
  p = PlaceReplicas(Cluster(), r);
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound) << p.status();
  EXPECT_NE(p.status().message().find("nosuch"), std::string::npos);
}

TEST(Placement, BadRequestsAreInvalidArguments) {
  const std::vector<NodeRecord> nodes = Cluster();
  EXPECT_EQ(
      PlaceReplicas(nodes, {.local_node = "a", .size_bytes = 0, .replicas = 1}).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PlaceReplicas(nodes, {.local_node = "a", .size_bytes = 1, .replicas = 0}).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PlaceReplicas(nodes, {.local_node = "a", .size_bytes = 1, .replicas = 17}).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PlaceReplicas(nodes,
                    {.local_node = "a", .size_bytes = 1, .replicas = 1, .only_nodes = {"b", "b"}})
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(
      PlaceReplicas(nodes,
                    {.local_node = "a", .size_bytes = 1, .replicas = 1, .only_nodes = {"bad/name"}})
          .status()
          .code(),
      StatusCode::kInvalidArgument);
}

TEST(Placement, NewMembershipIsEpochOneAllInSync) {
  const std::vector<ReplicaPlacement> placement = {{"a", "big"}, {"b", "p1"}, {"c", "p1"}};
  Result<Membership> m =
      NewMembership("123e4567-e89b-12d3-a456-426614174000", 10 * kGiB, 2, "t", placement);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->epoch, 1u);
  EXPECT_EQ(m->target, "t") << "the creating node, with or without a replica";
  EXPECT_EQ(m->min_in_sync, 2u);
  EXPECT_EQ(m->in_sync, (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_EQ(m->replicas.size(), 3u);
  EXPECT_EQ(m->replicas[1].state, ReplicaState::kHealthy);
  ASSERT_EQ(m->history.size(), 1u);
  EXPECT_EQ(m->history[0].epoch, 1u);
  EXPECT_TRUE(DecodeMembership(EncodeMembership(*m).value()).ok());
  EXPECT_EQ(NewMembership("not-a-uuid", kGiB, 1, "a", placement).status().code(),
            StatusCode::kInvalidArgument);

  EXPECT_EQ(NewMembership("123e4567-e89b-12d3-a456-426614174000", kGiB, 4, "a", placement)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(NewMembership("123e4567-e89b-12d3-a456-426614174000", kGiB, 0, "a", placement)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shale::cluster
