// Engine: layered images — freeze (snapshot), clone, read-only views, delete (merge into the only
// child, free, or keep hidden until collected), revert, flatten, changed ranges, usage.
// The mechanism under snapshots and clones (docs/snapshots.md); the volume side of each step is
// in engine/volume/volume_images.cc.
#include <algorithm>
#include <bit>
#include <future>

#include "engine/common/block.h"
#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/engine_internal.h"
#include "engine/pool/keys.h"

namespace shale {

using internal::kMaxVolumeSize;

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

// A frozen image that was not deleted: NotFound for an unknown or deleted one, and
// FailedPrecondition for a volume's head.
Result<const meta::ImageRecord*> FrozenImage(const std::map<uint64_t, meta::ImageRecord>& images,
                                             uint64_t id) {
  auto it = images.find(id);
  if (it == images.end() || it->second.deleted()) {
    return Status::NotFound("image " + std::to_string(id) + " not found");
  }
  if (it->second.kind() != meta::IMAGE_FROZEN) {
    return Status::FailedPrecondition("image " + std::to_string(id) +
                                      " is a volume's head, not frozen");
  }
  return &it->second;
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

uint64_t Engine::PoolSlot::CutFreezes::Begin() {
  std::lock_guard lock(mu);
  const uint64_t seq = next_seq++;
  pending.insert(seq);
  return seq;
}

void Engine::PoolSlot::CutFreezes::End(uint64_t seq, const Status& status) {
  std::vector<std::shared_ptr<std::promise<Status>>> ready;
  Status result;
  {
    std::lock_guard lock(mu);
    if (!status.ok() && failure.ok()) failure = status;
    pending.erase(seq);
    const uint64_t oldest = pending.empty() ? UINT64_MAX : *pending.begin();
    std::erase_if(waiters, [&](auto& w) {
      if (w.first >= oldest && failure.ok()) return false;
      ready.push_back(std::move(w.second));
      return true;
    });
    result = failure;
  }
  for (auto& p : ready) p->set_value(result);
}

std::future<Status> Engine::PoolSlot::CutFreezes::Settled() {
  auto settled = std::make_shared<std::promise<Status>>();
  std::future<Status> out = settled->get_future();
  std::lock_guard lock(mu);
  if (!failure.ok() || pending.empty()) {
    settled->set_value(failure);
  } else {
    waiters.emplace_back(next_seq - 1, std::move(settled));
  }
  return out;
}

std::future<Status> Engine::FreezesSettledLocked(PoolSlot& slot) {
  if (!slot.pool) {
    std::promise<Status> none;
    none.set_value(Status::Ok());
    return none.get_future();
  }
  return slot.cut_freezes->Settled();
}

Status Engine::SettleFreezesLocked(PoolSlot& slot) {
  return FreezesSettledLocked(slot).get().WithContext("wait for a snapshot's commit");
}

Status Engine::AwaitFreezes(std::string_view pool_name) {
  std::vector<std::future<Status>> settled;
  {
    std::lock_guard lock(mu_);
    for (auto& [name, slot] : pools_) {
      if (pool_name.empty() || name == pool_name) settled.push_back(FreezesSettledLocked(*slot));
    }
  }
  for (auto& f : settled) {
    SHALE_RETURN_IF_ERROR(f.get().WithContext("wait for a snapshot's commit"));
  }
  return Status::Ok();
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

Result<uint64_t> Engine::FreezeVolume(std::string_view volume, const ExtraRecords& extra,
                                      FreezeDurable durable) {
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
  Status st;
  if (!durable) {
    st = RunOnVolume(vol, [&](std::function<void(const Status&)> done) {
      vol.Freeze(new_head, std::move(*shared), nullptr, std::move(done));
    });
  } else {
    auto cut_freezes = ps.cut_freezes;
    const uint64_t seq = cut_freezes->Begin();
    st = RunOnVolume(vol, [&](std::function<void(const Status&)> cut) {
      vol.Freeze(
          new_head, std::move(*shared), [cut] { cut(Status::Ok()); },
          [cut_freezes, seq, durable = std::move(durable)](const Status& s) {
            cut_freezes->End(seq, s);
            durable(s);
          });
    });
  }
  if (!st.ok()) return st.WithContext("freeze volume '" + std::string(volume) + "'");
  ps.images[old_head] = frozen;
  ps.images[new_head] = head;
  vs.record = rec;
  return old_head;
}

Result<VolumeInfo> Engine::CreateVolumeFromImage(const CreateVolumeParams& params,
                                                 uint64_t image_id, const VolumeRecords& extra) {
  SHALE_RETURN_IF_ERROR(AwaitFreezes(params.pool));
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
  // Checked before rounding: a size near UINT64_MAX would wrap.
  if (params.size_bytes > kMaxVolumeSize) {
    return Status::InvalidArgument("volume size exceeds the maximum of " +
                                   FormatSize(kMaxVolumeSize));
  }
  uint64_t size = params.size_bytes == 0 ? parent.size_bytes() : RoundUpToBlock(params.size_bytes);
  if (size < parent.size_bytes()) {
    return Status::InvalidArgument("a clone cannot be smaller than its source (" +
                                   FormatSize(parent.size_bytes()) + ")");
  }
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
  SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
  // Loading a big image's map takes long (O(its chain's entries)): it runs without mu_, so that
  // snapshots and everything else go on meanwhile, and is redone if the stored entries of the
  // pool's frozen images changed under it (a merge or free bumps entries_generation). The pool
  // stays (map_loads pins it); the last attempt holds mu_ throughout.
  constexpr int kUnlockedAttempts = 2;
  for (int attempt = 0;; ++attempt) {
    std::unique_lock lock(mu_);
    SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
    SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord* frozen, FrozenImage(slot->images, image_id));
    auto key = std::make_pair(std::string(pool_name), image_id);
    if (views_.find(key) == views_.end()) {
      const std::vector<uint64_t> chain = ChainOf(*slot, image_id);
      const meta::ImageRecord image = *frozen;
      Result<ClusterMap> map = Status::Internal("not loaded");
      if (attempt < kUnlockedAttempts) {
        const uint64_t generation = slot->entries_generation;
        ++slot->map_loads;
        lock.unlock();
        map = Volume::LoadMap(*slot->pool, chain, image.size_bytes(), nullptr);
        lock.lock();
        --slot->map_loads;
        if (slot->entries_generation != generation) continue;
        if (views_.count(key)) continue;  // another caller opened it meanwhile
        auto again = slot->images.find(image_id);
        if (again == slot->images.end() || again->second.deleted()) continue;
      } else {
        map = Volume::LoadMap(*slot->pool, chain, image.size_bytes(), nullptr);
      }
      SHALE_RETURN_IF_ERROR(map.status());
      meta::VolumeRecord rec;
      rec.set_name("image-" + std::to_string(image_id));
      rec.set_size_bytes(image.size_bytes());
      rec.set_head_image(image_id);
      rec.set_read_only(true);
      rec.set_created_unix_ns(image.created_unix_ns());
      auto view = std::make_shared<Volume>(
          slot->pool.get(), PickReactor(image_id), rec, chain, std::move(map).value(),
          Volume::Options{.commit_interval_ns = 0, .view_only = true});
      auto is = std::make_unique<ImageSlot>();
      is->pool = slot;
      is->image = image_id;
      is->view = std::move(view);
      views_.emplace(key, std::move(is));
    }
    ImageSlot& is = *views_.at(key);
    ++is.open_count;
    return std::shared_ptr<VolumeHandle>(new VolumeHandle(this, is.view));
  }
}

Status Engine::FreeImageLocked(PoolSlot& slot, uint64_t image, const ExtraRecords& extra) {
  Pool& pool = *slot.pool;
  SHALE_RETURN_IF_ERROR(SettleFreezesLocked(slot));
  ++slot.entries_generation;  // OpenImage's unlocked loads start over
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
  SHALE_RETURN_IF_ERROR(SettleFreezesLocked(slot));
  ++slot.entries_generation;  // OpenImage's unlocked loads start over
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
  SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
  std::lock_guard lock(mu_);
  SHALE_ASSIGN_OR_RETURN(PoolSlot * slot, OnlinePool(pool_name));
  SHALE_ASSIGN_OR_RETURN(const meta::ImageRecord* frozen, FrozenImage(slot->images, image_id));
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
    meta::ImageRecord rec = *frozen;
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
  SHALE_RETURN_IF_ERROR(AwaitFreezes());
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
  SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
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
  const uint64_t old_end = RoundUpToBlock(old_rec.size_bytes());
  for (const auto& [v, bits] : blocks) {
    for (uint64_t b = 0; b < cs / kBlockSize; ++b) {
      const uint64_t off = v * cs + b * kBlockSize;
      if (((bits >> b) & 1) && off < old_end) add(off, kBlockSize);
    }
  }
  const uint64_t new_end = RoundUpToBlock(new_rec.size_bytes());
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
  SHALE_RETURN_IF_ERROR(AwaitFreezes(pool_name));
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
      const uint64_t data = static_cast<uint64_t>(std::popcount(f.blocks)) * kBlockSize;
      u.data_bytes += data;
      uint64_t read_by_children = 0;
      for (uint64_t covered : covers) read_by_children |= f.blocks & ~covered;
      if (read_by_children == 0) {
        u.exclusive_bytes += pool.cluster_size();
      } else {
        u.shared_bytes += static_cast<uint64_t>(std::popcount(read_by_children)) * kBlockSize;
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

}  // namespace shale
