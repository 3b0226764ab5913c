// ReplicationLayer: the fan-out layer of a replicated volume on its target, below QoS
// (docs/replication.md, "Write path" and "The epoch and generation rules").
//
//   - Writes, write-zeroes and discards go to every in-sync and every rebuilding replica at
//     once; the client's request completes when every in-sync replica completed it.
//   - FLUSH (and FUA writes) complete when every in-sync replica made the data durable.
//   - Reads go to the local replica when it is in sync, else round-robin over in-sync replicas
//     (a read that fails on one is retried on another).
//   - While some replica is out, the regions a write touches are marked changed for it
//     (ChangedRegions) durably before the write goes out.
//   - A replica that fails a request (error, timeout, lost connection) leaves the in-sync set:
//     the regions of every write in flight are marked changed for it, then the membership change
//     is recorded (MembershipClient: an etcd Txn that bumps the epoch) BEFORE any write waiting
//     on that replica is acknowledged; new writes wait meanwhile. If the change cannot be
//     recorded within the membership timeout, the waiting writes fail with EIO, and so does every
//     write until it is recorded: a write is never acknowledged on fewer replicas than the
//     recorded in-sync set. The last in-sync replica never leaves; with fewer than min_in_sync
//     in-sync replicas writes fail with EIO.
//   - A replica that rejects the target's epoch means another target took the volume over: the
//     layer is fenced and every request fails with EIO from then on.
//   - The Rebuilder locks one region at a time (LockRegion): writes to it wait while it is copied,
//     so a client write is never overwritten by older data.
//
// Threading: everything runs on the volume's reactor, including the control methods (the owner
// posts them there). The layer owns its ReplicaTargets.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/common/latency_histogram.h"
#include "engine/common/result.h"
#include "engine/volume/volume_io.h"
#include "replication/replica_target.h"

namespace shale {
class Reactor;
}

namespace shale::replication {

class ActivityLog;
class ChangedRegions;

enum class MemberState : uint8_t {
  kInSync,      // receives writes, may be read, must acknowledge every write
  kRebuilding,  // receives writes, never read; its failure fails no write (it only leaves)
  kLeaving,     // failed; its removal from the in-sync set is being recorded
  kJoining,     // rebuilt; its join is being recorded: must acknowledge writes, never read
  kOut,         // gets nothing; what changed is in ChangedRegions
};
std::string_view MemberStateName(MemberState state);

// The membership changes the layer asks for. Called on the reactor; the implementation works
// off the reactor (an etcd Txn) and runs `done` on the reactor.
class MembershipClient {
 public:
  virtual ~MembershipClient() = default;
  // Records that `node` left the in-sync set; done(the new epoch) or the error.
  virtual void ReplicaFailed(const std::string& node, const std::string& reason,
                             std::function<void(Result<uint64_t>)> done) = 0;
  // Records that `node`, rebuilt, joined the in-sync set (state healthy); done(the new epoch).
  virtual void ReplicaRebuilt(const std::string& node,
                              std::function<void(Result<uint64_t>)> done) = 0;
};

struct ReplicaStatus {
  std::string node;
  MemberState state = MemberState::kOut;
  bool local = false;
  uint64_t writes_in_flight = 0;
  uint64_t errors = 0;
  std::string last_error;
  // Its successful data writes (a remote one per piece of at most kMaxIoBytes): from the fan-out
  // to this replica's done, since the layer was made.
  LatencyHistogram::Snapshot write_latency;
};

class ReplicationLayer final : public VolumeLayer {
 public:
  struct Options {
    uint32_t min_in_sync = 1;
    uint64_t epoch = 0;
    // How long a membership change may take before the writes waiting for it fail with EIO.
    std::chrono::milliseconds membership_timeout{5000};
  };

  // `changed` and `membership` must outlive the layer.
  ReplicationLayer(Reactor* reactor, std::string volume, uint64_t size_bytes,
                   ChangedRegions* changed, MembershipClient* membership, Options options);
  ~ReplicationLayer() override;
  ReplicationLayer(const ReplicationLayer&) = delete;
  ReplicationLayer& operator=(const ReplicationLayer&) = delete;

  void Submit(VolumeIo* io) override;

  // --- control, on the reactor ---
  // Adds a replica (or replaces the target of a known node, e.g. after a reconnect). A replaced
  // RemoteReplica must not be destroyed on the reactor (closing its client joins threads): the
  // caller takes a reference (Target) first and drops it on a control thread.
  void SetReplica(std::shared_ptr<ReplicaTarget> target, MemberState state);
  // Changes a replica's state without a membership change (the caller recorded it: a rebuild
  // started, or finished and the replica joined the in-sync set at `epoch`).
  void SetState(const std::string& node, MemberState state);
  void SetEpoch(uint64_t epoch);
  // Removes the replica of `node` from the volume (docs/replication.md, "Replacing a replica";
  // the owner recorded its removal in the store first): it gets nothing from now on, is never
  // read, is no longer marked or listed, and its changed regions are dropped; done(status of the
  // drop). Only a replica that is out, or in sync with enough others left (min_in_sync);
  // FailedPrecondition otherwise (a rebuilding, joining or leaving one: retry later). Requests in
  // flight to it still complete; the owner then closes its connection (off the reactor: it holds
  // a reference from Target(node), taken before) and their failure is ignored. The local replica
  // too (its node is drained while it serves the volume): reads go to the others from then on.
  void RemoveReplica(const std::string& node, std::function<void(Status)> done);
  // Keeps `log` (activity_log.h; outlives the layer) from now on: a write to a region outside it
  // waits for the region's entry to be durable; flushes free regions; a replica that leaves gets
  // the logged regions marked changed. Set before the first client write (or never).
  void SetActivityLog(ActivityLog* log) { activity_ = log; }
  // The rebuild of `node` (kRebuilding, nothing left in ChangedRegions) finished: it becomes
  // kJoining (writes wait for it, a failure is a recorded leave, no reads), its join is recorded
  // (MembershipClient::ReplicaRebuilt, epoch + 1), its generation set to that epoch
  // (SET_GENERATION), then it is in sync and its marks are dropped. done(OK) or why not (back to
  // kRebuilding if the store refused; out if it failed meanwhile).
  void Join(const std::string& node, std::function<void(Status)> done);
  uint64_t epoch() const { return epoch_; }
  bool fenced() const { return fenced_; }
  std::vector<ReplicaStatus> Replicas() const;
  // The target of a node, null if unknown.
  std::shared_ptr<ReplicaTarget> Target(const std::string& node) const;
  // Called once when the layer becomes fenced (on the reactor).
  void OnFenced(std::function<void()> fn) { on_fenced_ = std::move(fn); }
  // Called whenever a replica leaves the in-sync set (after it was recorded).
  void OnReplicaOut(std::function<void(const std::string& node)> fn) { on_out_ = std::move(fn); }

  // --- snapshots and fencing (docs/replication.md, "Snapshots of replicated volumes",
  // "Moving the target"), on the reactor ---
  // Holds every new write, write-zeroes and discard (flushes and reads go on); go() runs once
  // none is in flight, so every replica has the same writes. Resume() releases them.
  void Quiesce(std::function<void()> go);
  void Resume();
  // SNAPSHOT(name) to every in-sync remote replica (at the layer's epoch); done(node, status
  // per replica) once each answered. A STALE_EPOCH answer fences the layer.
  using SnapshotResults = std::vector<std::pair<std::string, Status>>;
  // `labels`: the copies' labels (a target without a replica sends them: no copy of its own
  // carries them; otherwise none).
  void SnapshotRemotes(const std::string& name, const Labels& labels,
                       std::function<void(SnapshotResults)> done);
  // A newer target opened one of this volume's replicas at `epoch` (the daemon hears it from its
  // replica server when the replica on this node is raised): fenced if `epoch` is newer than
  // the layer's. Nothing is recorded in the store.
  void FenceAt(uint64_t epoch);

  // --- for the Rebuilder, on the reactor ---
  // Calls go() once no write to [offset, offset+length) is in flight; writes to it submitted
  // from now on wait until UnlockRange(the id returned). Several ranges may be locked at once
  // (the rebuild's windows in flight); they must not overlap.
  uint64_t LockRange(uint64_t offset, uint64_t length, std::function<void()> go);
  void UnlockRange(uint64_t id);
  // Submits one request straight to a replica (the rebuild's reads and writes), outside the
  // fan-out; `done` runs on the reactor.
  void SubmitTo(const std::string& node, ChildIo* child);

 private:
  struct Fanout;
  struct Slot {
    std::shared_ptr<ReplicaTarget> target;
    MemberState state = MemberState::kOut;
    uint64_t errors = 0;
    std::string last_error;
    std::vector<Fanout*> waiting;  // writes whose acknowledgement waits for its removal
    std::chrono::steady_clock::time_point leaving_since;
    bool membership_call_running = false;
    bool removed = false;  // RemoveReplica: kept (indexes stay valid), state out, never found
    std::shared_ptr<LatencyHistogram> write_latency = std::make_shared<LatencyHistogram>();
  };

  static void OnChildDone(ChildIo* child);
  void StartWrite(VolumeIo* io);
  void DispatchWrite(VolumeIo* io);
  // The activity log's part of a write about to be dispatched (replication_layer_al.cc).
  void LogAndDispatch(VolumeIo* io);
  void StartLogFlush();
  // By value: `status` is the flush request's, which this frees first.
  void LogFlushDone(Status status);
  void LogStarted(Fanout* f);
  void LogCompleted(Fanout* f, const Status& status);
  void StartRead(VolumeIo* io, Fanout* retry);
  void FinishChild(Fanout* f, ChildIo* child);
  void MaybeComplete(Fanout* f);
  void Complete(Fanout* f, Status status);
  void Fail(VolumeIo* io, Status status);
  void NoteCompleted(Fanout* f, const Status& status);
  void FailWaitingOnLeave(size_t slot, const std::string& why);
  void ExpireLeaveLater(size_t slot);
  // Marks for `node` (leaving) the regions of writes not known durable on it; each mark adds to
  // *marks and ends in one_done.
  void MarkUnflushed(const std::string& node, const std::shared_ptr<uint32_t>& marks,
                     const std::function<void(Status)>& one_done);
  void ReplicaFailed(size_t slot, const std::string& reason);
  void RecordLeave(size_t slot);
  void Joined(size_t slot, const Status& generation, std::function<void(Status)> done);
  void LeaveRecorded(size_t slot, Result<uint64_t> epoch);
  void Fence(const Status& why);
  void ResumeHeld();
  bool Overlaps(const VolumeIo* io) const;
  size_t InSyncCount() const;
  bool WritesBlocked() const;
  std::vector<std::string> OutNodes() const;
  int PickReader(size_t after) const;
  Slot* FindSlot(const std::string& node, size_t* index = nullptr);

  Reactor* const reactor_;
  const std::string volume_;
  uint64_t size_bytes_;
  ChangedRegions* const changed_;
  MembershipClient* const membership_;
  const Options options_;
  uint64_t epoch_;
  bool fenced_ = false;
  Status fence_status_;
  std::vector<Slot> slots_;
  std::set<Fanout*> writes_in_flight_;  // dispatched to replicas, not complete
  // Regions (index = offset / kRegionBytes) of writes completed since the last flush was
  // dispatched; a flush in flight holds those before it (Fanout::flushing).
  std::set<uint64_t> unflushed_;
  std::deque<VolumeIo*> held_;  // writes waiting (a leave, a locked range)
  struct RangeLock {
    uint64_t id = 0, offset = 0, length = 0;
    std::function<void()> waiter;  // LockRange's go, until no write to the range is in flight
  };
  std::vector<RangeLock> range_locks_;
  uint64_t next_lock_id_ = 1;
  bool WriteInFlightTo(uint64_t offset, uint64_t length) const;
  void GrantDrainedLocks();
  bool quiesced_ = false;
  std::function<void()> quiesce_waiter_;  // Quiesce's go, once no write is in flight
  void MaybeQuiesced();
  size_t next_reader_ = 0;
  std::function<void()> on_fenced_;
  std::function<void(const std::string&)> on_out_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // timers hold it weakly
  ActivityLog* activity_ = nullptr;
  std::deque<VolumeIo*> log_held_;       // writes waiting for room in the activity log
  std::unique_ptr<VolumeIo> log_flush_;  // the flush that makes room, while it runs
};

}  // namespace shale::replication
