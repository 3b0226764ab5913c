#include "engine/engine.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <future>
#include <set>

#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/pool/keys.h"

namespace shale {

namespace fs = std::filesystem;

namespace {
constexpr uint64_t kMaxVolumeSize = 256 * kTiB;
std::string UuidBytes(const Uuid& u) { return std::string(u.bytes.begin(), u.bytes.end()); }
std::string RegistryKey(std::string_view pool) { return "pool/" + std::string(pool); }
}  // namespace

struct Engine::PoolSlot {
  meta::PoolRegistration reg;
  std::unique_ptr<Pool> pool;  // null when the pool failed to open
  std::string error;
  std::map<uint64_t, meta::ImageRecord> images;  // as committed
};

struct Engine::VolumeSlot {
  PoolSlot* pool = nullptr;
  std::shared_ptr<Volume> volume;
  meta::VolumeRecord record;  // as committed
  uint32_t open_count = 0;
  std::string busy;  // a long operation (flatten) in progress; blocks conflicting ones
};

struct Engine::ImageSlot {
  PoolSlot* pool = nullptr;
  uint64_t image = 0;
  std::shared_ptr<Volume> view;
  uint32_t open_count = 0;
};

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
      auto pool = Pool::Open(
          std::move(dev).value(),
          {.name = reg.name(), .metadata_dir = reg.metadata_dir(), .expected_uuid = uuid});
      if (pool.ok()) {
        slot->pool = std::move(pool).value();
        st = LoadVolumes(*slot);
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
    SHALE_ASSIGN_OR_RETURN(ClusterMap map, Volume::LoadMap(pool, chain, rec.size_bytes(), nullptr));
    AddVolume(slot, rec, std::move(chain), std::move(map));
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
  for (auto& [name, slot] : volumes_) {
    Status st = CloseVolume(*slot->volume);
    if (!st.ok()) {
      SHALE_LOG_ERROR("volume did not close cleanly", {"volume", name}, {"error", st.ToString()});
      if (first.ok()) first = st;
    }
  }
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
// Pools

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
                                       .force = params.force});
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
  auto pool =
      Pool::Open(device, {.name = params.name, .metadata_dir = meta_dir, .expected_uuid = uuid});
  if (!pool.ok()) return pool.status().WithContext("reopen new pool");
  auto slot = std::make_unique<PoolSlot>();
  slot->reg = reg;
  slot->pool = std::move(pool).value();
  PoolSlot* raw = slot.get();
  pools_[params.name] = std::move(slot);
  return DescribePool(*raw);
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

Result<PoolCheckReport> Engine::CheckPool(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(name);
  if (it == pools_.end()) return Status::NotFound("pool '" + std::string(name) + "' not found");
  PoolSlot* slot = it->second.get();
  if (!slot->pool)
    return Status::FailedPrecondition("pool '" + std::string(name) +
                                      "' is offline: " + slot->error);
  Pool& pool = *slot->pool;
  // Make every volume's in-memory mapping durable so the stored state is complete.
  for (auto& [n, vs] : volumes_) {
    if (vs->pool != slot) continue;
    std::promise<Status> done;
    Volume* v = vs->volume.get();
    v->reactor()->Post([&] { v->Commit([&](const Status& s) { done.set_value(s); }); });
    SHALE_RETURN_IF_ERROR(done.get_future().get().WithContext("commit volume '" + n + "'"));
  }
  PoolCheckReport report;
  std::map<uint32_t, std::string> owner;
  std::set<uint64_t> images;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::ImagePrefix(), [&](std::string_view k, std::string_view) {
        images.insert(keys::DecodeU64At(k, 1));
        return true;
      }));
  Status scan = pool.meta().Scan(keys::MapPrefix(), [&](std::string_view k, std::string_view v) {
    uint64_t image = keys::DecodeU64At(k, 1), vc = keys::DecodeU64At(k, 9);
    std::string where = "image " + std::to_string(image) + " cluster " + std::to_string(vc);
    if (!images.count(image)) report.problems.push_back(where + ": mapping of a missing image");
    auto e = MapEntry::Decode(v);
    if (!e.ok()) {
      report.problems.push_back(where + ": " + e.status().ToString());
      return true;
    }
    for (const auto& f : e->fragments) {
      if (f.pcluster >= pool.cluster_count()) {
        report.problems.push_back(where + ": references cluster " + std::to_string(f.pcluster) +
                                  " beyond the pool");
        continue;
      }
      auto [pos, inserted] = owner.emplace(f.pcluster, where);
      if (!inserted) {
        report.problems.push_back("cluster " + std::to_string(f.pcluster) + " owned twice: by " +
                                  pos->second + " and by " + where);
      }
    }
    return true;
  });
  SHALE_RETURN_IF_ERROR(scan);
  // The image tree: parents exist and are frozen, every head belongs to one volume, a deleted
  // image is kept only while at least two children read through it, chains stay in bounds.
  std::map<uint64_t, meta::ImageRecord> stored_images;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::ImagePrefix(), [&](std::string_view, std::string_view v) {
        meta::ImageRecord rec;
        if (rec.ParseFromArray(v.data(), static_cast<int>(v.size()))) stored_images[rec.id()] = rec;
        return true;
      }));
  std::map<uint64_t, std::string> head_of;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::VolumePrefix(), [&](std::string_view, std::string_view v) {
        meta::VolumeRecord rec;
        if (rec.ParseFromArray(v.data(), static_cast<int>(v.size())))
          head_of[rec.head_image()] = rec.name();
        return true;
      }));
  for (const auto& [id, rec] : stored_images) {
    const std::string who = "image " + std::to_string(id);
    if (rec.parent() != 0) {
      auto p = stored_images.find(rec.parent());
      if (p == stored_images.end()) {
        report.problems.push_back(who + ": parent " + std::to_string(rec.parent()) + " is missing");
      } else if (p->second.kind() != meta::IMAGE_FROZEN) {
        report.problems.push_back(who + ": parent " + std::to_string(rec.parent()) +
                                  " is not frozen");
      }
    }
    if (rec.kind() == meta::IMAGE_HEAD && !head_of.count(id)) {
      report.problems.push_back(who + ": a head image that no volume uses (leak)");
    }
    size_t depth = 0;
    for (uint64_t cur = id; cur != 0 && depth <= Volume::kMaxChainDepth; ++depth) {
      auto c = stored_images.find(cur);
      cur = c == stored_images.end() ? 0 : c->second.parent();
    }
    if (depth > Volume::kMaxChainDepth)
      report.problems.push_back(who + ": chain too long or cyclic");
    if (rec.deleted()) {
      size_t children = 0;
      for (const auto& [cid, crec] : stored_images) children += crec.parent() == id;
      if (children < 2) {
        report.problems.push_back(who + ": deleted with " + std::to_string(children) +
                                  " children but not collected");
      }
    }
  }
  for (const auto& [head, vol_name] : head_of) {
    auto h = stored_images.find(head);
    if (h == stored_images.end() || h->second.kind() != meta::IMAGE_HEAD) {
      report.problems.push_back("volume '" + vol_name + "': head image " + std::to_string(head) +
                                " missing or not a head");
    }
  }
  ClusterBitmap committed = pool.pipeline().committed_bitmap();
  report.referenced_clusters = owner.size();
  report.committed_clusters = committed.Count();
  for (const auto& [c, where] : owner) {
    if (!committed.Test(c))
      report.problems.push_back("cluster " + std::to_string(c) + " used by " + where +
                                " is marked free");
  }
  for (uint64_t c = 0; c < pool.cluster_count(); ++c) {
    if (committed.Test(c) && !owner.count(static_cast<uint32_t>(c))) {
      report.problems.push_back("cluster " + std::to_string(c) +
                                " is allocated but unreferenced (leak)");
      if (report.problems.size() > 1000) break;
    }
  }
  return report;
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
  const uint64_t size = (params.size_bytes + 4095) / 4096 * 4096;

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
  const uint64_t size = (new_size_bytes + 4095) / 4096 * 4096;
  const uint64_t current = vs.volume->size_bytes();
  if (size < current) {
    return Status::InvalidArgument("volume '" + std::string(name) + "' is " + FormatSize(current) +
                                   "; shrinking is not supported (it would discard data)");
  }
  if (size == current && !extra) return DescribeVolume(vs);
  meta::VolumeRecord rec = vs.record;
  rec.set_size_bytes(size);
  CommitPipeline::Request req;
  req.batch.Put(keys::Volume(rec.id()), rec.SerializeAsString());
  if (extra) extra(rec.id(), &req.batch);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(vs.pool->pool->pipeline().CommitSync(std::move(req)));
  vs.record = rec;
  if (size != current) vs.volume->reactor()->RunSync([&] { vs.volume->Grow(size); });
  SHALE_LOG_INFO("volume resized", {"volume", std::string(name)}, {"size", size});
  return DescribeVolume(vs);
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
// Layered images

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

namespace {
// The committed record of an image. A miss means the in-memory volume moved past what is
// committed: only after a failed commit, which has failed the pool.
Result<meta::ImageRecord> ImageRecordOf(const std::map<uint64_t, meta::ImageRecord>& images,
                                        uint64_t id) {
  auto it = images.find(id);
  if (it == images.end()) {
    return Status::FailedPrecondition(
        "image " + std::to_string(id) +
        " has no committed record (an earlier commit failed; restart shaled)");
  }
  return it->second;
}
}  // namespace

std::vector<uint64_t> Engine::ChildrenOf(const PoolSlot& slot, uint64_t image) const {
  std::vector<uint64_t> out;
  for (const auto& [id, rec] : slot.images) {
    if (rec.parent() == image) out.push_back(id);
  }
  return out;
}

std::vector<uint64_t> Engine::ChainOf(const PoolSlot& slot, uint64_t image) const {
  std::vector<uint64_t> chain;  // head first while walking, reversed at the end
  for (uint64_t id = image; id != 0;) {
    auto it = slot.images.find(id);
    if (it == slot.images.end() || chain.size() > Volume::kMaxChainDepth) break;
    chain.push_back(id);
    id = it->second.parent();
  }
  std::reverse(chain.begin(), chain.end());
  return chain;
}

Engine::VolumeSlot* Engine::VolumeWithHead(const PoolSlot& slot, uint64_t image) {
  for (auto& [n, vs] : volumes_) {
    if (vs->pool == &slot && vs->volume->head_image() == image) return vs.get();
  }
  return nullptr;
}

Status Engine::RunOnVolume(Volume& volume,
                           const std::function<void(std::function<void(const Status&)>)>& op) {
  std::promise<Status> done;
  volume.reactor()->Post([&] { op([&done](const Status& st) { done.set_value(st); }); });
  return done.get_future().get();
}

Result<std::vector<std::pair<uint64_t, MapEntry>>> Engine::ReadImageEntries(Pool& pool,
                                                                            uint64_t image) {
  std::vector<std::pair<uint64_t, MapEntry>> out;
  Status err;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::MapImagePrefix(image), [&](std::string_view k, std::string_view v) {
        auto e = MapEntry::Decode(v);
        if (!e.ok()) {
          err = e.status().WithContext("image " + std::to_string(image));
          return false;
        }
        out.emplace_back(keys::DecodeU64At(k, 9), std::move(e).value());
        return true;
      }));
  SHALE_RETURN_IF_ERROR(err);
  return out;
}

ImageInfo Engine::DescribeImage(const PoolSlot& slot, uint64_t image) const {
  ImageInfo info;
  auto it = slot.images.find(image);
  if (it == slot.images.end()) return info;
  const meta::ImageRecord& rec = it->second;
  info.id = rec.id();
  info.parent = rec.parent();
  info.pool = slot.reg.name();
  info.volume_id = rec.volume_id();
  for (const auto& [n, vs] : volumes_) {
    if (vs->pool == &slot && vs->volume->id() == rec.volume_id()) info.volume = n;
  }
  info.frozen = rec.kind() == meta::IMAGE_FROZEN;
  info.deleted = rec.deleted();
  info.created_unix_ns = rec.created_unix_ns();
  info.size_bytes = rec.size_bytes();
  info.children = ChildrenOf(slot, image);
  info.depth = static_cast<uint32_t>(ChainOf(slot, image).size());
  return info;
}

Result<uint64_t> Engine::FreezeVolume(std::string_view volume, const ExtraRecords& extra) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(volume);
  if (it == volumes_.end())
    return Status::NotFound("volume '" + std::string(volume) + "' not found");
  VolumeSlot& vs = *it->second;
  if (!vs.busy.empty())
    return Status::FailedPrecondition("volume '" + std::string(volume) + "' is busy: " + vs.busy);
  PoolSlot& ps = *vs.pool;
  Pool& pool = *ps.pool;
  Volume& vol = *vs.volume;
  const uint64_t old_head = vol.head_image();
  if (ChainOf(ps, old_head).size() >= Volume::kMaxChainDepth) {
    return Status::FailedPrecondition(
        "volume '" + std::string(volume) + "' has reached the limit of " +
        std::to_string(Volume::kMaxChainDepth - 1) +
        " snapshots in its chain; delete older snapshots (they merge away) or flatten the volume");
  }
  MetaBatch batch;
  const uint64_t new_head = pool.ReserveImageId(&batch);
  SHALE_ASSIGN_OR_RETURN(meta::ImageRecord frozen, ImageRecordOf(ps.images, old_head));
  frozen.set_kind(meta::IMAGE_FROZEN);
  frozen.set_size_bytes(vol.size_bytes());
  frozen.set_created_unix_ns(Clock::Real()->WallNanos());
  meta::ImageRecord head;
  head.set_id(new_head);
  head.set_parent(old_head);
  head.set_volume_id(vol.id());
  head.set_kind(meta::IMAGE_HEAD);
  head.set_created_unix_ns(frozen.created_unix_ns());
  meta::VolumeRecord rec = vs.record;
  rec.set_head_image(new_head);
  batch.Put(keys::Image(old_head), frozen.SerializeAsString());
  batch.Put(keys::Image(new_head), head.SerializeAsString());
  batch.Put(keys::Volume(rec.id()), rec.SerializeAsString());
  if (extra) extra(old_head, &batch);
  auto shared = std::make_shared<MetaBatch>(std::move(batch));
  Status st = RunOnVolume(vol, [&](std::function<void(const Status&)> done) {
    vol.Freeze(new_head, std::move(*shared), std::move(done));
  });
  if (!st.ok()) return st.WithContext("freeze volume '" + std::string(volume) + "'");
  ps.images[old_head] = frozen;
  ps.images[new_head] = head;
  vs.record = rec;
  return old_head;
}

Result<VolumeInfo> Engine::CreateVolumeFromImage(const CreateVolumeParams& params,
                                                 uint64_t image_id, const VolumeRecords& extra) {
  std::lock_guard lock(mu_);
  if (shut_down_) return Status::Unavailable("engine is shut down");
  SHALE_RETURN_IF_ERROR(ValidateName("volume", params.name));
  if (volumes_.count(params.name))
    return Status::AlreadyExists("volume '" + params.name + "' already exists");
  PoolSlot* slot = nullptr;
  for (auto& [n, ps] : pools_) {
    if (ps->pool && ps->images.count(image_id) && (params.pool.empty() || params.pool == n))
      slot = ps.get();
  }
  if (slot == nullptr) return Status::NotFound("image " + std::to_string(image_id) + " not found");
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord parent, ImageRecordOf(slot->images, image_id));
  if (parent.kind() != meta::IMAGE_FROZEN) {
    return Status::FailedPrecondition("image " + std::to_string(image_id) + " is not frozen");
  }
  if (parent.deleted())
    return Status::NotFound("image " + std::to_string(image_id) + " was deleted");
  std::vector<uint64_t> chain = ChainOf(*slot, image_id);
  if (chain.size() + 1 > Volume::kMaxChainDepth) {
    return Status::FailedPrecondition("clone chains are limited to " +
                                      std::to_string(Volume::kMaxChainDepth) +
                                      " images; flatten the source first");
  }
  uint64_t size =
      params.size_bytes == 0 ? parent.size_bytes() : (params.size_bytes + 4095) / 4096 * 4096;
  if (size < parent.size_bytes()) {
    return Status::InvalidArgument("a clone cannot be smaller than its source (" +
                                   FormatSize(parent.size_bytes()) + ")");
  }
  if (size > kMaxVolumeSize)
    return Status::InvalidArgument("volume size exceeds the maximum of " +
                                   FormatSize(kMaxVolumeSize));
  Pool& pool = *slot->pool;
  // The map is built from committed entries; the parent is frozen, so they cannot change.
  SHALE_ASSIGN_OR_RETURN(ClusterMap map, Volume::LoadMap(pool, chain, size, nullptr));
  MetaBatch batch;
  auto [rec, img] = NewVolumeRecords(pool, params, size, image_id, &batch);
  chain.push_back(img.id());
  if (extra) extra(rec.id(), &batch);
  CommitPipeline::Request req;
  req.batch = std::move(batch);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(
      pool.pipeline().CommitSync(std::move(req)).WithContext("clone into '" + params.name + "'"));
  slot->images[img.id()] = img;
  VolumeSlot* raw = AddVolume(*slot, rec, chain, std::move(map));
  SHALE_LOG_INFO("volume cloned", {"volume", params.name}, {"from_image", image_id},
                 {"size", size});
  return DescribeVolume(*raw);
}

Result<std::shared_ptr<VolumeHandle>> Engine::OpenImage(std::string_view pool_name,
                                                        uint64_t image_id) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  auto it = slot->images.find(image_id);
  if (it == slot->images.end() || it->second.deleted()) {
    return Status::NotFound("image " + std::to_string(image_id) + " not found");
  }
  if (it->second.kind() != meta::IMAGE_FROZEN) {
    return Status::FailedPrecondition("image " + std::to_string(image_id) +
                                      " is a volume's head, not frozen");
  }
  auto key = std::make_pair(std::string(pool_name), image_id);
  auto vit = views_.find(key);
  if (vit == views_.end()) {
    std::vector<uint64_t> chain = ChainOf(*slot, image_id);
    SHALE_ASSIGN_OR_RETURN(ClusterMap map,
                           Volume::LoadMap(*slot->pool, chain, it->second.size_bytes(), nullptr));
    meta::VolumeRecord rec;
    rec.set_name("image-" + std::to_string(image_id));
    rec.set_size_bytes(it->second.size_bytes());
    rec.set_head_image(image_id);
    rec.set_read_only(true);
    rec.set_created_unix_ns(it->second.created_unix_ns());
    auto view = std::make_shared<Volume>(
        slot->pool.get(), PickReactor(image_id), rec, chain, std::move(map),
        Volume::Options{.commit_interval_ns = 0, .view_only = true});
    auto is = std::make_unique<ImageSlot>();
    is->pool = slot;
    is->image = image_id;
    is->view = std::move(view);
    vit = views_.emplace(key, std::move(is)).first;
  }
  ++vit->second->open_count;
  return std::shared_ptr<VolumeHandle>(new VolumeHandle(this, vit->second->view));
}

Status Engine::FreeImageLocked(PoolSlot& slot, uint64_t image, const ExtraRecords& extra) {
  Pool& pool = *slot.pool;
  SHALE_ASSIGN_OR_RETURN(auto entries, ReadImageEntries(pool, image));
  CommitPipeline::Request req;
  for (const auto& [v, e] : entries) {
    for (const auto& f : e.fragments) req.freed.push_back(f.pcluster);
  }
  req.batch.DeleteRange(keys::MapImagePrefix(image), keys::MapImagePrefix(image + 1));
  req.batch.Delete(keys::Image(image));
  if (extra) extra(image, &req.batch);
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(pool.pipeline()
                            .CommitSync(std::move(req))
                            .WithContext("free image " + std::to_string(image)));
  slot.images.erase(image);
  SHALE_LOG_INFO("image freed", {"pool", slot.reg.name()}, {"image", image});
  return Status::Ok();
}

Status Engine::MergeImageLocked(PoolSlot& slot, uint64_t image, uint64_t child,
                                const ExtraRecords& extra) {
  Pool& pool = *slot.pool;
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord parent_rec, ImageRecordOf(slot.images, image));
  SHALE_ASSIGN_OR_RETURN(meta::ImageRecord child_rec, ImageRecordOf(slot.images, child));
  child_rec.set_parent(parent_rec.parent());
  SHALE_ASSIGN_OR_RETURN(auto entries, ReadImageEntries(pool, image));
  MetaBatch records;
  records.DeleteRange(keys::MapImagePrefix(image), keys::MapImagePrefix(image + 1));
  records.Delete(keys::Image(image));
  records.Put(keys::Image(child), child_rec.SerializeAsString());
  if (extra) extra(image, &records);

  if (VolumeSlot* head_slot = VolumeWithHead(slot, child)) {
    // The child is a live head: the volume merges in memory and commits on its reactor.
    auto shared_entries =
        std::make_shared<std::vector<std::pair<uint64_t, MapEntry>>>(std::move(entries));
    auto shared_records = std::make_shared<MetaBatch>(std::move(records));
    Volume& vol = *head_slot->volume;
    SHALE_RETURN_IF_ERROR(RunOnVolume(vol,
                                      [&](std::function<void(const Status&)> done) {
                                        vol.MergeParentIntoHead(image, std::move(*shared_entries),
                                                                std::move(*shared_records),
                                                                std::move(done));
                                      })
                              .WithContext("merge image " + std::to_string(image) +
                                           " into volume '" + vol.name() + "'"));
  } else {
    // Both frozen: merge the stored entries; the result reads exactly as before through the child.
    CommitPipeline::Request req;
    std::vector<uint64_t> vclusters;
    for (const auto& [v, pe] : entries) {
      vclusters.push_back(v);
      SHALE_ASSIGN_OR_RETURN(auto cbytes, pool.meta().Get(keys::Map(child, v)));
      MapEntry ce;
      if (cbytes) {
        SHALE_ASSIGN_OR_RETURN(ce, MapEntry::Decode(*cbytes));
      }
      uint64_t covered = ce.zero_blocks;
      for (const auto& f : ce.fragments) covered |= f.blocks;
      bool changed = false;
      for (const auto& f : pe.fragments) {
        const uint64_t visible = f.blocks & ~covered;
        if (visible == 0) {
          req.freed.push_back(f.pcluster);
        } else {
          ce.fragments.push_back(StoredFragment{f.pcluster, visible});
          changed = true;
        }
      }
      const uint64_t zeros = pe.zero_blocks & ~covered;
      if (zeros != 0 && parent_rec.parent() != 0) {  // without a parent, zero marks mean nothing
        ce.zero_blocks |= zeros;
        changed = true;
      }
      if (changed) req.batch.Put(keys::Map(child, v), ce.Encode());
    }
    req.batch.Append(records);
    req.flush_device = false;
    SHALE_RETURN_IF_ERROR(pool.pipeline()
                              .CommitSync(std::move(req))
                              .WithContext("merge image " + std::to_string(image)));
    // Volumes and views reading through the merged image: their fragments are now the child's.
    for (auto& [n, vs] : volumes_) {
      if (vs->pool != &slot) continue;
      const auto& chain = vs->volume->chain();
      if (std::find(chain.begin(), chain.end(), image) == chain.end()) continue;
      Volume& vol = *vs->volume;
      vol.reactor()->RunSync([&] { vol.RelabelImage(image, child, vclusters); });
    }
    for (auto& [key, is] : views_) {
      if (is->pool != &slot) continue;
      const auto& chain = is->view->chain();
      if (std::find(chain.begin(), chain.end(), image) == chain.end()) continue;
      Volume& vol = *is->view;
      vol.reactor()->RunSync([&] { vol.RelabelImage(image, child, vclusters); });
    }
  }
  slot.images.erase(image);
  slot.images[child] = child_rec;
  SHALE_LOG_INFO("image merged into its child", {"pool", slot.reg.name()}, {"image", image},
                 {"child", child});
  return Status::Ok();
}

Status Engine::CollectImagesLocked(PoolSlot& slot) {
  // Deleted images that fewer than two children read through: merge or free, until stable.
  for (bool progress = true; progress;) {
    progress = false;
    for (const auto& [id, rec] : slot.images) {
      if (!rec.deleted()) continue;
      auto children = ChildrenOf(slot, id);
      if (children.size() >= 2) continue;
      SHALE_RETURN_IF_ERROR(children.empty() ? FreeImageLocked(slot, id, nullptr)
                                             : MergeImageLocked(slot, id, children[0], nullptr));
      progress = true;
      break;  // the map changed
    }
  }
  return Status::Ok();
}

Status Engine::DeleteImage(std::string_view pool_name, uint64_t image_id,
                           const ExtraRecords& extra) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  auto it = slot->images.find(image_id);
  if (it == slot->images.end() || it->second.deleted()) {
    return Status::NotFound("image " + std::to_string(image_id) + " not found");
  }
  if (it->second.kind() != meta::IMAGE_FROZEN) {
    return Status::FailedPrecondition("image " + std::to_string(image_id) + " is a volume's head");
  }
  if (views_.count({std::string(pool_name), image_id})) {
    return Status::Busy("image " + std::to_string(image_id) +
                        " is open (exported); disconnect its clients first");
  }
  auto children = ChildrenOf(*slot, image_id);
  for (uint64_t c : children) {
    VolumeSlot* vs = VolumeWithHead(*slot, c);
    if (vs != nullptr && !vs->busy.empty()) {
      return Status::FailedPrecondition("volume '" + vs->volume->name() + "' is busy: " + vs->busy);
    }
  }
  if (children.empty()) {
    SHALE_RETURN_IF_ERROR(FreeImageLocked(*slot, image_id, extra));
  } else if (children.size() == 1) {
    SHALE_RETURN_IF_ERROR(MergeImageLocked(*slot, image_id, children[0], extra));
  } else {
    // Several children read through it: keep its data, hide it, collect it when they go.
    meta::ImageRecord rec = it->second;
    rec.set_deleted(true);
    CommitPipeline::Request req;
    req.batch.Put(keys::Image(image_id), rec.SerializeAsString());
    if (extra) extra(image_id, &req.batch);
    req.flush_device = false;
    SHALE_RETURN_IF_ERROR(slot->pool->pipeline().CommitSync(std::move(req)));
    slot->images[image_id] = rec;
    SHALE_LOG_INFO("image deleted; space kept while children read through it", {"image", image_id},
                   {"children", children.size()});
  }
  return CollectImagesLocked(*slot);
}

Status Engine::RevertVolume(std::string_view volume, uint64_t image_id, const ExtraRecords& extra) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(volume);
  if (it == volumes_.end())
    return Status::NotFound("volume '" + std::string(volume) + "' not found");
  VolumeSlot& vs = *it->second;
  if (vs.open_count > 0) {
    return Status::Busy("volume '" + std::string(volume) + "' is in use by " +
                        std::to_string(vs.open_count) +
                        " client(s); disconnect them before reverting");
  }
  if (!vs.busy.empty())
    return Status::FailedPrecondition("volume '" + std::string(volume) + "' is busy: " + vs.busy);
  if (vs.volume->read_only())
    return Status::PermissionDenied("volume '" + std::string(volume) + "' is read-only");
  PoolSlot& ps = *vs.pool;
  Pool& pool = *ps.pool;
  Volume& vol = *vs.volume;
  const auto& chain = vol.chain();
  if (std::find(chain.begin(), chain.end() - 1, image_id) == chain.end() - 1) {
    return Status::InvalidArgument("image " + std::to_string(image_id) +
                                   " is not an ancestor of volume '" + std::string(volume) + "'");
  }
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord target, ImageRecordOf(ps.images, image_id));
  const uint64_t old_head = vol.head_image();
  MetaBatch batch;
  const uint64_t new_head = pool.ReserveImageId(&batch);
  std::vector<uint64_t> new_chain = ChainOf(ps, image_id);
  uint64_t owned = 0;
  SHALE_ASSIGN_OR_RETURN(ClusterMap map,
                         Volume::LoadMap(pool, new_chain, target.size_bytes(), &owned));
  new_chain.push_back(new_head);
  meta::ImageRecord head;
  head.set_id(new_head);
  head.set_parent(image_id);
  head.set_volume_id(vol.id());
  head.set_kind(meta::IMAGE_HEAD);
  head.set_created_unix_ns(Clock::Real()->WallNanos());
  meta::VolumeRecord rec = vs.record;
  rec.set_head_image(new_head);
  rec.set_size_bytes(target.size_bytes());
  batch.Put(keys::Image(new_head), head.SerializeAsString());
  batch.Delete(keys::Image(old_head));
  batch.DeleteRange(keys::MapImagePrefix(old_head), keys::MapImagePrefix(old_head + 1));
  batch.Put(keys::Volume(rec.id()), rec.SerializeAsString());
  if (extra) extra(image_id, &batch);
  auto state = std::make_shared<std::tuple<std::vector<uint64_t>, ClusterMap, MetaBatch>>(
      std::move(new_chain), std::move(map), std::move(batch));
  Status st = RunOnVolume(vol, [&](std::function<void(const Status&)> done) {
    auto& [c, m, b] = *state;
    vol.ReplaceHead(std::move(c), std::move(m), target.size_bytes(), std::move(b), std::move(done));
  });
  SHALE_RETURN_IF_ERROR(st.WithContext("revert volume '" + std::string(volume) + "'"));
  ps.images.erase(old_head);
  ps.images[new_head] = head;
  vs.record = rec;
  SHALE_LOG_INFO("volume reverted", {"volume", std::string(volume)}, {"to_image", image_id});
  return CollectImagesLocked(ps);
}

Status Engine::FlattenVolume(std::string_view volume,
                             const std::function<void(uint64_t done, uint64_t total)>& progress,
                             BackgroundAdmission* admission) {
  std::shared_ptr<Volume> vol;
  PoolSlot* ps = nullptr;
  {
    std::lock_guard lock(mu_);
    auto it = volumes_.find(volume);
    if (it == volumes_.end())
      return Status::NotFound("volume '" + std::string(volume) + "' not found");
    VolumeSlot& vs = *it->second;
    if (!vs.busy.empty())
      return Status::FailedPrecondition("volume '" + std::string(volume) + "' is busy: " + vs.busy);
    if (vs.volume->chain().size() == 1) return Status::Ok();  // nothing to detach from
    vs.busy = "flatten in progress";
    vol = vs.volume;
    ps = vs.pool;
  }
  // Copying runs without the control lock (it can take long); `busy` keeps conflicting
  // operations (delete, revert, snapshot, another flatten) away meanwhile.
  Status st = RunOnVolume(*vol, [&](std::function<void(const Status&)> done) {
    vol->Flatten(progress, std::move(done), admission);
  });
  std::lock_guard lock(mu_);
  auto it = volumes_.find(volume);
  SHALE_CHECK(it != volumes_.end() && it->second->volume == vol, "flattened volume vanished");
  VolumeSlot& vs = *it->second;
  vs.busy.clear();
  SHALE_RETURN_IF_ERROR(st.WithContext("flatten volume '" + std::string(volume) + "'"));
  // Everything it reads is its own now: detach it from its parent.
  SHALE_ASSIGN_OR_RETURN(meta::ImageRecord head, ImageRecordOf(ps->images, vol->head_image()));
  head.set_parent(0);
  auto batch = std::make_shared<MetaBatch>();
  batch->Put(keys::Image(head.id()), head.SerializeAsString());
  SHALE_RETURN_IF_ERROR(RunOnVolume(*vol, [&](std::function<void(const Status&)> done) {
    vol->DetachFromParents(std::move(*batch), std::move(done));
  }));
  ps->images[head.id()] = head;
  SHALE_LOG_INFO("volume flattened", {"volume", std::string(volume)});
  return CollectImagesLocked(*ps);
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> Engine::ChangedRanges(std::string_view pool_name,
                                                                         uint64_t older,
                                                                         uint64_t newer) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord old_rec, ImageRecordOf(slot->images, older));
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord new_rec, ImageRecordOf(slot->images, newer));
  if (old_rec.kind() != meta::IMAGE_FROZEN || new_rec.kind() != meta::IMAGE_FROZEN) {
    return Status::InvalidArgument("changed ranges are defined between frozen images");
  }
  std::vector<uint64_t> chain = ChainOf(*slot, newer);
  auto pos = std::find(chain.begin(), chain.end(), older);
  if (pos == chain.end()) {
    return Status::InvalidArgument("image " + std::to_string(older) +
                                   " is not an ancestor of image " + std::to_string(newer));
  }
  Pool& pool = *slot->pool;
  const uint64_t cs = pool.cluster_size();
  std::map<uint64_t, uint64_t> blocks;  // vcluster -> changed block bits
  for (auto it = pos + 1; it != chain.end(); ++it) {
    SHALE_ASSIGN_OR_RETURN(auto entries, ReadImageEntries(pool, *it));
    for (const auto& [v, e] : entries) {
      uint64_t bits = e.zero_blocks;
      for (const auto& f : e.fragments) bits |= f.blocks;
      blocks[v] |= bits;
    }
  }
  std::vector<std::pair<uint64_t, uint64_t>> out;
  auto add = [&](uint64_t off, uint64_t len) {
    if (!out.empty() && out.back().first + out.back().second == off) {
      out.back().second += len;
    } else {
      out.emplace_back(off, len);
    }
  };
  const uint64_t old_end = (old_rec.size_bytes() + 4095) / 4096 * 4096;
  for (const auto& [v, bits] : blocks) {
    for (uint64_t b = 0; b < cs / 4096; ++b) {
      const uint64_t off = v * cs + b * 4096;
      if (((bits >> b) & 1) && off < old_end) add(off, 4096);
    }
  }
  const uint64_t new_end = (new_rec.size_bytes() + 4095) / 4096 * 4096;
  if (new_end > old_end) add(old_end, new_end - old_end);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<ImageInfo> Engine::ListImages(std::string_view pool_name) {
  std::lock_guard lock(mu_);
  std::vector<ImageInfo> out;
  PoolSlot* slot = FindPool(pool_name);
  if (slot == nullptr) return out;
  for (const auto& [id, rec] : slot->images) out.push_back(DescribeImage(*slot, id));
  return out;
}

Result<ImageInfo> Engine::GetImage(std::string_view pool_name, uint64_t image_id) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  if (!slot->images.count(image_id))
    return Status::NotFound("image " + std::to_string(image_id) + " not found");
  return DescribeImage(*slot, image_id);
}

Result<ImageUsage> Engine::GetImageUsage(std::string_view pool_name, uint64_t image_id) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  if (!slot->images.count(image_id))
    return Status::NotFound("image " + std::to_string(image_id) + " not found");
  Pool& pool = *slot->pool;
  SHALE_ASSIGN_OR_RETURN(auto entries, ReadImageEntries(pool, image_id));
  const auto children = ChildrenOf(*slot, image_id);
  ImageUsage u;
  for (const auto& [v, e] : entries) {
    // What each child hides of this image at v (committed state).
    std::vector<uint64_t> covers;
    for (uint64_t c : children) {
      SHALE_ASSIGN_OR_RETURN(auto cbytes, pool.meta().Get(keys::Map(c, v)));
      uint64_t covered = 0;
      if (cbytes) {
        SHALE_ASSIGN_OR_RETURN(MapEntry ce, MapEntry::Decode(*cbytes));
        covered = ce.zero_blocks;
        for (const auto& f : ce.fragments) covered |= f.blocks;
      }
      covers.push_back(covered);
    }
    for (const auto& f : e.fragments) {
      const uint64_t data = static_cast<uint64_t>(std::popcount(f.blocks)) * 4096;
      u.data_bytes += data;
      uint64_t read_by_children = 0;
      for (uint64_t covered : covers) read_by_children |= f.blocks & ~covered;
      if (read_by_children == 0) {
        u.exclusive_bytes += pool.cluster_size();
      } else {
        u.shared_bytes += static_cast<uint64_t>(std::popcount(read_by_children)) * 4096;
      }
    }
  }
  return u;
}

Result<Volume::SpaceUsage> Engine::GetVolumeUsage(std::string_view volume) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(volume);
  if (it == volumes_.end())
    return Status::NotFound("volume '" + std::string(volume) + "' not found");
  Volume::SpaceUsage u;
  Volume& vol = *it->second->volume;
  vol.reactor()->RunSync([&] { u = vol.Usage(); });
  return u;
}

Result<uint64_t> Engine::VolumeHeadImage(std::string_view volume) {
  std::lock_guard lock(mu_);
  auto it = volumes_.find(volume);
  if (it == volumes_.end())
    return Status::NotFound("volume '" + std::string(volume) + "' not found");
  return it->second->volume->head_image();
}

Result<std::optional<std::string>> Engine::GetRecord(std::string_view pool_name,
                                                     std::string_view key) {
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  return slot->pool->meta().Get(key);
}

Status Engine::ScanRecords(
    std::string_view pool_name, std::string_view prefix,
    const std::function<bool(std::string_view key, std::string_view value)>& fn) {
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
