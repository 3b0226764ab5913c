// Moving a replicated volume's target and fencing the old one end to end (issue 11, point 5:
// "a second target with the newer epoch takes the volume; the old one's writes are rejected by
// every replica and it stops serving"; docs/replication.md, "Moving the target and fencing").
// A real etcd and three shaled on loopback; node-a serves a 3-replica volume with an NBD client
// connected; `shale volume take-over` on node-b (refused while node-a's lease lives, taken with
// --force); the old client's writes and reads fail from then on, node-a's `replica list` says
// fenced and nothing was recorded as a replica failure; data written through node-b reads back;
// finally each node is restarted alone and its replica compared with the oracle: no write of
// the old target landed anywhere. Then `volume attach` / `volume detach`. Skipped (with the
// reason) where etcd is not installed.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;
using ReplicationFencingE2eTest = EtcdE2eTest;

constexpr uint64_t kFenceVolBytes = 16ull << 20;

TEST_F(ReplicationFencingE2eTest, ANewTargetTakesOverAndTheOldOneIsFencedEverywhere) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "fv", "--size", "16M", "--replicas", "3"}).exit_code, 0);

  std::mt19937_64 rng(13);
  std::string oracle(kFenceVolBytes, '\0');
  for (size_t i = 0; i < (4ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto old_client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(old_client, nullptr);
  ASSERT_EQ(old_client->Go("fv"), std::optional<uint64_t>(kFenceVolBytes));
  ASSERT_TRUE(WriteRange(*old_client, oracle, 0, 4ull << 20));
  ASSERT_EQ(old_client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  // Refused where it cannot be right: the target itself, and while node-a's lease lives.
  ExpectOneLineError(a.Shale({"volume", "take-over", "fv"}), "is the target of volume 'fv'");
  ExpectOneLineError(b.Shale({"volume", "take-over", "fv"}), "whose lease lives");
  EXPECT_EQ(Replicas(a, "fv").size(), 3u);

  // node-b takes it (the admin knows node-a must go): epoch + 1, target node-b.
  CommandResult taken = b.Shale({"volume", "take-over", "fv", "--force", "-o", "json"});
  ASSERT_EQ(taken.exit_code, 0) << taken.Describe() << b.DaemonLog();
  EXPECT_EQ(taken.Json()["epoch"], 2) << taken.out;
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(b, "fv", &list);
  EXPECT_EQ(list["target"], "node-b") << list;
  EXPECT_EQ(list["epoch"], 2) << "no replica failure was recorded: " << list;
  EXPECT_EQ(list["in_sync"].size(), 3u) << list;
  EXPECT_EQ(list["fenced"], false) << list;
  for (const auto& [node, r] : replicas) EXPECT_EQ(r["state"], "healthy") << node << r;
  EXPECT_EQ(replicas["node-b"]["local"], true) << list;

  // The old target serves nothing any more: its client's writes and reads fail.
  std::string stale(kReplicationChunk, 'X');
  EXPECT_NE(old_client->Request(NbdRawClient::kCmdWrite, 8ull << 20, kReplicationChunk, stale), 0)
      << "a write through the fenced target";
  EXPECT_NE(old_client->Request(NbdRawClient::kCmdWrite, 0, kReplicationChunk, stale), 0);
  std::string ignored;
  EXPECT_NE(old_client->Request(NbdRawClient::kCmdRead, 0, kReplicationChunk, "", &ignored), 0)
      << "a read through the fenced target";
  CommandResult fenced = a.Shale({"replica", "list", "fv", "-o", "json"});
  ASSERT_EQ(fenced.exit_code, 0) << fenced.Describe();
  EXPECT_EQ(fenced.Json()["fenced"], true) << fenced.out;
  EXPECT_NE(a.Shale({"replica", "list", "fv"}).out.find("fenced"), std::string::npos);
  EXPECT_NE(a.DaemonLog().find("fenced, serving no more I/O"), std::string::npos) << "logged";
  EXPECT_EQ(Replicas(b, "fv", &list)["node-a"]["state"], "healthy")
      << "the fenced target recorded no failure: " << list;
  EXPECT_EQ(list["epoch"], 2) << list;
  old_client.reset();

  // The new target serves: what it writes reads back, with what the old one wrote before.
  auto client = NbdRawClient::Tcp(b.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->Go("fv"), std::optional<uint64_t>(kFenceVolBytes)) << b.DaemonLog();
  for (size_t i = 4ull << 20; i < (8ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  ASSERT_TRUE(WriteRange(*client, oracle, 4ull << 20, 4ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  ExpectContent(*client, oracle, "new target");
  client.reset();

  // Moved back to node-a, still running with its fenced target: node-a serves it again, with
  // what node-b wrote.
  CommandResult detached = ShaleWhenClientsGone(b, {"volume", "detach", "fv"});
  ASSERT_EQ(detached.exit_code, 0) << detached.Describe() << b.DaemonLog();
  CommandResult back = a.Shale({"volume", "attach", "fv", "-o", "json"});
  ASSERT_EQ(back.exit_code, 0) << back.Describe() << a.DaemonLog();
  EXPECT_EQ(Replicas(a, "fv", &list).size(), 3u) << list;
  EXPECT_EQ(list["target"], "node-a") << list;
  EXPECT_EQ(list["fenced"], false) << list;
  auto again = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(again, nullptr);
  ASSERT_EQ(again->Go("fv"), std::optional<uint64_t>(kFenceVolBytes)) << a.DaemonLog();
  ExpectContent(*again, oracle, "node-a again");
  again.reset();

  // No write of the old target landed on any replica: each node alone exports its copy.
  for (Harness* h : {&b, &a, &c}) EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
  for (Harness* h : {&a, &b, &c}) {
    ASSERT_TRUE(h->StartDaemon());
    auto direct = NbdRawClient::Tcp(h->NbdAddress());
    ASSERT_NE(direct, nullptr);
    ASSERT_EQ(direct->Go("fv"), std::optional<uint64_t>(kFenceVolBytes));
    ExpectContent(*direct, oracle, h == &a ? "node-a" : h == &b ? "node-b" : "node-c");
    EXPECT_EQ(h->StopDaemon(SIGTERM), 0);
  }
}

TEST_F(ReplicationFencingE2eTest, TakeOverNeedsAnInSyncReplicaAndTheOldNodeDown) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "tv", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  // (node-c holds no replica: it could serve the volume from the others, once node-a's lease is
  // gone.)
  ExpectOneLineError(c.Shale({"volume", "take-over", "tv"}), "whose lease lives");
  ExpectOneLineError(b.Shale({"volume", "take-over", "nope"}), "nope");

  // node-a dies (kill -9): once its lease expired, node-b takes over without --force.
  a.KillDaemon();
  ASSERT_TRUE(WaitFor(
      [&] {
        CommandResult r = b.Shale({"volume", "take-over", "tv"});
        return r.exit_code == 0;
      },
      seconds(20)))
      << b.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(b, "tv", &list);
  EXPECT_EQ(list["target"], "node-b") << list;
  // node-a's replica could not be reached: it left the in-sync set (epoch 2 -> 3).
  EXPECT_EQ(replicas["node-a"]["state"], "faulted") << list;
  EXPECT_EQ(list["epoch"], 3) << list;
  auto client = NbdRawClient::Tcp(b.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("tv").has_value()) << b.DaemonLog();
  std::string data(kReplicationChunk, 'n');
  ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 0, kReplicationChunk, data), 0);
  client.reset();

  // node-a returns: it does not serve the volume any more (a replica held for node-b), and
  // node-b rebuilds its replica.
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  CommandResult wait = b.Shale({"replica", "wait", "tv", "--timeout", "60"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << b.DaemonLog();
  auto direct = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(direct, nullptr);
  EXPECT_FALSE(direct->Go("tv").has_value()) << "the old target never serves it again";
  // And a take-over back needs node-b down or --force.
  ExpectOneLineError(a.Shale({"volume", "take-over", "tv"}), "whose lease lives");
}

// `volume attach` / `volume detach` (docs/replication.md, "Attach and detach"): never two
// writers. An attach elsewhere is refused while the attached node's lease lives (naming it), on a
// node without a replica too; a detach is refused while clients are connected; after a detach
// another replica's node attaches at once (epoch + 1) and serves the same bytes; after a kill -9
// of that node the first attaches again once the lease expired; a detached volume stays
// detached across a restart.
TEST_F(ReplicationFencingE2eTest, AttachAndDetachMoveTheVolumeWithoutTwoWriters) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "av", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  std::mt19937_64 rng(17);
  std::string oracle(kFenceVolBytes, '\0');
  for (size_t i = 0; i < (2ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("av").has_value());
  ASSERT_TRUE(WriteRange(*client, oracle, 0, 2ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  ExpectOneLineError(b.Shale({"volume", "attach", "av"}), "attached on node node-a, whose lease");
  ExpectOneLineError(c.Shale({"volume", "attach", "av"}), "attached on node node-a, whose lease");
  ExpectOneLineError(a.Shale({"volume", "detach", "av"}), "has clients");
  ExpectOneLineError(b.Shale({"volume", "detach", "av"}),
                     "attached on node node-a, not on node-b; detach it there");
  EXPECT_EQ(a.Shale({"volume", "attach", "av"}).exit_code, 0) << "attached here already";
  client.reset();
  CommandResult detached = ShaleWhenClientsGone(a, {"volume", "detach", "av", "-o", "json"});
  ASSERT_EQ(detached.exit_code, 0) << detached.Describe();
  EXPECT_EQ(detached.Json()["detached"], true) << detached.out;
  const uint64_t epoch = detached.Json()["epoch"].get<uint64_t>();
  EXPECT_EQ(a.Shale({"volume", "detach", "av"}).exit_code, 0) << "detached already";
  nlohmann::json list;
  Replicas(a, "av", &list);
  EXPECT_EQ(list["detached"], true) << list;
  client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  EXPECT_FALSE(client->Go("av").has_value()) << "a detached volume is served nowhere";

  // node-b attaches at once; node-a may not while node-b's lease lives.
  CommandResult attached = b.Shale({"volume", "attach", "av", "-o", "json"});
  ASSERT_EQ(attached.exit_code, 0) << attached.Describe() << b.DaemonLog();
  EXPECT_EQ(attached.Json()["target"], "node-b") << attached.out;
  EXPECT_EQ(attached.Json()["epoch"], epoch + 1) << attached.out;
  EXPECT_EQ(b.Shale({"volume", "attach", "av"}).exit_code, 0) << "idempotent";
  // The admin view: `volume show` names the target, the epoch and the replicas; `node list`
  // what each node serves and holds.
  CommandResult shown = a.Shale({"volume", "show", "av", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  const nlohmann::json replication = shown.Json()["replication"];
  EXPECT_EQ(replication["target"], "node-b") << shown.out;
  EXPECT_EQ(replication["epoch"], epoch + 1) << shown.out;
  EXPECT_EQ(replication["detached"], false) << shown.out;
  ASSERT_EQ(replication["replicas"].size(), 2u) << shown.out;
  EXPECT_NE(a.Shale({"volume", "show", "av"}).out.find("node-b, epoch"), std::string::npos);
  CommandResult nodes = c.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.Describe();
  std::map<std::string, nlohmann::json> by_node;
  const nlohmann::json listed = nodes.Json();
  for (const nlohmann::json& n : listed["nodes"]) by_node[n["name"].get<std::string>()] = n;
  EXPECT_EQ(by_node["node-b"]["targets"], nlohmann::json::array({"av"})) << nodes.out;
  EXPECT_EQ(by_node["node-a"]["targets"], nlohmann::json::array()) << nodes.out;
  EXPECT_EQ(by_node["node-a"]["replicas"], nlohmann::json::array({"av"})) << nodes.out;
  EXPECT_EQ(by_node["node-c"]["replicas"], nlohmann::json::array()) << nodes.out;
  ExpectOneLineError(a.Shale({"volume", "attach", "av"}), "attached on node node-b, whose lease");
  client = NbdRawClient::Tcp(b.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("av").has_value()) << b.DaemonLog();
  ExpectContent(*client, oracle, "node-b after the attach");
  for (size_t i = 4ull << 20; i < (5ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  ASSERT_TRUE(WriteRange(*client, oracle, 4ull << 20, 1ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  client.reset();

  // node-b dies: once its lease expired node-a attaches (a take-over: epoch + 1, node-b's
  // replica leaves the in-sync set) and serves every acknowledged write.
  b.KillDaemon();
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.Shale({"volume", "attach", "av"}).exit_code == 0;
      },
      seconds(20)))
      << a.DaemonLog();
  Replicas(a, "av", &list);
  EXPECT_EQ(list["target"], "node-a") << list;
  EXPECT_EQ(list["detached"], false) << list;
  client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("av").has_value()) << a.DaemonLog();
  ExpectContent(*client, oracle, "node-a after node-b died");
  client.reset();

  // Detached stays detached across a restart; an attach serves it again.
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.Shale({"volume", "detach", "av"}).exit_code == 0;
      },
      seconds(10)))
      << a.DaemonLog();
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  EXPECT_FALSE(client->Go("av").has_value()) << "not served after the restart";
  ASSERT_EQ(a.Shale({"volume", "attach", "av"}).exit_code, 0) << a.DaemonLog();
  client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("av").has_value()) << a.DaemonLog();
  ExpectContent(*client, oracle, "node-a after a restart and an attach");
}

// A replica that left under one target and returns under another: what it missed is recorded on
// the first target's node (its changed regions), not on the second's. The second, whose term
// began after the leave, compares everything its replica holds with it, so it comes back whole
// (docs/replication.md, "Changed regions and the activity log": the term).
TEST_F(ReplicationFencingE2eTest, AReplicaThatLeftUnderAnotherTargetIsComparedWhole) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "ov", "--size", "16M", "--replicas", "3"}).exit_code, 0);
  std::mt19937_64 rng(41);
  std::string oracle(kFenceVolBytes, '\0');
  for (size_t i = 0; i < (2ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto write = [&](Harness& h, uint64_t offset, uint64_t length) {
    auto client = NbdRawClient::Tcp(h.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("ov").has_value()) << h.DaemonLog();
    ASSERT_TRUE(WriteRange(*client, oracle, offset, length));
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  };
  auto detach = [&](Harness& h) {
    ASSERT_TRUE(WaitFor(
        [&] {
          return h.Shale({"volume", "detach", "ov"}).exit_code == 0;
        },
        seconds(10)))
        << h.DaemonLog();
  };
  ASSERT_NO_FATAL_FAILURE(write(a, 0, 2ull << 20));
  ASSERT_NO_FATAL_FAILURE(detach(a));
  ASSERT_EQ(b.Shale({"volume", "attach", "ov"}).exit_code, 0) << b.DaemonLog();
  // node-c goes while node-b serves: node-b records what it misses.
  c.KillDaemon();
  for (size_t i = 4ull << 20; i < (6ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  ASSERT_NO_FATAL_FAILURE(write(b, 4ull << 20, 2ull << 20));
  ASSERT_EQ(Replicas(b, "ov")["node-c"]["state"], "faulted");
  ASSERT_NO_FATAL_FAILURE(detach(b));
  // node-a serves it again (its log kept from its first term) when node-c returns.
  ASSERT_EQ(a.Shale({"volume", "attach", "ov"}).exit_code, 0) << a.DaemonLog();
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  CommandResult wait = a.Shale({"replica", "wait", "ov", "--timeout", "60"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "ov", &list);
  EXPECT_GE(replicas["node-c"]["rebuild_sent_bytes"].get<uint64_t>(), 2ull << 20)
      << "the 2 MiB node-b wrote while node-c was out: " << list;
  EXPECT_GE(replicas["node-c"]["rebuild_total_bytes"].get<uint64_t>(), 4ull << 20)
      << "everything node-a's replica holds was compared: " << list;

  // node-c alone holds every byte.
  for (Harness* h : {&a, &b, &c}) EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
  ASSERT_TRUE(c.StartDaemon());
  auto direct = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(direct->Go("ov"), std::optional<uint64_t>(kFenceVolBytes));
  ExpectContent(*direct, oracle, "node-c alone");
}

}  // namespace
}  // namespace shale::e2e
