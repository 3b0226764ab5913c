// VolumeIo and VolumeLayer: the I/O path of a volume is an ordered chain of layers. Each layer
// implements VolumeLayer and passes requests to the next; the engine's Volume is the bottom one.
// As built: frontend (an NBD connection) -> QosLayer (qos/) -> Volume (core mapping; snapshots
// and clones are layered images inside it, docs/snapshots.md) -> BlockDevice. The replication
// layer will sit between QoS and the Volume.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "engine/common/status.h"
#include "engine/common/units.h"

namespace shale {

enum class VolumeOp : uint8_t { kRead = 0, kWrite, kFlush, kDiscard, kWriteZeroes };
std::string_view VolumeOpName(VolumeOp op);

inline constexpr uint32_t kVolumeFua = 1u << 0;      // write/zeroes: durable on completion
inline constexpr uint32_t kVolumeNoUnmap = 1u << 1;  // write-zeroes: keep blocks allocated
inline constexpr uint32_t kSectorSize = 512;         // smallest I/O unit a volume accepts
inline constexpr uint64_t kMaxVolumeIoBytes = 32 * kMiB;

// Who issued an I/O; QoS schedules background work in a lower class.
enum class IoClass : uint8_t { kClient = 0, kBackground = 1 };

struct VolumeIo {
  // Set by the submitter.
  VolumeOp op = VolumeOp::kRead;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t* buf = nullptr;  // read/write; 4 KiB-aligned buffers avoid a bounce copy
  IoClass io_class = IoClass::kClient;
  void (*done)(VolumeIo* io) = nullptr;
  void* ctx = nullptr;

  // Result, set before done().
  Status status;

  // Scratch for the layers (each layer documents the slot it uses); no per-I/O allocation.
  // The core Volume uses layer_value[1] (submit time of a client request, for its latency).
  void* layer_state[4] = {};
  uint64_t layer_value[2] = {};
};

class VolumeLayer {
 public:
  virtual ~VolumeLayer() = default;
  // Called on the volume's reactor. io->done runs later on that reactor, exactly once, never
  // from inside Submit.
  virtual void Submit(VolumeIo* io) = 0;
};

// Paces background work the core Volume does by itself, below every layer (flatten's copy
// batches), from a layer above it (QoS schedules it in the pool's low class). The engine asks
// before each unit of work and starts it only when told, so a unit waiting for its turn holds
// nothing (flatten parks no client write while it waits).
class BackgroundAdmission {
 public:
  using Done = std::function<void()>;
  virtual ~BackgroundAdmission() = default;
  // Called on the volume's reactor. `bytes`: what the unit moves (flatten: the parent data the
  // batch copies, each byte read once and written once). `go(done)` runs on the same reactor,
  // never inside Admit, once the unit may start; the engine calls `done()` exactly once, on that
  // reactor, when the unit's I/O has completed (so the unit counts as in flight until then).
  virtual void Admit(uint64_t bytes, std::function<void(Done done)> go) = 0;
  // On the same reactor: whether other work of the device (clients) is outstanding now, so a
  // background job that can choose its unit size keeps less in flight. Default: never.
  virtual bool ForegroundBusy() const { return false; }
};

}  // namespace shale
