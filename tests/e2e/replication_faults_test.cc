// Faults of replicated volumes end to end (issue 11, docs/replication.md "Failure cases"): a real
// etcd and three shaled daemons, on loopback or (the partition) one of them in a network
// namespace the test creates. fio --verify=crc32c through NBD while a replica daemon is killed;
// a partition between the target and a replica; etcd stopped during a replica fault; and the
// repair bugs: a rebuild whose join failed is retried, CSI DeleteVolume deletes a replicated
// volume, a target that cannot open retries with a backoff. Skipped (with the reason) where etcd,
// fio or network namespaces are not available.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "tests/cluster/etcd_process.h"
#include "tests/e2e/csi_client.h"
#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"

namespace shale::e2e {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kVolBytes = 64ull << 20;
constexpr int64_t kNbdEio = 5;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Reads the whole export `name` of the daemon at `address` (empty with a failure if it cannot).
std::string ReadVolume(const std::string& address, const std::string& name, uint64_t size) {
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(address);
  if (nbd == nullptr || nbd->Go(name) != std::optional<uint64_t>(size)) {
    ADD_FAILURE() << "cannot open export " << name << " at " << address;
    return {};
  }
  std::string all;
  for (uint64_t at = 0; at < size; at += kReplicationChunk) {
    std::string data;
    if (nbd->Request(NbdRawClient::kCmdRead, at, kReplicationChunk, "", &data) != 0) {
      ADD_FAILURE() << "read of " << name << " at " << at << " failed";
      return {};
    }
    all += data;
  }
  return all;
}

// Each replica's copy of `volume`, read from its node restarted alone (outside the cluster, so
// it exports its replica volume). The daemons must be stopped.
// (The fio test also compares the replicas' digests of a fresh snapshot: `snapshot verify`.)
std::map<std::string, std::string> ReplicaCopies(std::initializer_list<Harness*> nodes,
                                                 const std::string& volume, uint64_t size) {
  std::map<std::string, std::string> copies;
  char name = 'a';
  for (Harness* h : nodes) {
    const std::string node = std::string("node-") + name++;
    h->set_command_prefix({});
    if (!h->StartDaemon()) return copies;
    copies[node] = ReadVolume(h->NbdAddress(), volume, size);
    EXPECT_EQ(h->StopDaemon(SIGTERM), 0) << h->DaemonLog();
  }
  return copies;
}

void ExpectCopiesEqual(const std::map<std::string, std::string>& copies, size_t count) {
  ASSERT_EQ(copies.size(), count);
  for (const auto& [node, data] : copies) {
    EXPECT_EQ(data.size(), copies.begin()->second.size()) << node;
    const std::string& first = copies.begin()->second;
    if (data == first) continue;
    size_t blocks = 0, zero = 0, at = std::string::npos;
    for (size_t i = 0; i + 4096 <= std::min(data.size(), first.size()); i += 4096) {
      if (data.compare(i, 4096, first, i, 4096) == 0) continue;
      if (at == std::string::npos) at = i;
      ++blocks;
      if (data.find_first_not_of('\0', i) >= i + 4096) ++zero;
    }
    ADD_FAILURE() << node << "'s copy differs from " << copies.begin()->first << "'s in " << blocks
                  << " 4 KiB blocks (" << zero << " of them zeros here), first at " << at;
  }
}

// Creates the 3-replica volume `volume` (64 MiB) on the target `a`, connects to it, writes 8 MiB
// of random data at offset 0 (into *oracle too) and flushes; null (with the failure recorded) if
// a step fails.
std::unique_ptr<NbdRawClient> CreateAndFill(Harness& a, const std::string& volume,
                                            std::mt19937_64& rng, std::string* oracle) {
  CommandResult made = a.Shale({"volume", "create", volume, "--size", "64M", "--replicas", "3"});
  if (made.exit_code != 0) {
    ADD_FAILURE() << made.Describe();
    return nullptr;
  }
  oracle->replace(0, 8ull << 20, RandomBytes(rng, 8ull << 20));
  std::unique_ptr<NbdRawClient> nbd = NbdRawClient::Tcp(a.NbdAddress());
  if (nbd == nullptr || nbd->Go(volume) != std::optional<uint64_t>(oracle->size())) {
    ADD_FAILURE() << "cannot open " << volume << " through the target";
    return nullptr;
  }
  if (!WriteRange(*nbd, *oracle, 0, 8ull << 20)) return nullptr;
  if (nbd->Request(NbdRawClient::kCmdFlush, 0, 0) != 0) {
    ADD_FAILURE() << "flush of " << volume << " failed";
    return nullptr;
  }
  return nbd;
}

// ---------------------------------------------------------------------------------------------
// fio --verify=crc32c through NBD while a replica daemon is killed.

// A fio job over [offset, offset + size) of the export at `uri`: sequential 64 KiB writes with
// crc32c verify headers, flushed (NBD FLUSH) at the end, verified after writing (or only
// verified: `verify_only`). The flush matters for the rebuild's size: a replica killed before a
// flush may have lost every write since the last one, so the target rebuilds all of them.
std::vector<std::string> FioJob(const std::string& uri, const std::string& name, uint64_t offset,
                                uint64_t size, bool verify_only, const std::string& rate = "") {
  std::vector<std::string> argv = {FindProgram("fio"),
                                   "--name=" + name,
                                   "--ioengine=nbd",
                                   "--uri=" + uri,
                                   "--rw=write",
                                   "--bs=64k",
                                   "--iodepth=8",
                                   "--offset=" + std::to_string(offset),
                                   "--size=" + std::to_string(size),
                                   "--verify=crc32c",
                                   "--do_verify=1",
                                   "--verify_fatal=1",
                                   "--end_fsync=1",
                                   "--randseed=" + std::to_string(offset + 1)};
  if (verify_only) argv.push_back("--verify_only");
  if (!rate.empty()) argv.push_back("--rate=" + rate);
  return argv;
}

using ReplicationFaultsTest = EtcdE2eTest;

TEST_F(ReplicationFaultsTest, FioVerifiesThroughAReplicaKillAndTheRebuildIsIncremental) {
  if (FindProgram("fio").empty()) GTEST_SKIP() << "fio is not installed";
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  CommandResult made = a.Shale({"volume", "create", "fv", "--size", "64M", "--replicas", "3"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  const std::string uri = "nbd://" + a.NbdAddress() + "/fv";
  RunOptions fio_options;
  fio_options.timeout = seconds(180);

  // Phase 1, every replica in sync: [0, 24 MiB) written and verified.
  CommandResult p1 = RunProcess(FioJob(uri, "p1", 0, 24ull << 20, false), fio_options);
  ASSERT_EQ(p1.exit_code, 0) << p1.Describe();

  // Phase 2: [32, 40 MiB) at 2 MiB/s; node-c is killed with -9 while it runs. No client error:
  // fio exits 0 and its verify pass (after the kill) reads back every block.
  ChildProcess p2(FioJob(uri, "p2", 32ull << 20, 8ull << 20, false, "2m"), a.root() + "/p2.log");
  ASSERT_FALSE(WaitFor([&] { return !p2.running(); }, seconds(1)))
      << "fio ended before the kill: " << p2.Log();
  c.KillDaemon();
  EXPECT_EQ(p2.Stop(0, seconds(120)), 0) << p2.Log();
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "fv")["node-c"]["state"] == "faulted"; }, seconds(20)))
      << Replicas(a, "fv")["node-c"];

  // Phase 3, node-c out: [48, 52 MiB) written and verified.
  CommandResult p3 = RunProcess(FioJob(uri, "p3", 48ull << 20, 4ull << 20, false), fio_options);
  ASSERT_EQ(p3.exit_code, 0) << p3.Describe();

  // node-c returns and is rebuilt with only what was written while it was out: phase 3 whole,
  // phase 2 after the kill, and what phase 2 wrote before it but did not flush yet (node-c may
  // have lost that): at most all of phase 2. Phase 1 was flushed: not sent again.
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  CommandResult wait = a.Shale({"replica", "wait", "fv", "--timeout", "90"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "fv", &list);
  const uint64_t sent = replicas["node-c"]["rebuild_sent_bytes"].get<uint64_t>();
  const uint64_t degraded_at_least = 4ull << 20, degraded_at_most = 12ull << 20;
  std::cout << "rebuild sent " << sent << " bytes; written while node-c was out: between "
            << degraded_at_least << " and " << degraded_at_most << " bytes\n";
  EXPECT_GE(sent, degraded_at_least) << list;
  EXPECT_LE(sent, degraded_at_most * 11 / 10 + (64 << 10)) << "only what changed: " << list;
  EXPECT_EQ(replicas["node-c"]["rebuilds"], 1) << list;

  // Every phase verifies through the target.
  for (const auto& [name, offset, size] :
       {std::tuple{"p1", 0ull, 24ull << 20}, std::tuple{"p2", 32ull << 20, 8ull << 20},
        std::tuple{"p3", 48ull << 20, 4ull << 20}}) {
    CommandResult v = RunProcess(FioJob(uri, name, offset, size, true), fio_options);
    EXPECT_EQ(v.exit_code, 0) << name << " verify through the target: " << v.Describe();
  }

  // Every replica's digest of a fresh snapshot is the same (snapshot verify asks each replica).
  ASSERT_EQ(a.Shale({"snapshot", "create", "fv@after"}).exit_code, 0) << a.DaemonLog();
  CommandResult verified = a.Shale({"snapshot", "verify", "fv@after", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe() << a.DaemonLog();
  const nlohmann::json v = verified.Json();
  ASSERT_EQ(v["replicas"].size(), 2u) << v;
  for (const nlohmann::json& r : v["replicas"]) EXPECT_EQ(r["digest"], v["digest"]) << v;

  // And every replica holds the same bytes (read from each node restarted alone).
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  EXPECT_EQ(c.StopDaemon(SIGTERM), 0) << c.DaemonLog();
  ExpectCopiesEqual(ReplicaCopies({&a, &b, &c}, "fv", kVolBytes), 3);
}

// ---------------------------------------------------------------------------------------------
// etcd stopped during a replica fault.

TEST_F(ReplicationFaultsTest, EtcdDownDuringAReplicaFaultAcknowledgesNoWrite) {
  Harness a, b, c;
  std::vector<std::string> target_flags = NodeFlags(a, *etcd_, "node-a");
  target_flags.insert(target_flags.end(), {"--replica-timeout", "2"});
  ASSERT_TRUE(a.StartDaemon(target_flags));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  ASSERT_TRUE(WaitPublished(a, 3));

  std::mt19937_64 rng(17);
  std::string oracle(kVolBytes, '\0');
  std::unique_ptr<NbdRawClient> nbd = CreateAndFill(a, "ev", rng, &oracle);
  ASSERT_NE(nbd, nullptr);

  // etcd stops, then a replica daemon dies: its leave cannot be recorded, so no write is
  // acknowledged: each fails with EIO after the bounded wait (--replica-timeout, 2 s).
  ASSERT_TRUE(etcd_->Stop().ok());
  c.KillDaemon();
  const uint64_t unacked = 40ull << 20;  // where the refused writes go (never compared)
  for (int i = 0; i < 3; ++i) {
    const auto start = Clock::now();
    const int64_t err = nbd->Request(NbdRawClient::kCmdWrite, unacked + i * kReplicationChunk,
                                     kReplicationChunk, RandomBytes(rng, kReplicationChunk));
    const double took = SecondsSince(start);
    std::cout << "write " << i << " with etcd down: error " << err << " after " << took << " s\n";
    EXPECT_EQ(err, kNbdEio) << "a write with the leave unrecorded is never acknowledged";
    EXPECT_LT(took, 2.0 + 4.0) << "bounded by --replica-timeout (2 s), not by etcd's client";
  }

  // `volume show` still answers from the local record, warning that the replication state
  // (in etcd) is unavailable.
  CommandResult shown = a.Shale({"volume", "show", "ev", "-o", "json"});
  EXPECT_EQ(shown.exit_code, 0) << shown.Describe();
  EXPECT_NE(shown.err.find("shale: warning: replication state unavailable"), std::string::npos)
      << shown.err;
  EXPECT_EQ(shown.Json()["name"], "ev") << shown.out;

  // etcd returns: the leave is recorded (node-c out of in_sync, epoch + 1) and writes succeed.
  ASSERT_TRUE(etcd_->Restart().ok());
  const std::string late = RandomBytes(rng, kReplicationChunk);
  ASSERT_TRUE(WaitFor(
      [&] {
        return nbd->Request(NbdRawClient::kCmdWrite, 16ull << 20, kReplicationChunk, late) == 0;
      },
      seconds(60)))
      << a.DaemonLog();
  oracle.replace(16ull << 20, late.size(), late);
  oracle.replace(20ull << 20, 2ull << 20, RandomBytes(rng, 2ull << 20));
  ASSERT_TRUE(WriteRange(*nbd, oracle, 20ull << 20, 2ull << 20));
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "ev", &list);
  EXPECT_EQ(list["in_sync"], nlohmann::json({"node-a", "node-b"})) << list;
  EXPECT_EQ(replicas["node-c"]["state"], "faulted") << list;
  EXPECT_EQ(list["epoch"], 2) << list;
  nbd.reset();

  // Every acknowledged write is on every replica of the recorded in-sync set.
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  std::map<std::string, std::string> copies = ReplicaCopies({&a, &b}, "ev", kVolBytes);
  ASSERT_EQ(copies.size(), 2u);
  for (const auto& [node, data] : copies) {
    ASSERT_EQ(data.size(), kVolBytes) << node;
    for (const auto& [offset, length] :
         {std::pair{0ull, 8ull << 20}, std::pair{16ull << 20, 6ull << 20}}) {
      EXPECT_TRUE(data.compare(offset, length, oracle, offset, length) == 0)
          << node << " lacks acknowledged data in [" << offset << ", +" << length << ")";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Partition: node-c runs in a network namespace of its own, joined to the root namespace by a
// veth pair (a /30 of 10.211.0.0/16 picked from the test's pid). Taking the root end of the link
// down cuts node-c from the target *and* from etcd (its lease expires; it re-registers after the
// healing); node-a and node-b stay on loopback.

// Runs `ip args...`; true when it exits 0 (the failure recorded unless `quiet`).
bool Ip(const std::vector<std::string>& args, bool quiet = false) {
  std::vector<std::string> argv = {FindProgram("ip")};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = RunProcess(argv);
  if (r.exit_code != 0 && !quiet) ADD_FAILURE() << "ip failed: " << r.Describe();
  return r.exit_code == 0;
}

// A network namespace with a veth pair to the root namespace; removed (with the pair) by the
// destructor, also when the test fails.
class NetnsPair {
 public:
  NetnsPair() {
    const unsigned id = static_cast<unsigned>(getpid()) % 16384;
    name_ = "shale-pt-" + std::to_string(getpid());
    outer_ = "shpt" + std::to_string(getpid()) + "o";
    const std::string inner = "shpt" + std::to_string(getpid()) + "i";
    const std::string net = "10.211." + std::to_string(id >> 6) + ".";
    host_address_ = net + std::to_string((id & 63) * 4 + 1);
    ns_address_ = net + std::to_string((id & 63) * 4 + 2);
    if (!Ip({"netns", "add", name_}, /*quiet=*/true)) {
      why_not_ = "cannot create a network namespace (ip netns add needs root)";
      return;
    }
    made_ = true;
    ok_ = Ip({"link", "add", outer_, "type", "veth", "peer", "name", inner}) &&
          Ip({"link", "set", inner, "netns", name_}) &&
          Ip({"addr", "add", host_address_ + "/30", "dev", outer_}) &&
          Ip({"link", "set", outer_, "up"}) &&
          Ip({"-n", name_, "addr", "add", ns_address_ + "/30", "dev", inner}) &&
          Ip({"-n", name_, "link", "set", inner, "up"}) &&
          Ip({"-n", name_, "link", "set", "lo", "up"});
  }
  ~NetnsPair() {
    if (!made_) return;
    Ip({"link", "del", outer_}, /*quiet=*/true);  // the pair goes with either end
    Ip({"netns", "del", name_}, /*quiet=*/true);
  }
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  const std::string& why_not() const { return why_not_; }
  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }
  const std::string& host_address() const { return host_address_; }  // root namespace end
  const std::string& ns_address() const { return ns_address_; }
  bool Cut() { return Ip({"link", "set", outer_, "down"}); }
  bool Heal() { return Ip({"link", "set", outer_, "up"}); }

 private:
  std::string name_, outer_, host_address_, ns_address_, why_not_;
  bool made_ = false, ok_ = false;
};

TEST(ReplicationPartitionTest, PartitionedReplicaIsFaultedInTimeAndRebuiltAfterHealing) {
  if (const std::string why = test::EtcdProcess::Unavailable(); !why.empty()) GTEST_SKIP() << why;
  if (FindProgram("ip").empty()) GTEST_SKIP() << "iproute2 (ip) is not installed";
  NetnsPair net;
  if (!net.why_not().empty()) GTEST_SKIP() << net.why_not();
  ASSERT_TRUE(net.ok());
  test::EtcdProcess::Options eo;
  eo.extra_client_hosts = {net.host_address()};
  Result<std::unique_ptr<test::EtcdProcess>> started = test::EtcdProcess::Start(eo);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<test::EtcdProcess> etcd = std::move(started).value();

  Harness a, b, c;  // stopped before the namespace goes (declared after it)
  constexpr int kTimeoutSeconds = 2;
  std::vector<std::string> target_flags = NodeFlags(a, *etcd, "node-a");
  target_flags.insert(target_flags.end(), {"--replica-timeout", std::to_string(kTimeoutSeconds)});
  ASSERT_TRUE(a.StartDaemon(target_flags));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd, "node-b")));
  c.set_command_prefix({FindProgram("ip"), "netns", "exec", net.name()});
  const std::string etcd_in_ns =
      "etcd://" + net.host_address() + ":" + std::to_string(etcd->client_port());
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, etcd_in_ns, "node-c", net.ns_address() + ":0")));
  ASSERT_TRUE(WaitPublished(a, 3));

  std::mt19937_64 rng(31);
  std::string oracle(kVolBytes, '\0');
  std::unique_ptr<NbdRawClient> nbd = CreateAndFill(a, "pv", rng, &oracle);
  ASSERT_NE(nbd, nullptr);

  // Cut: writes go on without an error; node-c is faulted within the timeout (+ the time to
  // record the leave and a margin).
  ASSERT_TRUE(net.Cut());
  const auto cut_at = Clock::now();
  uint64_t at = 24ull << 20, degraded = 0;
  double faulted_after = -1;
  while (SecondsSince(cut_at) < kTimeoutSeconds + 20) {
    oracle.replace(at, kReplicationChunk, RandomBytes(rng, kReplicationChunk));
    ASSERT_TRUE(WriteRange(*nbd, oracle, at, kReplicationChunk)) << a.DaemonLog();
    at += kReplicationChunk;
    degraded += kReplicationChunk;
    if (Replicas(a, "pv")["node-c"]["state"] == "faulted") {
      faulted_after = SecondsSince(cut_at);
      break;
    }
  }
  std::cout << "node-c faulted " << faulted_after << " s after the partition\n";
  ASSERT_GE(faulted_after, 0) << "never faulted: " << a.DaemonLog();
  EXPECT_LE(faulted_after, kTimeoutSeconds + 5.0);
  for (int i = 0; i < 8; ++i, at += kReplicationChunk) {  // and writes go on
    oracle.replace(at, kReplicationChunk, RandomBytes(rng, kReplicationChunk));
    ASSERT_TRUE(WriteRange(*nbd, oracle, at, kReplicationChunk));
  }
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  // Healed: node-c registers again, is reconnected and rebuilt; the data matches.
  ASSERT_TRUE(net.Heal());
  CommandResult wait = a.Shale({"replica", "wait", "pv", "--timeout", "120"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog() << c.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "pv", &list);
  EXPECT_EQ(replicas["node-c"]["state"], "healthy") << list;
  EXPECT_EQ(replicas["node-c"]["rebuilds"], 1) << list;
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  EXPECT_EQ(c.StopDaemon(SIGTERM), 0) << c.DaemonLog();
  std::map<std::string, std::string> copies = ReplicaCopies({&a, &b, &c}, "pv", kVolBytes);
  ExpectCopiesEqual(copies, 3);
  if (!copies.empty()) {
    EXPECT_TRUE(copies["node-c"] == oracle) << "node-c holds the oracle";
  }
}

// ---------------------------------------------------------------------------------------------
// Repair bugs.

// A rebuild whose join cannot be recorded (etcd down at that moment) leaves the replica
// `rebuilding` with a healthy connection: the repair thread retries it (after the node's backoff)
// once etcd is back, and it joins.
TEST_F(ReplicationFaultsTest, RebuildWhoseJoinFailedIsRetried) {
  Harness a, b;
  std::vector<std::string> target_flags = NodeFlags(a, *etcd_, "node-a");
  target_flags.insert(target_flags.end(), {"--rebuild-bps", "1M"});
  ASSERT_TRUE(a.StartDaemon(target_flags));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(WaitPublished(a, 2));
  ASSERT_EQ(a.Shale({"volume", "create", "jv", "--size", "64M", "--replicas", "2"}).exit_code, 0);
  std::mt19937_64 rng(23);
  std::string oracle(kVolBytes, '\0');
  auto nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_EQ(nbd->Go("jv"), std::optional<uint64_t>(kVolBytes));
  b.KillDaemon();
  // One write in each of 8 regions 8 MiB apart: 8 ranges to rebuild, about 7 s at 1 MiB/s.
  for (uint64_t at = 0; at < kVolBytes; at += 8ull << 20) {
    oracle.replace(at, kReplicationChunk, RandomBytes(rng, kReplicationChunk));
    ASSERT_TRUE(WriteRange(*nbd, oracle, at, kReplicationChunk));
  }
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "jv")["node-b"]["state"] == "faulted"; }, seconds(20)));

  // node-b returns; while its rebuild (paced at 1 MiB/s) runs, etcd stops: the join fails.
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(WaitFor(
      [&] {
        std::map<std::string, nlohmann::json> r = Replicas(a, "jv", nullptr, /*quiet=*/true);
        return r["node-b"]["state"] == "rebuilding" &&
               r["node-b"]["rebuild_total_bytes"].get<uint64_t>() > 0;
      },
      seconds(30)))
      << a.DaemonLog();
  ASSERT_TRUE(etcd_->Stop().ok());
  ASSERT_TRUE(WaitFor(
      [&] { return a.DaemonLog().find("membership change not recorded") != std::string::npos; },
      seconds(60)))
      << "the join was not attempted with etcd down: " << a.DaemonLog();

  // etcd returns: the rebuild is retried and node-b joins.
  ASSERT_TRUE(etcd_->Restart().ok());
  CommandResult wait = a.Shale({"replica", "wait", "jv", "--timeout", "40"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  nlohmann::json list;
  std::map<std::string, nlohmann::json> replicas = Replicas(a, "jv", &list);
  EXPECT_EQ(replicas["node-b"]["state"], "healthy") << list;
  EXPECT_EQ(list["in_sync"].size(), 2u) << list;
  EXPECT_NE(a.DaemonLog().find("rebuild retried"), std::string::npos);
  ExpectContent(*nbd, oracle, "target");
  nbd.reset();
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  EXPECT_EQ(b.StopDaemon(SIGTERM), 0) << b.DaemonLog();
  ExpectCopiesEqual(ReplicaCopies({&a, &b}, "jv", kVolBytes), 2);
}

// CSI DeleteVolume of a replicated volume deletes it as `shale volume delete` does: the target,
// the local replica, the remote replicas and the membership key (it used to fail with Busy: the
// open target holds the volume).
TEST_F(ReplicationFaultsTest, CsiDeletesAReplicatedVolume) {
  Harness a, b;
  CsiClient csi;
  ASSERT_TRUE(csi.Start(a, NodeFlags(a, *etcd_, "node-a")));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(WaitPublished(a, 2));
  ASSERT_EQ(a.Shale({"volume", "create", "kv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
  {
    auto nbd = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_NE(nbd, nullptr);
    ASSERT_TRUE(nbd->Go("kv").has_value()) << "the target serves";
  }
  // The client's close reaches shaled asynchronously: until it did, the volume has a client and
  // DeleteVolume is refused (FAILED_PRECONDITION, which the external-provisioner retries), so
  // retry as it does, bounded.
  grpc::Status deleted;
  EXPECT_TRUE(WaitFor([&] {
    deleted = csi.DeleteVolume("kv");
    return deleted.ok() || deleted.error_code() != grpc::StatusCode::FAILED_PRECONDITION;
  }));
  ASSERT_TRUE(deleted.ok()) << deleted.error_code() << ": " << deleted.error_message();
  EXPECT_EQ(a.Shale({"volume", "show", "kv"}).exit_code, 1) << "local replica deleted";
  EXPECT_TRUE(WaitFor([&] {
    return b.Shale({"volume", "show", "kv"}).exit_code == 1;
  })) << "remote replica deleted";
  ExpectOneLineError(a.Shale({"replica", "list", "kv"}), "kv");
  EXPECT_TRUE(csi.DeleteVolume("kv").ok()) << "idempotent";
  // The name is free again in the cluster.
  EXPECT_EQ(a.Shale({"volume", "create", "kv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
}

// etcd's count of KV Range calls answered (its /metrics on the client port); -1 if unreadable.
int64_t EtcdRangeCalls(const test::EtcdProcess& etcd) {
  CommandResult r =
      RunProcess({FindProgram("curl"), "-sf", "http://" + etcd.client_address() + "/metrics"});
  if (r.exit_code != 0) return -1;
  static const std::regex kLine(
      R"re(grpc_server_handled_total\{grpc_code="OK",grpc_method="Range",[^}]*\} ([0-9.e+]+))re");
  std::smatch m;
  if (!std::regex_search(r.out, m, kLine)) return 0;
  return static_cast<int64_t>(std::stod(m[1].str()));
}

// A target that refuses to open (cascading failure) is retried with the backoff the repair loop
// uses (0.5 s doubling to 8 s), not every 500 ms, and logged once per reason, not per retry.
TEST_F(ReplicationFaultsTest, RefusedTargetRetriesWithBackoffAndLogsOnce) {
  if (FindProgram("curl").empty()) GTEST_SKIP() << "curl is not installed";
  Harness a, b;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b}));
  ASSERT_EQ(a.Shale({"volume", "create", "cv", "--size", "16M", "--replicas", "2"}).exit_code, 0);
  EXPECT_EQ(a.StopDaemon(SIGTERM), 0) << a.DaemonLog();
  b.KillDaemon();
  ASSERT_NO_FATAL_FAILURE(RecordCascade(*etcd_, "cv"));
  ASSERT_TRUE(a.StartDaemon(NodeFlags(a, *etcd_, "node-a")));

  // Each open attempt reads the membership key (one Range); over 12 s a 500 ms retry makes 24.
  // The backoff makes about 5; the repair thread's scan every 10 s (the node list: 3 Range
  // calls) adds up to 6.
  const auto start = Clock::now();
  const int64_t before = EtcdRangeCalls(*etcd_);
  ASSERT_GE(before, 0);
  ASSERT_FALSE(WaitFor([&] { return !a.daemon_running(); }, seconds(12))) << a.DaemonLog();
  const int64_t ranges = EtcdRangeCalls(*etcd_) - before;
  std::cout << ranges << " etcd Range calls in " << SecondsSince(start)
            << " s while the target refused to open\n";
  EXPECT_LE(ranges, 14) << "retried with a backoff";
  const std::string log = a.DaemonLog();
  size_t lines = 0;
  for (size_t at = log.find("target of a replicated volume not open"); at != std::string::npos;
       at = log.find("target of a replicated volume not open", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 1u) << "logged once per reason: " << log;

  // force-recover opens it at once, backoff or not.
  ASSERT_EQ(a.Shale({"volume", "force-recover", "cv", "--from", "node-a"}).exit_code, 0);
  EXPECT_TRUE(WaitFor(
      [&] {
        auto nbd = NbdRawClient::Tcp(a.NbdAddress());
        return nbd != nullptr && nbd->Go("cv").has_value();
      },
      seconds(5)))
      << a.DaemonLog();
}

}  // namespace
}  // namespace shale::e2e
