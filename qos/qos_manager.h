// QosManager: the QoS of one daemon — per-volume settings (persisted in each pool's metadata),
// one PoolScheduler per pool, and the live QosLayer of every volume opened through it.
//
// The daemon owns one, next to the Engine:
//   - volume create with QoS:  settings.Validate() first, Engine::CreateVolume, then Set();
//   - `shale qos set/show`:    Set() / Get() (Set applies to an open volume before it returns);
//   - `shale volume stats`:     Stats();
//   - frontends (NBD, ...):     Wrap(handle) and submit to the returned QosVolume instead of the
//                               handle's Volume; every frontend of a volume shares one QosLayer;
//   - volume delete:            OnVolumeDeleted() after Engine::DeleteVolume succeeded.
// Records: Extension("qos", "volume/" u64) -> pb::VolumeRecord, Extension("qos", "pool") ->
// pb::PoolRecord (docs/qos.md, "Records").
//
// Thread-safe; every method blocks (metadata commits, a hop to the volume's reactor), so call
// them off the reactors. The Engine must outlive the manager, and every QosVolume must be
// released before Engine::Shutdown.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include "engine/common/clock.h"
#include "engine/common/result.h"
#include "engine/volume/volume_io.h"
#include "qos/pool_scheduler.h"
#include "qos/qos_layer.h"
#include "qos/settings.h"
#include "qos/stats.h"

namespace shale {
class Engine;
class MetaBatch;
class Reactor;
class Volume;
class VolumeHandle;
}  // namespace shale

namespace shale::qos {

struct QosManagerOptions {
  Clock* clock = nullptr;                             // nullptr: Clock::Real()
  uint32_t default_pool_budget = kDefaultPoolBudget;  // pools without their own record
  uint32_t background_weight = kDefaultBackgroundWeight;
  uint32_t max_queued_per_volume = kDefaultMaxQueued;
  uint64_t timer_slack_ns = 1'000'000;  // see QosLayer::Options
  // The layer below a volume's QosLayer (the daemon's replication layer of a replicated volume,
  // docs/replication.md), asked when Wrap creates the volume's QosLayer: null means the Volume
  // itself; an error fails Wrap (a replicated volume whose target is not ready). Every
  // QosVolume of the volume holds the result, so it outlives the QosLayer above it. Called off
  // the reactors, without QoS locks held.
  std::function<Result<std::shared_ptr<VolumeLayer>>(Volume& volume)> lower_layer;
};

// A volume opened through QoS: submit here (on reactor()) instead of to the Volume. Holds the
// VolumeHandle, so the volume stays open (and undeletable) while this object lives. As a
// BackgroundAdmission it paces the engine's own background work on the volume (flatten).
class QosVolume final : public VolumeLayer, public BackgroundAdmission {
 public:
  QosVolume(std::shared_ptr<VolumeHandle> handle, std::shared_ptr<QosLayer> layer,
            std::shared_ptr<VolumeLayer> lower = nullptr);
  ~QosVolume() override;
  QosVolume(const QosVolume&) = delete;
  QosVolume& operator=(const QosVolume&) = delete;

  void Submit(VolumeIo* io) override { layer_->Submit(io); }
  void Admit(uint64_t bytes, std::function<void(Done done)> go) override {
    layer_->Admit(bytes, std::move(go));
  }
  Volume& volume();
  Reactor* reactor() const { return layer_->reactor(); }
  QosLayer& layer() { return *layer_; }

 private:
  std::shared_ptr<QosLayer> layer_;     // released first: it must not outlive the handle's use
  std::shared_ptr<VolumeLayer> lower_;  // what layer_ submits to, when not the Volume
  std::shared_ptr<VolumeHandle> handle_;
};

class QosManager {
 public:
  // Loads every online pool's QoS records; records of volumes that no longer exist (deleted
  // while the daemon was down or between DeleteVolume and OnVolumeDeleted) are removed.
  // A record that does not validate is logged and ignored (the volume runs unlimited).
  static Result<std::unique_ptr<QosManager>> Open(Engine* engine, const QosManagerOptions& options);
  ~QosManager();
  QosManager(const QosManager&) = delete;
  QosManager& operator=(const QosManager&) = delete;

  // Validates (InvalidArgument), persists durably, and applies to the open volume before
  // returning (in place: no request fails or is drained). NotFound for an unknown volume.
  // Replaces all settings: to change one field, Get(), modify, Set().
  Status Set(std::string_view volume, const QosSettings& settings);
  // The settings in force, normalized (defaults filled in). NotFound for an unknown volume.
  Result<QosSettings> Get(std::string_view volume);
  // Live figures when the volume is open through QoS, else settings and pool figures only
  // (open = false). NotFound for an unknown volume.
  Result<QosStats> Stats(std::string_view volume);
  // Opens I/O through QoS for a handle from Engine::OpenVolume (or OpenImage: a read-only view
  // of a snapshot is scheduled as a default client of its pool and has no settings).
  Result<std::shared_ptr<QosVolume>> Wrap(std::shared_ptr<VolumeHandle> handle);
  // The admission that schedules the engine's background work on the volume (flatten batches,
  // Engine::FlattenVolume) in its pool's low class: Wrap(handle), so the volume's layer exists
  // and lives (with the handle) while the result is held.
  Result<std::shared_ptr<BackgroundAdmission>> OpenBackgroundAdmission(
      std::shared_ptr<VolumeHandle> handle);
  // A background admission of its own in `pool`'s scheduler, whose units run on `reactor` (a
  // replica rebuild's copy windows: they read the local replica below QoS, so they are not a
  // volume's requests). Held while the work runs.
  std::shared_ptr<BackgroundAdmission> OpenPoolAdmission(const std::string& pool, Reactor* reactor);
  // Forgets a deleted volume's settings (deletes its record). OK if it had none.
  Status OnVolumeDeleted(std::string_view volume);

  // For the daemon's volume-lifecycle service, which commits a volume's QoS record in the same
  // metadata batch as the volume itself:
  // - AddVolumeRecord validates `settings` and puts the record of volume `volume_id` into
  //   `batch` (nothing when they are all defaults: a volume without a record runs unlimited);
  //   after the batch committed, AdoptVolume makes them the volume's settings in memory.
  // - DeleteVolumeRecord puts the deletion of the record into the batch that deletes the
  //   volume; after it committed, ForgetVolume drops the settings from memory.
  static Status AddVolumeRecord(const QosSettings& settings, uint64_t volume_id,
                                std::string_view volume, MetaBatch* batch);
  void AdoptVolume(std::string_view volume, const std::string& pool, uint64_t volume_id,
                   const QosSettings& settings);
  static void DeleteVolumeRecord(uint64_t volume_id, MetaBatch* batch);
  void ForgetVolume(std::string_view volume, uint64_t volume_id);

  // Pool scheduler budget (dispatched-but-not-completed requests, 1..4096), persisted per
  // pool; takes effect at once. NotFound for an unknown pool.
  Status SetPoolBudget(std::string_view pool, uint32_t budget);
  Result<uint32_t> GetPoolBudget(std::string_view pool);

  // For a daemon that is stopping: lifts the limits of every open volume (the requests they
  // hold pass at once) and of volumes opened later, keeping weights and reservations and the
  // stored settings. Frontends then drain at device speed: NBD waits for every request in
  // flight before it closes a connection, and a volume at 10 IOPS with 256 requests queued
  // would otherwise hold the stop for 25 s. Irreversible.
  void StopThrottling();
  // The same for one volume while its frontends are being disconnected (`volume delete
  // --force`); ResumeLimits() puts its settings back in force (e.g. when the delete failed).
  // NotFound for an unknown volume.
  Status SuspendLimits(std::string_view volume);
  void ResumeLimits(std::string_view volume);

 private:
  struct Entry {
    std::string pool;
    uint64_t id = 0;
    QosSettings settings;  // normalized
  };
  struct Live {
    std::weak_ptr<QosLayer> layer;
    std::weak_ptr<VolumeLayer> lower;  // QosManagerOptions::lower_layer's answer
    std::string name;
    std::string pool;
    uint64_t id = 0;  // 0: a view of a frozen image
  };
  QosManager(Engine* engine, const QosManagerOptions& options);
  Status Load();
  std::shared_ptr<PoolScheduler> SchedulerLocked(const std::string& pool);
  std::shared_ptr<QosLayer> LiveLayerLocked(std::string_view name, uint64_t id);
  QosSettings SettingsLocked(std::string_view name, uint64_t id) const;
  // What a volume's layer runs with: its settings, without limits while throttling is stopped
  // or suspended for it.
  QosSettings LiveSettingsLocked(std::string_view name, const QosSettings& settings) const;
  // Re-applies the live settings of an open volume.
  void Reapply(std::string_view volume);

  Engine* const engine_;
  const QosManagerOptions options_;
  Clock* const clock_;
  std::mutex control_mu_;  // serializes Set/OnVolumeDeleted/SetPoolBudget (persist + apply)
  std::mutex mu_;          // guards the maps; never held across blocking calls
  bool throttling_stopped_ = false;                       // guarded by mu_; StopThrottling()
  std::set<std::string, std::less<>> suspended_;          // guarded by mu_; SuspendLimits()
  std::map<std::string, Entry, std::less<>> entries_;     // by volume name: volumes with a record
  std::map<std::string, uint32_t, std::less<>> budgets_;  // by pool: pools with a record
  std::map<std::string, std::shared_ptr<PoolScheduler>, std::less<>> schedulers_;
  std::map<const Volume*, Live> live_;
};

}  // namespace shale::qos
