// BackupManager: backups of snapshots to S3 — incremental, deduplicated, verifiable by digest
// (docs/backup.md; the objects: docs/format/backup.md).
//
//   Create   reads a snapshot (only the chunks that changed since the newest earlier backup of
//            the volume in that place, when its snapshot is still here), uploads the chunks the
//            bucket does not hold yet, several in flight, and writes the manifest last.
//   List/Get read manifests; a backup without a manifest does not exist.
//   Verify   recomputes the snapshot digest from the objects in the bucket.
//   RestoreInto writes a backup's stored chunks into a volume and checks the digest of what
//            the volume then holds (the volume-lifecycle service creates the volume and deletes
//            it again on failure: daemon/lifecycle).
//   Delete/Prune remove manifests, then the chunks no remaining manifest references (mark and
//            sweep), never while a backup runs in the same place (locks, docs/backup.md).
//
// Volume reads and writes are background I/O (IoClass::kBackground) submitted through
// Options::background_io (the daemon: QoS, the pool's low class).
//
// Threading: every method is thread-safe and blocking; call them from control threads, never
// from a reactor. Stop() cancels operations in flight (they return Aborted) and joins the
// background jobs of EnsureBackup.
//
// Lifetime: the Engine and SnapshotManager must outlive the manager; Stop() (or destroy it)
// before stopping them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "backup/format.h"
#include "backup/location.h"
#include "backup/s3_client.h"
#include "engine/engine.h"

namespace shale::snapshot {
class SnapshotManager;
}

namespace shale::backup {

// A place and how to reach it. Empty endpoint fields take the manager's defaults.
struct Target {
  Location location;
  Endpoint endpoint;
};

struct Progress {
  std::string phase;  // "reading", "uploading", "restoring", "verifying", "checking"
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
  uint64_t uploaded_bytes = 0;  // create: compressed bytes sent so far
  uint64_t chunks_done = 0;
  uint64_t chunks_total = 0;
};
// Called every few chunks from the operation's thread. Returning false cancels the operation
// (Aborted): the control service does it when its client went away.
using ProgressFn = std::function<bool(const Progress&)>;

struct CreateOptions {
  bool full = false;  // do not look for a base: read everything (chunks still deduplicate)
  ProgressFn progress;
};

struct CreateResult {
  Manifest manifest;           // chunks cleared (chunk_count etc. set)
  std::string location;        // "s3://BUCKET/PREFIX"
  std::string full_reason;     // why the backup is not incremental (when base is empty)
  uint64_t reused_chunks = 0;  // data chunks the bucket already held (not uploaded)
  uint64_t zero_chunks = 0;    // chunks that read as zeros (not stored)
  uint64_t requests = 0;       // S3 requests, retries included
  uint64_t bytes_sent = 0;     // every request body (chunks, manifest, locks)
};

struct VerifyResult {
  Manifest manifest;   // chunks cleared
  std::string digest;  // recomputed; equal to manifest.digest
  uint64_t chunks_checked = 0;
};

struct GcResult {
  std::vector<std::string> deleted;  // backup ids whose manifests were deleted
  uint64_t chunks_deleted = 0;
  uint64_t bytes_freed = 0;
  uint64_t chunks_kept = 0;     // referenced by a remaining manifest
  bool sweep_deferred = false;  // a backup was running: chunks left for the next sweep
  std::string deferred_reason;
};

struct RestoreOptions {
  ProgressFn progress;
};

// State of a background backup started by EnsureBackup (CSI snapshots with backupTo).
struct BackupJob {
  enum class State { kRunning, kDone, kFailed };
  State state = State::kRunning;
  std::string id;  // kDone: the backup id
  Status error;    // kFailed
  uint64_t done_bytes = 0, total_bytes = 0;
};

class BackupManager {
 public:
  struct Options {
    Endpoint default_endpoint;     // when a request names none (region defaults likewise)
    std::string credentials_file;  // "" = the environment (credentials.h)
    std::string credentials_profile;
    std::string ca_file;                    // custom CA bundle for https endpoints
    unsigned parallel = 4;                  // chunk transfers in flight (1..64)
    int compression_level = 3;              // zstd
    std::string host;                       // provenance: this node
    std::string version;                    // provenance: shaled's version
    std::chrono::seconds lock_refresh{60};  // a running backup rewrites its lock this often
    std::chrono::seconds lock_stale{600};   // a lock not rewritten for this long is ignored
    std::chrono::seconds gc_wait{300};      // a backup waits this long for a running sweep
    unsigned s3_attempts = 5;               // per request (S3Config::max_attempts)
    // Layer the volume I/O of a handle goes to (the daemon: QoS); null: straight to the volume.
    std::function<std::shared_ptr<VolumeLayer>(std::shared_ptr<VolumeHandle>)> background_io;
    // Test seam: called after each chunk a backup handled (bytes done so far).
    std::function<void(uint64_t done)> chunk_hook;
  };

  BackupManager(Engine* engine, snapshot::SnapshotManager* snapshots, Options options);
  ~BackupManager();
  BackupManager(const BackupManager&) = delete;
  BackupManager& operator=(const BackupManager&) = delete;

  // Checks the configuration at start: endpoint and region syntax, the credentials file (mode
  // 0600, the profile's keys) when one is named, the CA file. Environment credentials may be
  // missing (backups then fail with a clear error).
  Status CheckConfig() const;
  // Cancels every operation in flight and waits for background jobs. Idempotent.
  void Stop();

  Result<CreateResult> Create(std::string_view snapshot_ref, const Target& target,
                              const CreateOptions& options = {});
  // Manifest headers (chunks not loaded) of the backups in the place, optionally of one volume,
  // sorted by completion time.
  Result<std::vector<Manifest>> List(const Target& target, std::string_view volume = {});
  // The whole manifest of backup `id` in the place.
  Result<Manifest> Get(const Target& target, std::string_view id);
  Result<VerifyResult> Verify(const Target& target, std::string_view id,
                              const ProgressFn& progress = nullptr);
  // Deletes the backup's manifest, then sweeps chunks nothing references any more.
  Result<GcResult> Delete(const Target& target, std::string_view id);
  // Keeps the newest `keep` backups of each volume (of `volume` only, when given), deletes the
  // older ones' manifests, then sweeps.
  Result<GcResult> Prune(const Target& target, uint32_t keep, std::string_view volume = {});
  // Writes the stored chunks of `manifest` into the volume of `handle` (at least as large as the
  // backup; never written before: only stored chunks are written), flushes, reads the first
  // manifest.size_bytes back and checks their digest. Errors name the chunk (missing: NotFound,
  // damaged: Corruption) or both digests (Corruption).
  Status RestoreInto(const std::shared_ptr<VolumeHandle>& handle, const Manifest& manifest,
                     const Target& target, const RestoreOptions& options = {});

  // Starts a backup of snapshot `ref` to `target` in the background unless one already exists
  // (a manifest of that snapshot with its digest) or is running; returns its state.
  Result<BackupJob> EnsureBackup(std::string_view ref, const Target& target);

  const Options& options() const { return options_; }

 private:
  struct Session;  // one operation: the S3 client and the place
  struct UploadState;
  Result<std::unique_ptr<Session>> Open(const Target& target) const;
  Result<std::vector<Manifest>> ListHeaders(Session& s, std::string_view volume);
  Result<Manifest> ReadManifest(Session& s, std::string_view id);
  // Locks (backup_gc.cc): writes ours, returns the live locks of the other kind.
  Result<std::vector<std::string>> TakeLock(Session& s, const std::string& name,
                                            std::string_view kind_to_check);
  Status AcquireBackupLock(Session& s, const std::string& id, const ProgressFn& progress);
  Status Sweep(Session& s, GcResult* result);
  Result<GcResult> DeleteManifests(Session& s, const std::vector<std::string>& ids);
  // Create's steps (backup_create.cc).
  struct Plan;
  Status PlanBase(Session& s, const struct SnapshotFacts& snap, bool full, Plan* plan);
  Status RunChunks(Session& s, const std::shared_ptr<VolumeHandle>& view, Plan& plan,
                   const ProgressFn& progress, CreateResult* result);
  std::string JobKey(std::string_view ref, const Target& target) const;

  Engine* const engine_;
  snapshot::SnapshotManager* const snapshots_;
  const Options options_;
  std::atomic<bool> stopping_{false};
  std::mutex jobs_mu_;
  std::map<std::string, std::shared_ptr<BackupJob>> jobs_;  // guarded by jobs_mu_
  std::vector<std::thread> job_threads_;                    // guarded by jobs_mu_
};

}  // namespace shale::backup
