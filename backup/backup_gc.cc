// Garbage collection of a place: Delete and Prune remove manifests, then Sweep deletes the chunks
// no remaining manifest references (mark and sweep). Locks keep a sweep and a running backup
// apart (docs/backup.md, "Garbage collection and concurrent backups"):
//
//   backup: PUT locks/backup-ID.lock, then LIST locks/; a live gc lock -> remove ours, wait, retry
//   sweep:  PUT locks/gc-ID.lock,     then LIST locks/; a live backup lock -> remove ours, defer
//
// Each side writes its lock before it looks for the other's, and S3 lists are strongly
// consistent, so of two that overlap at least one sees the other and steps back: a sweep never
// runs while a backup that may reference old chunks (from its listing or its base manifest) has
// not yet written its manifest. A lock not rewritten for Options::lock_stale (its owner died) is
// ignored; running backups rewrite theirs every Options::lock_refresh.
#include <random>
#include <set>
#include <thread>

#include "backup/backup_internal.h"
#include "engine/common/log.h"

namespace shale::backup {

namespace {

std::string RandomHex() {
  std::random_device rd;
  char buf[20];
  snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

}  // namespace

Result<std::vector<std::string>> BackupManager::TakeLock(Session& s, const std::string& name,
                                                         std::string_view kind_to_check) {
  const std::string dir = s.loc().Key(kLocksDir);
  const std::string body = "{\"lock\":\"" + name + "\",\"host\":\"" + options_.host +
                           "\",\"pid\":" + std::to_string(getpid()) +
                           ",\"since_unix_ns\":" + std::to_string(internal::NowNs()) + "}";
  SHALE_RETURN_IF_ERROR(s.s3->Put(dir + name + ".lock", body).WithContext("write lock " + name));
  SHALE_ASSIGN_OR_RETURN(S3Listing locks, s.s3->List(dir));
  std::vector<std::string> live;
  const std::string want = std::string(kind_to_check) + "-";
  for (const S3Object& obj : locks.objects) {
    std::string_view other = std::string_view(obj.key).substr(dir.size());
    if (!other.starts_with(want) || !other.ends_with(".lock")) continue;
    other.remove_suffix(5);
    if (locks.server_time_unix - obj.last_modified_unix > options_.lock_stale.count()) {
      SHALE_LOG_INFO("backup: ignoring a stale lock", {"key", obj.key});
      continue;
    }
    live.emplace_back(other);
  }
  return live;
}

Status BackupManager::AcquireBackupLock(Session& s, const std::string& id,
                                        const ProgressFn& progress) {
  const std::string name = "backup-" + id;
  const auto deadline = std::chrono::steady_clock::now() + options_.gc_wait;
  for (bool logged = false;; logged = true) {
    SHALE_ASSIGN_OR_RETURN(std::vector<std::string> sweeps, TakeLock(s, name, "gc"));
    if (sweeps.empty()) return Status::Ok();
    s.s3->Delete(s.loc().Key(std::string(kLocksDir) + name + ".lock")).IgnoreError();
    if (!logged) {
      SHALE_LOG_INFO("backup: waiting for a sweep to finish", {"backup", id},
                     {"sweep", sweeps.front()}, {"place", s.loc().ToString()});
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return Status::Unavailable("a garbage collection (" + sweeps.front() +
                                 ") has been running in " + s.loc().ToString() +
                                 " for longer than " + std::to_string(options_.gc_wait.count()) +
                                 "s; try again later");
    }
    SHALE_RETURN_IF_ERROR(internal::Report(progress, {.phase = "waiting for a sweep"}, stopping_));
    for (int i = 0; i < 50 && !stopping_.load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

Status BackupManager::Sweep(Session& s, GcResult* result) {
  const std::string name = "gc-" + RandomHex();
  const std::string lock_key = s.loc().Key(std::string(kLocksDir) + name + ".lock");
  SHALE_ASSIGN_OR_RETURN(std::vector<std::string> backups, TakeLock(s, name, "backup"));
  auto defer = [&](std::string reason) {
    s.s3->Delete(lock_key).IgnoreError();
    result->sweep_deferred = true;
    result->deferred_reason = std::move(reason);
    SHALE_LOG_INFO("backup: sweep deferred", {"place", s.loc().ToString()},
                   {"reason", result->deferred_reason});
    return Status::Ok();
  };
  if (!backups.empty()) {
    return defer(backups.front() + " is running in " + s.loc().ToString() +
                 "; unreferenced chunks go with the next delete or prune");
  }
  Status st = [&]() -> Status {
    // Mark: every chunk a remaining manifest references.
    SHALE_ASSIGN_OR_RETURN(std::vector<Manifest> headers, ListHeaders(s, {}));
    std::set<std::string> referenced;
    for (const Manifest& h : headers) {
      Result<Manifest> m = ReadManifest(s, h.id);
      if (m.status().IsNotFound()) continue;  // deleted meanwhile
      if (!m.ok()) {
        return Status::Corruption("manifest of backup " + h.id + " cannot be read (" +
                                  std::string(m.status().message()) + "); no chunk was swept");
      }
      for (const ChunkRef& c : m->chunks) referenced.insert(c.hash.ToHex());
    }
    // Sweep: every chunk object no manifest names.
    const std::string dir = s.loc().Key(kChunksDir);
    SHALE_ASSIGN_OR_RETURN(S3Listing chunks, s.s3->List(dir));
    for (const S3Object& obj : chunks.objects) {
      const std::string hex = obj.key.substr(dir.size());
      if (referenced.contains(hex)) {
        ++result->chunks_kept;
        continue;
      }
      if (stopping_.load()) return Status::Aborted("cancelled: shaled is stopping");
      SHALE_RETURN_IF_ERROR(s.s3->Delete(obj.key));
      ++result->chunks_deleted;
      result->bytes_freed += obj.size;
    }
    return Status::Ok();
  }();
  s.s3->Delete(lock_key).IgnoreError();
  return st;
}

Result<GcResult> BackupManager::DeleteManifests(Session& s, const std::vector<std::string>& ids) {
  GcResult result;
  for (const std::string& id : ids) {
    SHALE_RETURN_IF_ERROR(s.s3->Delete(s.loc().Key(ManifestName(id))));
    result.deleted.push_back(id);
    SHALE_LOG_INFO("backup deleted", {"id", id}, {"place", s.loc().ToString()});
  }
  SHALE_RETURN_IF_ERROR(
      Sweep(s, &result)
          .WithContext(std::to_string(ids.size()) + " manifest(s) deleted, but the sweep failed"));
  return result;
}

Result<GcResult> BackupManager::Delete(const Target& target, std::string_view id) {
  SHALE_RETURN_IF_ERROR(ValidateBackupId(id));
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  // Refuse to delete what does not exist (a typo would otherwise look like success).
  Result<std::string> head =
      s->s3->Get(s->loc().Key(ManifestName(id)), std::make_pair(uint64_t{0}, uint64_t{0}));
  if (!head.ok()) {
    if (head.status().IsNotFound() && head.status().message().find("bucket") == std::string::npos) {
      return Status::NotFound("backup " + s->loc().ToString() + "/" + std::string(id) +
                              " does not exist (no manifest)");
    }
    return head.status();
  }
  return DeleteManifests(*s, {std::string(id)});
}

Result<GcResult> BackupManager::Prune(const Target& target, uint32_t keep,
                                      std::string_view volume) {
  if (keep == 0) {
    return Status::InvalidArgument(
        "--keep must be at least 1 (delete single backups with "
        "`shale backup delete`)");
  }
  if (!volume.empty()) SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  SHALE_ASSIGN_OR_RETURN(std::vector<Manifest> headers, ListHeaders(*s, volume));
  std::map<std::string, std::vector<std::string>> by_volume;  // oldest first
  for (const Manifest& m : headers) by_volume[m.volume].push_back(m.id);
  std::vector<std::string> doomed;
  for (const auto& [vol, ids] : by_volume) {
    if (ids.size() <= keep) continue;
    doomed.insert(doomed.end(), ids.begin(), ids.end() - keep);
  }
  return DeleteManifests(*s, doomed);
}

}  // namespace shale::backup
