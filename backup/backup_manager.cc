#include "backup/backup_manager.h"

#include <unistd.h>

#include <algorithm>

#include "backup/backup_internal.h"
#include "engine/common/log.h"
#include "snapshot/snapshot_manager.h"

namespace shale::backup {

namespace internal {

Status Report(const ProgressFn& progress, const Progress& p, const std::atomic<bool>& stopping) {
  if (stopping.load()) return Status::Aborted("cancelled: shaled is stopping");
  if (progress && !progress(p)) return Status::Aborted("cancelled: the client went away");
  return Status::Ok();
}

}  // namespace internal

BackupManager::BackupManager(Engine* engine, snapshot::SnapshotManager* snapshots, Options options)
    : engine_(engine), snapshots_(snapshots), options_(std::move(options)) {}

BackupManager::~BackupManager() { Stop(); }

Status BackupManager::CheckConfig() const {
  SHALE_RETURN_IF_ERROR(options_.default_endpoint.Validate().WithContext("--backup-endpoint"));
  if (options_.parallel < 1 || options_.parallel > 64) {
    return Status::InvalidArgument("backup transfers in flight must be 1..64");
  }
  if (!options_.credentials_file.empty()) {
    SHALE_RETURN_IF_ERROR(
        LoadCredentials(options_.credentials_file, options_.credentials_profile).status());
  }
  if (!options_.ca_file.empty() && access(options_.ca_file.c_str(), R_OK) != 0) {
    return Status::FailedPrecondition("CA file " + options_.ca_file + " cannot be read");
  }
  return Status::Ok();
}

void BackupManager::Stop() {
  stopping_.store(true);
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(jobs_mu_);
    threads.swap(job_threads_);
  }
  for (std::thread& t : threads) t.join();
}

Result<std::unique_ptr<BackupManager::Session>> BackupManager::Open(const Target& target) const {
  if (stopping_.load()) return Status::Unavailable("shaled is stopping");
  auto s = std::make_unique<Session>();
  s->target = target;
  if (s->target.endpoint.url.empty()) s->target.endpoint.url = options_.default_endpoint.url;
  if (s->target.endpoint.region.empty()) {
    s->target.endpoint.region = options_.default_endpoint.region;
  }
  SHALE_RETURN_IF_ERROR(s->target.endpoint.Validate());
  SHALE_ASSIGN_OR_RETURN(Credentials creds,
                         LoadCredentials(options_.credentials_file, options_.credentials_profile));
  S3Config config;
  config.endpoint = s->target.endpoint;
  config.credentials = std::move(creds);
  config.ca_file = options_.ca_file;
  config.max_attempts = options_.s3_attempts;
  config.cancel = &stopping_;
  s->s3 = std::make_unique<S3Client>(std::move(config), target.location.bucket);
  return s;
}

Result<Manifest> BackupManager::ReadManifest(Session& s, std::string_view id) {
  SHALE_RETURN_IF_ERROR(ValidateBackupId(id));
  Result<std::string> text = s.s3->Get(s.loc().Key(ManifestName(id)));
  if (!text.ok()) {
    if (text.status().IsNotFound() && text.status().message().find("bucket") == std::string::npos) {
      return Status::NotFound("backup " + s.loc().ToString() + "/" + std::string(id) +
                              " does not exist (no manifest)");
    }
    return text.status();
  }
  Result<Manifest> m = DecodeManifest(*text);
  if (!m.ok()) {
    return m.status().WithContext("backup " + s.loc().ToString() + "/" + std::string(id));
  }
  if (m->id != id) {
    return Status::Corruption("backup " + s.loc().ToString() + "/" + std::string(id) +
                              ": its manifest names backup " + m->id);
  }
  return m;
}

Result<std::vector<Manifest>> BackupManager::ListHeaders(Session& s, std::string_view volume) {
  const std::string dir = s.loc().Key(kManifestsDir);
  SHALE_ASSIGN_OR_RETURN(S3Listing listing, s.s3->List(dir));
  std::vector<Manifest> out;
  for (const S3Object& obj : listing.objects) {
    std::string_view name = std::string_view(obj.key).substr(dir.size());
    if (!name.ends_with(kManifestSuffix)) continue;
    name.remove_suffix(kManifestSuffix.size());
    Result<std::string> vol = VolumeOfBackupId(name);
    if (!vol.ok()) continue;  // not ours
    if (!volume.empty() && *vol != volume) continue;
    // The header line is all a listing needs: read the start of the object only.
    const uint64_t want = std::min<uint64_t>(obj.size, kMaxManifestHeaderBytes) - 1;
    Result<std::string> head = s.s3->Get(obj.key, std::make_pair(uint64_t{0}, want));
    if (!head.ok()) {
      if (head.status().IsNotFound()) continue;  // deleted meanwhile
      return head.status();
    }
    Result<Manifest> m = DecodeManifest(*head, /*header_only=*/true);
    if (!m.ok() || m->id != name) {
      SHALE_LOG_WARN("backup: unreadable manifest skipped", {"key", obj.key},
                     {"error", m.ok() ? std::string("id mismatch") : m.status().ToString()});
      continue;
    }
    out.push_back(std::move(m).value());
  }
  std::sort(out.begin(), out.end(), [](const Manifest& a, const Manifest& b) {
    return a.created_unix_ns != b.created_unix_ns ? a.created_unix_ns < b.created_unix_ns
                                                  : a.id < b.id;
  });
  return out;
}

Result<std::vector<Manifest>> BackupManager::List(const Target& target, std::string_view volume) {
  if (!volume.empty()) SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  return ListHeaders(*s, volume);
}

Result<Manifest> BackupManager::Get(const Target& target, std::string_view id) {
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  return ReadManifest(*s, id);
}

std::string BackupManager::JobKey(std::string_view ref, const Target& target) const {
  return std::string(ref) + " " + target.location.ToString() + " " + target.endpoint.url + " " +
         target.endpoint.region;
}

Result<BackupJob> BackupManager::EnsureBackup(std::string_view ref, const Target& target) {
  const std::string key = JobKey(ref, target);
  {
    std::lock_guard lock(jobs_mu_);
    auto it = jobs_.find(key);
    if (it != jobs_.end()) {
      BackupJob job = *it->second;
      if (job.state == BackupJob::State::kFailed) jobs_.erase(it);  // the next call retries
      return job;
    }
  }
  // A backup of this snapshot with its digest may exist already (made before a restart).
  SHALE_ASSIGN_OR_RETURN(snapshot::SnapshotInfo snap, snapshots_->Get(ref));
  if (snap.digest_state == snapshot::DigestState::kReady) {
    SHALE_ASSIGN_OR_RETURN(std::vector<Manifest> existing, List(target, snap.volume));
    for (const Manifest& m : existing) {
      if (m.snapshot == snap.name && m.digest == snap.digest) {
        BackupJob done;
        done.state = BackupJob::State::kDone;
        done.id = m.id;
        return done;
      }
    }
  }
  std::lock_guard lock(jobs_mu_);
  if (stopping_.load()) return Status::Unavailable("shaled is stopping");
  auto job = std::make_shared<BackupJob>();
  jobs_[key] = job;
  job_threads_.emplace_back([this, job, ref = std::string(ref), target] {
    CreateOptions o;
    o.progress = [this, job](const Progress& p) {
      std::lock_guard l(jobs_mu_);
      job->done_bytes = p.done_bytes;
      job->total_bytes = p.total_bytes;
      return true;
    };
    Result<CreateResult> r = Create(ref, target, o);
    std::lock_guard l(jobs_mu_);
    if (r.ok()) {
      job->state = BackupJob::State::kDone;
      job->id = r->manifest.id;
    } else {
      job->state = BackupJob::State::kFailed;
      job->error = r.status();
      SHALE_LOG_WARN("backup: background backup failed", {"snapshot", ref},
                     {"to", target.location.ToString()}, {"error", r.status().ToString()});
    }
  });
  return *job;
}

}  // namespace shale::backup
