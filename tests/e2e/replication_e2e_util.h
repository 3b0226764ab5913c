// Shared by the replication end-to-end tests (replication_test.cc, replication_crash_test.cc):
// the cluster flags of a node, starting a few nodes and waiting until each published its replica
// address, and `shale replica list -o json` by node.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "tests/cluster/etcd_process.h"
#include "tests/e2e/harness.h"

namespace shale::e2e {

inline constexpr char kReplicationSecret[] = "e2e-replication-secret-0123456789abcdef\n";

inline std::string WriteSecret(const std::string& dir) {
  const std::string path = dir + "/cluster.secret";
  std::ofstream(path) << kReplicationSecret;
  EXPECT_EQ(chmod(path.c_str(), 0600), 0);
  return path;
}

inline std::vector<std::string> NodeFlags(const Harness& h, const test::EtcdProcess& etcd,
                                          const std::string& name) {
  return {"--cluster-store",       etcd.endpoint(),       "--node-name",          name,
          "--cluster-secret-file", WriteSecret(h.root()), "--node-lease-seconds", "2",
          "--replica-listen",      "127.0.0.1:0"};
}

// `shale replica list NAME -o json` through `h`, by node (empty on failure).
inline std::map<std::string, nlohmann::json> Replicas(Harness& h, const std::string& volume,
                                                      nlohmann::json* whole = nullptr) {
  std::map<std::string, nlohmann::json> out;
  CommandResult r = h.Shale({"replica", "list", volume, "-o", "json"});
  if (r.exit_code != 0) {
    ADD_FAILURE() << r.Describe();
    return out;
  }
  const nlohmann::json j = r.Json();
  if (whole != nullptr) *whole = j;
  for (const nlohmann::json& n : j["replicas"]) out[n["node"].get<std::string>()] = n;
  return out;
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

// Starts `nodes` as node-a, node-b, ... (by position) and waits until each published its replica
// address; false (with the failure recorded) otherwise.
inline bool StartNodes(const test::EtcdProcess& etcd, std::initializer_list<Harness*> nodes) {
  char name = 'a';
  for (Harness* h : nodes) {
    if (!h->StartDaemon(NodeFlags(*h, etcd, std::string("node-") + name++))) return false;
  }
  Harness& first = **nodes.begin();
  if (WaitFor([&] { return AllPublished(first, nodes.size()); }, std::chrono::seconds(20)))
    return true;
  ADD_FAILURE() << "replica addresses not published: "
                << first.Shale({"node", "list", "-o", "json"}).Describe();
  return false;
}

}  // namespace shale::e2e
