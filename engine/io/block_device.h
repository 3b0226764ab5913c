// BlockDevice: the one seam for block I/O on pool data. Nothing outside engine/io calls
// io_uring, libaio or pread/pwrite on a pool's device.
//
// Two faces:
//  - Submit(): asynchronous, for reactors. Called on a reactor thread; req->done is called later
//    on the same reactor, exactly once, never from inside Submit().
//  - *Sync(): blocking, for control-plane threads (superblock I/O, the metadata commit pipeline).
//
// Semantics every implementation keeps (checked by block_device_conformance_test):
//  - Read/Write: offset and length multiples of geometry().logical_block_size, inside the
//    device; buffers aligned to kIoBufferAlignment.
//  - Flush: every write that completed before the flush was submitted is durable when it
//    completes. A write with kIoFua is durable when it completes.
//  - WriteZeroes: the range reads as zeros afterwards.
//  - Discard: the device may forget the range; it reads as zeros or as old data afterwards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale {

enum class IoOp : uint8_t { kRead = 0, kWrite, kFlush, kDiscard, kWriteZeroes, kCount };
std::string_view IoOpName(IoOp op);

inline constexpr uint32_t kIoFua = 1u << 0;  // write: durable on completion
inline constexpr size_t kIoBufferAlignment = 4096;

struct IoRequest {
  // Set by the caller.
  IoOp op = IoOp::kRead;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint64_t length = 0;  // bytes; ignored for kFlush
  void* buf = nullptr;  // kRead/kWrite only
  void (*done)(IoRequest* req) = nullptr;
  void* ctx = nullptr;  // for the caller

  // Set by the device before done().
  Status status;

  // Device-private bookkeeping; callers must not touch.
  uint64_t transferred = 0;
  uint32_t retries = 0;
  IoRequest* next_waiting = nullptr;
  void* device_private = nullptr;
};

struct DeviceGeometry {
  uint64_t size_bytes = 0;
  uint32_t logical_block_size = 512;    // minimum I/O granularity and alignment
  uint32_t physical_block_size = 4096;  // I/O smaller than this may cost a read-modify-write
  bool is_block_device = false;
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // A copy: the size can change (Grow) while requests are validated on reactors.
  virtual DeviceGeometry geometry() const = 0;
  // "io_uring", "libaio", "memory", "fault(<inner>)".
  virtual std::string kind() const = 0;
  virtual void Submit(IoRequest* req) = 0;

  virtual Status ReadSync(uint64_t offset, void* buf, uint64_t length) = 0;
  virtual Status WriteSync(uint64_t offset, const void* buf, uint64_t length) = 0;
  virtual Status FlushSync() = 0;
  virtual Status DiscardSync(uint64_t offset, uint64_t length) = 0;

  // Online growth (`shale pool expand`). A regular file is first extended to `size_bytes`
  // (0: as it is now; never shrunk), a block device is asked for its size again (`size_bytes`
  // must be 0 or what it reports). Returns the new size; geometry() reports it from then on,
  // to every thread. FailedPrecondition if the device got smaller, NotSupported where the
  // backend cannot grow. The caller makes the new size durable (FlushSync) before relying on it.
  virtual Result<uint64_t> Grow(uint64_t size_bytes);
};

// Checks an asynchronous request against the geometry (range, alignment, buffer).
Status ValidateIo(const DeviceGeometry& geometry, const IoRequest& req);
Status ValidateRange(const DeviceGeometry& geometry, uint64_t offset, uint64_t length);

enum class IoBackend : uint8_t { kIoUring, kLibaio };
Result<IoBackend> ParseIoBackend(std::string_view name);
std::string_view IoBackendName(IoBackend backend);

struct DeviceOptions {
  IoBackend backend = IoBackend::kIoUring;
  bool direct = true;  // O_DIRECT; falls back to buffered I/O where unsupported
  // With `direct`: reads go through the kernel's page cache (a second, buffered read-only
  // descriptor) while writes, discards and flushes stay on the O_DIRECT one, so durability is
  // unchanged and the kernel keeps the two coherent (a direct write or a hole punched drops the
  // cached pages it covers). io_uring only; the libaio backend ignores it (logged).
  bool cached_reads = false;
  unsigned max_in_flight = 128;  // per device and reactor; further requests wait in a FIFO
};

// Opens a regular file or a block device for pool I/O.
Result<std::unique_ptr<BlockDevice>> OpenBlockDevice(const std::string& path,
                                                     const DeviceOptions& options);

// Creates a sparse file of the given size (fails if it exists).
Status CreateSparseFile(const std::string& path, uint64_t size);
// Allocates every block of an existing file (posix_fallocate); NoSpace if the filesystem is full.
Status PreallocateFile(const std::string& path, uint64_t size);

// Aligned buffer for device I/O.
struct AlignedFree {
  void operator()(void* p) const;
};
using AlignedBuffer = std::unique_ptr<uint8_t[], AlignedFree>;
AlignedBuffer AllocateAligned(size_t size);

}  // namespace shale
