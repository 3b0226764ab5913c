// The stream codec alone: round trip, and every single flipped byte, every truncation and
// trailing garbage is rejected.
#include "snapshot/stream_format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "snapshot/digest.h"

namespace shale::snapshot {
namespace {

constexpr uint64_t kSize = 64 * 4096;

std::vector<uint8_t> Block(uint8_t seed, size_t len) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed + i * 31);
  return v;
}

std::string MakeStream(bool incremental) {
  StringSink sink;
  StreamWriter w(&sink);
  StreamMeta meta;
  meta.set_source_volume("data");
  meta.set_snapshot("v1");
  (*meta.mutable_labels())["source"] = "https://example.com/x";
  StreamInfo info;
  info.size_bytes = kSize;
  info.incremental = incremental;
  if (incremental) {
    info.base_size_bytes = kSize / 2;
    info.base_digest = Hash128{1, 2};
  }
  EXPECT_TRUE(w.WriteHeader(info, meta).ok());
  auto a = Block(1, 8192), b = Block(2, 4096);
  EXPECT_TRUE(w.WriteData(0, a.data(), a.size()).ok());
  EXPECT_TRUE(w.WriteZeros(8192, 4096).ok());
  EXPECT_TRUE(w.WriteData(40 * 4096, b.data(), b.size()).ok());
  EXPECT_TRUE(w.WriteEnd(Hash128{7, 8}).ok());
  EXPECT_EQ(w.bytes_written(), sink.out.size());
  return sink.out;
}

// Reads the whole stream; returns the first error.
Status ReadAll(const std::string& bytes, std::vector<StreamReader::Record>* out = nullptr) {
  StringSource src(bytes);
  StreamReader r(&src);
  SHALE_RETURN_IF_ERROR(r.ReadHeader());
  for (;;) {
    SHALE_ASSIGN_OR_RETURN(auto rec, r.Next());
    if (out) out->push_back(rec);
    if (rec.type == RecordType::kEnd) return Status::Ok();
  }
}

TEST(StreamFormatTest, RoundTrip) {
  for (bool incremental : {false, true}) {
    const std::string bytes = MakeStream(incremental);
    StringSource src(bytes);
    StreamReader r(&src);
    ASSERT_TRUE(r.ReadHeader().ok());
    EXPECT_EQ(r.info().size_bytes, kSize);
    EXPECT_EQ(r.info().incremental, incremental);
    if (incremental) {
      EXPECT_EQ(r.info().base_size_bytes, kSize / 2);
      EXPECT_EQ(r.info().base_digest, (Hash128{1, 2}));
    }
    EXPECT_EQ(r.meta().snapshot(), "v1");
    EXPECT_EQ(r.meta().labels().at("source"), "https://example.com/x");
    auto rec = r.Next();
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->type, RecordType::kData);
    EXPECT_EQ(rec->offset, 0u);
    EXPECT_EQ(std::vector<uint8_t>(rec->data, rec->data + rec->length), Block(1, 8192));
    rec = r.Next();
    ASSERT_TRUE(rec.ok());
    EXPECT_EQ(rec->type, RecordType::kZero);
    EXPECT_EQ(rec->offset, 8192u);
    EXPECT_EQ(rec->length, 4096u);
    rec = r.Next();
    ASSERT_TRUE(rec.ok());
    EXPECT_EQ(rec->offset, 40u * 4096);
    rec = r.Next();
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->type, RecordType::kEnd);
    EXPECT_EQ(rec->digest, (Hash128{7, 8}));
    EXPECT_EQ(r.bytes_read(), bytes.size());
  }
}

TEST(StreamFormatTest, EveryFlippedByteIsDetected) {
  const std::string good = MakeStream(true);
  ASSERT_TRUE(ReadAll(good).ok());
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ bit);
      Status st = ReadAll(bad);
      ASSERT_FALSE(st.ok()) << "flip of bit " << int(bit) << " at byte " << i << " went unnoticed";
      EXPECT_TRUE(st.code() == StatusCode::kCorruption || st.code() == StatusCode::kNotSupported)
          << st;
    }
  }
}

TEST(StreamFormatTest, TruncationAndTrailingBytesAreDetected) {
  const std::string good = MakeStream(false);
  for (size_t len = 0; len < good.size(); ++len) {
    Status st = ReadAll(good.substr(0, len));
    ASSERT_FALSE(st.ok()) << "truncated to " << len;
    EXPECT_EQ(st.code(), StatusCode::kCorruption);
    EXPECT_NE(st.message().find("truncated"), std::string_view::npos) << st;
  }
  Status st = ReadAll(good + "x");
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("after the end record"), std::string_view::npos) << st;
}

TEST(StreamFormatTest, DroppedOrSplicedRecordsAreDetected) {
  const std::string a = MakeStream(false);
  const std::string b = MakeStream(false);  // another stream id
  const size_t header = sizeof(StreamHeader) + [&] {
    StreamHeader h;
    std::memcpy(&h, a.data(), sizeof(h));
    return h.meta_length;
  }();
  const size_t rec0 = sizeof(RecordHeader) + 8192;
  // Drop the first record.
  std::string dropped = a.substr(0, header) + a.substr(header + rec0);
  EXPECT_EQ(ReadAll(dropped).code(), StatusCode::kCorruption);
  // Replace the first record with the same record of another stream.
  std::string spliced = a.substr(0, header) + b.substr(header, rec0) + a.substr(header + rec0);
  Status st = ReadAll(spliced);
  EXPECT_EQ(st.code(), StatusCode::kCorruption);
  EXPECT_NE(st.message().find("checksum"), std::string_view::npos) << st;
}

TEST(StreamFormatTest, FutureVersionIsNotSupported) {
  std::string s = MakeStream(false);
  StreamHeader h;
  std::memcpy(&h, s.data(), sizeof(h));
  h.version = 2;
  h.header_checksum = Hash64(&h, offsetof(StreamHeader, header_checksum), 0);
  std::memcpy(s.data(), &h, sizeof(h));
  Status st = ReadAll(s);
  EXPECT_EQ(st.code(), StatusCode::kNotSupported) << st;
  EXPECT_NE(st.message().find("version 2"), std::string_view::npos);
}

TEST(StreamFormatTest, RecordsMustStayInsideAndInOrder) {
  auto write = [](auto&& body) {
    StringSink sink;
    StreamWriter w(&sink);
    StreamInfo info;
    info.size_bytes = kSize;
    EXPECT_TRUE(w.WriteHeader(info, StreamMeta()).ok());
    body(w);
    EXPECT_TRUE(w.WriteEnd(Hash128{}).ok());
    return sink.out;
  };
  auto blk = Block(3, 4096);
  EXPECT_TRUE(ReadAll(write([&](StreamWriter& w) {
                ASSERT_TRUE(w.WriteData(kSize - 4096, blk.data(), 4096).ok());
              })).ok());
  EXPECT_EQ(ReadAll(write([&](StreamWriter& w) {
              ASSERT_TRUE(w.WriteData(kSize, blk.data(), 4096).ok());
            })).code(),
            StatusCode::kCorruption);
  EXPECT_EQ(ReadAll(write([&](StreamWriter& w) {
              ASSERT_TRUE(w.WriteData(100, blk.data(), 4096).ok());
            })).code(),
            StatusCode::kCorruption);
  EXPECT_EQ(ReadAll(write([&](StreamWriter& w) {
              ASSERT_TRUE(w.WriteData(8192, blk.data(), 4096).ok());
              ASSERT_TRUE(w.WriteData(4096, blk.data(), 4096).ok());
            })).code(),
            StatusCode::kCorruption);
}

TEST(StreamFormatTest, FileSinkIsAtomic) {
  const std::string dir = ::testing::TempDir() + "/shale-stream-sink";
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/s.stream";
  std::filesystem::remove(path);
  {
    auto sink = FileSink::Create(path, false);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->Write("abc", 3).ok());
    EXPECT_FALSE(std::filesystem::exists(path));
  }  // abandoned: nothing left
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  {
    auto sink = FileSink::Create(path, false);
    ASSERT_TRUE(sink.ok());
    ASSERT_TRUE((*sink)->Write("abc", 3).ok());
    ASSERT_TRUE((*sink)->Finish().ok());
  }
  EXPECT_EQ(std::filesystem::file_size(path), 3u);
  EXPECT_EQ(FileSink::Create(path, false).status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(FileSink::Create(path, true).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale::snapshot
