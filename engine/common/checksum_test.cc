// The hashes Shale stores (superblocks, map checkpoints, snapshot digests, backup chunks) and
// puts on the wire (replica frames) go through libxxhash's run-time dispatch (xxh3.h). These
// tests hold them to the portable reference code compiled into this file, so a CPU whose vector
// unit the dispatcher picks never changes a stored or sent value.
#include <gtest/gtest.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <cstdint>
#include <vector>

#include "engine/common/checksum.h"

#define XXH_INLINE_ALL
#include <xxhash.h>  // the reference: every function static, under its own names

#if defined(__x86_64__)
extern "C" XXH64_hash_t XXH3_64bits_dispatch(const void* input, size_t len);  // libxxhash
#endif

namespace shale {
namespace {

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (uint8_t& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

// Lengths on both sides of XXH3's internal thresholds (16, 128, 240 bytes, a stripe of 64, a
// block of 1 KiB) and the sizes Shale hashes most: 4 KiB blocks, 1 MiB regions.
std::vector<size_t> Lengths() {
  std::vector<size_t> n = {0,   1,   3,   4,    8,    9,    16,   17,   127,  128,        129,
                           239, 240, 241, 1023, 1024, 1025, 4095, 4096, 4097, 65536 + 13, 1 << 20};
  return n;
}

TEST(Checksum, Hash64MatchesTheReferenceCodeAtEveryLengthAndAlignment) {
  const std::vector<uint8_t> data = Pattern((1 << 20) + 64);
  for (size_t len : Lengths()) {
    for (size_t misalign : {size_t{0}, size_t{1}, size_t{7}, size_t{33}}) {
      const uint8_t* p = data.data() + misalign;
      for (uint64_t seed : {uint64_t{0}, uint64_t{0x5ea1e}}) {
        EXPECT_EQ(Hash64(p, len, seed), XXH3_64bits_withSeed(p, len, seed))
            << "length " << len << " misaligned by " << misalign << " seed " << seed;
      }
    }
  }
}

TEST(Checksum, HashContent128MatchesTheReferenceCodeAtEveryLengthAndAlignment) {
  const std::vector<uint8_t> data = Pattern((1 << 20) + 64);
  for (size_t len : Lengths()) {
    for (size_t misalign : {size_t{0}, size_t{5}}) {
      const uint8_t* p = data.data() + misalign;
      const XXH128_hash_t want = XXH3_128bits(p, len);
      const Hash128 got = HashContent128(p, len);
      EXPECT_EQ(got.low, want.low64) << "length " << len << " misaligned by " << misalign;
      EXPECT_EQ(got.high, want.high64) << "length " << len << " misaligned by " << misalign;
    }
  }
}

TEST(Checksum, Hash64StreamEqualsHash64OfThePiecesLaidEndToEnd) {
  const std::vector<uint8_t> data = Pattern(3 * 4096 + 77);
  for (size_t cut : {size_t{0}, size_t{1}, size_t{64}, size_t{239}, size_t{4096}, size_t{9000}}) {
    Hash64Stream h;
    h.Update(data.data(), cut);
    h.Update(data.data() + cut, 0);
    h.Update(data.data() + cut, data.size() - cut);
    EXPECT_EQ(h.Digest(), Hash64(data.data(), data.size())) << "cut at " << cut;
    EXPECT_EQ(h.Digest(), XXH3_64bits(data.data(), data.size())) << "cut at " << cut;
  }
}

#if defined(__x86_64__)
// XINUSE (XGETBV with ECX=1): which parts of the vector state hold something other than zeros.
// Bit 2: the upper halves of YMM0-15; bit 6: the upper halves of ZMM0-15. Legacy-SSE code runs
// with a false dependency on them while they are in use.
bool UpperVectorStateInUse() {
  uint32_t lo = 0;
  uint32_t hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1));
  return (lo & ((1u << 2) | (1u << 6))) != 0;
}

bool CanReadXinuse() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & bit_AVX) == 0 || (c & bit_OSXSAVE) == 0) {
    return false;
  }
  return __get_cpuid_count(0xd, 1, &a, &b, &c, &d) != 0 && (a & (1u << 2)) != 0;
}

TEST(Checksum, HashingLeavesNoUpperVectorStateBehind) {
  if (!CanReadXinuse()) {
    // Without AVX no code can leave the upper state in use; nothing to check on this CPU.
    std::printf("no AVX or no XGETBV(1) on this CPU: the upper vector state cannot be dirty\n");
    return;
  }
  const std::vector<uint8_t> data = Pattern(1 << 20);
  // What the library does by itself (informational: a later libxxhash may clear it).
  const uint64_t raw = XXH3_64bits_dispatch(data.data(), data.size());
  const bool raw_dirty = UpperVectorStateInUse();
  std::printf("libxxhash's dispatched XXH3 leaves the upper state %s\n",
              raw_dirty ? "in use" : "clear");
  const uint64_t h64 = Hash64(data.data(), data.size());
  EXPECT_FALSE(UpperVectorStateInUse()) << "after Hash64";
  EXPECT_EQ(h64, raw);
  HashContent128(data.data(), data.size());
  EXPECT_FALSE(UpperVectorStateInUse()) << "after HashContent128";
  Hash64Stream s;
  s.Update(data.data(), data.size());
  EXPECT_FALSE(UpperVectorStateInUse()) << "after Hash64Stream::Update";
}
#endif

TEST(Checksum, KnownValuesOfTheEmptyInputStayFixed) {
  // Published XXH3 values: a change of algorithm (not of vector unit) would show here first.
  EXPECT_EQ(Hash64(nullptr, 0, 0), 0x2d06800538d394c2ULL);
  const Hash128 empty = HashContent128(nullptr, 0);
  EXPECT_EQ(empty.high, 0x99aa06d3014798d8ULL);
  EXPECT_EQ(empty.low, 0x6001c324468d497fULL);
}

}  // namespace
}  // namespace shale
