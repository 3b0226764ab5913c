// ChangedRegions: which 1 MiB regions of a replicated volume changed while a replica was out of
// the in-sync set, persisted in the target's pool metadata (docs/replication.md, "Changed
// regions"). It survives a restart of the target, so a returning replica receives only those
// regions (Mayastor keeps this log in memory only and falls back to full rebuilds).
//
// Rule: a region is marked for every out replica, and the mark is durable, BEFORE a write to it
// goes to the in-sync replicas — including the writes that were in flight when the replica left
// (the caller marks their ranges when it takes the replica out). Only the first write to a
// region while a replica is out pays the commit; later ones see the region marked and pass.
//
// Records: Extension("replication", hex16(volume_id) "/changed/" node "/" hex8(chunk)) -> a
// bitmap of 32768 regions (4096 bytes), one key per chunk that has a bit set.
//
// Threading: Load/ForgetVolume on control threads; everything else on the volume's reactor.
// Destroy it only with no commit in flight: once the callback of the last Mark/Persist/Drop has
// run (or from inside it) with nothing marked or cleared since; a callback is the last thing a
// commit round does.
// Commits go through the `commit` function given at Load (the pool's commit pipeline in the
// daemon), whose completion this class posts back to the reactor.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/common/result.h"

namespace shale {
class Engine;
class MetaBatch;
class Reactor;
}  // namespace shale

namespace shale::replication {

inline constexpr uint64_t kRegionBytes = 1ull << 20;
inline constexpr uint64_t kRegionsPerChunk = 32768;  // one 4096-byte bitmap record

class ChangedRegions {
 public:
  // Commits a batch durably, then calls done (on any thread).
  using CommitFn = std::function<void(MetaBatch batch, std::function<void(Status)> done)>;

  // Loads the records of volume `volume_id` in `pool` (blocking; a control thread). `kind` names
  // the record set: "changed" (the changed regions of out replicas) or "activity" (the activity
  // log, activity_log.h, which keeps its regions under one pseudo-node).
  static Result<std::unique_ptr<ChangedRegions>> Load(Engine* engine, const std::string& pool,
                                                      uint64_t volume_id, uint64_t size_bytes,
                                                      Reactor* reactor, CommitFn commit,
                                                      std::string_view kind = "changed");
  ~ChangedRegions();
  ChangedRegions(const ChangedRegions&) = delete;
  ChangedRegions& operator=(const ChangedRegions&) = delete;

  // --- on the reactor ---
  // Marks the regions of [offset, offset + length) changed for every node in `nodes`; `done`
  // runs on the reactor once the marks are durable (at once, still asynchronously, when every
  // region is already marked durably). Marks requested while a commit is in flight join the
  // next one (group commit).
  void Mark(const std::vector<std::string>& nodes, uint64_t offset, uint64_t length,
            std::function<void(Status)> done);
  // Whether every region of the range is durably marked for `node`.
  bool Covered(const std::string& node, uint64_t offset, uint64_t length) const;
  // The marked regions of `node` as byte ranges (sorted, merged, clipped to the volume size).
  std::vector<std::pair<uint64_t, uint64_t>> Ranges(const std::string& node) const;
  // Regions marked for `node`.
  uint64_t RegionCount(const std::string& node) const;
  // Nodes with at least one marked region.
  std::vector<std::string> Nodes() const;
  // Region `region` of `node` was rebuilt; the clear becomes durable with the next Persist.
  void Clear(const std::string& node, uint64_t region);
  // Makes the clears durable (rebuild progress); done on the reactor.
  void Persist(std::function<void(Status)> done);
  // Deletes every mark of `node` (it is in sync again); done on the reactor.
  void Drop(const std::string& node, std::function<void(Status)> done);
  // The volume grew: regions past the old end exist now (nothing to mark).
  void Grow(uint64_t size_bytes);

  // Deletes every record of a volume (changed regions and activity log), in the batch that
  // deletes the volume.
  static void ForgetVolume(uint64_t volume_id, MetaBatch* batch);
  // The key of the epoch at which this node's current term as the volume's target began
  // (docs/replication.md, "Changed regions and the activity log"): Extension("replication",
  // hex16(volume_id) "/term") -> u64 little-endian; gone with ForgetVolume.
  static std::string TermKey(uint64_t volume_id);

 private:
  struct Pending {
    std::vector<std::string> nodes;
    uint64_t first = 0, last = 0;  // regions [first, last]
    std::function<void(Status)> done;
  };
  ChangedRegions(uint64_t volume_id, uint64_t size_bytes, Reactor* reactor, CommitFn commit,
                 std::string_view kind);
  std::string ChunkKey(const std::string& node, uint64_t chunk) const;
  std::string NodePrefix(const std::string& node) const;
  // Puts the current bitmap chunk of every (node, chunk) in `dirty` into the batch.
  void AddChunks(const std::set<std::pair<std::string, uint64_t>>& dirty, MetaBatch* batch) const;
  void StartCommit();
  void OnCommitted(Status st, std::vector<Pending> waiters,
                   std::set<std::pair<std::string, uint64_t>> chunks);
  bool MarkedInMemory(const std::string& node, uint64_t region) const;

  const uint64_t volume_id_;
  const std::string prefix_;  // of this kind's records of the volume
  uint64_t size_bytes_;
  uint64_t regions_;
  Reactor* const reactor_;
  const CommitFn commit_;
  // node -> chunk -> 4096-byte bitmap (in memory: marks requested, durable or not).
  std::map<std::string, std::map<uint64_t, std::vector<uint8_t>>> bits_;
  // node -> chunks whose in-memory state is not durable yet.
  std::set<std::pair<std::string, uint64_t>> unpersisted_;
  std::vector<Pending> queued_;  // waiting for the next commit
  bool committing_ = false;
  std::vector<std::function<void(Status)>> persist_waiters_;
  Status failed_;  // a failed commit fails every later mark: the pool refuses writes anyway
};

}  // namespace shale::replication
