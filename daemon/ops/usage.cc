#include "daemon/ops/usage.h"

#include <algorithm>

#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/labels.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon::ops {

Result<UsageBy> ParseUsageBy(std::string_view text) {
  UsageBy by;
  if (text == "pool") {
    by.by_pool = true;
    return by;
  }
  if (!text.starts_with("label:") || text.size() == 6) {
    return Status::InvalidArgument("usage by '" + std::string(text) +
                                   "': expected label:KEY (e.g. label:team, "
                                   "label:csi.storage.k8s.io/pvc/namespace) or pool");
  }
  by.label = std::string(text.substr(6));
  // The label key rules (engine/common/labels.h): a key no volume can have is a mistake.
  Labels probe = {{by.label, "x"}};
  SHALE_RETURN_IF_ERROR(ValidateLabels(probe));
  return by;
}

void UsageFigures::Add(const UsageFigures& o) {
  volumes += o.volumes;
  size_bytes += o.size_bytes;
  provisioned_bytes += o.provisioned_bytes;
  allocated_bytes += o.allocated_bytes;
  snapshots += o.snapshots;
  snapshot_bytes += o.snapshot_bytes;
  reads += o.reads;
  writes += o.writes;
  bytes_read += o.bytes_read;
  bytes_written += o.bytes_written;
  volume_names.insert(volume_names.end(), o.volume_names.begin(), o.volume_names.end());
}

Result<UsageReport> ComputeUsage(VolumeLifecycle& lifecycle, const UsageBy& by) {
  UsageReport report;
  report.by = by;
  // Snapshots by the volume (id) they were taken from: a snapshot of an earlier volume of the
  // same name belongs to nobody live.
  std::map<std::pair<std::string, uint64_t>, std::pair<uint32_t, uint64_t>> snaps;
  SHALE_ASSIGN_OR_RETURN(std::vector<snapshot::SnapshotInfo> all,
                         lifecycle.snapshots()->List({.include_implicit = true}));
  for (const snapshot::SnapshotInfo& s : all) {
    if (!s.source_volume_live) continue;
    auto& [count, bytes] = snaps[{s.pool, s.source_volume_id}];
    ++count;
    bytes += s.data_bytes;
  }
  std::map<std::string, UsageFigures> groups;
  UsageFigures unlabelled;
  unlabelled.unlabelled = true;
  for (const VolumeInfo& v : lifecycle.engine()->ListVolumes()) {
    UsageFigures f;
    f.volumes = 1;
    f.size_bytes = v.size_bytes;
    f.provisioned_bytes = lifecycle.capacity()->Promised(v);
    f.allocated_bytes = v.allocated_bytes;
    if (auto it = snaps.find({v.pool, v.id}); it != snaps.end()) {
      f.snapshots = it->second.first;
      f.snapshot_bytes = it->second.second;
    }
    f.reads = v.reads;
    f.writes = v.writes;
    f.bytes_read = v.bytes_read;
    f.bytes_written = v.bytes_written;
    f.volume_names = {v.name};
    UsageFigures* group = &unlabelled;
    if (by.by_pool) {
      group = &groups[v.pool];
      group->value = v.pool;
    } else if (auto it = v.labels.find(by.label); it != v.labels.end()) {
      group = &groups[it->second];
      group->value = it->second;
    }
    group->Add(f);
    report.total.Add(f);
  }
  for (auto& [value, g] : groups) {
    std::sort(g.volume_names.begin(), g.volume_names.end());
    report.groups.push_back(std::move(g));
  }
  if (unlabelled.volumes > 0) {
    std::sort(unlabelled.volume_names.begin(), unlabelled.volume_names.end());
    report.groups.push_back(std::move(unlabelled));
  }
  std::sort(report.total.volume_names.begin(), report.total.volume_names.end());
  return report;
}

}  // namespace shale::daemon::ops
