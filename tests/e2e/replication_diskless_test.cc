// A replicated volume served on a node that holds no replica of it (issue 12, point 1: "a
// replicated volume is accessible from every node of the cluster (its target can run
// anywhere)"; docs/replication.md, "Targets on nodes without a replica"). A real etcd and three
// shaled on loopback; a 2-replica volume on node-a and node-b is attached on node-c, which serves
// it over its own NBD export from the two remote replicas:
//   - every byte written through node-a reads back through node-c, and what node-c writes reads
//     back through node-a after the volume moved back; block status reports data (the anchor's
//     empty allocation says nothing about the replicas'); a snapshot taken on node-c is its
//     copies on node-a and node-b, readable there, deleted through node-c;
//   - a replica killed with -9 while node-c's client writes: no client error, it is rebuilt from
//     the other (remote) replica with only what it missed;
//   - node-c killed with -9: attaching elsewhere is refused while its lease lives and succeeds
//     after, with every flushed write; node-c restarted serves nothing and its anchor goes;
//   - a group snapshot on node-c of a volume it serves without a replica and a local one: one cut;
//   - created on a node that cannot take a replica (cordoned): the replicas go elsewhere and it
//     serves the volume; snapshots and deletion asked of a node holding nothing of it (a
//     delete is refused while another node serves it).
// Skipped (with the reason) where etcd is not installed.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;
using ReplicationDisklessE2eTest = EtcdE2eTest;

constexpr uint64_t kVolBytes = 16ull << 20;
constexpr uint64_t kMiB = 1ull << 20;

// Whether `h` lists a local volume named `name` (the anchor on a node without a replica).
bool HasLocalVolume(Harness& h, const std::string& name) {
  CommandResult r = h.Shale({"volume", "list", "-o", "json"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << r.Describe();
    return false;
  }
  const nlohmann::json listed = r.Json();  // (a temporary's member would dangle in the loop)
  for (const nlohmann::json& v : listed["volumes"]) {
    if (v["name"] == name) return true;
  }
  return false;
}

// Detaches `volume` on `h`, retried while a client's close has not reached shaled yet.
void Detach(Harness& h, const std::string& volume) {
  CommandResult detached = ShaleWhenClientsGone(h, {"volume", "detach", volume});
  ASSERT_EQ(detached.exit_code, 0) << detached.Describe() << h.DaemonLog();
}

// `snapshot show REF -o json` on `h` (null on failure, recorded).
nlohmann::json ShowOnNode(Harness& h, const std::string& ref) {
  CommandResult r = h.Shale({"snapshot", "show", ref, "-o", "json"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << r.Describe();
    return nullptr;
  }
  return r.Json();
}

void Fill(std::string* oracle, uint64_t offset, uint64_t length, std::mt19937_64* rng) {
  for (uint64_t i = offset; i < offset + length; ++i) (*oracle)[i] = static_cast<char>((*rng)());
}

// A 2-replica volume on node-a and node-b, served by node-c (no replica), with `length` bytes of
// the oracle (seeded by `seed`) written through node-c and flushed; `client` stays connected.
void ServedByNodeC(Harness& a, Harness& c, const std::string& volume, uint64_t seed,
                   uint64_t length, std::string* oracle, std::unique_ptr<NbdRawClient>* client) {
  ASSERT_EQ(a.Shale({"volume", "create", volume, "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  Detach(a, volume);
  ASSERT_EQ(c.Shale({"volume", "attach", volume}).exit_code, 0) << c.DaemonLog();
  std::mt19937_64 rng(seed);
  oracle->assign(kVolBytes, '\0');
  Fill(oracle, 0, length, &rng);
  *client = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(*client, nullptr);
  ASSERT_TRUE((*client)->Go(volume).has_value()) << c.DaemonLog();
  ASSERT_TRUE(WriteRange(**client, *oracle, 0, length));
  ASSERT_EQ((*client)->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
}

TEST_F(ReplicationDisklessE2eTest, ANodeWithoutAReplicaServesTheVolumeFromTheOthers) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "dv", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  std::mt19937_64 rng(23);
  std::string oracle(kVolBytes, '\0');
  Fill(&oracle, 0, 2 * kMiB, &rng);
  {
    auto client = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("dv").has_value()) << a.DaemonLog();
    ASSERT_TRUE(WriteRange(*client, oracle, 0, 2 * kMiB));
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }
  Detach(a, "dv");
  EXPECT_FALSE(HasLocalVolume(c, "dv")) << "node-c holds nothing of it yet";

  // node-c attaches: it becomes the target (epoch + 1), with no replica of its own.
  CommandResult attached = c.Shale({"volume", "attach", "dv", "-o", "json"});
  ASSERT_EQ(attached.exit_code, 0) << attached.Describe() << c.DaemonLog();
  EXPECT_EQ(attached.Json()["target"], "node-c") << attached.out;
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(c, "dv", &list);
  EXPECT_EQ(list["target"], "node-c") << list;
  ASSERT_EQ(replicas.size(), 2u) << list;
  EXPECT_FALSE(replicas.contains("node-c")) << list;
  for (const auto& [node, r] : replicas) {
    EXPECT_EQ(r["state"], "healthy") << node << r;
    EXPECT_EQ(r["local"], false) << node << r;
  }
  EXPECT_TRUE(HasLocalVolume(c, "dv")) << "the target's anchor";
  // Before serving, the new target compared the in-sync replicas where either holds data (the
  // 2 MiB written), not the whole volume: it has no log of node-a's writes.
  EXPECT_EQ(replicas["node-b"]["rebuild_total_bytes"], 2 * kMiB) << list;
  EXPECT_EQ(replicas["node-b"]["rebuild_sent_bytes"], 0u) << "they were equal: " << list;
  ExpectOneLineError(a.Shale({"volume", "attach", "dv"}), "attached on node node-c, whose lease");

  // Reads and writes through node-c's own export, from and to the replicas on node-a and node-b.
  auto client = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->Go("dv"), std::optional<uint64_t>(kVolBytes)) << c.DaemonLog();
  ExpectContent(*client, oracle, "node-c, before it wrote");
  Fill(&oracle, 4 * kMiB, 2 * kMiB, &rng);
  ASSERT_TRUE(WriteRange(*client, oracle, 4 * kMiB, 2 * kMiB));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  ExpectContent(*client, oracle, "node-c");

  // A snapshot taken on node-c: its copies on node-a and node-b are the snapshot, each labelled
  // with the holders; the same name again is refused; every copy has the same digest.
  const std::string oracle_at_snapshot = oracle;
  CommandResult snap = c.Shale({"snapshot", "create", "dv@s1", "-o", "json"});
  ASSERT_EQ(snap.exit_code, 0) << snap.Describe() << c.DaemonLog();
  EXPECT_EQ(snap.Json()["labels"]["shale.io/snapshot-replicas"], "node-a,node-b") << snap.out;
  ExpectOneLineError(c.Shale({"snapshot", "create", "dv@s1"}), "already exists");
  ExpectOneLineError(c.Shale({"snapshot", "show", "dv@s2"}), "copies are on node-a, node-b");
  for (Harness* h : {&a, &b, &c}) {  // node-c: as a replica holds it (LIST_SNAPSHOTS)
    CommandResult shown = h->Shale({"snapshot", "show", "dv@s1", "-o", "json"});
    ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
    EXPECT_EQ(shown.Json()["labels"]["shale.io/snapshot-replicas"], "node-a,node-b") << shown.out;
  }
  CommandResult verified = a.Shale({"snapshot", "verify", "dv@s1", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe() << a.DaemonLog();
  ASSERT_EQ(verified.Json()["replicas"].size(), 1u) << verified.out;
  EXPECT_EQ(verified.Json()["replicas"][0]["digest"], verified.Json()["digest"]) << verified.out;
  // node-c lists it (read from a replica's list: LIST_SNAPSHOTS), with its holders; a
  // volume filter that names another volume lists none of it.
  CommandResult listed = c.Shale({"snapshot", "list", "dv", "-o", "json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.Describe();
  const nlohmann::json snaps = listed.Json();
  ASSERT_EQ(snaps["snapshots"].size(), 1u) << snaps;
  EXPECT_EQ(snaps["snapshots"][0]["name"], "dv@s1") << snaps;
  EXPECT_EQ(snaps["snapshots"][0]["size_bytes"], kVolBytes) << snaps;
  EXPECT_EQ(snaps["snapshots"][0]["labels"]["shale.io/snapshot-replicas"], "node-a,node-b")
      << snaps;
  CommandResult other = c.Shale({"snapshot", "list", "nothere", "-o", "json"});
  ASSERT_EQ(other.exit_code, 0) << other.Describe();
  EXPECT_TRUE(other.Json()["snapshots"].empty()) << other.out;

  // Block status: every block is data (the anchor's allocation is empty and says nothing).
  if (const std::string qemu_img = FindProgram("qemu-img"); !qemu_img.empty()) {
    CommandResult map = RunProcess({qemu_img, "map", "-f", "raw", "--output=json", c.NbdUri("dv")},
                                   {.timeout = seconds(60)});
    ASSERT_EQ(map.exit_code, 0) << map.Describe();
    uint64_t data_bytes = 0;
    for (const auto& extent : map.Json()) {
      if (extent["data"] == true) data_bytes += extent["length"].get<uint64_t>();
    }
    EXPECT_EQ(data_bytes, kVolBytes) << map.out;
  } else {
    ADD_FAILURE() << "qemu-img is not installed (scripts/deps installs qemu-utils)";
  }

  // node-b is killed while node-c's client writes: no client error; node-b leaves the in-sync
  // set and, back, is rebuilt from node-a (a remote source) with only what it missed.
  b.KillDaemon();
  Fill(&oracle, 8 * kMiB, 1 * kMiB, &rng);
  ASSERT_TRUE(WriteRange(*client, oracle, 8 * kMiB, 1 * kMiB)) << c.DaemonLog();
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0) << c.DaemonLog();
  replicas = Replicas(c, "dv", &list);
  EXPECT_EQ(replicas["node-b"]["state"], "faulted") << list;
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  CommandResult wait = c.Shale({"replica", "wait", "dv", "--timeout", "60"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << c.DaemonLog();
  replicas = Replicas(c, "dv", &list);
  EXPECT_EQ(replicas["node-b"]["state"], "healthy") << list;
  EXPECT_GE(replicas["node-b"]["rebuild_total_bytes"].get<uint64_t>(), 1 * kMiB) << list;
  EXPECT_LE(replicas["node-b"]["rebuild_sent_bytes"].get<uint64_t>(), 1 * kMiB + 64 * 1024)
      << "only what it missed: " << list;
  EXPECT_NE(c.DaemonLog().find("replica in sync again"), std::string::npos);
  ExpectContent(*client, oracle, "node-c after the rebuild");
  client.reset();

  // Detached on node-c: nothing of the volume stays there; node-a serves every byte again.
  Detach(c, "dv");
  EXPECT_FALSE(HasLocalVolume(c, "dv")) << "the anchor went with the detach";
  ASSERT_EQ(a.Shale({"volume", "attach", "dv"}).exit_code, 0) << a.DaemonLog();
  client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("dv").has_value()) << a.DaemonLog();
  ExpectContent(*client, oracle, "node-a after node-c detached");
  client.reset();
  auto snapshot = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(snapshot, nullptr);
  ASSERT_TRUE(snapshot->Go("dv@s1").has_value()) << a.DaemonLog();
  ExpectContent(*snapshot, oracle_at_snapshot, "snapshot dv@s1 on node-a");
  snapshot.reset();
  // Deleted through node-c, which holds nothing of the volume now: every copy goes.
  CommandResult deleted = c.Shale({"snapshot", "delete", "dv@s1"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe() << c.DaemonLog();
  for (Harness* h : {&a, &b}) {
    EXPECT_TRUE(WaitFor(
        [&] {
          return h->Shale({"snapshot", "show", "dv@s1"}).exit_code != 0;
        },
        seconds(10)))
        << "the copy is deleted";
  }

  // Each replica alone holds the same bytes (the rebuild made node-b equal).
  for (Harness* h : {&a, &b, &c}) EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
  // (node-c holds nothing of it; were it attached there, its anchor alone would not be served.)
  for (Harness* h : {&a, &b}) {
    ASSERT_TRUE(h->StartDaemon());
    auto direct = NbdRawClient::Tcp(h->NbdAddress());
    ASSERT_NE(direct, nullptr);
    ASSERT_EQ(direct->Go("dv"), std::optional<uint64_t>(kVolBytes));
    ExpectContent(*direct, oracle, h == &a ? "node-a alone" : "node-b alone");
    EXPECT_EQ(h->StopDaemon(SIGTERM), 0);
  }
}

TEST_F(ReplicationDisklessE2eTest, ADeadTargetWithoutAReplicaIsTakenOverAndItsAnchorGoes) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  std::string oracle;
  {
    std::unique_ptr<NbdRawClient> client;
    ASSERT_NO_FATAL_FAILURE(ServedByNodeC(a, c, "kv", 29, 3 * kMiB, &oracle, &client));
    // Written, not flushed: may or may not survive, and must not break anything.
    std::string unflushed(kReplicationChunk, 'u');
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 12 * kMiB, kReplicationChunk, unflushed), 0);
    c.KillDaemon();
  }

  // No second writer while node-c's lease lives; node-a takes it over after, with every flushed
  // write.
  ExpectOneLineError(a.Shale({"volume", "attach", "kv"}), "attached on node node-c, whose lease");
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.Shale({"volume", "attach", "kv"}).exit_code == 0;
      },
      seconds(20)))
      << a.DaemonLog();
  nlohmann::json list;
  Replicas(a, "kv", &list);
  EXPECT_EQ(list["target"], "node-a") << list;
  auto client = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("kv").has_value()) << a.DaemonLog();
  for (uint64_t at = 0; at < 3 * kMiB; at += kReplicationChunk) {
    std::string data;
    ASSERT_EQ(client->Request(NbdRawClient::kCmdRead, at, kReplicationChunk, "", &data), 0);
    ASSERT_TRUE(data == oracle.substr(at, kReplicationChunk)) << "flushed write lost at " << at;
  }
  client.reset();

  // node-c started alone (outside the cluster): its anchor holds none of the data and is never
  // served as if it were the volume.
  ASSERT_TRUE(c.StartDaemon());
  EXPECT_TRUE(HasLocalVolume(c, "kv")) << "the anchor is still there";
  {
    auto alone = NbdRawClient::Tcp(c.NbdAddress());
    ASSERT_NE(alone, nullptr);
    EXPECT_FALSE(alone->Go("kv").has_value()) << "an anchor served as the volume";
  }
  EXPECT_EQ(c.StopDaemon(SIGTERM), 0) << c.DaemonLog();

  // node-c back: it serves nothing (the membership names node-a) and its anchor is removed.
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  auto stale = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(stale, nullptr);
  EXPECT_FALSE(stale->Go("kv").has_value()) << "the old target never serves it again";
  stale.reset();
  EXPECT_TRUE(WaitFor([&] { return !HasLocalVolume(c, "kv"); }, seconds(40)))
      << "the anchor of a volume taken over is removed: " << c.DaemonLog();
  EXPECT_NE(c.DaemonLog().find("target-only anchor"), std::string::npos) << c.DaemonLog();
  Replicas(a, "kv", &list);
  EXPECT_EQ(list["target"], "node-a") << list;
  EXPECT_EQ(list["in_sync"].size(), 2u) << "node-c's return changed no replica: " << list;
}

// A cascading failure under a target without a replica: the only in-sync replica (node-b) is
// gone and node-a's is behind. node-c refuses to serve until `force-recover --from node-a` (any
// replica's node: node-c has none of its own), then serves node-a's data; node-b, stale, is
// compared and rebuilt when it returns.
TEST_F(ReplicationDisklessE2eTest, ACascadeIsRecoveredFromAnyReplicaByTheTargetWithoutOne) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  std::string oracle;
  {
    std::unique_ptr<NbdRawClient> client;
    ASSERT_NO_FATAL_FAILURE(ServedByNodeC(a, c, "cv", 31, 4 * kMiB, &oracle, &client));
  }
  // The record node-c would have left: node-a left, node-b took the writes; node-b is gone.
  EXPECT_EQ(c.StopDaemon(SIGTERM), 0) << c.DaemonLog();
  b.KillDaemon();
  ASSERT_NO_FATAL_FAILURE(RecordCascade(*etcd_, "cv"));

  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  {
    auto nbd = NbdRawClient::Tcp(c.NbdAddress());
    ASSERT_NE(nbd, nullptr);
    EXPECT_FALSE(nbd->Go("cv").has_value()) << "no in-sync replica is reachable: nothing served";
  }
  ExpectOneLineError(c.Shale({"volume", "force-recover", "cv", "--from", "node-c"}),
                     "holds no replica");
  CommandResult recovered = c.Shale({"volume", "force-recover", "cv", "--from", "node-a"});
  ASSERT_EQ(recovered.exit_code, 0) << recovered.Describe() << c.DaemonLog();
  EXPECT_NE(recovered.out.find("held by node-b) may be lost"), std::string::npos) << recovered.out;
  std::unique_ptr<NbdRawClient> nbd;
  ASSERT_TRUE(WaitFor(
      [&] {
        nbd = NbdRawClient::Tcp(c.NbdAddress());
        return nbd != nullptr && nbd->Go("cv").has_value();
      },
      seconds(20)))
      << c.DaemonLog();
  ExpectContent(*nbd, oracle, "node-c after force-recover from node-a");
  nbd.reset();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(c, "cv", &list);
  EXPECT_EQ(replicas["node-a"]["state"], "healthy") << list;
  EXPECT_EQ(replicas["node-b"]["state"], "stale") << list;

  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  CommandResult wait = c.Shale({"replica", "wait", "cv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << c.DaemonLog();
  EXPECT_EQ(Replicas(c, "cv")["node-b"]["rebuild_total_bytes"], kVolBytes)
      << "a stale replica is compared everywhere";
}

// Created on a node that cannot take a replica (cordoned here; also a full pool, a node selector
// it does not meet, or --replica-nodes without it): every replica goes elsewhere and the node
// serves the volume through its anchor. Deleted from a node holding nothing of it: refused while
// another node's target lives, then the membership and every replica go.
TEST_F(ReplicationDisklessE2eTest, ACordonedNodeCreatesAVolumeItHoldsNoReplicaOf) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(c.Shale({"node", "cordon", "node-c"}).exit_code, 0);
  ExpectOneLineError(c.Shale({"volume", "create", "nv", "--size", "16M", "--replicas", "3"}),
                     "node-c: it is cordoned");
  CommandResult made = c.Shale({"volume", "create", "nv", "--size", "16M", "--replicas", "2"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << c.DaemonLog();
  EXPECT_NE((made.out + made.err).find("holds no replica (it is cordoned"), std::string::npos)
      << made.Describe();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(c, "nv", &list);
  EXPECT_EQ(list["target"], "node-c") << list;
  EXPECT_EQ(list["detached"], false) << list;
  ASSERT_EQ(replicas.size(), 2u) << list;
  EXPECT_TRUE(replicas.contains("node-a") && replicas.contains("node-b")) << list;
  EXPECT_TRUE(HasLocalVolume(c, "nv")) << "the target's anchor";
  CommandResult shown = c.Shale({"volume", "show", "nv", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["labels"]["shale.io/target-only"], "true") << shown.out;

  // Served by node-c from the replicas on node-a and node-b.
  std::mt19937_64 rng(31);
  std::string oracle(kVolBytes, '\0');
  Fill(&oracle, kMiB, 3 * kMiB, &rng);
  {
    auto client = NbdRawClient::Tcp(c.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_EQ(client->Go("nv"), std::optional<uint64_t>(kVolBytes)) << c.DaemonLog();
    ASSERT_TRUE(WriteRange(*client, oracle, kMiB, 3 * kMiB));
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
    ExpectContent(*client, oracle, "node-c");
  }
  Detach(c, "nv");
  EXPECT_FALSE(HasLocalVolume(c, "nv")) << "nothing of it stays on node-c";

  // A snapshot asked of node-c, which holds nothing of it now: attached there for the snapshot
  // (taken on both replicas), then detached again.
  CommandResult snap = c.Shale({"snapshot", "create", "nv@detached", "-o", "json"});
  ASSERT_EQ(snap.exit_code, 0) << snap.Describe() << c.DaemonLog();
  EXPECT_EQ(snap.Json()["labels"]["shale.io/snapshot-replicas"], "node-a,node-b") << snap.out;
  EXPECT_FALSE(HasLocalVolume(c, "nv")) << "detached again after the snapshot";
  Replicas(c, "nv", &list);
  EXPECT_EQ(list["detached"], true) << list;
  ExpectOneLineError(c.Shale({"snapshot", "create", "nv@detached"}), "already exists");

  // The data is on the replicas: node-a serves it.
  ASSERT_EQ(a.Shale({"volume", "attach", "nv"}).exit_code, 0) << a.DaemonLog();
  {
    auto client = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("nv").has_value()) << a.DaemonLog();
    ExpectContent(*client, oracle, "node-a");
  }
  // While node-a serves it: node-a takes the snapshot asked of node-c (TAKE_SNAPSHOT); node-c
  // answers with a replica's copy, and lists both.
  snap = c.Shale({"snapshot", "create", "nv@served", "-o", "json"});
  ASSERT_EQ(snap.exit_code, 0) << snap.Describe() << c.DaemonLog();
  EXPECT_EQ(snap.Json()["name"], "nv@served") << snap.out;
  CommandResult listed = c.Shale({"snapshot", "list", "nv", "-o", "json"});
  ASSERT_EQ(listed.exit_code, 0) << listed.Describe();
  const nlohmann::json snaps = listed.Json();
  ASSERT_EQ(snaps["snapshots"].size(), 2u) << snaps;
  ASSERT_EQ(c.Shale({"snapshot", "delete", "nv@detached"}).exit_code, 0) << c.DaemonLog();
  EXPECT_NE(b.Shale({"snapshot", "show", "nv@detached"}).exit_code, 0) << "node-b's copy went";
  // Deleted from node-c, which holds nothing of it: not while node-a serves it.
  ExpectOneLineError(c.Shale({"volume", "delete", "nv"}), "attached on node node-a, whose lease");
  EXPECT_EQ(Replicas(c, "nv").size(), 2u) << "nothing was deleted";
  Detach(a, "nv");
  CommandResult deleted = c.Shale({"volume", "delete", "nv"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe() << c.DaemonLog();
  EXPECT_NE(c.Shale({"replica", "list", "nv"}).exit_code, 0) << "its membership is gone";
  EXPECT_FALSE(HasLocalVolume(a, "nv")) << a.DaemonLog();
  EXPECT_FALSE(HasLocalVolume(b, "nv")) << b.DaemonLog();
  ExpectOneLineError(c.Shale({"volume", "delete", "nv"}), "not found");
  // Its snapshot outlives it on node-a and node-b. Deleted through node-c (which names it in a
  // VolumeSnapshotContent: it took it), whose volume record with the holders is gone: every
  // node is asked, and the copies go.
  for (Harness* h : {&a, &b}) {
    EXPECT_EQ(h->Shale({"snapshot", "show", "nv@served"}).exit_code, 0) << "kept after the volume";
  }
  CommandResult after = c.Shale({"snapshot", "delete", "nv@served"});
  ASSERT_EQ(after.exit_code, 0) << after.Describe() << c.DaemonLog();
  for (Harness* h : {&a, &b}) {
    EXPECT_NE(h->Shale({"snapshot", "show", "nv@served"}).exit_code, 0) << h->DaemonLog();
  }
  ExpectOneLineError(c.Shale({"snapshot", "delete", "nv@served"}), "not found");
  // A local volume's snapshot outliving it on node-a is no replicated copy: asked of node-c, it
  // stays.
  ASSERT_EQ(a.Shale({"volume", "create", "lv", "--size", "16M"}).exit_code, 0);
  ASSERT_EQ(a.Shale({"snapshot", "create", "lv@s"}).exit_code, 0);
  ASSERT_EQ(a.Shale({"volume", "delete", "lv"}).exit_code, 0) << a.DaemonLog();
  ExpectOneLineError(c.Shale({"snapshot", "delete", "lv@s"}), "not found");
  EXPECT_EQ(a.Shale({"snapshot", "show", "lv@s"}).exit_code, 0) << a.DaemonLog();

  // A clone starts from this node's copy: a node that cannot take a replica refuses it.
  ASSERT_EQ(c.Shale({"node", "uncordon", "node-c"}).exit_code, 0);
  ASSERT_EQ(c.Shale({"volume", "create", "src", "--size", "16M"}).exit_code, 0);
  ExpectOneLineError(c.Shale({"clone", "create", "src", "cl", "--replicas", "2", "--replica-nodes",
                              "node-a,node-b"}),
                     "starts from this node's copy");

  // --replica-nodes without this node: served through an anchor too. Its target (node-a) dies
  // with it attached: node-c, holding nothing, may delete it once node-a's lease expired.
  ASSERT_EQ(c.Shale({"volume", "create", "dv2", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-a,node-b"})
                .exit_code,
            0);
  EXPECT_TRUE(HasLocalVolume(c, "dv2")) << "the target's anchor";
  Detach(c, "dv2");
  ASSERT_EQ(a.Shale({"volume", "attach", "dv2"}).exit_code, 0) << a.DaemonLog();
  a.KillDaemon();
  ExpectOneLineError(c.Shale({"volume", "delete", "dv2"}), "whose lease lives");
  CommandResult dead;
  EXPECT_TRUE(WaitFor(
      [&] {
        dead = c.Shale({"volume", "delete", "dv2"});
        return dead.exit_code == 0;
      },
      seconds(20)))
      << dead.Describe() << c.DaemonLog();
  EXPECT_NE(c.Shale({"replica", "list", "dv2"}).exit_code, 0) << "its membership is gone";
  EXPECT_FALSE(HasLocalVolume(b, "dv2")) << "node-b's replica went: " << b.DaemonLog();
}

// A group snapshot on a node that serves one member without a replica: that member's copies on
// its replicas are its member snapshot, cut at the same instant as the local member's freeze;
// shown as part of the group, deleted with it.
TEST_F(ReplicationDisklessE2eTest, AGroupSnapshotTakesAVolumeServedWithoutAReplica) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  std::string oracle;
  std::unique_ptr<NbdRawClient> client;
  ASSERT_NO_FATAL_FAILURE(ServedByNodeC(a, c, "gd", 37, 2 * kMiB, &oracle, &client));
  ASSERT_EQ(c.Shale({"volume", "create", "gl", "--size", "16M"}).exit_code, 0);
  std::string local_oracle(kVolBytes, '\0');
  std::mt19937_64 rng(41);
  Fill(&local_oracle, 0, kMiB, &rng);
  auto local = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(local, nullptr);
  ASSERT_TRUE(local->Go("gl").has_value());
  ASSERT_TRUE(WriteRange(*local, local_oracle, 0, kMiB));

  CommandResult made = c.Shale(
      {"snapshot", "create-group", "exp", "gd", "gl", "--label", "notebook=nb-3", "-o", "json"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << c.DaemonLog();
  const std::string gd_at_group = oracle, gl_at_group = local_oracle;
  // Written after the cut: in neither member.
  Fill(&oracle, 0, kMiB, &rng);
  ASSERT_TRUE(WriteRange(*client, oracle, 0, kMiB));
  Fill(&local_oracle, 0, kMiB, &rng);
  ASSERT_TRUE(WriteRange(*local, local_oracle, 0, kMiB));
  ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  CommandResult shown = c.Shale({"snapshot", "show-group", "exp", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  const nlohmann::json group = shown.Json();
  EXPECT_EQ(group["snapshots"], nlohmann::json::array({"gd@exp", "gl@exp"})) << group;
  EXPECT_TRUE(group["missing"].is_null() || group["missing"].empty()) << group;
  for (Harness* h : {&a, &b}) {
    CommandResult copy = h->Shale({"snapshot", "show", "gd@exp", "-o", "json"});
    ASSERT_EQ(copy.exit_code, 0) << copy.Describe();
    const nlohmann::json labels = copy.Json()["labels"];
    EXPECT_EQ(labels["shale.io/group"], "exp") << copy.out;
    EXPECT_EQ(labels["notebook"], "nb-3") << copy.out;
    EXPECT_EQ(labels["shale.io/snapshot-replicas"], "node-a,node-b") << copy.out;
  }
  EXPECT_EQ(ShowOnNode(c, "gl@exp")["labels"]["shale.io/group"], "exp");
  {
    auto snap = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(snap, nullptr);
    ASSERT_TRUE(snap->Go("gd@exp").has_value()) << a.DaemonLog();
    ExpectContent(*snap, gd_at_group, "gd@exp on node-a");
    auto mine = NbdRawClient::Tcp(c.NbdAddress());
    ASSERT_NE(mine, nullptr);
    ASSERT_TRUE(mine->Go("gl@exp").has_value()) << c.DaemonLog();
    ExpectContent(*mine, gl_at_group, "gl@exp on node-c");
  }

  // Deleted with the group: node-c's member and both copies on the replicas.
  CommandResult deleted = c.Shale({"snapshot", "delete-group", "exp"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe() << c.DaemonLog();
  for (Harness* h : {&a, &b}) {
    EXPECT_NE(h->Shale({"snapshot", "show", "gd@exp"}).exit_code, 0) << "the copy went";
  }
  EXPECT_NE(c.Shale({"snapshot", "show", "gl@exp"}).exit_code, 0);
  EXPECT_NE(c.Shale({"snapshot", "show-group", "exp"}).exit_code, 0);
}

}  // namespace
}  // namespace shale::e2e
