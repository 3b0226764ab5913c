#include "engine/io/uring_device.h"

#include <linux/falloc.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>

#include "engine/io/bounded_slots.h"
#include "engine/io/device_file.h"

namespace shale {

// The state one reactor keeps for this device. Only that reactor's thread touches it.
struct UringDevice::Queue {
  UringDevice* device = nullptr;
  Reactor* reactor = nullptr;  // refreshed on every Submit (reactor ids are reused)
  explicit Queue(unsigned max_in_flight) : slots(max_in_flight) {}
  BoundedSlots<Slot> slots;  // max_in_flight slots; requests beyond them wait in its FIFO
  uint64_t sqes = 0;
};

Result<std::unique_ptr<UringDevice>> UringDevice::Open(const std::string& path,
                                                       const DeviceOptions& options) {
  if (options.max_in_flight == 0 || options.max_in_flight > kMaxInFlightLimit) {
    return Status::InvalidArgument("max_in_flight must be in [1, " +
                                   std::to_string(kMaxInFlightLimit) + "], got " +
                                   std::to_string(options.max_in_flight));
  }
  io_uring_probe* probe = io_uring_get_probe();
  if (probe == nullptr) {
    return Status::NotSupported(
        "io_uring is unavailable (disabled by kernel.io_uring_disabled, seccomp, or a kernel "
        "older than 5.6); use --io-backend=libaio");
  }
  const bool has_read = io_uring_opcode_supported(probe, IORING_OP_READ) != 0;
  const bool has_write = io_uring_opcode_supported(probe, IORING_OP_WRITE) != 0;
  const bool has_fsync = io_uring_opcode_supported(probe, IORING_OP_FSYNC) != 0;
  const bool has_fallocate = io_uring_opcode_supported(probe, IORING_OP_FALLOCATE) != 0;
  io_uring_free_probe(probe);
  if (!has_read || !has_write || !has_fsync) {
    return Status::NotSupported(
        "this kernel's io_uring lacks READ, WRITE or FSYNC (needs Linux 5.6+); use "
        "--io-backend=libaio");
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<DeviceFile> file,
                         DeviceFile::Open(path, options.direct, "io_uring", options.cached_reads));
  std::unique_ptr<UringDevice> dev(new UringDevice(std::move(file), options));
  dev->fallocate_supported_ = has_fallocate;
  return dev;
}

UringDevice::UringDevice(std::unique_ptr<DeviceFile> file, const DeviceOptions& options)
    : file_(std::move(file)),
      max_in_flight_(options.max_in_flight),
      max_transfer_(kMaxTransferBytes) {}

UringDevice::~UringDevice() {
  // The owner guarantees every request completed (and so happened-before this).
  for (const auto& q : queues_) {
    if (q == nullptr) continue;
    SHALE_CHECK(q->slots.idle(), "UringDevice destroyed with I/O in flight on ", file_->path());
  }
}

DeviceGeometry UringDevice::geometry() const { return file_->geometry(); }
Result<uint64_t> UringDevice::Grow(uint64_t size_bytes) { return file_->Grow(size_bytes); }
bool UringDevice::direct() const { return file_->direct(); }

UringDevice::QueueStats UringDevice::queue_stats() const {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "queue_stats() outside a reactor thread");
  const auto& q = queues_[static_cast<size_t>(reactor->id())];
  if (q == nullptr) return QueueStats{};
  return {.in_flight = q->slots.in_flight(),
          .waiting = q->slots.waiting(),
          .peak_in_flight = q->slots.peak_in_flight(),
          .sqes = q->sqes};
}

UringDevice::Queue& UringDevice::QueueFor(Reactor* reactor) {
  auto& q = queues_[static_cast<size_t>(reactor->id())];
  if (q == nullptr) {
    // Once per reactor, not per I/O: the slots live as long as the device.
    q = std::make_unique<Queue>(max_in_flight_);
    q->device = this;
    for (unsigned i = 0; i < q->slots.size(); ++i) q->slots[i].queue = q.get();
  }
  q->reactor = reactor;
  return *q;
}

void UringDevice::Submit(IoRequest* req) {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "BlockDevice::Submit outside a reactor thread");
  SHALE_CHECK(req->done != nullptr, "BlockDevice::Submit without a done callback");
  req->status = Status::Ok();
  req->transferred = 0;
  req->retries = 0;
  req->next_waiting = nullptr;
  req->device_private = nullptr;
  Status st = ValidateIo(geometry(), *req);
  if (!st.ok() || (req->op == IoOp::kDiscard && !fallocate_supported_)) {
    // Invalid, or a discard this kernel cannot express (advisory: succeed without effect).
    req->status = std::move(st);
    reactor->Defer([req] { req->done(req); });
    return;
  }
  Queue& q = QueueFor(reactor);
  if (Slot* slot = q.slots.Acquire(req)) Start(q, slot, req);
}

void UringDevice::Start(Queue& q, Slot* slot, IoRequest* req) {
  // The slot already holds `req` (BoundedSlots::Acquire/Release).
  req->device_private = slot;
  switch (req->op) {
    case IoOp::kRead:
      slot->stage = Stage::kRead;
      break;
    case IoOp::kWrite:
      slot->stage = Stage::kWrite;
      break;
    case IoOp::kFlush:
      slot->stage = Stage::kFsync;
      break;
    case IoOp::kDiscard:
      slot->stage = Stage::kPunch;
      break;
    case IoOp::kWriteZeroes:
      slot->stage = fallocate_supported_ && !file_->zero_range_unsupported() ? Stage::kZeroRange
                                                                             : Stage::kZeroWrite;
      break;
    case IoOp::kCount:
      SHALE_CHECK(false, "invalid op passed validation");
  }
  Issue(q, slot);
}

void UringDevice::Issue(Queue& q, Slot* slot) {
  IoRequest* req = slot->req;
  const int fd = file_->fd();
  io_uring_sqe* sqe = q.reactor->PrepareSqe(slot);
  ++q.sqes;
  const uint64_t done = req->transferred;
  const uint64_t remaining = req->length - done;
  switch (slot->stage) {
    case Stage::kRead:
      io_uring_prep_read(sqe, file_->read_fd(), static_cast<uint8_t*>(req->buf) + done,
                         static_cast<unsigned>(std::min(remaining, max_transfer_)),
                         req->offset + done);
      if (file_->read_fd() != fd && remaining >= kAsyncCachedReadBytes) sqe->flags |= IOSQE_ASYNC;
      break;
    case Stage::kWrite:
      io_uring_prep_write(sqe, fd, static_cast<const uint8_t*>(req->buf) + done,
                          static_cast<unsigned>(std::min(remaining, max_transfer_)),
                          req->offset + done);
      if (req->flags & kIoFua) sqe->rw_flags = RWF_DSYNC;
      break;
    case Stage::kZeroWrite:
      io_uring_prep_write(
          sqe, fd, ZeroChunk(),
          static_cast<unsigned>(std::min({remaining, max_transfer_, kZeroChunkBytes})),
          req->offset + done);
      break;
    case Stage::kFsync:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
    case Stage::kPunch:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              static_cast<off_t>(req->offset), static_cast<off_t>(req->length));
      break;
    case Stage::kZeroRange:
      io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                              static_cast<off_t>(req->offset), static_cast<off_t>(req->length));
      break;
  }
}

void UringDevice::Slot::OnCompletion(int32_t res, uint32_t /*cqe_flags*/) {
  queue->device->Complete(this, res);
}

Status UringDevice::ErrorStatus(const Slot& slot, int err) const {
  static constexpr const char* kStageNames[] = {"read",       "write",      "fsync",
                                                "punch-hole", "zero-range", "write-zeroes"};
  const IoRequest& req = *slot.req;
  return Status::FromErrno(
      err, file_->Context(kStageNames[static_cast<int>(slot.stage)], req.offset, req.length));
}

void UringDevice::Complete(Slot* slot, int32_t res) {
  IoRequest* req = slot->req;
  if (res == -EAGAIN || res == -EINTR) {
    if (++req->retries <= kMaxRetries) {
      Issue(*slot->queue, slot);
      return;
    }
    const std::string why = "gave up after " + std::to_string(kMaxRetries) + " EAGAIN retries";
    Finish(slot, ErrorStatus(*slot, EIO).WithContext(why));
    return;
  }
  switch (slot->stage) {
    case Stage::kRead:
    case Stage::kWrite:
    case Stage::kZeroWrite:
      if (res < 0) return Finish(slot, ErrorStatus(*slot, -res));
      if (res == 0) {
        // A read of 0 bytes inside the device means the file shrank under us; a write of 0
        // bytes would never make progress.
        return Finish(slot,
                      Status::IoError(file_->Context(slot->stage == Stage::kRead ? "read" : "write",
                                                     req->offset, req->length) +
                                      ": no progress at offset " +
                                      std::to_string(req->offset + req->transferred) +
                                      " (was the file truncated?)"));
      }
      req->transferred += static_cast<uint64_t>(res);
      if (req->transferred < req->length) {
        Issue(*slot->queue, slot);  // short transfer: the remainder
        return;
      }
      return Finish(slot, Status::Ok());
    case Stage::kFsync:
      return Finish(slot, res < 0 ? ErrorStatus(*slot, -res) : Status::Ok());
    case Stage::kPunch:
      // Discard is advisory: a filesystem that cannot punch holes simply keeps the data.
      return Finish(slot, res < 0 && res != -EOPNOTSUPP ? ErrorStatus(*slot, -res) : Status::Ok());
    case Stage::kZeroRange:
      if (res == -EOPNOTSUPP || res == -EINVAL) {
        file_->MarkZeroRangeUnsupported();
        slot->stage = Stage::kZeroWrite;
        req->transferred = 0;
        Issue(*slot->queue, slot);
        return;
      }
      return Finish(slot, res < 0 ? ErrorStatus(*slot, -res) : Status::Ok());
  }
}

void UringDevice::Finish(Slot* slot, Status status) {
  Queue& q = *slot->queue;
  IoRequest* req = slot->req;
  if (status.ok()) req->transferred = req->length;
  req->status = std::move(status);
  req->device_private = nullptr;
  if (IoRequest* next = q.slots.Release(slot)) Start(q, slot, next);
  // Last: once the caller has seen its last completion it may destroy the device.
  req->done(req);
}

Status UringDevice::ReadSync(uint64_t offset, void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Read(offset, buf, length);
}

Status UringDevice::WriteSync(uint64_t offset, const void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Write(offset, buf, length);
}

Status UringDevice::FlushSync() { return file_->DataSync(); }

Status UringDevice::DiscardSync(uint64_t offset, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  return file_->Discard(offset, length);
}

}  // namespace shale
