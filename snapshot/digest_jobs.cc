// The digest side of SnapshotManager: the worker thread that computes pending digests in the
// background, WaitDigest and Verify, and recording digests (docs/format/snapshot-digest.md).
#include <atomic>
#include <memory>
#include <string>

#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/pool/keys.h"
#include "snapshot/digest.h"
#include "snapshot/records.h"
#include "snapshot/snapshot_manager.h"
#include "snapshot/volume_scan.h"

namespace shale::snapshot {

std::string_view DigestStateName(DigestState state) {
  switch (state) {
    case DigestState::kPending:
      return "pending";
    case DigestState::kReady:
      return "ready";
    case DigestState::kFailed:
      return "failed";
  }
  return "unknown";
}

Result<SnapshotInfo> SnapshotManager::WaitDigest(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  for (;;) {
    SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
    if (found.rec.digest_state() != DIGEST_PENDING) {
      SHALE_ASSIGN_OR_RETURN(auto clones, ScanClonesLocked());
      return DescribeLocked(found, true, clones);
    }
    if (!running_ || stopping_) {
      // No worker: compute here.
      SHALE_RETURN_IF_ERROR(EnsureDigestLocked(lock, found).status());
      continue;
    }
    if (!JobForLocked(found.pool, found.rec.image_id())) EnqueueDigestLocked(found);
    cv_.wait(lock);
  }
}

Result<std::string> SnapshotManager::Verify(std::string_view ref) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(Found found, FindLocked(r));
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> view,
                         engine_->OpenImage(found.pool, found.rec.image_id()));
  lock.unlock();
  auto computed = ComputeDigest(view, nullptr, nullptr);
  view.reset();
  lock.lock();
  if (!computed.ok()) return computed.status().WithContext("verify snapshot '" + found.key + "'");
  SHALE_ASSIGN_OR_RETURN(auto current, ReadRecordLocked(found.pool, found.key));
  if (!current || current->image_id() != found.rec.image_id()) {
    return Status::NotFound("snapshot '" + found.key + "' was deleted during verification");
  }
  if (current->digest_state() == DIGEST_READY) {
    const std::string recorded = DigestHex(current->digest());
    if (recorded != computed->ToHex()) {
      SHALE_LOG_ERROR("snapshot failed verification", {"snapshot", found.key},
                      {"recorded", recorded}, {"computed", computed->ToHex()});
      return Status::Corruption("snapshot '" + found.key +
                                "' failed verification: its recorded digest is " + recorded +
                                " but the data on disk hashes to " + computed->ToHex());
    }
  } else {
    SHALE_RETURN_IF_ERROR(
        StoreDigestLocked(found.pool, found.key, found.rec.image_id(), *computed));
  }
  return computed->ToHex();
}

// ---------------------------------------------------------------------------------------------
// The worker

std::shared_ptr<SnapshotManager::DigestJob> SnapshotManager::JobForLocked(const std::string& pool,
                                                                          uint64_t image_id) {
  if (current_ && current_->pool == pool && current_->image_id == image_id) return current_;
  for (const auto& job : jobs_) {
    if (job->pool == pool && job->image_id == image_id) return job;
  }
  return nullptr;
}

void SnapshotManager::EnqueueDigestLocked(const Found& found) {
  if (stopping_ || JobForLocked(found.pool, found.rec.image_id())) return;
  auto job = std::make_shared<DigestJob>();
  job->pool = found.pool;
  job->key = found.key;
  job->image_id = found.rec.image_id();
  jobs_.push_back(std::move(job));
  cv_.notify_all();
}

void SnapshotManager::CancelDigestLocked(Lock& lock, const std::string& pool, uint64_t image_id) {
  std::erase_if(jobs_,
                [&](const auto& job) { return job->pool == pool && job->image_id == image_id; });
  while (current_ && current_->pool == pool && current_->image_id == image_id) {
    current_->cancel.store(true, std::memory_order_release);
    cv_.wait(lock);  // the worker releases its view, then clears current_ and notifies
  }
}

void SnapshotManager::WorkerMain() {
  Lock lock(mu_);
  while (!stopping_) {
    if (jobs_.empty()) {
      cv_.wait(lock);
      continue;
    }
    std::shared_ptr<DigestJob> job = std::move(jobs_.front());
    jobs_.pop_front();
    // Reading the record (which waits for the snapshot's commit) and opening the image (which
    // loads its map) run without our lock, so that snapshot creates never wait for them;
    // current_ lets a delete cancel the job meanwhile (CancelDigestLocked).
    current_ = job;
    lock.unlock();
    auto rec = ReadRecordLocked(job->pool, job->key);  // needs no lock of ours
    const bool wanted = rec.ok() && *rec && (*rec)->image_id() == job->image_id &&
                        (*rec)->digest_state() == DIGEST_PENDING &&
                        !job->cancel.load(std::memory_order_acquire);
    Result<std::shared_ptr<VolumeHandle>> view = Status::Aborted("not wanted");
    if (wanted) view = engine_->OpenImage(job->pool, job->image_id);
    if (!wanted || !view.ok() || job->cancel.load(std::memory_order_acquire)) {
      if (view.ok()) view->reset();  // before anyone waiting for the cancel deletes the image
      lock.lock();
      current_.reset();
      if (wanted && !view.ok() && !job->cancel.load(std::memory_order_acquire)) {
        SHALE_LOG_ERROR("snapshot digest: cannot open the snapshot", {"snapshot", job->key},
                        {"error", view.status().ToString()});
        StoreDigestFailureLocked(job->pool, job->key, job->image_id, view.status()).IgnoreError();
      }
      cv_.notify_all();  // deleted, cancelled, or computed by someone else meanwhile
      continue;
    }
    std::shared_ptr<VolumeHandle> handle = std::move(view).value();
    auto digest = ComputeDigest(handle, &job->cancel, job.get());
    handle.reset();  // before anyone waiting for the cancel deletes the image
    lock.lock();
    current_.reset();
    if (!job->cancel.load(std::memory_order_acquire)) {
      Status st;
      if (digest.ok()) {
        st = StoreDigestLocked(job->pool, job->key, job->image_id, *digest);
        SHALE_LOG_INFO("snapshot digest computed", {"snapshot", job->key},
                       {"digest", digest->ToHex()});
      } else {
        SHALE_LOG_ERROR("snapshot digest failed", {"snapshot", job->key},
                        {"error", digest.status().ToString()});
        st = StoreDigestFailureLocked(job->pool, job->key, job->image_id, digest.status());
      }
      if (!st.ok()) {
        SHALE_LOG_WARN("snapshot digest: cannot record", {"snapshot", job->key},
                       {"error", st.ToString()});
      }
    }
    cv_.notify_all();
  }
  cv_.notify_all();
}

Result<Hash128> SnapshotManager::ComputeDigest(const std::shared_ptr<VolumeHandle>& handle,
                                               const std::atomic<bool>* cancel, DigestJob* job) {
  VolumeHandle& view = *handle;
  const uint64_t size = view.volume().size_bytes();
  // Released when the digest is done, with the caller's handle.
  const std::shared_ptr<VolumeLayer> target = BackgroundTarget(handle);
  if (job != nullptr) job->total_bytes.store(size, std::memory_order_relaxed);
  DigestBuilder builder(size);
  ScanOptions scan;
  scan.cancel = cancel;
  scan.target = target.get();
  SHALE_RETURN_IF_ERROR(ScanContent(view, {{0, size}}, scan, [&](const ScanPiece& piece) {
    if (piece.data != nullptr) {
      builder.AddData(piece.data, piece.length);
    } else {
      builder.AddZeros(piece.length);
    }
    if (job != nullptr) {
      job->done_bytes.store(piece.offset + piece.length, std::memory_order_relaxed);
      if (options_.digest_hook) options_.digest_hook(piece.offset + piece.length, job->cancel);
    }
    return Status::Ok();
  }));
  return builder.Finish();
}

Result<Hash128> SnapshotManager::EnsureDigestLocked(Lock& lock, const Found& found) {
  if (found.rec.digest_state() == DIGEST_READY) {
    return HashFromCanonical(DigestBytes(found.rec.digest()));
  }
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> view,
                         engine_->OpenImage(found.pool, found.rec.image_id()));
  lock.unlock();
  auto computed = ComputeDigest(view, nullptr, nullptr);
  view.reset();
  lock.lock();
  if (!computed.ok()) {
    return computed.status().WithContext("digest of snapshot '" + found.key + "'");
  }
  SHALE_ASSIGN_OR_RETURN(auto current, ReadRecordLocked(found.pool, found.key));
  if (!current || current->image_id() != found.rec.image_id()) {
    return Status::NotFound("snapshot '" + found.key +
                            "' was deleted while its digest was computed");
  }
  if (current->digest_state() == DIGEST_READY) {
    const Hash128 recorded = HashFromCanonical(DigestBytes(current->digest()));
    if (recorded != *computed) {
      return Status::Corruption("snapshot '" + found.key + "': its recorded digest is " +
                                recorded.ToHex() + " but the data on disk hashes to " +
                                computed->ToHex());
    }
    return recorded;
  }
  SHALE_RETURN_IF_ERROR(StoreDigestLocked(found.pool, found.key, found.rec.image_id(), *computed));
  return *computed;
}

Status SnapshotManager::StoreDigestLocked(const std::string& pool, const std::string& key,
                                          uint64_t image_id, const Hash128& digest,
                                          MetaBatch extra) {
  SHALE_ASSIGN_OR_RETURN(auto rec, ReadRecordLocked(pool, key));
  if (!rec || rec->image_id() != image_id) {
    return Status::NotFound("snapshot '" + key + "' not found");
  }
  const auto canonical = CanonicalHash(digest);
  const std::string bytes(reinterpret_cast<const char*>(canonical.data()), canonical.size());
  MetaBatch batch;
  if (rec->digest_state() != DIGEST_READY) {
    rec->set_digest_state(DIGEST_READY);
    rec->set_digest(bytes);
    rec->clear_digest_error();
    rec->set_digest_version(kDigestVersion);
    rec->set_digest_unix_ns(Clock::Real()->WallNanos());
    batch.Put(SnapshotKey(key), rec->SerializeAsString());
  }
  // Clones made while the digest was pending record it now.
  Status err;
  SHALE_RETURN_IF_ERROR(engine_->ScanRecords(
      pool, keys::ExtensionPrefix(kCloneNamespace), [&](std::string_view, std::string_view v) {
        CloneRecord c;
        if (!c.ParseFromString(std::string(v))) return true;  // reported by the scans that need it
        if (c.source_image_id() == image_id && c.source_digest().empty()) {
          c.set_source_digest(bytes);
          batch.Put(CloneKey(c.volume()), c.SerializeAsString());
        }
        return true;
      }));
  batch.Append(extra);
  if (batch.empty()) return Status::Ok();
  return engine_->WriteRecords(pool, std::move(batch));
}

Status SnapshotManager::StoreDigestFailureLocked(const std::string& pool, const std::string& key,
                                                 uint64_t image_id, const Status& error) {
  SHALE_ASSIGN_OR_RETURN(auto rec, ReadRecordLocked(pool, key));
  if (!rec || rec->image_id() != image_id || rec->digest_state() != DIGEST_PENDING) {
    return Status::Ok();
  }
  rec->set_digest_state(DIGEST_FAILED);
  rec->set_digest_error(error.ToString());
  MetaBatch batch;
  batch.Put(SnapshotKey(key), rec->SerializeAsString());
  return engine_->WriteRecords(pool, std::move(batch));
}

}  // namespace shale::snapshot
