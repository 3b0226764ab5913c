#include "engine/pool/allocator.h"

#include <bit>
#include <cstring>

namespace shale {

ClusterBitmap::ClusterBitmap(uint64_t bits) : bits_(bits), words_((bits + 63) / 64, 0) {}

uint64_t ClusterBitmap::Count() const {
  uint64_t n = 0;
  for (uint64_t w : words_) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

void ClusterBitmap::Grow(uint64_t bits) {
  if (bits <= bits_) return;
  bits_ = bits;
  words_.resize((bits + 63) / 64, 0);  // bits past the old end were kept clear
}

uint64_t ClusterBitmap::FindClear(uint64_t from) const {
  if (from >= bits_) return bits_;
  uint64_t wi = from >> 6;
  uint64_t w = words_[wi] | ((1ull << (from & 63)) - 1);  // ignore bits before `from`
  while (true) {
    if (w != ~0ull) {
      uint64_t i = (wi << 6) + static_cast<uint64_t>(std::countr_one(w));
      return i < bits_ ? i : bits_;
    }
    if (++wi >= words_.size()) return bits_;
    w = words_[wi];
  }
}

std::string ClusterBitmap::EncodeChunk(uint64_t chunk, uint64_t chunk_bits) const {
  SHALE_CHECK(chunk_bits % 64 == 0, "chunk_bits must be a multiple of 64");
  uint64_t first_word = chunk * chunk_bits / 64, nwords = chunk_bits / 64;
  std::string out(nwords * 8, '\0');
  for (uint64_t i = 0; i < nwords && first_word + i < words_.size(); ++i) {
    uint64_t w = words_[first_word + i];
    std::memcpy(out.data() + i * 8, &w, 8);
  }
  return out;
}

Status ClusterBitmap::DecodeChunk(uint64_t chunk, uint64_t chunk_bits, std::string_view bytes) {
  uint64_t first_word = chunk * chunk_bits / 64, nwords = chunk_bits / 64;
  if (bytes.size() != nwords * 8)
    return Status::Corruption("allocation bitmap chunk has wrong size");
  if (first_word >= words_.size())
    return Status::Corruption("allocation bitmap chunk beyond the pool");
  for (uint64_t i = 0; i < nwords && first_word + i < words_.size(); ++i) {
    std::memcpy(&words_[first_word + i], bytes.data() + i * 8, 8);
  }
  // Bits past the end of the pool must be clear.
  if (bits_ % 64 != 0 && !words_.empty()) {
    uint64_t tail_mask = ~((1ull << (bits_ % 64)) - 1);
    if (words_.back() & tail_mask)
      return Status::Corruption("allocation bitmap marks clusters beyond the pool");
  }
  return Status::Ok();
}

ClusterAllocator::ClusterAllocator(uint64_t cluster_count)
    : cluster_count_(cluster_count), used_(cluster_count) {}

void ClusterAllocator::Grow(uint64_t cluster_count) {
  std::lock_guard lock(mu_);
  if (cluster_count <= cluster_count_) return;
  used_.Grow(cluster_count);
  cluster_count_ = cluster_count;
}

uint64_t ClusterAllocator::cluster_count() const {
  std::lock_guard lock(mu_);
  return cluster_count_;
}

bool ClusterAllocator::MarkUsed(uint64_t cluster) {
  std::lock_guard lock(mu_);
  SHALE_CHECK(cluster < cluster_count_, "cluster ", cluster, " out of range");
  if (used_.Test(cluster)) return false;
  used_.Set(cluster);
  ++used_count_;
  return true;
}

Result<uint32_t> ClusterAllocator::Allocate(uint64_t hint) {
  std::lock_guard lock(mu_);
  if (used_count_ >= cluster_count_) {
    return Status::NoSpace("pool is full (" + std::to_string(cluster_count_) + " clusters in use)");
  }
  if (hint >= cluster_count_) hint = 0;
  uint64_t c = used_.FindClear(hint);
  if (c >= cluster_count_) c = used_.FindClear(0);
  SHALE_CHECK(c < cluster_count_, "allocator count and bitmap disagree");
  used_.Set(c);
  ++used_count_;
  return static_cast<uint32_t>(c);
}

void ClusterAllocator::Release(const std::vector<uint32_t>& clusters) {
  std::lock_guard lock(mu_);
  for (uint32_t c : clusters) {
    SHALE_CHECK(c < cluster_count_ && used_.Test(c), "release of cluster ", c,
                " that is not in use");
    used_.Clear(c);
    --used_count_;
  }
}

uint64_t ClusterAllocator::free_count() const {
  std::lock_guard lock(mu_);
  return cluster_count_ - used_count_;
}

bool ClusterAllocator::IsUsed(uint64_t cluster) const {
  std::lock_guard lock(mu_);
  return used_.Test(cluster);
}

ClusterBitmap ClusterAllocator::Snapshot() const {
  std::lock_guard lock(mu_);
  return used_;
}

}  // namespace shale
