// Daemon::AddCsiClusterHooks: how the CSI driver reaches the cluster (replicated volumes through
// CSI; docs/kubernetes.md, "Replicated volumes").
#include <chrono>

#include "csi/driver.h"
#include "daemon/daemon.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"

namespace shale::daemon {

void Daemon::AddCsiClusterHooks(csi::DriverOptions* csi_options) {
  // Replicated volumes through CSI (docs/kubernetes.md, "Replicated volumes"): created through
  // the cluster and left detached; staged on any node holding a replica (the target moves there).
  csi_options->create_replicated = [this](const csi::DriverOptions::ReplicatedCreate& c) -> Status {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr) return Status::Unavailable("shaled is starting or stopping");
    const VolumeSpec& spec = c.spec;
    SHALE_RETURN_IF_ERROR(r->Create({.volume = spec,
                                     .replicas = c.replicas,
                                     .replica_nodes = c.nodes,
                                     .node_selector = c.node_selector,
                                     .source = c.source,
                                     .backup = c.backup},
                                    nullptr)
                              .status());
    // Busy for a moment while the new target's first resync still holds it (bounded).
    Result<std::string> detached = r->DetachWhenIdle(spec.params.name, std::chrono::seconds(10));
    if (!detached.ok()) {
      // It stays attached here: staging elsewhere waits for this node (NodeStage says so).
      SHALE_LOG_WARN("csi: a new replicated volume stays attached to this node",
                     {"volume", spec.params.name}, {"error", detached.status().ToString()});
    }
    return Status::Ok();
  };
  csi_options->expand_replicated = [this](const std::string& name,
                                          uint64_t size) -> Result<uint64_t> {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr) return Status::Unavailable("shaled is starting or stopping");
    return r->Resize(name, size, /*grow_only=*/true);
  };
  csi_options->replicated_qos = [this](const std::string& name) -> Result<qos::QosSettings> {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr) return Status::Unavailable("shaled is starting or stopping");
    return r->GetQos(name);
  };
  csi_options->set_replicated_qos = [this](const std::string& name,
                                           const qos::QosSettings& settings) -> Status {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr) return Status::Unavailable("shaled is starting or stopping");
    return r->SetQos(name, settings);
  };
  csi_options->replica_nodes = [this](const std::string& name) {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    return r != nullptr ? r->ReplicaNodes(name) : std::vector<std::string>();
  };
  csi_options->cluster_volume =
      [this](const std::string& name) -> Result<csi::DriverOptions::ClusterVolume> {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr) return Status::Unavailable("shaled is starting or stopping");
    SHALE_ASSIGN_OR_RETURN(cluster::Membership m, r->MembershipOf(name));
    return csi::DriverOptions::ClusterVolume{.size_bytes = m.size_bytes,
                                             .labels = std::move(m.labels),
                                             .replicas = m.replicas.size(),
                                             .in_sync = m.in_sync.size(),
                                             .served_by = m.detached ? "" : m.target};
  };
  csi_options->remote_snapshots = [this](const std::string& volume) {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    return r != nullptr ? r->RemoteSnapshots(volume) : std::vector<snapshot::SnapshotInfo>();
  };
  csi_options->attach_volume = [this](const std::string& name) -> Status {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    // (A replicated volume this node holds no replica of is served from the replicas elsewhere.)
    if (r == nullptr || !(r->IsReplicated(name) || r->IsElsewhere(name))) return Status::Ok();
    Result<std::string> attached = r->Attach(name);
    if (attached.ok()) SHALE_LOG_INFO("csi: replicated volume attached", {"volume", name});
    return attached.status();
  };
  csi_options->detach_volume = [this](const std::string& name) -> Status {
    ReplicatedVolumes* r = replicated_.load(std::memory_order_acquire);
    if (r == nullptr || !r->IsReplicated(name)) return Status::Ok();
    Result<std::string> detached = r->Detach(name);
    if (detached.ok() || detached.status().code() != StatusCode::kFailedPrecondition) {
      return detached.status();
    }
    // NodeUnstage on a node the volume was taken from (it died, another node staged it since):
    // nothing of it is served here any more, so there is nothing to release; the unstage of
    // this node's mount and state must not wait for a node that will never give it back.
    Result<cluster::Membership> m = r->MembershipOf(name);
    if (m.ok() && (m->detached || m->target != options_.node_name)) {
      SHALE_LOG_INFO("csi: unstaged a replicated volume another node took over", {"volume", name},
                     {"target", m->detached ? "" : m->target});
      return Status::Ok();
    }
    return detached.status();
  };
}

}  // namespace shale::daemon
