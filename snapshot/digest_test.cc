// The digest tree against an independent, naive implementation of its definition
// (docs/format/snapshot-digest.md): every leaf hashed, every level built in full.
#include "snapshot/digest.h"

#include <gtest/gtest.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstring>
#include <functional>
#include <random>
#include <set>

namespace shale::snapshot {
namespace {

// Content of `size` bytes given block by block: fill(i, buf) writes block i (4 KiB).
using BlockFn = std::function<void(uint64_t index, uint8_t* block)>;

std::array<uint8_t, 16> Canon(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  std::array<uint8_t, 16> out;
  std::memcpy(out.data(), c.digest, 16);
  return out;
}

// The definition, written out directly from the spec.
Hash128 NaiveDigest(uint64_t size, const BlockFn& fill) {
  std::vector<std::array<uint8_t, 16>> level;
  const uint64_t blocks = (size + 4095) / 4096;
  std::vector<uint8_t> block(4096);
  for (uint64_t i = 0; i < blocks; ++i) {
    fill(i, block.data());
    if (i + 1 == blocks && size % 4096 != 0) {
      std::memset(block.data() + size % 4096, 0, 4096 - size % 4096);
    }
    level.push_back(Canon(XXH3_128bits(block.data(), 4096)));
  }
  std::array<uint8_t, 16> top;
  if (level.empty()) {
    top = Canon(XXH3_128bits("", 0));
  } else {
    while (level.size() > 1) {
      std::vector<std::array<uint8_t, 16>> up;
      for (size_t i = 0; i < level.size(); i += 256) {
        std::vector<uint8_t> cat;
        for (size_t j = i; j < std::min(level.size(), i + 256); ++j) {
          cat.insert(cat.end(), level[j].begin(), level[j].end());
        }
        up.push_back(Canon(XXH3_128bits(cat.data(), cat.size())));
      }
      level = std::move(up);
    }
    top = level[0];
  }
  std::vector<uint8_t> root;
  const char tag[] = "SHALE-DIGEST-V1";  // 15 characters + the terminating NUL = 16 bytes
  root.insert(root.end(), tag, tag + 16);
  for (int i = 0; i < 8; ++i) root.push_back(static_cast<uint8_t>(size >> (8 * i)));
  for (uint32_t v : {4096u, 256u}) {
    for (int i = 0; i < 4; ++i) root.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  root.insert(root.end(), top.begin(), top.end());
  EXPECT_EQ(root.size(), 48u);
  XXH128_hash_t r = XXH3_128bits(root.data(), root.size());
  return Hash128{r.low64, r.high64};
}

// Feeds the builder in pieces of random lengths (whole blocks), using AddZeros for pieces that
// are all zeros when `use_zeros`.
Hash128 BuilderDigest(uint64_t size, const BlockFn& fill,
                      const std::function<bool(uint64_t)>& is_zero_block, uint32_t seed,
                      bool use_zeros) {
  std::mt19937_64 rng(seed);
  DigestBuilder b(size);
  const uint64_t blocks = (size + 4095) / 4096;
  std::vector<uint8_t> buf;
  uint64_t i = 0;
  while (i < blocks) {
    const bool zero = use_zeros && is_zero_block(i);
    uint64_t n = 1;
    const uint64_t want = 1 + rng() % 600;
    while (i + n < blocks && n < want && (use_zeros ? is_zero_block(i + n) == zero : true)) ++n;
    const uint64_t len = std::min<uint64_t>(n * 4096, size - i * 4096);
    if (zero) {
      b.AddZeros(len);
    } else {
      buf.assign(n * 4096, 0);
      for (uint64_t k = 0; k < n; ++k) fill(i + k, buf.data() + k * 4096);
      b.AddData(buf.data(), len);
    }
    i += n;
  }
  EXPECT_EQ(b.position(), size);
  return b.Finish();
}

struct Content {
  uint64_t size;
  std::set<uint64_t> data_blocks;  // every other block is zero
  bool all_data = false;
  bool is_zero(uint64_t i) const { return !all_data && !data_blocks.count(i); }
  void fill(uint64_t i, uint8_t* block) const {
    if (is_zero(i)) {
      std::memset(block, 0, 4096);
      return;
    }
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 1;
    for (int k = 0; k < 4096; ++k) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      block[k] = static_cast<uint8_t>(x);
    }
  }
};

void ExpectMatchesNaive(const Content& c) {
  auto fill = [&](uint64_t i, uint8_t* b) { c.fill(i, b); };
  auto zero = [&](uint64_t i) { return c.is_zero(i); };
  const Hash128 naive = NaiveDigest(c.size, fill);
  for (uint32_t seed : {1u, 2u, 3u}) {
    EXPECT_EQ(BuilderDigest(c.size, fill, zero, seed, true), naive)
        << "size " << c.size << " seed " << seed;
    EXPECT_EQ(BuilderDigest(c.size, fill, zero, seed, false), naive)
        << "size " << c.size << " seed " << seed;
  }
}

TEST(DigestTest, MatchesTheNaiveTreeOnSmallAndOddSizes) {
  const uint64_t M = 1 << 20;
  const std::vector<uint64_t> sizes = {
      0,          1,          4095,           4096,       4097,  8192,
      255 * 4096, 256 * 4096, 256 * 4096 + 1, 257 * 4096, M - 1, M + 3 * 4096 + 7,
      3 * M + 5,  5 * M};
  for (uint64_t size : sizes) {
    Content all{size, {}, true};
    ExpectMatchesNaive(all);
    Content sparse{size, {0, 3, 255, 256, 300, 511, 700, 1000}, false};
    ExpectMatchesNaive(sparse);
    Content zeros{size, {}, false};
    ExpectMatchesNaive(zeros);
  }
}

TEST(DigestTest, MatchesTheNaiveTreeAcrossThreeLevels) {
  // 65536 + 300 blocks: two full level-2 subtrees' worth of zeros on either side of data, so
  // AddZeros pushes whole precomputed subtrees at levels 1 and 2.
  const uint64_t blocks = 65536 + 300;
  Content c{blocks * 4096 - 100, {5, 65535, 65536, 65600}, false};
  ExpectMatchesNaive(c);
  Content zeros{blocks * 4096, {}, false};
  ExpectMatchesNaive(zeros);
}

TEST(DigestTest, ZeroSubtreesAreTheHashesOfZeros) {
  uint8_t zero[4096] = {};
  XXH128_hash_t z0 = XXH3_128bits(zero, sizeof(zero));
  EXPECT_EQ(ZeroSubtreeHash(0), (Hash128{z0.low64, z0.high64}));
  std::vector<uint8_t> cat;
  const auto c0 = Canon(z0);
  for (int i = 0; i < 256; ++i) cat.insert(cat.end(), c0.begin(), c0.end());
  XXH128_hash_t z1 = XXH3_128bits(cat.data(), cat.size());
  EXPECT_EQ(ZeroSubtreeHash(1), (Hash128{z1.low64, z1.high64}));
}

TEST(DigestTest, ContentAndSizeBothMatter) {
  std::vector<uint8_t> a(3 * 4096 + 10, 0);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i * 7);
  auto b = a;
  b[5000] ^= 1;
  EXPECT_NE(DigestOf(a.data(), a.size()), DigestOf(b.data(), b.size()));
  // Same bytes, different sizes (the padding is not content).
  std::vector<uint8_t> z1(4096, 0), z2(8192, 0);
  EXPECT_NE(DigestOf(z1.data(), z1.size()), DigestOf(z2.data(), z2.size()));
  std::vector<uint8_t> p1(4000, 0);
  EXPECT_NE(DigestOf(p1.data(), p1.size()), DigestOf(z1.data(), z1.size()));
  // Zeros given as data or as a zero run hash the same.
  DigestBuilder zb(z2.size());
  zb.AddZeros(4096);
  zb.AddData(z2.data(), 4096);
  EXPECT_EQ(zb.Finish(), DigestOf(z2.data(), z2.size()));
}

TEST(DigestTest, FormatIsPinned) {
  // A change of these values is a format change: bump kDigestVersion and the tag instead.
  std::vector<uint8_t> zeros(1 << 20, 0);
  std::vector<uint8_t> abc = {'a', 'b', 'c'};
  const std::string pinned_abc = DigestOf(abc.data(), abc.size()).ToHex();
  const std::string pinned_mib = DigestOf(zeros.data(), zeros.size()).ToHex();
  EXPECT_EQ(pinned_abc, NaiveDigest(3, [&](uint64_t, uint8_t* b) {
                          std::memset(b, 0, 4096);
                          std::memcpy(b, abc.data(), 3);
                        }).ToHex());
  EXPECT_EQ(pinned_abc, "0268478eb5da6ed15815666c9438f543");
  EXPECT_EQ(pinned_mib, "37e8aae84acf25688c44677884dec579");
}

TEST(DigestTest, CanonicalAndHexRoundTrip) {
  const Hash128 h{0x0123456789abcdefull, 0xfedcba9876543210ull};
  EXPECT_EQ(h.ToHex(), "fedcba98765432100123456789abcdef");
  const auto c = CanonicalHash(h);
  EXPECT_EQ(c[0], 0xfe);
  EXPECT_EQ(c[15], 0xef);
  EXPECT_EQ(HashFromCanonical(c.data()), h);
  auto parsed = ParseDigestHex(h.ToHex());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, h);
  EXPECT_FALSE(ParseDigestHex("xyz").ok());
  EXPECT_FALSE(ParseDigestHex(std::string(31, '0') + "g").ok());
}

}  // namespace
}  // namespace shale::snapshot
