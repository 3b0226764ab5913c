// The CSI driver `csi.shale.io` (docs/csi.md): the Identity, Controller, Node, GroupController
// and SnapshotMetadata services of CSI spec v1.10 (csi/csi.proto) on top of the Engine, the
// SnapshotManager and the QosManager of this shaled. The daemon serves all three on --csi-endpoint
// (CsiEndpoint in daemon.cc).
//
// One shaled is both the controller and the node plugin of its node: volumes live in this
// node's pools, so every volume is accessible from this node only (topology key
// topology.csi.shale.io/node = node id).
//
// Threading: gRPC calls the handlers from many threads. Controller operations that change state
// are serialized by one mutex (CreateVolume's check-then-create must be atomic for idempotency);
// node operations by another (stage/unstage run external tools for up to a few seconds).
// Lifetime: the Engine, SnapshotManager and QosManager must outlive the services.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "csi/csi.grpc.pb.h"
#include "engine/common/result.h"
#include "engine/common/status.h"
#include "qos/settings.h"

namespace shale {
class Engine;
struct VolumeInfo;
namespace snapshot {
class SnapshotManager;
struct SnapshotInfo;
}  // namespace snapshot
namespace qos {
class QosManager;
}
namespace daemon {
class VolumeLifecycle;
struct VolumeSpec;
}  // namespace daemon
namespace backup {
struct Target;
}
}  // namespace shale

namespace shale::csi {

struct DriverOptions {
  std::string version;               // vendor_version (SHALE_VERSION)
  std::string node_id;               // NodeGetInfo / topology; default: the host name
  std::string data_dir;              // node state lives in <data_dir>/csi/
  std::string nbd_socket;            // the daemon's NBD UNIX socket (nbdfuse connects here)
  int64_t max_volumes_per_node = 0;  // 0: no limit reported
  // Deletes a volume as `shale volume delete` does (the daemon's: a replicated volume through
  // its target, with its remote replicas and membership); null: VolumeLifecycle::Delete.
  std::function<Status(const std::string& name)> delete_volume;
  // The daemon's change gate (docs/operations.md, "Audit log"): while it is closed (the audit log
  // cannot be written) NodeStage, NodePublish and NodeExpand are refused with its status; the
  // teardown calls (NodeUnstage, NodeUnpublish) still run, so pods can always go. Null: open.
  std::function<Status()> change_gate;
  // The cluster (shaled --cluster-store; docs/kubernetes.md, "Replicated volumes"). Without it
  // (null) a StorageClass asking for replicas > 1 is INVALID_ARGUMENT.
  // Creates replicated volume `spec` with `replicas` replicas on distinct nodes, this node's
  // first, only on `nodes` when not empty and on nodes whose labels meet `node_selector`
  // (InvalidArgument when malformed), from snapshot `source` ("VOLUME@SNAP" of a replicated
  // volume, of which this node holds a copy) when not empty, and leaves it detached (any node
  // holding an in-sync replica may stage it). FailedPrecondition when too few nodes qualify.
  struct ReplicatedCreate {
    const daemon::VolumeSpec& spec;
    uint32_t replicas = 1;
    std::vector<std::string> nodes;
    std::string node_selector;
    std::string source;  // "VOLUME@SNAP" or this node's volume "VOLUME"; "": none
    std::string backup;  // a backup handle "s3://BUCKET/PREFIX/ID" to restore; "": none
  };
  std::function<Status(const ReplicatedCreate& create)> create_replicated;
  // ControllerExpandVolume of a replicated volume, from any node (docs/replication.md, "Growing a
  // replicated volume"): grows it to at least `size` bytes and returns its size afterwards.
  // NotFound (or InvalidArgument for a name no volume can have) when `name` is not replicated;
  // FailedPrecondition while another node serves it, Busy while it has clients here.
  std::function<Result<uint64_t>(const std::string& name, uint64_t size)> expand_replicated;
  // ControllerModifyVolume of a replicated volume, from any node: its QoS settings as its
  // membership holds them, and their change (applied by the node serving it). NotFound (or
  // InvalidArgument for a name no volume can have) when `name` is not replicated.
  std::function<Result<qos::QosSettings>(const std::string& name)> replicated_qos;
  std::function<Status(const std::string& name, const qos::QosSettings& settings)>
      set_replicated_qos;
  // The nodes holding a replica of volume `name` (its accessible topology); empty when it is not
  // replicated.
  std::function<std::vector<std::string>(const std::string& name)> replica_nodes;
  // A replicated volume as the cluster records it, for a controller on a node holding none of it
  // (docs/kubernetes.md, "Replicated volumes": any node's controller serves any replicated
  // volume). NotFound when the cluster has no volume `name`.
  struct ClusterVolume {
    uint64_t size_bytes = 0;
    std::map<std::string, std::string> labels;  // at its creation (CSI's fingerprint, capacity)
    size_t replicas = 0, in_sync = 0;
    std::string served_by;  // the node serving it; "" when detached
  };
  std::function<Result<ClusterVolume>(const std::string& name)> cluster_volume;
  // The snapshots of such a volume as its in-sync replicas hold them (CSI's idempotent
  // CreateSnapshot and ListSnapshots on a node holding none of it); empty when there are none
  // or none answers.
  std::function<std::vector<snapshot::SnapshotInfo>(const std::string& volume)> remote_snapshots;
  // NodeStage / NodeUnstage of a replicated volume: its target moves to this node (epoch + 1;
  // FailedPrecondition naming the node that has it while that node's lease lives) / leaves it
  // (Busy while it has other clients).
  std::function<Status(const std::string& name)> attach_volume;
  std::function<Status(const std::string& name)> detach_volume;
  // NodeStage of a read-only clone of a replicated volume's snapshot on a node that holds a copy
  // of the snapshot but not the clone (docs/csi.md, "Read-only clones on many nodes"): makes
  // this node's own read-only clone `name` of its copy of `snapshot`, labelled kLabelCloneCopy
  // (NodeUnstage deletes it through delete_volume). Null: NOT_FOUND as for any unknown volume.
  std::function<Status(const std::string& name, const std::string& snapshot)> create_clone_copy;
  // Whether the endpoint serves GroupController and SnapshotMetadata (Identity advertises
  // exactly these).
  bool group_controller = true;
  bool snapshot_metadata = true;
};

class IdentityService final : public ::csi::v1::Identity::Service {
 public:
  explicit IdentityService(const DriverOptions& options) : options_(options) {}
  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse* response) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse* response) override;
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse* response) override;

 private:
  const DriverOptions options_;
};

class ControllerService final : public ::csi::v1::Controller::Service {
 public:
  // Every change of a volume goes through `lifecycle` (docs/lifecycle.md); it must outlive the
  // service.
  ControllerService(const DriverOptions& options, daemon::VolumeLifecycle* lifecycle);

  // Moves CSI records written by older versions (keyed by volume name) to the lifecycle's
  // frontend records, dropping those of volumes not made by CSI (docs/lifecycle.md,
  // "Upgrading a data dir"). Call once before serving.
  Status UpgradeRecords();

  grpc::Status CreateVolume(grpc::ServerContext*, const ::csi::v1::CreateVolumeRequest* request,
                            ::csi::v1::CreateVolumeResponse* response) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const ::csi::v1::DeleteVolumeRequest* request,
                            ::csi::v1::DeleteVolumeResponse* response) override;
  grpc::Status ValidateVolumeCapabilities(
      grpc::ServerContext*, const ::csi::v1::ValidateVolumeCapabilitiesRequest* request,
      ::csi::v1::ValidateVolumeCapabilitiesResponse* response) override;
  grpc::Status ListVolumes(grpc::ServerContext*, const ::csi::v1::ListVolumesRequest* request,
                           ::csi::v1::ListVolumesResponse* response) override;
  grpc::Status GetCapacity(grpc::ServerContext*, const ::csi::v1::GetCapacityRequest* request,
                           ::csi::v1::GetCapacityResponse* response) override;
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
      ::csi::v1::ControllerGetCapabilitiesResponse* response) override;
  grpc::Status CreateSnapshot(grpc::ServerContext*, const ::csi::v1::CreateSnapshotRequest* request,
                              ::csi::v1::CreateSnapshotResponse* response) override;
  grpc::Status DeleteSnapshot(grpc::ServerContext*, const ::csi::v1::DeleteSnapshotRequest* request,
                              ::csi::v1::DeleteSnapshotResponse* response) override;
  grpc::Status ListSnapshots(grpc::ServerContext*, const ::csi::v1::ListSnapshotsRequest* request,
                             ::csi::v1::ListSnapshotsResponse* response) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext*,
                                      const ::csi::v1::ControllerExpandVolumeRequest* request,
                                      ::csi::v1::ControllerExpandVolumeResponse* response) override;
  grpc::Status ControllerGetVolume(grpc::ServerContext*,
                                   const ::csi::v1::ControllerGetVolumeRequest* request,
                                   ::csi::v1::ControllerGetVolumeResponse* response) override;
  grpc::Status ControllerModifyVolume(grpc::ServerContext*,
                                      const ::csi::v1::ControllerModifyVolumeRequest* request,
                                      ::csi::v1::ControllerModifyVolumeResponse* response) override;

 private:
  struct Impl;
  // With a backupTo target: starts (or checks) the snapshot's backup and sets ready_to_use
  // to whether it has finished (controller.cc).
  grpc::Status BackUp(const std::string& ref, const std::optional<backup::Target>& to,
                      ::csi::v1::CreateSnapshotResponse* response);
  // Volume `id` of this node's engine, else a replicated volume this node holds none of as the
  // cluster records it (name, size and labels; no pool, id 0): NotFound ("<what> <id> not
  // found") when neither knows it.
  Result<VolumeInfo> FindAnywhere(const std::string& id, std::string_view what = "volume");
  const DriverOptions options_;
  daemon::VolumeLifecycle* const lifecycle_;
  Engine* const engine_;
  snapshot::SnapshotManager* const snapshots_;
  qos::QosManager* const qos_;  // may be null: QoS parameters are then refused
  std::mutex mu_;
};

// GroupController (group_controller.cc; docs/csi.md, "GroupController"): group snapshots through
// the lifecycle service, which takes every member at one instant.
class GroupControllerService final : public ::csi::v1::GroupController::Service {
 public:
  explicit GroupControllerService(daemon::VolumeLifecycle* lifecycle) : lifecycle_(lifecycle) {}
  grpc::Status GroupControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::GroupControllerGetCapabilitiesRequest*,
      ::csi::v1::GroupControllerGetCapabilitiesResponse* response) override;
  grpc::Status CreateVolumeGroupSnapshot(
      grpc::ServerContext*, const ::csi::v1::CreateVolumeGroupSnapshotRequest* request,
      ::csi::v1::CreateVolumeGroupSnapshotResponse* response) override;
  grpc::Status GetVolumeGroupSnapshot(grpc::ServerContext*,
                                      const ::csi::v1::GetVolumeGroupSnapshotRequest* request,
                                      ::csi::v1::GetVolumeGroupSnapshotResponse* response) override;
  grpc::Status DeleteVolumeGroupSnapshot(
      grpc::ServerContext*, const ::csi::v1::DeleteVolumeGroupSnapshotRequest* request,
      ::csi::v1::DeleteVolumeGroupSnapshotResponse* response) override;

 private:
  daemon::VolumeLifecycle* const lifecycle_;
};

// SnapshotMetadata (snapshot_metadata.cc; docs/csi.md, "SnapshotMetadata"): allocated and
// changed ranges of snapshots as VARIABLE_LENGTH extents, 4 KiB aligned. Read-only.
class SnapshotMetadataService final : public ::csi::v1::SnapshotMetadata::Service {
 public:
  explicit SnapshotMetadataService(snapshot::SnapshotManager* snapshots) : snapshots_(snapshots) {}
  grpc::Status GetMetadataAllocated(
      grpc::ServerContext* context, const ::csi::v1::GetMetadataAllocatedRequest* request,
      grpc::ServerWriter<::csi::v1::GetMetadataAllocatedResponse>* writer) override;
  grpc::Status GetMetadataDelta(
      grpc::ServerContext* context, const ::csi::v1::GetMetadataDeltaRequest* request,
      grpc::ServerWriter<::csi::v1::GetMetadataDeltaResponse>* writer) override;

 private:
  snapshot::SnapshotManager* const snapshots_;
};

class NodeService final : public ::csi::v1::Node::Service {
 public:
  NodeService(const DriverOptions& options, Engine* engine) : options_(options), engine_(engine) {}

  grpc::Status NodeStageVolume(grpc::ServerContext*,
                               const ::csi::v1::NodeStageVolumeRequest* request,
                               ::csi::v1::NodeStageVolumeResponse* response) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext*,
                                 const ::csi::v1::NodeUnstageVolumeRequest* request,
                                 ::csi::v1::NodeUnstageVolumeResponse* response) override;
  grpc::Status NodePublishVolume(grpc::ServerContext*,
                                 const ::csi::v1::NodePublishVolumeRequest* request,
                                 ::csi::v1::NodePublishVolumeResponse* response) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext*,
                                   const ::csi::v1::NodeUnpublishVolumeRequest* request,
                                   ::csi::v1::NodeUnpublishVolumeResponse* response) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext*,
                                  const ::csi::v1::NodeGetVolumeStatsRequest* request,
                                  ::csi::v1::NodeGetVolumeStatsResponse* response) override;
  grpc::Status NodeExpandVolume(grpc::ServerContext*,
                                const ::csi::v1::NodeExpandVolumeRequest* request,
                                ::csi::v1::NodeExpandVolumeResponse* response) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext*,
                                   const ::csi::v1::NodeGetCapabilitiesRequest*,
                                   ::csi::v1::NodeGetCapabilitiesResponse* response) override;
  grpc::Status NodeGetInfo(grpc::ServerContext*, const ::csi::v1::NodeGetInfoRequest*,
                           ::csi::v1::NodeGetInfoResponse* response) override;

 private:
  // NodeUnstage of a replicated volume: detach_volume, retried while Busy (bounded).
  Status DetachReplicated(const std::string& volume);
  // OK, or the gRPC status of DriverOptions::change_gate while it is closed.
  grpc::Status ChangeGate() const;

  const DriverOptions options_;
  Engine* const engine_;
  std::mutex mu_;
};

// The host name, for the default node id.
std::string DefaultNodeId();

}  // namespace shale::csi
