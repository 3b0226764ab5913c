#include "engine/io/buffer_cache.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace shale {
namespace {

bool Aligned(const AlignedBuffer& b) { return reinterpret_cast<uintptr_t>(b.get()) % 4096 == 0; }

TEST(BufferCacheTest, ABufferPutBackIsTheNextOneOfItsClassWithoutAnAllocation) {
  BufferCache cache(32 * kMiB);
  uint64_t cap = 0;
  AlignedBuffer a = cache.Get(5000, &cap);
  EXPECT_EQ(cap, 8 * kKiB) << "the power-of-two class above the length";
  EXPECT_EQ(BufferCache::CapacityFor(5000), cap);
  EXPECT_EQ(BufferCache::CapacityFor(1), 4 * kKiB);
  EXPECT_TRUE(Aligned(a));
  const uint8_t* first = a.get();
  cache.Put(std::move(a), cap);
  EXPECT_EQ(cache.cached_bytes(), 8 * kKiB);
  uint64_t cap2 = 0;
  AlignedBuffer b = cache.Get(8 * kKiB, &cap2);
  EXPECT_EQ(b.get(), first) << "reused";
  EXPECT_EQ(cap2, 8 * kKiB);
  EXPECT_EQ(cache.allocations(), 1u);
  EXPECT_EQ(cache.cached_bytes(), 0u);
  uint64_t cap3 = 0;
  AlignedBuffer c = cache.Get(8 * kMiB, &cap3);  // another class: a new buffer
  EXPECT_EQ(cap3, 8 * kMiB);
  EXPECT_EQ(cache.allocations(), 2u);
}

TEST(BufferCacheTest, WhatExceedsTheLimitIsFreedAndClearFreesEverything) {
  BufferCache cache(16 * kMiB);
  uint64_t c1 = 0, c2 = 0, c3 = 0;
  AlignedBuffer a = cache.Get(8 * kMiB, &c1);
  AlignedBuffer b = cache.Get(8 * kMiB, &c2);
  AlignedBuffer c = cache.Get(1 * kMiB, &c3);
  cache.Put(std::move(a), c1);
  cache.Put(std::move(b), c2);
  cache.Put(std::move(c), c3);  // 17 MiB would exceed 16: freed
  EXPECT_EQ(cache.cached_bytes(), 16 * kMiB);
  uint64_t cap = 0;
  AlignedBuffer d = cache.Get(1 * kMiB, &cap);
  EXPECT_EQ(cache.allocations(), 4u) << "the 1 MiB buffer was not kept";
  cache.Clear();
  EXPECT_EQ(cache.cached_bytes(), 0u);
  AlignedBuffer e = cache.Get(8 * kMiB, &cap);
  EXPECT_EQ(cache.allocations(), 5u) << "Clear freed the 8 MiB buffers";
}

TEST(BufferCacheTest, ALengthAboveTheLargestClassGetsItsOwnSizeAndIsNeverKept) {
  BufferCache cache(1024 * kMiB);
  const uint64_t len = BufferCache::kLargestClass + 4096;
  uint64_t cap = 0;
  AlignedBuffer a = cache.Get(len, &cap);
  EXPECT_EQ(cap, len);
  EXPECT_EQ(BufferCache::CapacityFor(len), len);
  EXPECT_TRUE(Aligned(a));
  a[len - 1] = 1;  // the whole length is there (ASan checks it)
  cache.Put(std::move(a), cap);
  EXPECT_EQ(cache.cached_bytes(), 0u);
}

}  // namespace
}  // namespace shale
