// DeviceFile: an open pool file or block device, shared by the kernel-backed BlockDevices
// (UringDevice, AioDevice). Internal to engine/io.
//
// It owns what both backends do the same way: opening (O_DIRECT, falling back to buffered I/O
// where the filesystem refuses it), geometry (fstat for files, BLK* ioctls for block devices),
// and the blocking pread/pwrite/fdatasync/fallocate helpers behind their *Sync APIs and the
// libaio worker thread. Thread-safe: every member is const or atomic after Open().
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "engine/io/block_device.h"

namespace shale {

// Bytes in the shared zero buffer; write-zeroes fallbacks write at most this much per call.
inline constexpr uint64_t kZeroChunkBytes = 1 << 20;
// kZeroChunkBytes of zeros aligned for direct I/O, allocated once per process and never
// written, so any number of in-flight writes may use it as their source.
const uint8_t* ZeroChunk();

// Largest transfer handed to the kernel in one read/write (the kernel caps a single call at
// 0x7ffff000 bytes anyway); longer requests are split.
inline constexpr uint64_t kMaxTransferBytes = 1ull << 30;

class DeviceFile {
 public:
  // Opens path (a regular file or a block device) read-write. direct asks for O_DIRECT; where
  // the filesystem refuses it (EINVAL) the file is reopened buffered and a warning is logged.
  // backend names the caller ("io_uring", "libaio") in messages. Refuses directories, empty
  // files and anything that is neither a regular file nor a block device.
  // cached_reads (with an O_DIRECT descriptor): also opens a buffered read-only descriptor,
  // read_fd(), for reads through the page cache (DeviceOptions::cached_reads).
  static Result<std::unique_ptr<DeviceFile>> Open(const std::string& path, bool direct,
                                                  std::string_view backend,
                                                  bool cached_reads = false);
  ~DeviceFile();  // closes the descriptor
  DeviceFile(const DeviceFile&) = delete;
  DeviceFile& operator=(const DeviceFile&) = delete;

  int fd() const { return fd_; }
  // The descriptor reads use: the buffered one when reads are cached, else fd().
  int read_fd() const { return read_fd_ >= 0 ? read_fd_ : fd_; }
  bool cached_reads() const { return read_fd_ >= 0; }
  const std::string& path() const { return path_; }
  // Its size changes only through Grow(); any thread may read it meanwhile.
  DeviceGeometry geometry() const {
    DeviceGeometry g = geometry_;
    g.size_bytes = size_bytes_.load(std::memory_order_acquire);
    return g;
  }
  // BlockDevice::Grow: a regular file is extended to size_bytes (ftruncate; 0: as it is), a
  // block device's size is read again. Serialized by the caller (one control operation).
  Result<uint64_t> Grow(uint64_t size_bytes);
  bool direct() const { return direct_; }  // O_DIRECT in effect

  // Blocking helpers; the caller has validated the range. They loop over EINTR and short
  // transfers; under O_DIRECT a buffer not aligned to the logical block size is bounced.
  Status Read(uint64_t offset, void* buf, uint64_t length) const;
  Status Write(uint64_t offset, const void* buf, uint64_t length) const;
  Status DataSync() const;
  // Punches a hole; succeeds without effect where the filesystem cannot.
  Status Discard(uint64_t offset, uint64_t length) const;
  // FALLOC_FL_ZERO_RANGE, or writes of zeros where that is unsupported.
  Status WriteZeroes(uint64_t offset, uint64_t length) const;

  // Set once the filesystem refused FALLOC_FL_ZERO_RANGE (EOPNOTSUPP/EINVAL): later
  // write-zeroes go straight to writing zeros.
  bool zero_range_unsupported() const {
    return zero_range_unsupported_.load(std::memory_order_relaxed);
  }
  void MarkZeroRangeUnsupported() const {
    zero_range_unsupported_.store(true, std::memory_order_relaxed);
  }

  // "<backend> <op> <path> at offset X length Y": context for error statuses.
  std::string Context(std::string_view op, uint64_t offset, uint64_t length) const;

 private:
  DeviceFile() = default;
  Status WriteZeroChunks(uint64_t offset, uint64_t length) const;

  int fd_ = -1;
  int read_fd_ = -1;  // buffered, read-only: DeviceOptions::cached_reads
  std::string path_;
  std::string backend_;
  DeviceGeometry geometry_;  // size_bytes: as opened; size_bytes_ is the current size
  std::atomic<uint64_t> size_bytes_{0};
  bool direct_ = false;
  mutable std::atomic<bool> zero_range_unsupported_{false};
};

}  // namespace shale
