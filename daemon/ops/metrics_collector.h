// DaemonMetrics: everything shaled exports on /metrics (docs/operations.md has the table).
//
// Scrape() reads the daemon's state at that moment — the engine's pools and volumes (counters
// and latency histograms kept by the volumes on their reactors, read with relaxed loads), QoS
// throttling (one short task per open volume on its reactor), the capacity policy, reactor CPU
// time and the process — and renders it in the text format. It never
// blocks a reactor: it runs on the metrics server's thread.
//
// Two figures are expensive to compute and are cached for CollectorOptions::slow_ttl (30 s):
// the space a volume's data takes (a walk of its in-memory map on its reactor: owned and shared
// bytes) and, with a usage label, the usage groups (they read snapshot space). Everything else is
// read at every scrape. QoS counters are kept monotonic across the QoS layer being recreated (a
// volume closed and opened again): a drop is taken as a restart of that counter.
//
// Labels: node (every shale_ series), pool, volume, and the --metrics-usage-label key on volume
// series; reactor; volume, replica (its node) and state for replicas. Never per request.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "daemon/ops/exposition.h"
#include "daemon/ops/usage.h"
#include "engine/common/latency_histogram.h"
#include "engine/engine.h"

namespace shale::daemon {
class VolumeLifecycle;
}

namespace shale::daemon::ops {

// One replica of a replicated volume this node is the target of, as the metrics show it.
struct ReplicaSample {
  std::string volume;
  std::string replica;  // its node
  std::string state;    // healthy, rebuilding or faulted (out of the in-sync set: also stale)
  // Since the target opened on this node: bytes of the regions rebuilt (compared, and copied
  // where they differed), and the bytes sent because they differed.
  uint64_t rebuild_bytes = 0;
  uint64_t rebuild_sent_bytes = 0;
  // Its successful data writes, from the target's fan-out to the replica's done.
  LatencyHistogram::Snapshot write_latency;
};

// The states shale_replica_state has a series for (1 for the replica's, 0 for the others).
inline constexpr const char* kReplicaMetricStates[] = {"healthy", "rebuilding", "faulted"};

struct CollectorOptions {
  std::string node;         // the "node" label (CSI node id / host name)
  std::string version;      // shale_build_info
  std::string usage_label;  // --metrics-usage-label; empty: no usage families
  std::chrono::seconds slow_ttl{30};
  std::function<uint32_t()> nbd_connections;             // null: no NBD
  std::function<std::vector<ReplicaSample>()> replicas;  // null: not in cluster mode
};

class DaemonMetrics {
 public:
  // `lifecycle` (and its engine, QoS manager and snapshot layer) must outlive the object.
  DaemonMetrics(VolumeLifecycle* lifecycle, CollectorOptions options);
  DaemonMetrics(const DaemonMetrics&) = delete;
  DaemonMetrics& operator=(const DaemonMetrics&) = delete;

  // The whole exposition. Thread-safe (scrapes are serialized).
  std::string Scrape();

  // Names of every family Scrape() declares (HELP and TYPE), also those without samples (the
  // replica families outside cluster mode).
  static std::vector<std::string> FamilyNames();

 private:
  struct VolumeSpaceCache;
  struct Monotonic {
    uint64_t offset = 0;
    uint64_t last = 0;
  };
  using VolumeKey = std::pair<std::string, uint64_t>;  // (pool, volume id): never reused
  // `value` of counter `counter` of a volume, which may restart (QoS layer recreated), made
  // monotonic.
  uint64_t Monotonize(const VolumeKey& volume, int counter, uint64_t value);
  void ScrapePools(TextExposition& out, const MetricLabels& node);
  void ScrapeVolumes(TextExposition& out, const MetricLabels& node);
  void ScrapeUsage(TextExposition& out, const MetricLabels& node);
  void ScrapeReplicas(TextExposition& out, const MetricLabels& node);
  // (owned, shared) data bytes of a volume, cached for slow_ttl.
  std::pair<uint64_t, uint64_t> VolumeSpace(const VolumeInfo& volume);

  VolumeLifecycle* const lifecycle_;
  const CollectorOptions options_;
  std::mutex mu_;
  std::map<VolumeKey, std::map<int, Monotonic>> monotonic_;
  // (owned, shared) data bytes, and when they were computed.
  std::map<VolumeKey,
           std::pair<std::chrono::steady_clock::time_point, std::pair<uint64_t, uint64_t>>>
      space_;
  std::chrono::steady_clock::time_point usage_at_{};
  std::vector<UsageFigures> usage_;
  double last_duration_ = 0;  // seconds the previous scrape took
};

// The label a volume label KEY becomes on metric series: "label_" + KEY with every character
// outside [a-zA-Z0-9] made '_' (label:team -> label_team), as kube-state-metrics names them.
std::string UsageLabelName(std::string_view key);

}  // namespace shale::daemon::ops
