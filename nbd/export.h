// Export and ExportResolver: what the NBD server serves, and how export names are resolved.
//
// The server never talks to the Engine directly: it asks an ExportResolver to open the export a
// client names and gets an Export — something with a size, a read-only bit, a reactor and an I/O
// entry point. EngineExportResolver maps a volume name to the volume (Engine::OpenVolume) and
// "VOLUME@SNAP" to a read-only view of the snapshot (SnapshotManager::OpenSnapshot). The
// VolumeHandle inside the Export keeps the volume (or the snapshot) from being deleted while a
// client uses it.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"
#include "engine/volume/volume.h"

namespace shale {
class Engine;
class Reactor;
class VolumeHandle;
namespace snapshot {
class SnapshotManager;
}
namespace qos {
class QosManager;
}
}  // namespace shale

namespace shale::nbd {

// Label (value "true") of a volume whose data is not in the local engine volume: the target of a
// replicated volume on a node that holds no replica of it (docs/replication.md). Its I/O goes
// through QoS to the replication layer below; its export reports every block as data, since the
// local volume's (empty) allocation says nothing about the replicas'. The same string as
// replication::kTargetOnlyLabel.
inline constexpr char kTargetOnlyLabel[] = "shale.io/target-only";

// An opened export. Created and destroyed off the reactors (opening and releasing may take the
// engine's control lock); used on reactor().
class Export {
 public:
  virtual ~Export() = default;

  // --- any thread ---
  virtual const std::string& name() const = 0;
  // Current size; clients keep the size they negotiated until they reconnect.
  virtual uint64_t size_bytes() const = 0;
  virtual bool read_only() const = 0;
  // One line for NBD_INFO_DESCRIPTION ("Shale volume in pool default").
  virtual std::string description() const = 0;
  // The reactor that runs this export's I/O; the connection moves there after the handshake.
  virtual Reactor* reactor() const = 0;

  // --- on reactor() ---
  // Starts one I/O (VolumeLayer contract: io->done runs later on reactor(), never inside).
  virtual void Submit(VolumeIo* io) = 0;
  // Allocation of [offset, offset + length) as at most max_extents runs (Volume::QueryAllocation).
  virtual std::vector<Volume::Extent> QueryAllocation(uint64_t offset, uint64_t length,
                                                      size_t max_extents) const = 0;
};

class ExportResolver {
 public:
  virtual ~ExportResolver() = default;
  // Opens the export a client named. Blocking: call it off the reactors. NotFound for names
  // that name nothing (including the empty "default export", which Shale does not have).
  virtual Result<std::unique_ptr<Export>> Open(std::string_view name) = 0;
  // Names of every export, for NBD_OPT_LIST (blocking, off reactors).
  virtual std::vector<std::string> List() = 0;
};

// Exports every volume of an Engine under its own name and, given a SnapshotManager, every
// snapshot as "VOLUME@SNAP": always read-only (NBD_FLAG_READ_ONLY, and the engine refuses writes
// to the view with PermissionDenied). While a snapshot is exported it cannot be deleted (Busy).
// Given a QosManager, every export's I/O goes through QosManager::Wrap: the volume's limits and
// its pool's scheduler apply, and every connection to one volume (or snapshot view) shares one
// QosLayer, so limits are per volume, not per connection.
class EngineExportResolver final : public ExportResolver {
 public:
  // `engine` (and `snapshots`, `qos`, if not null) must outlive the resolver and every Export it
  // opened. Without `snapshots`, names with '@' are NotFound; without `qos`, I/O goes straight
  // to the volume.
  explicit EngineExportResolver(Engine* engine, snapshot::SnapshotManager* snapshots = nullptr,
                                qos::QosManager* qos = nullptr)
      : engine_(engine), snapshots_(snapshots), qos_(qos) {}
  Result<std::unique_ptr<Export>> Open(std::string_view name) override;
  // Volumes, then snapshots (implicit ones are not listed, but can be opened by name).
  std::vector<std::string> List() override;

 private:
  Result<std::unique_ptr<Export>> OpenSnapshot(std::string_view name);
  // The Export of an open handle: through QoS when the resolver has a QosManager.
  Result<std::unique_ptr<Export>> MakeExport(std::shared_ptr<VolumeHandle> handle, std::string name,
                                             bool force_read_only, std::string description,
                                             bool all_data = false);

  Engine* const engine_;
  snapshot::SnapshotManager* const snapshots_;
  qos::QosManager* const qos_;
};

}  // namespace shale::nbd
