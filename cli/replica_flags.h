// The replica flags of the commands that make a volume (`volume create`, `clone create`,
// `backup restore`): --replicas, --replica-nodes, --replica-node-selector, --min-in-sync, named
// and filled the same way everywhere (docs/replication.md). Each request message carries the
// fields replicas, replica_nodes, min_in_sync and replica_node_selector.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace shale::cli {

struct ReplicaFlags {
  uint32_t replicas = 0;  // 0: not given (a local volume)
  std::vector<std::string> nodes;
  std::string selector;
  uint32_t min_in_sync = 0;

  // `replicas_help` says what --replicas makes of this command's volume.
  void Add(CLI::App* cmd, const std::string& replicas_help) {
    cmd->add_option("--replicas", replicas, replicas_help)
        ->check(CLI::Range(1, 16))
        ->type_name("N");
    cmd->add_option("--replica-nodes", nodes,
                    "Place the replicas only on these nodes (comma-separated)")
        ->delimiter(',')
        ->type_name("a,b,c");
    cmd->add_option("--replica-node-selector", selector,
                    "Place the replicas (and those replacing them later) only on nodes whose "
                    "labels (`shale node label`) meet it: KEY=VALUE, KEY!=VALUE, KEY, !KEY, "
                    "comma-separated, all must hold")
        ->type_name("SELECTOR");
    cmd->add_option("--min-in-sync", min_in_sync,
                    "Replicas that must stay in sync for writes to succeed (default 1)")
        ->check(CLI::Range(1, 16))
        ->type_name("M");
  }

  template <typename Request>
  void Fill(Request* req) const {
    req->set_replicas(replicas);
    for (const std::string& node : nodes) req->add_replica_nodes(node);
    req->set_min_in_sync(min_in_sync);
    req->set_replica_node_selector(selector);
  }
};

}  // namespace shale::cli
