#include "csi/nbd/export.h"

#include "engine/common/units.h"
#include "engine/engine.h"

namespace shale::nbd {

namespace {

class VolumeExport final : public Export {
 public:
  VolumeExport(std::shared_ptr<VolumeHandle> handle, std::string pool)
      : handle_(std::move(handle)),
        volume_(handle_->volume()),
        description_("Shale volume in pool " + pool) {}

  const std::string& name() const override { return volume_.name(); }
  uint64_t size_bytes() const override { return volume_.size_bytes(); }
  bool read_only() const override { return volume_.read_only(); }
  std::string description() const override { return description_; }
  Reactor* reactor() const override { return volume_.reactor(); }
  void Submit(VolumeIo* io) override { volume_.Submit(io); }
  std::vector<Volume::Extent> QueryAllocation(uint64_t offset, uint64_t length,
                                              size_t max_extents) const override {
    return volume_.QueryAllocation(offset, length, max_extents);
  }

 private:
  std::shared_ptr<VolumeHandle> handle_;  // keeps the volume open (and undeletable)
  Volume& volume_;
  const std::string description_;
};

}  // namespace

Result<std::unique_ptr<Export>> EngineExportResolver::Open(std::string_view name) {
  if (name.empty()) {
    return Status::NotFound("this server has no default export; name a volume");
  }
  if (name.find('@') != std::string_view::npos) {
    return Status::NotFound("export '" + std::string(name) +
                            "': snapshot exports (VOLUME@SNAPSHOT) are not available yet");
  }
  // A name no volume can have says so rather than "not found".
  if (Status valid = ValidateName("export", name); !valid.ok()) return valid;
  Result<VolumeInfo> info = engine_->GetVolume(name);
  if (!info.ok()) return info.status();
  Result<std::shared_ptr<VolumeHandle>> handle = engine_->OpenVolume(name);
  if (!handle.ok()) return handle.status();
  return std::unique_ptr<Export>(new VolumeExport(std::move(handle).value(), info->pool));
}

std::vector<std::string> EngineExportResolver::List() {
  std::vector<std::string> names;
  for (const VolumeInfo& v : engine_->ListVolumes()) names.push_back(v.name);
  return names;
}

}  // namespace shale::nbd
