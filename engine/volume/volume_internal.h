// Helpers shared by the files that implement Volume: volume.cc (submission, the aligned data
// path, commit, lifecycle), volume_rmw.cc (unaligned requests) and volume_images.cc (map loading
// and image mechanics). Not part of the volume's interface: nothing outside engine/volume/
// volume*.cc includes it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/volume/volume.h"

namespace shale {

// Per-request state of the core layer, recycled through a free list.
struct Volume::Request {
  Volume* vol = nullptr;
  VolumeIo* io = nullptr;
  bool is_write = false;
  uint32_t pending = 0;
  Status status;
  std::vector<Seg> segs;
  std::vector<IoRequest> ops;
  Request* next_free = nullptr;
  // Volume::live_writes_ links (writes with device I/O in flight); precut: admitted before a
  // freeze's cut that happened while it was in flight (it finishes into the frozen image).
  Request* live_prev = nullptr;
  Request* live_next = nullptr;
  bool precut = false;
};

// A freeze whose cut is made while writes admitted before it were in flight: they finish into
// the frozen image, whose stored entries for the clusters they touch are kept here (the view,
// map_, no longer holds them whole: writes after the cut hide the frozen image's blocks) and
// committed once the last of them completed (docs/snapshots.md, "Freeze latency").
struct Volume::PendingFreeze {
  uint32_t image = 0;                              // the frozen image (the head before the cut)
  uint64_t writes = 0;                             // precut writes still in flight
  std::unordered_map<uint64_t, MapEntry> entries;  // its stored entries they touch
  std::shared_ptr<Status> first_commit;            // the cut's commit, once it landed
  std::function<void(const Status&)> durable;
  std::vector<VolumeIo*> flushes;  // flushes waiting for the second commit
};

}  // namespace shale

namespace shale::internal {

// Set on internal requests (read-modify-write steps, flatten copies): they skip range locks,
// the write gate and the client counters.
inline constexpr uint32_t kInternal = 1u << 31;

// Bits [first, first + count) of a cluster's 64-bit block bitmap.
inline uint64_t BlockMask(uint32_t first, uint32_t count) {
  return count >= 64 ? ~0ull << first : ((1ull << count) - 1) << first;
}

}  // namespace shale::internal
