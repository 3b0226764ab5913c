// MemoryDevice: a sparse in-RAM BlockDevice (4 KiB pages allocated on first write).
// Used by unit tests and as the durable "platter" under FaultDevice. Thread-safe.
#pragma once

#include <atomic>
#include <mutex>
#include <unordered_map>

#include "engine/io/block_device.h"

namespace shale {

class MemoryDevice final : public BlockDevice {
 public:
  explicit MemoryDevice(uint64_t size_bytes, uint32_t logical_block_size = 512);

  DeviceGeometry geometry() const override;
  // Sparse: growing only moves the end (size_bytes 0: unchanged).
  Result<uint64_t> Grow(uint64_t size_bytes) override;
  std::string kind() const override { return "memory"; }
  void Submit(IoRequest* req) override;
  Status ReadSync(uint64_t offset, void* buf, uint64_t length) override;
  Status WriteSync(uint64_t offset, const void* buf, uint64_t length) override;
  Status FlushSync() override { return Status::Ok(); }
  Status DiscardSync(uint64_t offset, uint64_t length) override;

  // Bytes of pages currently held (for tests of space reclamation).
  uint64_t allocated_bytes() const;

 private:
  static constexpr uint64_t kPage = 4096;
  void ReadLocked(uint64_t offset, uint8_t* out, uint64_t length) const;
  void WriteLocked(uint64_t offset, const uint8_t* in, uint64_t length);
  void ZeroLocked(uint64_t offset, uint64_t length);

  DeviceGeometry geometry_;  // size_bytes unused: size_bytes_ is the size
  std::atomic<uint64_t> size_bytes_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::unique_ptr<uint8_t[]>> pages_;
};

}  // namespace shale
