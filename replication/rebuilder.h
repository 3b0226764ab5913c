// Rebuilder: copies regions of a replicated volume from an in-sync replica (the source) to a
// replica that missed them (the target), while client I/O continues (docs/replication.md,
// "Rebuild").
//
// Regions are copied in LBA order, a window of up to `window_regions` at a time under the
// layer's range lock (writes to the window wait while it is copied, so a client write is never
// overwritten by older data; writes elsewhere, which also reach the target, proceed). A region
// that reads as zeros on the source is sent as WRITE_ZEROES (no space on the target). After each
// copied window the regions are cleared in ChangedRegions; every `persist_bytes` (and at the end)
// the target is flushed and the clears committed, so a rebuild resumes where it was after a
// restart of either end. Copies are paced by `bps` (0: unlimited), changeable while running.
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

#include "engine/io/block_device.h"
#include "engine/common/result.h"
#include "replication/replica_target.h"

namespace shale {
class Reactor;
}

namespace shale::replication {

class ChangedRegions;
class ReplicationLayer;

class Rebuilder {
 public:
  struct Options {
    uint64_t bps = 0;              // copy rate cap in bytes/s; 0: none
    uint32_t window_regions = 8;   // regions copied at once
    uint64_t persist_bytes = 64ull << 20;
  };
  struct Progress {
    uint64_t done_bytes = 0;
    uint64_t total_bytes = 0;
  };

  // Copies the regions ChangedRegions has marked for `target` at Start().
  Rebuilder(Reactor* reactor, ReplicationLayer* layer, ChangedRegions* changed,
            std::string source, std::string target, Options options);
  ~Rebuilder();
  Rebuilder(const Rebuilder&) = delete;
  Rebuilder& operator=(const Rebuilder&) = delete;

  // Starts copying; done(OK) once every region is copied, flushed and the clears committed, or
  // the first error (the regions not yet cleared stay marked). On the reactor.
  void Start(std::function<void(Status)> done);
  // Stops after the window in flight; done(Aborted).
  void Cancel();
  void SetRate(uint64_t bps) { options_.bps = bps; }
  Progress progress() const { return progress_; }
  const std::string& target() const { return target_; }

 private:
  struct Copy;
  void Next();
  void CopyWindow(uint64_t offset, uint64_t length);
  void WindowDone(Copy* copy);
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
  uint64_t since_persist_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::function<void(Status)> done_;
  bool cancelled_ = false;
  bool running_ = false;
};

}  // namespace shale::replication
