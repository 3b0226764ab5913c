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
#include <map>
#include <memory>
#include <mutex>
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
  using DeviceFactory = std::function<Result<std::shared_ptr<BlockDevice>>(const std::string& path)>;

  std::string data_dir = "./shale-data";
  unsigned reactors = 1;          // data-path threads, each with an io_uring ring (1..16)
  DeviceOptions device;           // backend (io_uring | libaio) and O_DIRECT for pool devices
  uint64_t commit_interval_ms = 5000;  // periodic commit of unflushed mapping changes
  bool create_default_pool = true;     // create "default" on first start
  std::string default_pool_name = "default";
  uint64_t default_pool_size = 8 * kGiB;
  uint32_t default_cluster_size = kDefaultClusterSize;
  DeviceFactory device_factory;
};

struct PoolInfo {
  std::string name;
  std::string uuid;
  std::string device_path;
  std::string state;  // "online" or "error"
  std::string error;  // why the pool is not online
  uint64_t capacity_bytes = 0;  // data area: clusters x cluster size
  uint64_t used_bytes = 0;
  uint64_t free_bytes = 0;
  uint32_t cluster_size = 0;
  uint64_t cluster_count = 0;
  uint32_t volume_count = 0;
  std::string backend;  // device kind ("io_uring", "libaio", ...)
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
};

struct CreatePoolParams {
  std::string name;
  std::string device_path;  // block device or file; a missing file is created (needs size)
  uint64_t size_bytes = 0;  // for a new file; 0 = use the existing device's size
  uint32_t cluster_size = kDefaultClusterSize;
  bool force = false;       // format a device that is not blank
};

struct CreateVolumeParams {
  std::string name;
  uint64_t size_bytes = 0;  // rounded up to 4 KiB
  std::string pool;         // empty: "default" if present, else the only pool
  bool read_only = false;
  std::map<std::string, std::string> labels;
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
  // Commits every volume of the pool, then checks mappings against the allocation bitmap:
  // no cluster referenced twice, every referenced cluster allocated, no allocated cluster leaked.
  Result<PoolCheckReport> CheckPool(std::string_view name);

  Result<VolumeInfo> CreateVolume(const CreateVolumeParams& params);
  std::vector<VolumeInfo> ListVolumes();
  Result<VolumeInfo> GetVolume(std::string_view name);
  // Grows a volume (shrinking is refused). Clients connected see the new size on reconnect.
  Result<VolumeInfo> ResizeVolume(std::string_view name, uint64_t new_size_bytes);
  // Busy while the volume is open; space returns to the pool once the delete is durable.
  Status DeleteVolume(std::string_view name);

  // Opens a volume for I/O. Submit requests on handle->reactor().
  Result<std::shared_ptr<VolumeHandle>> OpenVolume(std::string_view name);

  const EngineOptions& options() const { return options_; }
  const std::vector<std::unique_ptr<Reactor>>& reactors() const { return reactors_; }

 private:
  struct PoolSlot;
  struct VolumeSlot;
  explicit Engine(EngineOptions options);
  Status Init();
  Status OpenRegisteredPools();
  Status CreateDefaultPool();
  Status LoadVolumes(PoolSlot& slot);
  Result<PoolInfo> CreatePoolLocked(const CreatePoolParams& params, bool mark_created_file);
  PoolInfo DescribePool(const PoolSlot& slot) const;
  VolumeInfo DescribeVolume(const VolumeSlot& slot) const;
  Status DeleteVolumeLocked(VolumeSlot& slot);
  Status CloseVolume(Volume& volume);
  Reactor* PickReactor(uint64_t volume_id);
  Result<std::shared_ptr<BlockDevice>> OpenDevice(const std::string& path);
  void ReleaseHandle(Volume* volume);

  EngineOptions options_;
  std::mutex mu_;  // serializes control operations and guards the maps below
  std::unique_ptr<MetadataStore> registry_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::map<std::string, std::unique_ptr<PoolSlot>, std::less<>> pools_;
  std::map<std::string, std::unique_ptr<VolumeSlot>, std::less<>> volumes_;
  bool shut_down_ = false;
  friend class VolumeHandle;
};

}  // namespace shale
