// ControlService: the shale.v1.Control gRPC service (api/control.proto), a thin translator
// between protobuf and the daemon's services.
//
// It validates request fields the services do not see (paths, enums), hands every change of a
// volume to the VolumeLifecycle (create, clone, resize, delete, snapshot, revert: each with
// the records of every layer in one commit, docs/lifecycle.md), reads from the Engine, the
// SnapshotManager and QoS, and converts results to proto messages. A request the CLI would
// never send still gets INVALID_ARGUMENT, never a crash. Errors become gRPC codes through the
// one table in api/grpc_status.h; every error also carries the kShaleErrorMetadataKey trailer
// (api/control_api.h). Handlers of snapshots and clones live in control_service_snapshots.cc,
// those of QoS in control_service_qos.cc.
//
// Threading: the gRPC server calls the handlers from its thread pool, concurrently; the Engine
// and the SnapshotManager serialize control operations themselves, so the service keeps no
// mutable state. The long operations (FlattenVolume, ExportSnapshot, ImportSnapshot,
// CheckPool) run on a thread of their own and stream their progress from the handler's thread
// (progress_stream.h); the handler returns only after the operation finished. A client that
// goes away cancels an export, import or check; a flatten runs to its end (it cannot stop
// halfway). Their work without the stream is public as *Work (`progress` may be null): the
// streaming handlers and the unit tests call it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "api/control.grpc.pb.h"
#include "api/control_api.h"
#include "daemon/progress_stream.h"
#include "engine/common/result.h"
#include "engine/common/status.h"

namespace shale {

class Engine;
namespace cluster {
class ClusterStore;
}  // namespace cluster
namespace nbd {
class NbdServer;
}
namespace snapshot {
class SnapshotManager;
}
namespace qos {
class QosManager;
}
}  // namespace shale

namespace shale::daemon {
namespace ops {
class AuditLog;
}

class VolumeLifecycle;
class ClusterNode;
class ReplicatedVolumes;

// Limits on request fields that the engine does not bound itself (labels: engine/common/labels.h).
inline constexpr size_t kMaxDevicePathLength = 4095;  // PATH_MAX without the NUL
inline constexpr size_t kMaxStreamPathLength = 4095;  // snapshot stream files, likewise

class ControlService final : public v1::Control::Service {
 public:
  // Facts about the daemon reported by GetStatus.
  struct DaemonInfo {
    std::string version;
    std::string control_endpoint;  // "unix:///..."
    // The metrics endpoint's bound address ("127.0.0.1:9580"); null: metrics are off.
    std::function<std::string()> metrics_address;
    // The audit log GetAudit reads (must outlive the service); null: GetAudit answers
    // FAILED_PRECONDITION.
    ops::AuditLog* audit_log = nullptr;
  };

  // `lifecycle` (not null; its engine, snapshot manager and QoS manager are the ones this
  // service reads) and `nbd` (the NBD server, if any) must outlive the service (the daemon stops
  // the gRPC server before the NBD server, the snapshot manager and the engine). Without `nbd`,
  // volumes and snapshots show no export and ListExports lists none. Without a QoS manager in
  // the lifecycle, the QoS RPCs answer FAILED_PRECONDITION and volumes carry no QoS settings.
  // `cluster` (the daemon's ClusterNode, in cluster mode only) must outlive the service too;
  // without it the cluster RPCs answer FAILED_PRECONDITION. `replicated` (its replicated
  // volumes, cluster mode only) likewise; without it `replicas` > 1 is FAILED_PRECONDITION.
  ControlService(VolumeLifecycle* lifecycle, DaemonInfo info, nbd::NbdServer* nbd = nullptr,
                 ClusterNode* cluster = nullptr, ReplicatedVolumes* replicated = nullptr);
  ControlService(const ControlService&) = delete;
  ControlService& operator=(const ControlService&) = delete;

  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest* req,
                         v1::GetStatusResponse* resp) override;

  grpc::Status CreatePool(grpc::ServerContext* ctx, const v1::CreatePoolRequest* req,
                          v1::Pool* resp) override;
  grpc::Status ListPools(grpc::ServerContext* ctx, const v1::ListPoolsRequest* req,
                         v1::ListPoolsResponse* resp) override;
  grpc::Status GetPool(grpc::ServerContext* ctx, const v1::GetPoolRequest* req,
                       v1::Pool* resp) override;
  grpc::Status DeletePool(grpc::ServerContext* ctx, const v1::DeletePoolRequest* req,
                          v1::DeletePoolResponse* resp) override;
  grpc::Status CheckPool(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                         grpc::ServerWriter<v1::CheckPoolProgress>* writer) override;
  Status CheckPoolWork(grpc::ServerContext* ctx, const v1::CheckPoolRequest* req,
                       v1::CheckPoolResponse* resp, ProgressCounter* progress);

  grpc::Status CreateVolume(grpc::ServerContext* ctx, const v1::CreateVolumeRequest* req,
                            v1::Volume* resp) override;
  grpc::Status ListVolumes(grpc::ServerContext* ctx, const v1::ListVolumesRequest* req,
                           v1::ListVolumesResponse* resp) override;
  grpc::Status GetVolume(grpc::ServerContext* ctx, const v1::GetVolumeRequest* req,
                         v1::Volume* resp) override;
  grpc::Status ResizeVolume(grpc::ServerContext* ctx, const v1::ResizeVolumeRequest* req,
                            v1::Volume* resp) override;
  grpc::Status DeleteVolume(grpc::ServerContext* ctx, const v1::DeleteVolumeRequest* req,
                            v1::DeleteVolumeResponse* resp) override;

  grpc::Status ListExports(grpc::ServerContext* ctx, const v1::ListExportsRequest* req,
                           v1::ListExportsResponse* resp) override;

  // Snapshots and clones (control_service_snapshots.cc).
  grpc::Status CreateSnapshot(grpc::ServerContext* ctx, const v1::CreateSnapshotRequest* req,
                              v1::Snapshot* resp) override;
  grpc::Status ListSnapshots(grpc::ServerContext* ctx, const v1::ListSnapshotsRequest* req,
                             v1::ListSnapshotsResponse* resp) override;
  grpc::Status GetSnapshot(grpc::ServerContext* ctx, const v1::GetSnapshotRequest* req,
                           v1::Snapshot* resp) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext* ctx, const v1::DeleteSnapshotRequest* req,
                              v1::DeleteSnapshotResponse* resp) override;
  grpc::Status VerifySnapshot(grpc::ServerContext* ctx, const v1::VerifySnapshotRequest* req,
                              v1::VerifySnapshotResponse* resp) override;
  grpc::Status ExportSnapshot(grpc::ServerContext* ctx, const v1::ExportSnapshotRequest* req,
                              grpc::ServerWriter<v1::ExportSnapshotProgress>* writer) override;
  Status ExportSnapshotWork(grpc::ServerContext* ctx, const v1::ExportSnapshotRequest* req,
                            v1::ExportSnapshotResponse* resp, ProgressCounter* progress);
  grpc::Status ImportSnapshot(grpc::ServerContext* ctx, const v1::ImportSnapshotRequest* req,
                              grpc::ServerWriter<v1::ImportSnapshotProgress>* writer) override;
  Status ImportSnapshotWork(grpc::ServerContext* ctx, const v1::ImportSnapshotRequest* req,
                            v1::ImportSnapshotResponse* resp, ProgressCounter* progress);
  grpc::Status CreateGroupSnapshot(grpc::ServerContext* ctx,
                                   const v1::CreateGroupSnapshotRequest* req,
                                   v1::GroupSnapshot* resp) override;
  grpc::Status ListGroupSnapshots(grpc::ServerContext* ctx,
                                  const v1::ListGroupSnapshotsRequest* req,
                                  v1::ListGroupSnapshotsResponse* resp) override;
  grpc::Status GetGroupSnapshot(grpc::ServerContext* ctx, const v1::GetGroupSnapshotRequest* req,
                                v1::GroupSnapshot* resp) override;
  grpc::Status DeleteGroupSnapshot(grpc::ServerContext* ctx,
                                   const v1::DeleteGroupSnapshotRequest* req,
                                   v1::DeleteGroupSnapshotResponse* resp) override;
  grpc::Status CloneVolume(grpc::ServerContext* ctx, const v1::CloneVolumeRequest* req,
                           v1::Volume* resp) override;
  grpc::Status ListClones(grpc::ServerContext* ctx, const v1::ListClonesRequest* req,
                          v1::ListClonesResponse* resp) override;
  grpc::Status RevertVolume(grpc::ServerContext* ctx, const v1::RevertVolumeRequest* req,
                            v1::Volume* resp) override;
  grpc::Status FlattenVolume(grpc::ServerContext* ctx, const v1::FlattenVolumeRequest* req,
                             grpc::ServerWriter<v1::FlattenVolumeProgress>* writer) override;

  // QoS (control_service_qos.cc).
  grpc::Status SetVolumeQos(grpc::ServerContext* ctx, const v1::SetVolumeQosRequest* req,
                            v1::VolumeQos* resp) override;
  grpc::Status GetVolumeQos(grpc::ServerContext* ctx, const v1::GetVolumeQosRequest* req,
                            v1::VolumeQos* resp) override;
  grpc::Status GetVolumeStats(grpc::ServerContext* ctx, const v1::GetVolumeStatsRequest* req,
                              v1::VolumeIoStats* resp) override;
  grpc::Status SetPoolQos(grpc::ServerContext* ctx, const v1::SetPoolQosRequest* req,
                          v1::PoolQos* resp) override;
  grpc::Status GetPoolQos(grpc::ServerContext* ctx, const v1::GetPoolQosRequest* req,
                          v1::PoolQos* resp) override;
  // The rebuild rate cap (control_service_cluster.cc).
  grpc::Status SetRebuildQos(grpc::ServerContext* ctx, const v1::SetRebuildQosRequest* req,
                             v1::RebuildQos* resp) override;
  grpc::Status GetRebuildQos(grpc::ServerContext* ctx, const v1::GetRebuildQosRequest* req,
                             v1::RebuildQos* resp) override;

  // Cluster (control_service_cluster.cc; issue 11).
  grpc::Status ListNodes(grpc::ServerContext* ctx, const v1::ListNodesRequest* req,
                         v1::ListNodesResponse* resp) override;
  grpc::Status SetNodeCordon(grpc::ServerContext* ctx, const v1::SetNodeCordonRequest* req,
                             v1::SetNodeCordonResponse* resp) override;
  grpc::Status DrainNode(grpc::ServerContext* ctx, const v1::DrainNodeRequest* req,
                         v1::DrainNodeResponse* resp) override;
  grpc::Status ForgetNode(grpc::ServerContext* ctx, const v1::ForgetNodeRequest* req,
                          v1::ForgetNodeResponse* resp) override;
  grpc::Status LabelNode(grpc::ServerContext* ctx, const v1::LabelNodeRequest* req,
                         v1::LabelNodeResponse* resp) override;
  grpc::Status ListReplicas(grpc::ServerContext* ctx, const v1::ListReplicasRequest* req,
                            v1::ListReplicasResponse* resp) override;
  grpc::Status ForceRecoverVolume(grpc::ServerContext* ctx,
                                  const v1::ForceRecoverVolumeRequest* req,
                                  v1::ForceRecoverVolumeResponse* resp) override;
  grpc::Status TakeOverVolume(grpc::ServerContext* ctx, const v1::TakeOverVolumeRequest* req,
                              v1::TakeOverVolumeResponse* resp) override;
  grpc::Status AttachVolume(grpc::ServerContext* ctx, const v1::AttachVolumeRequest* req,
                            v1::VolumeAttachment* resp) override;
  grpc::Status DetachVolume(grpc::ServerContext* ctx, const v1::DetachVolumeRequest* req,
                            v1::VolumeAttachment* resp) override;

  // Backups to S3 (control_service_backup.cc).
  grpc::Status CreateBackup(grpc::ServerContext* ctx, const v1::CreateBackupRequest* req,
                            grpc::ServerWriter<v1::BackupProgress>* writer) override;
  grpc::Status ListBackups(grpc::ServerContext* ctx, const v1::ListBackupsRequest* req,
                           v1::ListBackupsResponse* resp) override;
  grpc::Status GetBackup(grpc::ServerContext* ctx, const v1::GetBackupRequest* req,
                         v1::Backup* resp) override;
  grpc::Status VerifyBackup(grpc::ServerContext* ctx, const v1::VerifyBackupRequest* req,
                            grpc::ServerWriter<v1::BackupProgress>* writer) override;
  grpc::Status DeleteBackup(grpc::ServerContext* ctx, const v1::DeleteBackupRequest* req,
                            v1::GcBackupsResponse* resp) override;
  grpc::Status PruneBackups(grpc::ServerContext* ctx, const v1::PruneBackupsRequest* req,
                            v1::GcBackupsResponse* resp) override;
  grpc::Status RestoreBackup(grpc::ServerContext* ctx, const v1::RestoreBackupRequest* req,
                             grpc::ServerWriter<v1::BackupProgress>* writer) override;

  // Operability (control_service_ops.cc, docs/operations.md).
  grpc::Status SetPoolCapacity(grpc::ServerContext* ctx, const v1::SetPoolCapacityRequest* req,
                               v1::Pool* resp) override;
  grpc::Status ExpandPool(grpc::ServerContext* ctx, const v1::ExpandPoolRequest* req,
                          v1::Pool* resp) override;
  grpc::Status GetUsage(grpc::ServerContext* ctx, const v1::GetUsageRequest* req,
                        v1::GetUsageResponse* resp) override;
  grpc::Status GetAudit(grpc::ServerContext* ctx, const v1::GetAuditRequest* req,
                        v1::GetAuditResponse* resp) override;

  // How long `volume delete --force` (and `snapshot delete --force`) waits for NBD clients to
  // let go of the export.
  static constexpr std::chrono::seconds kForceDisconnectTimeout{30};
  // How often the long operations (FlattenVolume, ExportSnapshot, ...) report progress.
  static constexpr std::chrono::milliseconds kProgressInterval{250};

 private:
  void AddExportInfo(v1::Volume* volume) const;
  void AddExportInfo(v1::Snapshot* snapshot) const;
  // Fills the snapshot layer's view of one volume: space and clone provenance.
  Status AddSnapshotInfo(v1::Volume* volume, bool with_space);
  // A volume answer: engine facts, export, space, clone provenance.
  Status DescribeVolume(const std::string& name, v1::Volume* out);
  // The settings in force into a volume answer (control_service_qos.cc).
  Status AddQosInfo(v1::Volume* volume);
  // This node's part in the cluster into a status answer (control_service_cluster.cc).
  void AddClusterStatus(v1::GetStatusResponse* resp) const;
  // A replicated volume's target, epoch and replicas (control_service_cluster.cc; a warning
  // when etcd cannot be read).
  void AddReplicationInfo(v1::Volume* volume) const;
  // The cluster store for a change of cluster state (cordon, drain, labels, forget): refused
  // outside a cluster, while the change gate is closed, or while shaled starts or stops.
  Result<std::shared_ptr<cluster::ClusterStore>> StoreForChange() const;
  // `name` may be a replicated volume: a local replica of one, or no local volume at all (in
  // cluster mode), so the cluster is asked first (NotFound there: it is not).
  bool MaybeReplicated(const std::string& name) const;
  // The answer to qos get/set of a replicated volume: its membership's settings (NotFound: no
  // membership, so not replicated).
  Status ReplicatedQos(const std::string& name, v1::VolumeQos* resp);
  // Thresholds, overcommit limit and fill level into a pool answer (control_service_ops.cc).
  void AddCapacityInfo(v1::Pool* pool);

  VolumeLifecycle* const lifecycle_;
  Engine* const engine_;
  snapshot::SnapshotManager* const snapshots_;
  nbd::NbdServer* const nbd_;
  qos::QosManager* const qos_;
  ClusterNode* const cluster_;
  ReplicatedVolumes* const replicated_;
  const DaemonInfo info_;
  const std::chrono::steady_clock::time_point started_;
};

}  // namespace shale::daemon
