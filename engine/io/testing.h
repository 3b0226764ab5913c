// Test helpers for code that talks to a BlockDevice (library shale_engine_io_testing).
//
// They hide the reactor plumbing: start a reactor, run one request on it and wait, run a burst
// of requests and check the completion contract, make temporary files that clean up after
// themselves. Waits have deadlines: a device that never completes aborts the test binary with
// a clear message instead of hanging until the ctest timeout (the request memory is still
// referenced by the device, so returning would not be safe).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

#include "engine/io/block_device.h"
#include "engine/io/reactor.h"

namespace shale::testutil {

inline constexpr std::chrono::seconds kIoDeadline{120};

// Starts a reactor; aborts if io_uring is unusable.
std::unique_ptr<Reactor> StartReactor(std::string name = "test-reactor");

// Submits req on reactor and blocks until it completed; returns req.status. Sets req.done and
// req.ctx. Must not be called on the reactor's own thread.
Status RunIo(Reactor& reactor, BlockDevice& device, IoRequest& req);

// Asynchronous single requests through RunIo. Unaligned spans are bounced through an aligned
// buffer, so any memory works.
Status ReadAt(Reactor& reactor, BlockDevice& device, uint64_t offset, std::span<uint8_t> out);
Status WriteAt(Reactor& reactor, BlockDevice& device, uint64_t offset,
               std::span<const uint8_t> data, uint32_t flags = 0);
Status Flush(Reactor& reactor, BlockDevice& device);
Status Discard(Reactor& reactor, BlockDevice& device, uint64_t offset, uint64_t length);
Status WriteZeroes(Reactor& reactor, BlockDevice& device, uint64_t offset, uint64_t length);

// A burst of requests submitted from one reactor task, with the completion contract recorded:
// done() called exactly once, never inside Submit(), on the submitting reactor.
class IoBatch {
 public:
  IoBatch() = default;
  IoBatch(const IoBatch&) = delete;
  IoBatch& operator=(const IoBatch&) = delete;

  // Adds a request (not yet submitted); the reference stays valid for the batch's life.
  IoRequest& Add(IoOp op, uint64_t offset, uint64_t length, void* buf = nullptr,
                 uint32_t flags = 0);
  // Submits every added, not yet submitted request in one reactor task, then blocks until all
  // of them completed (aborts after kIoDeadline). Then lets the reactor run one more round so
  // a duplicate completion would be seen.
  void SubmitAndWait(Reactor& reactor, BlockDevice& device);

  size_t size() const { return entries_.size(); }
  IoRequest& request(size_t i) { return entries_[i].req; }
  // How many times done() ran for request i.
  int done_calls(size_t i) const { return entries_[i].done_calls; }
  // True when every request completed exactly once, none inline, all on the right reactor.
  bool ContractHeld() const;
  // Human-readable description of the first contract violation ("" if none).
  std::string ContractViolation() const;
  // Requests whose status is not OK.
  size_t failures() const;

 private:
  struct Entry {
    IoRequest req;
    IoBatch* batch = nullptr;
    Reactor* reactor = nullptr;  // where it was submitted
    bool submitting = false;     // Submit() has not returned yet
    bool submitted = false;
    int done_calls = 0;
    bool inline_completion = false;
    bool wrong_reactor = false;
  };
  static void OnDone(IoRequest* req);

  std::deque<Entry> entries_;  // stable addresses
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t completed_ = 0;  // guarded by mu_
};

// A fresh directory under base, removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "shale-test", const std::string& base = "/tmp");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const { return path_ + "/" + std::string(name); }
  // Creates a sparse file of size bytes named name and returns its path; aborts on failure.
  std::string SparseFile(std::string_view name, uint64_t size) const;

 private:
  std::string path_;
};

// Deterministic, seed-distinct content: every 8 bytes differ within and across seeds.
void FillPattern(std::span<uint8_t> buf, uint64_t seed);
// Index of the first byte that differs from FillPattern(seed), or -1 when all match.
int64_t FindPatternMismatch(std::span<const uint8_t> buf, uint64_t seed);
bool IsAllZero(std::span<const uint8_t> buf);

}  // namespace shale::testutil
