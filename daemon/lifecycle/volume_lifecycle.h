// VolumeLifecycle: the one place that orchestrates a volume's life — create, clone, resize,
// snapshot, delete — together with the records other layers keep about it (snapshot layer,
// QoS, frontends), each operation in one metadata commit (docs/lifecycle.md).
//
// Frontends (the control service, the CSI controller) translate their protocol into calls on
// this service; they never change a volume through the Engine, the SnapshotManager or the
// QosManager themselves. Reads (list, get, stats) may go to those directly.
//
// Threading: every method is thread-safe and blocking (metadata commits); call it from control
// threads, never from a reactor. The subsystems serialize their own operations.
//
// Lifetime: the Engine, SnapshotManager and QosManager given to the constructor must outlive the
// service; the ExportGate (if set) must stay valid until it is cleared with SetExportGate(null).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "backup/backup_manager.h"
#include "daemon/lifecycle/capacity.h"
#include "engine/common/labels.h"
#include "engine/common/result.h"
#include "engine/engine.h"
#include "qos/settings.h"
#include "snapshot/snapshot_manager.h"

namespace shale::qos {
class QosManager;
}

namespace shale::daemon {

// What the lifecycle needs from a frontend that serves volumes to clients (the NBD server):
// closing an export while a volume or snapshot is deleted with --force, and naming its clients
// in a Busy error.
class ExportGate {
 public:
  virtual ~ExportGate() = default;
  // Refuses new clients of export `name`, disconnects its clients, runs fn once none holds the
  // export, then admits clients again. Unavailable if they did not let go within `timeout`.
  virtual Status WithExportClosed(const std::string& name, std::chrono::milliseconds timeout,
                                  const std::function<Status()>& fn) = 0;
  // "2 connected NBD client(s): tcp 127.0.0.1:4000, unix pid 12"; empty when it has none.
  virtual std::string DescribeClients(const std::string& name) const = 0;
};

// A record a frontend keeps about a volume, committed with the volume's operations and deleted
// with it. `frontend` names it ("csi"): [a-z0-9-]{1,32}. The value is opaque here.
struct FrontendRecord {
  std::string frontend;
  std::string value;
};

struct VolumeSpec {
  CreateVolumeParams params;
  std::optional<qos::QosSettings> qos;  // none: no QoS record (unlimited, weight 100)
  std::vector<FrontendRecord> records;
  // What the volume counts toward its pool's overcommit limit (capacity.h); 0: its size, or
  // nothing for a read-only volume.
  uint64_t provisioned_bytes = 0;
};

struct CloneSpec {
  std::string source;  // "VOLUME@SNAP", or "VOLUME" (through an implicit snapshot)
  std::string name;
  bool read_only = false;
  Labels labels;
  uint64_t size_bytes = 0;  // 0: the source's size; larger grows the clone in the same commit
  std::optional<qos::QosSettings> qos;
  std::vector<FrontendRecord> records;
  uint64_t provisioned_bytes = 0;  // as VolumeSpec's
};

// A volume restored from a backup (docs/backup.md, "Restoring"): `volume` as for Create, with
// params.size_bytes 0 meaning the backup's size (larger: the volume is grown, the rest reads
// zeros).
struct RestoreSpec {
  std::string backup;         // "s3://BUCKET/PREFIX/ID"
  backup::Endpoint endpoint;  // empty fields: shaled's defaults
  VolumeSpec volume;
  backup::ProgressFn progress;
};

struct DeleteOptions {
  bool force = false;  // disconnect the export's clients first (through the ExportGate)
  std::chrono::milliseconds disconnect_timeout{std::chrono::seconds(30)};
  // More records of the volume to delete in the same commit (a replicated volume's changed-region
  // records); null: none.
  VolumeRecords extra_records;
};

// Snapshot labels of a replicated volume's snapshot, on its target and on every copy
// (docs/replication.md, "Snapshots of replicated volumes"): the nodes holding a copy ("a,b,c",
// the target's first) and the volume's uuid. CSI reads the first to serve a read-only clone of
// the snapshot on each of those nodes (docs/csi.md).
inline constexpr char kSnapshotReplicasLabel[] = "shale.io/snapshot-replicas";
inline constexpr char kSnapshotVolumeUuidLabel[] = "shale.io/snapshot-volume-uuid";

// Snapshots of replicated volumes (cluster mode; daemon/replicated_volumes.h implements it,
// docs/replication.md, "Snapshots of replicated volumes").
class SnapshotReplication {
 public:
  virtual ~SnapshotReplication() = default;
  // The snapshot of a replicated volume, taken on every in-sync replica at one point of the
  // write stream; nullopt when `volume` is not replicated (the lifecycle takes it as usual).
  virtual Result<std::optional<snapshot::SnapshotInfo>> Snapshot(
      std::string_view volume, std::string_view name,
      const snapshot::CreateSnapshotOptions& options) = 0;
  // The local snapshot `deleted` is gone: its copies on the replicas go too (best effort).
  virtual void SnapshotDeleted(const snapshot::SnapshotInfo& deleted) = 0;
  // No local snapshot `volume@name`: if `volume` is (or was) replicated and this node holds no
  // replica of it, its copies on other nodes are deleted (true); false otherwise (the NotFound
  // stands).
  virtual Result<bool> DeleteCopiesElsewhere(const std::string& volume,
                                             const std::string& name) = 0;

  // A group snapshot's hold on its replicated members (docs/replication.md, "Group snapshots of
  // replicated volumes"): every one is quiesced while the hold lives; destroying it resumes them.
  class GroupHold {
   public:
    virtual ~GroupHold() = default;
    // The labels each replicated member's local snapshot carries, by volume.
    virtual const std::map<std::string, Labels>& MemberLabels() const = 0;
    // The held members this node serves without a replica of its own (through a target-only
    // anchor): they get no local member snapshot; the copies SnapshotRemotes takes on their
    // replicas are their member snapshots.
    virtual const std::set<std::string>& RemoteOnly() const = 0;
    // Takes snapshot `name` on every in-sync remote replica of every held member (after the
    // local freeze; the copies of a RemoteOnly member carry `labels` and its MemberLabels); the
    // first failure, naming the replica. The copies taken stay: the caller deletes the members,
    // whose deletes remove them.
    virtual Status SnapshotRemotes(const std::string& name, const Labels& labels) = 0;
  };
  // Quiesces the replicated volumes among `volumes`; null when none is replicated.
  // FailedPrecondition for one whose target is not open on this node (naming its node),
  // Unavailable when one does not drain in time or was fenced (every member resumed).
  virtual Result<std::unique_ptr<GroupHold>> HoldGroup(const std::vector<std::string>& volumes) = 0;
  // Snapshot `volume@name` of a replicated volume this node holds no copy of, as an in-sync
  // replica holds it (a member of a group taken here of a volume served without a replica);
  // NotFound when there is none.
  virtual Result<snapshot::SnapshotInfo> RemoteSnapshot(const std::string& volume,
                                                        const std::string& name) = 0;
};

// A group snapshot (docs/lifecycle.md, "Group snapshots"): member snapshots of several volumes
// taken at one instant, all named like the group ("VOLUME@NAME").
struct GroupSnapshotSpec {
  std::string name;                  // the group's name and every member snapshot's name
  std::vector<std::string> volumes;  // 1..64 distinct volumes
  Labels labels;                     // the group's labels; every member carries them too
};

struct GroupSnapshotInfo {
  std::string name;
  std::string id;                      // 16 hex digits, unique per group (provenance)
  std::string pool;                    // where the record lives: the first volume's pool
  std::vector<std::string> volumes;    // source volumes, in the order given
  std::vector<uint64_t> volume_ids;    // their ids then (a later volume of the name is not it)
  std::vector<std::string> snapshots;  // "VOLUME@NAME", in the same order
  Labels labels;
  uint64_t created_unix_ns = 0;
};

// The labels every member snapshot of a group carries (besides the group's own).
inline constexpr std::string_view kGroupLabel = "shale.io/group";
inline constexpr std::string_view kGroupIdLabel = "shale.io/group-id";

class VolumeLifecycle {
 public:
  // `engine` and `snapshots` (started) are required; `qos` may be null (then QoS settings in a
  // spec are refused with FailedPrecondition).
  VolumeLifecycle(Engine* engine, snapshot::SnapshotManager* snapshots, qos::QosManager* qos);
  VolumeLifecycle(const VolumeLifecycle&) = delete;
  VolumeLifecycle& operator=(const VolumeLifecycle&) = delete;

  // Snapshots of replicated volumes go through it; null clears it (before it stops).
  void SetSnapshotReplication(SnapshotReplication* r) { snapshot_replication_.store(r); }

  // The frontend whose exports WithExportClosed closes; null clears it (before it stops).
  void SetExportGate(ExportGate* gate) { gate_.store(gate); }

  // Asked before every change below (create, clone, resize, delete, restore, snapshot, delete
  // snapshot, revert, pool delete/expand/capacity) and by frontends before changes that do not
  // pass here; an error refuses the change as it is. shaled's gate is the audit log's
  // CheckWritable() (fail closed: no change goes unrecorded). Set before frontends start.
  void SetChangeGate(std::function<Status()> gate) { change_gate_ = std::move(gate); }
  Status CheckChangeGate() const { return change_gate_ ? change_gate_() : Status::Ok(); }

  // Volumes. Every request field is validated before anything is written. Create, Clone and
  // Resize are refused with NoSpace when the pool's overcommit limit would be exceeded (the
  // message names the numbers); `advice` (optional) gets lines for people about a request that
  // passed (the pool is filling up, the volume is larger than the free space).
  Result<VolumeInfo> Create(const VolumeSpec& spec, std::vector<std::string>* advice = nullptr);
  Result<snapshot::CloneResult> Clone(const CloneSpec& spec,
                                      std::vector<std::string>* advice = nullptr);
  // Grows the volume (shrinking is refused) and puts `records` (e.g. a new CSI capacity) in the
  // same commit; a resize to the current size still writes them. `provisioned_bytes`: as
  // VolumeSpec's.
  Result<VolumeInfo> Resize(std::string_view name, uint64_t size_bytes,
                            const std::vector<FrontendRecord>& records = {},
                            uint64_t provisioned_bytes = 0,
                            std::vector<std::string>* advice = nullptr);
  // Sets (adds or replaces) labels of a volume and, when provisioned_bytes != 0, what it
  // promises its pool (a shrinking promise always passes), with `extra` records of other layers
  // in the same commit. For a replica that becomes its target's anchor (docs/replication.md).
  Result<VolumeInfo> SetLabels(std::string_view name,
                               const std::map<std::string, std::string>& labels,
                               uint64_t provisioned_bytes, const VolumeRecords& extra = nullptr);
  // Deletes the volume with its clone record, QoS record and every frontend record in one
  // commit. Busy while clients hold it (the message names them), unless options.force.
  Status Delete(std::string_view name, const DeleteOptions& options = {});
  // Restores a backup as a new volume: creates it (with a "backup" frontend record marking it
  // as being restored, in the same commit), writes the backup's stored chunks, checks the
  // digest of what the volume holds against the manifest, then marks it restored. Any failure
  // deletes the half-restored volume and returns the error (naming the missing or corrupt
  // chunk); a crash meanwhile leaves a marked volume, which RecoverRestores() deletes.
  // FailedPrecondition without a backup manager (SetBackups).
  Result<VolumeInfo> Restore(const RestoreSpec& spec);
  // Deletes volumes whose restore was cut short by a crash. Call once at start, before serving.
  Status RecoverRestores();
  // The backup manager restores and the frontends use; null: backups are off. Set before
  // serving, cleared after the frontends stopped.
  void SetBackups(backup::BackupManager* backups) { backups_.store(backups); }
  backup::BackupManager* backups() const { return backups_.load(); }

  // Deletes a pool (with its volumes when force); their records go with the pool's metadata.
  Status DeletePool(std::string_view name, bool force);
  // Grows a pool online (Engine::ExpandPool) and re-evaluates its fill level.
  Result<PoolInfo> ExpandPool(std::string_view name, uint64_t size_bytes);
  // Changes a pool's thresholds and overcommit limit (persisted).
  Result<CapacitySettings> SetPoolCapacity(std::string_view name,
                                           const CapacitySettingsUpdate& update);
  // Records what a live volume counts toward its pool (a frontend upgrading its older volumes).
  Status SetProvisioned(const VolumeInfo& volume, uint64_t bytes);

  // Snapshots.
  Result<snapshot::SnapshotInfo> Snapshot(std::string_view volume, std::string_view name,
                                          const snapshot::CreateSnapshotOptions& options = {});
  Result<snapshot::DeleteSnapshotResult> DeleteSnapshot(std::string_view ref,
                                                        const DeleteOptions& options = {});
  // Snapshot `ref` ("VOLUME@SNAP") on this node, else as the replicas of a replicated volume
  // served here without a replica hold it (SnapshotReplication::RemoteSnapshot).
  Result<snapshot::SnapshotInfo> FindSnapshot(std::string_view ref);
  // Rolls the volume back to its snapshot ("SNAP" or "VOLUME@SNAP"). Busy while clients hold
  // the volume (the message names them).
  Status Revert(std::string_view volume, std::string_view snapshot);

  // Group snapshots (group_snapshots.cc). Create freezes every volume at one instant
  // (SnapshotManager::CreateGroup, Engine::FreezeVolumes) and commits the group record with the
  // first local member's pool's part of it. Idempotent: the same name with the same volumes (in
  // any order) returns the existing group (`created` false); the same name with other volumes is
  // AlreadyExists. Replicated members are held by SnapshotReplication::HoldGroup: quiesced
  // before the freeze, their replicas' copies taken after it (a failed copy deletes the group).
  // A member served here without a replica (GroupHold::RemoteOnly) is not frozen here: its
  // replicas' copies are its member snapshot; a group of only such members commits its record
  // alone, after the copies.
  Result<GroupSnapshotInfo> CreateGroupSnapshot(const GroupSnapshotSpec& spec,
                                                bool* created = nullptr);
  Result<GroupSnapshotInfo> GetGroupSnapshot(std::string_view name);
  // Every group of every online pool, sorted by name.
  Result<std::vector<GroupSnapshotInfo>> ListGroupSnapshots();
  // Deletes the member snapshots still there (clones made from them keep working: the engine
  // keeps what they read), then the record. NotFound for an unknown group; Busy (naming the
  // clients) while a member is exported, unless options.force.
  Status DeleteGroupSnapshot(std::string_view name, const DeleteOptions& options = {});

  // The frontend record of a live volume; nullopt when it has none.
  Result<std::optional<std::string>> GetFrontendRecord(const VolumeInfo& volume,
                                                       std::string_view frontend);
  // Writes (replaces) the frontend record of a live volume on its own (a retried CSI create
  // completing a record lost to a crash, a record upgraded from an older format).
  Status PutFrontendRecord(const VolumeInfo& volume, std::string_view frontend,
                           std::string_view value);

  Engine* engine() const { return engine_; }
  CapacityPolicy* capacity() { return &capacity_; }
  snapshot::SnapshotManager* snapshots() const { return snapshots_; }
  qos::QosManager* qos() const { return qos_; }

 private:
  Status CheckSpecQos(const std::optional<qos::QosSettings>& settings) const;
  // Deletes a group's members still there, then its record (group_mu_ held).
  Status DeleteGroupLocked(const GroupSnapshotInfo& g, const DeleteOptions& options);
  static Status CheckRecords(const std::vector<FrontendRecord>& records);
  // Puts the QoS and frontend records of new volume `volume_id` into the batch; QoS settings
  // were validated before (CheckSpecQos).
  static void AddRecords(const std::optional<qos::QosSettings>& settings,
                         const std::vector<FrontendRecord>& records, uint64_t volume_id,
                         std::string_view name, MetaBatch* batch);
  void AdoptQos(const VolumeInfo& volume, const std::optional<qos::QosSettings>& settings);
  // Busy errors name the export's clients and what would help (`force_hint`: whether --force
  // would).
  Status ExplainBusy(const Status& status, const std::string& kind, const std::string& name,
                     const std::string& action, bool force_hint) const;

  // The pool a create without --pool lands in (as the engine chooses it); empty if none fits.
  std::string ResolvePool(std::string_view pool) const;

  Engine* const engine_;
  snapshot::SnapshotManager* const snapshots_;
  qos::QosManager* const qos_;
  std::atomic<ExportGate*> gate_{nullptr};
  std::atomic<backup::BackupManager*> backups_{nullptr};
  std::atomic<SnapshotReplication*> snapshot_replication_{nullptr};
  std::function<Status()> change_gate_;  // set before frontends start, then only read
  // Serializes group snapshot creates and deletes (check-then-create must be atomic).
  std::mutex group_mu_;
  CapacityPolicy capacity_;
  // Serializes the operations that add provisioned bytes (create, clone, resize) from their
  // overcommit check to their commit, so two requests cannot both take the last of the limit.
  std::mutex provision_mu_;
};

// The frontend record of a volume made by Restore ("restoring" until it completed).
inline constexpr std::string_view kRestoreRecordFrontend = "backup";

// Record keys (pool metadata): Extension("frontend", hex16(volume id) "/" frontend). Exposed
// for tests and docs/format/metadata.md.
std::string FrontendRecordKey(uint64_t volume_id, std::string_view frontend);

}  // namespace shale::daemon
