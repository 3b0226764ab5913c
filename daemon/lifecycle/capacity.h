// CapacityPolicy: how full a pool may get before people are warned, and how much it may promise
// to its volumes (docs/operations.md, "Capacity").
//
// Two rules per pool, persisted in the pool's metadata (Extension("capacity", "pool")):
//  - fill thresholds (warn 80 %, critical 90 % by default): Evaluate() — called about once a
//    second by the daemon — logs each threshold a pool's used space crosses, once per crossing
//    (going back down needs kFillHysteresisPercent below the threshold, so a pool hovering at it
//    does not log on every write); `shale status`, `shale pool list/show` and the metrics show the
//    level;
//  - an overcommit limit (300 % by default): the sum of what the pool's volumes are promised
//    ("provisioned") may not exceed that share of its capacity. The volume-lifecycle service
//    checks it before every create, clone and resize (CheckProvision: NoSpace naming the numbers),
//    CSI's GetCapacity reports what is left under it.
//
// What a volume is promised is what it counts: by default its size, 0 for a read-only volume (it
// can never allocate), or what its creator recorded (CSI: the PVC's capacity; the engine volume is
// larger by its expansion headroom) in Extension("capacity", "volume/" u64 id), committed with the
// volume by the lifecycle service and deleted with it.
//
// Threading: every method is thread-safe and may block (metadata reads and commits); never call
// it on a reactor. The Engine must outlive the policy. Records are loaded on first use.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/common/result.h"
#include "engine/engine.h"

namespace shale::daemon {

inline constexpr uint32_t kDefaultWarnPercent = 80;
inline constexpr uint32_t kDefaultCriticalPercent = 90;
// Thin volumes rarely fill up: three times the capacity lets a pool of scratch and data volumes
// that are a third used on average fit (and two volumes as large as the pool, whose data area is
// a little smaller than its device), and stops the runaway case (a 1 GiB pool promising 10 GiB)
// before a client finds it with ENOSPC.
inline constexpr uint32_t kDefaultOvercommitPercent = 300;
inline constexpr uint32_t kMaxOvercommitPercent = 100000;  // 1000 times the capacity
inline constexpr uint32_t kFillHysteresisPercent = 2;

struct CapacitySettings {
  uint32_t warn_percent = kDefaultWarnPercent;              // 1..99
  uint32_t critical_percent = kDefaultCriticalPercent;      // warn+1..100
  uint32_t overcommit_percent = kDefaultOvercommitPercent;  // 1..kMaxOvercommitPercent; 0 = none
  // InvalidArgument naming the field and the allowed range.
  Status Validate() const;
  bool operator==(const CapacitySettings&) const = default;
};

// A change of a pool's settings: fields left unset keep their value.
struct CapacitySettingsUpdate {
  std::optional<uint32_t> warn_percent;
  std::optional<uint32_t> critical_percent;
  std::optional<uint32_t> overcommit_percent;  // 0 = no limit
};

enum class FillLevel : uint8_t { kOk, kWarning, kCritical };
std::string_view FillLevelName(FillLevel level);  // "ok", "warning", "critical"

struct PoolCapacity {
  std::string pool;
  bool online = false;
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t provisioned_bytes = 0;  // what its volumes are promised, summed
  uint32_t volume_count = 0;
  CapacitySettings settings;
  FillLevel level = FillLevel::kOk;  // as last evaluated (with hysteresis)
  // How much more may be provisioned under the overcommit limit (UINT64_MAX: no limit).
  uint64_t provisionable_bytes = 0;
  uint32_t used_percent() const;    // rounded down
  double overcommit_ratio() const;  // provisioned / capacity (0 for an empty pool)
};

class CapacityPolicy {
 public:
  explicit CapacityPolicy(Engine* engine);
  CapacityPolicy(const CapacityPolicy&) = delete;
  CapacityPolicy& operator=(const CapacityPolicy&) = delete;

  Result<CapacitySettings> Settings(std::string_view pool);
  // Validates the result and persists it durably. NotFound for an unknown pool.
  Result<CapacitySettings> Update(std::string_view pool, const CapacitySettingsUpdate& update);
  Result<PoolCapacity> Describe(std::string_view pool);
  std::vector<PoolCapacity> DescribeAll();  // by pool name

  // NoSpace, naming the provisioned total, the request, the limit and the capacity, when
  // provisioning `bytes` more in `pool` would exceed its overcommit limit. `what` names the
  // request ("volume 'x' (2 GiB)").
  Status CheckProvision(std::string_view pool, uint64_t bytes, std::string_view what);
  // Advice for a request that passed (the pool is above a threshold, the volume is larger than
  // the free space): lines for people, empty when there is nothing to say.
  std::vector<std::string> Advice(std::string_view pool, uint64_t bytes);

  // What a volume counts toward its pool's provisioned total.
  uint64_t Promised(const VolumeInfo& volume);
  // The promise of volume `volume_id` into `batch` (commit it with the volume), then, once it
  // committed, AdoptPromise.
  static void AddPromiseRecord(uint64_t volume_id, uint64_t bytes, MetaBatch* batch);
  static void DeletePromiseRecord(uint64_t volume_id, MetaBatch* batch);
  void AdoptPromise(const std::string& pool, uint64_t volume_id, uint64_t bytes);
  void ForgetPromise(const std::string& pool, uint64_t volume_id);
  void ForgetPool(const std::string& pool);

  // Re-reads every pool's fill and logs each threshold crossed since the last call (see the file
  // comment). The first call logs the thresholds pools are above at start.
  std::vector<PoolCapacity> Evaluate();

 private:
  using Key = std::pair<std::string, uint64_t>;  // (pool, volume id)
  Status LoadLocked();
  CapacitySettings SettingsLocked(const std::string& pool) const;
  // From the engine's figures, without the level.
  PoolCapacity DescribeLocked(const PoolInfo& pool, const std::vector<VolumeInfo>& volumes);
  uint64_t PromisedLocked(const VolumeInfo& volume) const;
  void LogCrossings(const PoolCapacity& pool, FillLevel from, FillLevel to);

  Engine* const engine_;
  std::mutex mu_;  // guards everything below; held across engine calls (the engine never calls us)
  bool loaded_ = false;
  std::map<std::string, CapacitySettings, std::less<>> settings_;  // pools with a record
  std::map<Key, uint64_t> promises_;
  std::map<std::string, FillLevel, std::less<>> levels_;  // as last evaluated
};

// The fill level of a pool with `used` of `capacity` bytes in use, coming from `previous`: at or
// above a threshold raises the level; falling back needs kFillHysteresisPercent below it.
FillLevel NextFillLevel(FillLevel previous, uint64_t used, uint64_t capacity,
                        const CapacitySettings& settings);

}  // namespace shale::daemon
