// ActivityLog: the 1 MiB regions of a replicated volume that may hold writes not yet durable on
// every replica (DRBD's activity log; docs/replication.md, "Changed regions and the activity
// log"). Persisted in the target's pool metadata, so after a crash of the target only these
// regions can differ between the replicas of the in-sync set: the restarted target compares them
// (XXH3-128 per 4 KiB block) and copies them from its own replica where they differ, never the
// whole volume. The same regions are marked changed for a replica that leaves the in-sync set
// (it may have lost its unflushed writes in a crash of its own).
//
// Rules kept by the ReplicationLayer:
//   - a write to a region outside the log waits until the region's entry is durable (Add); only
//     the first write to a region pays that commit, later ones find it Covered;
//   - WriteStarted/WriteDone bracket every write the layer dispatches; FlushStarted/FlushDone
//     bracket a flush that every replica receiving writes made durable. A region leaves the log
//     when such a flush completed that started after the region's last write completed, with no
//     write in flight to it: lazily, the batch of regions a flush frees commits as one record
//     update that nothing waits for (a region still in the durable record is only compared once
//     more after a crash);
//   - bounded: at most `max_regions` (4096: 4 GiB) regions; a write that would need more waits
//     for a flush to free some (HasRoom).
//
// Records: the regions under ChangedRegions of kind "activity" (pseudo-node "log"), and a marker
// Extension("replication", hex16(volume id) "/al-kept") written at the first Load: a volume
// without it was served by a target that kept no log, so the log says nothing about it.
//
// Threading: Load on a control thread; everything else on the volume's reactor. Destroy only
// when !busy() (no record update in flight).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/common/result.h"
#include "replication/changed_regions.h"

namespace shale::replication {

inline constexpr uint64_t kActivityLogMaxRegions = 4096;

class ActivityLog {
 public:
  // Loads the log of volume `volume_id` in `pool` and writes the marker if it was missing
  // (blocking; a control thread).
  static Result<std::unique_ptr<ActivityLog>> Load(Engine* engine, const std::string& pool,
                                                   uint64_t volume_id, uint64_t size_bytes,
                                                   Reactor* reactor,
                                                   ChangedRegions::CommitFn commit,
                                                   uint64_t max_regions = kActivityLogMaxRegions);
  ~ActivityLog();
  ActivityLog(const ActivityLog&) = delete;
  ActivityLog& operator=(const ActivityLog&) = delete;

  // Whether the marker existed at Load: the log was kept for this volume before (so after a
  // crash its regions are the only ones that can differ between in-sync replicas).
  bool kept_before() const { return kept_before_; }

  // --- on the reactor ---
  // Whether every region of the range is durably in the log.
  bool Covered(uint64_t offset, uint64_t length) const;
  // Whether adding the range's regions keeps the log within its bound.
  bool HasRoom(uint64_t offset, uint64_t length) const;
  // Adds the range's regions; done on the reactor once they are durable.
  void Add(uint64_t offset, uint64_t length, std::function<void(Status)> done);
  void WriteStarted(uint64_t offset, uint64_t length);
  void WriteDone(uint64_t offset, uint64_t length);
  // A flush was dispatched; returns its token for FlushDone.
  uint64_t FlushStarted();
  // The flush of `token` made every replica durable: frees the regions it covered.
  void FlushDone(uint64_t token);
  // The logged regions as byte ranges (in memory: durable or being added).
  std::vector<std::pair<uint64_t, uint64_t>> Ranges() const;
  uint64_t RegionCount() const;
  // Empties the log durably (after a resync made the replicas equal there, with no writes in
  // flight); done on the reactor.
  void Reset(std::function<void(Status)> done);
  // Whether a record update is in flight.
  bool busy() const { return persisting_ || resets_ > 0; }
  // Regions freed by flushes since Load (for tests and figures).
  uint64_t freed() const { return freed_; }

 private:
  struct Region {
    uint32_t in_flight = 0;
    uint64_t last_event = 0;  // seq_ at its last write start or completion
  };
  ActivityLog(std::unique_ptr<ChangedRegions> regions, uint64_t max_regions);
  void PersistFrees();

  std::unique_ptr<ChangedRegions> regions_;
  const uint64_t max_regions_;
  bool kept_before_ = false;
  std::unordered_map<uint64_t, Region> logged_;  // in memory, as in regions_
  uint64_t seq_ = 0;
  bool persisting_ = false;
  bool persist_again_ = false;
  uint32_t resets_ = 0;
  uint64_t freed_ = 0;
};

}  // namespace shale::replication
