// AioDevice: the libaio fallback BlockDevice (--io-backend=libaio), for kernels or sandboxes
// where io_uring is unusable for file I/O.
//
// Contract, and why:
//  - Same BlockDevice contract as UringDevice: Submit() on a reactor thread, completion later
//    on the same reactor, at most DeviceOptions::max_in_flight requests per reactor in flight
//    and the rest in a FIFO (IoRequest::next_waiting), no allocation per read/write.
//  - Each reactor gets its own io_context_t (io_setup(max_in_flight)) and an eventfd that the
//    kernel signals on every aio completion (io_set_eventfd). While aio is in flight the
//    reactor's ring keeps an IORING_OP_READ armed on that eventfd; on wakeup the device reaps
//    with a non-blocking io_getevents. So the reactor never blocks and needs no extra thread
//    for reads and writes. iocbs prepared during one loop iteration go to the kernel with one
//    io_submit (deferred to the end of the batch).
//  - FUA writes carry RWF_DSYNC (aio_rw_flags); a kernel that rejects it gets a plain write
//    followed by fdatasync.
//  - Flush, discard and write-zeroes have no good aio form; they run on one worker thread the
//    device owns (fdatasync / fallocate) and complete on the submitting reactor via Post().
//  - Lifetime: destroy the device only after every request submitted to it has completed, and
//    keep the submitting reactors running until then.
#pragma once

#include <libaio.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/io/block_device.h"
#include "engine/io/reactor.h"

namespace shale {

class DeviceFile;

class AioDevice final : public BlockDevice {
 public:
  // EAGAIN/EINTR resubmissions allowed per request before it fails with EIO.
  static constexpr uint32_t kMaxRetries = 1000;
  // Upper bound accepted for DeviceOptions::max_in_flight.
  static constexpr unsigned kMaxInFlightLimit = 4096;

  // Opens path (regular file or block device) and starts the worker thread.
  static Result<std::unique_ptr<AioDevice>> Open(const std::string& path,
                                                 const DeviceOptions& options);
  ~AioDevice() override;  // requires: no request in flight; joins the worker, io_destroy()s
  AioDevice(const AioDevice&) = delete;
  AioDevice& operator=(const AioDevice&) = delete;

  DeviceGeometry geometry() const override;
  Result<uint64_t> Grow(uint64_t size_bytes) override;
  std::string kind() const override { return "libaio"; }
  void Submit(IoRequest* req) override;
  Status ReadSync(uint64_t offset, void* buf, uint64_t length) override;
  Status WriteSync(uint64_t offset, const void* buf, uint64_t length) override;
  Status FlushSync() override;
  Status DiscardSync(uint64_t offset, uint64_t length) override;

  bool direct() const;  // O_DIRECT in effect

  // Counters of the calling reactor's queue on this device.
  struct QueueStats {
    uint64_t in_flight = 0;       // requests started and not completed (<= max_in_flight)
    uint64_t waiting = 0;         // requests queued behind them
    uint64_t peak_in_flight = 0;  // high-water mark of in_flight
    uint64_t iocbs = 0;           // iocbs accepted by io_submit
  };
  // Reactor thread only; all zeros if this reactor never submitted to the device.
  QueueStats queue_stats() const;

 private:
  struct Queue;
  enum class Stage : uint8_t { kRead, kWrite, kWorker, kFuaFlush };
  struct Slot {
    iocb cb{};  // cb.data points back at the slot
    Queue* queue = nullptr;
    IoRequest* req = nullptr;  // null while free
    Slot* next_free = nullptr;
    Stage stage = Stage::kRead;
    bool fua_by_flush = false;  // FUA write sent without RWF_DSYNC: fdatasync afterwards
    Status worker_status;       // result handed back from the worker thread
  };
  // The reactor-ring read on a queue's eventfd.
  class EventHandler final : public CompletionHandler {
   public:
    void OnCompletion(int32_t res, uint32_t cqe_flags) override;
    Queue* queue = nullptr;
  };

  AioDevice(std::unique_ptr<DeviceFile> file, const DeviceOptions& options);
  Result<Queue*> QueueFor(Reactor* reactor);
  void Start(Queue& q, Slot* slot, IoRequest* req);
  void PrepareAio(Queue& q, Slot* slot);
  void SubmitPending(Queue& q);
  void ArmEventRead(Queue& q);
  void Reap(Queue& q);
  void CompleteAio(Slot* slot, long res);
  void ToWorker(Slot* slot);
  void WorkerMain();
  void Finish(Slot* slot, Status status);
  Status ErrorStatus(const Slot& slot, int err) const;

  std::unique_ptr<DeviceFile> file_;
  unsigned max_in_flight_;
  // Cleared (by a reactor thread) the first time the kernel rejects RWF_DSYNC in aio.
  std::atomic<bool> dsync_supported_{true};
  std::array<std::unique_ptr<Queue>, Reactor::kMaxReactors> queues_;

  std::mutex worker_mu_;
  std::condition_variable worker_cv_;
  struct WorkerJob {
    Slot* slot;
    Reactor* reactor;  // where the completion goes
  };
  std::deque<WorkerJob> worker_jobs_;  // guarded by worker_mu_
  bool worker_stop_ = false;           // guarded by worker_mu_
  std::thread worker_;
};

}  // namespace shale
