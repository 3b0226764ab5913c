// Replacing replicas end to end (issue 12, point 3; docs/replication.md, "Replacing a replica"
// and "Drain"). A real etcd and three shaled on loopback.
//   - A node that stays down past --replica-replace-after (3 s here) has its replica placed on
//     the third node and fully rebuilt there while the client writes on; `replica list` shows
//     the count restored; the new replica alone serves every acknowledged write (the target
//     killed, the volume attached on the new node); the dead node, back, deletes its orphan.
//   - `shale node drain` moves every replica off a node with a client writing all along and no
//     client error: an attached volume's target replaces it; a detached volume is attached by a
//     node of its in-sync set for the replacement and detached again after. Every copy of a
//     snapshot taken after the drain hashes the same.
//   - A drain of the node that serves a volume moves its replica too: the target serves on from
//     the other replicas (its volume becomes the anchor of a target without a replica); a
//     shaled that died between the store's change and the anchor finishes it at its open.
//   - Node labels and a replica node selector: replicas go only to nodes whose labels meet it,
//     and so does the replica placed in place of a drained one (the drain waits until a node
//     qualifies).
// Skipped (with the reason) where etcd is not installed.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cluster/cluster_store.h"
#include "cluster/etcd_client.h"
#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"
#include "tests/e2e/sequence_writer.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;
using ReplicationReplaceE2eTest = EtcdE2eTest;

constexpr uint64_t kVolBytes = 32ull << 20;

std::set<std::string> NodesOf(const std::map<std::string, nlohmann::json>& replicas) {
  std::set<std::string> out;
  for (const auto& [node, r] : replicas) out.insert(node);
  return out;
}

bool AllHealthy(const std::map<std::string, nlohmann::json>& replicas) {
  for (const auto& [node, r] : replicas) {
    if (r["state"] != "healthy") return false;
  }
  return !replicas.empty();
}

// Starts node-a, node-b, node-c with `extra` flags each; their addresses published.
bool StartThree(const test::EtcdProcess& etcd, Harness& a, Harness& b, Harness& c,
                const std::vector<std::string>& extra) {
  char name = 'a';
  for (Harness* h : {&a, &b, &c}) {
    std::vector<std::string> flags = NodeFlags(*h, etcd, std::string("node-") + name++);
    flags.insert(flags.end(), extra.begin(), extra.end());
    if (!h->StartDaemon(flags)) return false;
  }
  return WaitPublished(a, 3);
}

// A kVolBytes oracle with random bytes (seeded) in [offset, offset + length), zeros elsewhere,
// written to `volume` through `h`'s NBD and flushed.
void FillAndFlush(Harness& h, const std::string& volume, uint64_t seed, uint64_t offset,
                  uint64_t length, std::string* oracle) {
  std::mt19937_64 rng(seed);
  oracle->assign(kVolBytes, '\0');
  for (size_t i = offset; i < offset + length; ++i) (*oracle)[i] = static_cast<char>(rng());
  auto client = NbdRawClient::Tcp(h.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go(volume).has_value()) << h.DaemonLog();
  ASSERT_TRUE(WriteRange(*client, *oracle, offset, length));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
}

// `volume` through `h` holds the writer's last acknowledged round in its first block (taken
// into *oracle) and *oracle everywhere else.
void ExpectWriterAndOracle(Harness& h, const std::string& volume, const SequenceWriter& writer,
                           std::string* oracle) {
  auto check = NbdRawClient::Tcp(h.NbdAddress());
  ASSERT_NE(check, nullptr);
  ASSERT_TRUE(check->Go(volume).has_value());
  std::string block;
  ASSERT_EQ(check->Request(NbdRawClient::kCmdRead, 0, 4096, "", &block), 0);
  EXPECT_EQ(SequenceWriter::SeqOf(block), writer.rounds()) << "the last acknowledged round";
  oracle->replace(0, 4096, block);
  ExpectContent(*check, *oracle, volume + " after the drain");
}

// A SequenceWriter writing to `volume` through `h`'s NBD, seen to write.
void StartWriter(Harness& h, const std::string& volume, std::unique_ptr<SequenceWriter>* writer) {
  std::vector<std::unique_ptr<NbdRawClient>> clients;
  clients.push_back(NbdRawClient::Tcp(h.NbdAddress()));
  ASSERT_NE(clients[0], nullptr);
  ASSERT_TRUE(clients[0]->Go(volume).has_value());
  *writer = std::make_unique<SequenceWriter>(std::move(clients));
  ASSERT_TRUE((*writer)->WaitMore(20)) << "the writer runs";
}

// `shale node drain NODE` through `via` ends with the node drained (logs of `logs` on failure).
void ExpectDrained(Harness& via, const std::string& node, const std::vector<Harness*>& logs) {
  CommandResult drained = via.Shale({"node", "drain", node, "--timeout", "120"});
  std::string why = drained.Describe();
  for (Harness* h : logs) why += h->DaemonLog();
  ASSERT_EQ(drained.exit_code, 0) << why;
  EXPECT_NE(drained.out.find("node " + node + " is drained"), std::string::npos) << drained.out;
}

bool HasVolume(Harness& h, const std::string& name) {
  CommandResult r = h.Shale({"volume", "list", "-o", "json"});
  if (r.exit_code != 0) return true;  // unknown: not gone
  nlohmann::json listed = r.Json();
  for (const nlohmann::json& v : listed["volumes"]) {
    if (v["name"] == name) return true;
  }
  return false;
}

TEST_F(ReplicationReplaceE2eTest, ADeadNodesReplicaIsReplacedAndRebuiltElsewhere) {
  Harness a, b, c;
  const std::vector<std::string> replace = {"--replica-replace-after", "3"};
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, replace));
  CommandResult made = a.Shale({"volume", "create", "rv", "--size", "32M", "--replicas", "2",
                                "--replica-nodes", "node-a,node-b"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe();

  std::mt19937_64 rng(21);
  std::string oracle(kVolBytes, '\0');
  for (size_t i = 0; i < (8ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  for (size_t i = 20ull << 20; i < (24ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->Go("rv"), std::optional<uint64_t>(kVolBytes));
  ASSERT_TRUE(WriteRange(*client, oracle, 0, 8ull << 20));
  ASSERT_TRUE(WriteRange(*client, oracle, 20ull << 20, 4ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  // node-b dies. The client writes on (node-b leaves the in-sync set), then node-b's replica is
  // replaced on node-c once node-b has been down for 3 s, and rebuilt whole.
  b.KillDaemon();
  ExpectOneLineError(a.Shale({"node", "forget", "node-b"}), "still holds replicas of rv");
  for (size_t i = 12ull << 20; i < (13ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  ASSERT_TRUE(WriteRange(*client, oracle, 12ull << 20, 1ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  std::map<std::string, nlohmann::json> replicas;
  nlohmann::json list;
  const bool replaced = WaitFor(
      [&] {
        replicas = Replicas(a, "rv", &list, /*quiet=*/true);
        return NodesOf(replicas) == std::set<std::string>{"node-a", "node-c"} &&
               AllHealthy(replicas);
      },
      seconds(60));
  ASSERT_TRUE(replaced) << list << a.DaemonLog();
  EXPECT_EQ(list["in_sync"].size(), 2u) << "the replica count is restored: " << list;
  EXPECT_GE(replicas["node-c"]["rebuilds"].get<uint64_t>(), 1u) << list;
  // The whole volume was compared or copied (a full rebuild), not only what changed.
  EXPECT_GE(replicas["node-c"]["rebuild_total_bytes"].get<uint64_t>(), kVolBytes) << list;
  CommandResult nodes = a.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.Describe();
  nlohmann::json node_list = nodes.Json();
  for (const nlohmann::json& n : node_list["nodes"]) {
    if (n["name"] == "node-b") {
      EXPECT_TRUE(n["replicas"].empty()) << n;
    }
  }

  // node-b returns: its replica is named by no membership any more and goes (a replica younger
  // than 10 s is never taken for an orphan: it may be being placed).
  std::vector<std::string> b_flags = NodeFlags(b, *etcd_, "node-b");
  b_flags.insert(b_flags.end(), replace.begin(), replace.end());
  ASSERT_TRUE(b.StartDaemon(b_flags));
  EXPECT_TRUE(WaitFor([&] { return !HasVolume(b, "rv"); }, seconds(30)))
      << "the orphaned replica is left: " << b.DaemonLog();
  EXPECT_NE(b.DaemonLog().find("orphaned replica removed"), std::string::npos) << b.DaemonLog();

  // Writes go on to both; then only node-c's copy is left to serve them all.
  for (size_t i = 16ull << 20; i < (17ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  ASSERT_TRUE(WriteRange(*client, oracle, 16ull << 20, 1ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  client.reset();
  a.KillDaemon();
  ASSERT_TRUE(WaitFor(
      [&] {
        return c.Shale({"volume", "attach", "rv"}).exit_code == 0;
      },
      seconds(30)))
      << c.DaemonLog();
  client = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("rv").has_value()) << c.DaemonLog();
  ExpectContent(*client, oracle, "node-c, the replacement");
  client.reset();
  // And node-c, the target now, replaces node-a's replica on node-b in turn.
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(c, "rv", &list, /*quiet=*/true);
        return NodesOf(replicas) == std::set<std::string>{"node-b", "node-c"} &&
               AllHealthy(replicas);
      },
      seconds(60)))
      << list << c.DaemonLog();
  // node-a is gone for good: forgotten once it holds nothing.
  ExpectOneLineError(c.Shale({"node", "forget", "node-b"}), "still holds replicas of rv");
  CommandResult forgotten = c.Shale({"node", "forget", "node-a"});
  ASSERT_EQ(forgotten.exit_code, 0) << forgotten.Describe();
  CommandResult after = c.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(after.exit_code, 0) << after.Describe();
  nlohmann::json left = after.Json();
  EXPECT_EQ(left["nodes"].size(), 2u) << left;
}

// The target restarts in the middle of a replacement (the rebuild paced at 4 MiB/s) while the
// replaced node is back up: the target finishes the replacement and never reconnects or
// rebuilds the replaced replica (the membership's `replaces` says it is going).
TEST_F(ReplicationReplaceE2eTest, ATargetRestartedMidReplacementFinishesIt) {
  Harness a, b, c;
  const std::vector<std::string> replace = {"--replica-replace-after", "2"};
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, replace));
  ASSERT_EQ(a.Shale({"volume", "create", "mv", "--size", "32M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  ASSERT_EQ(a.Shale({"qos", "rebuild-bps", "4M"}).exit_code, 0);
  std::string oracle;
  ASSERT_NO_FATAL_FAILURE(FillAndFlush(a, "mv", 23, 0, 8ull << 20, &oracle));
  b.KillDaemon();
  std::map<std::string, nlohmann::json> replicas;
  nlohmann::json list;
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(a, "mv", &list, /*quiet=*/true);
        return replicas.contains("node-c") && replicas["node-c"]["state"] == "rebuilding";
      },
      seconds(30)))
      << list << a.DaemonLog();
  // node-b returns and node-a's shaled restarts, the replacement half done.
  std::vector<std::string> b_flags = NodeFlags(b, *etcd_, "node-b");
  b_flags.insert(b_flags.end(), replace.begin(), replace.end());
  ASSERT_TRUE(b.StartDaemon(b_flags));
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  std::vector<std::string> a_flags = NodeFlags(a, *etcd_, "node-a");
  a_flags.insert(a_flags.end(), replace.begin(), replace.end());
  ASSERT_TRUE(a.StartDaemon(a_flags));
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(a, "mv", &list, /*quiet=*/true);
        return NodesOf(replicas) == std::set<std::string>{"node-a", "node-c"} &&
               AllHealthy(replicas);
      },
      seconds(60)))
      << list << a.DaemonLog();
  const std::string log = a.DaemonLog();
  const std::string since_restart = log.substr(log.rfind("=== harness: starting shaled ==="));
  EXPECT_EQ(since_restart.find("reconnected, rebuilding\" volume=mv node=node-b"),
            std::string::npos)
      << "the replaced replica was rebuilt: " << since_restart;
  // (Logged after the store and the layer changed: wait for it.)
  EXPECT_TRUE(WaitFor(
      [&] {
        const std::string now = a.DaemonLog();
        return now.find("replica replaced", now.rfind("=== harness: starting shaled ===")) !=
               std::string::npos;
      },
      seconds(10)))
      << a.DaemonLog();
  // node-c's copy is whole: node-a's copy and it hash the same.
  ASSERT_EQ(a.Shale({"snapshot", "create", "mv@after"}).exit_code, 0) << a.DaemonLog();
  CommandResult verified = a.Shale({"snapshot", "verify", "mv@after", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe();
  const nlohmann::json v = verified.Json();
  ASSERT_EQ(v["replicas"].size(), 1u) << v;
  EXPECT_EQ(v["replicas"][0]["digest"], v["digest"]) << v;
}

TEST_F(ReplicationReplaceE2eTest, DrainMovesEveryReplicaOffANodeWithClientIoRunning) {
  Harness a, b, c;
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, {}));
  // dv: served on node-a, a replica on node-b. wv: created on node-c, then detached.
  ASSERT_EQ(a.Shale({"volume", "create", "dv", "--size", "32M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  ASSERT_EQ(c.Shale({"volume", "create", "wv", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-c,node-b"})
                .exit_code,
            0);
  std::mt19937_64 rng(22);
  std::string woracle(16ull << 20, '\0');
  for (size_t i = 0; i < (2ull << 20); ++i) woracle[i] = static_cast<char>(rng());
  {
    auto w = NbdRawClient::Tcp(c.NbdAddress());
    ASSERT_NE(w, nullptr);
    ASSERT_TRUE(w->Go("wv").has_value());
    ASSERT_TRUE(WriteRange(*w, woracle, 0, 2ull << 20));
    ASSERT_EQ(w->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        return c.Shale({"volume", "detach", "wv"}).exit_code == 0;
      },
      seconds(20)))
      << c.DaemonLog();

  std::string oracle(kVolBytes, '\0');
  for (size_t i = 1ull << 20; i < (9ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  {
    auto fill = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(fill, nullptr);
    ASSERT_TRUE(fill->Go("dv").has_value());
    ASSERT_TRUE(WriteRange(*fill, oracle, 1ull << 20, 8ull << 20));
    ASSERT_EQ(fill->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }
  std::unique_ptr<SequenceWriter> writer;
  ASSERT_NO_FATAL_FAILURE(StartWriter(a, "dv", &writer));
  ASSERT_NO_FATAL_FAILURE(ExpectDrained(b, "node-b", {&a, &c}));
  ASSERT_TRUE(writer->WaitMore(20)) << "the writer goes on after the drain";
  writer->Stop();
  EXPECT_FALSE(writer->failed()) << "no client error during the drain";

  CommandResult nodes = a.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.Describe();
  nlohmann::json drained_nodes = nodes.Json();
  for (const nlohmann::json& n : drained_nodes["nodes"]) {
    if (n["name"] != "node-b") continue;
    EXPECT_TRUE(n["replicas"].empty()) << n;
    EXPECT_EQ(n["draining"], true) << n;
    EXPECT_EQ(n["cordoned"], true) << n;
  }
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "dv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-a", "node-c"})) << list;
  EXPECT_TRUE(AllHealthy(replicas)) << list;
  // The detached volume was attached on node-c for its replacement, then detached again.
  nlohmann::json wlist;
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(c, "wv", &wlist, /*quiet=*/true);
        return wlist.contains("detached") && wlist["detached"] == true &&
               NodesOf(replicas) == std::set<std::string>{"node-a", "node-c"};
      },
      seconds(30)))
      << wlist << c.DaemonLog();
  EXPECT_NE(c.DaemonLog().find("attached here to replace a replica"), std::string::npos);

  // Every copy holds the same bytes: the snapshot taken on the target and on node-c hashes the
  // same, and node-a serves the oracle.
  ASSERT_EQ(a.Shale({"snapshot", "create", "dv@drained"}).exit_code, 0) << a.DaemonLog();
  CommandResult verified = a.Shale({"snapshot", "verify", "dv@drained", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe();
  const nlohmann::json v = verified.Json();
  ASSERT_EQ(v["replicas"].size(), 1u) << v;
  EXPECT_EQ(v["replicas"][0]["node"], "node-c") << v;
  EXPECT_EQ(v["replicas"][0]["digest"], v["digest"]) << v;
  ASSERT_NO_FATAL_FAILURE(ExpectWriterAndOracle(a, "dv", *writer, &oracle));
  // wv on node-a (its new replica) serves what was written on node-c.
  ASSERT_EQ(a.Shale({"volume", "attach", "wv"}).exit_code, 0) << a.DaemonLog();
  auto w = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->Go("wv").has_value()) << a.DaemonLog();
  ExpectContent(*w, woracle, "wv on node-a");

  // A drain of node-a, which serves dv and wv now, waits while no node can take their replicas
  // (node-b drains, node-c holds one): the answer says why; an unknown node is refused.
  CommandResult self = b.Shale({"node", "drain", "node-a", "--no-wait", "-o", "json"});
  ASSERT_EQ(self.exit_code, 0) << self.Describe();
  nlohmann::json answer = self.Json();
  EXPECT_EQ(answer["drained"], false) << answer;
  ASSERT_EQ(answer["remaining"].size(), 2u) << answer;
  for (const nlohmann::json& r : answer["remaining"]) {
    EXPECT_NE(r["why"].get<std::string>().find("no node can take its replacement"),
              std::string::npos)
        << answer;
  }
  ExpectOneLineError(b.Shale({"node", "drain", "node-z", "--no-wait"}), "not known");
  ASSERT_EQ(b.Shale({"node", "uncordon", "node-a"}).exit_code, 0);

  // Uncordon ends the drain.
  ASSERT_EQ(a.Shale({"node", "uncordon", "node-b"}).exit_code, 0);
  nodes = a.Shale({"node", "list", "-o", "json"});
  nlohmann::json uncordoned = nodes.Json();
  for (const nlohmann::json& n : uncordoned["nodes"]) {
    if (n["name"] == "node-b") {
      EXPECT_EQ(n["draining"], false) << n;
    }
  }
}

// The local volume of `name` on `h` as `volume list -o json` shows it (null when it has none).
nlohmann::json LocalVolume(Harness& h, const std::string& name) {
  CommandResult r = h.Shale({"volume", "list", "-o", "json"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << r.Describe();
    return nullptr;
  }
  const nlohmann::json listed = r.Json();
  for (const nlohmann::json& v : listed["volumes"]) {
    if (v["name"] == name) return v;
  }
  return nullptr;
}

// Waits (bounded) until `h` serves `volume` over NBD, then expects `oracle` there.
void ExpectServedOnceOpen(Harness& h, const std::string& volume, const std::string& oracle,
                          const std::string& who) {
  std::unique_ptr<NbdRawClient> client;
  ASSERT_TRUE(WaitFor(
      [&] {
        client = NbdRawClient::Tcp(h.NbdAddress());
        return client != nullptr && client->Go(volume).has_value();
      },
      seconds(30)))
      << h.DaemonLog();
  ExpectContent(*client, oracle, who);
}

// A detached volume attached on node-c to replace a replica gets an NBD client there meanwhile:
// the detach after the replacement is refused while the client is connected, and retried by the
// repair thread until it succeeds once the client left (it used to stay attached for good, and
// no other node could attach it while node-c's lease lived).
TEST_F(ReplicationReplaceE2eTest, AVolumeAttachedForARepairIsDetachedOnceItsClientLeft) {
  Harness a, b, c;
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, {}));
  ASSERT_EQ(c.Shale({"volume", "create", "wv", "--size", "32M", "--replicas", "2",
                     "--replica-nodes", "node-c,node-b"})
                .exit_code,
            0);
  std::string oracle;
  ASSERT_NO_FATAL_FAILURE(FillAndFlush(c, "wv", 41, 0, 4ull << 20, &oracle));
  ASSERT_TRUE(WaitFor(
      [&] {
        return c.Shale({"volume", "detach", "wv"}).exit_code == 0;
      },
      seconds(20)))
      << c.DaemonLog();
  // A slow rebuild (4 MiB at 1 MiB/s) leaves the time to connect while node-c repairs.
  ASSERT_EQ(c.Shale({"qos", "rebuild-bps", "1M"}).exit_code, 0);
  CommandResult drain = a.Shale({"node", "drain", "node-b", "--no-wait"});
  ASSERT_EQ(drain.exit_code, 0) << drain.Describe();
  nlohmann::json wlist;
  ASSERT_TRUE(WaitFor(
      [&] {
        Replicas(c, "wv", &wlist, /*quiet=*/true);
        return wlist.contains("detached") && wlist["detached"] == false &&
               wlist["target"] == "node-c";
      },
      seconds(30)))
      << wlist << c.DaemonLog();
  auto client = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("wv").has_value()) << c.DaemonLog();
  std::map<std::string, nlohmann::json> replicas;
  ASSERT_TRUE(WaitFor(
      [&] {
        replicas = Replicas(c, "wv", &wlist, /*quiet=*/true);
        return NodesOf(replicas) == std::set<std::string>{"node-a", "node-c"} &&
               AllHealthy(replicas);
      },
      seconds(60)))
      << wlist << c.DaemonLog();
  // Replaced: the detach is refused while the client is there, and will be retried.
  ASSERT_TRUE(
      WaitFor([&] { return c.DaemonLog().find("volume not detached yet") != std::string::npos; },
              seconds(15)))
      << c.DaemonLog();
  Replicas(c, "wv", &wlist);
  EXPECT_EQ(wlist["detached"], false) << wlist;
  ExpectContent(*client, oracle, "wv through node-c while it is held there");
  client.reset();
  ASSERT_TRUE(WaitFor(
      [&] {
        Replicas(c, "wv", &wlist, /*quiet=*/true);
        return wlist.contains("detached") && wlist["detached"] == true;
      },
      seconds(20)))
      << "detached again once its client left: " << wlist << c.DaemonLog();
  ASSERT_EQ(a.Shale({"volume", "attach", "wv"}).exit_code, 0) << a.DaemonLog();
  auto on_a = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(on_a, nullptr);
  ASSERT_TRUE(on_a->Go("wv").has_value()) << a.DaemonLog();
  ExpectContent(*on_a, oracle, "wv through node-a");
}

// A drain of the node that serves a volume: its target places a replica elsewhere, rebuilds it,
// then drops its own replica and serves on from the others (its volume becomes a target-only
// anchor and its pool gets the space back), with a client writing all along and no client error.
// Restarted (kill -9), the node serves the volume as a target without a replica.
TEST_F(ReplicationReplaceE2eTest, DrainOfTheServingNodeMovesItsReplicaWhileItServesOn) {
  Harness a, b, c;
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, {}));
  ASSERT_EQ(a.Shale({"volume", "create", "sv", "--size", "32M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  std::string oracle;
  ASSERT_NO_FATAL_FAILURE(FillAndFlush(a, "sv", 24, 1ull << 20, 8ull << 20, &oracle));
  const nlohmann::json before = LocalVolume(a, "sv");
  ASSERT_GE(before.value("allocated_bytes", uint64_t{0}), 8ull << 20) << before;
  std::unique_ptr<SequenceWriter> writer;
  ASSERT_NO_FATAL_FAILURE(StartWriter(a, "sv", &writer));
  ASSERT_NO_FATAL_FAILURE(ExpectDrained(b, "node-a", {&a}));
  ASSERT_TRUE(writer->WaitMore(20)) << "the writer goes on after the drain";
  writer->Stop();
  EXPECT_FALSE(writer->failed()) << "no client error during the drain";

  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "sv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-b", "node-c"})) << list;
  EXPECT_TRUE(AllHealthy(replicas)) << list;
  EXPECT_EQ(list["target"], "node-a") << list;
  // node-a's volume is the anchor now: it holds none of the data.
  ASSERT_TRUE(WaitFor(
      [&] {
        const nlohmann::json v = LocalVolume(a, "sv");
        return v.is_object() && v.value("allocated_bytes", ~uint64_t{0}) < (1ull << 20);
      },
      seconds(10)))
      << LocalVolume(a, "sv") << a.DaemonLog();
  EXPECT_EQ(LocalVolume(a, "sv")["labels"]["shale.io/target-only"], "true");

  // Every acknowledged write is there, served from node-b and node-c; block status says data
  // (the anchor's own map is empty).
  ASSERT_NO_FATAL_FAILURE(ExpectWriterAndOracle(a, "sv", *writer, &oracle));
  if (const std::string qemu_img = FindProgram("qemu-img"); !qemu_img.empty()) {
    CommandResult map = RunProcess({qemu_img, "map", "-f", "raw", "--output=json", a.NbdUri("sv")},
                                   {.timeout = seconds(60)});
    ASSERT_EQ(map.exit_code, 0) << map.Describe();
    const nlohmann::json extents = map.Json();
    uint64_t data_bytes = 0;
    for (const auto& extent : extents) {
      if (extent["data"] == true) data_bytes += extent["length"].get<uint64_t>();
    }
    EXPECT_EQ(data_bytes, kVolBytes) << map.out;
  } else {
    ADD_FAILURE() << "qemu-img is not installed (scripts/deps installs qemu-utils)";
  }
  // A snapshot now is node-b's and node-c's copies, identical (verified where a copy is).
  ASSERT_EQ(a.Shale({"snapshot", "create", "sv@drained"}).exit_code, 0) << a.DaemonLog();
  CommandResult verified = b.Shale({"snapshot", "verify", "sv@drained", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe() << b.DaemonLog();
  const nlohmann::json v = verified.Json();
  ASSERT_EQ(v["replicas"].size(), 1u) << v;
  EXPECT_EQ(v["replicas"][0]["node"], "node-c") << v;
  EXPECT_EQ(v["replicas"][0]["digest"], v["digest"]) << v;
  // node-a lists it (its copies' list, read from a replica: LIST_SNAPSHOTS), once.
  CommandResult listed = a.Shale({"snapshot", "list", "-o", "json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.Describe();
  const nlohmann::json snaps = listed.Json();
  int seen = 0;
  for (const nlohmann::json& snap : snaps["snapshots"]) {
    if (snap["name"] != "sv@drained") continue;
    ++seen;
    EXPECT_EQ(snap["labels"]["shale.io/snapshot-replicas"], "node-b,node-c") << snap;
  }
  EXPECT_EQ(seen, 1) << snaps;

  // kill -9 and back: node-a serves the volume as a target without a replica, every write kept.
  a.KillDaemon();
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  ASSERT_NO_FATAL_FAILURE(ExpectServedOnceOpen(a, "sv", oracle, "node-a restarted"));
  CommandResult nodes = b.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.Describe();
  const nlohmann::json node_list = nodes.Json();
  for (const nlohmann::json& n : node_list["nodes"]) {
    if (n["name"] == "node-a") {
      EXPECT_TRUE(n["replicas"].empty()) << n;
    }
  }
}

// The crash window of that drain: the store dropped the serving node's replica (epoch + 1),
// then its shaled died before its volume became the anchor. Made here by killing node-a and
// writing that membership change as the target would. Back, node-a finishes the change at its
// open (never takes its volume for an orphan) and serves every flushed write from the others.
TEST_F(ReplicationReplaceE2eTest, AStopBeforeTheServingReplicaBecameTheAnchorIsFinishedAtOpen) {
  Harness a, b, c;
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, {}));
  ASSERT_EQ(a.Shale({"volume", "create", "cv", "--size", "32M", "--replicas", "3"}).exit_code, 0);
  std::string oracle;
  ASSERT_NO_FATAL_FAILURE(FillAndFlush(a, "cv", 25, 0, 6ull << 20, &oracle));
  a.KillDaemon();

  Result<std::unique_ptr<cluster::EtcdClient>> client =
      cluster::EtcdClient::Create(etcd_->endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  Result<std::unique_ptr<cluster::ClusterStore>> store =
      cluster::ClusterStore::Create(std::move(client).value(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  Result<cluster::VolumeRecord> record = (*store)->GetVolume("cv");
  ASSERT_TRUE(record.ok()) << record.status();
  cluster::Membership m = record->membership;
  ASSERT_EQ(m.target, "node-a");
  std::erase_if(m.replicas, [](const cluster::ReplicaMember& r) { return r.node == "node-a"; });
  std::erase(m.in_sync, "node-a");
  m.epoch += 1;
  m.RecordChange("node-a removed: replaced by node-d (test)");
  cluster::VolumeRecord now;
  ASSERT_TRUE((*store)->CompareAndSwapVolume("cv", record->mod_revision, m, &now).ok());

  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  ASSERT_NO_FATAL_FAILURE(ExpectServedOnceOpen(a, "cv", oracle, "node-a from node-b and node-c"));
  const std::string log = a.DaemonLog();
  EXPECT_NE(log.find("local replica became the target-only anchor"), std::string::npos) << log;
  EXPECT_EQ(log.find("orphaned replica removed"), std::string::npos) << log;
  const nlohmann::json local = LocalVolume(a, "cv");
  EXPECT_EQ(local["labels"]["shale.io/target-only"], "true") << local;
  EXPECT_LT(local.value("allocated_bytes", ~uint64_t{0}), 1ull << 20) << local;
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "cv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-b", "node-c"})) << list;
  EXPECT_EQ(list["target"], "node-a") << list;
}

// A membership record a node cannot decode (one a newer shaled wrote during a rolling upgrade,
// with a field this version does not know, or a damaged one) says nothing about whether its
// replica is needed: the orphan scan keeps the replica (it used to delete it as having no record).
TEST_F(ReplicationReplaceE2eTest, AReplicaWhoseRecordCannotBeReadIsNotAnOrphan) {
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));
  CommandResult made = a.Shale({"volume", "create", "uv", "--size", "16M", "--replicas", "2"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe();
  ASSERT_TRUE(HasVolume(b, "uv"));
  // Detached (as CSI leaves a volume no pod uses): no target holds node-b's replica open.
  CommandResult detached = a.Shale({"volume", "detach", "uv"});
  ASSERT_EQ(detached.exit_code, 0) << detached.Describe();

  Result<std::unique_ptr<cluster::EtcdClient>> raw = cluster::EtcdClient::Create(etcd_->endpoint());
  Result<std::unique_ptr<cluster::EtcdClient>> for_store =
      cluster::EtcdClient::Create(etcd_->endpoint());
  ASSERT_TRUE(raw.ok() && for_store.ok());
  Result<std::unique_ptr<cluster::ClusterStore>> store =
      cluster::ClusterStore::Create(std::move(for_store).value(), {});
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string key = (*store)->VolumeKey("uv");
  Result<std::optional<cluster::KeyValue>> kv = (*raw)->Get(key);
  ASSERT_TRUE(kv.ok() && kv->has_value()) << kv.status();
  nlohmann::json newer = nlohmann::json::parse((*kv)->value);
  newer["a_field_of_a_newer_version"] = 1;
  ASSERT_TRUE((*raw)->Put(key, newer.dump()).ok());
  EXPECT_EQ((*store)->GetVolume("uv").status().code(), StatusCode::kCorruption);

  // node-b scans every 10 s and takes a replica older than 10 s without a record for an orphan:
  // within 25 s it would have been deleted.
  EXPECT_FALSE(WaitFor([&] { return !HasVolume(b, "uv"); }, seconds(25)))
      << "the replica was deleted: " << b.DaemonLog();
  EXPECT_EQ(b.DaemonLog().find("orphaned replica removed"), std::string::npos) << b.DaemonLog();
}

TEST_F(ReplicationReplaceE2eTest, ANodeSelectorKeepsReplicasAndTheirReplacementsOnLabelledNodes) {
  Harness a, b, c;
  ASSERT_TRUE(StartThree(*etcd_, a, b, c, {}));
  // Labels: set, changed and removed from any node; bad ones refused before anything changes.
  ASSERT_EQ(a.Shale({"node", "label", "node-a", "disk=ssd"}).exit_code, 0);
  CommandResult labelled = c.Shale({"node", "label", "node-b", "disk=ssd", "zone=x"});
  ASSERT_EQ(labelled.exit_code, 0) << labelled.Describe();
  labelled = a.Shale({"node", "label", "node-b", "zone-", "-o", "json"});
  ASSERT_EQ(labelled.exit_code, 0) << labelled.Describe();
  EXPECT_EQ(labelled.Json()["labels"], (nlohmann::json{{"disk", "ssd"}})) << labelled.out;
  EXPECT_EQ(a.Shale({"node", "label", "node-b", "-bad=x"}).exit_code, 2);
  ExpectOneLineError(a.Shale({"node", "label", "node-z", "disk=ssd"}), "not known");
  CommandResult nodes = b.Shale({"node", "list", "-o", "json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.Describe();
  nlohmann::json listed = nodes.Json();
  for (const nlohmann::json& n : listed["nodes"]) {
    const nlohmann::json want =
        n["name"] == "node-c" ? nlohmann::json::object() : nlohmann::json{{"disk", "ssd"}};
    EXPECT_EQ(n["labels"], want) << n;
  }

  // Three replicas on ssd nodes: only two qualify, and the error says why not node-c.
  ExpectOneLineError(a.Shale({"volume", "create", "sv", "--size", "32M", "--replicas", "3",
                              "--replica-node-selector", "disk=ssd"}),
                     "node-c: its labels do not meet the node selector (disk=ssd)");
  ExpectOneLineError(a.Shale({"volume", "create", "sv", "--size", "32M", "--replicas", "2",
                              "--replica-node-selector", "disk=ssd,"}),
                     "node selector requirement");
  CommandResult made = a.Shale({"volume", "create", "sv", "--size", "32M", "--replicas", "2",
                                "--replica-node-selector", "disk=ssd"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "sv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-a", "node-b"})) << list;
  EXPECT_EQ(list["node_selector"], "disk=ssd") << list;

  std::mt19937_64 rng(23);
  std::string oracle(kVolBytes, '\0');
  for (size_t i = 0; i < (4ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("sv").has_value());
  ASSERT_TRUE(WriteRange(*client, oracle, 0, 4ull << 20));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  // Draining node-b: node-c has no ssd label, so no replacement is placed; the target's log and
  // the drain's answer (through any node) say why.
  CommandResult waiting = b.Shale({"node", "drain", "node-b", "--no-wait", "-o", "json"});
  ASSERT_EQ(waiting.exit_code, 0) << waiting.Describe();
  const nlohmann::json answer = waiting.Json();
  ASSERT_EQ(answer["remaining"].size(), 1u) << answer;
  EXPECT_NE(answer["remaining"][0]["why"].get<std::string>().find(
                "no node can take its replacement: 1 replicas need 1 nodes that can take one; 0 "
                "can; not node-c: its labels do not meet the node selector (disk=ssd)"),
            std::string::npos)
      << answer;
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.DaemonLog().find("node-c: its labels do not meet the node selector") !=
               std::string::npos;
      },
      seconds(20)))
      << a.DaemonLog();
  replicas = Replicas(a, "sv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-a", "node-b"})) << list;
  // Labelled, node-c qualifies: the drain completes there, the data follows.
  ASSERT_EQ(c.Shale({"node", "label", "node-c", "disk=ssd"}).exit_code, 0);
  CommandResult drained = b.Shale({"node", "drain", "node-b", "--timeout", "90"});
  ASSERT_EQ(drained.exit_code, 0) << drained.Describe() << a.DaemonLog();
  replicas = Replicas(a, "sv", &list);
  EXPECT_EQ(NodesOf(replicas), (std::set<std::string>{"node-a", "node-c"})) << list;
  EXPECT_TRUE(AllHealthy(replicas)) << list;
  EXPECT_EQ(list["node_selector"], "disk=ssd") << "kept by the replacement: " << list;
  ASSERT_EQ(a.Shale({"snapshot", "create", "sv@moved"}).exit_code, 0) << a.DaemonLog();
  CommandResult verified = a.Shale({"snapshot", "verify", "sv@moved", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe();
  const nlohmann::json v = verified.Json();
  ASSERT_EQ(v["replicas"].size(), 1u) << v;
  EXPECT_EQ(v["replicas"][0]["node"], "node-c") << v;
  EXPECT_EQ(v["replicas"][0]["digest"], v["digest"]) << v;
  ExpectContent(*client, oracle, "node-a after the drain");
}

}  // namespace
}  // namespace shale::e2e
