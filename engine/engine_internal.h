// The Engine's private state, shared by the files that implement it: engine.cc (start-up,
// pools, volumes, records), engine_images.cc (layered images) and engine_pool_check.cc (the
// pool consistency check). Not part of the engine's API: nothing outside engine/engine*.cc
// includes it.
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/common/units.h"
#include "engine/engine.h"
#include "engine/pool/metadata.pb.h"

namespace shale {

namespace internal {
// Largest volume (create, resize, clone); csi/params.h repeats it.
inline constexpr uint64_t kMaxVolumeSize = 256 * kTiB;
}  // namespace internal

// One registered pool; guarded by Engine::mu_ like every slot.
struct Engine::PoolSlot {
  meta::PoolRegistration reg;
  std::unique_ptr<Pool> pool;  // null when the pool failed to open
  std::string error;
  std::map<uint64_t, meta::ImageRecord> images;  // as committed, or being committed by a freeze
  // Freezes that returned at their cut (Engine::SettleFreezesLocked): the ones not durable yet,
  // the waiters for them, and the first one's commit failure (the pool is in error from then
  // on; its in-memory images include one that never committed). A freeze is durable only once
  // the writes in flight at its cut completed and their commit landed, so waiters wait for its
  // durable callback, not for the commit pipeline.
  struct CutFreezes {
    std::mutex mu;
    uint64_t next_seq = 1;       // guarded by mu
    std::set<uint64_t> pending;  // guarded by mu: freezes not durable yet
    // Guarded by mu: promises set once every freeze up to .first is durable.
    std::vector<std::pair<uint64_t, std::shared_ptr<std::promise<Status>>>> waiters;
    Status failure;  // guarded by mu
    uint64_t Begin();
    void End(uint64_t seq, const Status& status);
    // Ready once every freeze begun so far is durable (or one failed: its status).
    std::future<Status> Settled();
  };
  std::shared_ptr<CutFreezes> cut_freezes = std::make_shared<CutFreezes>();
  // Bumped whenever stored entries of a frozen image change (merge, free); OpenImage loads maps
  // without the lock and starts over when it moved.
  uint64_t entries_generation = 0;
  uint32_t map_loads = 0;  // OpenImage loads without the lock: the pool must stay
};

// One live volume.
struct Engine::VolumeSlot {
  PoolSlot* pool = nullptr;
  std::shared_ptr<Volume> volume;
  meta::VolumeRecord record;  // as committed
  uint32_t open_count = 0;
  std::string busy;  // a long operation (flatten) in progress; blocks conflicting ones
};

// One open read-only view of a frozen image (Engine::OpenImage).
struct Engine::ImageSlot {
  PoolSlot* pool = nullptr;
  uint64_t image = 0;
  std::shared_ptr<Volume> view;
  uint32_t open_count = 0;
};

}  // namespace shale
