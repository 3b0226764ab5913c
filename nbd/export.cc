#include "nbd/export.h"

#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "qos/qos_manager.h"
#include "snapshot/names.h"
#include "snapshot/snapshot_manager.h"

namespace shale::nbd {

namespace {

// A volume, or a snapshot's read-only view (whose Volume is named after its image, so the
// export carries the name the client used). I/O goes to the volume's QosVolume when there is
// one (limits, pool scheduling), else straight to the volume.
class VolumeExport final : public Export {
 public:
  VolumeExport(std::shared_ptr<VolumeHandle> handle, std::shared_ptr<qos::QosVolume> qos,
               std::string name, bool force_read_only, std::string description, bool all_data)
      : handle_(std::move(handle)),
        qos_(std::move(qos)),
        volume_(handle_->volume()),
        submit_to_(qos_ != nullptr ? static_cast<VolumeLayer*>(qos_.get()) : &volume_),
        name_(std::move(name)),
        force_read_only_(force_read_only),
        description_(std::move(description)),
        all_data_(all_data) {}

  const std::string& name() const override { return name_; }
  uint64_t size_bytes() const override { return volume_.size_bytes(); }
  bool read_only() const override { return force_read_only_ || volume_.read_only(); }
  std::string description() const override { return description_; }
  Reactor* reactor() const override { return volume_.reactor(); }
  void Submit(VolumeIo* io) override { submit_to_->Submit(io); }
  std::vector<Volume::Extent> QueryAllocation(uint64_t offset, uint64_t length,
                                              size_t max_extents) const override {
    if (all_data_) return {Volume::Extent{length, /*zero=*/false}};
    return volume_.QueryAllocation(offset, length, max_extents);
  }

 private:
  std::shared_ptr<VolumeHandle> handle_;  // keeps the volume open (and undeletable)
  // Released before handle_ (members go in reverse order): the shared QosLayer, if this was its
  // last user, goes while the volume is still open. The server destroys an export only once
  // its requests have completed, so the layer is idle then.
  std::shared_ptr<qos::QosVolume> qos_;
  Volume& volume_;
  VolumeLayer* const submit_to_;
  const std::string name_;
  const bool force_read_only_;
  const std::string description_;
  const bool all_data_;  // kTargetOnlyLabel: the local volume holds none of the data
};

}  // namespace

Result<std::unique_ptr<Export>> EngineExportResolver::Open(std::string_view name) {
  if (name.empty()) {
    return Status::NotFound("this server has no default export; name a volume");
  }
  if (name.find('@') != std::string_view::npos) return OpenSnapshot(name);
  // A name no volume can have says so rather than "not found".
  if (Status valid = ValidateName("export", name); !valid.ok()) return valid;
  Result<VolumeInfo> info = engine_->GetVolume(name);
  if (!info.ok()) return info.status();
  Result<std::shared_ptr<VolumeHandle>> handle = engine_->OpenVolume(name);
  if (!handle.ok()) return handle.status();
  if (info->labels.contains(kTargetOnlyLabel)) {
    return MakeExport(std::move(handle).value(), info->name, /*force_read_only=*/false,
                      "Shale replicated volume (served from replicas on other nodes)",
                      /*all_data=*/true);
  }
  return MakeExport(std::move(handle).value(), info->name, /*force_read_only=*/false,
                    "Shale volume in pool " + info->pool);
}

Result<std::unique_ptr<Export>> EngineExportResolver::MakeExport(
    std::shared_ptr<VolumeHandle> handle, std::string name, bool force_read_only,
    std::string description, bool all_data) {
  std::shared_ptr<qos::QosVolume> qos;
  if (qos_ != nullptr) {
    Result<std::shared_ptr<qos::QosVolume>> wrapped = qos_->Wrap(handle);
    if (!wrapped.ok()) return wrapped.status();
    qos = std::move(wrapped).value();
  }
  return std::unique_ptr<Export>(new VolumeExport(std::move(handle), std::move(qos),
                                                  std::move(name), force_read_only,
                                                  std::move(description), all_data));
}

Result<std::unique_ptr<Export>> EngineExportResolver::OpenSnapshot(std::string_view name) {
  if (snapshots_ == nullptr) {
    return Status::NotFound("export '" + std::string(name) +
                            "': this server does not export snapshots");
  }
  Result<snapshot::SnapshotRef> ref = snapshot::ParseSnapshotRef(name);
  if (!ref.ok()) return ref.status();
  Result<std::shared_ptr<VolumeHandle>> view = snapshots_->OpenSnapshot(name);
  if (!view.ok()) return view.status();
  // Read-only twice over: the flag tells clients, and the view refuses writes itself.
  return MakeExport(std::move(view).value(), ref->ToString(), /*force_read_only=*/true,
                    "Shale snapshot " + ref->ToString() + " (read-only)");
}

std::vector<std::string> EngineExportResolver::List() {
  std::vector<std::string> names;
  for (const VolumeInfo& v : engine_->ListVolumes()) names.push_back(v.name);
  if (snapshots_ != nullptr) {
    Result<std::vector<snapshot::SnapshotInfo>> snaps = snapshots_->List({.with_space = false});
    if (snaps.ok()) {
      for (const snapshot::SnapshotInfo& s : *snaps) names.push_back(s.full_name());
    } else {
      SHALE_LOG_WARN("nbd: cannot list snapshots for NBD_OPT_LIST",
                     {"error", snaps.status().ToString()});
    }
  }
  return names;
}

}  // namespace shale::nbd
