// ClusterAllocator: which physical clusters of a pool are in use.
//
// "In use" means referenced by some mapping, in flight to become referenced, or freed but not
// yet released: a freed cluster is only handed out again after the metadata that frees it is
// durable (Release() is called by the commit pipeline then), so a crash can never leave one
// cluster referenced by the old owner's committed mapping while a new owner writes into it.
//
// Thread-safe; allocation happens once per cluster (not per I/O), so a mutex is cheap enough.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale {

// A plain bitset with chunked (de)serialisation; not thread-safe.
class ClusterBitmap {
 public:
  explicit ClusterBitmap(uint64_t bits = 0);
  uint64_t size() const { return bits_; }
  bool Test(uint64_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
  void Set(uint64_t i) { words_[i >> 6] |= (1ull << (i & 63)); }
  void Clear(uint64_t i) { words_[i >> 6] &= ~(1ull << (i & 63)); }
  uint64_t Count() const;
  // Adds clear bits up to `bits` (never shrinks).
  void Grow(uint64_t bits);
  // First clear bit in [from, size()), or size() if none.
  uint64_t FindClear(uint64_t from) const;
  // Bytes of chunk c: bits [c*chunk_bits, (c+1)*chunk_bits), chunk_bits a multiple of 64.
  std::string EncodeChunk(uint64_t chunk, uint64_t chunk_bits) const;
  Status DecodeChunk(uint64_t chunk, uint64_t chunk_bits, std::string_view bytes);
  bool operator==(const ClusterBitmap&) const = default;

 private:
  uint64_t bits_;
  std::vector<uint64_t> words_;
};

class ClusterAllocator {
 public:
  explicit ClusterAllocator(uint64_t cluster_count);

  // Load time: marks a cluster used. Returns false if it already was (double reference).
  bool MarkUsed(uint64_t cluster);
  // Returns a free cluster, preferring hint and the clusters after it (wrapping around).
  // NoSpace when the pool is full.
  Result<uint32_t> Allocate(uint64_t hint);
  // Returns clusters to the free pool (only after their free is durable).
  void Release(const std::vector<uint32_t>& clusters);

  // Adds free clusters up to `cluster_count` (pool expand; never shrinks).
  void Grow(uint64_t cluster_count);

  uint64_t cluster_count() const;
  uint64_t free_count() const;
  bool IsUsed(uint64_t cluster) const;
  ClusterBitmap Snapshot() const;

 private:
  mutable std::mutex mu_;
  uint64_t cluster_count_;
  ClusterBitmap used_;
  uint64_t used_count_ = 0;
};

}  // namespace shale
