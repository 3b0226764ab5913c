// SnapshotManager: user-level snapshots, clones, provenance digests and export/import on top of
// the engine's layered images (docs/snapshots.md, "User-level semantics").
//
// The engine provides the mechanism (frozen images, clones, merge/defer on delete, revert,
// flatten, changed ranges); this class provides names ("VOLUME@SNAP"), labels, implicit
// snapshots for clones of live volumes, content digests, and streams. Its records live in the
// pool's metadata (snapshot/snapshot.proto) and commit atomically with the engine operation
// they describe wherever the engine offers ExtraRecords; the few multi-step operations (clone of
// a live volume, import) are repaired by Start() after a crash.
//
// Threading: every public method is thread-safe (the daemon calls them from gRPC threads) and
// blocking; none may be called on a reactor. Control operations are serialized by one mutex;
// long ones (flatten, export, import, verify, digest computation) run without it and keep
// conflicting operations away by holding an image view (the engine refuses to delete an open
// snapshot) or by marking the volume busy here.
//
// Lifetime: the Engine must outlive the manager; call Stop() (or destroy the manager) before
// Engine::Shutdown(), after the callers of long operations have returned.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/common/checksum.h"
#include "engine/engine.h"
#include "snapshot/names.h"
#include "snapshot/snapshot.pb.h"

namespace shale::snapshot {

class StreamReader;
class StreamSink;
struct StreamInfo;
class StreamSource;

enum class DigestState : uint8_t { kPending, kReady, kFailed };
std::string_view DigestStateName(DigestState state);  // "pending", "ready", "failed"

struct SnapshotInfo {
  std::string volume;  // the volume it was taken from: the snapshot's namespace
  std::string name;
  std::string full_name() const { return volume + "@" + name; }
  std::string pool;
  uint64_t image_id = 0;
  uint64_t source_volume_id = 0;
  // The volume it was taken from still exists (a later volume of the same name does not count).
  bool source_volume_live = false;
  uint64_t size_bytes = 0;
  uint64_t created_unix_ns = 0;
  Labels labels;
  bool implicit = false;     // taken by "clone create VOLUME NEWVOL"; hidden by default
  std::string implicit_for;  // the clone it was taken for
  DigestState digest_state = DigestState::kPending;
  std::string digest;              // 32 hex digits once ready
  std::string digest_error;        // when failed
  uint64_t digest_done_bytes = 0;  // progress while pending (0 while queued)
  uint64_t digest_total_bytes = 0;
  // Space (filled when asked for): bytes stored in the snapshot's own clusters; bytes only it
  // holds (what deleting it frees now); bytes of it that the volume, later snapshots or clones
  // still read (kept after deleting it, by them).
  uint64_t data_bytes = 0;
  uint64_t exclusive_bytes = 0;
  uint64_t shared_bytes = 0;
  std::vector<std::string> clones;  // live clones made from it (not flattened)
  // Its creation is durable. Only Create's answer can say false (its commit still in flight;
  // the space fields are then not filled): every later read waits for that commit.
  bool durable = true;
};

struct CloneInfo {
  std::string volume;
  std::string source;  // "VOLUME@SNAP"
  std::string source_volume;
  std::string source_snapshot;
  bool implicit_source = false;  // cloned from the live volume (through an implicit snapshot)
  bool source_exists = false;    // the source snapshot is still listed (not deleted)
  bool read_only = false;
  // The source snapshot's digest (32 hex digits; empty while it is pending). A read-only clone
  // has exactly this content.
  std::string source_digest;
  uint64_t created_unix_ns = 0;
  bool detached = false;  // flattened: it no longer reads anything through the source
  uint64_t detached_unix_ns = 0;
};

struct CloneResult {
  VolumeInfo volume;
  CloneInfo clone;
};

// Space of one volume (volume show): what it alone holds and what it shares with snapshots.
struct VolumeSpace {
  std::string volume;
  uint64_t size_bytes = 0;
  uint64_t owned_bytes = 0;          // clusters the volume alone holds: deleting it frees this
  uint64_t shared_bytes = 0;         // data it reads through snapshots (held by them)
  uint64_t written_bytes = 0;        // data written since its newest snapshot (in owned clusters)
  uint32_t snapshot_count = 0;       // snapshots of this volume (implicit included)
  uint64_t snapshot_data_bytes = 0;  // sum of their data_bytes
  uint64_t snapshot_exclusive_bytes = 0;  // sum of their exclusive_bytes
};

struct CreateSnapshotOptions {
  Labels labels;
  bool wait_digest = false;  // return after the digest is computed (or failed)
  // Return once the snapshot is durable (survives a crash). Otherwise Create returns at the cut
  // (writes acknowledged before the call are in it, later ones are not) with durable = false
  // when its commit is still in flight; a crash before that commit leaves no snapshot.
  bool wait_durable = false;
};

struct ListOptions {
  std::string volume;             // empty: every volume's snapshots
  bool include_implicit = false;  // snapshots taken for clones of live volumes
  bool with_space = true;         // fill data/exclusive/shared bytes (reads image entries)
};

struct CloneOptions {
  bool read_only = false;   // enforced by the engine: writes fail with PermissionDenied
  Labels labels;            // labels of the new volume
  uint64_t size_bytes = 0;  // 0: the source's size; larger grows the clone in the same commit
  // Records of other layers (QoS, frontends) committed with the clone, given its volume id.
  VolumeRecords extra;
};

struct DeleteSnapshotResult {
  // Live clones that still read the snapshot's data: its space returns when they are deleted
  // or flattened (the engine defers it; nothing breaks).
  std::vector<std::string> still_read_by;
};

struct ExportOptions {
  std::string base;        // "VOLUME@SNAP": write only what changed since it (incremental)
  bool overwrite = false;  // file exports: replace an existing file
  // Bytes of the snapshot scanned so far; runs on the exporting thread.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Polled with progress; true stops the export with Aborted (a file export removes its
  // partial file).
  std::function<bool()> cancelled;
};

struct ExportResult {
  std::string snapshot;
  std::string base;               // empty for a full stream
  bool content_compared = false;  // incremental, base not an ancestor: changes found by content
  uint64_t stream_bytes = 0;
  uint64_t data_bytes = 0;  // payload bytes of data records
  uint64_t records = 0;
  std::string digest;
};

struct ImportOptions {
  std::string pool;  // full imports: pool of the new volume (empty: default, or the only pool)
  std::function<void(uint64_t stream_bytes)> progress;  // stream bytes read; importing thread
  // Polled with progress; true stops the import with Aborted, and it is undone like any failed
  // import (a full import's volume is deleted, an incremental one's changes reverted).
  std::function<bool()> cancelled;
};

struct ImportResult {
  SnapshotInfo snapshot;
  bool incremental = false;
  bool created_volume = false;
  uint64_t stream_bytes = 0;
};

class SnapshotManager {
 public:
  struct Options {
    // Test seam: called by the digest worker after each piece it hashed, with the bytes done
    // and the job's cancel flag (tests park the worker mid-job with it). Null in production.
    std::function<void(uint64_t done, const std::atomic<bool>& cancelled)> digest_hook;
    // Where the background I/O of digests, verify, export and import goes: given a handle the
    // manager opened (a volume, or a snapshot's view), the layer to submit to on its reactor,
    // held while the job runs; null (or a null result) submits straight to the volume. The
    // daemon routes it through QoS (QosManager::Wrap), where IoClass::kBackground requests are
    // scheduled in the pool's low class. Called from the manager's threads.
    std::function<std::shared_ptr<VolumeLayer>(std::shared_ptr<VolumeHandle>)> background_io;
    // What paces flatten's copy batches (Engine::FlattenVolume's admission): given a handle of
    // the volume the manager opened, the admission to use, held while the flatten runs; null
    // (or a null result) copies unpaced. The daemon routes it through QoS
    // (QosManager::OpenBackgroundAdmission: the pool's low class). Called from the caller's
    // thread.
    std::function<std::shared_ptr<BackgroundAdmission>(std::shared_ptr<VolumeHandle>)>
        background_admission;
  };

  // `engine` must outlive the manager.
  explicit SnapshotManager(Engine* engine, Options options = {});
  ~SnapshotManager();  // Stop()s
  SnapshotManager(const SnapshotManager&) = delete;
  SnapshotManager& operator=(const SnapshotManager&) = delete;

  // Repairs what a crash interrupted (imports, clone records, implicit snapshots no clone needs),
  // queues pending digests and starts the digest worker. Call once, after Engine::Open.
  Status Start();
  // Cancels the digest job in progress (it stays pending and restarts with the next Start),
  // joins the worker. Idempotent.
  void Stop();

  // --- snapshots ---
  // Freezes `volume` as VOLUME@NAME (no data copied; writes pause only while those in flight
  // drain). Crash-consistent: writes acknowledged before the call are in it, later ones are not.
  // The digest is computed in the background unless options.wait_digest. Errors: NotFound
  // (volume), AlreadyExists (name taken, also by a snapshot of an earlier volume of that name),
  // InvalidArgument (names, labels), FailedPrecondition (chain limit of 127 snapshots; busy).
  Result<SnapshotInfo> Create(std::string_view volume, std::string_view name,
                              const CreateSnapshotOptions& options = {});
  // Freezes every volume of `volumes` at one instant (Engine::FreezeVolumes) as VOLUME@NAME,
  // each an ordinary snapshot (labels, digest, clone source). `extra` (optional) adds records to
  // each pool's commit (the first volume's pool is committed last): the group's provenance.
  // `member_labels` (optional) adds labels to the member of the volume it names (the
  // replication's per-member labels). Errors as Create's, plus InvalidArgument for an empty or
  // repeated volume list; on any error no member was taken.
  using GroupRecords = std::function<void(std::string_view pool, MetaBatch* batch)>;
  Result<std::vector<SnapshotInfo>> CreateGroup(
      const std::vector<std::string>& volumes, std::string_view name,
      const CreateSnapshotOptions& options, const GroupRecords& extra = nullptr,
      const std::map<std::string, Labels>& member_labels = {});
  // Block metadata of snapshots (CSI SnapshotMetadata; docs/csi.md): (offset, length) ranges,
  // 4 KiB aligned, sorted, disjoint and merged, with the snapshot's size.
  struct Ranges {
    uint64_t size_bytes = 0;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
  };
  // The allocated ranges of "VOLUME@SNAP": blocks holding data as the snapshot reads them
  // (through its parents too). Never-written, discarded and zeroed blocks are not allocated.
  Result<Ranges> AllocatedRanges(std::string_view ref);
  // The ranges whose content may differ between snapshots `base` and `target` of one volume
  // (the same source volume id): blocks written, discarded or zeroed after base up to target,
  // and everything past base's size. Size is target's. NotFound (either), InvalidArgument (other
  // volumes; target older than base), FailedPrecondition (base is not in target's history: the
  // volume was reverted past it).
  Result<Ranges> ChangedRanges(std::string_view base, std::string_view target);
  // Sorted by volume, then creation time.
  Result<std::vector<SnapshotInfo>> List(const ListOptions& options = {});
  // "VOLUME@SNAP"; implicit snapshots too. Includes space usage and digest progress.
  Result<SnapshotInfo> Get(std::string_view ref);
  // Deletes the snapshot. Clones made from it keep working: its space returns only when
  // nothing reads it any more. Cancels its digest job first. Busy while it is exported.
  Result<DeleteSnapshotResult> Delete(std::string_view ref);
  // Waits until the digest is ready or failed (computing it here if the worker is not running).
  Result<SnapshotInfo> WaitDigest(std::string_view ref);
  // Recomputes the digest from the data on disk. Corruption, naming both digests, when it
  // differs from the recorded one; records it when none was recorded yet. Returns the digest.
  Result<std::string> Verify(std::string_view ref);
  // Read-only view for the NBD export "VOLUME@SNAP": writes fail with PermissionDenied; the
  // snapshot cannot be deleted while the handle lives.
  Result<std::shared_ptr<VolumeHandle>> OpenSnapshot(std::string_view ref);

  // --- clones and volumes ---
  // Creates volume `new_volume` from "VOLUME@SNAP", or from the live "VOLUME" through an
  // implicit snapshot (deleted automatically with the last clone that needs it).
  Result<CloneResult> Clone(std::string_view source, std::string_view new_volume,
                            const CloneOptions& options = {});
  // The clone's provenance; nullopt when the volume is not a clone. NotFound for no volume.
  Result<std::optional<CloneInfo>> GetCloneInfo(std::string_view volume);
  Result<std::vector<CloneInfo>> ListClones();
  // Rolls `volume` back to its snapshot `snapshot` ("SNAP" or "VOLUME@SNAP"): content and size.
  // The volume must not be open; the snapshot must be in its history (not reverted past or
  // flattened away). Later snapshots stay.
  Status Revert(std::string_view volume, std::string_view snapshot);
  // Copies everything the volume reads through snapshots into its own space, then detaches it;
  // clients may keep using it. A clone stops depending on its source (an implicit source
  // snapshot is deleted when no other clone needs it). `progress` counts clusters and runs on
  // the volume's reactor: it must not block.
  Status Flatten(std::string_view volume,
                 const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr);
  // Deletes the volume (Engine::DeleteVolume) and this layer's records about it: its clone
  // record (in the same commit, with `extra`: other layers' records of the volume) and then an
  // implicit source snapshot no other clone needs. Its own snapshots stay.
  Status DeleteVolume(std::string_view volume, const VolumeRecords& extra = nullptr);
  Result<VolumeSpace> GetVolumeSpace(std::string_view volume);

  // --- streams (docs/format/snapshot-stream.md) ---
  // Writes the snapshot as a stream: everything, or (options.base) only what changed since the
  // base — from the image tree when the base is an ancestor, else by comparing content. The
  // base must not be larger than the snapshot.
  Result<ExportResult> Export(std::string_view ref, const std::string& path,
                              const ExportOptions& options = {});
  Result<ExportResult> Export(std::string_view ref, StreamSink* sink,
                              const ExportOptions& options = {});
  // Recreates a snapshot from a stream. Full: creates `volume` (must not exist) and
  // VOLUME@SNAP with the stream's name and labels. Incremental: `volume` must hold a snapshot
  // named like the stream's base with the base's digest; the volume is reverted to it (later
  // changes are discarded), the changes applied, and the snapshot taken. The imported data's
  // digest must equal the stream's; on any failure everything the import did is undone.
  Result<ImportResult> Import(const std::string& path, std::string_view volume,
                              const ImportOptions& options = {});
  Result<ImportResult> Import(StreamSource* source, std::string_view volume,
                              const ImportOptions& options = {});

 private:
  struct Found {
    std::string pool;
    std::string key;  // "VOLUME@SNAP"
    SnapshotRecord rec;
  };
  struct CloneEntry {
    std::string pool;
    CloneRecord rec;
  };
  struct DigestJob {
    std::string pool;
    std::string key;
    uint64_t image_id = 0;
    std::atomic<bool> cancel{false};
    std::atomic<uint64_t> done_bytes{0};
    std::atomic<uint64_t> total_bytes{0};
  };
  using Lock = std::unique_lock<std::mutex>;

  // *Locked members run with mu_ held. Those taking `Lock&` may release it while they wait
  // (digest computation, a cancelled digest job) and always return with it held again; callers
  // re-read whatever state they need afterwards.
  std::vector<std::string> OnlinePools();
  Result<std::optional<SnapshotRecord>> ReadRecordLocked(const std::string& pool,
                                                         const std::string& key,
                                                         bool committed_only = false);
  // committed_only: does not wait for snapshots created at their cut (see pending_).
  Result<std::optional<Found>> LookupLocked(const SnapshotRef& ref, bool committed_only = false);
  Result<Found> FindLocked(const SnapshotRef& ref);
  Result<std::vector<Found>> ScanSnapshotsLocked(std::string_view volume);
  Result<std::vector<CloneEntry>> ScanClonesLocked();
  bool CloneLiveLocked(const CloneEntry& clone);
  Result<SnapshotInfo> DescribeLocked(const Found& found, bool with_space,
                                      const std::vector<CloneEntry>& clones);
  CloneInfo DescribeCloneLocked(const CloneEntry& clone);
  Status CheckNotBusyLocked(std::string_view volume);
  // With `durable` set, returns at the freeze's cut and *durable says whether its commit is
  // already durable; without, returns once it is. `since`: when the request began (for the log).
  using TimePoint = std::chrono::steady_clock::time_point;
  Result<Found> CreateLocked(const VolumeInfo& volume, std::string_view name, const Labels& labels,
                             bool implicit, std::string_view implicit_for, bool enqueue_digest,
                             bool* durable = nullptr, std::optional<TimePoint> since = {});
  Status DeleteSnapshotLocked(Lock& lock, const Found& found);
  std::string ImplicitNameLocked(const std::string& volume, std::string_view clone);
  // Drops clone records of volumes that are gone, fills missing clone volume ids, deletes
  // implicit snapshots no live clone reads through. With check_chains (at start: it walks every
  // clone's image chain), also marks clones flattened that no longer read their source. Best
  // effort: problems are logged.
  void CollectLocked(Lock& lock, bool check_chains = false);
  // Whether `image` is in the chain from `head` up (unknown: true).
  bool ReadsThroughLocked(const std::string& pool, uint64_t head, uint64_t image);
  Status RecoverImportsLocked(Lock& lock);

  // Digests.
  void EnqueueDigestLocked(const Found& found);
  void CancelDigestLocked(Lock& lock, const std::string& pool, uint64_t image_id);
  std::shared_ptr<DigestJob> JobForLocked(const std::string& pool, uint64_t image_id);
  void WorkerMain();
  // The recorded digest, or computed from the data through a view (without the lock) and
  // recorded. Corruption if a digest recorded meanwhile differs.
  Result<Hash128> EnsureDigestLocked(Lock& lock, const Found& found);
  // Records a computed digest (and in clone records still waiting for it); `extra` commits in
  // the same batch (import completes atomically with it).
  Status StoreDigestLocked(const std::string& pool, const std::string& key, uint64_t image_id,
                           const Hash128& digest, MetaBatch extra = MetaBatch());
  Status StoreDigestFailureLocked(const std::string& pool, const std::string& key,
                                  uint64_t image_id, const Status& error);
  Result<Hash128> ComputeDigest(const std::shared_ptr<VolumeHandle>& view,
                                const std::atomic<bool>* cancel, DigestJob* job);
  // Options::background_io for `handle`, or null (submit to the volume).
  std::shared_ptr<VolumeLayer> BackgroundTarget(const std::shared_ptr<VolumeHandle>& handle) const;

  // Streams (stream_ops.cc).
  Result<ExportResult> ExportIncremental(Lock& lock, const Found& target, const Found& base,
                                         StreamSink* sink, const ExportOptions& options);
  // Import, in phases: plan (check the stream against the target; nothing changes), write the
  // marker, prepare the volume, apply the records without the lock, finish (snapshot, check the
  // digest, commit with the marker's removal). After the marker, every failure undoes the
  // import through FailImportLocked.
  struct ImportPlan;
  Result<ImportResult> ImportLocked(Lock& lock, StreamReader& reader, const std::string& volume,
                                    const ImportOptions& options);
  // Full: the volume must not exist. Incremental: the volume must hold the stream's base (see
  // CheckImportBaseLocked). May release the lock while it hashes the base.
  Result<ImportPlan> PlanImportLocked(Lock& lock, const StreamReader& reader,
                                      const std::string& volume, const ImportOptions& options);
  // The volume's snapshot named like the stream's base, taken from this volume, with the size
  // and digest the stream was made against.
  Result<Found> CheckImportBaseLocked(Lock& lock, const StreamReader& reader,
                                      const VolumeInfo& vol);
  // Full: creates the volume (and records its id in the marker). Incremental: reverts the volume
  // to the base and grows it to the stream's size.
  Status PrepareImportVolumeLocked(Lock& lock, const StreamInfo& info, ImportPlan& plan);
  // Writes the stream's records to the volume; returns the digest its end record carries. Runs
  // without the lock.
  Result<Hash128> ApplyImportRecords(const std::shared_ptr<VolumeHandle>& handle,
                                     StreamReader& reader, const ImportOptions& options);
  // Snapshots the volume, checks the imported data against `stream_digest`, records the digest
  // and removes the marker in one commit.
  Result<ImportResult> FinishImportLocked(Lock& lock, const StreamReader& reader,
                                          const ImportPlan& plan, const Hash128& stream_digest);
  // Undoes the import (an incomplete undo is logged and retried by Start()); returns `st`.
  Status FailImportLocked(Lock& lock, const ImportPlan& plan, Status st);
  Result<std::string> ResolvePoolLocked(const std::string& pool);
  // Removes what an import left behind (its snapshot; the volume of a full import, or the
  // applied changes of an incremental one) and its marker.
  Status UndoImportLocked(Lock& lock, const ImportRecord& marker, const std::string& pool);

  Engine* const engine_;
  const Options options_;
  std::mutex mu_;  // serializes control operations; guards everything below
  // Snapshots created at their cut whose commit is in flight ("VOLUME@SNAP"): so that a create
  // can check a name without waiting for those commits. Own mutex: the commit's callback
  // (on a reactor) removes its name and must never wait for mu_.
  struct PendingCreates {
    std::mutex mu;
    std::set<std::string> keys;
  };
  const std::shared_ptr<PendingCreates> pending_ = std::make_shared<PendingCreates>();
  std::map<std::string, std::string, std::less<>> busy_;  // volume -> long operation on it
  std::condition_variable cv_;  // digest jobs finished, the worker stopped
  std::deque<std::shared_ptr<DigestJob>> jobs_;
  std::shared_ptr<DigestJob> current_;  // the job the worker is computing
  std::thread worker_;
  bool running_ = false;
  bool stopping_ = false;
};

}  // namespace shale::snapshot
