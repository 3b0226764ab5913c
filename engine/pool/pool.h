// Pool: one device (raw block device or file) holding clusters of data, plus the RocksDB
// metadata that says what they hold. The device's superblock names the pool's UUID, the metadata
// records the same UUID; a device and metadata that do not match are refused, never reformatted.
//
// A Pool owns the device, the metadata store, the cluster allocator and the commit pipeline.
// It knows nothing about volumes beyond allocating their ids; the engine (volume layer) keeps
// volume, image and mapping records in the pool's metadata store.
//
// Thread-safety: accessors are safe from any thread; Reserve*Id must be serialized by the caller
// (the engine's control mutex).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "engine/io/block_device.h"
#include "engine/pool/allocator.h"
#include "engine/pool/commit_pipeline.h"
#include "engine/pool/metadata.pb.h"
#include "engine/pool/metadata_store.h"
#include "engine/pool/superblock.h"

namespace shale {

struct PoolCreateOptions {
  std::string name;
  std::string metadata_dir;  // must not exist yet
  uint32_t cluster_size = kDefaultClusterSize;
  bool force = false;  // overwrite a device that is not blank (foreign data or another pool)
  bool discard_freed = true;
  // File system of the metadata store; null = the default (MetadataStore::Options::file_system).
  std::shared_ptr<rocksdb::FileSystem> metadata_fs;
};

struct PoolOpenOptions {
  std::string name;  // expected pool name (from the registry)
  std::string metadata_dir;
  Uuid expected_uuid;  // from the registry; nil = accept the metadata's
  bool discard_freed = true;
  // MetadataStore::Options::defer_compactions: the opener calls meta().ResumeCompactions().
  bool defer_compactions = false;
  // File system of the metadata store; null = the default (MetadataStore::Options::file_system).
  std::shared_ptr<rocksdb::FileSystem> metadata_fs;
};

class Pool {
 public:
  // Formats `device` as a new pool. Crash-safe: metadata is created first in state CREATING,
  // then both superblock copies are written and flushed, then the state becomes READY; Open()
  // finishes an interrupted creation.
  static Result<std::unique_ptr<Pool>> Create(std::shared_ptr<BlockDevice> device,
                                              const PoolCreateOptions& options);
  static Result<std::unique_ptr<Pool>> Open(std::shared_ptr<BlockDevice> device,
                                            const PoolOpenOptions& options);
  ~Pool();  // stops the commit pipeline
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Reads the superblock copies of a device: the first valid one, with a note when the primary
  // copy is damaged. NotFound when the device holds no Shale superblock at all.
  struct SuperblockRead {
    Superblock superblock;
    bool primary_damaged = false;
  };
  static Result<SuperblockRead> ReadSuperblock(BlockDevice& device);
  // Overwrites both superblock copies with zeros (used when a pool is deleted).
  static Status WipeSuperblock(BlockDevice& device);

  const std::string& name() const { return superblock_.pool_name; }
  const Superblock& superblock() const { return superblock_; }
  const Uuid& uuid() const { return superblock_.pool_uuid; }
  BlockDevice& device() { return *device_; }
  std::shared_ptr<BlockDevice> shared_device() { return device_; }
  MetadataStore& meta() { return *meta_; }
  ClusterAllocator& allocator() { return *allocator_; }
  CommitPipeline& pipeline() { return *pipeline_; }
  const CommitPipeline& pipeline() const { return *pipeline_; }
  uint32_t cluster_size() const { return superblock_.cluster_size; }
  // Grows with Expand(); any thread.
  uint64_t cluster_count() const { return cluster_count_.load(std::memory_order_acquire); }

  // Grows the pool online into the space its device has (or, for a file, first extends the file
  // to `size_bytes`; 0: as it is): clusters are added at the end, volumes keep running.
  // Crash-safe, in this order: the device's new size is made durable (flush); the pool record
  // with the new cluster count commits; both superblock copies are rewritten; only then do the
  // allocator and the commit pipeline hand out and record the new clusters. A crash after the
  // record committed but before the superblocks were written is finished by Open(); before it,
  // the pool reopens at its old size (docs/format/superblock.md, "Expansion").
  // FailedPrecondition when the device has no room for another cluster. Must be serialized with
  // the other users of the pool record (Reserve*Id: the engine's control mutex). Returns the
  // number of clusters added.
  Result<uint64_t> Expand(uint64_t size_bytes);
  // Test seam: runs after the pool record with the new size committed, before the superblocks
  // are rewritten; an error stops the expansion there (as a crash would).
  void SetExpandHook(std::function<Status()> hook) { expand_hook_ = std::move(hook); }

  // Hands out ids and records the new counter in `batch` (commit it with the new record).
  uint64_t ReserveVolumeId(MetaBatch* batch);
  uint64_t ReserveImageId(MetaBatch* batch);

  // Closes the pipeline (all submitted commits finish). Further commits fail.
  void Close();

 private:
  Pool(std::shared_ptr<BlockDevice> device, std::unique_ptr<MetadataStore> meta,
       Superblock superblock, meta::PoolRecord record);
  Status LoadAllocation(bool discard_freed);
  static Status WriteSuperblocks(BlockDevice& device, const Superblock& sb);

  std::shared_ptr<BlockDevice> device_;
  std::unique_ptr<MetadataStore> meta_;
  Superblock superblock_;
  meta::PoolRecord record_;
  std::unique_ptr<ClusterAllocator> allocator_;
  std::unique_ptr<CommitPipeline> pipeline_;
  std::atomic<uint64_t> cluster_count_;  // superblock_.cluster_count, readable from any thread
  std::function<Status()> expand_hook_;
};

}  // namespace shale
