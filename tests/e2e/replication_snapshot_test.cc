// Snapshots of replicated volumes end to end (issue 11, point 7; docs/replication.md, "Snapshots
// of replicated volumes"): a real etcd and three shaled on loopback; a 3-replica volume written
// through its target's NBD export *while* `shale snapshot create` runs on the target; the
// snapshot exists on every replica and `shale snapshot verify` reports the same digest from each
// (the target quiesced the write stream: without it the copies would differ). A replica that is
// out does not get it (the label says who holds it); a snapshot asked of a replica node is taken
// by the target;
// a clone of the snapshot is a local volume on the target with the snapshot's bytes, and with
// `--replicas 3` (made on another node) a replicated clone whose replicas join after the
// comparison and which serves the same bytes; delete removes every copy. A node's own volume
// and a backup (a real S3 server, s3rver) become replicated volumes too: the local replica holds
// the data, the others start empty and join after the comparison, and another node's replica
// then serves the same bytes. A group snapshot of two
// replicated volumes and a local one, taken while a writer puts a sequence number on each in turn,
// is one cut on the target and on every replica; a group with a volume served by another node is
// refused and leaves nothing. Skipped (with the reason) where etcd is not installed.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "tests/e2e/etcd_fixture.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/replication_fixture.h"
#include "tests/e2e/s3_server.h"
#include "tests/e2e/sequence_writer.h"

namespace shale::e2e {
namespace {

using std::chrono::seconds;
using ReplicationSnapshotE2eTest = EtcdE2eTest;

constexpr uint64_t kSnapVolBytes = 32ull << 20;

// Writes random 64 KiB blocks through its own NBD connection until stopped (bounded: at most
// 60 s); counts the writes and the errors.
class BackgroundWriter {
 public:
  BackgroundWriter(const std::string& address, const std::string& volume) {
    nbd_ = NbdRawClient::Tcp(address);
    if (nbd_ == nullptr || !nbd_->Go(volume).has_value()) return;
    thread_ = std::thread([this] {
      std::mt19937_64 rng(77);
      std::string block(64 << 10, '\0');
      const auto end = std::chrono::steady_clock::now() + seconds(60);
      while (!stop_.load() && std::chrono::steady_clock::now() < end) {
        for (char& c : block) c = static_cast<char>(rng());
        const uint64_t at = (rng() % (kSnapVolBytes / block.size())) * block.size();
        if (nbd_->Request(NbdRawClient::kCmdWrite, at, block.size(), block) != 0) ++errors_;
        ++writes_;
      }
    });
  }
  ~BackgroundWriter() { Stop(); }
  bool running() const { return thread_.joinable(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t writes() const { return writes_.load(); }
  uint64_t errors() const { return errors_.load(); }

 private:
  std::unique_ptr<NbdRawClient> nbd_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> writes_{0}, errors_{0};
};

// The snapshot's record through `h` (`snapshot show -o json`); null when it fails.
nlohmann::json ShowSnapshot(Harness& h, const std::string& ref) {
  CommandResult r = h.Shale({"snapshot", "show", ref, "-o", "json"});
  return r.exit_code == 0 ? r.Json() : nlohmann::json();
}

// Reads export `x` on `hx` and `y` on `hy` (kSnapVolBytes each) and compares them chunk by chunk.
void ExpectSameBytes(Harness& hx, const std::string& x, Harness& hy, const std::string& y) {
  auto cx = NbdRawClient::Tcp(hx.NbdAddress());
  auto cy = NbdRawClient::Tcp(hy.NbdAddress());
  ASSERT_TRUE(cx != nullptr && cy != nullptr);
  ASSERT_EQ(cx->Go(x), std::optional<uint64_t>(kSnapVolBytes));
  ASSERT_EQ(cy->Go(y), std::optional<uint64_t>(kSnapVolBytes));
  for (uint64_t at = 0; at < kSnapVolBytes; at += kReplicationChunk) {
    std::string bx, by;
    ASSERT_EQ(cx->Request(NbdRawClient::kCmdRead, at, kReplicationChunk, "", &bx), 0);
    ASSERT_EQ(cy->Request(NbdRawClient::kCmdRead, at, kReplicationChunk, "", &by), 0);
    ASSERT_TRUE(bx == by) << y << " differs from " << x << " at " << at;
  }
}

TEST_F(ReplicationSnapshotE2eTest, SnapshotIsTakenOnEveryReplicaAtOnePointOfTheWriteStream) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "sv", "--size", "32M", "--replicas", "3"}).exit_code, 0);

  // Writes go on while the snapshots are taken.
  BackgroundWriter writer(a.NbdAddress(), "sv");
  ASSERT_TRUE(writer.running());
  ASSERT_TRUE(WaitFor([&] { return writer.writes() > 50; }, seconds(20)));
  for (const std::string snap : {"s1", "s2", "s3"}) {
    const uint64_t before = writer.writes();
    CommandResult made = a.Shale({"snapshot", "create", "sv@" + snap});
    ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
    ASSERT_TRUE(WaitFor([&] { return writer.writes() > before + 20; }, seconds(20)))
        << "writes resume after the snapshot";
  }
  writer.Stop();
  EXPECT_EQ(writer.errors(), 0u) << "the quiesce is invisible to the client";
  std::cout << writer.writes() << " writes went on while three snapshots were taken\n";

  for (const std::string snap : {"s1", "s2", "s3"}) {
    const std::string ref = "sv@" + snap;
    const nlohmann::json shown = ShowSnapshot(a, ref);
    ASSERT_FALSE(shown.is_null()) << ref;
    EXPECT_EQ(shown["labels"]["shale.io/snapshot-replicas"], "node-a,node-b,node-c") << shown;
    for (Harness* h : {&b, &c}) {
      EXPECT_FALSE(ShowSnapshot(*h, ref).is_null()) << ref << " exists on the replica node";
    }
    // Every copy hashes the same: one point of the write stream.
    CommandResult verified = a.Shale({"snapshot", "verify", ref, "-o", "json"});
    ASSERT_EQ(verified.exit_code, 0) << verified.Describe() << a.DaemonLog();
    const nlohmann::json v = verified.Json();
    ASSERT_EQ(v["replicas"].size(), 2u) << v;
    for (const nlohmann::json& r : v["replicas"]) EXPECT_EQ(r["digest"], v["digest"]) << v;
    CommandResult text = a.Shale({"snapshot", "verify", ref});
    EXPECT_NE(text.out.find("replica on node-b: digest " + v["digest"].get<std::string>()),
              std::string::npos)
        << text.out;
  }

  // Only the target takes snapshots; revert stays refused.
  // A snapshot asked of a replica node is taken by the target (one cut, every copy).
  CommandResult forwarded =
      b.Shale({"snapshot", "create", "sv@x", "--label", "team=nb", "-o", "json"});
  ASSERT_EQ(forwarded.exit_code, 0) << forwarded.Describe() << b.DaemonLog();
  EXPECT_EQ(forwarded.Json()["volume"], "sv") << forwarded.out;
  EXPECT_EQ(ShowSnapshot(a, "sv@x")["labels"]["shale.io/snapshot-replicas"],
            "node-a,node-b,node-c");
  EXPECT_EQ(ShowSnapshot(a, "sv@x")["labels"]["team"], "nb") << "the labels went along";
  EXPECT_NE(b.DaemonLog().find("snapshot taken by the node serving the volume"), std::string::npos);
  ASSERT_EQ(a.Shale({"snapshot", "delete", "sv@x"}).exit_code, 0);
  ExpectOneLineError(a.Shale({"volume", "revert", "sv", "--to", "s1"}),
                     "cannot revert replicated volume");

  // A clone of a replicated snapshot: a local volume on the target with the snapshot's bytes.
  CommandResult cloned = a.Shale({"clone", "create", "sv@s2", "cl"});
  ASSERT_EQ(cloned.exit_code, 0) << cloned.Describe();
  ExpectSameBytes(a, "sv@s2", a, "cl");
  EXPECT_EQ(b.Shale({"volume", "show", "cl"}).exit_code, 1) << "the clone is local";

  // A replicated clone, made through node-b (which holds a copy): its own replica in sync, the
  // others clones of their node's copies, compared by its target (node-b) and joined; it serves
  // the snapshot's bytes. A live volume as the source is refused.
  CommandResult rcloned =
      b.Shale({"clone", "create", "sv@s2", "rcl", "--replicas", "3", "-o", "json"});
  ASSERT_EQ(rcloned.exit_code, 0) << rcloned.Describe() << b.DaemonLog();
  nlohmann::json rlist;
  EXPECT_TRUE(WaitFor(
      [&] {
        std::map<std::string, nlohmann::json> r = Replicas(b, "rcl", &rlist, /*quiet=*/true);
        return r.size() == 3 && rlist["in_sync"].size() == 3;
      },
      seconds(30)))
      << rlist << b.DaemonLog();
  EXPECT_NE(c.DaemonLog().find("replica created from a snapshot"), std::string::npos);
  ExpectSameBytes(a, "sv@s2", b, "rcl");
  ExpectOneLineError(b.Shale({"clone", "create", "sv", "rcl2", "--replicas", "2"}),
                     "is replicated: clone one of its snapshots");
  CommandResult rdeleted = ShaleWhenClientsGone(b, {"volume", "delete", "rcl"});
  ASSERT_EQ(rdeleted.exit_code, 0) << rdeleted.Describe() << b.DaemonLog();

  // Delete removes every copy.
  CommandResult deleted = a.Shale({"snapshot", "delete", "sv@s1"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe();
  for (Harness* h : {&a, &b, &c}) EXPECT_TRUE(ShowSnapshot(*h, "sv@s1").is_null());
  EXPECT_FALSE(ShowSnapshot(b, "sv@s3").is_null()) << "the other snapshots stay";

  // Every copy knows its holders and its volume's uuid, so a delete through a replica node (the
  // distributed snapshotter asks the node its VolumeSnapshotContent names) removes them all.
  const nlohmann::json copy = ShowSnapshot(c, "sv@s2");
  EXPECT_EQ(copy["labels"]["shale.io/snapshot-replicas"], "node-a,node-b,node-c") << copy;
  CommandResult via_replica = c.Shale({"snapshot", "delete", "sv@s2"});
  ASSERT_EQ(via_replica.exit_code, 0) << via_replica.Describe() << c.DaemonLog();
  for (Harness* h : {&a, &b, &c}) EXPECT_TRUE(ShowSnapshot(*h, "sv@s2").is_null());
  // The volume deleted, its snapshots stay on every node that held them (as a local volume's
  // do); deleted through one of them, the other copies go too.
  // (--force: the stopped writer's connection. Retried for up to 15 s: once in about thirty
  // runs the delete failed here with exit 1, its message not captured then; a failure that
  // lasts still fails the test, with the last answer.)
  CommandResult gone;
  WaitFor(
      [&] {
        gone = a.Shale({"volume", "delete", "sv", "--force"});
        return gone.exit_code == 0;
      },
      seconds(15));
  ASSERT_EQ(gone.exit_code, 0) << gone.Describe() << a.DaemonLog();
  for (Harness* h : {&a, &b, &c}) EXPECT_FALSE(ShowSnapshot(*h, "sv@s3").is_null());
  CommandResult after = b.Shale({"snapshot", "delete", "sv@s3"});
  ASSERT_EQ(after.exit_code, 0) << after.Describe() << b.DaemonLog();
  for (Harness* h : {&a, &b, &c}) {
    EXPECT_TRUE(ShowSnapshot(*h, "sv@s3").is_null()) << h->DaemonLog();
  }
}

// Waits until every replica of `volume` (as `h` sees it) is in sync; false after 60 s.
bool AllInSync(Harness& h, const std::string& volume, size_t replicas) {
  nlohmann::json whole;
  const bool ok = WaitFor(
      [&] {
        const std::map<std::string, nlohmann::json> r = Replicas(h, volume, &whole, true);
        return r.size() == replicas && whole["in_sync"].size() == replicas;
      },
      seconds(60));
  if (!ok) ADD_FAILURE() << volume << ": " << whole << h.DaemonLog();
  return ok;
}

// Moves the target of `volume` from `from` to `to` (detach, attach).
void MoveTarget(Harness& from, Harness& to, const std::string& volume) {
  CommandResult detached = from.Shale({"volume", "detach", volume});
  ASSERT_EQ(detached.exit_code, 0) << detached.Describe();
  CommandResult attached = to.Shale({"volume", "attach", volume});
  ASSERT_EQ(attached.exit_code, 0) << attached.Describe() << to.DaemonLog();
}

TEST_F(ReplicationSnapshotE2eTest, ANodesOwnVolumeAndABackupBecomeReplicatedVolumes) {
  if (S3rverBinary().empty()) {
    GTEST_SKIP() << "s3rver is not installed (scripts/deps installs it into tests/tools with npm)";
  }
  Harness a, b, c;
  S3Server s3;
  ASSERT_TRUE(s3.Start(a.root(), {"backups"}));
  setenv("AWS_ACCESS_KEY_ID", kS3AccessKey, 1);  // the daemons inherit the credentials
  setenv("AWS_SECRET_ACCESS_KEY", kS3SecretKey, 1);
  std::vector<std::string> flags = NodeFlags(a, *etcd_, "node-a");
  flags.insert(flags.end(), {"--backup-endpoint", s3.url()});
  ASSERT_TRUE(a.StartDaemon(flags));
  ASSERT_TRUE(b.StartDaemon(NodeFlags(b, *etcd_, "node-b")));
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  ASSERT_TRUE(WaitPublished(a, 3));

  // node-a's own volume: 24 MiB of data, then a hole.
  ASSERT_EQ(a.Shale({"volume", "create", "data", "--size", "32M"}).exit_code, 0);
  std::string oracle(24 << 20, '\0');
  std::mt19937_64 rng(11);
  for (char& ch : oracle) ch = static_cast<char>(rng());
  {
    auto nbd = NbdRawClient::Tcp(a.NbdAddress());
    ASSERT_TRUE(nbd != nullptr && nbd->Go("data").has_value());
    ASSERT_TRUE(WriteRange(*nbd, oracle, 0, oracle.size()));
    ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
  }

  // A replicated clone of it as it is now, made on node-a: only node-a's replica holds the data
  // at first; node-c's, filled by the comparison, serves it once the target moves there.
  CommandResult cloned = a.Shale({"clone", "create", "data", "data-r", "--replicas", "3"});
  ASSERT_EQ(cloned.exit_code, 0) << cloned.Describe() << a.DaemonLog();
  ASSERT_TRUE(AllInSync(a, "data-r", 3));
  ASSERT_NO_FATAL_FAILURE(MoveTarget(a, c, "data-r"));
  ExpectSameBytes(a, "data", c, "data-r");
  // A replicated volume as the live source is refused: its replica on a node may be behind.
  ExpectOneLineError(c.Shale({"clone", "create", "data-r", "x", "--replicas", "2"}),
                     "is replicated: clone one of its snapshots");

  // A backup of the volume, restored as a 3-replica volume through node-b (which has no default
  // endpoint: the CLI names it): node-b restores its replica (digest checked), the others are
  // filled from it; node-a's replica then serves the snapshot's bytes.
  ASSERT_EQ(a.Shale({"snapshot", "create", "data@b1"}).exit_code, 0);
  CommandResult backed =
      a.Shale({"backup", "create", "data@b1", "--to", "s3://backups/p", "-o", "json"});
  ASSERT_EQ(backed.exit_code, 0) << backed.Describe() << a.DaemonLog();
  const std::string url = backed.Json()["url"];
  CommandResult restored = b.Shale({"backup", "restore", url, "data-b", "--endpoint", s3.url(),
                                    "--replicas", "3", "-o", "json"});
  ASSERT_EQ(restored.exit_code, 0) << restored.Describe() << b.DaemonLog();
  EXPECT_EQ(restored.Json()["digest"], backed.Json()["digest"]) << restored.out;
  ASSERT_TRUE(AllInSync(b, "data-b", 3));
  ASSERT_NO_FATAL_FAILURE(MoveTarget(b, a, "data-b"));
  ExpectSameBytes(a, "data@b1", a, "data-b");
  // (ExpectSameBytes's NBD clients have just closed.)
  CommandResult gone = ShaleWhenClientsGone(c, {"volume", "delete", "data-r"});
  ASSERT_EQ(gone.exit_code, 0) << gone.Describe() << c.DaemonLog();
  gone = ShaleWhenClientsGone(a, {"volume", "delete", "data-b"});
  ASSERT_EQ(gone.exit_code, 0) << gone.Describe() << a.DaemonLog();
  for (Harness* h : {&a, &b, &c}) {
    EXPECT_NE(h->Shale({"volume", "show", "data-b"}).exit_code, 0) << "every replica deleted";
  }
}

TEST_F(ReplicationSnapshotE2eTest, AReplicaThatIsOutDoesNotHoldTheSnapshot) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "ov", "--size", "16M", "--replicas", "3"}).exit_code, 0);
  auto nbd = NbdRawClient::Tcp(a.NbdAddress());
  ASSERT_NE(nbd, nullptr);
  ASSERT_TRUE(nbd->Go("ov").has_value());
  std::string data(1 << 20, 'x');
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdWrite, 0, data.size(), data), 0);
  // Flushed: a replica killed with -9 keeps only what was flushed (what it lost of unflushed
  // writes is the activity log's business, not this test's).
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdFlush, 0, 0), 0);

  c.KillDaemon();
  // The next write notices it is gone (its connection broke): it leaves the in-sync set.
  ASSERT_EQ(nbd->Request(NbdRawClient::kCmdWrite, 1 << 20, data.size(), data), 0);
  ASSERT_TRUE(
      WaitFor([&] { return Replicas(a, "ov")["node-c"]["state"] == "faulted"; }, seconds(20)));
  CommandResult made = a.Shale({"snapshot", "create", "ov@while-out"});
  ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  EXPECT_EQ(ShowSnapshot(a, "ov@while-out")["labels"]["shale.io/snapshot-replicas"],
            "node-a,node-b");
  CommandResult verified = a.Shale({"snapshot", "verify", "ov@while-out", "-o", "json"});
  ASSERT_EQ(verified.exit_code, 0) << verified.Describe();
  ASSERT_EQ(verified.Json()["replicas"].size(), 1u) << verified.out;
  EXPECT_EQ(verified.Json()["replicas"][0]["node"], "node-b");

  // node-c returns and is rebuilt; the snapshot stays recorded on the two that hold it.
  ASSERT_TRUE(c.StartDaemon(NodeFlags(c, *etcd_, "node-c")));
  CommandResult wait = a.Shale({"replica", "wait", "ov", "--timeout", "60"});
  ASSERT_EQ(wait.exit_code, 0) << wait.Describe() << a.DaemonLog();
  EXPECT_TRUE(ShowSnapshot(c, "ov@while-out").is_null()) << "no copy on the replica that was out";
  EXPECT_EQ(a.Shale({"snapshot", "verify", "ov@while-out"}).exit_code, 0);
  // A snapshot taken now is on all three, and equal.
  ASSERT_EQ(a.Shale({"snapshot", "create", "ov@after"}).exit_code, 0);
  CommandResult after = a.Shale({"snapshot", "verify", "ov@after", "-o", "json"});
  ASSERT_EQ(after.exit_code, 0) << after.Describe();
  EXPECT_EQ(after.Json()["replicas"].size(), 2u) << after.out;
}

// Block 0 of `export_name` on `h` as the sequence writer put it there.
uint64_t ReadSeq(Harness& h, const std::string& export_name) {
  auto nbd = NbdRawClient::Tcp(h.NbdAddress());
  std::string data;
  if (nbd == nullptr || !nbd->Go(export_name).has_value() ||
      nbd->Request(NbdRawClient::kCmdRead, 0, 4096, "", &data) != 0 || data.size() < 8) {
    ADD_FAILURE() << "cannot read " << export_name;
    return UINT64_MAX;
  }
  return SequenceWriter::SeqOf(data);
}

TEST_F(ReplicationSnapshotE2eTest, GroupOfReplicatedAndLocalVolumesIsOneCutOnEveryReplica) {
  Harness a, b, c;
  ASSERT_TRUE(StartNodes(*etcd_, {&a, &b, &c}));
  ASSERT_EQ(a.Shale({"volume", "create", "g-data", "--size", "16M", "--replicas", "3"}).exit_code,
            0);
  ASSERT_EQ(a.Shale({"volume", "create", "g-model", "--size", "16M", "--replicas", "2"}).exit_code,
            0);
  ASSERT_EQ(a.Shale({"volume", "create", "g-scratch", "--size", "16M"}).exit_code, 0);
  const std::vector<std::string> vols = {"g-data", "g-model", "g-scratch"};
  std::vector<std::unique_ptr<NbdRawClient>> clients;
  for (const std::string& v : vols) {
    clients.push_back(NbdRawClient::Tcp(a.NbdAddress()));
    ASSERT_NE(clients.back(), nullptr);
    ASSERT_TRUE(clients.back()->Go(v).has_value());
  }
  SequenceWriter writer(std::move(clients));
  std::vector<std::pair<std::string, uint64_t>> groups;  // name, rounds acknowledged before
  for (int g = 0; g < 3; ++g) {
    ASSERT_TRUE(writer.WaitMore(20)) << a.DaemonLog();
    const std::string name = "exp-" + std::to_string(g);
    groups.emplace_back(name, writer.rounds());
    CommandResult made = a.Shale({"snapshot", "create-group", name, "g-data", "g-model",
                                  "g-scratch", "--label", "notebook=nb-7", "-o", "json"});
    ASSERT_EQ(made.exit_code, 0) << made.Describe() << a.DaemonLog();
  }
  EXPECT_TRUE(writer.WaitMore(20)) << "writes go on after the groups" << a.DaemonLog();
  writer.Stop();
  ASSERT_FALSE(writer.failed()) << "the quiesce is invisible to the writer" << a.DaemonLog();

  for (const auto& [name, acknowledged] : groups) {
    const std::array<uint64_t, 3> seqs = {ReadSeq(a, vols[0] + "@" + name),
                                          ReadSeq(a, vols[1] + "@" + name),
                                          ReadSeq(a, vols[2] + "@" + name)};
    EXPECT_GE(seqs[2], acknowledged) << name << ": an acknowledged round is missing";
    EXPECT_GE(seqs[0], seqs[1]) << name;
    EXPECT_GE(seqs[1], seqs[2]) << name;
    EXPECT_LE(seqs[0], seqs[2] + 1) << name << ": a gap between members";
    // Every copy of each replicated member holds the target's bytes: one cut everywhere.
    for (const std::string v : {"g-data", "g-model"}) {
      const std::string ref = v + "@" + name;
      const nlohmann::json shown = ShowSnapshot(a, ref);
      EXPECT_EQ(shown["labels"]["shale.io/group"], name) << shown;
      EXPECT_EQ(shown["labels"]["notebook"], "nb-7") << shown;
      CommandResult verified = a.Shale({"snapshot", "verify", ref, "-o", "json"});
      ASSERT_EQ(verified.exit_code, 0) << verified.Describe() << a.DaemonLog();
      const nlohmann::json result = verified.Json();
      ASSERT_EQ(result["replicas"].size(), v == "g-data" ? 2u : 1u) << result;
      for (const nlohmann::json& r : result["replicas"]) {
        EXPECT_EQ(r["digest"], result["digest"]) << ref << ": " << result;
      }
    }
    EXPECT_TRUE(
        ShowSnapshot(a, "g-scratch@" + name)["labels"]["shale.io/snapshot-replicas"].is_null())
        << "the local member is an ordinary snapshot";
  }

  // A replicated volume served by another node cannot join a group taken here; nothing is left.
  ASSERT_EQ(b.Shale({"volume", "create", "g-elsewhere", "--size", "16M", "--replicas", "2",
                     "--replica-nodes", "node-b,node-a"})
                .exit_code,
            0);
  CommandResult refused = a.Shale({"snapshot", "create-group", "mixed", "g-data", "g-elsewhere"});
  ExpectOneLineError(refused, "served by node node-b");
  EXPECT_TRUE(ShowSnapshot(a, "g-data@mixed").is_null());
  EXPECT_NE(a.Shale({"snapshot", "show-group", "mixed"}).exit_code, 0);

  // Deleting a group deletes its members' copies on every replica.
  ASSERT_EQ(a.Shale({"snapshot", "delete-group", "exp-0"}).exit_code, 0);
  for (Harness* h : {&a, &b, &c}) {
    EXPECT_TRUE(ShowSnapshot(*h, "g-data@exp-0").is_null());
    EXPECT_TRUE(ShowSnapshot(*h, "g-model@exp-0").is_null());
  }
  EXPECT_FALSE(ShowSnapshot(c, "g-data@exp-1").is_null()) << "the other groups stay";
}

}  // namespace
}  // namespace shale::e2e
