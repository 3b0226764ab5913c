// FaultDevice: a BlockDevice wrapper for crash and error tests (after leveldb's
// FaultInjectionTestEnv and SPDK's power-failure device).
//
// The wrapped `inner` device is the durable medium. Writes (and discards and write-zeroes,
// recorded as writes of zeros) go to an ordered in-memory log — the volatile write cache —
// and reach inner only when a flush (or a FUA write) applies the whole log in order through
// inner's sync API followed by inner->FlushSync(). Reads see inner with the log applied.
// PowerCut() throws away (part of) the log, as a power loss would, then "reboots".
//
// Correctness over speed: asynchronous requests run synchronously inside Submit() under one
// mutex and complete through Reactor::Current()->Defer, so the device is thread-safe and works
// on any reactor; it blocks the reactor on inner's sync I/O, which is fine for tests.
//
// Fault injection counts operations that passed validation (ValidateIo/ValidateRange), async
// and sync alike: read, write, flush, discard, write-zeroes. An injected failure has no effect
// on the data and completes with Status::FromErrno(err).
#pragma once

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/io/block_device.h"

namespace shale {

class FaultDevice final : public BlockDevice {
 public:
  enum class CutMode {
    kDropAll,  // every unflushed write is lost
    kRandom,   // each unflushed write survives with p=1/2, some survivors torn (seeded)
  };

  // Wraps inner (the durable medium); seed drives PowerCut(kRandom) reproducibly.
  explicit FaultDevice(std::shared_ptr<BlockDevice> inner, uint64_t seed = 1);

  // inner's geometry: same size and block sizes.
  DeviceGeometry geometry() const override { return inner_->geometry(); }
  // Grows inner at once: a size change is treated as durable (a file's new size is made durable
  // by the next flush, which pool expand issues before it records the new clusters).
  Result<uint64_t> Grow(uint64_t size_bytes) override { return inner_->Grow(size_bytes); }
  // "fault(<inner kind>)".
  std::string kind() const override { return "fault(" + inner_->kind() + ")"; }
  // Runs the request now, under the lock; completes it through the current reactor's Defer.
  void Submit(IoRequest* req) override;
  // Inner content with the unflushed log applied.
  Status ReadSync(uint64_t offset, void* buf, uint64_t length) override;
  // Appends to the unflushed log.
  Status WriteSync(uint64_t offset, const void* buf, uint64_t length) override;
  // Applies the log to inner in order, flushes inner, clears the log.
  Status FlushSync() override;
  // Appends a write of zeros to the unflushed log.
  Status DiscardSync(uint64_t offset, uint64_t length) override;

  // The n-th (1-based, counted from this call) future operation of kind op, async or sync,
  // fails with err and has no effect. Replaces an earlier pending FailNth for the same op.
  void FailNth(IoOp op, uint64_t n, int err = EIO);
  // After n more operations of any kind succeed or fail normally, every operation fails with
  // err ("the disk died") until PowerCut().
  void FailAllAfter(uint64_t n, int err = EIO);
  // Power loss and reboot: drops the unflushed log (kDropAll), or persists a random subset of
  // it in log order, tearing some survivors to a prefix of whole logical blocks (kRandom,
  // reproducible for the seed and the call history). Then clears every injected fault
  // (FailNth and FailAllAfter), so the device works again and holds only what survived.
  void PowerCut(CutMode mode = CutMode::kDropAll);

  // Writes (including discards and write-zeroes) in the volatile log.
  uint64_t unflushed_writes() const;
  // Operations of kind op seen so far (validated ones, failed or not; never reset).
  uint64_t ops(IoOp op) const;
  // The durable medium.
  const std::shared_ptr<BlockDevice>& inner() const { return inner_; }

 private:
  struct LogEntry {
    uint64_t offset = 0;
    uint64_t length = 0;
    std::vector<uint8_t> data;  // empty for a write of zeros
  };
  struct PendingFault {
    uint64_t remaining = 0;  // operations to let through first
    int err = EIO;
  };

  // Counts an operation and decides whether it fails (returns the injected status).
  Status CountOpLocked(IoOp op, uint64_t offset, uint64_t length);
  void ReadLocked(uint64_t offset, uint8_t* out, uint64_t length) const;
  Status ApplyLocked(const LogEntry& entry, uint64_t length);
  Status FlushLocked();
  Status ExecuteLocked(IoRequest* req);

  const std::shared_ptr<BlockDevice> inner_;
  mutable std::mutex mu_;
  std::vector<LogEntry> log_;
  std::mt19937_64 rng_;
  std::array<uint64_t, static_cast<size_t>(IoOp::kCount)> ops_{};
  std::array<std::optional<PendingFault>, static_cast<size_t>(IoOp::kCount)> fail_nth_;
  std::optional<PendingFault> fail_all_after_;
  bool dead_ = false;
  int dead_err_ = EIO;
};

}  // namespace shale
