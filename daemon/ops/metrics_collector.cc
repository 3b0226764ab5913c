#include "daemon/ops/metrics_collector.h"

#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>

#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/ops/exposition.h"
#include "engine/common/latency_histogram.h"
#include "engine/common/log.h"
#include "qos/qos_manager.h"

namespace shale::daemon::ops {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr double kNs = 1e-9;

struct FamilySpec {
  const char* name;
  MetricType type;
  const char* help;
};

// Every family, in the order they are written. docs/operations.md lists them with their labels.
constexpr FamilySpec kFamilies[] = {
    {"shale_build_info", MetricType::kGauge, "Version of shaled (always 1)."},
    {"process_resident_memory_bytes", MetricType::kGauge, "Resident memory of shaled."},
    {"process_virtual_memory_bytes", MetricType::kGauge, "Virtual memory of shaled."},
    {"process_cpu_seconds_total", MetricType::kCounter, "CPU time of shaled, user and system."},
    {"process_open_fds", MetricType::kGauge, "Open file descriptors of shaled."},
    {"process_start_time_seconds", MetricType::kGauge, "Start time of shaled since the epoch."},
    {"shale_reactor_busy_seconds_total", MetricType::kCounter,
     "CPU time of a data-path reactor thread (waiting for I/O costs none)."},
    {"shale_pool_online", MetricType::kGauge, "1 when the pool serves volumes, 0 when in error."},
    {"shale_pool_capacity_bytes", MetricType::kGauge, "Data area of the pool."},
    {"shale_pool_used_bytes", MetricType::kGauge, "Pool space in clusters in use."},
    {"shale_pool_free_bytes", MetricType::kGauge, "Pool space in free clusters."},
    {"shale_pool_provisioned_bytes", MetricType::kGauge,
     "What the pool's volumes are promised, summed (counts toward the overcommit limit)."},
    {"shale_pool_overcommit_ratio", MetricType::kGauge, "Provisioned bytes / capacity."},
    {"shale_pool_overcommit_limit_ratio", MetricType::kGauge,
     "The pool's overcommit limit as a ratio (absent: no limit)."},
    {"shale_pool_fill_warning_ratio", MetricType::kGauge, "Warning threshold of used / capacity."},
    {"shale_pool_fill_critical_ratio", MetricType::kGauge,
     "Critical threshold of used / capacity."},
    {"shale_pool_fill_level", MetricType::kGauge,
     "Fill level as shaled logs it: 0 ok, 1 above warning, 2 above critical."},
    {"shale_pool_volumes", MetricType::kGauge, "Volumes in the pool."},
    {"shale_volume_size_bytes", MetricType::kGauge, "Size of the volume seen by clients."},
    {"shale_volume_provisioned_bytes", MetricType::kGauge,
     "What the volume counts toward its pool's overcommit limit."},
    {"shale_volume_allocated_bytes", MetricType::kGauge,
     "Pool space in clusters of the volume's own (freed when it is deleted)."},
    {"shale_volume_owned_bytes", MetricType::kGauge,
     "Data the volume stores in its own clusters (4 KiB granular)."},
    {"shale_volume_shared_bytes", MetricType::kGauge,
     "Data the volume reads through snapshots (held by them)."},
    {"shale_volume_clients", MetricType::kGauge, "Frontend handles (NBD exports) holding it."},
    {"shale_volume_read_operations_total", MetricType::kCounter, "Read requests."},
    {"shale_volume_write_operations_total", MetricType::kCounter, "Write requests."},
    {"shale_volume_flush_operations_total", MetricType::kCounter, "Flush requests."},
    {"shale_volume_discard_operations_total", MetricType::kCounter, "Discard (trim) requests."},
    {"shale_volume_write_zeroes_operations_total", MetricType::kCounter, "Write-zeroes requests."},
    {"shale_volume_read_bytes_total", MetricType::kCounter, "Bytes read."},
    {"shale_volume_write_bytes_total", MetricType::kCounter, "Bytes written."},
    {"shale_volume_discard_bytes_total", MetricType::kCounter, "Bytes discarded."},
    {"shale_volume_write_zeroes_bytes_total", MetricType::kCounter, "Bytes zeroed."},
    {"shale_volume_errors_total", MetricType::kCounter, "Requests that completed with an error."},
    {"shale_volume_read_latency_seconds", MetricType::kHistogram,
     "Read latency in the engine (QoS waits excluded)."},
    {"shale_volume_write_latency_seconds", MetricType::kHistogram,
     "Write latency in the engine (QoS waits excluded)."},
    {"shale_volume_flush_latency_seconds", MetricType::kHistogram,
     "Flush latency in the engine (the metadata commit included)."},
    {"shale_volume_qos_throttled_seconds_total", MetricType::kCounter,
     "Time with at least one request held by the volume's QoS limits."},
    {"shale_volume_qos_throttled_requests_total", MetricType::kCounter,
     "Requests that waited for a QoS limit."},
    {"shale_volume_qos_rejected_requests_total", MetricType::kCounter,
     "Requests refused because the QoS queue was full."},
    {"shale_volume_qos_queue_depth", MetricType::kGauge, "Requests waiting in QoS now."},
    {"shale_usage_volumes", MetricType::kGauge, "Volumes per value of the usage label."},
    {"shale_usage_provisioned_bytes", MetricType::kGauge,
     "Provisioned bytes per value of the usage label."},
    {"shale_usage_allocated_bytes", MetricType::kGauge,
     "Allocated bytes per value of the usage label."},
    {"shale_usage_snapshot_bytes", MetricType::kGauge,
     "Data in the snapshots of the volumes per value of the usage label."},
    {"shale_replica_state", MetricType::kGauge,
     "1 for the state a replica is in (healthy, rebuilding, faulted), 0 for the others; on the "
     "volume's target."},
    {"shale_replica_rebuild_bytes_total", MetricType::kCounter,
     "Bytes of the regions rebuilt on a replica (compared, copied where they differed)."},
    {"shale_replica_rebuild_sent_bytes_total", MetricType::kCounter,
     "Bytes sent to a rebuilding replica because they differed."},
    {"shale_replica_write_latency_seconds", MetricType::kHistogram,
     "Latency of the volume's data writes on a replica, from the target's fan-out to the "
     "replica's done (a remote replica: the round trip); on the volume's target."},
    {"shale_nbd_connections", MetricType::kGauge, "Open NBD client connections."},
    {"shale_metrics_scrape_duration_seconds", MetricType::kGauge,
     "Time the previous scrape took to collect."},
};

// Writes the family of `name`'s HELP and TYPE.
void Begin(TextExposition& out, std::string_view name) {
  for (const FamilySpec& f : kFamilies) {
    if (name == f.name) return out.Family(f.name, f.type, f.help);
  }
  SHALE_CHECK(false, "undeclared metric family ", name);
}

MetricLabels With(MetricLabels labels, std::string key, std::string value) {
  labels.emplace_back(std::move(key), std::move(value));
  return labels;
}

struct ProcessFigures {
  double rss = 0, vsize = 0, cpu = 0, start = 0, fds = 0;
};

ProcessFigures ReadProcess() {
  ProcessFigures p;
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::ifstream statm("/proc/self/statm");
  double size = 0, resident = 0;
  if (statm >> size >> resident) {
    p.vsize = size * page;
    p.rss = resident * page;
  }
  std::ifstream stat_in("/proc/self/stat");
  std::string stat;
  std::getline(stat_in, stat);           // one line
  const size_t close = stat.rfind(')');  // the command may contain spaces
  if (close != std::string::npos) {
    std::istringstream fields(stat.substr(close + 2));
    std::vector<std::string> f;
    for (std::string s; fields >> s;) f.push_back(s);
    // After the command: state is field 3, so field N is f[N - 3].
    if (f.size() > 19) {
      p.cpu = (std::stod(f[11]) + std::stod(f[12])) / tick;
      std::ifstream proc_stat("/proc/stat");
      for (std::string line; std::getline(proc_stat, line);) {
        if (line.starts_with("btime "))
          p.start = std::stod(line.substr(6)) + std::stod(f[19]) / tick;
      }
    }
  }
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++p.fds;
  }
  return p;
}

void Latency(TextExposition& out, const MetricLabels& labels, const LatencyHistogram::Snapshot& s) {
  static const std::array<double, kLatencyBucketsNs.size()> kBounds = [] {
    std::array<double, kLatencyBucketsNs.size()> b{};
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<double>(kLatencyBucketsNs[i]) * kNs;
    return b;
  }();
  out.Histogram(
      labels, {.bounds = kBounds, .counts = s.counts, .sum = static_cast<double>(s.sum_ns) * kNs});
}

}  // namespace

DaemonMetrics::DaemonMetrics(VolumeLifecycle* lifecycle, CollectorOptions options)
    : lifecycle_(lifecycle), options_(std::move(options)) {}

std::vector<std::string> DaemonMetrics::FamilyNames() {
  std::vector<std::string> out;
  for (const FamilySpec& f : kFamilies) out.emplace_back(f.name);
  return out;
}

uint64_t DaemonMetrics::Monotonize(const VolumeKey& volume, int counter, uint64_t value) {
  Monotonic& m = monotonic_[volume][counter];
  if (value < m.last) m.offset += m.last;  // the source restarted from 0
  m.last = value;
  return m.offset + value;
}

std::string DaemonMetrics::Scrape() {
  std::lock_guard lock(mu_);
  const auto started = SteadyClock::now();
  TextExposition out;
  const MetricLabels node = {{"node", options_.node}};
  Engine& engine = *lifecycle_->engine();

  Begin(out, "shale_build_info");
  out.Sample(With(node, "version", options_.version), 1);
  const ProcessFigures p = ReadProcess();
  Begin(out, "process_resident_memory_bytes");
  out.Sample({}, p.rss);
  Begin(out, "process_virtual_memory_bytes");
  out.Sample({}, p.vsize);
  Begin(out, "process_cpu_seconds_total");
  out.Sample({}, p.cpu);
  Begin(out, "process_open_fds");
  out.Sample({}, p.fds);
  Begin(out, "process_start_time_seconds");
  out.Sample({}, p.start);
  Begin(out, "shale_reactor_busy_seconds_total");
  for (size_t i = 0; i < engine.reactors().size(); ++i) {
    out.Sample(With(node, "reactor", std::to_string(i)),
               static_cast<double>(engine.reactors()[i]->CpuNanos()) * kNs);
  }

  ScrapePools(out, node);
  ScrapeVolumes(out, node);
  ScrapeUsage(out, node);

  ScrapeReplicas(out, node);
  Begin(out, "shale_nbd_connections");
  if (options_.nbd_connections) out.Sample(node, options_.nbd_connections());
  Begin(out, "shale_metrics_scrape_duration_seconds");
  out.Sample(node, last_duration_);
  last_duration_ = std::chrono::duration<double>(SteadyClock::now() - started).count();
  return out.Take();
}

void DaemonMetrics::ScrapePools(TextExposition& out, const MetricLabels& node) {
  const std::vector<PoolCapacity> pools = lifecycle_->capacity()->DescribeAll();
  auto each = [&](const char* family,
                  const std::function<std::optional<double>(const PoolCapacity&)>& value) {
    Begin(out, family);
    for (const PoolCapacity& c : pools) {
      if (std::optional<double> v = value(c)) out.Sample(With(node, "pool", c.pool), *v);
    }
  };
  auto d = [](uint64_t v) { return std::optional<double>(static_cast<double>(v)); };
  each("shale_pool_online", [](const PoolCapacity& c) { return c.online ? 1.0 : 0.0; });
  each("shale_pool_capacity_bytes", [&](const PoolCapacity& c) { return d(c.capacity_bytes); });
  each("shale_pool_used_bytes", [&](const PoolCapacity& c) { return d(c.used_bytes); });
  each("shale_pool_free_bytes", [&](const PoolCapacity& c) { return d(c.free_bytes); });
  each("shale_pool_provisioned_bytes",
       [&](const PoolCapacity& c) { return d(c.provisioned_bytes); });
  each("shale_pool_overcommit_ratio", [](const PoolCapacity& c) { return c.overcommit_ratio(); });
  each("shale_pool_overcommit_limit_ratio", [](const PoolCapacity& c) -> std::optional<double> {
    if (c.settings.overcommit_percent == 0) return std::nullopt;
    return c.settings.overcommit_percent / 100.0;
  });
  each("shale_pool_fill_warning_ratio",
       [](const PoolCapacity& c) { return c.settings.warn_percent / 100.0; });
  each("shale_pool_fill_critical_ratio",
       [](const PoolCapacity& c) { return c.settings.critical_percent / 100.0; });
  each("shale_pool_fill_level",
       [](const PoolCapacity& c) { return static_cast<double>(static_cast<int>(c.level)); });
  each("shale_pool_volumes", [&](const PoolCapacity& c) { return d(c.volume_count); });
}

std::pair<uint64_t, uint64_t> DaemonMetrics::VolumeSpace(const VolumeInfo& v) {
  const auto now = SteadyClock::now();
  auto& [at, space] = space_[{v.pool, v.id}];
  if (at == SteadyClock::time_point{} || now - at >= options_.slow_ttl) {
    Result<Volume::SpaceUsage> usage = lifecycle_->engine()->GetVolumeUsage(v.name);
    if (usage.ok()) space = {usage->written_bytes, usage->shared_bytes};
    at = now;
  }
  return space;
}

void DaemonMetrics::ScrapeVolumes(TextExposition& out, const MetricLabels& node) {
  struct Row {
    MetricLabels labels;
    VolumeInfo info;
    uint64_t provisioned = 0, owned = 0, shared = 0;
    uint64_t throttled_ns = 0, throttled = 0, rejected = 0, queued = 0;
  };
  std::vector<Row> rows;
  std::set<VolumeKey> live;
  qos::QosManager* qos = lifecycle_->qos();
  const std::string usage_label =
      options_.usage_label.empty() ? std::string() : UsageLabelName(options_.usage_label);
  for (VolumeInfo& v : lifecycle_->engine()->ListVolumes()) {
    Row r;
    r.labels = With(With(node, "pool", v.pool), "volume", v.name);
    if (!usage_label.empty()) {
      auto it = v.labels.find(options_.usage_label);
      r.labels.emplace_back(usage_label, it != v.labels.end() ? it->second : "");
    }
    r.provisioned = lifecycle_->capacity()->Promised(v);
    std::tie(r.owned, r.shared) = VolumeSpace(v);
    const VolumeKey key{v.pool, v.id};
    qos::QosStats s;
    if (qos != nullptr) {
      if (Result<qos::QosStats> stats = qos->Stats(v.name); stats.ok() && stats->open) s = *stats;
    }
    r.throttled_ns = Monotonize(key, 0, s.throttled_ns);
    r.throttled = Monotonize(key, 1, s.throttled_requests);
    r.rejected = Monotonize(key, 2, s.rejected);
    r.queued = s.queue_depth;
    live.insert({v.pool, v.id});
    r.info = std::move(v);
    rows.push_back(std::move(r));
  }
  // Forget the caches of deleted volumes (ids are never reused in a pool).
  for (auto it = space_.begin(); it != space_.end();) {
    it = live.count(it->first) ? std::next(it) : space_.erase(it);
  }
  for (auto it = monotonic_.begin(); it != monotonic_.end();) {
    it = live.count(it->first) ? std::next(it) : monotonic_.erase(it);
  }
  auto each = [&](const char* family, const std::function<double(const Row&)>& value) {
    Begin(out, family);
    for (const Row& r : rows) out.Sample(r.labels, value(r));
  };
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  each("shale_volume_size_bytes", [&](const Row& r) { return d(r.info.size_bytes); });
  each("shale_volume_provisioned_bytes", [&](const Row& r) { return d(r.provisioned); });
  each("shale_volume_allocated_bytes", [&](const Row& r) { return d(r.info.allocated_bytes); });
  each("shale_volume_owned_bytes", [&](const Row& r) { return d(r.owned); });
  each("shale_volume_shared_bytes", [&](const Row& r) { return d(r.shared); });
  each("shale_volume_clients", [&](const Row& r) { return d(r.info.open_count); });
  each("shale_volume_read_operations_total", [&](const Row& r) { return d(r.info.reads); });
  each("shale_volume_write_operations_total", [&](const Row& r) { return d(r.info.writes); });
  each("shale_volume_flush_operations_total", [&](const Row& r) { return d(r.info.flushes); });
  each("shale_volume_discard_operations_total", [&](const Row& r) { return d(r.info.discards); });
  each("shale_volume_write_zeroes_operations_total",
       [&](const Row& r) { return d(r.info.write_zeroes); });
  each("shale_volume_read_bytes_total", [&](const Row& r) { return d(r.info.bytes_read); });
  each("shale_volume_write_bytes_total", [&](const Row& r) { return d(r.info.bytes_written); });
  each("shale_volume_discard_bytes_total", [&](const Row& r) { return d(r.info.bytes_discarded); });
  each("shale_volume_write_zeroes_bytes_total",
       [&](const Row& r) { return d(r.info.bytes_zeroed); });
  each("shale_volume_errors_total", [&](const Row& r) { return d(r.info.errors); });
  Begin(out, "shale_volume_read_latency_seconds");
  for (const Row& r : rows) Latency(out, r.labels, r.info.read_latency);
  Begin(out, "shale_volume_write_latency_seconds");
  for (const Row& r : rows) Latency(out, r.labels, r.info.write_latency);
  Begin(out, "shale_volume_flush_latency_seconds");
  for (const Row& r : rows) Latency(out, r.labels, r.info.flush_latency);
  each("shale_volume_qos_throttled_seconds_total",
       [&](const Row& r) { return d(r.throttled_ns) * kNs; });
  each("shale_volume_qos_throttled_requests_total", [&](const Row& r) { return d(r.throttled); });
  each("shale_volume_qos_rejected_requests_total", [&](const Row& r) { return d(r.rejected); });
  each("shale_volume_qos_queue_depth", [&](const Row& r) { return d(r.queued); });
}

void DaemonMetrics::ScrapeUsage(TextExposition& out, const MetricLabels& node) {
  const char* families[] = {"shale_usage_volumes", "shale_usage_provisioned_bytes",
                            "shale_usage_allocated_bytes", "shale_usage_snapshot_bytes"};
  if (options_.usage_label.empty()) {
    for (const char* f : families) Begin(out, f);
    return;
  }
  const auto now = SteadyClock::now();
  if (usage_at_ == SteadyClock::time_point{} || now - usage_at_ >= options_.slow_ttl) {
    Result<UsageReport> report =
        ComputeUsage(*lifecycle_, UsageBy{.by_pool = false, .label = options_.usage_label});
    if (report.ok()) {
      usage_ = std::move(report->groups);
    } else {
      SHALE_LOG_WARN("metrics: usage not computed", {"error", report.status().ToString()});
    }
    usage_at_ = now;
  }
  const std::string label = UsageLabelName(options_.usage_label);
  auto each = [&](const char* family, const std::function<double(const UsageFigures&)>& value) {
    Begin(out, family);
    for (const UsageFigures& g : usage_) out.Sample(With(node, label, g.value), value(g));
  };
  each(families[0], [](const UsageFigures& g) { return static_cast<double>(g.volumes); });
  each(families[1], [](const UsageFigures& g) { return static_cast<double>(g.provisioned_bytes); });
  each(families[2], [](const UsageFigures& g) { return static_cast<double>(g.allocated_bytes); });
  each(families[3], [](const UsageFigures& g) { return static_cast<double>(g.snapshot_bytes); });
}

void DaemonMetrics::ScrapeReplicas(TextExposition& out, const MetricLabels& node) {
  std::vector<ReplicaSample> replicas;
  if (options_.replicas) replicas = options_.replicas();
  auto labels = [&](const ReplicaSample& r) {
    return With(With(node, "volume", r.volume), "replica", r.replica);
  };
  Begin(out, "shale_replica_state");
  for (const ReplicaSample& r : replicas) {
    for (const char* state : kReplicaMetricStates) {
      out.Sample(With(labels(r), "state", state), r.state == state ? 1 : 0);
    }
  }
  Begin(out, "shale_replica_rebuild_bytes_total");
  for (const ReplicaSample& r : replicas) {
    out.Sample(labels(r), static_cast<double>(r.rebuild_bytes));
  }
  Begin(out, "shale_replica_rebuild_sent_bytes_total");
  for (const ReplicaSample& r : replicas) {
    out.Sample(labels(r), static_cast<double>(r.rebuild_sent_bytes));
  }
  Begin(out, "shale_replica_write_latency_seconds");
  for (const ReplicaSample& r : replicas) Latency(out, labels(r), r.write_latency);
}

std::string UsageLabelName(std::string_view key) {
  std::string out = "label_";
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    out += ok ? c : '_';
  }
  return out;
}

}  // namespace shale::daemon::ops
