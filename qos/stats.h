// QosStats: what `shale volume stats NAME` shows about a volume's QoS (table, --watch, JSON).
// A snapshot taken on the volume's reactor; all fields are plain values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qos/settings.h"

namespace shale::qos {

// One configured limit: its credit bucket (base rate r) and, with a burst, its peak bucket (B).
struct QosBucketStats {
  std::string limit;         // "iops", "read_iops", "write_iops", "bps", "read_bps", "write_bps"
  uint64_t rate = 0;         // r, per second (operations or bytes)
  uint64_t burst_rate = 0;   // B; 0 = no burst
  double tokens = 0;         // credit left (negative: debt the next requests wait for)
  double capacity = 0;       // (B - r) * T + r * q, or r * q without a burst
  double peak_tokens = 0;    // peak bucket level (burst only)
  double peak_capacity = 0;  // B * q (burst only)
};

struct QosStats {
  std::string volume;
  std::string pool;
  QosSettings settings;  // normalized: what is in force
  bool open = false;     // a frontend has the volume open through QoS (else: no live figures)

  // Delivered, from completions over the last `window_ns` (up to 1 s).
  uint64_t window_ns = 0;
  double iops = 0, read_iops = 0, write_iops = 0;  // requests per second (not iops_unit-weighted)
  double bps = 0, read_bps = 0, write_bps = 0;     // bytes per second

  // Totals since the volume was opened through QoS.
  // Completed requests; writes include discard and write-zeroes (the limits count them as
  // writes too). Bytes are data bytes (a discard moves none).
  uint64_t reads = 0, writes = 0;
  uint64_t bytes_read = 0, bytes_written = 0;
  uint64_t errors = 0;                  // completed with an error status below QoS
  uint64_t throttled_ns = 0;            // wall time with at least one request held by a limit
  uint64_t throttled_requests = 0;      // requests that waited for a limit
  uint64_t contended_requests = 0;      // requests that waited for the pool budget
  uint64_t contended_wait_ns = 0;       // their total wait in the pool scheduler
  uint64_t rejected = 0;                // completed with Busy: the QoS queue was full
  uint64_t timer_fires = 0;             // reactor timer wake-ups of this volume (no busy polling)
  uint64_t reservation_dispatches = 0;  // pool scheduler picks by reservation (R tag <= now)
  uint64_t weight_dispatches = 0;       // pool scheduler picks by weight (smallest P tag)

  // Requests waiting in QoS (limits + pool scheduler) / dispatched below QoS, not completed;
  // a flatten batch paced by QoS (BackgroundAdmission) counts as one request in each.
  uint32_t queue_depth = 0;
  uint32_t in_flight = 0;

  std::vector<QosBucketStats> buckets;

  // The pool's scheduler (shared by the pool's volumes).
  uint32_t pool_budget = 0;       // dispatched-but-not-completed requests allowed
  uint32_t pool_outstanding = 0;  // dispatched and not completed now
  uint32_t pool_waiting = 0;      // waiting for the budget now
};

}  // namespace shale::qos
