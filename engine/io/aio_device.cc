#include "engine/io/aio_device.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <utility>

#include "engine/common/log.h"
#include "engine/io/bounded_slots.h"
#include "engine/io/device_file.h"

namespace shale {

// The state one reactor keeps for this device. Only that reactor's thread touches it (the
// worker thread only receives slots through worker_jobs_ and posts them back).
struct AioDevice::Queue {
  AioDevice* device = nullptr;
  Reactor* reactor = nullptr;  // refreshed on every Submit (reactor ids are reused)
  io_context_t ctx = nullptr;
  int event_fd = -1;
  uint64_t event_buf = 0;  // target of the armed eventfd read
  EventHandler handler;
  bool armed = false;  // an eventfd read is in the reactor's ring
  explicit Queue(unsigned max_in_flight) : slots(max_in_flight) {}
  BoundedSlots<Slot> slots;       // max_in_flight slots; requests beyond them wait in its FIFO
  std::vector<iocb*> pending;     // prepared, not yet io_submit()ed (<= max_in_flight)
  bool submit_scheduled = false;  // SubmitPending is deferred
  uint32_t submit_retries = 0;    // consecutive io_submit EAGAINs
  std::vector<io_event> events;   // io_getevents target, max_in_flight entries
  uint64_t aio_in_flight = 0;     // iocbs in the kernel
  uint64_t iocbs = 0;             // iocbs accepted by io_submit
};

Result<std::unique_ptr<AioDevice>> AioDevice::Open(const std::string& path,
                                                   const DeviceOptions& options) {
  if (options.max_in_flight == 0 || options.max_in_flight > kMaxInFlightLimit) {
    return Status::InvalidArgument("max_in_flight must be in [1, " +
                                   std::to_string(kMaxInFlightLimit) + "], got " +
                                   std::to_string(options.max_in_flight));
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<DeviceFile> file,
                         DeviceFile::Open(path, options.direct, "libaio"));
  if (options.cached_reads) {
    SHALE_LOG_WARN("cached reads need the io_uring backend; libaio reads stay direct",
                   {"path", path});
  }
  std::unique_ptr<AioDevice> dev(new AioDevice(std::move(file), options));
  dev->worker_ = std::thread([d = dev.get()] { d->WorkerMain(); });
  return dev;
}

AioDevice::AioDevice(std::unique_ptr<DeviceFile> file, const DeviceOptions& options)
    : file_(std::move(file)), max_in_flight_(options.max_in_flight) {}

AioDevice::~AioDevice() {
  {
    std::lock_guard lock(worker_mu_);
    worker_stop_ = true;
  }
  worker_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  // The owner guarantees every request completed (and so happened-before this).
  for (const auto& q : queues_) {
    if (q == nullptr) continue;
    SHALE_CHECK(q->slots.idle() && !q->armed, "AioDevice destroyed with I/O in flight on ",
                file_->path());
    io_destroy(q->ctx);
    close(q->event_fd);
  }
}

DeviceGeometry AioDevice::geometry() const { return file_->geometry(); }
Result<uint64_t> AioDevice::Grow(uint64_t size_bytes) { return file_->Grow(size_bytes); }
bool AioDevice::direct() const { return file_->direct(); }

AioDevice::QueueStats AioDevice::queue_stats() const {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "queue_stats() outside a reactor thread");
  const auto& q = queues_[static_cast<size_t>(reactor->id())];
  if (q == nullptr) return QueueStats{};
  return {.in_flight = q->slots.in_flight(),
          .waiting = q->slots.waiting(),
          .peak_in_flight = q->slots.peak_in_flight(),
          .iocbs = q->iocbs};
}

Result<AioDevice::Queue*> AioDevice::QueueFor(Reactor* reactor) {
  auto& q = queues_[static_cast<size_t>(reactor->id())];
  if (q == nullptr) {
    // Once per reactor, not per I/O.
    auto fresh = std::make_unique<Queue>(max_in_flight_);
    int rc = io_setup(static_cast<int>(max_in_flight_), &fresh->ctx);
    if (rc < 0) {
      return Status::FromErrno(-rc, "libaio io_setup(" + std::to_string(max_in_flight_) +
                                        ") (is fs.aio-max-nr too low?)");
    }
    fresh->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fresh->event_fd < 0) {
      int err = errno;
      io_destroy(fresh->ctx);
      return Status::FromErrno(err, "libaio eventfd");
    }
    fresh->device = this;
    fresh->handler.queue = fresh.get();
    for (unsigned i = 0; i < fresh->slots.size(); ++i) fresh->slots[i].queue = fresh.get();
    fresh->pending.reserve(max_in_flight_);
    fresh->events.resize(max_in_flight_);
    q = std::move(fresh);
  }
  q->reactor = reactor;
  return q.get();
}

void AioDevice::Submit(IoRequest* req) {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "BlockDevice::Submit outside a reactor thread");
  SHALE_CHECK(req->done != nullptr, "BlockDevice::Submit without a done callback");
  req->status = Status::Ok();
  req->transferred = 0;
  req->retries = 0;
  req->next_waiting = nullptr;
  req->device_private = nullptr;
  Status st = ValidateIo(geometry(), *req);
  Queue* q = nullptr;
  if (st.ok()) {
    Result<Queue*> qr = QueueFor(reactor);
    if (qr.ok()) {
      q = qr.value();
    } else {
      st = qr.TakeStatus();
    }
  }
  if (!st.ok()) {
    req->status = std::move(st);
    reactor->Defer([req] { req->done(req); });
    return;
  }
  if (Slot* slot = q->slots.Acquire(req)) Start(*q, slot, req);
}

void AioDevice::Start(Queue& q, Slot* slot, IoRequest* req) {
  // The slot already holds `req` (BoundedSlots::Acquire/Release).
  slot->fua_by_flush = false;
  req->device_private = slot;
  switch (req->op) {
    case IoOp::kRead:
      slot->stage = Stage::kRead;
      PrepareAio(q, slot);
      break;
    case IoOp::kWrite:
      slot->stage = Stage::kWrite;
      PrepareAio(q, slot);
      break;
    case IoOp::kFlush:
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      slot->stage = Stage::kWorker;
      ToWorker(slot);
      break;
    case IoOp::kCount:
      SHALE_CHECK(false, "invalid op passed validation");
  }
}

void AioDevice::PrepareAio(Queue& q, Slot* slot) {
  IoRequest* req = slot->req;
  const uint64_t done = req->transferred;
  const size_t len = static_cast<size_t>(std::min(req->length - done, kMaxTransferBytes));
  auto* buf = static_cast<uint8_t*>(req->buf) + done;
  const auto offset = static_cast<long long>(req->offset + done);
  if (slot->stage == Stage::kRead) {
    io_prep_pread(&slot->cb, file_->fd(), buf, len, offset);
  } else {
    io_prep_pwrite(&slot->cb, file_->fd(), buf, len, offset);
    if ((req->flags & kIoFua) && !slot->fua_by_flush) {
      if (dsync_supported_.load(std::memory_order_relaxed)) {
        slot->cb.aio_rw_flags = RWF_DSYNC;
      } else {
        slot->fua_by_flush = true;
      }
    }
  }
  io_set_eventfd(&slot->cb, q.event_fd);
  slot->cb.data = slot;
  q.pending.push_back(&slot->cb);
  if (!q.submit_scheduled) {
    // One io_submit for everything prepared during this reactor batch.
    q.submit_scheduled = true;
    q.reactor->Defer([qp = &q] { qp->device->SubmitPending(*qp); });
  }
}

void AioDevice::SubmitPending(Queue& q) {
  q.submit_scheduled = false;
  std::vector<std::pair<Slot*, Status>> failed;  // allocates only on the error path
  bool retry_later = false;
  size_t i = 0;
  while (i < q.pending.size()) {
    int rc = io_submit(q.ctx, static_cast<long>(q.pending.size() - i), q.pending.data() + i);
    if (rc > 0) {
      i += static_cast<size_t>(rc);
      q.aio_in_flight += static_cast<uint64_t>(rc);
      q.iocbs += static_cast<uint64_t>(rc);
      q.submit_retries = 0;
      continue;
    }
    if (rc == 0) rc = -EAGAIN;
    auto* slot = static_cast<Slot*>(q.pending[i]->data);
    if (rc == -EAGAIN || rc == -EINTR) {
      if (++q.submit_retries <= kMaxRetries) {
        retry_later = true;
        break;
      }
      q.submit_retries = 0;
      rc = -EIO;
    } else if ((rc == -EINVAL || rc == -EOPNOTSUPP) && slot->cb.aio_rw_flags != 0) {
      // This kernel's aio rejects RWF_DSYNC: FUA becomes write + fdatasync from now on.
      if (dsync_supported_.exchange(false)) {
        SHALE_LOG_WARN("libaio rejects RWF_DSYNC; FUA writes will be followed by fdatasync",
                       {"path", file_->path()});
      }
      slot->cb.aio_rw_flags = 0;
      slot->fua_by_flush = true;
      continue;  // the same iocb again
    }
    failed.emplace_back(slot, ErrorStatus(*slot, -rc));
    ++i;
  }
  q.pending.erase(q.pending.begin(), q.pending.begin() + static_cast<ptrdiff_t>(i));
  if (retry_later) {
    q.submit_scheduled = true;
    q.reactor->Defer([qp = &q] { qp->device->SubmitPending(*qp); });
  }
  if (q.aio_in_flight > 0) ArmEventRead(q);
  for (auto& [slot, status] : failed) Finish(slot, std::move(status));
}

void AioDevice::ArmEventRead(Queue& q) {
  if (q.armed) return;
  io_uring_sqe* sqe = q.reactor->PrepareSqe(&q.handler);
  io_uring_prep_read(sqe, q.event_fd, &q.event_buf, sizeof(q.event_buf), 0);
  q.armed = true;
}

void AioDevice::EventHandler::OnCompletion(int32_t res, uint32_t /*cqe_flags*/) {
  // res is 8 (the eventfd counter was read) or an error; either way, look for events. A stale
  // counter (events already reaped) only costs one empty io_getevents.
  if (res < 0 && res != -EAGAIN && res != -EINTR) {
    SHALE_LOG_ERROR("libaio eventfd read failed", {"error", -res});
  }
  queue->armed = false;
  queue->device->Reap(*queue);
}

void AioDevice::Reap(Queue& q) {
  timespec no_wait{0, 0};
  int n = io_getevents(q.ctx, 0, static_cast<long>(q.events.size()), q.events.data(), &no_wait);
  if (n < 0) {
    if (n != -EINTR) SHALE_LOG_ERROR("libaio io_getevents failed", {"error", -n});
    n = 0;
  }
  q.aio_in_flight -= static_cast<uint64_t>(n);
  // Re-arm before completing: after the last completion the device may be destroyed.
  if (q.aio_in_flight > 0) ArmEventRead(q);
  for (int i = 0; i < n; ++i) {
    auto* slot = static_cast<Slot*>(q.events[static_cast<size_t>(i)].data);
    CompleteAio(slot, static_cast<long>(q.events[static_cast<size_t>(i)].res));
  }
}

Status AioDevice::ErrorStatus(const Slot& slot, int err) const {
  const IoRequest& req = *slot.req;
  std::string_view op = IoOpName(req.op);
  if (slot.stage == Stage::kFuaFlush) op = "fdatasync after FUA write";
  return Status::FromErrno(err, file_->Context(op, req.offset, req.length));
}

void AioDevice::CompleteAio(Slot* slot, long res) {
  IoRequest* req = slot->req;
  Queue& q = *slot->queue;
  if (res == -EAGAIN || res == -EINTR) {
    if (++req->retries <= kMaxRetries) {
      PrepareAio(q, slot);
      return;
    }
    const std::string why = "gave up after " + std::to_string(kMaxRetries) + " EAGAIN retries";
    return Finish(slot, ErrorStatus(*slot, EIO).WithContext(why));
  }
  if (res < 0) return Finish(slot, ErrorStatus(*slot, static_cast<int>(-res)));
  if (res == 0) {
    return Finish(slot,
                  Status::IoError(file_->Context(IoOpName(req->op), req->offset, req->length) +
                                  ": no progress at offset " +
                                  std::to_string(req->offset + req->transferred) +
                                  " (was the file truncated?)"));
  }
  req->transferred += static_cast<uint64_t>(res);
  if (req->transferred < req->length) {
    PrepareAio(q, slot);  // short transfer: the remainder
    return;
  }
  if (slot->fua_by_flush) {
    slot->stage = Stage::kFuaFlush;
    ToWorker(slot);
    return;
  }
  Finish(slot, Status::Ok());
}

void AioDevice::ToWorker(Slot* slot) {
  {
    std::lock_guard lock(worker_mu_);
    worker_jobs_.push_back(WorkerJob{slot, slot->queue->reactor});
  }
  worker_cv_.notify_one();
}

void AioDevice::WorkerMain() {
  pthread_setname_np(pthread_self(), "shale-aio-work");
  while (true) {
    WorkerJob job{};
    {
      std::unique_lock lock(worker_mu_);
      worker_cv_.wait(lock, [&] { return worker_stop_ || !worker_jobs_.empty(); });
      if (worker_jobs_.empty()) return;  // stopping, and nothing left
      job = worker_jobs_.front();
      worker_jobs_.pop_front();
    }
    Slot* slot = job.slot;
    const IoRequest& req = *slot->req;
    Status st;
    if (slot->stage == Stage::kFuaFlush || req.op == IoOp::kFlush) {
      st = file_->DataSync();
    } else if (req.op == IoOp::kDiscard) {
      st = file_->Discard(req.offset, req.length);
    } else {
      st = file_->WriteZeroes(req.offset, req.length);
    }
    slot->worker_status = std::move(st);
    // Captures one pointer: no allocation in std::function.
    job.reactor->Post(
        [slot] { slot->queue->device->Finish(slot, std::move(slot->worker_status)); });
  }
}

void AioDevice::Finish(Slot* slot, Status status) {
  Queue& q = *slot->queue;
  IoRequest* req = slot->req;
  if (status.ok()) req->transferred = req->length;
  req->status = std::move(status);
  req->device_private = nullptr;
  if (IoRequest* next = q.slots.Release(slot)) Start(q, slot, next);
  // Last: once the caller has seen its last completion it may destroy the device.
  req->done(req);
}

Status AioDevice::ReadSync(uint64_t offset, void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Read(offset, buf, length);
}

Status AioDevice::WriteSync(uint64_t offset, const void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Write(offset, buf, length);
}

Status AioDevice::FlushSync() { return file_->DataSync(); }

Status AioDevice::DiscardSync(uint64_t offset, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Discard(offset, length);
}

}  // namespace shale
