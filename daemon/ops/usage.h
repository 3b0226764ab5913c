// Usage by team: volumes and their space and I/O summed per value of a label (`shale usage
// --by label:KEY`, GetUsage, and the shale_usage_* metrics with --metrics-usage-label).
//
// Per volume it sums exactly what the volume reports itself (`shale volume show`): its size, what
// it counts toward its pool's overcommit limit (provisioned), its allocated bytes (pool space in
// clusters of its own), its snapshots and the data stored in their own clusters, and its I/O since
// shaled started. Volumes without the label form one more group (unlabelled).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale::daemon {
class VolumeLifecycle;
}

namespace shale::daemon::ops {

struct UsageBy {
  bool by_pool = false;
  std::string label;  // the label key when !by_pool
  std::string ToString() const { return by_pool ? "pool" : "label:" + label; }
};

// "label:KEY" or "pool"; InvalidArgument saying what is accepted.
Result<UsageBy> ParseUsageBy(std::string_view text);

struct UsageFigures {
  std::string value;        // the label's value or the pool
  bool unlabelled = false;  // volumes without the label
  uint32_t volumes = 0;
  uint64_t size_bytes = 0;
  uint64_t provisioned_bytes = 0;
  uint64_t allocated_bytes = 0;
  uint32_t snapshots = 0;
  uint64_t snapshot_bytes = 0;
  uint64_t reads = 0, writes = 0, bytes_read = 0, bytes_written = 0;
  std::vector<std::string> volume_names;  // sorted

  void Add(const UsageFigures& other);  // sums (names appended)
};

struct UsageReport {
  UsageBy by;
  std::vector<UsageFigures> groups;  // by value; the unlabelled group last
  UsageFigures total;
};

// Reads the engine, the capacity policy and the snapshot layer (snapshot space reads image
// entries: call it from a control thread, not on every I/O).
Result<UsageReport> ComputeUsage(VolumeLifecycle& lifecycle, const UsageBy& by);

}  // namespace shale::daemon::ops
