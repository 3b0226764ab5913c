#include "engine/io/device_file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/common/log.h"
#include "engine/common/units.h"

namespace shale {

namespace {

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The offset alignment O_DIRECT needs on this file (statx STATX_DIOALIGN, Linux 6.1+), or 0.
uint32_t DirectIoAlignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx sx {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    return std::max(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
  }
#else
  (void)fd;
#endif
  return 0;
}

}  // namespace

const uint8_t* ZeroChunk() {
  // Leaked on purpose: in-flight writes may reference it until process exit.
  static const uint8_t* const zeros = [] {
    AlignedBuffer buf = AllocateAligned(kZeroChunkBytes);
    std::memset(buf.get(), 0, kZeroChunkBytes);
    return buf.release();
  }();
  return zeros;
}

Result<std::unique_ptr<DeviceFile>> DeviceFile::Open(const std::string& path, bool direct,
                                                     std::string_view backend, bool cached_reads) {
  std::unique_ptr<DeviceFile> file(new DeviceFile());
  file->path_ = path;
  file->backend_ = std::string(backend);
  const int flags = O_RDWR | O_CLOEXEC;
  int fd = open(path.c_str(), flags | (direct ? O_DIRECT : 0));
  bool is_direct = direct;
  if (fd < 0 && errno == EINVAL && direct) {
    SHALE_LOG_WARN("O_DIRECT refused by the filesystem; using buffered I/O (page cache)",
                   {"path", path}, {"backend", backend});
    fd = open(path.c_str(), flags);
    is_direct = false;
  }
  if (fd < 0) {
    if (errno == EISDIR) {
      return Status::InvalidArgument(path + " is a directory; give a file or a block device");
    }
    return Status::FromErrno(errno, "open " + path);
  }
  file->fd_ = fd;
  file->direct_ = is_direct;
  if (cached_reads && is_direct) {
    // Reads through the page cache; the kernel drops cached pages that a direct write or a
    // punched hole on fd_ covers, so the two stay coherent (writes never go through this one).
    file->read_fd_ = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (file->read_fd_ < 0) return Status::FromErrno(errno, "open " + path + " for cached reads");
    // Volumes map clusters all over the device: read exactly what is asked (no readahead).
    (void)posix_fadvise(file->read_fd_, 0, 0, POSIX_FADV_RANDOM);
  }

  struct stat st {};
  if (fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  DeviceGeometry& g = file->geometry_;
  if (S_ISDIR(st.st_mode)) {
    return Status::InvalidArgument(path + " is a directory; give a file or a block device");
  } else if (S_ISREG(st.st_mode)) {
    if (st.st_size == 0) {
      return Status::InvalidArgument(path + " is empty (0 bytes); give the file a size first");
    }
    g.is_block_device = false;
    g.logical_block_size = 512;
    if (is_direct) {
      uint32_t align = DirectIoAlignment(fd);
      if (IsPowerOfTwo(align)) g.logical_block_size = std::max<uint32_t>(512, align);
    }
    uint64_t blksize = st.st_blksize > 0 ? static_cast<uint64_t>(st.st_blksize) : 4096;
    g.physical_block_size = static_cast<uint32_t>(
        IsPowerOfTwo(blksize) ? std::max<uint64_t>(blksize, g.logical_block_size) : 4096);
    g.size_bytes = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    uint64_t size = 0;
    int logical = 0;
    unsigned int physical = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0)
      return Status::FromErrno(errno, "BLKGETSIZE64 " + path);
    if (ioctl(fd, BLKSSZGET, &logical) != 0) return Status::FromErrno(errno, "BLKSSZGET " + path);
    if (ioctl(fd, BLKPBSZGET, &physical) != 0)
      return Status::FromErrno(errno, "BLKPBSZGET " + path);
    if (logical <= 0 || !IsPowerOfTwo(static_cast<uint64_t>(logical))) {
      return Status::NotSupported(path + " reports a logical block size of " +
                                  std::to_string(logical));
    }
    g.is_block_device = true;
    g.logical_block_size = static_cast<uint32_t>(logical);
    g.physical_block_size = std::max<uint32_t>(physical, g.logical_block_size);
    g.size_bytes = size;
    if (size == 0) return Status::InvalidArgument(path + " is an empty block device");
  } else {
    return Status::InvalidArgument(path + " is neither a regular file nor a block device");
  }
  // A trailing partial block cannot be addressed with aligned I/O.
  g.size_bytes -= g.size_bytes % g.logical_block_size;
  if (g.size_bytes == 0) {
    return Status::InvalidArgument(path + " is smaller than one block (" +
                                   std::to_string(g.logical_block_size) + " bytes)");
  }
  file->size_bytes_.store(g.size_bytes, std::memory_order_release);
  return file;
}

Result<uint64_t> DeviceFile::Grow(uint64_t size_bytes) {
  const uint64_t current = size_bytes_.load(std::memory_order_acquire);
  const uint64_t lbs = geometry_.logical_block_size;
  uint64_t now = 0;
  if (geometry_.is_block_device) {
    if (ioctl(fd_, BLKGETSIZE64, &now) != 0)
      return Status::FromErrno(errno, "BLKGETSIZE64 " + path_);
    if (size_bytes != 0 && size_bytes != now) {
      return Status::InvalidArgument("block device " + path_ + " is " + FormatSize(now) +
                                     "; its size is set by the device, not by --size (grow the "
                                     "device, then expand without --size)");
    }
  } else {
    if (size_bytes != 0 && size_bytes % lbs != 0) {
      return Status::InvalidArgument("size " + std::to_string(size_bytes) +
                                     " is not a multiple of the block size " + std::to_string(lbs));
    }
    struct stat st {};
    if (fstat(fd_, &st) != 0) return Status::FromErrno(errno, "stat " + path_);
    now = static_cast<uint64_t>(st.st_size);
    if (size_bytes > now) {
      if (ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
        return Status::FromErrno(errno, "extend " + path_ + " to " + FormatSize(size_bytes));
      }
      now = size_bytes;
    } else if (size_bytes != 0 && size_bytes < now) {
      return Status::InvalidArgument(path_ + " is already " + FormatSize(now) +
                                     "; a pool never shrinks");
    }
  }
  now -= now % lbs;
  if (now < current) {
    return Status::FailedPrecondition(path_ + " shrank from " + FormatSize(current) + " to " +
                                      FormatSize(now) + "; refusing to use it");
  }
  size_bytes_.store(now, std::memory_order_release);
  return now;
}

DeviceFile::~DeviceFile() {
  if (fd_ >= 0) close(fd_);
  if (read_fd_ >= 0) close(read_fd_);
}

std::string DeviceFile::Context(std::string_view op, uint64_t offset, uint64_t length) const {
  std::string s = backend_;
  s += ' ';
  s += op;
  s += ' ';
  s += path_;
  s += " at offset " + std::to_string(offset) + " length " + std::to_string(length);
  return s;
}

Status DeviceFile::Read(uint64_t offset, void* buf, uint64_t length) const {
  auto* out = static_cast<uint8_t*>(buf);
  const bool bounce = direct_ && reinterpret_cast<uintptr_t>(buf) % geometry_.logical_block_size;
  AlignedBuffer bounce_buf;
  if (bounce) bounce_buf = AllocateAligned(std::min(length, kZeroChunkBytes));
  uint64_t done = 0;
  while (done < length) {
    uint64_t want = std::min(length - done, bounce ? kZeroChunkBytes : kMaxTransferBytes);
    uint8_t* dst = bounce ? bounce_buf.get() : out + done;
    ssize_t n = pread(fd_, dst, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::FromErrno(errno, Context("read", offset, length));
    }
    if (n == 0) {
      return Status::IoError(Context("read", offset, length) + ": unexpected end of file at " +
                             std::to_string(offset + done) + " (was the file truncated?)");
    }
    if (bounce) std::memcpy(out + done, dst, static_cast<size_t>(n));
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status DeviceFile::Write(uint64_t offset, const void* buf, uint64_t length) const {
  const auto* in = static_cast<const uint8_t*>(buf);
  const bool bounce = direct_ && reinterpret_cast<uintptr_t>(buf) % geometry_.logical_block_size;
  AlignedBuffer bounce_buf;
  if (bounce) bounce_buf = AllocateAligned(std::min(length, kZeroChunkBytes));
  uint64_t done = 0;
  while (done < length) {
    uint64_t want = std::min(length - done, bounce ? kZeroChunkBytes : kMaxTransferBytes);
    const uint8_t* src = in + done;
    if (bounce) {
      std::memcpy(bounce_buf.get(), src, want);
      src = bounce_buf.get();
    }
    ssize_t n = pwrite(fd_, src, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::FromErrno(errno, Context("write", offset, length));
    }
    if (n == 0) return Status::IoError(Context("write", offset, length) + ": no progress");
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status DeviceFile::DataSync() const {
  while (fdatasync(fd_) != 0) {
    if (errno != EINTR) return Status::FromErrno(errno, backend_ + " fdatasync " + path_);
  }
  return Status::Ok();
}

Status DeviceFile::Discard(uint64_t offset, uint64_t length) const {
  while (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                   static_cast<off_t>(length)) != 0) {
    if (errno == EINTR) continue;
    if (errno == EOPNOTSUPP) return Status::Ok();  // discard is advisory
    return Status::FromErrno(errno, Context("discard", offset, length));
  }
  return Status::Ok();
}

Status DeviceFile::WriteZeroes(uint64_t offset, uint64_t length) const {
  if (!zero_range_unsupported()) {
    while (true) {
      if (fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(length)) == 0) {
        return Status::Ok();
      }
      if (errno == EINTR) continue;
      if (errno == EOPNOTSUPP || errno == EINVAL) {
        MarkZeroRangeUnsupported();
        break;
      }
      return Status::FromErrno(errno, Context("write-zeroes", offset, length));
    }
  }
  return WriteZeroChunks(offset, length);
}

Status DeviceFile::WriteZeroChunks(uint64_t offset, uint64_t length) const {
  uint64_t done = 0;
  while (done < length) {
    uint64_t n = std::min(length - done, kZeroChunkBytes);
    SHALE_RETURN_IF_ERROR(Write(offset + done, ZeroChunk(), n));
    done += n;
  }
  return Status::Ok();
}

}  // namespace shale
