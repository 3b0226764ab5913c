// Shared pieces of the replication end-to-end tests (replication_test.cc,
// replication_faults_test.cc): cluster flags for a node, `shale replica list` by node, starting
// node-a, node-b, ... and waiting until their replica addresses are published, writing an oracle
// through NBD and comparing a volume with it. Header-only; the tests use EtcdE2eTest
// (etcd_fixture.h) for the etcd they run.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cluster/cluster_store.h"
#include "cluster/etcd_client.h"
#include "tests/cluster/etcd_process.h"
#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"

namespace shale::e2e {

inline constexpr char kReplicationSecret[] = "e2e-replication-secret-0123456789abcdef\n";
inline constexpr uint32_t kReplicationChunk = 256 << 10;

inline std::string WriteSecret(const std::string& dir) {
  const std::string path = dir + "/cluster.secret";
  std::ofstream(path) << kReplicationSecret;
  EXPECT_EQ(chmod(path.c_str(), 0600), 0);
  return path;
}

// The cluster flags of node `name` (2 s lease, replica listener on `replica_listen`).
inline std::vector<std::string> NodeFlags(const Harness& h, const std::string& etcd_endpoint,
                                          const std::string& name,
                                          const std::string& replica_listen = "127.0.0.1:0") {
  return {"--cluster-store",       etcd_endpoint,         "--node-name",          name,
          "--cluster-secret-file", WriteSecret(h.root()), "--node-lease-seconds", "2",
          "--replica-listen",      replica_listen};
}
inline std::vector<std::string> NodeFlags(const Harness& h, const test::EtcdProcess& etcd,
                                          const std::string& name) {
  return NodeFlags(h, etcd.endpoint(), name);
}

// `shale replica list NAME -o json` through `h`, by node (empty on failure; recorded as a test
// failure unless `quiet`).
inline std::map<std::string, nlohmann::json> Replicas(Harness& h, const std::string& volume,
                                                      nlohmann::json* whole = nullptr,
                                                      bool quiet = false) {
  std::map<std::string, nlohmann::json> out;
  CommandResult r = h.Shale({"replica", "list", volume, "-o", "json"});
  if (r.exit_code != 0) {
    if (!quiet) ADD_FAILURE() << r.Describe();
    return out;
  }
  const nlohmann::json j = r.Json();
  if (whole != nullptr) *whole = j;
  for (const nlohmann::json& n : j["replicas"]) out[n["node"].get<std::string>()] = n;
  return out;
}

// `shale ARGS` through `h` (a delete, a detach), retried for up to 10 s while it is refused for
// NBD clients: a client's close reaches shaled a moment after the client returned.
inline CommandResult ShaleWhenClientsGone(Harness& h, const std::vector<std::string>& args) {
  CommandResult r;
  WaitFor(
      [&] {
        r = h.Shale(args);
        return r.exit_code == 0 || r.err.find("has clients") == std::string::npos;
      },
      std::chrono::seconds(10));
  return r;
}

// Every node up with its replica address published.
inline bool AllPublished(Harness& h, size_t count) {
  CommandResult r = h.Shale({"node", "list", "-o", "json"});
  if (r.exit_code != 0) return false;
  size_t ready = 0;
  const nlohmann::json j = r.Json();
  for (const nlohmann::json& n : j["nodes"]) {
    if (n["state"] == "up" && !n["replica_address"].get<std::string>().empty()) ++ready;
  }
  return ready == count;
}

// Waits until `count` nodes published their replica address (as seen through `h`).
inline bool WaitPublished(Harness& h, size_t count) {
  if (WaitFor([&] { return AllPublished(h, count); }, std::chrono::seconds(20))) return true;
  ADD_FAILURE() << "replica addresses not published: "
                << h.Shale({"node", "list", "-o", "json"}).Describe();
  return false;
}

// Starts `nodes` as node-a, node-b, ... (by position) and waits until each published its replica
// address; false (with the failure recorded) otherwise.
inline bool StartNodes(const test::EtcdProcess& etcd, std::initializer_list<Harness*> nodes) {
  char name = 'a';
  for (Harness* h : nodes) {
    if (!h->StartDaemon(NodeFlags(*h, etcd, std::string("node-") + name++))) return false;
  }
  return WaitPublished(**nodes.begin(), nodes.size());
}

// Writes [offset, offset + length) of `oracle` through `nbd` in kReplicationChunk requests;
// false on the first NBD error (recorded as a test failure).
inline bool WriteRange(NbdRawClient& nbd, const std::string& oracle, uint64_t offset,
                       uint64_t length) {
  for (uint64_t at = offset; at < offset + length; at += kReplicationChunk) {
    const uint32_t n =
        static_cast<uint32_t>(std::min<uint64_t>(kReplicationChunk, offset + length - at));
    const int64_t err = nbd.Request(NbdRawClient::kCmdWrite, at, n, oracle.substr(at, n));
    if (err != 0) {
      ADD_FAILURE() << "NBD write at " << at << " failed: " << err;
      return false;
    }
  }
  return true;
}

// Reads the whole volume through `nbd` and compares it with `oracle`.
inline void ExpectContent(NbdRawClient& nbd, const std::string& oracle, const std::string& who) {
  for (uint64_t at = 0; at < oracle.size(); at += kReplicationChunk) {
    std::string data;
    ASSERT_EQ(nbd.Request(NbdRawClient::kCmdRead, at, kReplicationChunk, "", &data), 0)
        << who << " @" << at;
    ASSERT_TRUE(data == oracle.substr(at, kReplicationChunk))
        << who << " differs from the oracle at " << at;
  }
}

// Writes the record a target would have left after a cascading failure of the 2-replica volume
// `volume` (node-a, the target, left; node-b took the writes): epoch + 1, in_sync = [node-b].
inline void RecordCascade(const test::EtcdProcess& etcd, const std::string& volume) {
  auto client = cluster::EtcdClient::Create(etcd.endpoint());
  ASSERT_TRUE(client.ok()) << client.status();
  auto store = cluster::ClusterStore::Create(std::move(client).value());
  ASSERT_TRUE(store.ok()) << store.status();
  auto record = (*store)->GetVolume(volume);
  ASSERT_TRUE(record.ok()) << record.status();
  cluster::Membership next = record->membership;
  next.epoch += 1;
  next.in_sync = {"node-b"};
  next.replicas[0].state = cluster::ReplicaState::kFaulted;
  next.replicas[0].since_epoch = next.epoch;
  next.RecordChange("node-a left: test");
  cluster::VolumeRecord current;
  ASSERT_TRUE((*store)->CompareAndSwapVolume(volume, record->mod_revision, next, &current).ok());
}

}  // namespace shale::e2e
