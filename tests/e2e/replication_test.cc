// Replicated volumes end to end (issue 11): a real etcd (tests/cluster/etcd_process.h) and three
// shaled daemons on loopback with replica listeners; `shale volume create --replicas 3` on one
// of them (the target), data written through its NBD export, a replica daemon killed with -9
// while writes go on (no client error), `shale replica list` showing it faulted, the daemon
// restarted, `shale replica wait` returning once the target rebuilt it incrementally, then the
// data read back through the target and from every replica node (each daemon restarted alone,
// outside the cluster, so its replica volume can be exported) and compared with an oracle.
// Skipped (with the reason) where etcd is not installed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cluster/cluster_store.h"
#include "cluster/etcd_client.h"
#include "tests/cluster/etcd_process.h"
#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/metrics_scrape.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"
#include "tls/testing.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;

constexpr uint64_t kVolBytes = 64ull << 20;
constexpr uint32_t kChunk = kReplicationChunk;

using ReplicationE2eTest = EtcdE2eTest;

// shale_replica_state of `replica` of volume `volume` on `h`'s /metrics: the state whose series
// is 1 ("" when none is, "?" when the series are not all there); checked by promtool when it is
// installed.
std::string MetricState(Harness& h, const std::string& volume, const std::string& replica) {
  const std::string text = HttpGet(h.MetricsAddress(), "/metrics");
  if (const std::string promtool = FindProgram("promtool"); !promtool.empty()) {
    EXPECT_EQ(PromtoolCheckMetrics(promtool, h.root() + "/metrics.txt", text), "");
  }
  std::string state;
  for (const char* s : {"healthy", "rebuilding", "faulted"}) {
    const std::optional<double> v =
        Sample(text, "shale_replica_state",
               "volume=\"" + volume + "\",replica=\"" + replica + "\",state=\"" + s + "\"");
    if (!v) return "?";
    if (*v == 1) state += s;
  }
  return state;
}

// The sample of `series` for a replica of `volume` on `h`'s /metrics (-1 when absent).
double MetricOfReplica(Harness& h, const std::string& series, const std::string& volume,
                       const std::string& replica) {
  return Sample(HttpGet(h.MetricsAddress(), "/metrics"), series,
                "volume=\"" + volume + "\",replica=\"" + replica + "\"")
      .value_or(-1);
}

// shale_replica_rebuild_bytes_total (or with `sent`, _sent_bytes_total) of a replica on `h`.
double MetricRebuildBytes(Harness& h, const std::string& volume, const std::string& replica,
                          bool sent) {
  return MetricOfReplica(
      h, sent ? "shale_replica_rebuild_sent_bytes_total" : "shale_replica_rebuild_bytes_total",
      volume, replica);
}

// How many of a replica's data writes shale_replica_write_latency_seconds counted on `h`.
double MetricWritesTimed(Harness& h, const std::string& volume, const std::string& replica) {
  return MetricOfReplica(h, "shale_replica_write_latency_seconds_count", volume, replica);
}

TEST_F(ReplicationE2eTest, CreateRefusesWhatCannotBePlaced) {
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));

  // More replicas than nodes: one line naming how many nodes could take one; nothing made.
  CommandResult three = a.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "3"});
  ExpectOneLineError(three, "3 replicas need 3 nodes that can take one; 2 can");
  EXPECT_EQ(a.Shale({"volume", "show", "v"}).exit_code, 1) << "no local volume left behind";
  EXPECT_EQ(b.Shale({"volume", "show", "v"}).exit_code, 1) << "no remote replica left behind";
  ExpectOneLineError(a.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "2",
                              "--replica-nodes", "node-a,node-x"}),
                     "node-x is not in the cluster");
  ExpectOneLineError(
      a.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "2", "--min-in-sync", "3"}),
      "--min-in-sync 3 is more than --replicas 2");

  // A cordoned node takes no new replica (what it holds stays); uncordon undoes it. The cordon
  // is in etcd: asked of node-a, it holds on node-b and is listed by both.
  ASSERT_EQ(a.Shale({"volume", "create", "before", "--size", "16M", "--replicas", "2"}).exit_code,
            0);
  CommandResult cordoned = a.Shale({"node", "cordon", "node-b"});
  ASSERT_EQ(cordoned.exit_code, 0) << cordoned.Describe();
  EXPECT_NE(cordoned.out.find("node node-b cordoned"), std::string::npos) << cordoned.out;
  const nlohmann::json listed = b.Shale({"node", "list", "-o", "json"}).Json();
  EXPECT_EQ(listed["nodes"][1]["name"], "node-b");
  EXPECT_EQ(listed["nodes"][1]["cordoned"], true) << listed;
  EXPECT_EQ(listed["nodes"][0]["cordoned"], false) << listed;
  EXPECT_NE(a.Shale({"node", "list"}).out.find("up, cordoned"), std::string::npos);
  ExpectOneLineError(a.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "2"}),
                     "node-b: it is cordoned (shale node uncordon node-b)");
  EXPECT_EQ(b.Shale({"volume", "show", "v"}).exit_code, 1) << "no remote replica left behind";
  EXPECT_EQ(Replicas(a, "before").size(), 2u) << "what node-b holds stays";
  ExpectOneLineError(a.Shale({"node", "cordon", "node-x"}), "node node-x is not known");
  ASSERT_EQ(b.Shale({"node", "uncordon", "node-b"}).exit_code, 0);
  ASSERT_EQ(
      a.Shale({"volume", "create", "uncordoned", "--size", "16M", "--replicas", "2"}).exit_code, 0);
  EXPECT_EQ(Replicas(a, "uncordoned").size(), 2u);

  // A peer down at create: refused, nothing left behind on either node.
  b.KillDaemon();
  ASSERT_TRUE(WaitFor(
      [&] {
        CommandResult r = a.Shale({"node", "list", "-o", "json"});
        return r.exit_code == 0 && r.Json()["nodes"][1]["state"] == "down";
      },
      seconds(20)));
  ExpectOneLineError(a.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "2"}),
                     "2 replicas need 2 nodes");
  EXPECT_EQ(a.Shale({"volume", "show", "v"}).exit_code, 1);

  // Outside a cluster --replicas is refused with the reason.
  Harness single;
  ASSERT_TRUE(single.StartDaemon());
  ExpectOneLineError(single.Shale({"volume", "create", "v", "--size", "16M", "--replicas", "2"}),
                     "needs a shaled in a cluster");
  EXPECT_EQ(single.Shale({"volume", "show", "v"}).exit_code, 1);
}

// Writes two chunks of fresh random bytes at each of `offsets` through `nbd` (and into `oracle`),
// then flushes; returns the bytes written, 0 after an NBD error (recorded as a test failure).
uint64_t WriteFresh(NbdRawClient& nbd, std::string* oracle, std::mt19937_64* rng,
                    std::initializer_list<uint64_t> offsets) {
  uint64_t written = 0;
  for (uint64_t at : offsets) {
    std::string fresh(kChunk * 2, '\0');
    for (char& ch : fresh) ch = static_cast<char>((*rng)());
    oracle->replace(at, fresh.size(), fresh);
    if (!WriteRange(nbd, *oracle, at, fresh.size())) return 0;
    written += fresh.size();
  }
  if (nbd.Request(NbdRawClient::kCmdFlush, 0, 0) != 0) {
    ADD_FAILURE() << "NBD flush failed";
    return 0;
  }
  return written;
}

TEST_F(ReplicationE2eTest, KilledReplicaIsRebuiltIncrementallyWhileWritesGoOn) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));

  CommandResult made = a.Shale({"volume", "create", "rv", "--size", "64M", "--replicas", "3"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "rv", &list);
  ASSERT_EQ(replicas.size(), 3u) << list;
  for (const auto& [node, r] : replicas) EXPECT_EQ(r["state"], "healthy") << node << r;
  EXPECT_EQ(list["epoch"], 1) << list;
  EXPECT_EQ(list["target"], "node-a") << list;
  EXPECT_EQ(replicas["node-a"]["local"], true);
  for (Harness* h : {&b, &c}) {
    EXPECT_EQ(h->Shale({"volume", "show", "rv"}).exit_code, 0) << "replica placed on the peer";
  }
  // The target's metrics show every replica healthy; a replica's node has no series of it.
  for (const char* node : {"node-a", "node-b", "node-c"}) {
    EXPECT_EQ(MetricState(a, "rv", node), "healthy") << node;
    EXPECT_EQ(MetricRebuildBytes(a, "rv", node, false), 0) << node;
  }
  EXPECT_EQ(MetricState(b, "rv", "node-b"), "?") << "series only on the target";
  // A replica node does not serve the volume itself (its writes would bypass the target).
  {
    std::unique_ptr<NbdRawClient> direct = NbdRawClient::Tcp(b.NbdAddress());
    ASSERT_NE(direct, nullptr);
    EXPECT_FALSE(direct->Go("rv").has_value());
  }

  std::mt19937_64 rng(11);
  std::string oracle(kVolBytes, '\0');  // what was never written reads as zeros
  for (size_t i = 0; i < (32ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("rv"), std::optional<uint64_t>(kVolBytes));
  ASSERT_TRUE(WriteRange(*nbd, oracle, 0, 32ull << 20));
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  // The target times every replica's data writes (a remote replica's: the round trip).
  std::map<std::string, double> timed;
  for (const char* node : {"node-a", "node-b", "node-c"}) {
    timed[node] = MetricWritesTimed(a, "rv", node);
    EXPECT_GT(timed[node], 0) << node;
  }

  // kill -9 of a replica daemon; writes go on without a client error.
  c.KillDaemon();
  const uint64_t degraded_bytes =
      WriteFresh(*nbd, &oracle, &rng, {40ull << 20, 44ull << 20, 50ull << 20, 63ull << 20});
  ASSERT_GT(degraded_bytes, 0u);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "rv")["node-c"]["state"] == "faulted"; }, seconds(20)))
      << Replicas(a, "rv")["node-c"];
  replicas = Replicas(a, "rv", &list);
  EXPECT_EQ(replicas["node-b"]["state"], "healthy") << list;
  EXPECT_EQ(list["epoch"], 2) << "the leave was recorded with epoch + 1: " << list;
  EXPECT_EQ(list["in_sync"].size(), 2u) << list;
  EXPECT_EQ(replicas["node-c"]["generation"], 1) << list;
  EXPECT_EQ(MetricState(a, "rv", "node-c"), "faulted");
  EXPECT_EQ(MetricState(a, "rv", "node-b"), "healthy");
  EXPECT_GT(MetricWritesTimed(a, "rv", "node-b"), timed["node-b"]) << "the writes went on";
  EXPECT_EQ(MetricWritesTimed(a, "rv", "node-c"), timed["node-c"]) << "none reached node-c";

  // The replica's daemon returns: the target reconnects and rebuilds what changed.
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  CommandResult wait = a.Shale({"replica", "wait", "rv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  replicas = Replicas(a, "rv", &list);
  for (const auto& [node, r] : replicas) EXPECT_EQ(r["state"], "healthy") << node << r;
  EXPECT_EQ(list["epoch"], 3) << list;
  const uint64_t sent = replicas["node-c"]["rebuild_sent_bytes"].get<uint64_t>();
  std::cout << "rebuild sent " << sent << " bytes for " << degraded_bytes
            << " bytes written while node-c was out\n";
  EXPECT_GE(sent, degraded_bytes) << "everything written meanwhile was sent: " << list;
  EXPECT_LE(sent, degraded_bytes * 11 / 10 + (64 << 10)) << "only what changed: " << list;
  EXPECT_EQ(replicas["node-c"]["rebuilds"], 1) << list;
  EXPECT_EQ(replicas["node-c"]["generation"], 3) << list;
  // The metrics count the rebuild's bytes as `replica list` does.
  EXPECT_EQ(MetricState(a, "rv", "node-c"), "healthy");
  EXPECT_EQ(MetricRebuildBytes(a, "rv", "node-c", true), static_cast<double>(sent));
  EXPECT_GE(MetricRebuildBytes(a, "rv", "node-c", false), static_cast<double>(sent));
  EXPECT_EQ(MetricRebuildBytes(a, "rv", "node-b", false), 0);

  // Everything reads back through the target.
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();

  // Every replica holds the same bytes: each node restarted alone (outside the cluster) exports
  // its replica volume.
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  for (Harness* h : {&b, &c}) {
    EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
    ASSERT_TRUE(h->StartDaemon());
    std::unique_ptr<NbdRawClient> direct = NbdRawClient::Tcp(h->NbdAddress());
    ASSERT_NE(direct, nullptr);
    ASSERT_EQ(direct->Go("rv"), std::optional<uint64_t>(kVolBytes));
    ExpectContent(*direct, oracle, h == &b ? "node-b" : "node-c");
  }
}

// Replica traffic over mutual TLS between real daemons (issue 16, point 4): node-a and node-b,
// each with `--cluster-tls-dir` holding its certificate of the cluster's CA (the listener then
// refuses anything but TLS, so every replica connection below is TLS), replicate a volume; node-b
// is killed while writes go on, restarted and rebuilt incrementally; both copies equal the
// oracle. (A peer of another CA or in plain TCP is refused: ClusterE2eTest.ReplicaTraffic...)
TEST_F(ReplicationE2eTest, TwoNodesReplicateAndRebuildOverMutualTls) {
  if (!tls::testing::HaveTools()) GTEST_SKIP() << "certtool not installed (gnutls-bin)";
  Harness a, b;
  tls::testing::Pki pki(a.root() + "/pki");
  ASSERT_TRUE(pki.MakeCa("ca").ok());
  ASSERT_TRUE(pki.MakeCert("ca", "node-a", {.cn = "node-a"}).ok());
  ASSERT_TRUE(pki.MakeCert("ca", "node-b", {.cn = "node-b"}).ok());
  ASSERT_TRUE(pki.MutualDir("ca", "node-a", a.root() + "/tls").ok());
  ASSERT_TRUE(pki.MutualDir("ca", "node-b", b.root() + "/tls").ok());
  auto flags = [&](Harness& h, const std::string& name) {
    std::vector<std::string> f = NodeFlags(h, *etcd_, name);
    f.insert(f.end(), {"--cluster-tls-dir", h.root() + "/tls"});
    return f;
  };
  ASSERT_TRUE(a.StartDaemon(flags(a, "node-a")));
  ASSERT_TRUE(b.StartDaemon(flags(b, "node-b")));
  ASSERT_TRUE(WaitPublished(a, 2));
  for (Harness* h : {&a, &b}) {
    EXPECT_NE(h->DaemonLog().find("endpoint=tls://"), std::string::npos)
        << "the replica listener speaks TLS: " << h->DaemonLog();
  }

  const uint64_t size = 32ull << 20;
  CommandResult made = a.Shale({"volume", "create", "tv", "--size", "32M", "--replicas", "2"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "tv");
  ASSERT_EQ(replicas.size(), 2u);
  for (const auto& [node, r] : replicas) EXPECT_EQ(r["state"], "healthy") << node << r;

  std::mt19937_64 rng(16);
  std::string oracle(size, '\0');
  for (size_t i = 0; i < (16ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("tv"), std::optional<uint64_t>(size));
  ASSERT_TRUE(WriteRange(*nbd, oracle, 0, 16ull << 20));
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  b.KillDaemon();
  const uint64_t degraded_bytes = WriteFresh(*nbd, &oracle, &rng, {4ull << 20, 20ull << 20});
  ASSERT_GT(degraded_bytes, 0u);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "tv")["node-b"]["state"] == "faulted"; }, seconds(20)))
      << Replicas(a, "tv")["node-b"];

  ASSERT_TRUE(b.StartDaemon(flags(b, "node-b")));
  CommandResult wait = a.Shale({"replica", "wait", "tv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  replicas = Replicas(a, "tv");
  EXPECT_EQ(replicas["node-b"]["state"], "healthy") << replicas["node-b"];
  const uint64_t sent = replicas["node-b"]["rebuild_sent_bytes"].get<uint64_t>();
  EXPECT_GE(sent, degraded_bytes) << replicas["node-b"];
  EXPECT_LE(sent, degraded_bytes * 11 / 10 + (64 << 10)) << "only what changed";
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();

  // node-b's copy, exported by node-b alone (outside the cluster), equals the oracle.
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  ASSERT_TRUE(b.StartDaemon());
  std::unique_ptr<NbdRawClient> direct = NbdRawClient::Tcp(b.NbdAddress());
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(direct->Go("tv"), std::optional<uint64_t>(size));
  ExpectContent(*direct, oracle, "node-b");
}

// `shale qos rebuild-bps` changes the cap of a running rebuild: at 256 KiB/s the 16 MiB left
// would take about a minute; lifted, the rebuild ends within seconds. Outside cluster mode and
// with a bad rate the command says why.
TEST_F(ReplicationE2eTest, RebuildCapChangesLive) {
  Harness a, b;
  std::vector<std::string> target_flags = NodeFlags(a, *etcd_, "node-a");
  target_flags.insert(target_flags.end(), {"--rebuild-bps", "256K"});
  ASSERT_TRUE(a.StartDaemon(target_flags));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(WaitPublished(a, 2));
  ASSERT_EQ(a.Shale({"volume", "create", "cv", "--size", "64M", "--replicas", "2"}).exit_code, 0);
  CommandResult shown = a.Shale({"qos", "rebuild-bps", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["rebuild_bps"], 256 << 10) << shown.out;
  EXPECT_EQ(shown.Json()["node"], "node-a") << shown.out;

  std::mt19937_64 rng(31);
  std::string oracle(kVolBytes, '\0');
  auto nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("cv"), std::optional<uint64_t>(kVolBytes));
  b.KillDaemon();
  // One write in each of 16 regions 4 MiB apart: 16 MiB of regions to rebuild.
  for (uint64_t at = 0; at < kVolBytes; at += 4ull << 20) {
    for (size_t i = 0; i < kChunk; ++i) oracle[at + i] = static_cast<char>(rng());
    ASSERT_TRUE(WriteRange(*nbd, oracle, at, kChunk));
  }
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "cv")["node-b"]["state"] == "faulted"; }, seconds(20)));

  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(WaitFor(
      [&] {
        std::map<std::string, nlohmann::json> r = Replicas(a, "cv", nullptr, /*quiet=*/true);
        return r["node-b"]["state"] == "rebuilding" &&
               r["node-b"]["rebuild_done_bytes"].get<uint64_t>() > 0;
      },
      seconds(30)))
      << a.DaemonLog();
  // Capped: the rebuild cannot end within 10 s (16 MiB at 256 KiB/s).
  CommandResult capped = a.Shale({"replica", "wait", "cv", "--timeout", "3"});
  EXPECT_NE(capped.exit_code, 0) << "the cap did not hold: " << capped.Describe();
  shown = a.Shale({"qos", "rebuild-bps", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["rebuilding"], nlohmann::json::array({"cv"})) << shown.out;

  // Lifted live: the same rebuild ends within seconds.
  CommandResult lifted = a.Shale({"qos", "rebuild-bps", "none"});
  ASSERT_EQ(lifted.exit_code, 0) << lifted.Describe();
  EXPECT_NE(lifted.out.find("none"), std::string::npos) << lifted.out;
  CommandResult wait = a.Shale({"replica", "wait", "cv", "--timeout", "20"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  EXPECT_EQ(Replicas(a, "cv")["node-b"]["rebuilds"], 1);
  EXPECT_NE(a.DaemonLog().find("rebuild rate cap changed"), std::string::npos);
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();

  // A bad rate is a usage error; a node outside a cluster refuses.
  CommandResult bad = a.Shale({"qos", "rebuild-bps", "fast"});
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  EXPECT_NE(bad.err.find("RATE 'fast'"), std::string::npos) << bad.err;
  Harness single;
  ASSERT_TRUE(single.StartDaemon());
  CommandResult alone = single.Shale({"qos", "rebuild-bps", "64M"});
  EXPECT_NE(alone.exit_code, 0);
  EXPECT_NE(alone.err.find("not in a cluster"), std::string::npos) << alone.err;
}

// The target itself is killed while a replica is out: it opens the volume again at its restart
// (from the local replica's label and the membership key) and, once the replica returns, the
// changed-region record it persisted still makes the rebuild incremental.
TEST_F(ReplicationE2eTest, TargetRestartKeepsTheRebuildIncremental) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "tv", "--size", "64M", "--replicas", "3"}).exit_code, 0);

  std::mt19937_64 rng(29);
  std::string oracle(kVolBytes, '\0');
  for (size_t i = 0; i < (16ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  auto nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("tv"), std::optional<uint64_t>(kVolBytes));
  ASSERT_TRUE(WriteRange(*nbd, oracle, 0, 16ull << 20));
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  c.KillDaemon();
  uint64_t degraded_bytes = 0;
  for (uint64_t at : {20ull << 20, 33ull << 20, 60ull << 20}) {
    for (size_t i = 0; i < kChunk; ++i) oracle[at + i] = static_cast<char>(rng());
    ASSERT_TRUE(WriteRange(*nbd, oracle, at, kChunk));
    degraded_bytes += kChunk;
  }
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "tv")["node-c"]["state"] == "faulted"; }, seconds(20)));

  // kill -9 of the target; it serves the volume again after its restart, node-c still out.
  nbd.reset();
  a.KillDaemon();
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "tv", &list);
  EXPECT_EQ(replicas["node-b"]["state"], "healthy") << list;
  EXPECT_EQ(replicas["node-c"]["state"], "faulted") << list;
  nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("tv"), std::optional<uint64_t>(kVolBytes)) << a.DaemonLog();
  const uint64_t late = 45ull << 20;
  for (size_t i = 0; i < kChunk; ++i) oracle[late + i] = static_cast<char>(rng());
  ASSERT_TRUE(WriteRange(*nbd, oracle, late, kChunk));
  degraded_bytes += kChunk;
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  CommandResult wait = a.Shale({"replica", "wait", "tv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  replicas = Replicas(a, "tv", &list);
  const uint64_t sent = replicas["node-c"]["rebuild_sent_bytes"].get<uint64_t>();
  std::cout << "after a target restart the rebuild sent " << sent << " bytes for " << degraded_bytes
            << " bytes written while node-c was out\n";
  EXPECT_GE(sent, degraded_bytes) << list;
  EXPECT_LE(sent, degraded_bytes * 11 / 10 + (64 << 10)) << "still incremental: " << list;
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();

  // node-c's own copy is the oracle's too.
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(c.StopDaemon(SIGTERM), 0) << c.DaemonLog();
  ASSERT_TRUE(c.StartDaemon());
  auto direct = NbdRawClient::Tcp(c.NbdAddress());
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(direct->Go("tv"), std::optional<uint64_t>(kVolBytes));
  ExpectContent(*direct, oracle, "node-c");
}

// Cascading failure: the target's replica left the in-sync set and the replicas that stayed in it
// are gone. The membership record says so (written here into etcd, as the target would have
// recorded "node-a left, node-b took the writes"); node-b is down. The restarted target refuses
// to serve until `volume force-recover --from node-a`, which says what may be lost; node-b,
// stale, is then compared and rebuilt when it returns.
TEST_F(ReplicationE2eTest, CascadingFailureRefusesUntilForceRecover) {
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));
  ASSERT_EQ(a.Shale({"volume", "create", "cv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
  std::string oracle(16ull << 20, '\0');
  std::mt19937_64 rng(5);
  for (size_t i = 0; i < (4ull << 20); ++i) oracle[i] = static_cast<char>(rng());
  {
    auto nbd = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(nbd, nullptr);
    ASSERT_TRUE(nbd->Go("cv").has_value());
    ASSERT_TRUE(WriteRange(*nbd, oracle, 0, 4ull << 20));
    ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  b.KillDaemon();
  ASSERT_NO_FATAL_FAILURE(RecordCascade(*etcd_, "cv"));

  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));
  {
    auto nbd = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(nbd, nullptr);
    EXPECT_FALSE(nbd->Go("cv").has_value()) << "a replica behind the in-sync set never serves";
  }
  EXPECT_EQ(Replicas(a, "cv")["node-a"]["state"], "faulted");
  // The local replica's generation was persisted when its target opened at epoch 1.
  EXPECT_NE(a.DaemonLog().find("it holds generation 1 of epoch 2"), std::string::npos)
      << a.DaemonLog();
  ExpectOneLineError(a.Shale({"volume", "force-recover", "cv", "--from", "node-b"}),
                     "--from must name the target's own node");
  CommandResult recovered = a.Shale({"volume", "force-recover", "cv", "--from", "node-a"});
  ASSERT_EQ(recovered.exit_code, 0) << recovered.Describe();
  EXPECT_NE(recovered.out.find("writes acknowledged after epoch 1 (up to epoch 2, held by "
                               "node-b) may be lost"),
            std::string::npos)
      << recovered.out;
  EXPECT_NE(a.DaemonLog().find("volume force-recovered"), std::string::npos) << "logged";
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "cv", &list);
  EXPECT_EQ(replicas["node-a"]["state"], "healthy") << list;
  EXPECT_EQ(replicas["node-b"]["state"], "stale") << "out until rebuilt: " << list;
  EXPECT_EQ(list["epoch"], 3) << list;
  ExpectOneLineError(a.Shale({"volume", "force-recover", "cv", "--from", "node-a"}),
                     "in sync already");

  std::unique_ptr<NbdRawClient> nbd;
  ASSERT_TRUE(WaitFor(
      [&] {
        nbd = NbdRawClient::Tcp(a.NbdAddress());
        return nbd != nullptr && nbd->Go("cv").has_value();
      },
      seconds(20)))
      << a.DaemonLog();
  ExpectContent(*nbd, oracle, "target after force-recover");

  // node-b returns: compared region by region and rebuilt from node-a.
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  CommandResult wait = a.Shale({"replica", "wait", "cv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  EXPECT_EQ(Replicas(a, "cv")["node-b"]["rebuild_total_bytes"], 16 << 20);
}

TEST_F(ReplicationE2eTest, DeleteRemovesEveryReplicaAndTheMembership) {
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));
  ASSERT_EQ(a.Shale({"volume", "create", "dv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
  ExpectOneLineError(b.Shale({"volume", "delete", "dv"}), "replica held for node node-a");
  EXPECT_EQ(b.Shale({"volume", "show", "dv"}).exit_code, 0) << "refused: nothing deleted";
  // Growing on the node serving it (no clients): the target opens again with the new size and
  // the remote replica grows at its OPEN. A shrink is refused; from a node that does not serve
  // it, refused naming the node that does.
  CommandResult grown = a.Shale({"volume", "resize", "dv", "--size", "32M", "-o", "json"});
  ASSERT_EQ(grown.exit_code, 0) << grown.Describe() << a.DaemonLog();
  EXPECT_EQ(grown.Json()["size_bytes"], 32 << 20) << grown.out;
  EXPECT_TRUE(WaitFor(
      [&] {
        CommandResult shown = b.Shale({"volume", "show", "dv", "-o", "json"});
        return shown.exit_code == 0 && shown.Json()["size_bytes"] == 32 << 20;
      },
      seconds(20)))
      << b.DaemonLog();
  ExpectOneLineError(a.Shale({"volume", "resize", "dv", "--size", "16M"}), "shrinking");
  ExpectOneLineError(b.Shale({"volume", "resize", "dv", "--size", "48M"}),
                     "attached on node node-a");
  // Operations the replicas would not follow are refused.
  ExpectOneLineError(a.Shale({"volume", "revert", "dv", "--to", "s1"}),
                     "cannot revert replicated volume");

  CommandResult deleted = a.Shale({"volume", "delete", "dv"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe() << a.DaemonLog();
  EXPECT_EQ(a.Shale({"volume", "show", "dv"}).exit_code, 1);
  EXPECT_EQ(b.Shale({"volume", "show", "dv"}).exit_code, 1) << "remote replica deleted";
  ExpectOneLineError(a.Shale({"replica", "list", "dv"}), "dv");
  // The name is free again in the cluster.
  EXPECT_EQ(a.Shale({"volume", "create", "dv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
}

TEST_F(ReplicationE2eTest, QosFollowsTheVolumeToTheNodeServingIt) {
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));
  ASSERT_EQ(a.Shale({"volume", "create", "qv", "--size", "16M", "--replicas", "2", "--iops", "100"})
                .exit_code,
            0);
  // The settings in force on a node (its QoS manager's, not the membership's).
  auto in_force = [](Harness& h) -> int64_t {
    CommandResult r = h.Shale({"volume", "stats", "qv", "-o", "json"});
    return r.exit_code == 0 ? r.Json()["qos"]["iops"].get<int64_t>() : -1;
  };
  EXPECT_EQ(in_force(a), 100);
  // Changed through node-b, which does not serve it: node-a (the target) applies it.
  CommandResult set = b.Shale({"qos", "set", "qv", "--iops", "250", "-o", "json"});
  ASSERT_EQ(set.exit_code, 0) << set.Describe();
  EXPECT_EQ(set.Json()["qos"]["iops"], 250) << set.out;
  EXPECT_TRUE(WaitFor([&] { return in_force(a) == 250; }, seconds(10))) << a.DaemonLog();
  CommandResult shown = a.Shale({"qos", "show", "qv", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["qos"]["iops"], 250) << shown.out;
  // Invalid settings are refused and change nothing.
  ExpectOneLineError(b.Shale({"qos", "set", "qv", "--weight", "20000"}), "weight");
  // Served on node-b now: its replica takes the volume's settings as its target opens.
  ASSERT_TRUE(WaitFor(
      [&] {
        return a.Shale({"volume", "detach", "qv"}).exit_code == 0;
      },
      seconds(10)))
      << a.DaemonLog();
  CommandResult attached = b.Shale({"volume", "attach", "qv"});
  ASSERT_EQ(attached.exit_code, 0) << attached.Describe() << b.DaemonLog();
  EXPECT_EQ(in_force(b), 250) << b.DaemonLog();
}

}  // namespace
}  // namespace shale::e2e
