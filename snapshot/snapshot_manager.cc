#include "snapshot/snapshot_manager.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <set>
#include <tuple>

#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/pool/keys.h"
#include "snapshot/digest.h"
#include "snapshot/records.h"

namespace shale::snapshot {

SnapshotManager::SnapshotManager(Engine* engine, Options options)
    : engine_(engine), options_(std::move(options)) {}

SnapshotManager::~SnapshotManager() { Stop(); }

Status SnapshotManager::Start() {
  Lock lock(mu_);
  if (running_) return Status::Ok();
  stopping_ = false;
  Status st = RecoverImportsLocked(lock);
  if (!st.ok()) {
    SHALE_LOG_WARN("snapshot: recovering interrupted imports failed", {"error", st.ToString()});
  }
  CollectLocked(lock, /*check_chains=*/true);
  SHALE_ASSIGN_OR_RETURN(auto snaps, ScanSnapshotsLocked(""));
  for (const Found& f : snaps) {
    if (f.rec.digest_state() == DIGEST_PENDING) EnqueueDigestLocked(f);
  }
  running_ = true;
  worker_ = std::thread([this] { WorkerMain(); });
  return Status::Ok();
}

void SnapshotManager::Stop() {
  {
    Lock lock(mu_);
    stopping_ = true;
    jobs_.clear();
    if (current_) current_->cancel.store(true, std::memory_order_release);
    cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  Lock lock(mu_);
  running_ = false;
}

// ---------------------------------------------------------------------------------------------
// Lookups

std::vector<std::string> SnapshotManager::OnlinePools() {
  std::vector<std::string> out;
  for (const PoolInfo& p : engine_->ListPools()) {
    if (p.state == "online") out.push_back(p.name);
  }
  return out;
}

Result<std::optional<SnapshotRecord>> SnapshotManager::ReadRecordLocked(const std::string& pool,
                                                                        const std::string& key,
                                                                        bool committed_only) {
  SHALE_ASSIGN_OR_RETURN(auto value, engine_->GetRecord(pool, SnapshotKey(key), committed_only));
  if (!value) return std::optional<SnapshotRecord>();
  SnapshotRecord rec;
  if (!rec.ParseFromString(*value)) {
    return Status::Corruption("snapshot record '" + key + "' does not decode");
  }
  return std::optional<SnapshotRecord>(std::move(rec));
}

Result<std::optional<SnapshotManager::Found>> SnapshotManager::LookupLocked(const SnapshotRef& ref,
                                                                            bool committed_only) {
  const std::string key = ref.ToString();
  for (const std::string& pool : OnlinePools()) {
    SHALE_ASSIGN_OR_RETURN(auto rec, ReadRecordLocked(pool, key, committed_only));
    if (rec) return std::optional<Found>(Found{pool, key, std::move(*rec)});
  }
  return std::optional<Found>();
}

Result<SnapshotManager::Found> SnapshotManager::FindLocked(const SnapshotRef& ref) {
  SHALE_ASSIGN_OR_RETURN(auto found, LookupLocked(ref));
  if (!found) return Status::NotFound("snapshot '" + ref.ToString() + "' not found");
  return std::move(*found);
}

Result<std::vector<SnapshotManager::Found>> SnapshotManager::ScanSnapshotsLocked(
    std::string_view volume) {
  std::vector<Found> out;
  const std::string ns_prefix = keys::ExtensionPrefix(kSnapshotNamespace);
  const std::string prefix = volume.empty() ? ns_prefix : SnapshotKey(std::string(volume) + "@");
  for (const std::string& pool : OnlinePools()) {
    Status err;
    SHALE_RETURN_IF_ERROR(
        engine_->ScanRecords(pool, prefix, [&](std::string_view k, std::string_view v) {
          Found f{pool, std::string(k.substr(ns_prefix.size())), {}};
          if (!f.rec.ParseFromString(std::string(v))) {
            err = Status::Corruption("snapshot record '" + f.key + "' does not decode");
            return false;
          }
          out.push_back(std::move(f));
          return true;
        }));
    SHALE_RETURN_IF_ERROR(err);
  }
  return out;
}

Result<std::vector<SnapshotManager::CloneEntry>> SnapshotManager::ScanClonesLocked() {
  std::vector<CloneEntry> out;
  for (const std::string& pool : OnlinePools()) {
    Status err;
    SHALE_RETURN_IF_ERROR(engine_->ScanRecords(
        pool, keys::ExtensionPrefix(kCloneNamespace), [&](std::string_view k, std::string_view v) {
          CloneEntry c{pool, {}};
          if (!c.rec.ParseFromString(std::string(v))) {
            err = Status::Corruption("clone record '" + std::string(k) + "' does not decode");
            return false;
          }
          out.push_back(std::move(c));
          return true;
        }));
    SHALE_RETURN_IF_ERROR(err);
  }
  return out;
}

bool SnapshotManager::CloneLiveLocked(const CloneEntry& clone) {
  auto v = engine_->GetVolume(clone.rec.volume());
  return v.ok() && v->pool == clone.pool &&
         (clone.rec.volume_id() == 0 || v->id == clone.rec.volume_id());
}

Status SnapshotManager::CheckNotBusyLocked(std::string_view volume) {
  auto it = busy_.find(volume);
  if (it == busy_.end()) return Status::Ok();
  return Status::FailedPrecondition("volume '" + std::string(volume) + "' is busy: " + it->second);
}

Result<SnapshotInfo> SnapshotManager::DescribeLocked(const Found& found, bool with_space,
                                                     const std::vector<CloneEntry>& clones) {
  const SnapshotRecord& rec = found.rec;
  SnapshotInfo info;
  info.volume = rec.volume();
  info.name = rec.name();
  info.pool = found.pool;
  info.image_id = rec.image_id();
  info.source_volume_id = rec.source_volume_id();
  if (auto v = engine_->GetVolume(rec.volume()); v.ok()) {
    info.source_volume_live = v->pool == found.pool && v->id == rec.source_volume_id();
  }
  SHALE_ASSIGN_OR_RETURN(ImageInfo image, engine_->GetImage(found.pool, rec.image_id()));
  info.size_bytes = image.size_bytes;
  info.created_unix_ns = rec.created_unix_ns();
  info.labels.insert(rec.labels().begin(), rec.labels().end());
  info.implicit = rec.implicit();
  info.implicit_for = rec.implicit_for();
  switch (rec.digest_state()) {
    case DIGEST_READY:
      info.digest_state = DigestState::kReady;
      info.digest = DigestHex(rec.digest());
      break;
    case DIGEST_FAILED:
      info.digest_state = DigestState::kFailed;
      info.digest_error = rec.digest_error();
      break;
    default:
      info.digest_state = DigestState::kPending;
      info.digest_total_bytes = image.size_bytes;
      if (auto job = JobForLocked(found.pool, rec.image_id())) {
        info.digest_done_bytes = job->done_bytes.load(std::memory_order_relaxed);
      }
      break;
  }
  if (with_space) {
    SHALE_ASSIGN_OR_RETURN(ImageUsage u, engine_->GetImageUsage(found.pool, rec.image_id()));
    info.data_bytes = u.data_bytes;
    info.exclusive_bytes = u.exclusive_bytes;
    info.shared_bytes = u.shared_bytes;
  }
  for (const CloneEntry& c : clones) {
    if (c.pool == found.pool && c.rec.source_image_id() == rec.image_id() && !c.rec.detached() &&
        CloneLiveLocked(c)) {
      info.clones.push_back(c.rec.volume());
    }
  }
  return info;
}

CloneInfo SnapshotManager::DescribeCloneLocked(const CloneEntry& clone) {
  const CloneRecord& rec = clone.rec;
  CloneInfo info;
  info.volume = rec.volume();
  info.source_volume = rec.source_volume();
  info.source_snapshot = rec.source_snapshot();
  info.source = info.source_volume + "@" + info.source_snapshot;
  info.implicit_source = rec.implicit_source();
  info.read_only = rec.read_only();
  info.created_unix_ns = rec.created_unix_ns();
  info.detached = rec.detached();
  info.detached_unix_ns = rec.detached_unix_ns();
  info.source_digest = DigestHex(rec.source_digest());
  auto src = ReadRecordLocked(clone.pool, info.source);
  if (src.ok() && *src && (*src)->image_id() == rec.source_image_id()) {
    info.source_exists = true;
    if (info.source_digest.empty() && (*src)->digest_state() == DIGEST_READY) {
      info.source_digest = DigestHex((*src)->digest());
    }
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// Snapshots

Result<SnapshotManager::Found> SnapshotManager::CreateLocked(const VolumeInfo& volume,
                                                             std::string_view name,
                                                             const Labels& labels, bool implicit,
                                                             std::string_view implicit_for,
                                                             bool enqueue_digest, bool* durable,
                                                             std::optional<TimePoint> since) {
  const SnapshotRef ref{volume.name, std::string(name)};
  const std::string key = ref.ToString();
  // A name taken by a snapshot whose commit is in flight is taken too; checking those here
  // lets this create go on without waiting for their commits.
  bool pending = false;
  {
    std::lock_guard pending_lock(pending_->mu);
    pending = pending_->keys.count(key) != 0;
  }
  if (pending) return Status::AlreadyExists("snapshot '" + key + "' already exists");
  SHALE_ASSIGN_OR_RETURN(auto existing, LookupLocked(ref, durable != nullptr));
  if (existing) {
    const bool earlier =
        existing->rec.source_volume_id() != volume.id || existing->pool != volume.pool;
    return Status::AlreadyExists(
        "snapshot '" + key + "' already exists" +
        (earlier ? " (taken from an earlier volume of that name, which was deleted; "
                   "snapshot names stay taken while such snapshots exist)"
                 : ""));
  }
  const TimePoint started = since.value_or(std::chrono::steady_clock::now());
  SnapshotRecord rec;
  rec.set_volume(volume.name);
  rec.set_name(std::string(name));
  rec.set_source_volume_id(volume.id);
  rec.set_created_unix_ns(Clock::Real()->WallNanos());
  for (const auto& [k, v] : labels) (*rec.mutable_labels())[k] = v;
  rec.set_implicit(implicit);
  rec.set_implicit_for(std::string(implicit_for));
  rec.set_digest_state(DIGEST_PENDING);
  rec.set_digest_version(kDigestVersion);
  // The record commits with the freeze: a crash leaves either both or neither.
  const ExtraRecords records = [&](uint64_t image_id, MetaBatch* batch) {
    rec.set_image_id(image_id);
    batch->Put(SnapshotKey(key), rec.SerializeAsString());
  };
  Engine::FreezeDurable on_durable;
  auto committed = std::make_shared<std::atomic<bool>>(false);
  if (durable != nullptr) {
    {
      std::lock_guard pending_lock(pending_->mu);
      pending_->keys.insert(key);
    }
    // Runs on the volume's reactor: no lock but pending_'s, no engine call.
    on_durable = [committed, key, started, pending = pending_](const Status& st) {
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count();
      {
        std::lock_guard pending_lock(pending->mu);
        pending->keys.erase(key);
      }
      if (!st.ok()) {
        SHALE_LOG_ERROR("snapshot commit failed; the snapshot is lost", {"snapshot", key},
                        {"error", st.ToString()});
        return;
      }
      committed->store(true, std::memory_order_release);
      SHALE_LOG_INFO("snapshot durable", {"snapshot", key}, {"durable_ms", ms});
    };
  }
  auto image = engine_->FreezeVolume(volume.name, records, std::move(on_durable));
  if (!image.ok()) {
    if (durable != nullptr) {
      std::lock_guard pending_lock(pending_->mu);
      pending_->keys.erase(key);
    }
    return image.status().WithContext("snapshot '" + key + "'");
  }
  if (durable != nullptr) *durable = committed->load(std::memory_order_acquire);
  SHALE_CHECK(rec.image_id() == *image, "freeze reported image ", *image, " but recorded ",
              rec.image_id());
  Found found{volume.pool, key, std::move(rec)};
  if (enqueue_digest) EnqueueDigestLocked(found);
  // freeze_ms: from the request (Create's start) to the cut, or to the durable commit when
  // waiting for it (bench/snapshot_bench.py reads it, and durable_ms of "snapshot durable").
  const double freeze_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  SHALE_LOG_INFO("snapshot created", {"snapshot", key}, {"image", *image},
                 {"implicit", implicit ? 1 : 0}, {"freeze_ms", freeze_ms},
                 {"durable", durable == nullptr || *durable ? 1 : 0});
  return found;
}

Result<SnapshotInfo> SnapshotManager::Create(std::string_view volume, std::string_view name,
                                             const CreateSnapshotOptions& options) {
  const TimePoint started = std::chrono::steady_clock::now();
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  SHALE_RETURN_IF_ERROR(ValidateName("snapshot", name));
  SHALE_RETURN_IF_ERROR(ValidateLabels(options.labels));
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(volume));
  SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
  const bool at_cut = !options.wait_durable && !options.wait_digest;
  bool durable = true;
  SHALE_ASSIGN_OR_RETURN(Found found, CreateLocked(vol, name, options.labels, false, "", true,
                                                   at_cut ? &durable : nullptr, started));
  if (options.wait_digest) {
    lock.unlock();
    return WaitDigest(found.key);
  }
  // Space needs the stored image entries, which would wait for the commit: filled only once
  // durable (snapshot show).
  SHALE_ASSIGN_OR_RETURN(SnapshotInfo info, DescribeLocked(found, durable, {}));
  info.durable = durable;
  return info;
}

Result<std::vector<SnapshotInfo>> SnapshotManager::List(const ListOptions& options) {
  if (!options.volume.empty()) SHALE_RETURN_IF_ERROR(ValidateName("volume", options.volume));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(auto snaps, ScanSnapshotsLocked(options.volume));
  SHALE_ASSIGN_OR_RETURN(auto clones, ScanClonesLocked());
  std::vector<SnapshotInfo> out;
  for (const Found& f : snaps) {
    if (f.rec.implicit() && !options.include_implicit) continue;
    SHALE_ASSIGN_OR_RETURN(SnapshotInfo info, DescribeLocked(f, options.with_space, clones));
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const SnapshotInfo& a, const SnapshotInfo& b) {
    return std::tie(a.volume, a.created_unix_ns, a.name) <
           std::tie(b.volume, b.created_unix_ns, b.name);
  });
  return out;
}

Result<SnapshotInfo> SnapshotManager::Get(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
  SHALE_ASSIGN_OR_RETURN(auto clones, ScanClonesLocked());
  return DescribeLocked(found, true, clones);
}

Status SnapshotManager::DeleteSnapshotLocked(Lock& lock, const Found& found) {
  // The digest worker holds a view of the image, which the engine would refuse to delete.
  CancelDigestLocked(lock, found.pool, found.rec.image_id());
  SHALE_ASSIGN_OR_RETURN(auto current, ReadRecordLocked(found.pool, found.key));
  if (!current || current->image_id() != found.rec.image_id()) {
    return Status::NotFound("snapshot '" + found.key + "' not found");
  }
  Status st = engine_->DeleteImage(
      found.pool, found.rec.image_id(),
      [&](uint64_t, MetaBatch* batch) { batch->Delete(SnapshotKey(found.key)); });
  if (st.code() == StatusCode::kBusy) {
    return Status::Busy("snapshot '" + found.key +
                        "' is open (exported over NBD, or being exported or verified); disconnect "
                        "its clients or let the operation finish, then retry");
  }
  SHALE_RETURN_IF_ERROR(st.WithContext("delete snapshot '" + found.key + "'"));
  SHALE_LOG_INFO("snapshot deleted", {"snapshot", found.key}, {"image", found.rec.image_id()});
  return Status::Ok();
}

Result<DeleteSnapshotResult> SnapshotManager::Delete(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(r.volume));
  SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
  SHALE_ASSIGN_OR_RETURN(auto clones, ScanClonesLocked());
  DeleteSnapshotResult result;
  for (const CloneEntry& c : clones) {
    if (c.pool == found.pool && c.rec.source_image_id() == found.rec.image_id() &&
        !c.rec.detached() && CloneLiveLocked(c)) {
      result.still_read_by.push_back(c.rec.volume());
    }
  }
  SHALE_RETURN_IF_ERROR(DeleteSnapshotLocked(lock, found));
  return result;
}

Result<std::shared_ptr<VolumeHandle>> SnapshotManager::OpenSnapshot(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
  return engine_->OpenImage(found.pool, found.rec.image_id());
}

// ---------------------------------------------------------------------------------------------
// Clones and volumes

std::string SnapshotManager::ImplicitNameLocked(const std::string& volume, std::string_view clone) {
  std::string base = "implicit." + std::string(clone);
  if (base.size() > kMaxNameLength - 8) {
    char hash[17];
    std::snprintf(hash, sizeof(hash), "%016llx",
                  static_cast<unsigned long long>(Hash64(clone.data(), clone.size())));
    base = base.substr(0, kMaxNameLength - 8 - 17) + "." + hash;
  }
  std::string name = base;
  for (int n = 2;; ++n) {
    auto existing = LookupLocked(SnapshotRef{volume, name});
    if (existing.ok() && !*existing) return name;
    name = base + "." + std::to_string(n);
  }
}

Result<CloneResult> SnapshotManager::Clone(std::string_view source, std::string_view new_volume,
                                           const CloneOptions& options) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", new_volume));
  SHALE_RETURN_IF_ERROR(ValidateLabels(options.labels));
  const bool from_snapshot = source.find('@') != std::string_view::npos;
  SnapshotRef ref;
  if (from_snapshot) {
    SHALE_ASSIGN_OR_RETURN(ref, ParseSnapshotRef(source));
  } else {
    SHALE_RETURN_IF_ERROR(ValidateName("volume", source));
  }
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(new_volume));
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(from_snapshot ? std::string_view(ref.volume) : source));
  if (engine_->GetVolume(new_volume).ok()) {
    return Status::AlreadyExists("volume '" + std::string(new_volume) + "' already exists");
  }
  Found src;
  if (from_snapshot) {
    SHALE_ASSIGN_OR_RETURN(src, FindLocked(ref));
  } else {
    SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(source));
    SHALE_ASSIGN_OR_RETURN(src, CreateLocked(vol, ImplicitNameLocked(vol.name, new_volume), {},
                                             true, new_volume, true));
  }
  CloneRecord rec;
  rec.set_volume(std::string(new_volume));
  rec.set_source_volume(src.rec.volume());
  rec.set_source_snapshot(src.rec.name());
  rec.set_source_image_id(src.rec.image_id());
  rec.set_implicit_source(src.rec.implicit());
  rec.set_read_only(options.read_only);
  rec.set_created_unix_ns(Clock::Real()->WallNanos());
  if (src.rec.digest_state() == DIGEST_READY) rec.set_source_digest(src.rec.digest());
  CreateVolumeParams params;
  params.name = std::string(new_volume);
  params.pool = src.pool;
  params.read_only = options.read_only;
  params.labels = options.labels;
  params.size_bytes = options.size_bytes;
  // The clone record (and the other layers' records) commit with the clone's volume.
  auto vol = engine_->CreateVolumeFromImage(
      params, src.rec.image_id(), [&](uint64_t volume_id, MetaBatch* batch) {
        rec.set_volume_id(volume_id);
        batch->Put(CloneKey(rec.volume()), rec.SerializeAsString());
        if (options.extra) options.extra(volume_id, batch);
      });
  if (!vol.ok()) {
    if (!from_snapshot) {
      Status undo = DeleteSnapshotLocked(lock, src);
      if (!undo.ok()) {
        SHALE_LOG_WARN("snapshot: could not delete the implicit snapshot of a failed clone",
                       {"snapshot", src.key}, {"error", undo.ToString()});
      }
    }
    return vol.status().WithContext("clone '" + std::string(source) + "' into '" +
                                    std::string(new_volume) + "'");
  }
  SHALE_LOG_INFO("clone created", {"volume", rec.volume()}, {"source", src.key},
                 {"read_only", options.read_only ? 1 : 0});
  return CloneResult{std::move(vol).value(), DescribeCloneLocked(CloneEntry{src.pool, rec})};
}

Result<std::optional<CloneInfo>> SnapshotManager::GetCloneInfo(std::string_view volume) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
  SHALE_ASSIGN_OR_RETURN(auto value, engine_->GetRecord(vol.pool, CloneKey(volume)));
  if (!value) return std::optional<CloneInfo>();
  CloneEntry c{vol.pool, {}};
  if (!c.rec.ParseFromString(*value)) {
    return Status::Corruption("clone record '" + std::string(volume) + "' does not decode");
  }
  if (c.rec.volume_id() != 0 && c.rec.volume_id() != vol.id) {
    return std::optional<CloneInfo>();  // stale: an earlier volume of that name
  }
  return std::optional<CloneInfo>(DescribeCloneLocked(c));
}

Result<std::vector<CloneInfo>> SnapshotManager::ListClones() {
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(auto clones, ScanClonesLocked());
  std::vector<CloneInfo> out;
  for (const CloneEntry& c : clones) {
    if (CloneLiveLocked(c)) out.push_back(DescribeCloneLocked(c));
  }
  return out;
}

Status SnapshotManager::Revert(std::string_view volume, std::string_view snapshot) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  SnapshotRef ref;
  if (snapshot.find('@') != std::string_view::npos) {
    SHALE_ASSIGN_OR_RETURN(ref, ParseSnapshotRef(snapshot));
    if (ref.volume != volume) {
      return Status::InvalidArgument("snapshot '" + ref.ToString() +
                                     "' is not a snapshot of volume '" + std::string(volume) +
                                     "'; a volume reverts only to its own snapshots");
    }
  } else {
    SHALE_RETURN_IF_ERROR(ValidateName("snapshot", snapshot));
    ref = SnapshotRef{std::string(volume), std::string(snapshot)};
  }
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(volume));
  SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
  SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(ref));
  if (found.pool != vol.pool || found.rec.source_volume_id() != vol.id) {
    return Status::FailedPrecondition(
        "snapshot '" + found.key + "' was taken from an earlier volume named '" +
        std::string(volume) + "' (since deleted), not from this one; clone it instead");
  }
  Status st = engine_->RevertVolume(volume, found.rec.image_id());
  if (st.code() == StatusCode::kInvalidArgument) {
    return Status::FailedPrecondition(
        "snapshot '" + found.key + "' is no longer in the history of volume '" +
        std::string(volume) +
        "' (it was reverted to an older snapshot, or flattened, since); "
        "clone the snapshot instead");
  }
  SHALE_RETURN_IF_ERROR(
      st.WithContext("revert volume '" + std::string(volume) + "' to '" + found.key + "'"));
  SHALE_LOG_INFO("volume reverted", {"volume", std::string(volume)}, {"snapshot", found.key});
  return Status::Ok();
}

Status SnapshotManager::Flatten(
    std::string_view volume, const std::function<void(uint64_t done, uint64_t total)>& progress) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  const std::string name(volume);
  VolumeInfo vol;
  {
    Lock lock(mu_);
    SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(volume));
    SHALE_ASSIGN_OR_RETURN(vol, engine_->GetVolume(volume));
    busy_[name] = "flatten in progress";
  }
  // Copying can take long: the control mutex is not held (the engine keeps conflicting engine
  // operations away; busy_ keeps ours away).
  std::shared_ptr<BackgroundAdmission> admission;
  if (options_.background_admission) {
    Result<std::shared_ptr<VolumeHandle>> handle = engine_->OpenVolume(volume);
    if (handle.ok()) admission = options_.background_admission(std::move(handle).value());
  }
  Status st = engine_->FlattenVolume(volume, progress, admission.get());
  admission.reset();  // before busy_ goes: the volume is not held open past the flatten
  Lock lock(mu_);
  busy_.erase(name);
  SHALE_RETURN_IF_ERROR(st);
  // A clone no longer depends on its source.
  auto value = engine_->GetRecord(vol.pool, CloneKey(name));
  if (value.ok() && *value) {
    CloneRecord rec;
    if (rec.ParseFromString(**value) && (rec.volume_id() == 0 || rec.volume_id() == vol.id) &&
        !rec.detached()) {
      rec.set_detached(true);
      rec.set_detached_unix_ns(Clock::Real()->WallNanos());
      MetaBatch batch;
      batch.Put(CloneKey(name), rec.SerializeAsString());
      Status w = engine_->WriteRecords(vol.pool, std::move(batch));
      if (!w.ok()) return w.WithContext("record that clone '" + name + "' was flattened");
    }
  }
  CollectLocked(lock);
  return Status::Ok();
}

Status SnapshotManager::DeleteVolume(std::string_view volume, const VolumeRecords& extra) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  const std::string name(volume);
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(volume));
  SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
  // Its clone record goes in the same commit, if it is this volume's (not an earlier one's).
  // Read here: the callback below runs under the engine's lock.
  SHALE_ASSIGN_OR_RETURN(std::optional<std::string> clone,
                         engine_->GetRecord(vol.pool, CloneKey(volume)));
  CloneRecord rec;
  const bool own_clone_record = clone.has_value() && rec.ParseFromString(*clone) &&
                                (rec.volume_id() == 0 || rec.volume_id() == vol.id);
  SHALE_RETURN_IF_ERROR(engine_->DeleteVolume(volume, [&](uint64_t volume_id, MetaBatch* batch) {
    if (own_clone_record && volume_id == vol.id) batch->Delete(CloneKey(volume));
    if (extra) extra(volume_id, batch);
  }));
  // An implicit source snapshot no other clone needs goes too; CollectLocked also drops records
  // of volumes that no longer exist.
  CollectLocked(lock);
  SHALE_LOG_INFO("volume deleted (snapshot layer)", {"volume", name}, {"id", vol.id});
  return Status::Ok();
}

Result<VolumeSpace> SnapshotManager::GetVolumeSpace(std::string_view volume) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(VolumeInfo vol, engine_->GetVolume(volume));
  SHALE_ASSIGN_OR_RETURN(Volume::SpaceUsage usage, engine_->GetVolumeUsage(volume));
  VolumeSpace space;
  space.volume = vol.name;
  space.size_bytes = vol.size_bytes;
  space.owned_bytes = usage.owned_bytes;
  space.shared_bytes = usage.shared_bytes;
  space.written_bytes = usage.written_bytes;
  SHALE_ASSIGN_OR_RETURN(auto snaps, ScanSnapshotsLocked(volume));
  for (const Found& f : snaps) {
    if (f.pool != vol.pool || f.rec.source_volume_id() != vol.id) continue;  // an earlier volume's
    SHALE_ASSIGN_OR_RETURN(ImageUsage u, engine_->GetImageUsage(f.pool, f.rec.image_id()));
    ++space.snapshot_count;
    space.snapshot_data_bytes += u.data_bytes;
    space.snapshot_exclusive_bytes += u.exclusive_bytes;
  }
  return space;
}

bool SnapshotManager::ReadsThroughLocked(const std::string& pool, uint64_t head, uint64_t image) {
  uint64_t id = head;
  for (size_t n = 0; id != 0 && n <= Volume::kMaxChainDepth; ++n) {
    if (id == image) return true;
    auto info = engine_->GetImage(pool, id);
    if (!info.ok()) return true;  // cannot tell: keep the dependency
    id = info->parent;
  }
  return false;
}

void SnapshotManager::CollectLocked(Lock& lock, bool check_chains) {
  auto clones = ScanClonesLocked();
  if (!clones.ok()) {
    SHALE_LOG_WARN("snapshot: cannot scan clone records", {"error", clones.status().ToString()});
    return;
  }
  std::set<std::pair<std::string, uint64_t>> needed;  // (pool, image) that live clones read
  for (CloneEntry& c : *clones) {
    auto v = engine_->GetVolume(c.rec.volume());
    const bool live =
        v.ok() && v->pool == c.pool && (c.rec.volume_id() == 0 || v->id == c.rec.volume_id());
    MetaBatch batch;
    bool changed = false;
    if (live && c.rec.volume_id() == 0) {
      c.rec.set_volume_id(v->id);
      changed = true;
    }
    if (live && check_chains && !c.rec.detached()) {
      // Flattened behind this layer's back (or a crash before the record said so).
      auto head = engine_->VolumeHeadImage(c.rec.volume());
      if (head.ok() && !ReadsThroughLocked(c.pool, *head, c.rec.source_image_id())) {
        c.rec.set_detached(true);
        c.rec.set_detached_unix_ns(Clock::Real()->WallNanos());
        changed = true;
      }
    }
    if (!live) {
      batch.Delete(CloneKey(c.rec.volume()));
    } else if (changed) {
      batch.Put(CloneKey(c.rec.volume()), c.rec.SerializeAsString());
    }
    if (!batch.empty()) {
      Status st = engine_->WriteRecords(c.pool, std::move(batch));
      if (!st.ok()) {
        SHALE_LOG_WARN("snapshot: cannot update clone record", {"volume", c.rec.volume()},
                       {"error", st.ToString()});
      }
    }
    if (live && !c.rec.detached()) needed.insert({c.pool, c.rec.source_image_id()});
  }
  auto snaps = ScanSnapshotsLocked("");
  if (!snaps.ok()) {
    SHALE_LOG_WARN("snapshot: cannot scan snapshot records", {"error", snaps.status().ToString()});
    return;
  }
  for (const Found& f : *snaps) {
    if (!f.rec.implicit() || needed.count({f.pool, f.rec.image_id()})) continue;
    // Its last clone is gone (or flattened): nothing asked for it but that clone.
    Status st = DeleteSnapshotLocked(lock, f);
    if (st.ok()) {
      SHALE_LOG_INFO("implicit snapshot deleted with its last clone", {"snapshot", f.key});
    } else if (!st.IsNotFound()) {
      SHALE_LOG_WARN("snapshot: cannot delete unused implicit snapshot (retried later)",
                     {"snapshot", f.key}, {"error", st.ToString()});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Background I/O

std::shared_ptr<VolumeLayer> SnapshotManager::BackgroundTarget(
    const std::shared_ptr<VolumeHandle>& handle) const {
  if (!options_.background_io || handle == nullptr) return nullptr;
  return options_.background_io(handle);
}

}  // namespace shale::snapshot
