// Export and ExportResolver: what the NBD server serves, and how export names are resolved.
//
// The server never talks to the Engine directly: it asks an ExportResolver to open the export a
// client names and gets an Export — something with a size, a read-only bit, a reactor and an I/O
// entry point. Today EngineExportResolver maps a name to a volume (Engine::OpenVolume; the
// VolumeHandle inside the Export keeps the volume from being deleted while a client uses it).
// The snapshot layer will add "VOLUME@SNAP" exports (always read-only) by wrapping or replacing
// the resolver; nothing in the server changes.
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
}  // namespace shale

namespace shale::nbd {

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
  // Names of every export, for NBD_OPT_LIST and `shale export list` (blocking, off reactors).
  virtual std::vector<std::string> List() = 0;
};

// Exports every volume of an Engine under its own name.
class EngineExportResolver final : public ExportResolver {
 public:
  // `engine` must outlive the resolver and every Export it opened.
  explicit EngineExportResolver(Engine* engine) : engine_(engine) {}
  Result<std::unique_ptr<Export>> Open(std::string_view name) override;
  std::vector<std::string> List() override;

 private:
  Engine* const engine_;
};

}  // namespace shale::nbd
