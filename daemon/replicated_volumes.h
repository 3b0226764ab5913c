// ReplicatedVolumes: the replicated volumes whose target is this shaled (issue 11,
// docs/replication.md, "Replicated volumes in shaled"). A Frontend of cluster mode, started after
// the ClusterNode (it needs the store) and stopped before it.
//
//   - Create places the replicas (cluster::PlaceReplicas: the local node first, then by free
//     capacity), creates each remote one (CREATE_REPLICA through replication/replica_admin.h),
//     the local one as an engine volume labelled with the volume's uuid (kReplicaUuidLabel,
//     through the VolumeLifecycle), then the membership key volumes/<name> (etcd Txn: epoch 1,
//     every replica healthy and in sync, target = this node), and opens the target. Any failure
//     undoes what was made.
//   - The target of a volume: its I/O path below QoS is a replication::ReplicationLayer with a
//     LocalReplica and a RemoteReplica per peer (QoS asks LowerLayer() when it wraps the volume),
//     its MembershipClient a StoreMembership (etcd compare-and-swap). Targets are opened again at
//     start from the local volumes that carry the label and whose membership names this node.
//   - A repair thread reconnects replicas that are out once their node is up (backoff 0.5 s
//     doubling to 8 s), rebuilds them (replication::Rebuilder over ChangedRegions) and joins them.
//   - Delete closes the target, deletes the remote replicas (DELETE_REPLICA), the local volume and
//     the membership key.
//
// Threading: every public method is blocking and thread-safe; control threads only.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/cluster_store.h"
#include "daemon/daemon.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/ops/metrics_collector.h"
#include "engine/common/result.h"
#include "engine/common/uuid.h"
#include "qos/settings.h"
#include "replication/auth.h"
#include "replication/transport.h"

namespace shale {
class Reactor;
}
namespace shale::replication {
class ReplicaClient;
class ReplicationLayer;
class ReplicaTarget;
struct ReplicaServerOptions;
struct ReplicaStatus;
}  // namespace shale::replication

namespace shale::daemon {

class ClusterNode;

struct ReplicatedVolumesOptions {
  std::string node_name;
  replication::ClusterSecret secret;
  // A replica request older than this fails the replica (--replica-timeout); also how long a
  // membership change may take before the writes waiting for it fail.
  std::chrono::milliseconds replica_timeout{5000};
  std::chrono::milliseconds connect_timeout{3000};  // connect + authenticate + OPEN
  uint64_t rebuild_bps = 0;                         // 0: no cap
  // --replica-replace-after: a replica whose node has been down this long (as this node saw it)
  // is replaced by a new one on another node (docs/replication.md, "Replacing a replica"); 0:
  // never.
  std::chrono::milliseconds replace_after{600000};
  // Every connection to a peer's replica service goes through it: the node's replica transport
  // (TCP, or mutual TLS with --cluster-tls-dir). Required; outlives the ReplicatedVolumes.
  replication::Transport* transport = nullptr;
  // Raises the persisted epoch of this node's replica of a volume (through its replica server,
  // ReplicaServer::RaiseEpoch) when this node takes the volume over; null without a replica
  // listener (then nothing else can reach the local replica).
  std::function<Status(const std::string& volume, uint64_t epoch)> raise_local_epoch;
};

// One replica's copy of a snapshot, as `snapshot verify` reports it.
struct ReplicaDigest {
  std::string node;
  std::string digest;  // empty when it could not be computed
  Status status;       // why not
};

// The membership form of QoS settings (replicated_qos.cc): set fields by name, and back
// (InvalidArgument for an unknown field or invalid settings).
std::map<std::string, uint64_t> QosToMembership(const qos::QosSettings& settings);
Result<qos::QosSettings> QosFromMembership(const std::map<std::string, uint64_t>& fields);

struct ReplicatedSpec {
  VolumeSpec volume;
  uint32_t replicas = 1;
  std::vector<std::string> replica_nodes;  // --replica-nodes; empty: any
  uint32_t min_in_sync = 1;
  std::string node_selector;  // --replica-node-selector (cluster/node_selector.h); "": any node
  // Where the data comes from (docs/replication.md, "Replicated clones and restores"); at most
  // one of source and backup. "VOLUME@SNAP": a replicated clone of that snapshot, which this
  // node must hold a copy of; "VOLUME": a clone of this node's (not replicated) volume as it is
  // now; "": an empty volume.
  std::string source;
  // "s3://BUCKET/PREFIX/ID": this node restores the backup into its replica (VolumeLifecycle::
  // Restore: digest checked), the others start empty and are filled by the first target.
  std::string backup;
  backup::Endpoint backup_endpoint;  // empty fields: shaled's defaults
  backup::ProgressFn restore_progress;
};

// `shale qos rebuild-bps`: the node's rebuild rate cap and the volumes rebuilding now.
struct RebuildRate {
  uint64_t bps = 0;  // 0: no cap
  std::vector<std::string> running;
};

// One replica as `shale replica list` shows it.
struct ReplicaReport {
  std::string node;
  std::string state;  // healthy, rebuilding, faulted, stale
  uint64_t generation = 0;
  bool local = false;
  uint64_t rebuild_done_bytes = 0, rebuild_total_bytes = 0, rebuild_sent_bytes = 0;
  uint32_t rebuilds = 0;
  std::string last_error;
};

struct ReplicasReport {
  cluster::Membership membership;
  std::vector<ReplicaReport> replicas;  // in the membership's order
  bool fenced = false;                  // this node's target was fenced by a newer one
};

class ReplicatedVolumes final : public Frontend, public SnapshotReplication {
 public:
  // `lifecycle` and `cluster` must outlive this object.
  ReplicatedVolumes(VolumeLifecycle* lifecycle, ClusterNode* cluster,
                    ReplicatedVolumesOptions options);
  ~ReplicatedVolumes() override;  // Stop()s
  ReplicatedVolumes(const ReplicatedVolumes&) = delete;
  ReplicatedVolumes& operator=(const ReplicatedVolumes&) = delete;

  std::string_view name() const override { return "replication"; }
  std::string endpoint() const override;
  // Opens the target of every replicated volume of this node (a target that cannot open now is
  // retried by the repair thread), starts the repair thread.
  Status Start() override;
  void Stop() override;

  Result<VolumeInfo> Create(const ReplicatedSpec& spec, std::vector<std::string>* advice);
  // Whether `name` is a replicated volume on this node (a target or a replica held for another).
  bool IsReplicated(const std::string& name);
  // Whether `name` is a replicated volume of the cluster this node holds nothing of (no local
  // volume by that name, a membership in etcd): one it may attach (a target without a replica).
  bool IsElsewhere(const std::string& name);
  // The nodes holding a replica of `name` when this node holds none (no local volume of that
  // name, or only a target's anchor): where its snapshots' copies are. Empty otherwise.
  std::vector<std::string> HoldersElsewhere(const std::string& name);
  // The snapshots of the volumes this node serves without a replica of its own (`volume`: that
  // one only; "": every one), read from an in-sync replica of each (LIST_SNAPSHOTS): what
  // `snapshot list` shows for them here. A `volume` named that this node holds none of (not even
  // an anchor): its snapshots as its in-sync replicas hold them. A volume none of whose replicas
  // answers is left out (logged).
  std::vector<snapshot::SnapshotInfo> RemoteSnapshots(const std::string& volume);
  // The nodes holding a replica of `name` (its membership); empty when it is not replicated
  // (this node has a volume of that name that is no replica, or the cluster has none) or its
  // membership cannot be read (CSI's accessible topology).
  std::vector<std::string> ReplicaNodes(const std::string& name);
  // The membership of replicated volume `name` as etcd holds it, for callers on a node that may
  // hold none of it (CSI's controller); NotFound when the cluster has no such volume.
  Result<cluster::Membership> MembershipOf(const std::string& name);
  // Deletes replicated volume `name`: on its target (or a node of a detached one's replicas) its
  // local volume, then the remote replicas and the membership. On a node holding nothing of it
  // (DeleteElsewhere): while it is detached, or attached on a node whose lease expired, its
  // membership (compare-and-swap), then its replicas; FailedPrecondition while its target's
  // lease lives. NotFound when neither this node nor the cluster knows it.
  Status Delete(const std::string& name, const DeleteOptions& options);
  Result<ReplicasReport> List(const std::string& name);
  // The replicas of every volume this node is the target of, for the metrics: the layer's live
  // states (no store read: a scrape never waits for etcd) and the rebuild byte counters.
  std::vector<ops::ReplicaSample> Metrics();
  // The rebuild rate cap of this node (--rebuild-bps at start): every rebuild that runs or
  // starts from now on is paced by it (not persisted: the flag sets it at the next start).
  RebuildRate SetRebuildRate(uint64_t bps);
  RebuildRate GetRebuildRate();
  // `shale volume force-recover NAME --from NODE`: the only way on when the target's replica is
  // not in the recorded in-sync set (cascading failure): in_sync = [NODE] (this node; any
  // replica's node when this node serves the volume without a replica), every other replica
  // stale (compared region by region when it returns), epoch + 1; logged. Returns what may be
  // lost, for people.
  Result<std::string> ForceRecover(const std::string& name, const std::string& from);

  // For QoS (QosManagerOptions::lower_layer): the replication layer of a volume this node is the
  // target of; null for a volume that is not replicated; Unavailable for a replica held for
  // another target, or a target that is not open (yet).
  Result<std::shared_ptr<VolumeLayer>> LowerLayer(Volume& volume);

  // --- snapshots (replicated_snapshots.cc) ---
  // SnapshotReplication: on the target, quiesces the volume, takes the snapshot locally and on
  // every in-sync replica (all or none), resumes. On a replica held for another target:
  // FailedPrecondition.
  Result<std::optional<snapshot::SnapshotInfo>> Snapshot(
      std::string_view volume, std::string_view name,
      const snapshot::CreateSnapshotOptions& options) override;
  void SnapshotDeleted(const snapshot::SnapshotInfo& deleted) override;
  // SnapshotReplication: on a node holding no replica of `volume` (none, or only its target's
  // anchor), deletes the copies of snapshot `name` on its replicas, or, `volume` deleted, on
  // every node holding a copy of it (DeleteCopiesOfDeletedVolume); false when no node held one,
  // or this node holds a replica of `volume`.
  Result<bool> DeleteCopiesElsewhere(const std::string& volume, const std::string& name) override;
  // SnapshotReplication: quiesces the replicated members of a group snapshot (their targets must
  // be open here), takes their replicas' copies after the local freeze, resumes.
  Result<std::unique_ptr<GroupHold>> HoldGroup(const std::vector<std::string>& volumes) override;
  // SnapshotReplication: from RemoteSnapshots(volume).
  Result<snapshot::SnapshotInfo> RemoteSnapshot(const std::string& volume,
                                                const std::string& name) override;
  // The digest of every remote copy of a replicated volume's snapshot (the nodes its label
  // lists); empty for a snapshot that is not one.
  std::vector<ReplicaDigest> VerifyReplicas(const snapshot::SnapshotInfo& snap);
  // The uuid of the cluster's volume named `volume` (none when it has no record).
  Result<std::optional<std::string>> RecordedUuid(const std::string& volume);
  using RecordedUuidFn = std::function<Result<std::optional<std::string>>(const std::string&)>;
  // The replica server's snapshot handlers on this node (SNAPSHOT, SNAPSHOT_DIGEST,
  // DELETE_SNAPSHOT) through `lifecycle`'s snapshot manager; `recorded` is RecordedUuid (a copy
  // of a deleted volume's snapshot goes only if no record of its uuid is left).
  static void ServeReplicaSnapshots(VolumeLifecycle* lifecycle, RecordedUuidFn recorded,
                                    replication::ReplicaServerOptions* options);

  // --- moving the target (replica_takeover.cc) ---
  // `shale volume take-over NAME [--force]` on a node that holds an in-sync replica: one
  // compare-and-swap makes this node the target (epoch + 1), the local replica's epoch is
  // raised, the target opens (every replica it reaches persists the new epoch, fencing the old
  // target). Refused while the old target's node is up unless `force`. Returns a line for
  // people.
  Result<std::string> TakeOver(const std::string& name, bool force);
  // `shale volume attach NAME` (NodeStage of a replicated volume, docs/replication.md "Attach and
  // detach"): serves the volume on this node. Idempotent where it is attached already. Refused
  // while another node has it attached and that node's lease lives (naming it); after a detach,
  // or once that lease expired, the target moves here as with take-over (epoch + 1, fencing the
  // old one). Needs an in-sync replica on this node. Returns a line for people.
  Result<std::string> Attach(const std::string& name);
  // `shale volume detach NAME` (NodeUnstage): closes this node's target (Busy while it has
  // clients) and records the volume detached, so any node holding an in-sync replica may attach
  // it at once. Idempotent for a volume detached already.
  // Who detaches: people (`shale volume detach`, NodeUnstage), or this node itself, which
  // attached the volume for its own ends (a snapshot, a replica's replacement: `caretaking_`) and
  // must not detach it once people attached it (FailedPrecondition then); a failure leaves it in
  // caretaking_ for the repair thread.
  enum class DetachFor { kPeople, kItself };
  Result<std::string> Detach(const std::string& name, DetachFor by = DetachFor::kPeople);
  // Detach, retried while it is Busy (a resync or a client's close still holds the target) for
  // at most `timeout`.
  Result<std::string> DetachWhenIdle(const std::string& name, std::chrono::milliseconds timeout,
                                     DetachFor by = DetachFor::kPeople);
  // Attaches `volume` here for this node's own ends (recorded in caretaking_).
  Status AttachForItself(const std::string& volume);
  // Detaches `volume`, attached by AttachForItself (`why`, for the log), retried for 10 s while
  // Busy, then left to the repair thread (DetachLater).
  void DetachItself(const std::string& volume, const std::string& why);
  // A detach of `volume` by this node itself failed with `failed`: unless it moved, went or
  // people attached it meanwhile, the repair thread retries (CareForDetached) until it succeeds.
  void DetachLater(const std::string& volume, const std::string& why, const Status& failed);
  // Forgets that this node attached `name` for itself. Caller holds mu_.
  void ForgetSelfAttachLocked(const std::string& name);
  // `shale volume resize` / ControllerExpandVolume of a replicated volume (docs/replication.md,
  // "Growing a replicated volume"): raises the membership's size (rounded up to 4 KiB); every
  // replica grows when it is next opened. Allowed while the volume is detached (from any node)
  // or on the node serving it (Busy while it has clients there); FailedPrecondition naming the
  // node serving it otherwise. InvalidArgument for a shrink, NotFound for a volume with no
  // membership (grow_only: a smaller size is no error, the size stays). Returns the volume's
  // size afterwards (idempotent).
  Result<uint64_t> Resize(const std::string& name, uint64_t size_bytes, bool grow_only = false);
  // `shale qos set` / CSI ControllerModifyVolume of a replicated volume, from any node
  // (docs/replication.md, "QoS of a replicated volume"): the membership's QoS, applied by the node
  // serving it (at once when that is this node, else within a repair tick of the watch telling
  // it). InvalidArgument for invalid settings, NotFound for a volume with no membership.
  Status SetQos(const std::string& name, const qos::QosSettings& settings);
  // The membership's QoS settings, normalized.
  Result<qos::QosSettings> GetQos(const std::string& name);
  // The replica server raised the epoch of this node's replica `volume` (a newer target opened
  // it): a local target of it with an older epoch is fenced.
  void FenceLocal(const std::string& volume, uint64_t epoch);

  struct Target;  // one open target (replicated_volumes.cc)

 private:
  // Take-over and attach: the target moves here (epoch + 1) if this node holds an in-sync
  // replica; `force` skips the check of the current target's lease (replica_takeover.cc).
  Result<std::string> MoveHere(const std::string& name, const cluster::Membership& m, bool force,
                               const std::string& verb);
  // The volume's target is this node already: opens it if it is not open (no epoch change).
  Result<std::string> AlreadyHere(const std::string& name, const cluster::Membership& m,
                                  const std::string& verb);
  // The target-only anchor of `name` on this node, which holds no replica of it (docs/
  // replication.md, "Targets on nodes without a replica"): an engine volume of the membership's
  // size labelled with its uuid and kTargetOnlyLabel, holding no data — the target's reactor,
  // its changed-region and activity-log records, its QoS and its NBD export. True when it was
  // made now (false: it was there). FailedPrecondition when another volume has the name.
  // `like` (optional): the labels, QoS and frontend records it gets (a volume created here).
  Result<bool> MakeAnchor(const std::string& name, const cluster::Membership& m,
                          const VolumeSpec* like = nullptr);
  // The anchor of a new volume `like` (membership `m`) created on a node that takes no replica
  // of it (replicated_create.cc); AlreadyExists when one was there.
  Result<VolumeInfo> CreateAnchor(const VolumeSpec& like, const cluster::Membership& m);
  // replicated_elsewhere.cc: a volume this node holds none of (no replica, no anchor).
  Status DeleteElsewhere(const std::string& name);
  // Asks every other node to delete its copy of `volume`@`name`, a snapshot of a replicated
  // volume the cluster no longer has (no record names its holders any more); true when one did.
  Result<bool> DeleteCopiesOfDeletedVolume(const std::string& volume, const std::string& name);
  // Snapshot() of it: TAKE_SNAPSHOT on its target; detached, attached here for the snapshot
  // (taken on every in-sync replica) and detached again.
  Result<std::optional<snapshot::SnapshotInfo>> SnapshotHeldElsewhere(
      const std::string& volume, const cluster::Membership& m, const std::string& name,
      const snapshot::CreateSnapshotOptions& options);
  // The snapshots of `volume` as the replicas of `in_sync` that answer hold them (LIST_SNAPSHOTS,
  // merged by name: a replica rebuilt after a snapshot lacks it); Unavailable when none answers.
  Result<std::vector<snapshot::SnapshotInfo>> ListCopies(const std::string& volume,
                                                         const Uuid& uuid, uint64_t size,
                                                         const std::vector<std::string>& in_sync);
  // Deletes the anchor of `name` (if there is one), logged; a failure is logged and left to
  // RemoveOrphans.
  void RemoveAnchor(const std::string& name, const std::string& why);
  // The local replica of `name` becomes its target's anchor (its node was drained while it
  // served the volume; the membership no longer names it): labelled kTargetOnlyLabel, promising
  // its pool 4 KiB, its persisted generation gone, in one commit.
  Result<VolumeInfo> RelabelAsAnchor(const std::string& name);
  // Discards every block an anchor still holds (a former replica's data), so its pool gets the
  // space back; logged. Clients are never served from it (data_elsewhere).
  Status ReleaseAnchorData(Target& target);
  // Drops `node`'s replica from the target's layer at `epoch` (or newer), retried while it
  // settles (bounded); *gone (optional) gets its ReplicaTarget first.
  Status RemoveFromLayer(Target& target, const std::string& node, uint64_t epoch,
                         std::shared_ptr<replication::ReplicaTarget>* gone);
  // FinishReplace of the target's own replica: out of the layer, then the anchor (above).
  void FinishLocalReplace(Target& target, const cluster::Membership& m, const std::string& by);
  // Raises the local replica's epoch to `epoch` and opens the target (replica_takeover.cc).
  Result<std::string> FinishTakeOver(const std::string& name, uint64_t epoch, std::string result);
  // Snapshots (replicated_snapshots.cc): the refusal for a replicated volume whose target is not
  // open here (naming the node that serves it); the quiesce of a target in two steps (start: on
  // its reactor; finish: wait until `deadline`, then the snapshot labels naming the in-sync
  // holders, Unavailable when it did not drain or is fenced; the caller resumes either way);
  // the remote copies of snapshot `name` (SNAPSHOT to every in-sync replica).
  class GroupHoldImpl;
  Status NotServedHere(const std::string& volume);
  std::shared_future<void> StartQuiesce(Target& target);
  std::chrono::steady_clock::time_point QuiesceDeadline() const;
  Result<Labels> FinishQuiesce(Target& target, const std::string& volume,
                               const std::shared_future<void>& quiet,
                               std::chrono::steady_clock::time_point deadline);
  static void ResumeTarget(Target& target);
  // (ReplicationLayer::SnapshotResults: node, status per replica)
  std::future<std::vector<std::pair<std::string, Status>>> StartCopies(Target& target,
                                                                       const std::string& name,
                                                                       const Labels& labels = {});
  // Snapshot() on a target without a local replica: the copies on the in-sync replicas, each
  // with the labels, are the snapshot (AlreadyExists when a replica holds one of that name); the
  // answer is built from them. Caller holds snapshot_mu_.
  Result<std::optional<snapshot::SnapshotInfo>> SnapshotFromRemotes(
      Target& target, const std::string& volume, const std::string& name,
      const snapshot::CreateSnapshotOptions& options);
  static Reactor* ReactorOf(const Target& t);
  static replication::ReplicationLayer* LayerOf(const Target& t);
  static const Uuid& UuidOf(const Target& t);
  Result<std::shared_ptr<Target>> OpenTarget(const std::string& name);
  // OpenTarget: the membership `m` names this node the target of `name`, attached, with the
  // local replica (of `uuid`) in sync; NotFound when another node serves it or it is detached.
  // OpenTarget: marks what each replica that is not in sync must have compared when it returns
  // (a stale one: everything; one out since before this node's term: everything it may hold; one
  // out during it: its records and the activity log's regions); records the term's start.
  Status MarkReturning(Target& target, const VolumeInfo& info, const cluster::Membership& m);
  // A target-only anchor (`local_replica` false) needs only the ownership.
  Status CheckServesHere(const std::string& name, const Uuid& uuid, const cluster::Membership& m,
                         bool local_replica);
  // Snapshot() of a volume another node serves: TAKE_SNAPSHOT there (with `labels`); this node's
  // copy (it holds one when its replica is in sync) is the answer.
  Result<std::optional<snapshot::SnapshotInfo>> SnapshotOnTarget(const VolumeInfo& local,
                                                                 const cluster::Membership& m,
                                                                 const std::string& name,
                                                                 const Labels& labels);
  // OpenTarget: grows the local replica `info` of a volume grown while it was closed to `size`.
  Status GrowLocalReplica(const VolumeInfo& info, uint64_t size);
  // OpenTarget: the local replica takes the membership's size and QoS.
  Status PrepareLocalReplica(const VolumeInfo& info, const cluster::Membership& m);
  // replicated_qos.cc: applies QoS `fields` (membership form) to the local volume if they differ.
  void ApplyQos(const std::string& name, const std::map<std::string, uint64_t>& fields);
  // Starts the watch of volume records that tells this node of QoS changes (retried on scans).
  void WatchQos();
  // On the repair thread: applies the QoS changes the watch saw for targets served here.
  void ApplyDueQos();
  // At start: deletes a local replica no membership names any more (the volume was deleted, or
  // this replica replaced, while this node was away). True when it was deleted.
  bool RemoveIfOrphan(const VolumeInfo& v, const Result<cluster::VolumeRecord>& record);
  // RemoveIfOrphan for every local replica that is not a target here (the repair thread, every
  // 10 s, one Range of every record: one replaced while its node was up but could not be deleted
  // then, or one too young at start).
  void RemoveOrphans();
  // A client of `target`'s replica at `address` (connect, authenticate, OPEN at `epoch`).
  Result<std::unique_ptr<replication::ReplicaClient>> Connect(const Target& target,
                                                              const std::string& address,
                                                              uint64_t epoch);
  // replicated_create.cc: the membership of a clone of `source` (only the local replica in sync).
  void StartFromLocalCopy(const std::string& what, cluster::Membership* m);
  // The size a replicated volume from spec's source or backup needs at least (0: none).
  Result<uint64_t> SourceSize(const ReplicatedSpec& spec);
  // The local replica of a new volume: created empty, or cloned from spec.source.
  Result<VolumeInfo> CreateLocalReplica(const ReplicatedSpec& spec, const Uuid& uuid, uint64_t size,
                                        const std::string& pool, std::vector<std::string>* advice);
  // Creates the remote replicas (from `source` where a node holds a copy of it); undoes them on
  // a failure.
  Status PlaceRemote(const std::string& name, const cluster::Membership& membership,
                     const std::vector<cluster::NodeRecord>& nodes, const std::string& source = "");
  Status DeleteRemote(const std::string& name, const cluster::Membership& membership,
                      bool ignore_unreachable);
  std::shared_ptr<Target> Find(const std::string& name);
  std::vector<std::shared_ptr<Target>> Targets();  // every open target, now
  void RepairLoop();
  void RepairTarget(const std::shared_ptr<Target>& target,
                    const std::vector<cluster::NodeRecord>& nodes,
                    const std::map<std::string, std::string>& doomed);
  // --- replacing replicas (replica_replace.cc; docs/replication.md, "Replacing a replica") ---
  // The nodes whose replicas are to be replaced, with why: draining ones, and those down for
  // --replica-replace-after (counted from when this repair thread first saw them down).
  std::map<std::string, std::string> DoomedNodes(const std::vector<cluster::NodeRecord>& nodes);
  // One step for a target: removes a replaced replica whose replacement is in sync, or starts
  // replacing one replica of a doomed node. True when it did something.
  bool ReplaceStep(const std::shared_ptr<Target>& target,
                   const std::vector<replication::ReplicaStatus>& live,
                   const std::map<std::string, std::string>& doomed,
                   const std::vector<cluster::NodeRecord>& nodes);
  // Places a replica on another node (by free capacity; not cordoned, not holding one), marks
  // every region for it, records it (`replaces` old) and starts its rebuild.
  Status StartReplace(const std::shared_ptr<Target>& target, const cluster::Membership& m,
                      const std::string& old, const std::string& why,
                      const std::vector<cluster::NodeRecord>& nodes);
  // A detached volume has no target to replace its replicas: the first up node of its in_sync
  // set that is not doomed attaches it (the repair thread), and detaches it again once no
  // replica is to be replaced (unless people attached it meanwhile). Every 2 s at most.
  void CareForDetached(const std::vector<cluster::NodeRecord>& nodes,
                       const std::map<std::string, std::string>& doomed);
  // The replacement `by` is in sync: `old` leaves the membership, the layer and its node.
  void FinishReplace(const std::shared_ptr<Target>& target, const std::string& old,
                     const std::string& by, const std::vector<cluster::NodeRecord>& nodes);
  void Reconnect(const std::shared_ptr<Target>& target, const std::string& node,
                 const std::string& address);
  void OpenPending();
  // On the reactor: starts the Rebuilder of `node` (kRebuilding in the layer).
  void StartRebuilder(Target& target, const std::string& node);
  // Restarts the failed rebuild of a replica that is still kRebuilding once its backoff passed;
  // true when a rebuild of the volume runs (this one or another).
  bool RetryRebuild(const std::shared_ptr<Target>& target, const std::string& node);
  // Whether a pending target's next open attempt is due; a failed attempt (backoff, logged once
  // per reason).
  bool PendingDue(const std::string& name);
  void PendingFailed(const std::string& name, const Status& why);
  // After a restart of the target (replicated_resync.cc): marks what a replica may have missed
  // while the target was down (the activity log's regions, or everything allocated when the
  // volume has no log); compares and copies the activity log's regions to every reachable
  // in-sync replica before the target serves; persists the local replica's generation.
  Status MarkForResync(Target& target, const std::string& node);
  // Marks for `node` everything the target's replicas may hold: every allocated region of the
  // local replica, or every region without one.
  Status MarkAllFor(Target& target, const std::string& node);
  // The epoch at which this node's current term as the target of `info`'s volume began (0: no
  // record, the node created it and served it since; kTermUnknown: a move here not finished),
  // and recording it (replicated_resync.cc). A replica that left the in-sync set at or before
  // that epoch left under another target, whose node holds the record of what it missed.
  static constexpr uint64_t kTermUnknown = UINT64_MAX;
  Result<uint64_t> TermStart(const VolumeInfo& info);
  Status RecordTermStart(const std::string& name, uint64_t epoch);
  Status ResyncAfterRestart(const std::shared_ptr<Target>& target);
  // A target without a local replica: marks for `node` every region the connected replicas of
  // `holders` have allocated (GET_INFO); blocking.
  Status MarkRemoteAllocated(Target& target, const std::vector<std::string>& holders,
                             const std::string& node);
  Status PersistLocalGeneration(Target& target, const VolumeInfo& info);
  // The local replica's persisted generation (0 when none was persisted).
  uint64_t LocalGeneration(const std::string& name);

  VolumeLifecycle* const lifecycle_;
  ClusterNode* const cluster_;
  const ReplicatedVolumesOptions options_;
  replication::Transport* const transport_;       // options_.transport
  std::shared_ptr<cluster::ClusterStore> store_;  // set by Start
  std::atomic<bool> started_{false};
  std::atomic<uint64_t> rebuild_bps_;  // options_.rebuild_bps until SetRebuildRate

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Target>> targets_;  // guarded by mu_
  std::map<std::string, std::string> pending_;  // not open yet: name -> why; guarded by mu_
  // Closed by Resize while their size changes: OpenPending leaves them alone; guarded by mu_.
  std::set<std::string> resizing_;
  std::set<std::string> opening_;  // OpenPending is opening them now; guarded by mu_
  // The watch of volume records (replicated_qos.cc) and the QoS it saw change for targets here,
  // applied by the repair thread; guarded by mu_.
  std::unique_ptr<cluster::Watcher> qos_watch_;
  std::map<std::string, std::map<std::string, uint64_t>> qos_due_;
  std::set<std::string> detached_;  // replicated volumes detached from this node; guarded by mu_
  struct PendingRetry {
    std::chrono::steady_clock::time_point next_try{};
    std::chrono::milliseconds backoff{500};  // doubling to 8 s, as the repair loop's
    std::string logged;                      // the reason last logged
  };
  std::map<std::string, PendingRetry> pending_retry_;                        // guarded by mu_
  bool stopping_ = false;                                                    // guarded by mu_
  std::map<std::string, std::chrono::steady_clock::time_point> down_since_;  // repair thread
  std::chrono::steady_clock::time_point next_care_{};                        // repair thread
  std::chrono::steady_clock::time_point next_scan_{};                        // repair thread
  // Detached volumes the repair thread attached here to replace a replica; guarded by mu_.
  std::set<std::string> caretaking_;
  // Those of caretaking_ whose detach failed once (DetachLater: logged once); guarded by mu_.
  std::set<std::string> detach_retries_;
  std::mutex snapshot_mu_;  // serializes snapshots (replicated_snapshots.cc)
  std::thread repair_;
};

}  // namespace shale::daemon
