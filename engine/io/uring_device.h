// UringDevice: the default BlockDevice, a regular file or block device driven through the
// io_uring ring of the reactor that submits each request.
//
// Contract, and why:
//  - Submit() runs on a reactor thread and prepares SQEs on that reactor's ring; the request
//    completes on the same reactor, never inside Submit() (errors found at submission are
//    delivered through Reactor::Defer). The reactor submits every SQE prepared during one
//    loop iteration with a single io_uring_enter, so a burst of requests costs one syscall:
//    batching comes from the reactor, and this class never calls io_uring_submit itself.
//  - Bounded queue: at most DeviceOptions::max_in_flight requests per reactor are in the
//    kernel at once; the rest wait in a FIFO (IoRequest::next_waiting) and start, in order,
//    as completions free slots. This bounds kernel work, CQ pressure and queueing latency.
//  - No allocation per I/O: on a reactor's first request the device allocates that reactor's
//    fixed array of max_in_flight slots; each slot is the CompletionHandler (SQE user_data) of
//    the request it carries. Per-reactor state is indexed by Reactor::id() and only ever
//    touched by that reactor's thread, so the data path takes no locks.
//  - Kernel quirks stop here: -EAGAIN/-EINTR are resubmitted (at most kMaxRetries times, then
//    EIO), short transfers resubmit the remainder, a read that hits end of file is an I/O
//    error, and -errno becomes a Status (Status::FromErrno) here and nowhere above.
//  - Read/write: IORING_OP_READ/WRITE on one buffer; FUA is RWF_DSYNC. Flush is
//    fsync(DATASYNC). Discard punches a hole (no effect where unsupported). Write-zeroes uses
//    FALLOC_FL_ZERO_RANGE and, where the filesystem refuses it, writes zeros from a shared
//    zero buffer in 1 MiB chunks.
//  - Files are opened O_DIRECT; where refused (EINVAL, e.g. some FUSE/ramfs) the device falls
//    back to buffered I/O with a warning. Flush still makes writes durable either way.
//  - The *Sync API blocks the calling thread (pread/pwrite/fdatasync/fallocate) and is meant
//    for control-plane threads; it is safe concurrently with asynchronous I/O.
//  - Lifetime: destroy the device only after every request submitted to it has completed.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/io/block_device.h"
#include "engine/io/reactor.h"

namespace shale {

class DeviceFile;

class UringDevice final : public BlockDevice {
 public:
  // EAGAIN/EINTR resubmissions allowed per request before it fails with EIO.
  static constexpr uint32_t kMaxRetries = 1000;
  // Reads through the page cache (DeviceOptions::cached_reads) of at least this many bytes go
  // to io_uring's workers: their copy out of the page cache then overlaps with the reactor's
  // other work instead of running inline in io_uring_enter (docs/performance.md, "Read cache").
  static constexpr uint64_t kAsyncCachedReadBytes = 64 * 1024;
  // Upper bound accepted for DeviceOptions::max_in_flight.
  static constexpr unsigned kMaxInFlightLimit = 4096;

  // Opens path (regular file or block device). Fails with NotSupported (suggesting
  // --io-backend=libaio) if io_uring lacks READ, WRITE or FSYNC.
  static Result<std::unique_ptr<UringDevice>> Open(const std::string& path,
                                                   const DeviceOptions& options);
  ~UringDevice() override;  // requires: no request in flight or waiting
  UringDevice(const UringDevice&) = delete;
  UringDevice& operator=(const UringDevice&) = delete;

  DeviceGeometry geometry() const override;
  Result<uint64_t> Grow(uint64_t size_bytes) override;
  std::string kind() const override { return "io_uring"; }
  void Submit(IoRequest* req) override;
  Status ReadSync(uint64_t offset, void* buf, uint64_t length) override;
  Status WriteSync(uint64_t offset, const void* buf, uint64_t length) override;
  Status FlushSync() override;
  Status DiscardSync(uint64_t offset, uint64_t length) override;

  // O_DIRECT in effect (false after the buffered fallback or with options.direct = false).
  bool direct() const;
  // The kernel's io_uring has IORING_OP_FALLOCATE (discard and fast write-zeroes).
  bool fallocate_supported() const { return fallocate_supported_; }

  // Counters of the calling reactor's queue on this device.
  struct QueueStats {
    uint64_t in_flight = 0;       // requests in the kernel now (<= max_in_flight)
    uint64_t waiting = 0;         // requests queued behind them
    uint64_t peak_in_flight = 0;  // high-water mark of in_flight
    uint64_t sqes = 0;            // SQEs prepared (more than requests when split or retried)
  };
  // Reactor thread only; all zeros if this reactor never submitted to the device.
  QueueStats queue_stats() const;

  // Tests only, before the first Submit(): caps each read/write SQE at bytes (a multiple of
  // the logical block size) so the short-transfer path runs on every multi-chunk request.
  void set_max_transfer_for_testing(uint64_t bytes) { max_transfer_ = bytes; }

 private:
  struct Queue;
  enum class Stage : uint8_t { kRead, kWrite, kFsync, kPunch, kZeroRange, kZeroWrite };
  // One in-flight request: the SQE's user_data.
  struct Slot final : CompletionHandler {
    void OnCompletion(int32_t res, uint32_t cqe_flags) override;
    Queue* queue = nullptr;
    IoRequest* req = nullptr;  // null while free
    Slot* next_free = nullptr;
    Stage stage = Stage::kRead;
  };

  UringDevice(std::unique_ptr<DeviceFile> file, const DeviceOptions& options);
  Queue& QueueFor(Reactor* reactor);
  void Start(Queue& q, Slot* slot, IoRequest* req);
  void Issue(Queue& q, Slot* slot);
  void Complete(Slot* slot, int32_t res);
  void Finish(Slot* slot, Status status);
  Status ErrorStatus(const Slot& slot, int err) const;

  std::unique_ptr<DeviceFile> file_;
  unsigned max_in_flight_;
  bool fallocate_supported_ = false;
  uint64_t max_transfer_;
  std::array<std::unique_ptr<Queue>, Reactor::kMaxReactors> queues_;
};

}  // namespace shale
