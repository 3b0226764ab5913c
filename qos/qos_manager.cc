#include "qos/qos_manager.h"

#include <vector>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "qos/background_units.h"
#include "qos/qos.pb.h"

namespace shale::qos {
namespace {

constexpr std::string_view kNamespace = "qos";
constexpr std::string_view kVolumeKeyPrefix = "volume/";
constexpr std::string_view kPoolKey = "pool";

std::string VolumeKey(uint64_t id) {
  std::string k(kVolumeKeyPrefix);
  keys::AppendU64(k, id);
  return keys::Extension(kNamespace, k);
}

std::string PoolKey() { return keys::Extension(kNamespace, kPoolKey); }

Status VolumeNotFound(std::string_view name) {
  return Status::NotFound("qos: volume '" + std::string(name) + "' not found");
}

// Runs fn on the reactor and waits (inline when already there).
void RunOn(Reactor* reactor, const std::function<void()>& fn) {
  if (reactor->IsCurrent()) {
    fn();
  } else {
    reactor->RunSync(fn);
  }
}

// `s` without its limits (and bursts): what a volume runs with once throttling stopped.
QosSettings WithoutLimits(const QosSettings& s) {
  QosSettings out;
  out.iops_unit = s.iops_unit;
  out.weight = s.weight;
  out.reservation_iops = s.reservation_iops;
  return out;
}

}  // namespace

QosVolume::QosVolume(std::shared_ptr<VolumeHandle> handle, std::shared_ptr<QosLayer> layer,
                     std::shared_ptr<VolumeLayer> lower)
    : layer_(std::move(layer)), lower_(std::move(lower)), handle_(std::move(handle)) {}

QosVolume::~QosVolume() {
  layer_.reset();  // the shared layer goes (if last) while the volume is still open
  lower_.reset();  // then what it submitted to
  handle_.reset();
}

Volume& QosVolume::volume() { return handle_->volume(); }

QosManager::QosManager(Engine* engine, const QosManagerOptions& options)
    : engine_(engine),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : Clock::Real()) {}

QosManager::~QosManager() = default;

Result<std::unique_ptr<QosManager>> QosManager::Open(Engine* engine,
                                                     const QosManagerOptions& options) {
  if (options.default_pool_budget < 1 || options.default_pool_budget > kMaxPoolBudget) {
    return Status::InvalidArgument("qos: default pool budget must be between 1 and " +
                                   std::to_string(kMaxPoolBudget));
  }
  if (options.max_queued_per_volume < 1)
    return Status::InvalidArgument("qos: max_queued_per_volume must be >= 1");
  std::unique_ptr<QosManager> m(new QosManager(engine, options));
  SHALE_RETURN_IF_ERROR(m->Load());
  return m;
}

Status QosManager::Load() {
  // Live volumes by (pool, id).
  std::map<std::pair<std::string, uint64_t>, std::string> volumes;
  for (const VolumeInfo& v : engine_->ListVolumes()) volumes[{v.pool, v.id}] = v.name;
  for (const PoolInfo& p : engine_->ListPools()) {
    if (p.state != "online") continue;
    MetaBatch stale;
    const std::string prefix = keys::ExtensionPrefix(kNamespace);
    Status st =
        engine_->ScanRecords(p.name, prefix, [&](std::string_view key, std::string_view value) {
          std::string_view k = key.substr(prefix.size());
          if (k == kPoolKey) {
            pb::PoolRecord rec;
            if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size())) ||
                rec.budget() > kMaxPoolBudget) {
              SHALE_LOG_WARN("qos: ignoring unreadable pool record", {"pool", p.name});
            } else if (rec.budget() != 0) {
              budgets_[p.name] = rec.budget();
            }
            return true;
          }
          if (k.size() != kVolumeKeyPrefix.size() + 8 ||
              k.substr(0, kVolumeKeyPrefix.size()) != kVolumeKeyPrefix) {
            SHALE_LOG_WARN("qos: ignoring unknown record", {"pool", p.name},
                           {"key", std::string(k)});
            return true;
          }
          const uint64_t id = keys::DecodeU64At(k, kVolumeKeyPrefix.size());
          auto it = volumes.find({p.name, id});
          if (it == volumes.end()) {
            stale.Delete(key);  // its volume is gone
            return true;
          }
          pb::VolumeRecord rec;
          if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
            SHALE_LOG_WARN("qos: ignoring unreadable volume record", {"pool", p.name},
                           {"volume", it->second});
            return true;
          }
          const QosSettings s = SettingsFromMessage(rec.settings());
          if (Status v = s.Validate(); !v.ok()) {
            SHALE_LOG_WARN("qos: ignoring invalid volume record", {"pool", p.name},
                           {"volume", it->second}, {"error", v.ToString()});
            return true;
          }
          entries_[it->second] = Entry{p.name, id, s.Normalized()};
          return true;
        });
    SHALE_RETURN_IF_ERROR(st.WithContext("qos: load records of pool '" + p.name + "'"));
    if (!stale.empty()) {
      SHALE_LOG_INFO("qos: removing records of deleted volumes", {"pool", p.name},
                     {"count", stale.count()});
      SHALE_RETURN_IF_ERROR(engine_->WriteRecords(p.name, std::move(stale)));
    }
  }
  return Status::Ok();
}

std::shared_ptr<PoolScheduler> QosManager::SchedulerLocked(const std::string& pool) {
  auto it = schedulers_.find(pool);
  if (it != schedulers_.end()) return it->second;
  PoolScheduler::Options o;
  auto b = budgets_.find(pool);
  o.budget = b != budgets_.end() ? b->second : options_.default_pool_budget;
  o.background_weight = options_.background_weight;
  o.clock = clock_;
  auto s = std::make_shared<PoolScheduler>(o);
  schedulers_.emplace(pool, s);
  return s;
}

QosSettings QosManager::SettingsLocked(std::string_view name, uint64_t id) const {
  auto it = entries_.find(name);
  if (id != 0 && it != entries_.end() && it->second.id == id) return it->second.settings;
  return QosSettings{}.Normalized();
}

std::shared_ptr<QosLayer> QosManager::LiveLayerLocked(std::string_view name, uint64_t id) {
  for (auto it = live_.begin(); it != live_.end();) {
    std::shared_ptr<QosLayer> layer = it->second.layer.lock();
    if (layer == nullptr) {
      it = live_.erase(it);
      continue;
    }
    if (it->second.id != 0 && it->second.id == id && it->second.name == name) return layer;
    ++it;
  }
  return nullptr;
}

Status QosManager::Set(std::string_view volume, const QosSettings& settings) {
  SHALE_RETURN_IF_ERROR(settings.Validate());
  std::lock_guard control(control_mu_);
  auto info = engine_->GetVolume(volume);
  if (!info.ok()) return info.status().IsNotFound() ? VolumeNotFound(volume) : info.status();
  const QosSettings norm = settings.Normalized();
  pb::VolumeRecord rec;
  rec.set_volume_id(info->id);
  rec.set_volume_name(info->name);
  SettingsToMessage(norm, rec.mutable_settings());
  MetaBatch batch;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(volume);
    // A record left by an earlier volume of the same name (deleted without OnVolumeDeleted).
    if (it != entries_.end() && it->second.id != info->id && it->second.pool == info->pool) {
      batch.Delete(VolumeKey(it->second.id));
    }
  }
  batch.Put(VolumeKey(info->id), rec.SerializeAsString());
  SHALE_RETURN_IF_ERROR(
      engine_->WriteRecords(info->pool, std::move(batch)).WithContext("qos: persist settings"));
  std::shared_ptr<QosLayer> layer;
  {
    std::lock_guard lock(mu_);
    entries_[std::string(volume)] = Entry{info->pool, info->id, norm};
    layer = LiveLayerLocked(volume, info->id);
  }
  if (layer != nullptr) {
    QosSettings live;
    {
      std::lock_guard lock(mu_);
      live = LiveSettingsLocked(volume, norm);
    }
    RunOn(layer->reactor(), [&] { layer->Apply(live); });
  }
  SHALE_LOG_INFO("qos: settings changed", {"volume", std::string(volume)},
                 {"settings", norm.ToString()}, {"live", layer != nullptr ? "yes" : "no"});
  return Status::Ok();
}

Result<QosSettings> QosManager::Get(std::string_view volume) {
  auto info = engine_->GetVolume(volume);
  if (!info.ok()) return info.status().IsNotFound() ? VolumeNotFound(volume) : info.status();
  std::lock_guard lock(mu_);
  return SettingsLocked(volume, info->id);
}

Result<QosStats> QosManager::Stats(std::string_view volume) {
  auto info = engine_->GetVolume(volume);
  if (!info.ok()) return info.status().IsNotFound() ? VolumeNotFound(volume) : info.status();
  std::shared_ptr<QosLayer> layer;
  std::shared_ptr<PoolScheduler> sched;
  QosStats s;
  {
    std::lock_guard lock(mu_);
    layer = LiveLayerLocked(volume, info->id);
    s.settings = SettingsLocked(volume, info->id);
    auto it = schedulers_.find(info->pool);
    if (it != schedulers_.end()) sched = it->second;
  }
  if (layer != nullptr) {
    RunOn(layer->reactor(), [&] { s = layer->Stats(); });
  } else if (sched != nullptr) {
    const PoolScheduler::Stats ps = sched->GetStats();
    s.pool_budget = ps.budget;
    s.pool_outstanding = ps.outstanding;
    s.pool_waiting = ps.waiting;
  } else {
    std::lock_guard lock(mu_);
    auto b = budgets_.find(info->pool);
    s.pool_budget = b != budgets_.end() ? b->second : options_.default_pool_budget;
  }
  s.volume = info->name;
  s.pool = info->pool;
  return s;
}

Result<std::shared_ptr<QosVolume>> QosManager::Wrap(std::shared_ptr<VolumeHandle> handle) {
  if (handle == nullptr) return Status::InvalidArgument("qos: Wrap of a null handle");
  Volume& vol = handle->volume();
  const std::string pool = vol.pool()->name();
  std::shared_ptr<QosLayer> layer;
  std::shared_ptr<VolumeLayer> lower;
  {
    std::lock_guard lock(mu_);
    auto it = live_.find(&vol);
    if (it != live_.end()) {
      layer = it->second.layer.lock();
      lower = it->second.lower.lock();
    }
  }
  if (layer == nullptr && options_.lower_layer) {
    // Asked without the lock: the answer may block (it opens a replicated volume's target).
    SHALE_ASSIGN_OR_RETURN(lower, options_.lower_layer(vol));
  }
  std::lock_guard lock(mu_);
  auto it = live_.find(&vol);
  if (it != live_.end() && (layer = it->second.layer.lock()) != nullptr) {
    lower = it->second.lower.lock();  // another Wrap made the layer meanwhile
  } else {
    QosLayer::Options lo;
    lo.clock = clock_;
    lo.max_queued = options_.max_queued_per_volume;
    lo.timer_slack_ns = options_.timer_slack_ns;
    VolumeLayer* next = lower != nullptr ? lower.get() : &vol;
    layer =
        QosLayer::Create(next, vol.reactor(), SchedulerLocked(pool),
                         LiveSettingsLocked(vol.name(), SettingsLocked(vol.name(), vol.id())), lo);
    live_[&vol] = Live{layer, lower, vol.name(), pool, vol.id()};
  }
  return std::make_shared<QosVolume>(std::move(handle), std::move(layer), std::move(lower));
}

Result<std::shared_ptr<BackgroundAdmission>> QosManager::OpenBackgroundAdmission(
    std::shared_ptr<VolumeHandle> handle) {
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<QosVolume> wrapped, Wrap(std::move(handle)));
  return std::shared_ptr<BackgroundAdmission>(std::move(wrapped));
}

std::shared_ptr<BackgroundAdmission> QosManager::OpenPoolAdmission(const std::string& pool,
                                                                   Reactor* reactor) {
  std::shared_ptr<PoolScheduler> scheduler;
  {
    std::lock_guard lock(mu_);
    scheduler = SchedulerLocked(pool);
  }
  return PoolAdmission::Create(std::move(scheduler), reactor);
}

Status QosManager::OnVolumeDeleted(std::string_view volume) {
  std::lock_guard control(control_mu_);
  Entry entry;
  {
    std::lock_guard lock(mu_);
    if (auto s = suspended_.find(volume); s != suspended_.end()) suspended_.erase(s);
    auto it = entries_.find(volume);
    if (it == entries_.end()) return Status::Ok();
    entry = it->second;
  }
  MetaBatch batch;
  batch.Delete(VolumeKey(entry.id));
  Status st = engine_->WriteRecords(entry.pool, std::move(batch));
  // A pool that is gone took the record with it.
  if (!st.ok() && !st.IsNotFound())
    return st.WithContext("qos: delete settings of '" + std::string(volume) + "'");
  std::lock_guard lock(mu_);
  auto it = entries_.find(volume);
  if (it != entries_.end() && it->second.id == entry.id) entries_.erase(it);
  return Status::Ok();
}

Status QosManager::AddVolumeRecord(const QosSettings& settings, uint64_t volume_id,
                                   std::string_view volume, MetaBatch* batch) {
  SHALE_RETURN_IF_ERROR(settings.Validate());
  const QosSettings norm = settings.Normalized();
  if (norm == QosSettings{}.Normalized()) return Status::Ok();
  pb::VolumeRecord rec;
  rec.set_volume_id(volume_id);
  rec.set_volume_name(std::string(volume));
  SettingsToMessage(norm, rec.mutable_settings());
  batch->Put(VolumeKey(volume_id), rec.SerializeAsString());
  return Status::Ok();
}

void QosManager::AdoptVolume(std::string_view volume, const std::string& pool, uint64_t volume_id,
                             const QosSettings& settings) {
  const QosSettings norm = settings.Normalized();
  std::lock_guard lock(mu_);
  if (norm == QosSettings{}.Normalized()) {
    auto it = entries_.find(volume);
    if (it != entries_.end()) entries_.erase(it);
    return;
  }
  entries_[std::string(volume)] = Entry{pool, volume_id, norm};
}

void QosManager::DeleteVolumeRecord(uint64_t volume_id, MetaBatch* batch) {
  batch->Delete(VolumeKey(volume_id));
}

void QosManager::ForgetVolume(std::string_view volume, uint64_t volume_id) {
  std::lock_guard lock(mu_);
  if (auto s = suspended_.find(volume); s != suspended_.end()) suspended_.erase(s);
  auto it = entries_.find(volume);
  if (it != entries_.end() && it->second.id == volume_id) entries_.erase(it);
}

Status QosManager::SetPoolBudget(std::string_view pool, uint32_t budget) {
  if (budget < 1 || budget > kMaxPoolBudget) {
    return Status::InvalidArgument("qos: pool budget must be between 1 and " +
                                   std::to_string(kMaxPoolBudget) + ", got " +
                                   std::to_string(budget));
  }
  std::lock_guard control(control_mu_);
  auto info = engine_->GetPool(pool);
  if (!info.ok()) return info.status();
  pb::PoolRecord rec;
  rec.set_budget(budget);
  MetaBatch batch;
  batch.Put(PoolKey(), rec.SerializeAsString());
  SHALE_RETURN_IF_ERROR(
      engine_->WriteRecords(pool, std::move(batch)).WithContext("qos: persist pool budget"));
  std::shared_ptr<PoolScheduler> sched;
  {
    std::lock_guard lock(mu_);
    budgets_[std::string(pool)] = budget;
    auto it = schedulers_.find(pool);
    if (it != schedulers_.end()) sched = it->second;
  }
  if (sched != nullptr) sched->SetBudget(budget);
  return Status::Ok();
}

void QosManager::StopThrottling() {
  std::vector<std::shared_ptr<QosLayer>> layers;
  {
    std::lock_guard lock(mu_);
    throttling_stopped_ = true;
    for (auto& [vol, live] : live_) {
      if (std::shared_ptr<QosLayer> layer = live.layer.lock()) layers.push_back(std::move(layer));
    }
  }
  for (const std::shared_ptr<QosLayer>& layer : layers) {
    RunOn(layer->reactor(), [&] {
      if (layer->settings().has_limits()) layer->Apply(WithoutLimits(layer->settings()));
    });
  }
  if (!layers.empty()) {
    SHALE_LOG_INFO("qos: limits lifted for shutdown", {"open_volumes", layers.size()});
  }
}

QosSettings QosManager::LiveSettingsLocked(std::string_view name,
                                           const QosSettings& settings) const {
  if (throttling_stopped_ || suspended_.contains(name)) return WithoutLimits(settings);
  return settings;
}

void QosManager::Reapply(std::string_view volume) {
  auto info = engine_->GetVolume(volume);
  if (!info.ok()) return;  // gone: nothing to apply to
  std::shared_ptr<QosLayer> layer;
  QosSettings live;
  {
    std::lock_guard lock(mu_);
    layer = LiveLayerLocked(volume, info->id);
    live = LiveSettingsLocked(volume, SettingsLocked(volume, info->id));
  }
  if (layer != nullptr) RunOn(layer->reactor(), [&] { layer->Apply(live); });
}

Status QosManager::SuspendLimits(std::string_view volume) {
  std::lock_guard control(control_mu_);
  auto info = engine_->GetVolume(volume);
  if (!info.ok()) return info.status().IsNotFound() ? VolumeNotFound(volume) : info.status();
  {
    std::lock_guard lock(mu_);
    suspended_.emplace(volume);
  }
  Reapply(volume);
  return Status::Ok();
}

void QosManager::ResumeLimits(std::string_view volume) {
  std::lock_guard control(control_mu_);
  {
    std::lock_guard lock(mu_);
    auto it = suspended_.find(volume);
    if (it == suspended_.end()) return;
    suspended_.erase(it);
  }
  Reapply(volume);
}

Result<uint32_t> QosManager::GetPoolBudget(std::string_view pool) {
  auto info = engine_->GetPool(pool);
  if (!info.ok()) return info.status();
  std::lock_guard lock(mu_);
  auto b = budgets_.find(pool);
  return b != budgets_.end() ? b->second : options_.default_pool_budget;
}

}  // namespace shale::qos
