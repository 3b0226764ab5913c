// Engine: start-up and shutdown, pools, volumes, handles and upper layers' records. The layered
// images are in engine_images.cc, the pool check in engine_pool_check.cc; the state they share
// is in engine_internal.h.
#include "engine/engine.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>

#include "engine/common/block.h"
#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/engine_internal.h"
#include "engine/pool/keys.h"

namespace shale {

namespace fs = std::filesystem;

using internal::kMaxVolumeSize;

namespace {
std::string UuidBytes(const Uuid& u) { return std::string(u.bytes.begin(), u.bytes.end()); }
std::string RegistryKey(std::string_view pool) { return "pool/" + std::string(pool); }
// The metadata file system for a pool's metadata dir (EngineOptions::metadata_fs_factory).
std::shared_ptr<rocksdb::FileSystem> MetadataFs(const EngineOptions& o, const std::string& dir) {
  return o.metadata_fs_factory ? o.metadata_fs_factory(dir) : nullptr;
}
}  // namespace

VolumeHandle::~VolumeHandle() { engine_->ReleaseHandle(volume_.get()); }

Engine::Engine(EngineOptions options) : options_(std::move(options)) {}

Engine::~Engine() { Shutdown().IgnoreError(); }

Result<std::unique_ptr<Engine>> Engine::Open(const EngineOptions& options) {
  if (options.reactors == 0 || options.reactors > kMaxEngineReactors) {
    return Status::InvalidArgument("reactors must be between 1 and " +
                                   std::to_string(kMaxEngineReactors));
  }
  std::unique_ptr<Engine> engine(new Engine(options));
  Status st = engine->Init();
  if (!st.ok()) {
    engine->Shutdown().IgnoreError();
    return st;
  }
  return engine;
}

Status Engine::Init() {
  std::error_code ec;
  fs::create_directories(options_.data_dir, ec);
  if (ec) return Status::IoError("create data dir " + options_.data_dir + ": " + ec.message());
  chmod(options_.data_dir.c_str(), 0700);
  fs::create_directories(fs::path(options_.data_dir) / "pools", ec);
  if (ec) return Status::IoError("create " + options_.data_dir + "/pools: " + ec.message());

  auto reg = MetadataStore::Open((fs::path(options_.data_dir) / "registry").string(),
                                 {.create_if_missing = true});
  if (!reg.ok()) return reg.status().WithContext("data dir " + options_.data_dir);
  registry_ = std::move(reg).value();

  for (unsigned i = 0; i < options_.reactors; ++i) {
    auto r = Reactor::Start({.name = "reactor-" + std::to_string(i)});
    if (!r.ok()) return r.status().WithContext("start reactor");
    reactors_.push_back(std::move(r).value());
  }
  SHALE_LOG_INFO("io_uring reactors started", {"count", options_.reactors},
                 {"features", reactors_[0]->features().Describe()});

  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(OpenRegisteredPools());
  if (options_.create_default_pool && pools_.find(options_.default_pool_name) == pools_.end()) {
    SHALE_RETURN_IF_ERROR(CreateDefaultPool());
  }
  return Status::Ok();
}

Status Engine::OpenRegisteredPools() {
  std::vector<meta::PoolRegistration> regs;
  Status parse;
  SHALE_RETURN_IF_ERROR(registry_->Scan("pool/", [&](std::string_view, std::string_view v) {
    meta::PoolRegistration r;
    if (!r.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
      parse = Status::Corruption("unreadable pool registration in " + registry_->dir());
      return false;
    }
    regs.push_back(std::move(r));
    return true;
  }));
  SHALE_RETURN_IF_ERROR(parse);
  for (auto& reg : regs) {
    auto slot = std::make_unique<PoolSlot>();
    slot->reg = reg;
    Uuid uuid;
    if (reg.uuid().size() == 16) std::memcpy(uuid.bytes.data(), reg.uuid().data(), 16);
    auto dev = OpenDevice(reg.device_path());
    Status st;
    if (!dev.ok()) {
      st = dev.status().WithContext("open device " + reg.device_path());
    } else {
      auto pool = Pool::Open(std::move(dev).value(),
                             {.name = reg.name(),
                              .metadata_dir = reg.metadata_dir(),
                              .expected_uuid = uuid,
                              .defer_compactions = true,
                              .metadata_fs = MetadataFs(options_, reg.metadata_dir())});
      if (pool.ok()) {
        slot->pool = std::move(pool).value();
        st = LoadVolumes(*slot);
        // The maps are in memory (scanned on every core after a crash): compact from here.
        if (st.ok()) st = slot->pool->meta().ResumeCompactions();
        if (!st.ok()) {
          // Volumes loaded so far would reference a half-loaded pool: drop them.
          for (auto it = volumes_.begin(); it != volumes_.end();) {
            it = it->second->pool == slot.get() ? volumes_.erase(it) : std::next(it);
          }
          slot->pool.reset();
        }
      } else {
        st = pool.status();
      }
    }
    if (!st.ok()) {
      slot->error = st.ToString();
      SHALE_LOG_ERROR("pool failed to open; its volumes are unavailable", {"pool", reg.name()},
                      {"device", reg.device_path()}, {"error", slot->error});
    } else {
      SHALE_LOG_INFO("pool online", {"pool", reg.name()}, {"device", reg.device_path()},
                     {"free_clusters", slot->pool->allocator().free_count()});
    }
    pools_[reg.name()] = std::move(slot);
  }
  return Status::Ok();
}

Status Engine::CreateDefaultPool() {
  const std::string path = (fs::path(options_.data_dir) / "default-pool.img").string();
  if (fs::exists(path)) {
    // A pool file without a registration: never reformat it silently.
    return Status::FailedPrecondition(
        path + " exists but the registry of " + options_.data_dir +
        " does not know it (was the registry deleted?); move the file away to start fresh");
  }
  CreatePoolParams p;
  p.name = options_.default_pool_name;
  p.device_path = path;
  p.size_bytes = options_.default_pool_size;
  p.cluster_size = options_.default_cluster_size;
  auto info = CreatePoolLocked(p, /*mark_created_file=*/true);
  if (!info.ok()) return info.status().WithContext("create default pool");
  SHALE_LOG_INFO("created the default pool", {"pool", p.name}, {"file", path},
                 {"size", FormatSize(p.size_bytes)});
  return Status::Ok();
}

Status Engine::LoadVolumes(PoolSlot& slot) {
  Pool& pool = *slot.pool;
  std::map<uint64_t, meta::ImageRecord> images;
  Status parse;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::ImagePrefix(), [&](std::string_view, std::string_view v) {
        meta::ImageRecord img;
        if (!img.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
          parse = Status::Corruption("unreadable image record");
          return false;
        }
        images[img.id()] = img;
        return true;
      }));
  SHALE_RETURN_IF_ERROR(parse);
  slot.images = images;
  std::vector<meta::VolumeRecord> records;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::VolumePrefix(), [&](std::string_view, std::string_view v) {
        meta::VolumeRecord rec;
        if (!rec.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
          parse = Status::Corruption("unreadable volume record");
          return false;
        }
        records.push_back(std::move(rec));
        return true;
      }));
  SHALE_RETURN_IF_ERROR(parse);

  struct Loaded {
    meta::VolumeRecord rec;
    std::vector<uint64_t> chain;
    ClusterMap map;
  };
  std::vector<Loaded> loaded;
  const LoadStats stats_before = load_stats_;
  const auto maps_started = std::chrono::steady_clock::now();
  for (auto& rec : records) {
    if (volumes_.count(rec.name())) {
      return Status::Corruption("volume name '" + rec.name() + "' exists in two pools");
    }
    // The chain from the root image up to the head.
    std::vector<uint64_t> chain;
    uint64_t img = rec.head_image();
    while (img != 0) {
      auto it = images.find(img);
      if (it == images.end()) {
        return Status::Corruption("volume '" + rec.name() + "' references missing image " +
                                  std::to_string(img));
      }
      chain.insert(chain.begin(), img);
      if (chain.size() > Volume::kMaxChainDepth) {
        return Status::Corruption("image chain of volume '" + rec.name() + "' is too long (loop?)");
      }
      img = it->second.parent();
    }
    SHALE_ASSIGN_OR_RETURN(ClusterMap map, LoadVolumeMap(slot, rec, chain));
    loaded.push_back({std::move(rec), std::move(chain), std::move(map)});
  }
  // Before anything can change the pool's metadata: a checkpoint is used at most once.
  SHALE_RETURN_IF_ERROR(ConsumeMapCheckpoints(slot));
  if (!loaded.empty()) {
    SHALE_LOG_INFO("volume maps loaded", {"pool", slot.reg.name()},
                   {"from_checkpoints",
                    load_stats_.maps_from_checkpoints - stats_before.maps_from_checkpoints},
                   {"scanned", load_stats_.maps_scanned - stats_before.maps_scanned},
                   {"ms", std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - maps_started)
                              .count()});
  }
  for (Loaded& l : loaded) AddVolume(slot, l.rec, std::move(l.chain), std::move(l.map));
  // A crash between a commit that took a child from a deleted image (revert, volume delete) and
  // the collection that follows it left that image with fewer than two children: collect it now
  // (found by e2e_snapshot_crash_test, kill -9 during a revert). Not fatal: it is only space.
  if (Status collected = CollectImagesLocked(slot); !collected.ok()) {
    SHALE_LOG_WARN("deleted images not collected at load", {"pool", slot.reg.name()},
                   {"error", collected.ToString()});
  }
  return Status::Ok();
}

Result<std::shared_ptr<BlockDevice>> Engine::OpenDevice(const std::string& path) {
  if (options_.device_factory) return options_.device_factory(path);
  SHALE_ASSIGN_OR_RETURN(auto dev, OpenBlockDevice(path, options_.device));
  return std::shared_ptr<BlockDevice>(std::move(dev));
}

Reactor* Engine::PickReactor(uint64_t volume_id) {
  return reactors_[volume_id % reactors_.size()].get();
}

Status Engine::Shutdown() {
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Ok();
  shut_down_ = true;
  Status first;
  std::vector<VolumeSlot*> closed;
  for (auto& [name, slot] : volumes_) {
    Status st = CloseVolume(*slot->volume);
    if (!st.ok()) {
      SHALE_LOG_ERROR("volume did not close cleanly", {"volume", name}, {"error", st.ToString()});
      if (first.ok()) first = st;
    } else {
      closed.push_back(slot.get());
    }
  }
  if (options_.map_checkpoints) WriteMapCheckpointsLocked(closed);
  volumes_.clear();
  for (auto& [name, slot] : pools_) {
    if (slot->pool) slot->pool->Close();
  }
  pools_.clear();
  for (auto& r : reactors_) r->Stop();
  reactors_.clear();
  registry_.reset();
  return first;
}

Status Engine::CloseVolume(Volume& volume) {
  std::promise<Status> done;
  volume.reactor()->Post([&] { volume.Close([&](const Status& s) { done.set_value(s); }); });
  return done.get_future().get();
}

// ---------------------------------------------------------------------------------------------
// Pools (CheckPool: engine_pool_check.cc)

Engine::PoolSlot* Engine::FindPool(std::string_view name) {
  auto it = pools_.find(name);
  return it == pools_.end() ? nullptr : it->second.get();
}

Result<Engine::PoolSlot*> Engine::OnlinePool(std::string_view name) {
  PoolSlot* slot = FindPool(name);
  if (slot == nullptr) return Status::NotFound("pool '" + std::string(name) + "' not found");
  if (!slot->pool)
    return Status::FailedPrecondition("pool '" + std::string(name) +
                                      "' is offline: " + slot->error);
  return slot;
}

PoolInfo Engine::DescribePool(const PoolSlot& slot) const {
  PoolInfo info;
  info.name = slot.reg.name();
  info.device_path = slot.reg.device_path();
  Uuid uuid;
  if (slot.reg.uuid().size() == 16) std::memcpy(uuid.bytes.data(), slot.reg.uuid().data(), 16);
  info.uuid = uuid.ToString();
  if (!slot.pool) {
    info.state = "error";
    info.error = slot.error;
    return info;
  }
  const Pool& pool = *slot.pool;
  info.state = "online";
  if (pool.pipeline().failed()) {
    // A failed commit: the pool keeps serving reads but refuses writes until it is reopened.
    info.state = "error";
    info.error = "metadata commit failed, the pool refuses writes until shaled restarts: " +
                 pool.pipeline().failure().ToString();
  }
  info.cluster_size = pool.cluster_size();
  info.cluster_count = pool.cluster_count();
  info.capacity_bytes = pool.cluster_count() * pool.cluster_size();
  uint64_t free = const_cast<Pool&>(pool).allocator().free_count();
  info.free_bytes = free * pool.cluster_size();
  info.used_bytes = info.capacity_bytes - info.free_bytes;
  info.backend = const_cast<Pool&>(pool).device().kind();
  info.metadata_bytes_written = const_cast<Pool&>(pool).pipeline().stats().metadata_bytes;
  for (const auto& [n, vs] : volumes_) {
    if (vs->pool == &slot) ++info.volume_count;
  }
  return info;
}

Result<PoolInfo> Engine::CreatePool(const CreatePoolParams& params) {
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Unavailable("engine is shut down");
  return CreatePoolLocked(params, /*mark_created_file=*/false);
}

Result<PoolInfo> Engine::CreatePoolLocked(const CreatePoolParams& params, bool mark_created_file) {
  SHALE_RETURN_IF_ERROR(ValidateName("pool", params.name));
  SHALE_RETURN_IF_ERROR(ValidateClusterSize(params.cluster_size));
  if (pools_.count(params.name))
    return Status::AlreadyExists("pool '" + params.name + "' already exists");
  if (params.device_path.empty()) return Status::InvalidArgument("pool needs a device path");
  for (const auto& [n, slot] : pools_) {
    std::error_code ec;
    if (fs::exists(params.device_path) &&
        fs::equivalent(slot->reg.device_path(), params.device_path, ec)) {
      return Status::AlreadyExists("device " + params.device_path + " is already used by pool '" +
                                   n + "'");
    }
  }
  bool created_file = false;
  if (!fs::exists(params.device_path)) {
    if (params.size_bytes == 0) {
      return Status::InvalidArgument("device " + params.device_path +
                                     " does not exist; give --size to create a file of that size");
    }
    SHALE_RETURN_IF_ERROR(CreateSparseFile(params.device_path, params.size_bytes));
    created_file = true;
    if (params.preallocate) {
      Status st = PreallocateFile(params.device_path, params.size_bytes);
      if (!st.ok()) {
        fs::remove(params.device_path);
        return st;
      }
    }
  } else if (params.size_bytes != 0 && fs::is_regular_file(params.device_path) &&
             fs::file_size(params.device_path) != params.size_bytes) {
    return Status::InvalidArgument("file " + params.device_path +
                                   " exists with a different size (" +
                                   FormatSize(fs::file_size(params.device_path)) + ")");
  }
  auto cleanup = [&] {
    if (created_file) fs::remove(params.device_path);
  };
  auto dev = OpenDevice(params.device_path);
  if (!dev.ok()) {
    cleanup();
    return dev.status().WithContext("open device " + params.device_path);
  }
  std::shared_ptr<BlockDevice> device = std::move(dev).value();
  // The metadata directory is named after the pool's UUID, known only once formatted: format
  // into a temporary name, then rename.
  const std::string tmp_meta =
      (fs::path(options_.data_dir) / "pools" / (".new-" + params.name)).string();
  std::error_code ec;
  fs::remove_all(tmp_meta, ec);
  auto pool_or = Pool::Create(device, {.name = params.name,
                                       .metadata_dir = tmp_meta,
                                       .cluster_size = params.cluster_size,
                                       .force = params.force,
                                       .metadata_fs = MetadataFs(options_, tmp_meta)});
  if (!pool_or.ok()) {
    fs::remove_all(tmp_meta, ec);
    cleanup();
    return pool_or.status().WithContext("create pool '" + params.name + "'");
  }
  Uuid uuid = (*pool_or)->uuid();
  pool_or.value().reset();  // close to move the metadata directory
  const std::string meta_dir =
      (fs::path(options_.data_dir) / "pools" / uuid.ToString() / "meta").string();
  fs::create_directories(fs::path(meta_dir).parent_path(), ec);
  fs::rename(tmp_meta, meta_dir, ec);
  if (ec) {
    cleanup();
    return Status::IoError("move pool metadata to " + meta_dir + ": " + ec.message());
  }
  meta::PoolRegistration reg;
  reg.set_name(params.name);
  reg.set_uuid(UuidBytes(uuid));
  reg.set_device_path(fs::absolute(params.device_path).string());
  reg.set_metadata_dir(fs::absolute(meta_dir).string());
  reg.set_created_file(created_file || mark_created_file);
  SHALE_RETURN_IF_ERROR(registry_->Put(RegistryKey(params.name), reg.SerializeAsString()));
  auto pool = Pool::Open(device, {.name = params.name,
                                  .metadata_dir = meta_dir,
                                  .expected_uuid = uuid,
                                  .metadata_fs = MetadataFs(options_, meta_dir)});
  if (!pool.ok()) return pool.status().WithContext("reopen new pool");
  auto slot = std::make_unique<PoolSlot>();
  slot->reg = reg;
  slot->pool = std::move(pool).value();
  PoolSlot* raw = slot.get();
  pools_[params.name] = std::move(slot);
  return DescribePool(*raw);
}

Result<PoolInfo> Engine::ExpandPool(std::string_view name, uint64_t size_bytes) {
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Unavailable("engine is shut down");
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(name));
  Pool& pool = *slot->pool;
  const uint64_t before = pool.cluster_count() * pool.cluster_size();
  SHALE_ASSIGN_OR_RETURN(uint64_t added, pool.Expand(size_bytes));
  SHALE_LOG_INFO("pool expanded", {"pool", std::string(name)}, {"capacity_before", before},
                 {"capacity", pool.cluster_count() * pool.cluster_size()},
                 {"clusters_added", added}, {"device", slot->reg.device_path()});
  return DescribePool(*slot);
}

std::vector<PoolInfo> Engine::ListPools() {
  std::lock_guard lock(mu_);
  std::vector<PoolInfo> out;
  for (const auto& [n, slot] : pools_) out.push_back(DescribePool(*slot));
  return out;
}

Result<PoolInfo> Engine::GetPool(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(name);
  if (it == pools_.end()) return Status::NotFound("pool '" + std::string(name) + "' not found");
  return DescribePool(*it->second);
}

Status Engine::DeletePool(std::string_view name, bool force) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(name);
  if (it == pools_.end()) return Status::NotFound("pool '" + std::string(name) + "' not found");
  PoolSlot* slot = it->second.get();
  if (slot->map_loads > 0) {
    return Status::Busy("pool '" + std::string(name) + "' is in use (a snapshot is being opened)");
  }
  std::vector<VolumeSlot*> vols;
  std::string names;
  for (auto& [n, vs] : volumes_) {
    if (vs->pool != slot) continue;
    vols.push_back(vs.get());
    if (!names.empty()) names += ", ";
    names += n;
  }
  if (!vols.empty() && !force) {
    return Status::FailedPrecondition("pool '" + std::string(name) + "' holds " +
                                      std::to_string(vols.size()) + " volume(s) (" + names +
                                      "); delete them first or use --force");
  }
  for (VolumeSlot* vs : vols) {
    if (vs->open_count > 0) {
      return Status::Busy("volume '" + vs->record.name() + "' of pool '" + std::string(name) +
                          "' is in use");
    }
  }
  for (VolumeSlot* vs : vols) SHALE_RETURN_IF_ERROR(DeleteVolumeLocked(*vs));
  std::shared_ptr<BlockDevice> device;
  if (slot->pool) {
    device = slot->pool->shared_device();
    slot->pool.reset();
  }
  const meta::PoolRegistration reg = slot->reg;
  MetaBatch b;
  b.Delete(RegistryKey(reg.name()));
  SHALE_RETURN_IF_ERROR(registry_->Write(b));
  pools_.erase(it);
  // The registration is gone; the rest is cleanup that a crash may leave half done (harmless:
  // an unregistered metadata directory is never opened).
  if (device) {
    Status st = Pool::WipeSuperblock(*device);
    if (!st.ok())
      SHALE_LOG_WARN("could not wipe superblock", {"pool", reg.name()}, {"error", st.ToString()});
    device.reset();
  }
  std::error_code ec;
  fs::remove_all(fs::path(reg.metadata_dir()).parent_path(), ec);
  if (reg.created_file()) fs::remove(reg.device_path(), ec);
  SHALE_LOG_INFO("pool deleted", {"pool", reg.name()});
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Volumes

VolumeInfo Engine::DescribeVolume(const VolumeSlot& slot) const {
  VolumeInfo info;
  const Volume& v = *slot.volume;
  info.name = v.name();
  info.pool = slot.pool->reg.name();
  info.id = v.id();
  info.size_bytes = v.size_bytes();
  info.allocated_bytes = v.allocated_bytes();
  info.read_only = v.read_only();
  info.created_unix_ns = v.created_unix_ns();
  info.open_count = slot.open_count;
  info.labels.insert(slot.record.labels().begin(), slot.record.labels().end());
  const auto& c = v.counters();
  info.reads = c.reads.load();
  info.writes = c.writes.load();
  info.bytes_read = c.bytes_read.load();
  info.bytes_written = c.bytes_written.load();
  info.flushes = c.flushes.load();
  info.errors = c.errors.load();
  info.discards = c.discards.load();
  info.write_zeroes = c.write_zeroes.load();
  info.bytes_discarded = c.bytes_discarded.load();
  info.bytes_zeroed = c.bytes_zeroed.load();
  info.read_latency = c.read_latency.Take();
  info.write_latency = c.write_latency.Take();
  info.flush_latency = c.flush_latency.Take();
  return info;
}

Result<VolumeInfo> Engine::CreateVolume(const CreateVolumeParams& params,
                                        const VolumeRecords& extra) {
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Unavailable("engine is shut down");
  SHALE_RETURN_IF_ERROR(ValidateName("volume", params.name));
  if (params.size_bytes == 0) return Status::InvalidArgument("volume size must be greater than 0");
  if (params.size_bytes > kMaxVolumeSize) {
    return Status::InvalidArgument("volume size " + FormatSize(params.size_bytes) +
                                   " exceeds the maximum of " + FormatSize(kMaxVolumeSize));
  }
  if (volumes_.count(params.name))
    return Status::AlreadyExists("volume '" + params.name + "' already exists");
  PoolSlot* slot = nullptr;
  if (!params.pool.empty()) {
    auto it = pools_.find(params.pool);
    if (it == pools_.end()) return Status::NotFound("pool '" + params.pool + "' not found");
    slot = it->second.get();
  } else if (auto it = pools_.find(options_.default_pool_name); it != pools_.end()) {
    slot = it->second.get();
  } else if (pools_.size() == 1) {
    slot = pools_.begin()->second.get();
  } else {
    return Status::InvalidArgument(pools_.empty() ? "there is no pool; create one first"
                                                  : "several pools exist; choose one with --pool");
  }
  if (!slot->pool)
    return Status::FailedPrecondition("pool '" + slot->reg.name() + "' is offline: " + slot->error);
  Pool& pool = *slot->pool;
  const uint64_t size = RoundUpToBlock(params.size_bytes);

  MetaBatch batch;
  auto [rec, img] = NewVolumeRecords(pool, params, size, /*parent_image=*/0, &batch);
  if (extra) extra(rec.id(), &batch);
  CommitPipeline::Request req;
  req.batch = std::move(batch);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(pool.pipeline()
                            .CommitSync(std::move(req))
                            .WithContext("create volume '" + params.name + "'"));
  slot->images[img.id()] = img;
  VolumeSlot* raw = AddVolume(*slot, rec, {rec.head_image()},
                              ClusterMap((size + pool.cluster_size() - 1) / pool.cluster_size()));
  SHALE_LOG_INFO("volume created", {"volume", params.name}, {"pool", slot->reg.name()},
                 {"size", size});
  return DescribeVolume(*raw);
}

std::pair<meta::VolumeRecord, meta::ImageRecord> Engine::NewVolumeRecords(
    Pool& pool, const CreateVolumeParams& params, uint64_t size, uint64_t parent_image,
    MetaBatch* batch) {
  meta::VolumeRecord rec;
  rec.set_id(pool.ReserveVolumeId(batch));
  rec.set_name(params.name);
  rec.set_size_bytes(size);
  rec.set_head_image(pool.ReserveImageId(batch));
  rec.set_read_only(params.read_only);
  rec.set_created_unix_ns(Clock::Real()->WallNanos());
  for (const auto& [k, v] : params.labels) (*rec.mutable_labels())[k] = v;
  meta::ImageRecord img;
  img.set_id(rec.head_image());
  img.set_parent(parent_image);
  img.set_volume_id(rec.id());
  img.set_kind(meta::IMAGE_HEAD);
  img.set_created_unix_ns(rec.created_unix_ns());
  batch->Put(keys::Volume(rec.id()), rec.SerializeAsString());
  batch->Put(keys::VolumeName(rec.name()), keys::Volume(rec.id()).substr(1));
  batch->Put(keys::Image(img.id()), img.SerializeAsString());
  return {rec, img};
}

Engine::VolumeSlot* Engine::AddVolume(PoolSlot& slot, const meta::VolumeRecord& rec,
                                      std::vector<uint64_t> chain, ClusterMap map) {
  auto vol = std::make_shared<Volume>(
      slot.pool.get(), PickReactor(rec.id()), rec, std::move(chain), std::move(map),
      Volume::Options{.commit_interval_ns = options_.commit_interval_ms * 1'000'000});
  vol->reactor()->RunSync([&] { vol->Start(); });
  auto vs = std::make_unique<VolumeSlot>();
  vs->pool = &slot;
  vs->volume = std::move(vol);
  vs->record = rec;
  VolumeSlot* raw = vs.get();
  volumes_[rec.name()] = std::move(vs);
  return raw;
}

std::vector<VolumeInfo> Engine::ListVolumes() {
  std::lock_guard lock(mu_);
  std::vector<VolumeInfo> out;
  for (const auto& [n, vs] : volumes_) out.push_back(DescribeVolume(*vs));
  return out;
}

Result<VolumeInfo> Engine::GetVolume(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("volume '" + std::string(name) + "' not found");
  return DescribeVolume(*it->second);
}

Result<VolumeInfo> Engine::ResizeVolume(std::string_view name, uint64_t new_size_bytes,
                                        const VolumeRecords& extra) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("volume '" + std::string(name) + "' not found");
  VolumeSlot& vs = *it->second;
  if (new_size_bytes == 0) return Status::InvalidArgument("volume size must be greater than 0");
  if (new_size_bytes > kMaxVolumeSize) {
    return Status::InvalidArgument("volume size exceeds the maximum of " +
                                   FormatSize(kMaxVolumeSize));
  }
  const uint64_t size = RoundUpToBlock(new_size_bytes);
  const uint64_t current = vs.volume->size_bytes();
  if (size < current) {
    return Status::InvalidArgument("volume '" + std::string(name) + "' is " + FormatSize(current) +
                                   "; shrinking is not supported (it would discard data)");
  }
  if (size == current && !extra) return DescribeVolume(vs);
  meta::VolumeRecord rec = vs.record;
  rec.set_size_bytes(size);
  SHALE_RETURN_IF_ERROR(CommitVolumeRecord(vs, std::move(rec), extra));
  if (size != current) vs.volume->reactor()->RunSync([&] { vs.volume->Grow(size); });
  SHALE_LOG_INFO("volume resized", {"volume", std::string(name)}, {"size", size});
  return DescribeVolume(vs);
}

Result<VolumeInfo> Engine::SetVolumeLabels(std::string_view name,
                                           const std::map<std::string, std::string>& labels,
                                           const VolumeRecords& extra) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("volume '" + std::string(name) + "' not found");
  VolumeSlot& vs = *it->second;
  meta::VolumeRecord rec = vs.record;
  for (const auto& [k, v] : labels) (*rec.mutable_labels())[k] = v;
  SHALE_RETURN_IF_ERROR(CommitVolumeRecord(vs, std::move(rec), extra));
  return DescribeVolume(vs);
}

Status Engine::CommitVolumeRecord(VolumeSlot& vs, meta::VolumeRecord rec,
                                  const VolumeRecords& extra) {
  CommitPipeline::Request req;
  req.batch.Put(keys::Volume(rec.id()), rec.SerializeAsString());
  if (extra) extra(rec.id(), &req.batch);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(vs.pool->pool->pipeline().CommitSync(std::move(req)));
  vs.record = std::move(rec);
  return Status::Ok();
}

Status Engine::DeleteVolume(std::string_view name, const VolumeRecords& extra) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("volume '" + std::string(name) + "' not found");
  if (it->second->open_count > 0) {
    return Status::Busy("volume '" + std::string(name) + "' is in use by " +
                        std::to_string(it->second->open_count) + " client(s)");
  }
  if (!it->second->busy.empty()) {
    return Status::FailedPrecondition("volume '" + std::string(name) +
                                      "' is busy: " + it->second->busy);
  }
  return DeleteVolumeLocked(*it->second, extra);
}

Status Engine::DeleteVolumeLocked(VolumeSlot& slot, const VolumeRecords& extra) {
  Volume& vol = *slot.volume;
  Pool& pool = *slot.pool->pool;
  const std::string name = vol.name();
  SHALE_RETURN_IF_ERROR(CloseVolume(vol).WithContext("close volume '" + name + "'"));
  std::vector<uint32_t> owned;
  vol.reactor()->RunSync([&] { owned = vol.OwnedClusters(); });
  CommitPipeline::Request req;
  req.batch.Delete(keys::Volume(vol.id()));
  req.batch.Delete(keys::VolumeName(name));
  req.batch.Delete(keys::Image(vol.head_image()));
  req.batch.DeleteRange(keys::MapImagePrefix(vol.head_image()),
                        keys::MapImagePrefix(vol.head_image() + 1));
  if (extra) extra(vol.id(), &req.batch);
  req.freed = std::move(owned);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(
      pool.pipeline().CommitSync(std::move(req)).WithContext("delete volume '" + name + "'"));
  PoolSlot* ps = slot.pool;
  ps->images.erase(vol.head_image());
  volumes_.erase(name);
  SHALE_LOG_INFO("volume deleted", {"volume", name});
  // Its parent image lost a child: a deleted snapshot may now be mergeable or freeable.
  return CollectImagesLocked(*ps);
}

Result<std::shared_ptr<VolumeHandle>> Engine::OpenVolume(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(name);
  if (it == volumes_.end()) return Status::NotFound("volume '" + std::string(name) + "' not found");
  ++it->second->open_count;
  return std::shared_ptr<VolumeHandle>(new VolumeHandle(this, it->second->volume));
}

void Engine::ReleaseHandle(Volume* volume) {
  std::lock_guard lock(mu_);
  for (auto& [n, vs] : volumes_) {
    if (vs->volume.get() == volume) {
      if (vs->open_count > 0) --vs->open_count;
      return;
    }
  }
  for (auto it = views_.begin(); it != views_.end(); ++it) {
    if (it->second->view.get() != volume) continue;
    if (--it->second->open_count == 0) {
      // The last user is gone: close the view (it holds only memory).
      CloseVolume(*it->second->view).IgnoreError();
      views_.erase(it);
    }
    return;
  }
}

// ---------------------------------------------------------------------------------------------
// Records of upper layers (keys::Extension)

Result<std::optional<std::string>> Engine::GetRecord(std::string_view pool_name,
                                                     std::string_view key, bool committed_only) {
  if (!committed_only) SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  return slot->pool->meta().Get(key);
}

Status Engine::ScanRecords(
    std::string_view pool_name, std::string_view prefix,
    const std::function<bool(std::string_view key, std::string_view value)>& fn) {
  SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
  Pool* pool = nullptr;
  {
    std::lock_guard lock(mu_);
    SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
    pool = slot->pool.get();
  }
  return pool->meta().Scan(prefix, fn);
}

Status Engine::WriteRecords(std::string_view pool_name, MetaBatch batch) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  CommitPipeline::Request req;
  req.batch = std::move(batch);
  req.flush_device = false;
  return slot->pool->pipeline().CommitSync(std::move(req));
}

}  // namespace shale
