#include "engine/io/block_device.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace shale {

std::string_view IoOpName(IoOp op) {
  switch (op) {
    case IoOp::kRead:
      return "read";
    case IoOp::kWrite:
      return "write";
    case IoOp::kFlush:
      return "flush";
    case IoOp::kDiscard:
      return "discard";
    case IoOp::kWriteZeroes:
      return "write-zeroes";
    case IoOp::kCount:
      break;
  }
  return "unknown";
}

Result<uint64_t> BlockDevice::Grow(uint64_t /*size_bytes*/) {
  return Status::NotSupported("a " + kind() + " device cannot grow");
}

Status ValidateRange(const DeviceGeometry& geometry, uint64_t offset, uint64_t length) {
  const uint64_t lbs = geometry.logical_block_size;
  if (offset % lbs != 0 || length % lbs != 0) {
    return Status::InvalidArgument("I/O at offset " + std::to_string(offset) + " length " +
                                   std::to_string(length) + " is not aligned to " +
                                   std::to_string(lbs) + " bytes");
  }
  if (offset > geometry.size_bytes || length > geometry.size_bytes - offset) {
    return Status::OutOfRange("I/O at offset " + std::to_string(offset) + " length " +
                              std::to_string(length) + " is beyond the device size " +
                              std::to_string(geometry.size_bytes));
  }
  return Status::Ok();
}

Status ValidateIo(const DeviceGeometry& geometry, const IoRequest& req) {
  switch (req.op) {
    case IoOp::kFlush:
      return Status::Ok();
    case IoOp::kRead:
    case IoOp::kWrite:
      if (req.buf == nullptr) return Status::InvalidArgument("I/O without a buffer");
      if (reinterpret_cast<uintptr_t>(req.buf) % geometry.logical_block_size != 0) {
        return Status::InvalidArgument("I/O buffer is not aligned to the logical block size");
      }
      if (req.length == 0) return Status::InvalidArgument("zero-length I/O");
      return ValidateRange(geometry, req.offset, req.length);
    case IoOp::kDiscard:
    case IoOp::kWriteZeroes:
      if (req.length == 0) return Status::InvalidArgument("zero-length I/O");
      return ValidateRange(geometry, req.offset, req.length);
    case IoOp::kCount:
      break;
  }
  return Status::InvalidArgument("unknown I/O operation");
}

Result<IoBackend> ParseIoBackend(std::string_view name) {
  if (name == "io_uring" || name == "uring") return IoBackend::kIoUring;
  if (name == "libaio" || name == "aio") return IoBackend::kLibaio;
  return Status::InvalidArgument("unknown I/O backend '" + std::string(name) +
                                 "' (choose io_uring or libaio)");
}

std::string_view IoBackendName(IoBackend backend) {
  return backend == IoBackend::kIoUring ? "io_uring" : "libaio";
}

Status CreateSparseFile(const std::string& path, uint64_t size) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "create " + path);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    unlink(path.c_str());
    return Status::FromErrno(err, "size " + path);
  }
  if (fsync(fd) != 0) {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "fsync " + path);
  }
  close(fd);
  return Status::Ok();
}

Status PreallocateFile(const std::string& path, uint64_t size) {
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  int rc = posix_fallocate(fd, 0, static_cast<off_t>(size));
  if (rc == 0 && fsync(fd) != 0) rc = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(rc, "preallocate " + path);
  return Status::Ok();
}

void AlignedFree::operator()(void* p) const { std::free(p); }

AlignedBuffer AllocateAligned(size_t size) {
  size_t rounded = (size + kIoBufferAlignment - 1) / kIoBufferAlignment * kIoBufferAlignment;
  if (rounded == 0) rounded = kIoBufferAlignment;
  void* p = std::aligned_alloc(kIoBufferAlignment, rounded);
  SHALE_CHECK(p != nullptr, "out of memory allocating ", rounded, " bytes");
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

}  // namespace shale
