#include "backup/format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "backup/location.h"

namespace shale::backup {
namespace {

Manifest Sample() {
  Manifest m;
  m.id = "data.20261205T173838Z.3fa9c1";
  m.volume = "data";
  m.snapshot = "v1";
  m.size_bytes = 3 * kChunkSize + 8192;
  m.digest = "0268478eb5da6ed15815666c9438f543";
  m.created_unix_ns = 1'800'000'000'000'000'000ull;
  m.snapshot_created_unix_ns = 1'799'999'999'000'000'000ull;
  m.labels = {{"source", "https://example.com/data.csv"}, {"notebook", "nb-42"}};
  m.provenance = {"node-a", "0.1.0", "default", 7, 12};
  m.base = "data.20261204T000000Z.000001";
  m.uploaded_chunks = 1;
  m.uploaded_bytes = 1000;
  m.read_bytes = kChunkSize;
  m.chunks = {{0, Hash128{1, 2}, 1000}, {3, Hash128{3, 4}, 2000}};
  m.Summarize();
  return m;
}

TEST(ManifestTest, RoundTripsAndSummarizes) {
  const Manifest m = Sample();
  EXPECT_EQ(m.data_bytes, kChunkSize + 8192);
  EXPECT_EQ(m.stored_bytes, 3000u);
  const std::string text = EncodeManifest(m);
  Result<Manifest> back = DecodeManifest(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  // The header alone (what `backup list` reads with a range GET) is a prefix of the object.
  Result<Manifest> head = DecodeManifest(text.substr(0, text.find('\n') + 1), true);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_TRUE(head->chunks.empty());
  EXPECT_EQ(head->chunk_count, 2u);
  EXPECT_EQ(head->digest, m.digest);
  EXPECT_EQ(head->labels, m.labels);
}

TEST(ManifestTest, EveryChangedByteOfTheChunkListIsDetected) {
  const std::string text = EncodeManifest(Sample());
  const size_t start = text.find('\n') + 1;
  for (size_t i = start; i < text.size(); ++i) {
    std::string bad = text;
    bad[i] = bad[i] == '7' ? '8' : '7';
    EXPECT_FALSE(DecodeManifest(bad).ok()) << "byte " << i;
  }
  EXPECT_FALSE(DecodeManifest(text.substr(0, text.size() - 1)).ok());  // truncated
  EXPECT_FALSE(DecodeManifest(text.substr(0, start - 1)).ok());        // no newline
}

TEST(ManifestTest, RefusesBadHeaders) {
  auto with = [](const std::string& from, const std::string& to) {
    std::string text = EncodeManifest(Sample());
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    return DecodeManifest(text).status();
  };
  EXPECT_EQ(with("\"version\":1", "\"version\":2").code(), StatusCode::kNotSupported);
  EXPECT_EQ(with("\"volume\":\"data\"", "\"volume\":\"other\"").code(), StatusCode::kCorruption);
  EXPECT_EQ(with("\"chunk_size\":4194304", "\"chunk_size\":4096").code(), StatusCode::kCorruption);
  EXPECT_EQ(with("\"digest\":\"0268", "\"digest\":\"zz68").code(), StatusCode::kCorruption);
  EXPECT_EQ(with("\"format\":\"shale-backup-manifest\"", "\"format\":\"x\"").code(),
            StatusCode::kCorruption);
  EXPECT_EQ(DecodeManifest("not json\n").status().code(), StatusCode::kCorruption);
}

TEST(ManifestTest, RefusesChunksOutOfOrderOrPastTheEnd) {
  Manifest m = Sample();
  m.chunks = {{3, Hash128{3, 4}, 10}, {0, Hash128{1, 2}, 10}};
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m)).ok());
  m.chunks = {{4, Hash128{3, 4}, 10}};  // the volume has chunks 0..3
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m)).ok());
  m.chunks = {{1, Hash128{3, 4}, 0}};
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m)).ok());
}

TEST(ChunkTest, CompressesAndChecksItsName) {
  std::string data(kChunkSize, '\0');
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < data.size() / 2; i += 8) {
    const uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
  const Hash128 h = HashContent128(bytes, data.size());
  const std::string object = CompressChunk(bytes, data.size(), 3);
  EXPECT_LT(object.size(), data.size() * 6 / 10);  // half of it is zeros
  Result<std::string> back = DecompressChunk(object, h, data.size());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, data);
  // Wrong name, wrong length, a flipped byte: each is corruption naming the chunk.
  Result<std::string> wrong = DecompressChunk(object, Hash128{h.low + 1, h.high}, data.size());
  EXPECT_EQ(wrong.status().code(), StatusCode::kCorruption);
  EXPECT_NE(wrong.status().message().find("chunks/"), std::string_view::npos);
  EXPECT_FALSE(DecompressChunk(object, h, data.size() - 4096).ok());
  for (size_t i : {size_t{20}, object.size() / 2, object.size() - 1}) {
    std::string bad = object;
    bad[i] ^= 0x10;
    EXPECT_FALSE(DecompressChunk(bad, h, data.size()).ok()) << "byte " << i;
  }
  EXPECT_EQ(ChunkName(h), "chunks/" + h.ToHex());
}

TEST(ChunkTest, IsZero) {
  std::string z(4099, '\0');
  EXPECT_TRUE(IsZero(reinterpret_cast<const uint8_t*>(z.data()), z.size()));
  z[4098] = 1;
  EXPECT_FALSE(IsZero(reinterpret_cast<const uint8_t*>(z.data()), z.size()));
}

}  // namespace
}  // namespace shale::backup
