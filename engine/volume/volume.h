// Volume: a thin-provisioned volume's core mapping layer, the bottom of its I/O chain.
//
// Data lives in clusters of its pool; a ClusterMap (flat, in memory) says where each 4 KiB
// block is. Space is allocated on the first write to a virtual cluster; blocks never written
// read as zeros (their cluster bits are clear, so old data of a freed cluster is never visible).
// Requests aligned to 4 KiB take the fast path; 512-byte-aligned ones use read-modify-write of
// the edge blocks under a range lock.
//
// Durability (docs/crash-consistency.md): a write is acknowledged when its data is on the device;
// the mapping change it caused stays in memory ("dirty") until a commit: FLUSH, a FUA write, the
// periodic commit timer, or Close(). A commit goes through the pool's CommitPipeline (device
// flush, then one synced RocksDB batch), so metadata never references data that is not durable.
//
// Threading: everything but the const accessors marked "any thread" runs on reactor().
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/common/latency_histogram.h"
#include "engine/io/block_device.h"
#include "engine/pool/commit_pipeline.h"
#include "engine/pool/map_entry.h"
#include "engine/pool/metadata.pb.h"
#include "engine/pool/metadata_store.h"
#include "engine/volume/cluster_map.h"
#include "engine/volume/inflight_table.h"
#include "engine/volume/volume_io.h"

namespace shale {

class Pool;
class Reactor;

struct VolumeCounters {
  std::atomic<uint64_t> reads{0}, writes{0}, flushes{0}, discards{0}, write_zeroes{0};
  std::atomic<uint64_t> bytes_read{0}, bytes_written{0}, errors{0}, commits{0};
  std::atomic<uint64_t> bytes_discarded{0}, bytes_zeroed{0};  // discard / write-zeroes ranges
  // Client requests from Submit to completion (gate and device time included; QoS waits above
  // the volume are not): recorded on the volume's reactor, readable from any thread.
  LatencyHistogram read_latency, write_latency, flush_latency;
  // Bytes this volume wrote to the pool device (data only; metadata goes to RocksDB).
  std::atomic<uint64_t> device_bytes_written{0};
  // Longest time writes were parked by a snapshot/merge/revert gate, and the last one (ns).
  std::atomic<uint64_t> last_write_pause_ns{0};
};

class Volume final : public VolumeLayer {
 public:
  struct Options {
    uint64_t commit_interval_ns = 5'000'000'000;  // periodic commit of dirty mappings
    // A read-only view of a frozen image (snapshot export): owns nothing, never commits.
    bool view_only = false;
  };

  // Longest image chain (head included) a volume may have; 127 snapshots deep.
  static constexpr size_t kMaxChainDepth = 128;
  // Dirty (uncommitted) mappings at which a request's completion submits a commit without
  // waiting for it: bounds what a flush or a freeze must make durable and what a freeze must
  // capture on the reactor (2048 clusters = 128 MiB of newly mapped data at 64 KiB clusters;
  // encoding that many costs ~0.5 ms: docs/performance.md, "Snapshots under load").
  static constexpr size_t kDirtyCommitThreshold = 2048;

  // `chain` lists image ids root first, head last; `map` is their merged view (see Loader).
  Volume(Pool* pool, Reactor* reactor, meta::VolumeRecord record, std::vector<uint64_t> chain,
         ClusterMap map, const Options& options);
  ~Volume() override;
  Volume(const Volume&) = delete;
  Volume& operator=(const Volume&) = delete;

  // Builds the merged view of `chain` from the pool's metadata (control thread).
  static Result<ClusterMap> LoadMap(Pool& pool, const std::vector<uint64_t>& chain,
                                    uint64_t size_bytes, uint64_t* owned_clusters);

  void Submit(VolumeIo* io) override;

  // --- any thread ---
  uint64_t id() const { return id_; }
  const std::string& name() const { return name_; }
  Reactor* reactor() const { return reactor_; }
  Pool* pool() const { return pool_; }
  uint64_t head_image() const { return chain_.back(); }
  uint64_t size_bytes() const { return size_bytes_.load(std::memory_order_acquire); }
  bool read_only() const { return read_only_; }
  uint64_t created_unix_ns() const { return created_unix_ns_; }
  // Pool space this volume's head image holds (clusters x cluster size).
  uint64_t allocated_bytes() const;
  const VolumeCounters& counters() const { return counters_; }

  // --- reactor thread: image (snapshot) mechanics, driven by the Engine ---

  // Freezes the head at once, without draining: commits the head's dirty mappings together
  // with `records` (which must make the head a frozen image and new_head the volume's head) and
  // continues on new_head. Writes acknowledged before the call are in the frozen image; writes
  // admitted after it are not; writes in flight at the cut (admitted, not acknowledged) finish
  // into the frozen image, and a second commit carries their mappings once the last of them
  // has completed (flushes wait for it to be submitted). Nothing is parked. cut() (optional)
  // runs before Freeze returns, once the head has switched; durable(status) runs on the reactor
  // once both commits are durable (or one failed). Many dirty mappings are committed first,
  // so that the capture at the cut stays small. (docs/snapshots.md, "Freeze latency".)
  void Freeze(uint64_t new_head, MetaBatch records, std::function<void()> cut,
              std::function<void(const Status&)> durable);
  // Freezing several volumes in one metadata commit (Engine::FreezeVolumes): Quiesce every
  // member, CaptureFreeze each once all are drained, submit the captured requests as one, then
  // Resume. Quiesce parks every new request (reads and flushes too) and runs `drained` on the
  // reactor once none is in flight.
  void Quiesce(std::function<void()> drained);
  // While quiesced: moves the head's dirty mappings and allocated/freed clusters into a commit
  // request (not submitted: the caller merges it with the other members' and the records that
  // make the head frozen and new_head the head) and continues on new_head. done(status) runs on
  // the reactor once the merged commit is durable.
  CommitPipeline::Request CaptureFreeze(uint64_t new_head, std::function<void(const Status&)> done);
  // Ends Quiesce: the parked requests run. Call after the captured request was submitted.
  void Resume();
  // The frozen parent image `from` (direct parent of the head, which is its only child) is
  // merged into the head: its fragments (from_entries: its stored entries) become the
  // head's, clusters of it that nothing shows any more are freed. One commit carries the head's
  // entries, the freed clusters and `records` (which must delete `from`'s mappings and record).
  // Until that commit is durable the parent's clusters are never written in place.
  void MergeParentIntoHead(uint64_t from, std::vector<std::pair<uint64_t, MapEntry>> from_entries,
                           MetaBatch records, std::function<void(const Status&)> done);
  // `from` (an ancestor other than the head's parent) was merged into `to`, durably: relabel.
  void RelabelImage(uint64_t from, uint64_t to, const std::vector<uint64_t>& vclusters);
  // Replaces the head with an empty one on top of `chain` (revert): parks all I/O, frees every
  // cluster the old head owned, commits `records` with that, continues on the new map.
  void ReplaceHead(std::vector<uint64_t> chain, ClusterMap map, uint64_t new_size,
                   MetaBatch records, std::function<void(const Status&)> done);
  // Copies every block the volume reads through parent images into clusters it owns, in
  // batches of up to 32 clusters; writes are parked only while a batch is copied, so a client
  // write is never overwritten by the parent's older data. Background I/O class.
  // progress(done, total) counts clusters; done(status) after the copies are committed.
  // With `admission` (which must outlive the flatten), each batch waits for its Admit before
  // writes are parked for it, and reports done() once its copies completed.
  void Flatten(std::function<void(uint64_t, uint64_t)> progress,
               std::function<void(const Status&)> done, BackgroundAdmission* admission = nullptr);
  // After Flatten: forgets the parent images (zero marks are meaningless without them) and
  // commits `records` (which must clear the head's parent).
  void DetachFromParents(MetaBatch records, std::function<void(const Status&)> done);
  const std::vector<uint64_t>& chain() const { return chain_; }

  struct SpaceUsage {
    uint64_t owned_bytes = 0;    // clusters the head owns (what deleting the volume frees)
    uint64_t shared_bytes = 0;   // data read through parent images (shared with snapshots)
    uint64_t written_bytes = 0;  // blocks with data the head owns
  };
  SpaceUsage Usage() const;

  // Allocation status of [offset, offset + length) as runs of blocks: `zero` runs read as zeros
  // without touching the device (never written, discarded or zeroed); the others hold data.
  // At most max_extents runs; the last may end before offset + length. Offsets are in bytes,
  // at 4 KiB granularity inside the range (partial first/last blocks report their block).
  struct Extent {
    uint64_t length;
    bool zero;
  };
  // A volume whose data a layer above serves from elsewhere (it holds none of it) answers one
  // data run for any range: its own map says nothing of what the clients read.
  std::vector<Extent> QueryAllocation(uint64_t offset, uint64_t length, size_t max_extents) const;
  void set_data_elsewhere(bool elsewhere) { data_elsewhere_.store(elsewhere); }
  bool data_elsewhere() const { return data_elsewhere_.load(); }

  void Start();  // arms the periodic commit
  // Commits every dirty mapping; done(status) runs on the reactor once it is durable.
  void Commit(std::function<void(const Status&)> done);
  // The same, with extra metadata changes and freed clusters in the same atomic commit.
  void CommitWith(MetaBatch extra, std::vector<uint32_t> extra_freed,
                  std::vector<uint32_t> extra_allocated, std::function<void(const Status&)> done);
  // Grows the logical size (the record is committed by the caller).
  void Grow(uint64_t new_size);
  // Stops the timer, waits for I/O in flight, commits; done(status) runs on the reactor.
  void Close(std::function<void(const Status&)> done);
  // Physical clusters owned by the head image (used by delete; volume must be closed).
  std::vector<uint32_t> OwnedClusters() const;
  uint64_t requests_in_flight() const { return requests_in_flight_; }
  const ClusterMap& map() const { return map_; }

 private:
  struct Request;
  struct Unaligned;
  struct FlattenJob;
  void FlattenNextBatch(std::shared_ptr<FlattenJob> job);
  void FlattenCopyBatch(std::shared_ptr<FlattenJob> job);
  // Parent bytes the next batch would copy (as the map stands now).
  uint64_t FlattenBatchBytes(const FlattenJob& job) const;
  // The batch's copies are over (or it had none): releases its admission, resumes writes.
  void FlattenBatchEnded(std::shared_ptr<FlattenJob> job);
  struct Seg {
    uint64_t v;
    uint32_t pcluster;
    uint64_t blocks;
  };
  struct PendingFreeze;
  // The cut of Freeze (no other gate or freeze in the way).
  void CutFreeze(uint64_t new_head, MetaBatch records, std::function<void()> cut,
                 std::function<void(const Status&)> durable);
  // A write admitted before the cut completed after it: its blocks go to the frozen image.
  void FinishPrecutSeg(const Seg& s, Fragment* f);
  // A write admitted before the cut completed; after the last one, commits the frozen image's
  // final entries and lets the parked flushes go.
  void FinishedPrecutWrite();
  // While a cut's writes are in flight: parks a flush until the freeze's second commit is
  // submitted (true), else false.
  bool ParkFlushBehindFreeze(VolumeIo* io);
  void LinkLiveWrite(Request* r);
  void UnlinkLiveWrite(Request* r);

  // The commit request Commit/CommitWith submit: the head's dirty mappings, allocated and freed
  // clusters, `extra`; done(status) runs on the reactor once durable.
  CommitPipeline::Request PrepareCommit(MetaBatch extra, std::vector<uint32_t> extra_freed,
                                        std::vector<uint32_t> extra_allocated,
                                        std::function<void(const Status&)> done);
  Status Validate(const VolumeIo& io) const;
  void Dispatch(VolumeIo* io);
  // Stops admitting mutating requests (and, with all_io, every request); when_drained runs
  // once none of them is in flight. UngateWrites() resumes the parked ones.
  void GateWrites(std::function<void()> when_drained, bool all_io = false);
  void RunDrainWaiters();
  void UngateWrites();
  bool StoredOwned(const Fragment& f) const {
    return f.image == head_ || (merging_from_ != 0 && f.image == merging_from_);
  }
  void Complete(VolumeIo* io, Status status);
  // Adds a client request's time since Submit to its op's histogram.
  void RecordLatency(const VolumeIo& io);
  void CompleteLater(VolumeIo* io, Status status);
  void SubmitRead(VolumeIo* io);
  void SubmitWrite(VolumeIo* io);
  void SubmitUnmap(VolumeIo* io);
  void SubmitFlush(VolumeIo* io);
  void SubmitUnaligned(VolumeIo* io);
  void StepUnaligned(Unaligned* u, const Status& st);
  void RunInner(Unaligned* u, VolumeOp op, uint64_t off, uint64_t len, uint8_t* buf);
  void FinishUnaligned(Unaligned* u, Status st);
  void ArmCommitTimer();
  bool ParkIfLocked(VolumeIo* io);
  void UnlockRange(uint64_t begin, uint64_t end);

  Request* NewRequest(VolumeIo* io);
  void FreeRequest(Request* r);
  static void OnDeviceDone(IoRequest* op);
  void AddDeviceOp(Request* r, IoOp op, uint64_t dev_offset, uint8_t* buf, uint64_t len);
  void SubmitDeviceOps(Request* r);
  void FinishRequest(Request* r);
  Fragment* FindFragment(uint64_t v, uint32_t pcluster);
  void HoldSeg(Request* r, uint64_t v, uint32_t pcluster, uint64_t blocks);
  void ReapEmpty(uint64_t v);
  void MarkDirty(uint64_t v);
  MapEntry StoredEntry(uint64_t v) const;
  void FlushAfter(VolumeIo* io, Status write_status);
  void OnCommitted(std::vector<VolumeIo*> waiters, const Status& st,
                   std::function<void(const Status&)> done);
  void CheckCloseDone();

  Pool* const pool_;
  Reactor* const reactor_;
  const uint64_t id_;
  const std::string name_;
  const bool read_only_;
  const uint64_t created_unix_ns_;
  const uint32_t cluster_size_;
  const uint32_t cluster_shift_;
  const uint32_t blocks_per_cluster_;
  const uint64_t data_offset_;
  const Options options_;
  std::vector<uint64_t> chain_;  // root .. head
  uint32_t head_;                // chain_.back(), narrowed for fragment comparisons
  std::atomic<uint64_t> size_bytes_;
  std::atomic<uint64_t> owned_clusters_{0};
  std::atomic<bool> data_elsewhere_{false};
  VolumeCounters counters_;

  ClusterMap map_;
  InflightTable inflight_;  // device I/Os in flight per physical cluster of map_'s fragments
  std::vector<uint64_t> dirty_bits_;
  std::vector<uint64_t> dirty_list_;
  std::vector<uint32_t> allocated_;  // since the last commit capture
  std::vector<uint32_t> freed_;      // since the last commit capture
  uint64_t alloc_hint_ = 0;
  uint64_t commits_in_flight_ = 0;
  bool failed_ = false;
  Status failure_;

  Request* free_requests_ = nullptr;
  Request* live_writes_ = nullptr;         // write requests with device I/O in flight
  std::unique_ptr<PendingFreeze> freeze_;  // a cut whose writes in flight are not all done
  uint64_t requests_in_flight_ = 0;
  uint64_t timer_id_ = 0;
  bool closing_ = false;
  std::function<void(const Status&)> close_done_;

  struct Range {
    uint64_t begin, end;
  };
  std::vector<Range> rmw_locks_;
  std::deque<VolumeIo*> parked_;

  // Write gate (freeze, merge, revert).
  bool write_gate_ = false;
  bool gate_all_ = false;
  uint64_t gate_start_ns_ = 0;
  uint64_t mutating_in_flight_ = 0;  // admitted mutating client requests not yet completed
  uint64_t reads_in_flight_ = 0;     // admitted read requests not yet completed
  std::deque<VolumeIo*> gated_;
  std::vector<std::function<void()>> drain_waiters_;
  // Image being merged into the head: its fragments count as the head's in stored entries but
  // are not written in place until the merge is durable.
  uint32_t merging_from_ = 0;
};

}  // namespace shale
