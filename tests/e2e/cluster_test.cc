// Cluster mode end to end (issue 11): a real etcd (tests/cluster/etcd_process.h) and several
// shaled daemons on loopback, each with its own data dir; `shale node list` through any of
// them; a killed node turns down when its lease expires, a stopped one at once; bad cluster
// flags are refused; replica traffic over mutual TLS (--cluster-tls-dir). Skipped (with the
// reason) where etcd, or for the TLS test certtool, is not installed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/uuid.h"
#include "replication/replica_admin.h"
#include "replication/tls_transport.h"
#include "replication/transport.h"
#include "tests/cluster/etcd_process.h"
#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tls/testing.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;

constexpr char kSecret[] = "e2e-cluster-secret-0123456789abcdef\n";

// Writes the cluster secret under `dir` with `mode`; returns its path.
std::string WriteSecret(const std::string& dir, mode_t mode) {
  const std::string path = dir + "/cluster.secret";
  std::ofstream(path) << kSecret;
  EXPECT_EQ(chmod(path.c_str(), mode), 0);
  return path;
}

// The cluster flags of node `name` (lease `lease_s` seconds).
std::vector<std::string> ClusterFlags(const Harness& h, const test::EtcdProcess& etcd,
                                      const std::string& name, int lease_s = 2) {
  return {"--cluster-store",       etcd.endpoint(),
          "--node-name",           name,
          "--cluster-secret-file", WriteSecret(h.root(), 0600),
          "--node-lease-seconds",  std::to_string(lease_s)};
}

// `shale node list -o json` through `h`'s daemon, by node name (empty on failure).
std::map<std::string, nlohmann::json> ListNodes(Harness& h) {
  std::map<std::string, nlohmann::json> nodes;
  CommandResult r = h.Shale({"node", "list", "-o", "json"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << r.Describe();
    return nodes;
  }
  const nlohmann::json j = r.Json();
  if (!j.is_object() || !j["nodes"].is_array()) {
    ADD_FAILURE() << "no node array: " << r.Describe();
    return nodes;
  }
  for (const nlohmann::json& n : j["nodes"]) nodes[n["name"].get<std::string>()] = n;
  return nodes;
}

std::string StateOf(Harness& h, const std::string& node) {
  std::map<std::string, nlohmann::json> nodes = ListNodes(h);
  auto it = nodes.find(node);
  return it == nodes.end() ? "missing" : it->second["state"].get<std::string>();
}

using ClusterE2eTest = EtcdE2eTest;

TEST_F(ClusterE2eTest, NodesListedUpAndAKilledNodeTurnsDownAfterItsLease) {
  Harness a, b, c;
  ASSERT_TRUE(a.StartDaemon(ClusterFlags(a, *etcd_, "node-a")));
  ASSERT_TRUE(b.StartDaemon(ClusterFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(c.StartDaemon(ClusterFlags(c, *etcd_, "node-c")));

  // Every daemon sees all three, up, with its pools; each marks itself local.
  for (Harness* h : {&a, &b, &c}) {
    std::map<std::string, nlohmann::json> nodes = ListNodes(*h);
    ASSERT_EQ(nodes.size(), 3u);
    for (const auto& [name, n] : nodes) {
      EXPECT_EQ(n["state"], "up") << n;
      EXPECT_EQ(n["replica_address"], "") << "no --replica-listen: " << n;
      ASSERT_EQ(n["pools"].size(), 1u) << n;
      EXPECT_EQ(n["pools"][0]["name"], "default") << n;
      EXPECT_GT(n["pools"][0]["capacity_bytes"].get<uint64_t>(), 512ull << 20) << n;
      EXPECT_LE(n["pools"][0]["capacity_bytes"].get<uint64_t>(), 1ull << 30) << n;
      EXPECT_GT(n["free_bytes"].get<uint64_t>(), 0u) << n;
      EXPECT_EQ(n["free_bytes"], n["pools"][0]["free_bytes"]) << n;
    }
  }
  EXPECT_EQ(ListNodes(a)["node-a"]["local"], true);
  EXPECT_EQ(ListNodes(a)["node-b"]["local"], false);
  CommandResult table = a.Shale({"node", "list"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_NE(table.out.find("node-a (this node)"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("REPLICA ADDRESS"), std::string::npos) << table.out;

  CommandResult status = a.Shale({"status", "-o", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_EQ(status.Json()["cluster"]["node_name"], "node-a") << status.Describe();
  EXPECT_EQ(status.Json()["cluster"]["store"], etcd_->endpoint()) << status.Describe();
  EXPECT_EQ(status.Json()["cluster"]["registered"], true) << status.Describe();

  // kill -9: nobody revokes b's lease, so b stays listed and turns down once it expires (TTL
  // 2 s; etcd checks expiry about every 500 ms).
  const auto killed = std::chrono::steady_clock::now();
  b.KillDaemon();
  ASSERT_TRUE(WaitFor([&] { return StateOf(a, "node-b") == "down"; }, seconds(20)))
      << "node-b still " << StateOf(a, "node-b");
  const auto took = std::chrono::steady_clock::now() - killed;
  std::cout << "node-b down after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms\n";
  EXPECT_GE(took, std::chrono::milliseconds(1000)) << "down before its lease could expire";
  EXPECT_EQ(StateOf(c, "node-b"), "down");
  EXPECT_EQ(StateOf(a, "node-c"), "up");
  EXPECT_EQ(ListNodes(a)["node-b"]["pools"][0]["name"], "default") << "last known info kept";

  // It comes back under a new lease with the same name.
  ASSERT_TRUE(b.StartDaemon(ClusterFlags(b, *etcd_, "node-b")));
  EXPECT_EQ(StateOf(a, "node-b"), "up");
}

TEST_F(ClusterE2eTest, CleanStopIsDownAtOnceAndPoolsAreRefreshed) {
  Harness a, b;
  // A long lease: "down" within a few seconds can only come from the revocation at shutdown.
  ASSERT_TRUE(a.StartDaemon(ClusterFlags(a, *etcd_, "node-a", 2)));
  ASSERT_TRUE(b.StartDaemon(ClusterFlags(b, *etcd_, "node-b", 60)));
  ASSERT_EQ(StateOf(a, "node-b"), "up");

  // A new pool on node-a shows up in its record within a refresh period (TTL/3, at least 1 s).
  CommandResult pool =
      a.Shale({"pool", "create", "extra", "--device", a.root() + "/extra.img", "--size", "256M"});
  ASSERT_EQ(pool.exit_code, 0) << pool.Describe();
  ASSERT_TRUE(WaitFor([&] { return ListNodes(b)["node-a"]["pools"].size() == 2; }, seconds(15)))
      << ListNodes(b)["node-a"];
  const nlohmann::json node_a = ListNodes(b)["node-a"];
  EXPECT_EQ(node_a["pools"][1]["name"], "extra") << node_a;
  EXPECT_EQ(node_a["free_bytes"].get<uint64_t>(),
            node_a["pools"][0]["free_bytes"].get<uint64_t>() +
                node_a["pools"][1]["free_bytes"].get<uint64_t>())
      << node_a;

  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  ASSERT_TRUE(WaitFor([&] { return StateOf(a, "node-b") == "down"; }, seconds(5)))
      << "a cleanly stopped node revokes its 60 s lease";
}

TEST_F(ClusterE2eTest, BadClusterFlagsAreRefused) {
  Harness h;
  const std::string data = h.root() + "/data";
  const std::string log = h.root() + "/shaled.log";
  const std::string good_secret = WriteSecret(h.root(), 0600);
  auto run = [&](std::vector<std::string> flags) {
    std::vector<std::string> argv = {
        ShaledBinary(),        "--data-dir", data, "--nbd-listen", "none", "--log-file", log,
        "--default-pool-size", "1G"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    RunOptions options;
    options.timeout = seconds(60);
    return RunProcess(argv, options);
  };

  // Malformed etcd URLs: usage errors (exit 2) naming the flag.
  for (const char* url : {"http://127.0.0.1:2379", "etcd://", "etcd://127.0.0.1",
                          "etcd://127.0.0.1:2379,", "etcd://127.0.0.1:99999"}) {
    CommandResult r =
        run({"--cluster-store", url, "--node-name", "n1", "--cluster-secret-file", good_secret});
    ExpectOneLineError(r, "--cluster-store", "shaled: ");
    EXPECT_EQ(r.exit_code, 2) << url << ": " << r.Describe();
  }
  // Missing or misplaced flags.
  ExpectOneLineError(
      run({"--cluster-store", etcd_->endpoint(), "--cluster-secret-file", good_secret}),
      "--node-name", "shaled: ");
  ExpectOneLineError(run({"--cluster-store", etcd_->endpoint(), "--node-name", "n1"}),
                     "--cluster-secret-file", "shaled: ");
  ExpectOneLineError(run({"--node-name", "n1"}), "need --cluster-store", "shaled: ");
  ExpectOneLineError(run({"--cluster-store", etcd_->endpoint(), "--node-name", "bad/name",
                          "--cluster-secret-file", good_secret}),
                     "--node-name", "shaled: ");

  // A secret file others may read: refused at start (exit 1), naming the mode.
  const std::string open_secret = h.root() + "/open.secret";
  std::ofstream(open_secret) << kSecret;
  ASSERT_EQ(chmod(open_secret.c_str(), 0644), 0);
  CommandResult open = run({"--cluster-store", etcd_->endpoint(), "--node-name", "n1",
                            "--cluster-secret-file", open_secret});
  ExpectOneLineError(open, "mode 0600 (it is 0644)", "shaled: ");
  EXPECT_EQ(open.exit_code, 1) << open.Describe();

  // A malformed replica listener address is a usage error naming the flag.
  CommandResult listen = run({"--cluster-store", etcd_->endpoint(), "--node-name", "n1",
                              "--cluster-secret-file", good_secret, "--replica-listen", "7480"});
  ExpectOneLineError(listen, "--replica-listen", "shaled: ");
  EXPECT_EQ(listen.exit_code, 2) << listen.Describe();

  // etcd unreachable at start: a clear error within the registration deadline (10 s).
  const auto started = std::chrono::steady_clock::now();
  CommandResult away = run({"--cluster-store", "etcd://127.0.0.1:1", "--node-name", "n1",
                            "--cluster-secret-file", good_secret});
  const auto took = std::chrono::steady_clock::now() - started;
  ExpectOneLineError(away, "etcd unreachable at etcd://127.0.0.1:1", "shaled: ");
  EXPECT_EQ(away.exit_code, 1) << away.Describe();
  EXPECT_LT(took, seconds(30)) << "bounded by the registration deadline";

  // Without --cluster-store the daemon is the single-node one, and says so when asked for nodes.
  ASSERT_TRUE(h.StartDaemon());
  CommandResult nodes = h.Shale({"node", "list"});
  ExpectOneLineError(nodes, "not in a cluster");
  EXPECT_EQ(nodes.exit_code, 1);
  EXPECT_FALSE(h.Shale({"status", "-o", "json"}).Json().contains("cluster"));
}

// The replica listener (--replica-listen) publishes its bound address in etcd and serves peers
// that prove the cluster secret: a replica placed through it is an engine volume of the node; a
// peer with another secret can neither look at nor delete it.
TEST_F(ClusterE2eTest, ReplicaListenerServesOnlyPeersWithTheSecret) {
  Harness a;
  std::vector<std::string> flags = ClusterFlags(a, *etcd_, "node-a");
  flags.insert(flags.end(), {"--replica-listen", "127.0.0.1:0"});
  ASSERT_TRUE(a.StartDaemon(flags));
  std::string address;
  ASSERT_TRUE(WaitFor(
      [&] {
        std::map<std::string, nlohmann::json> nodes = ListNodes(a);
        auto it = nodes.find("node-a");
        if (it == nodes.end()) return false;
        address = it->second["replica_address"].get<std::string>();
        return !address.empty();
      },
      seconds(10)))
      << "node-a never published its replica address";
  EXPECT_EQ(address.rfind("127.0.0.1:", 0), 0u) << address;
  EXPECT_NE(address, "127.0.0.1:0") << "the bound port is published, not the asked one";

  replication::TcpTransport transport;
  std::string secret_bytes = kSecret;
  secret_bytes.pop_back();  // the file's trailing newline is not part of the secret
  Result<replication::ClusterSecret> secret = replication::ClusterSecret::FromBytes(secret_bytes);
  Result<replication::ClusterSecret> other =
      replication::ClusterSecret::FromBytes("another-cluster-secret-0123456789");
  ASSERT_TRUE(secret.ok() && other.ok());
  replication::ReplicaAdminOptions good{
      .address = address, .node_name = "node-b", .secret = *secret, .transport = &transport};
  replication::ReplicaAdminOptions bad = good;
  bad.secret = *other;
  const replication::ReplicaSpec spec{
      .volume = "rep-vol", .uuid = Uuid::Random(), .size_bytes = 16 << 20, .pool = ""};

  EXPECT_FALSE(replication::CreateReplica(bad, spec, 1).ok()) << "a wrong secret places nothing";
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 1) << "no volume was made";

  Result<replication::ReplicaStat> created = replication::CreateReplica(good, spec, 1);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  EXPECT_EQ(created->size_bytes, uint64_t{16} << 20);
  CommandResult shown = a.Shale({"volume", "show", "rep-vol", "-o", "json"});
  ASSERT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_EQ(shown.Json()["size_bytes"], 16 << 20) << shown.Describe();

  EXPECT_FALSE(replication::StatReplica(bad, spec).ok());
  EXPECT_FALSE(replication::DeleteReplica(bad, spec, 1).ok());
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 0)
      << "a wrong secret deletes nothing";
  Result<replication::ReplicaStat> stat = replication::StatReplica(good, spec);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->epoch, 1u);
  EXPECT_TRUE(replication::DeleteReplica(good, spec, 1).ok());
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 1) << "deleted through the peer";
}

// The address node `name` published for its replica listener (empty if none within 10 s).
std::string ReplicaAddress(Harness& h, const std::string& name) {
  std::string address;
  WaitFor(
      [&] {
        std::map<std::string, nlohmann::json> nodes = ListNodes(h);
        auto it = nodes.find(name);
        if (it == nodes.end()) return false;
        address = it->second["replica_address"].get<std::string>();
        return !address.empty();
      },
      seconds(10));
  return address;
}

// With --cluster-tls-dir every replica connection runs TLS with mutual certificates: a peer
// holding the cluster secret but a certificate of another CA (or no TLS at all) can neither
// place, look at nor delete a replica; a peer of the cluster's CA can. A bad directory stops
// shaled at start with one line naming the flag.
TEST_F(ClusterE2eTest, ReplicaTrafficOverMutualTlsNeedsACertificateOfTheClusterCa) {
  if (!tls::testing::HaveTools()) GTEST_SKIP() << "certtool not installed (gnutls-bin)";
  Harness a;
  tls::testing::Pki pki(a.root() + "/pki");
  ASSERT_TRUE(pki.MakeCa("ca").ok());
  ASSERT_TRUE(pki.MakeCa("other-ca").ok());
  ASSERT_TRUE(pki.MakeCert("ca", "node-a", {.cn = "node-a"}).ok());
  ASSERT_TRUE(pki.MakeCert("ca", "node-b", {.cn = "node-b"}).ok());
  ASSERT_TRUE(pki.MakeCert("other-ca", "mallory", {.cn = "node-b"}).ok());
  const std::string dir_a = a.root() + "/tls-a", dir_b = a.root() + "/tls-b",
                    dir_mallory = a.root() + "/tls-mallory";
  ASSERT_TRUE(pki.MutualDir("ca", "node-a", dir_a).ok());
  ASSERT_TRUE(pki.MutualDir("ca", "node-b", dir_b).ok());
  // Trusts the cluster's CA and holds the secret, but its certificate is from another CA.
  ASSERT_TRUE(pki.MutualDir("ca", "mallory", dir_mallory).ok());

  // A bad directory: one line naming the flag and what is wrong, exit 1.
  const std::vector<std::string> cluster = ClusterFlags(a, *etcd_, "node-a");
  auto run = [&](const std::string& tls_dir) {
    std::vector<std::string> argv = {ShaledBinary(), "--data-dir",          a.root() + "/bad-data",
                                     "--log-file",   a.root() + "/bad.log", "--replica-listen",
                                     "127.0.0.1:0",  "--cluster-tls-dir",   tls_dir};
    argv.insert(argv.end(), cluster.begin(), cluster.end());
    RunOptions options;
    options.timeout = seconds(60);
    return RunProcess(argv, options);
  };
  CommandResult missing = run(a.root() + "/no-such-dir");
  ExpectOneLineError(missing, "--cluster-tls-dir", "shaled: ");
  EXPECT_EQ(missing.exit_code, 1) << missing.Describe();
  const std::string open_dir = a.root() + "/tls-open";
  ASSERT_TRUE(pki.MutualDir("ca", "node-a", open_dir).ok());
  ASSERT_EQ(chmod((open_dir + "/tls.key").c_str(), 0644), 0);
  CommandResult open = run(open_dir);
  ExpectOneLineError(open, "mode 0600 (it is 0644)", "shaled: ");
  EXPECT_NE(open.err.find("--cluster-tls-dir"), std::string::npos) << open.Describe();
  EXPECT_EQ(open.exit_code, 1) << open.Describe();
  ASSERT_EQ(std::remove((open_dir + "/tls.key").c_str()), 0);
  CommandResult no_key = run(open_dir);
  ExpectOneLineError(no_key, "tls.key", "shaled: ");
  EXPECT_EQ(no_key.exit_code, 1) << no_key.Describe();

  std::vector<std::string> flags = cluster;
  flags.insert(flags.end(), {"--replica-listen", "127.0.0.1:0", "--cluster-tls-dir", dir_a});
  ASSERT_TRUE(a.StartDaemon(flags));
  const std::string address = ReplicaAddress(a, "node-a");
  ASSERT_FALSE(address.empty()) << "node-a never published its replica address";
  EXPECT_NE(a.DaemonLog().find("endpoint=tls://" + address), std::string::npos)
      << "the startup log says the replica listener speaks TLS";

  replication::TcpTransport tcp;
  Result<std::shared_ptr<const tls::Credentials>> good_creds =
      replication::LoadClusterTlsDir(dir_b);
  Result<std::shared_ptr<const tls::Credentials>> mallory_creds =
      replication::LoadClusterTlsDir(dir_mallory);
  ASSERT_TRUE(good_creds.ok() && mallory_creds.ok());
  replication::TlsTransport good_tls(&tcp, *good_creds), mallory_tls(&tcp, *mallory_creds);
  std::string secret_bytes = kSecret;
  secret_bytes.pop_back();  // the file's trailing newline is not part of the secret
  Result<replication::ClusterSecret> secret = replication::ClusterSecret::FromBytes(secret_bytes);
  ASSERT_TRUE(secret.ok());
  replication::ReplicaAdminOptions good{
      .address = address, .node_name = "node-b", .secret = *secret, .transport = &good_tls};
  replication::ReplicaAdminOptions mallory = good, plain = good;
  mallory.transport = &mallory_tls;
  plain.transport = &tcp;
  const replication::ReplicaSpec spec{
      .volume = "rep-vol", .uuid = Uuid::Random(), .size_bytes = 16 << 20, .pool = ""};

  EXPECT_FALSE(replication::CreateReplica(mallory, spec, 1).ok()) << "another CA places nothing";
  EXPECT_FALSE(replication::CreateReplica(plain, spec, 1).ok()) << "plain TCP places nothing";
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 1) << "no volume was made";

  Result<replication::ReplicaStat> created = replication::CreateReplica(good, spec, 1);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(created->created);
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 0);

  EXPECT_FALSE(replication::StatReplica(mallory, spec).ok());
  EXPECT_FALSE(replication::DeleteReplica(mallory, spec, 1).ok());
  EXPECT_FALSE(replication::DeleteReplica(plain, spec, 1).ok());
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 0) << "nobody else deleted it";
  Result<replication::ReplicaStat> stat = replication::StatReplica(good, spec);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(stat->epoch, 1u);
  EXPECT_TRUE(replication::DeleteReplica(good, spec, 1).ok());
  EXPECT_EQ(a.Shale({"volume", "show", "rep-vol"}).exit_code, 1) << "deleted through the peer";
  // The refusals are logged by the daemon, which keeps serving.
  EXPECT_NE(a.DaemonLog().find("TLS handshake"), std::string::npos) << a.DaemonLog();
}

}  // namespace
}  // namespace shale::e2e
