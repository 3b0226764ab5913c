// Rebuilder: copies regions of a replicated volume from an in-sync replica (the source) to a
// replica that missed them (the target), while client I/O continues (docs/replication.md,
// "Rebuild").
//
// Regions are copied in LBA order, in windows of up to `window_regions`, up to
// `windows_in_flight` of them at once, each under its own range lock in the layer (writes to a
// window wait while it is copied, so a client write is never overwritten by older data; writes
// elsewhere, which also reach the target, proceed). Each region is read from the source while a
// remote target hashes its copy of it in 4 KiB blocks (HASH_RANGES); only the blocks that differ
// are sent, a run of zeros as WRITE_ZEROES (no space on the target). So a replica that missed a
// few 4 KiB writes in a region receives those blocks, not the whole 1 MiB region; a local target
// gets every block. Hashing costs a read of the target's copy: when a window finds nearly every
// block different (`whole_above` of them: a new replica, regions rewritten end to end while it
// was out), the regions after it are sent whole but one in `window_regions` (a probe), until a
// probe finds less differing. After each copied window its regions are cleared in
// ChangedRegions; every `persist_bytes` (and at the end) the windows in flight drain, the target
// is flushed and the clears committed, so a rebuild resumes where it was after a restart of
// either end. Copies are paced by `bps` (0: unlimited), changeable while running, and each
// window first waits for `admission` (QoS's background class in the pool's scheduler); while
// the admission reports clients busy, windows shrink to `busy_window_regions`, one at a time.
//
// Threading: everything on the volume's reactor.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/common/result.h"
#include "engine/io/block_device.h"
#include "engine/io/buffer_cache.h"
#include "engine/volume/volume_io.h"
#include "replication/replica_target.h"

namespace shale {
class Reactor;
class Volume;
}  // namespace shale

namespace shale::replication {

class ChangedRegions;
class ReplicationLayer;

// Blocks compared by hash within a region (a remote target hashes its own copy: HASH_RANGES).
inline constexpr uint32_t kRebuildBlockBytes = 4096;

class Rebuilder {
 public:
  struct Options {
    uint64_t bps = 0;                // copy rate cap in bytes/s; 0: none
    uint32_t window_regions = 8;     // regions per window
    uint32_t windows_in_flight = 2;  // windows copied at once
    // While the admission says the device is busy with other work (clients), windows of at
    // most this many regions, one at a time: the rebuild keeps little in the device's queue.
    uint32_t busy_window_regions = 1;
    // A window whose compared blocks differ in at least this share sends the regions after it
    // whole but one in window_regions (the probe); 0: always compare.
    double whole_above = 0.95;
    uint64_t persist_bytes = 64ull << 20;
    // Each window waits for it before it starts (QoS: one background unit of the window's
    // bytes in the pool's scheduler) and holds it until it is done; null: none.
    std::shared_ptr<BackgroundAdmission> admission;
  };
  struct Progress {
    uint64_t done_bytes = 0;      // of the regions to rebuild, copied
    uint64_t total_bytes = 0;     // the regions to rebuild
    uint64_t sent_bytes = 0;      // data written to the target (blocks that differed)
    uint64_t compared_bytes = 0;  // of done_bytes, compared by hash with the target's copy
    uint64_t busy_windows = 0;    // windows started small because clients were busy
    uint64_t window_buffers = 0;  // allocated for windows; reused, at most windows_in_flight
  };

  // Copies the regions ChangedRegions has marked for `target` at Start().
  Rebuilder(Reactor* reactor, ReplicationLayer* layer, ChangedRegions* changed, std::string source,
            std::string target, Options options);
  ~Rebuilder();
  Rebuilder(const Rebuilder&) = delete;
  Rebuilder& operator=(const Rebuilder&) = delete;

  // A new replica: marks every region of `source` (the local in-sync replica) that holds data
  // as changed for `node`, so the rebuild copies what is allocated and skips holes (and resumes
  // like any other after a restart). done (posted on the reactor) once the marks are durable.
  static void MarkAllocated(Volume* source, ChangedRegions* changed, const std::string& node,
                            std::function<void(Status)> done);

  // Starts copying; done(OK) once every region is copied, flushed and the clears committed, or
  // the first error (the regions not yet cleared stay marked). On the reactor.
  void Start(std::function<void(Status)> done);
  // Stops once the windows in flight are done; done(Aborted).
  void Cancel();
  // Changes the rate cap from now on (0: none); on the reactor.
  void SetRate(uint64_t bps);
  Progress progress() const { return progress_; }
  const std::string& target() const { return target_; }

 private:
  struct Copy;
  struct RegionCopy;
  void Next();
  void SendDiff(RegionCopy* rc);
  void CopyWindow(Copy* copy);
  void WindowDone(Copy* copy);
  // Starts the next window if the rate cap allows it now; otherwise arms the pacing timer.
  bool Paced();
  void Persist(std::function<void()> then);
  void Finish(Status status);
  static void OnChild(ChildIo* child);

  Reactor* const reactor_;
  ReplicationLayer* const layer_;
  ChangedRegions* const changed_;
  const std::string source_, target_;
  Options options_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;  // what to copy (byte ranges)
  size_t range_index_ = 0;
  uint64_t range_done_ = 0;  // bytes of ranges_[range_index_] already copied
  Progress progress_;
  uint64_t since_persist_ = 0;  // bytes of the windows started since the last persist
  uint64_t started_bytes_ = 0;  // bytes of the windows started
  uint32_t in_flight_ = 0;      // windows started (admission included), not done
  bool persisting_ = false;
  bool timer_armed_ = false;
  bool compare_all_ = true;  // false: one region in window_regions is compared (see whole_above)
  uint32_t probe_countdown_ = 0;  // regions sent whole before the next probe
  Status failed_;                 // the first window's error: no more windows start
  std::chrono::steady_clock::time_point started_;
  // Pacing: no more than options_.bps since pace_from_, when pace_bytes_ were started.
  std::chrono::steady_clock::time_point pace_from_;
  uint64_t pace_bytes_ = 0;
  // Window buffers (window_regions regions each), kept for the whole rebuild: at most
  // windows_in_flight of them.
  BufferCache buffers_;
  std::function<void(Status)> done_;
  bool cancelled_ = false;
  bool running_ = false;
};

}  // namespace shale::replication
