// Engine: the storage engine of one node — its reactors, its pools and their volumes.
//
// It is the API the daemon (csi/) drives: pool and volume lifecycle (thread-safe, serialized by
// one control mutex; they block while metadata commits) and OpenVolume() for the data path.
// A data-dir holds:
//   <data-dir>/registry/            RocksDB: where each pool's device and metadata live
//   <data-dir>/pools/<uuid>/meta/   RocksDB of one pool (volumes, images, mappings, bitmap)
//   <data-dir>/default-pool.img     sparse file of the embedded default pool
// Upper layers (snapshot, qos, ...) keep their own records in a pool's metadata store under
// keys::Extension(namespace, key).
#pragma once

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/block_device.h"
#include "engine/io/reactor.h"
#include "engine/pool/pool.h"
#include "engine/volume/volume.h"

namespace shale {

inline constexpr unsigned kMaxEngineReactors = 16;

struct EngineOptions {
  // Opens a pool device by path. Tests substitute fault-injecting devices here; empty means
  // OpenBlockDevice(path, device).
  using DeviceFactory =
      std::function<Result<std::shared_ptr<BlockDevice>>(const std::string& path)>;
  // The RocksDB file system of a pool's metadata store, asked each time one is opened (pool
  // create, pool open) with its directory. Tests substitute a FaultInjectingFs
  // (engine/pool/fault_fs.h) here; empty, or a null result, means the default file system. The
  // registry store always uses the default.
  using MetadataFsFactory =
      std::function<std::shared_ptr<rocksdb::FileSystem>(const std::string& metadata_dir)>;

  std::string data_dir = "./shale-data";
  unsigned reactors = 1;               // data-path threads, each with an io_uring ring (1..16)
  DeviceOptions device;                // backend (io_uring | libaio) and O_DIRECT for pool devices
  uint64_t commit_interval_ms = 5000;  // periodic commit of unflushed mapping changes
  bool create_default_pool = true;     // create "default" on first start
  std::string default_pool_name = "default";
  uint64_t default_pool_size = 8 * kGiB;
  uint32_t default_cluster_size = kDefaultClusterSize;
  // A clean shutdown writes every volume's cluster map to a file that the next open reads
  // instead of scanning its records (docs/format/map-checkpoint.md). With verify, the open scans
  // too and fails if the two maps differ (tests).
  bool map_checkpoints = true;
  bool verify_map_checkpoints = false;
  DeviceFactory device_factory;
  MetadataFsFactory metadata_fs_factory;
};

struct PoolInfo {
  std::string name;
  std::string uuid;
  std::string device_path;
  std::string state;            // "online" or "error"
  std::string error;            // why the pool is not online
  uint64_t capacity_bytes = 0;  // data area: clusters x cluster size
  uint64_t used_bytes = 0;
  uint64_t free_bytes = 0;
  uint32_t cluster_size = 0;
  uint64_t cluster_count = 0;
  uint32_t volume_count = 0;
  uint64_t metadata_bytes_written = 0;  // since the pool was opened (commit pipeline)
  std::string backend;                  // device kind ("io_uring", "libaio", ...)
};

struct VolumeInfo {
  std::string name;
  std::string pool;
  uint64_t id = 0;
  uint64_t size_bytes = 0;
  uint64_t allocated_bytes = 0;  // pool space held by the volume
  bool read_only = false;
  uint64_t created_unix_ns = 0;
  uint32_t open_count = 0;  // handles held by frontends (NBD exports, ...)
  std::map<std::string, std::string> labels;
  uint64_t reads = 0, writes = 0, bytes_read = 0, bytes_written = 0, flushes = 0, errors = 0;
  uint64_t discards = 0, write_zeroes = 0, bytes_discarded = 0, bytes_zeroed = 0;
  // Client request latency since the daemon started (VolumeCounters).
  LatencyHistogram::Snapshot read_latency, write_latency, flush_latency;
};

struct CreatePoolParams {
  std::string name;
  std::string device_path;  // block device or file; a missing file is created (needs size)
  uint64_t size_bytes = 0;  // for a new file; 0 = use the existing device's size
  uint32_t cluster_size = kDefaultClusterSize;
  bool force = false;        // format a device that is not blank
  bool preallocate = false;  // new file: allocate all its blocks now (no filesystem allocation
                             // work on first writes; costs the space up front)
};

struct CreateVolumeParams {
  std::string name;
  uint64_t size_bytes = 0;  // rounded up to 4 KiB
  std::string pool;         // empty: "default" if present, else the only pool
  bool read_only = false;
  std::map<std::string, std::string> labels;
};

// Adds records that must commit atomically with an image operation (e.g. a snapshot's name).
using ExtraRecords = std::function<void(uint64_t image_id, MetaBatch* batch)>;
// Adds records of upper layers (QoS settings, clone provenance, frontend records) that must
// commit atomically with a volume operation, given the volume's id (never reused in a pool).
// Runs under the engine's control lock: it must only add to the batch, never call the Engine.
using VolumeRecords = std::function<void(uint64_t volume_id, MetaBatch* batch)>;

// One layer of mappings: a volume's head (writable) or a frozen image (a snapshot).
struct ImageInfo {
  uint64_t id = 0;
  uint64_t parent = 0;  // 0 = none
  std::string pool;
  uint64_t volume_id = 0;  // the volume whose head it is or was
  std::string volume;      // that volume's name, empty if it was deleted
  bool frozen = false;
  bool deleted = false;  // deleted, but kept until its children stop needing it
  uint64_t created_unix_ns = 0;
  uint64_t size_bytes = 0;  // logical size when frozen
  std::vector<uint64_t> children;
  uint32_t depth = 0;  // images from the root down to this one, itself included
};

struct ImageUsage {
  uint64_t data_bytes = 0;       // blocks with data stored in this image's clusters
  uint64_t exclusive_bytes = 0;  // clusters nothing else reads: freed if the image is deleted
  uint64_t shared_bytes = 0;     // data of this image that child images still read
};

// Progress and cancellation of a pool check. Both run on the checking thread.
struct PoolCheckOptions {
  // Units of work done and the total (mapping entries and bitmap words; the total is an
  // estimate until the end).
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Polled between units; true stops the check with Aborted (nothing is changed by a check).
  std::function<bool()> cancelled;
};

// Result of a pool consistency check (pool check command).
struct PoolCheckReport {
  uint64_t referenced_clusters = 0;
  uint64_t committed_clusters = 0;
  std::vector<std::string> problems;  // empty = clean
  bool clean() const { return problems.empty(); }
};

class Engine;

// Keeps a volume open for a frontend; the volume cannot be deleted while a handle lives.
class VolumeHandle {
 public:
  ~VolumeHandle();
  VolumeHandle(const VolumeHandle&) = delete;
  VolumeHandle& operator=(const VolumeHandle&) = delete;
  Volume& volume() { return *volume_; }
  Reactor* reactor() { return volume_->reactor(); }

 private:
  friend class Engine;
  VolumeHandle(Engine* engine, std::shared_ptr<Volume> volume)
      : engine_(engine), volume_(std::move(volume)) {}
  Engine* engine_;
  std::shared_ptr<Volume> volume_;
};

class Engine {
 public:
  // Opens (or initialises) the data dir: starts reactors, opens every registered pool (a pool
  // that fails to open is reported with state "error"; the others work), loads volumes, and
  // creates the default pool on first start when asked.
  static Result<std::unique_ptr<Engine>> Open(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Commits and closes every volume and pool, stops the reactors. Idempotent.
  Status Shutdown();

  Result<PoolInfo> CreatePool(const CreatePoolParams& params);
  std::vector<PoolInfo> ListPools();
  Result<PoolInfo> GetPool(std::string_view name);
  // Refuses while the pool holds volumes unless force (then deletes them; none may be open).
  // Wipes the superblock, removes the metadata, and deletes the backing file if Shale made it.
  Status DeletePool(std::string_view name, bool force);
  // Grows an online pool into the space its device has now: a block device that grew, or a
  // file first extended to `size_bytes` (0: as it is). Volumes keep serving I/O meanwhile; the
  // new clusters are free. Crash-safe (Pool::Expand). FailedPrecondition when there is no room
  // to add a cluster.
  Result<PoolInfo> ExpandPool(std::string_view name, uint64_t size_bytes);
  // Commits every volume of the pool, then checks mappings against the allocation bitmap:
  // no cluster referenced twice, every referenced cluster allocated, no allocated cluster leaked.
  // `options` (optional) reports progress and lets the caller stop the check (Aborted).
  Result<PoolCheckReport> CheckPool(std::string_view name, const PoolCheckOptions& options = {});

  // `extra` (optional) commits with the volume's records.
  Result<VolumeInfo> CreateVolume(const CreateVolumeParams& params,
                                  const VolumeRecords& extra = nullptr);
  std::vector<VolumeInfo> ListVolumes();
  Result<VolumeInfo> GetVolume(std::string_view name);
  // Grows a volume (shrinking is refused). Clients connected see the new size on reconnect.
  // `extra` (optional) commits with the new size, also when the size does not change.
  Result<VolumeInfo> ResizeVolume(std::string_view name, uint64_t new_size_bytes,
                                  const VolumeRecords& extra = nullptr);
  // Sets (adds or replaces) labels of a volume, durably, with `extra` (optional) in the same
  // commit. Labels are names for the layers above; the engine gives them no meaning.
  Result<VolumeInfo> SetVolumeLabels(std::string_view name,
                                     const std::map<std::string, std::string>& labels,
                                     const VolumeRecords& extra = nullptr);
  // Busy while the volume is open; space returns to the pool once the delete is durable.
  // `extra` (optional) commits with the removal of the volume's records (it deletes the upper
  // layers' records of the volume).
  Status DeleteVolume(std::string_view name, const VolumeRecords& extra = nullptr);

  // Opens a volume for I/O. Submit requests on handle->reactor().
  Result<std::shared_ptr<VolumeHandle>> OpenVolume(std::string_view name);

  // --- Layered images: the mechanism under snapshots and clones (docs/snapshots.md) ---

  // Freezes the volume's current content as an immutable image and continues the volume on a
  // new head (redirect-on-write: nothing is copied). Writes acknowledged before the call are in
  // the image, writes issued after it returns are not. Returns the frozen image's id.
  // Without `durable` it returns once the freeze's commit (with `extra`) is durable. With it,
  // it returns at the cut (the drain of writes in flight; docs/snapshots.md, "Freeze latency")
  // and durable(status) runs later on another thread, once the commit is durable or failed; it
  // must not call into the engine. Until then every engine call that reads this pool's stored
  // state (records, image entries) first waits for that commit, so nothing reads a half-made
  // image; a crash before it leaves no trace of the freeze.
  using FreezeDurable = std::function<void(const Status&)>;
  Result<uint64_t> FreezeVolume(std::string_view volume, const ExtraRecords& extra = nullptr,
                                FreezeDurable durable = nullptr);
  // Freezes every volume in `volumes` at one instant (group snapshots; docs/snapshots.md,
  // "Group snapshots"). All members are quiesced first (every request parked, those in flight
  // drained), then each is captured, then resumed: a write acknowledged before the call is in
  // its member's image, a write admitted after any member was quiesced is in none, and no write
  // that depends on an excluded one can be included. Members of one pool freeze in ONE metadata
  // commit; with several pools, one commit per pool, the first member's pool (the primary) last
  // and only after the others are durable. `extra` (optional) runs once per pool commit with the
  // pool's name and the frozen image ids of all members (in the order given). Returns those ids.
  // InvalidArgument (empty, > 64 or repeated names), NotFound, FailedPrecondition (busy,
  // read-only, chain limit).
  using GroupRecords = std::function<void(std::string_view pool,
                                          const std::vector<uint64_t>& images, MetaBatch* batch)>;
  Result<std::vector<uint64_t>> FreezeVolumes(const std::vector<std::string>& volumes,
                                              const GroupRecords& extra = nullptr);
  // Creates a volume whose head reads through frozen `image_id` (a clone). params.pool must be
  // empty or the image's pool; the size must be at least the image's. `extra` gets the new
  // volume's id.
  Result<VolumeInfo> CreateVolumeFromImage(const CreateVolumeParams& params, uint64_t image_id,
                                           const VolumeRecords& extra = nullptr);
  // Opens a read-only view of a frozen image (for exports). Busy-protects the image.
  Result<std::shared_ptr<VolumeHandle>> OpenImage(std::string_view pool, uint64_t image_id);
  // Deletes a frozen image: merged into its only child (which takes over what it still reads),
  // freed when nothing reads through it, or kept hidden ("deleted") while several children
  // still read through it, until they go. Busy while a view of it is open.
  Status DeleteImage(std::string_view pool, uint64_t image_id, const ExtraRecords& extra = nullptr);
  // Rolls the volume back to frozen ancestor `image_id` (content and size). The volume must
  // not be open.
  Status RevertVolume(std::string_view volume, uint64_t image_id,
                      const ExtraRecords& extra = nullptr);
  // Copies everything the volume still reads through parent images into its own clusters,
  // then detaches it from them. Clients may keep using the volume meanwhile. With `admission`
  // (valid for the call), every copy batch is paced by it (Volume::Flatten); null: unpaced.
  Status FlattenVolume(std::string_view volume,
                       const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr,
                       BackgroundAdmission* admission = nullptr);
  // Byte ranges (4 KiB granular, sorted, merged) whose content may differ between frozen image
  // `older` and frozen image `newer`, where older is an ancestor of newer: the blocks that the
  // images after `older` up to `newer` store data or zero marks for. InvalidArgument if older is
  // not an ancestor. Ranges past the older image's size count as changed.
  Result<std::vector<std::pair<uint64_t, uint64_t>>> ChangedRanges(std::string_view pool,
                                                                   uint64_t older, uint64_t newer);
  std::vector<ImageInfo> ListImages(std::string_view pool);
  Result<ImageInfo> GetImage(std::string_view pool, uint64_t image_id);
  Result<ImageUsage> GetImageUsage(std::string_view pool, uint64_t image_id);
  Result<Volume::SpaceUsage> GetVolumeUsage(std::string_view volume);
  Result<uint64_t> VolumeHeadImage(std::string_view volume);

  // Records of upper layers in a pool's metadata (keys::Extension). Writes commit durably.
  // Reads wait for freezes in flight (FreezeVolume's `durable`) unless `committed_only`: then
  // a record a freeze in flight carries is not seen yet (the caller tracks those itself).
  Result<std::optional<std::string>> GetRecord(std::string_view pool, std::string_view key,
                                               bool committed_only = false);
  Status ScanRecords(std::string_view pool, std::string_view prefix,
                     const std::function<bool(std::string_view key, std::string_view value)>& fn);
  Status WriteRecords(std::string_view pool, MetaBatch batch);

  const EngineOptions& options() const { return options_; }
  // How the open built its volumes' maps: from map checkpoints or by scanning their records.
  struct LoadStats {
    uint32_t maps_from_checkpoints = 0;
    uint32_t maps_scanned = 0;
  };
  LoadStats load_stats() const { return load_stats_; }
  const std::vector<std::unique_ptr<Reactor>>& reactors() const { return reactors_; }

 private:
  struct PoolSlot;
  struct VolumeSlot;
  explicit Engine(EngineOptions options);
  Status Init();
  Status OpenRegisteredPools();
  Status CreateDefaultPool();
  Status LoadVolumes(PoolSlot& slot);
  // Map checkpoints (engine_map_checkpoint.cc).
  Status WriteMapCheckpoint(VolumeSlot& vs);
  void WriteMapCheckpointsLocked(const std::vector<VolumeSlot*>& closed);
  std::optional<ClusterMap> ReadMapCheckpoint(PoolSlot& slot, const meta::VolumeRecord& rec,
                                              const std::vector<uint64_t>& chain);
  Status ConsumeMapCheckpoints(PoolSlot& slot);
  Result<ClusterMap> LoadVolumeMap(PoolSlot& slot, const meta::VolumeRecord& rec,
                                   const std::vector<uint64_t>& chain);
  Result<PoolInfo> CreatePoolLocked(const CreatePoolParams& params, bool mark_created_file);
  PoolInfo DescribePool(const PoolSlot& slot) const;
  VolumeInfo DescribeVolume(const VolumeSlot& slot) const;
  Status DeleteVolumeLocked(VolumeSlot& slot, const VolumeRecords& extra = nullptr);
  // Writes `rec` as the volume's record (with `extra`), durably, then adopts it. Holds mu_.
  Status CommitVolumeRecord(VolumeSlot& vs, meta::VolumeRecord rec, const VolumeRecords& extra);
  struct ImageSlot;
  PoolSlot* FindPool(std::string_view name);
  Result<PoolSlot*> OnlinePool(std::string_view name);
  std::vector<uint64_t> ChildrenOf(const PoolSlot& slot, uint64_t image) const;
  std::vector<uint64_t> ChainOf(const PoolSlot& slot, uint64_t image) const;
  VolumeSlot* VolumeWithHead(const PoolSlot& slot, uint64_t image);
  Result<std::vector<std::pair<uint64_t, MapEntry>>> ReadImageEntries(Pool& pool, uint64_t image);
  // Freezes that returned at their cut (FreezeVolume's `durable`): readers of a pool's stored
  // state (records, image entries) first wait until every such freeze submitted before them is
  // durable. AwaitFreezes waits without holding mu_ (every pool when `pool` is empty);
  // SettleFreezesLocked under it (only where a caller already holds it);
  // FreezesSettledLocked submits the wait (ready at once when none is in flight).
  Status AwaitFreezes(std::string_view pool = {});
  Status SettleFreezesLocked(PoolSlot& slot);
  std::future<Status> FreezesSettledLocked(PoolSlot& slot);
  Status FreeImageLocked(PoolSlot& slot, uint64_t image, const ExtraRecords& extra);
  Status MergeImageLocked(PoolSlot& slot, uint64_t image, uint64_t child,
                          const ExtraRecords& extra);
  Status CollectImagesLocked(PoolSlot& slot);
  Status RunOnVolume(Volume& volume,
                     const std::function<void(std::function<void(const Status&)>)>& op);
  ImageInfo DescribeImage(const PoolSlot& slot, uint64_t image) const;
  Status CloseVolume(Volume& volume);
  Reactor* PickReactor(uint64_t volume_id);
  // Records of a new volume and its head image (parent_image 0 = none), put into batch.
  std::pair<meta::VolumeRecord, meta::ImageRecord> NewVolumeRecords(
      Pool& pool, const CreateVolumeParams& params, uint64_t size, uint64_t parent_image,
      MetaBatch* batch);
  // Starts the live volume for committed records and registers it.
  VolumeSlot* AddVolume(PoolSlot& slot, const meta::VolumeRecord& rec, std::vector<uint64_t> chain,
                        ClusterMap map);
  Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path);
  void ReleaseHandle(Volume* volume);

  EngineOptions options_;
  std::mutex mu_;  // serializes control operations and guards the maps below
  std::unique_ptr<MetadataStore> registry_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::map<std::string, std::unique_ptr<PoolSlot>, std::less<>> pools_;
  std::map<std::string, std::unique_ptr<VolumeSlot>, std::less<>> volumes_;
  // Open read-only views of frozen images, by (pool, image).
  std::map<std::pair<std::string, uint64_t>, std::unique_ptr<ImageSlot>> views_;
  bool shut_down_ = false;
  LoadStats load_stats_;  // set by the open only
  friend class VolumeHandle;
};

}  // namespace shale
