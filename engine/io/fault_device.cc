#include "engine/io/fault_device.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "engine/io/device_file.h"
#include "engine/io/reactor.h"

namespace shale {

FaultDevice::FaultDevice(std::shared_ptr<BlockDevice> inner, uint64_t seed)
    : inner_(std::move(inner)), rng_(seed) {
  SHALE_CHECK(inner_ != nullptr, "FaultDevice needs an inner device");
}

void FaultDevice::FailNth(IoOp op, uint64_t n, int err) {
  SHALE_CHECK(op < IoOp::kCount, "FailNth: bad op");
  SHALE_CHECK(n >= 1, "FailNth: n is 1-based");
  std::lock_guard lock(mu_);
  fail_nth_[static_cast<size_t>(op)] = PendingFault{n, err};
}

void FaultDevice::FailAllAfter(uint64_t n, int err) {
  std::lock_guard lock(mu_);
  fail_all_after_ = PendingFault{n, err};
}

uint64_t FaultDevice::unflushed_writes() const {
  std::lock_guard lock(mu_);
  return log_.size();
}

uint64_t FaultDevice::ops(IoOp op) const {
  SHALE_CHECK(op < IoOp::kCount, "ops: bad op");
  std::lock_guard lock(mu_);
  return ops_[static_cast<size_t>(op)];
}

Status FaultDevice::CountOpLocked(IoOp op, uint64_t offset, uint64_t length) {
  ++ops_[static_cast<size_t>(op)];
  auto injected = [&](int err, std::string_view why) {
    return Status::FromErrno(err, "fault injected (" + std::string(why) + ") on " +
                                      std::string(IoOpName(op)) + " at offset " +
                                      std::to_string(offset) + " length " + std::to_string(length));
  };
  if (dead_) return injected(dead_err_, "device failed");
  if (fail_all_after_) {
    if (fail_all_after_->remaining == 0) {
      dead_ = true;
      dead_err_ = fail_all_after_->err;
      fail_all_after_.reset();
      return injected(dead_err_, "device failed");
    }
    --fail_all_after_->remaining;
  }
  auto& nth = fail_nth_[static_cast<size_t>(op)];
  if (nth) {
    if (nth->remaining <= 1) {
      int err = nth->err;
      nth.reset();
      return injected(err, "FailNth");
    }
    --nth->remaining;
  }
  return Status::Ok();
}

void FaultDevice::ReadLocked(uint64_t offset, uint8_t* out, uint64_t length) const {
  const uint64_t end = offset + length;
  for (const LogEntry& e : log_) {
    const uint64_t lo = std::max(offset, e.offset);
    const uint64_t hi = std::min(end, e.offset + e.length);
    if (lo >= hi) continue;
    if (e.data.empty()) {
      std::memset(out + (lo - offset), 0, hi - lo);
    } else {
      std::memcpy(out + (lo - offset), e.data.data() + (lo - e.offset), hi - lo);
    }
  }
}

Status FaultDevice::ApplyLocked(const LogEntry& entry, uint64_t length) {
  if (!entry.data.empty()) return inner_->WriteSync(entry.offset, entry.data.data(), length);
  for (uint64_t done = 0; done < length;) {
    const uint64_t n = std::min(length - done, kZeroChunkBytes);
    SHALE_RETURN_IF_ERROR(inner_->WriteSync(entry.offset + done, ZeroChunk(), n));
    done += n;
  }
  return Status::Ok();
}

Status FaultDevice::FlushLocked() {
  size_t applied = 0;
  Status st;
  for (; applied < log_.size(); ++applied) {
    st = ApplyLocked(log_[applied], log_[applied].length);
    if (!st.ok()) break;
  }
  // What reached inner stays there; the rest stays volatile.
  log_.erase(log_.begin(), log_.begin() + static_cast<ptrdiff_t>(applied));
  SHALE_RETURN_IF_ERROR(st);
  return inner_->FlushSync();
}

Status FaultDevice::ExecuteLocked(IoRequest* req) {
  SHALE_RETURN_IF_ERROR(CountOpLocked(req->op, req->offset, req->length));
  switch (req->op) {
    case IoOp::kRead: {
      auto* out = static_cast<uint8_t*>(req->buf);
      SHALE_RETURN_IF_ERROR(inner_->ReadSync(req->offset, out, req->length));
      ReadLocked(req->offset, out, req->length);
      return Status::Ok();
    }
    case IoOp::kWrite: {
      const auto* in = static_cast<const uint8_t*>(req->buf);
      log_.push_back(
          LogEntry{req->offset, req->length, std::vector<uint8_t>(in, in + req->length)});
      if (req->flags & kIoFua) return FlushLocked();
      return Status::Ok();
    }
    case IoOp::kFlush:
      return FlushLocked();
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      log_.push_back(LogEntry{req->offset, req->length, {}});
      return Status::Ok();
    case IoOp::kCount:
      break;
  }
  return Status::Internal("FaultDevice: invalid op passed validation");
}

void FaultDevice::Submit(IoRequest* req) {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "BlockDevice::Submit outside a reactor thread");
  SHALE_CHECK(req->done != nullptr, "BlockDevice::Submit without a done callback");
  req->transferred = 0;
  req->retries = 0;
  req->next_waiting = nullptr;
  Status st = ValidateIo(geometry(), *req);
  if (st.ok()) {
    std::lock_guard lock(mu_);
    st = ExecuteLocked(req);
  }
  if (st.ok()) req->transferred = req->length;
  req->status = std::move(st);
  reactor->Defer([req] { req->done(req); });
}

Status FaultDevice::ReadSync(uint64_t offset, void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(CountOpLocked(IoOp::kRead, offset, length));
  auto* out = static_cast<uint8_t*>(buf);
  SHALE_RETURN_IF_ERROR(inner_->ReadSync(offset, out, length));
  ReadLocked(offset, out, length);
  return Status::Ok();
}

Status FaultDevice::WriteSync(uint64_t offset, const void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(CountOpLocked(IoOp::kWrite, offset, length));
  if (length == 0) return Status::Ok();
  const auto* in = static_cast<const uint8_t*>(buf);
  log_.push_back(LogEntry{offset, length, std::vector<uint8_t>(in, in + length)});
  return Status::Ok();
}

Status FaultDevice::FlushSync() {
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(CountOpLocked(IoOp::kFlush, 0, 0));
  return FlushLocked();
}

Status FaultDevice::DiscardSync(uint64_t offset, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  SHALE_RETURN_IF_ERROR(CountOpLocked(IoOp::kDiscard, offset, length));
  if (length == 0) return Status::Ok();
  log_.push_back(LogEntry{offset, length, {}});
  return Status::Ok();
}

void FaultDevice::PowerCut(CutMode mode) {
  std::lock_guard lock(mu_);
  if (mode == CutMode::kRandom) {
    const uint64_t block = inner_->geometry().logical_block_size;
    for (const LogEntry& e : log_) {
      if ((rng_() & 1) == 0) continue;  // lost
      uint64_t length = e.length;
      const uint64_t blocks = e.length / block;
      if (blocks > 1 && rng_() % 4 == 0) {
        length = (1 + rng_() % (blocks - 1)) * block;  // torn: a prefix of whole blocks
      }
      Status st = ApplyLocked(e, length);
      SHALE_CHECK(st.ok(), "PowerCut: the durable medium failed: ", st.ToString());
    }
    Status st = inner_->FlushSync();
    SHALE_CHECK(st.ok(), "PowerCut: the durable medium failed: ", st.ToString());
  }
  log_.clear();
  dead_ = false;
  fail_all_after_.reset();
  for (auto& f : fail_nth_) f.reset();
}

}  // namespace shale
