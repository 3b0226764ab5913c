// I/O on a volume or a frozen image's read-only view from a control thread (digest worker,
// export, import, verify): requests are submitted on the handle's reactor and waited for here.
// Never call these on a reactor thread. All I/O defaults to IoClass::kBackground so QoS can
// schedule it below client I/O: given a `target` layer (the volume's QoS layer), requests go
// there instead of straight to the volume.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace shale::snapshot {

using ByteRanges = std::vector<std::pair<uint64_t, uint64_t>>;  // (offset, length), sorted

// Runs one request and waits for it.
// `target` (if not null) receives the request on the handle's reactor instead of the volume.
Status RunIo(VolumeHandle& handle, VolumeOp op, uint64_t offset, uint64_t length, uint8_t* buf,
             IoClass io_class = IoClass::kBackground, uint32_t flags = 0,
             VolumeLayer* target = nullptr);

// Allocation of [offset, offset + length) with complete coverage, as (offset, length, zero)
// runs. Queried in spans of at most 64 MiB, so a reactor is never held for long.
struct AllocationRun {
  uint64_t offset;
  uint64_t length;
  bool zero;
};
Result<std::vector<AllocationRun>> QueryRuns(VolumeHandle& handle, uint64_t offset,
                                             uint64_t length);

// One piece of content: `data` (length bytes) or, when data == nullptr, zeros that were not read
// (never written, discarded or zeroed).
struct ScanPiece {
  uint64_t offset;
  uint64_t length;
  const uint8_t* data;
};

struct ScanOptions {
  uint64_t window = 1 << 20;  // largest read; reads are aligned to multiples of it
  unsigned depth = 4;         // reads in flight (read-ahead)
  IoClass io_class = IoClass::kBackground;
  const std::atomic<bool>* cancel = nullptr;  // checked between pieces: Aborted when set
  VolumeLayer* target = nullptr;  // reads go here (on the handle's reactor); null: the volume
};

// Visits the content of `ranges` (sorted, disjoint, 4 KiB aligned, inside the volume) in order,
// skipping reads of zero runs (QueryRuns). fn's error stops the scan and is returned. Returns
// only after every read it started has completed.
Status ScanContent(VolumeHandle& handle, const ByteRanges& ranges, const ScanOptions& options,
                   const std::function<Status(const ScanPiece&)>& fn);

// Writes and zeroes with up to `depth` requests in flight (import). The first error is
// reported by the next call or by Drain(); the destructor waits for requests in flight.
class WriteQueue {
 public:
  WriteQueue(VolumeHandle* handle, unsigned depth, IoClass io_class = IoClass::kBackground,
             VolumeLayer* target = nullptr);
  ~WriteQueue();
  WriteQueue(const WriteQueue&) = delete;
  WriteQueue& operator=(const WriteQueue&) = delete;

  Status Write(uint64_t offset, const uint8_t* data, uint64_t length);  // length <= 32 MiB
  Status WriteZeros(uint64_t offset, uint64_t length);                  // any length
  // Waits for everything in flight, then flushes the volume (durable on OK).
  Status Drain();

 private:
  struct Op;
  Status Start(std::unique_ptr<Op> op);
  Status WaitOldest();
  VolumeHandle* handle_;
  const unsigned depth_;
  const IoClass io_class_;
  VolumeLayer* const target_;
  std::deque<std::unique_ptr<Op>> in_flight_;
  Status error_;
};

}  // namespace shale::snapshot
