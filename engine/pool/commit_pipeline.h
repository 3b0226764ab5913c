// CommitPipeline: group commit of one pool's metadata, on a thread of its own (RocksDB syncs and
// device flushes block, so they never run on a reactor).
//
// One round: (1) take every queued request; (2) flush the device, making durable the data of
// every write that completed before those requests were queued; (3) write all their metadata
// changes plus the allocation-bitmap chunks they touch in ONE synced RocksDB batch; (4) discard
// and release the clusters those changes freed (only now can a new owner safely get them);
// (5) call each request's done(). Requests arriving meanwhile form the next round. So a
// flush-heavy workload costs one device flush and one RocksDB sync per round, not per flush.
//
// Ordering argument (docs/crash-consistency.md): metadata that references a cluster commits only
// after the data written there is durable (step 2 before 3), and a cluster is reused only after
// the metadata freeing it is durable (step 4 after 3).
//
// Any failure in (2) or (3) puts the pipeline in a failed state: that round and every later
// request fail with the same error (the pool must be reopened, which recovers from durable state).
// The pipeline never retries: after a failed fsync the kernel may have dropped the dirty data, and
// after a failed WAL write or sync RocksDB refuses every later write (a background error),
// so a retry could only claim durability it does not have. A failed round's outcome is unknown
// (its batch may or may not be found after a restart); that is safe because its data was flushed
// before the batch was written and the clusters it frees were not released.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/io/block_device.h"
#include "engine/pool/allocator.h"
#include "engine/pool/metadata_store.h"

namespace shale {

class CommitPipeline {
 public:
  struct Request {
    MetaBatch batch;                          // metadata changes; may be empty (flush only)
    std::vector<uint32_t> allocated;          // clusters `batch` makes referenced
    std::vector<uint32_t> freed;              // clusters `batch` makes unreferenced
    bool flush_device = true;                 // false for pure metadata changes (no new data)
    std::function<void(const Status&)> done;  // called on the pipeline thread
  };

  struct Stats {
    uint64_t rounds = 0;
    uint64_t requests = 0;
    uint64_t device_flushes = 0;
    uint64_t metadata_writes = 0;
    uint64_t metadata_bytes = 0;  // encoded bytes of the RocksDB batches written
  };

  // `committed` is the allocation bitmap as stored in `meta` (loaded at pool open).
  CommitPipeline(std::string pool_name, BlockDevice* device, MetadataStore* meta,
                 ClusterAllocator* allocator, ClusterBitmap committed, uint32_t cluster_size,
                 uint64_t data_offset, bool discard_freed);
  ~CommitPipeline();
  CommitPipeline(const CommitPipeline&) = delete;
  CommitPipeline& operator=(const CommitPipeline&) = delete;

  void Submit(Request request);
  // Submits and waits; for control-plane threads (never a reactor).
  Status CommitSync(Request request);
  // Finishes every submitted request, then stops the thread. Idempotent.
  void Stop();

  Status failure() const;
  // Whether failure() is set: lock-free, for the I/O path (volumes refuse writes once it is).
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  Stats stats() const;
  // Test hook, runs on the pipeline thread between the device flush and the metadata write.
  void SetBeforeMetadataWriteHook(std::function<void()> hook);
  // The allocation bitmap as committed (for pool check). Thread-safe snapshot.
  ClusterBitmap committed_bitmap() const;
  // Pool expand: the committed bitmap covers `cluster_count` clusters from now on (the new ones
  // free). Thread-safe; call before the allocator hands any of them out.
  void GrowBitmap(uint64_t cluster_count);

 private:
  void ThreadMain();
  Status RunRound(std::vector<Request>& round, std::vector<uint32_t>* to_release);
  void DiscardClusters(std::vector<uint32_t> clusters);

  const std::string pool_name_;
  BlockDevice* const device_;
  MetadataStore* const meta_;
  ClusterAllocator* const allocator_;
  const uint32_t cluster_size_;
  const uint64_t data_offset_;
  const bool discard_freed_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Request> queue_;
  bool stopping_ = false;
  Status failure_;
  std::atomic<bool> failed_{false};  // set with failure_
  Stats stats_;
  std::function<void()> before_metadata_write_;
  ClusterBitmap committed_;  // guarded by mu_ for snapshots; mutated only on the thread
  std::thread thread_;
};

}  // namespace shale
