// ReplicatedVolumes: what operators read and tune while targets run: the replicas' states and
// rebuild byte counters for the metrics, and the node's rebuild rate cap (`shale qos
// rebuild-bps`, docs/replication.md "Rebuild").
#include <vector>

#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"

namespace shale::daemon {

using replication::MemberState;

std::vector<std::shared_ptr<ReplicatedVolumes::Target>> ReplicatedVolumes::Targets() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Target>> out;
  for (const auto& [name, target] : targets_) out.push_back(target);
  return out;
}

RebuildRate ReplicatedVolumes::SetRebuildRate(uint64_t bps) {
  rebuild_bps_.store(bps, std::memory_order_relaxed);
  const std::vector<std::shared_ptr<Target>> targets = Targets();
  for (const std::shared_ptr<Target>& t : targets) {
    t->reactor->RunSync([&] {
      if (t->rebuilder && t->rebuild_running) t->rebuilder->SetRate(bps);
    });
  }
  SHALE_LOG_INFO("rebuild rate cap changed", {"bps", bps});
  return GetRebuildRate();
}

RebuildRate ReplicatedVolumes::GetRebuildRate() {
  RebuildRate out{.bps = rebuild_bps_.load(std::memory_order_relaxed)};
  const std::vector<std::shared_ptr<Target>> targets = Targets();
  for (const std::shared_ptr<Target>& t : targets) {
    t->reactor->RunSync([&] {
      if (t->rebuilder && t->rebuild_running) out.running.push_back(t->name);
    });
  }
  return out;
}

std::vector<ops::ReplicaSample> ReplicatedVolumes::Metrics() {
  const std::vector<std::shared_ptr<Target>> targets = Targets();
  std::vector<ops::ReplicaSample> out;
  for (const std::shared_ptr<Target>& t : targets) {
    std::vector<replication::ReplicaStatus> live;
    std::string rebuilding;  // the node of the rebuild running now, and its progress
    replication::Rebuilder::Progress running;
    t->reactor->RunSync([&] {
      live = t->layer->Replicas();
      if (t->rebuilder && t->rebuild_running) {
        rebuilding = t->rebuilder->target();
        running = t->rebuilder->progress();
      }
    });
    std::lock_guard lock(t->mu);
    for (const replication::ReplicaStatus& s : live) {
      ops::ReplicaSample r{.volume = t->name,
                           .replica = s.node,
                           .state = "faulted",
                           .write_latency = s.write_latency};
      if (s.state == MemberState::kInSync) r.state = "healthy";
      if (s.state == MemberState::kRebuilding || s.state == MemberState::kJoining) {
        r.state = "rebuilding";
      }
      auto it = t->repair.find(s.node);
      if (it != t->repair.end()) {
        r.rebuild_bytes = it->second.done_total;
        r.rebuild_sent_bytes = it->second.sent_total;
      }
      if (s.node == rebuilding) {
        r.rebuild_bytes += running.done_bytes;
        r.rebuild_sent_bytes += running.sent_bytes;
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace shale::daemon
