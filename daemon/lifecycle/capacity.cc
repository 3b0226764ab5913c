#include "daemon/lifecycle/capacity.h"

#include <algorithm>
#include <set>

#include "daemon/lifecycle/capacity.pb.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"

namespace shale::daemon {
namespace {

// Products of byte counts and percentages: exact without overflow.
__extension__ typedef unsigned __int128 U128;

constexpr std::string_view kNamespace = "capacity";
constexpr std::string_view kPoolKey = "pool";
constexpr std::string_view kVolumeKeyPrefix = "volume/";

std::string PoolKey() { return keys::Extension(kNamespace, kPoolKey); }

std::string VolumeKey(uint64_t volume_id) {
  std::string k(kVolumeKeyPrefix);
  keys::AppendU64(k, volume_id);
  return keys::Extension(kNamespace, k);
}

// used / capacity >= percent / 100, exactly.
bool AtLeast(uint64_t used, uint64_t capacity, uint32_t percent) {
  return static_cast<U128>(used) * 100 >= static_cast<U128>(capacity) * percent;
}

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "0 %";
  const double p = 100.0 * static_cast<double>(part) / static_cast<double>(whole);
  char buf[32];
  std::snprintf(buf, sizeof(buf), p < 10 ? "%.1f %%" : "%.0f %%", p);
  return buf;
}

// Limit of provisioned bytes under `settings` (UINT64_MAX: none).
uint64_t LimitOf(const CapacitySettings& settings, uint64_t capacity) {
  if (settings.overcommit_percent == 0) return UINT64_MAX;
  const U128 limit = static_cast<U128>(capacity) * settings.overcommit_percent / 100;
  return limit > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(limit);
}

CapacitySettings FromRecord(const capacity::PoolSettings& rec) {
  CapacitySettings s;
  if (rec.warn_percent() != 0) s.warn_percent = rec.warn_percent();
  if (rec.critical_percent() != 0) s.critical_percent = rec.critical_percent();
  if (rec.overcommit_unlimited()) {
    s.overcommit_percent = 0;
  } else if (rec.overcommit_percent() != 0) {
    s.overcommit_percent = rec.overcommit_percent();
  }
  return s;
}

}  // namespace

std::string_view FillLevelName(FillLevel level) {
  switch (level) {
    case FillLevel::kOk:
      return "ok";
    case FillLevel::kWarning:
      return "warning";
    case FillLevel::kCritical:
      return "critical";
  }
  return "unknown";
}

Status CapacitySettings::Validate() const {
  if (warn_percent < 1 || warn_percent > 99) {
    return Status::InvalidArgument("warning threshold " + std::to_string(warn_percent) +
                                   " % must be between 1 % and 99 %");
  }
  if (critical_percent <= warn_percent || critical_percent > 100) {
    return Status::InvalidArgument("critical threshold " + std::to_string(critical_percent) +
                                   " % must be above the warning threshold (" +
                                   std::to_string(warn_percent) + " %) and at most 100 %");
  }
  if (overcommit_percent > kMaxOvercommitPercent) {
    return Status::InvalidArgument("overcommit " + std::to_string(overcommit_percent) +
                                   " % is above the maximum of " +
                                   std::to_string(kMaxOvercommitPercent) + " % (or unlimited)");
  }
  return Status::Ok();
}

uint32_t PoolCapacity::used_percent() const {
  if (capacity_bytes == 0) return 0;
  return static_cast<uint32_t>(static_cast<U128>(used_bytes) * 100 / capacity_bytes);
}

double PoolCapacity::overcommit_ratio() const {
  if (capacity_bytes == 0) return 0;
  return static_cast<double>(provisioned_bytes) / static_cast<double>(capacity_bytes);
}

FillLevel NextFillLevel(FillLevel previous, uint64_t used, uint64_t capacity,
                        const CapacitySettings& settings) {
  if (capacity == 0) return FillLevel::kOk;
  FillLevel level = FillLevel::kOk;
  if (AtLeast(used, capacity, settings.critical_percent)) {
    level = FillLevel::kCritical;
  } else if (AtLeast(used, capacity, settings.warn_percent)) {
    level = FillLevel::kWarning;
  }
  if (level >= previous) return level;
  // Going down: only once clearly below the threshold that was crossed.
  if (previous == FillLevel::kCritical &&
      AtLeast(used, capacity, settings.critical_percent - kFillHysteresisPercent)) {
    return FillLevel::kCritical;
  }
  if (previous >= FillLevel::kWarning && level == FillLevel::kOk &&
      settings.warn_percent > kFillHysteresisPercent &&
      AtLeast(used, capacity, settings.warn_percent - kFillHysteresisPercent)) {
    return FillLevel::kWarning;
  }
  return level;
}

CapacityPolicy::CapacityPolicy(Engine* engine) : engine_(engine) {}

Status CapacityPolicy::LoadLocked() {
  if (loaded_) return Status::Ok();
  std::set<Key> live;
  for (const VolumeInfo& v : engine_->ListVolumes()) live.insert({v.pool, v.id});
  for (const PoolInfo& p : engine_->ListPools()) {
    if (p.state != "online") continue;
    SHALE_ASSIGN_OR_RETURN(std::optional<std::string> rec, engine_->GetRecord(p.name, PoolKey()));
    if (rec) {
      capacity::PoolSettings parsed;
      CapacitySettings s;
      if (parsed.ParseFromString(*rec)) s = FromRecord(parsed);
      if (!parsed.ParseFromString(*rec) || !s.Validate().ok()) {
        SHALE_LOG_WARN("capacity: ignoring an unreadable pool record; using the defaults",
                       {"pool", p.name});
      } else {
        settings_[p.name] = s;
      }
    }
    MetaBatch stale;
    const std::string prefix = keys::Extension(kNamespace, kVolumeKeyPrefix);
    SHALE_RETURN_IF_ERROR(
        engine_->ScanRecords(p.name, prefix, [&](std::string_view key, std::string_view value) {
          capacity::VolumePromise promise;
          if (!promise.ParseFromArray(value.data(), static_cast<int>(value.size()))) return true;
          if (!live.count({p.name, promise.volume_id()})) {
            stale.Delete(key);  // a volume deleted by an older shaled
            return true;
          }
          promises_[{p.name, promise.volume_id()}] = promise.provisioned_bytes();
          return true;
        }));
    if (!stale.empty()) {
      Status st = engine_->WriteRecords(p.name, std::move(stale));
      if (!st.ok()) {
        SHALE_LOG_WARN("capacity: could not drop stale records", {"pool", p.name},
                       {"error", st.ToString()});
      }
    }
  }
  loaded_ = true;
  return Status::Ok();
}

CapacitySettings CapacityPolicy::SettingsLocked(const std::string& pool) const {
  auto it = settings_.find(pool);
  return it == settings_.end() ? CapacitySettings{} : it->second;
}

uint64_t CapacityPolicy::PromisedLocked(const VolumeInfo& volume) const {
  auto it = promises_.find({volume.pool, volume.id});
  if (it != promises_.end()) return it->second;
  return volume.read_only ? 0 : volume.size_bytes;
}

PoolCapacity CapacityPolicy::DescribeLocked(const PoolInfo& pool,
                                            const std::vector<VolumeInfo>& volumes) {
  PoolCapacity c;
  c.pool = pool.name;
  c.online = pool.state == "online";
  c.capacity_bytes = pool.capacity_bytes;
  c.used_bytes = pool.used_bytes;
  c.free_bytes = pool.free_bytes;
  c.settings = SettingsLocked(pool.name);
  for (const VolumeInfo& v : volumes) {
    if (v.pool != pool.name) continue;
    ++c.volume_count;
    c.provisioned_bytes += PromisedLocked(v);
  }
  const uint64_t limit = LimitOf(c.settings, c.capacity_bytes);
  c.provisionable_bytes =
      limit == UINT64_MAX ? UINT64_MAX : limit - std::min(limit, c.provisioned_bytes);
  // What Evaluate() will find next: the level now, with the hysteresis of the last evaluation.
  auto it = levels_.find(pool.name);
  c.level = NextFillLevel(it != levels_.end() ? it->second : FillLevel::kOk, c.used_bytes,
                          c.capacity_bytes, c.settings);
  return c;
}

Result<CapacitySettings> CapacityPolicy::Settings(std::string_view pool) {
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(LoadLocked());
  SHALE_RETURN_IF_ERROR(engine_->GetPool(pool).status());
  return SettingsLocked(std::string(pool));
}

Result<CapacitySettings> CapacityPolicy::Update(std::string_view pool_view,
                                                const CapacitySettingsUpdate& update) {
  const std::string pool(pool_view);
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(LoadLocked());
  SHALE_ASSIGN_OR_RETURN(PoolInfo info, engine_->GetPool(pool));
  if (info.state != "online") {
    return Status::FailedPrecondition("pool '" + pool + "' is offline: " + info.error);
  }
  CapacitySettings s = SettingsLocked(pool);
  if (update.warn_percent) s.warn_percent = *update.warn_percent;
  if (update.critical_percent) s.critical_percent = *update.critical_percent;
  if (update.overcommit_percent) s.overcommit_percent = *update.overcommit_percent;
  SHALE_RETURN_IF_ERROR(s.Validate());
  capacity::PoolSettings rec;
  rec.set_warn_percent(s.warn_percent);
  rec.set_critical_percent(s.critical_percent);
  rec.set_overcommit_percent(s.overcommit_percent);
  rec.set_overcommit_unlimited(s.overcommit_percent == 0);
  MetaBatch batch;
  batch.Put(PoolKey(), rec.SerializeAsString());
  SHALE_RETURN_IF_ERROR(engine_->WriteRecords(pool, std::move(batch)));
  settings_[pool] = s;
  SHALE_LOG_INFO("capacity settings changed", {"pool", pool}, {"warn_percent", s.warn_percent},
                 {"critical_percent", s.critical_percent},
                 {"overcommit_percent", s.overcommit_percent});
  return s;
}

Result<PoolCapacity> CapacityPolicy::Describe(std::string_view pool) {
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(LoadLocked());
  SHALE_ASSIGN_OR_RETURN(PoolInfo info, engine_->GetPool(pool));
  return DescribeLocked(info, engine_->ListVolumes());
}

std::vector<PoolCapacity> CapacityPolicy::DescribeAll() {
  std::lock_guard lock(mu_);
  std::vector<PoolCapacity> out;
  if (Status st = LoadLocked(); !st.ok()) {
    SHALE_LOG_WARN("capacity: records not loaded", {"error", st.ToString()});
  }
  const std::vector<VolumeInfo> volumes = engine_->ListVolumes();
  for (const PoolInfo& p : engine_->ListPools()) out.push_back(DescribeLocked(p, volumes));
  return out;
}

Status CapacityPolicy::CheckProvision(std::string_view pool, uint64_t bytes,
                                      std::string_view what) {
  if (bytes == 0) return Status::Ok();
  SHALE_ASSIGN_OR_RETURN(PoolCapacity c, Describe(pool));
  if (c.provisionable_bytes == UINT64_MAX || bytes <= c.provisionable_bytes) return Status::Ok();
  const uint64_t limit = LimitOf(c.settings, c.capacity_bytes);
  const uint64_t after = c.provisioned_bytes + bytes;
  const U128 needed = (static_cast<U128>(after) * 100 + c.capacity_bytes - 1) /
                      std::max<uint64_t>(1, c.capacity_bytes);
  const std::string raise_to = needed > kMaxOvercommitPercent
                                   ? "unlimited"
                                   : std::to_string(static_cast<uint64_t>(needed)) + "%";
  return Status::NoSpace("pool '" + c.pool + "' cannot provision " + std::string(what) +
                         ": its volumes are promised " + FormatSize(c.provisioned_bytes) +
                         " already and " + FormatSize(after) + " would exceed its overcommit " +
                         "limit of " + std::to_string(c.settings.overcommit_percent) +
                         " % of its " + FormatSize(c.capacity_bytes) + " capacity (" +
                         FormatSize(limit) + ", " + FormatSize(c.provisionable_bytes) +
                         " left); expand the pool (shale " + "pool expand " + c.pool +
                         "), delete volumes, or raise the limit (shale " + "pool set " + c.pool +
                         " --overcommit " + raise_to + ")");
}

std::vector<std::string> CapacityPolicy::Advice(std::string_view pool, uint64_t bytes) {
  std::vector<std::string> out;
  Result<PoolCapacity> c = Describe(pool);
  if (!c.ok()) return out;
  if (c->level != FillLevel::kOk) {
    out.push_back("pool '" + c->pool + "' is " + Percent(c->used_bytes, c->capacity_bytes) +
                  " full, above its " + std::string(FillLevelName(c->level)) + " threshold (" +
                  std::to_string(c->level == FillLevel::kCritical ? c->settings.critical_percent
                                                                  : c->settings.warn_percent) +
                  " %): writes will fail with ENOSPC when it is full");
  }
  if (bytes > c->free_bytes) {
    out.push_back(FormatSize(bytes) + " is more than the " + FormatSize(c->free_bytes) + " pool '" +
                  c->pool + "' has free: it can be written only as far as that");
  }
  return out;
}

uint64_t CapacityPolicy::Promised(const VolumeInfo& volume) {
  std::lock_guard lock(mu_);
  if (Status st = LoadLocked(); !st.ok()) return volume.read_only ? 0 : volume.size_bytes;
  return PromisedLocked(volume);
}

void CapacityPolicy::AddPromiseRecord(uint64_t volume_id, uint64_t bytes, MetaBatch* batch) {
  capacity::VolumePromise rec;
  rec.set_volume_id(volume_id);
  rec.set_provisioned_bytes(bytes);
  batch->Put(VolumeKey(volume_id), rec.SerializeAsString());
}

void CapacityPolicy::DeletePromiseRecord(uint64_t volume_id, MetaBatch* batch) {
  batch->Delete(VolumeKey(volume_id));
}

void CapacityPolicy::AdoptPromise(const std::string& pool, uint64_t volume_id, uint64_t bytes) {
  std::lock_guard lock(mu_);
  promises_[{pool, volume_id}] = bytes;
}

void CapacityPolicy::ForgetPromise(const std::string& pool, uint64_t volume_id) {
  std::lock_guard lock(mu_);
  promises_.erase({pool, volume_id});
}

void CapacityPolicy::ForgetPool(const std::string& pool) {
  std::lock_guard lock(mu_);
  settings_.erase(pool);
  levels_.erase(pool);
  for (auto it = promises_.begin(); it != promises_.end();) {
    it = it->first.first == pool ? promises_.erase(it) : std::next(it);
  }
}

std::vector<PoolCapacity> CapacityPolicy::Evaluate() {
  std::lock_guard lock(mu_);
  if (Status st = LoadLocked(); !st.ok()) {
    SHALE_LOG_WARN("capacity: records not loaded", {"error", st.ToString()});
  }
  std::vector<PoolCapacity> out;
  const std::vector<VolumeInfo> volumes = engine_->ListVolumes();
  std::set<std::string, std::less<>> seen;
  for (const PoolInfo& p : engine_->ListPools()) {
    PoolCapacity c = DescribeLocked(p, volumes);
    seen.insert(p.name);
    auto it = levels_.find(p.name);
    const FillLevel before = it != levels_.end() ? it->second : FillLevel::kOk;
    const FillLevel after =
        c.online ? NextFillLevel(before, c.used_bytes, c.capacity_bytes, c.settings) : before;
    if (after != before) LogCrossings(c, before, after);
    levels_[p.name] = after;
    c.level = after;
    out.push_back(std::move(c));
  }
  for (auto it = levels_.begin(); it != levels_.end();) {
    it = seen.count(it->first) ? std::next(it) : levels_.erase(it);
  }
  return out;
}

void CapacityPolicy::LogCrossings(const PoolCapacity& c, FillLevel from, FillLevel to) {
  const std::string used = Percent(c.used_bytes, c.capacity_bytes);
  if (to > from) {
    // Every threshold crossed on the way up gets its line, even when one check saw both.
    if (from < FillLevel::kWarning) {
      SHALE_LOG_WARN("pool is filling up: above its warning threshold", {"pool", c.pool},
                     {"used", used}, {"threshold_percent", c.settings.warn_percent},
                     {"used_bytes", c.used_bytes}, {"free_bytes", c.free_bytes},
                     {"capacity_bytes", c.capacity_bytes});
    }
    if (to == FillLevel::kCritical) {
      SHALE_LOG_ERROR(
          "pool is nearly full: above its critical threshold; writes fail with "
          "ENOSPC when it is full (free space, or shale pool expand)",
          {"pool", c.pool}, {"used", used}, {"threshold_percent", c.settings.critical_percent},
          {"used_bytes", c.used_bytes}, {"free_bytes", c.free_bytes},
          {"capacity_bytes", c.capacity_bytes});
    }
    return;
  }
  SHALE_LOG_INFO("pool is back below a fill threshold", {"pool", c.pool}, {"used", used},
                 {"level", std::string(FillLevelName(to))},
                 {"threshold_percent", from == FillLevel::kCritical ? c.settings.critical_percent
                                                                    : c.settings.warn_percent});
}

}  // namespace shale::daemon
