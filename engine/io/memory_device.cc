#include "engine/io/memory_device.h"

#include <algorithm>
#include <cstring>

#include "engine/io/reactor.h"

namespace shale {

MemoryDevice::MemoryDevice(uint64_t size_bytes, uint32_t logical_block_size)
    : size_bytes_(size_bytes) {
  geometry_.logical_block_size = logical_block_size;
  geometry_.physical_block_size = 4096;
}

DeviceGeometry MemoryDevice::geometry() const {
  DeviceGeometry g = geometry_;
  g.size_bytes = size_bytes_.load(std::memory_order_acquire);
  return g;
}

Result<uint64_t> MemoryDevice::Grow(uint64_t size_bytes) {
  std::lock_guard lock(mu_);
  const uint64_t current = size_bytes_.load(std::memory_order_relaxed);
  if (size_bytes != 0 && size_bytes % geometry_.logical_block_size != 0) {
    return Status::InvalidArgument("size " + std::to_string(size_bytes) +
                                   " is not a multiple of the block size");
  }
  if (size_bytes > current) size_bytes_.store(size_bytes, std::memory_order_release);
  return size_bytes_.load(std::memory_order_relaxed);
}

void MemoryDevice::ReadLocked(uint64_t offset, uint8_t* out, uint64_t length) const {
  while (length > 0) {
    uint64_t page = offset / kPage, in_page = offset % kPage;
    uint64_t n = std::min(length, kPage - in_page);
    auto it = pages_.find(page);
    if (it == pages_.end()) {
      std::memset(out, 0, n);
    } else {
      std::memcpy(out, it->second.get() + in_page, n);
    }
    out += n;
    offset += n;
    length -= n;
  }
}

void MemoryDevice::WriteLocked(uint64_t offset, const uint8_t* in, uint64_t length) {
  while (length > 0) {
    uint64_t page = offset / kPage, in_page = offset % kPage;
    uint64_t n = std::min(length, kPage - in_page);
    auto& p = pages_[page];
    if (!p) {
      p.reset(new uint8_t[kPage]);
      std::memset(p.get(), 0, kPage);
    }
    std::memcpy(p.get() + in_page, in, n);
    in += n;
    offset += n;
    length -= n;
  }
}

void MemoryDevice::ZeroLocked(uint64_t offset, uint64_t length) {
  while (length > 0) {
    uint64_t page = offset / kPage, in_page = offset % kPage;
    uint64_t n = std::min(length, kPage - in_page);
    auto it = pages_.find(page);
    if (it != pages_.end()) {
      if (n == kPage) {
        pages_.erase(it);
      } else {
        std::memset(it->second.get() + in_page, 0, n);
      }
    }
    offset += n;
    length -= n;
  }
}

void MemoryDevice::Submit(IoRequest* req) {
  Reactor* reactor = Reactor::Current();
  SHALE_CHECK(reactor != nullptr, "BlockDevice::Submit outside a reactor thread");
  req->status = ValidateIo(geometry(), *req);
  if (req->status.ok()) {
    std::lock_guard lock(mu_);
    switch (req->op) {
      case IoOp::kRead:
        ReadLocked(req->offset, static_cast<uint8_t*>(req->buf), req->length);
        break;
      case IoOp::kWrite:
        WriteLocked(req->offset, static_cast<const uint8_t*>(req->buf), req->length);
        break;
      case IoOp::kDiscard:
      case IoOp::kWriteZeroes:
        ZeroLocked(req->offset, req->length);
        break;
      case IoOp::kFlush:
      case IoOp::kCount:
        break;
    }
    req->transferred = req->length;
  }
  reactor->Defer([req] { req->done(req); });
}

Status MemoryDevice::ReadSync(uint64_t offset, void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  ReadLocked(offset, static_cast<uint8_t*>(buf), length);
  return Status::Ok();
}

Status MemoryDevice::WriteSync(uint64_t offset, const void* buf, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  WriteLocked(offset, static_cast<const uint8_t*>(buf), length);
  return Status::Ok();
}

Status MemoryDevice::DiscardSync(uint64_t offset, uint64_t length) {
  SHALE_RETURN_IF_ERROR(ValidateRange(geometry(), offset, length));
  std::lock_guard lock(mu_);
  ZeroLocked(offset, length);
  return Status::Ok();
}

uint64_t MemoryDevice::allocated_bytes() const {
  std::lock_guard lock(mu_);
  return pages_.size() * kPage;
}

}  // namespace shale
