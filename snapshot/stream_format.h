// The portable snapshot stream (export/import), docs/format/snapshot-stream.md:
//
//   StreamHeader (80 bytes) | StreamMeta (protobuf, meta_length bytes) |
//   records: RecordHeader (40 bytes) [+ payload] ... | end record (RecordHeader + EndPayload)
//
// Little-endian, fixed-size encoded structs (static_asserts below). Every record carries an
// XXH3-64 checksum of its header and payload seeded with the stream's random id, and a
// sequence number; the end record repeats the totals and carries the snapshot's digest, and
// nothing may follow it. So flipped bits, truncation, reordering, duplicated or dropped records
// and records spliced in from another stream are all detected before the import completes.
#pragma once

#include <bit>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/checksum.h"
#include "engine/common/result.h"
#include "snapshot/snapshot.pb.h"

namespace shale::snapshot {

static_assert(std::endian::native == std::endian::little,
              "stream structs are encoded by memcpy; a big-endian port must byte-swap");

inline constexpr char kStreamMagic[8] = {'S', 'H', 'A', 'L', 'E', 'S', 'N', 'P'};
inline constexpr uint16_t kStreamVersion = 1;
inline constexpr uint32_t kStreamFlagIncremental = 1u << 0;
inline constexpr uint32_t kStreamKnownFlags = kStreamFlagIncremental;
inline constexpr uint32_t kRecordMagic = 0x43455253;  // "SREC" as little-endian bytes
inline constexpr uint32_t kStreamMaxMetaLength = 1u << 20;
inline constexpr uint32_t kStreamMaxDataRecord = 1u << 20;  // payload of one data record
inline constexpr uint32_t kStreamMaxZeroRecord = 1u << 30;  // bytes one zero record covers

enum class RecordType : uint16_t { kData = 1, kZero = 2, kEnd = 3 };

struct StreamHeader {
  char magic[8];             // kStreamMagic
  uint16_t version;          // kStreamVersion
  uint16_t header_size;      // sizeof(StreamHeader)
  uint32_t flags;            // kStreamFlag*
  uint32_t block_size;       // 4096: offsets and lengths are multiples of it (except at the end)
  uint32_t meta_length;      // bytes of StreamMeta that follow the header
  uint64_t size_bytes;       // logical size of the snapshot
  uint64_t base_size_bytes;  // incremental: size of the base snapshot; else 0
  uint8_t base_digest[16];   // incremental: digest of the base (canonical); else zeros
  uint64_t stream_id;        // random, seeds every record checksum
  uint64_t meta_checksum;    // XXH3-64(meta bytes, seed = stream_id)
  uint64_t header_checksum;  // XXH3-64(the 72 bytes before this field, seed 0)
};
static_assert(sizeof(StreamHeader) == 80);

struct RecordHeader {
  uint32_t magic;     // kRecordMagic
  uint16_t type;      // RecordType
  uint16_t flags;     // 0
  uint32_t length;    // data: payload bytes; zero: bytes covered (no payload); end: 48
  uint32_t reserved;  // 0
  uint64_t sequence;  // 0, 1, 2, ... (the end record included)
  uint64_t offset;    // data/zero: byte offset in the volume; end: 0
  uint64_t checksum;  // XXH3-64(payload, seed = XXH3-64(the 32 bytes before this field, stream_id))
};
static_assert(sizeof(RecordHeader) == 40);

struct EndPayload {
  uint64_t record_count;  // data + zero records before the end record
  uint64_t data_bytes;    // payload bytes of the data records
  uint64_t zero_bytes;    // bytes covered by the zero records
  uint8_t digest[16];     // the snapshot's digest (snapshot-digest.md), canonical
  uint64_t reserved;      // 0
};
static_assert(sizeof(EndPayload) == 48);

// Where a stream goes. Write is called with the stream in order; Finish after the last byte.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  virtual Status Write(const void* data, size_t len) = 0;
  virtual Status Finish() { return Status::Ok(); }
};

// Where a stream comes from. Read returns up to len bytes, 0 only at the end.
class StreamSource {
 public:
  virtual ~StreamSource() = default;
  virtual Result<size_t> Read(void* buf, size_t len) = 0;
};

// Writes `path` atomically: into "<path>.partial", renamed over path by Finish(); a sink
// destroyed unfinished removes the partial file. Refuses an existing path unless overwrite.
class FileSink final : public StreamSink {
 public:
  static Result<std::unique_ptr<FileSink>> Create(const std::string& path, bool overwrite);
  ~FileSink() override;
  Status Write(const void* data, size_t len) override;
  Status Finish() override;

 private:
  FileSink(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
  bool finished_ = false;
};

class FileSource final : public StreamSource {
 public:
  static Result<std::unique_ptr<FileSource>> Open(const std::string& path);
  ~FileSource() override;
  Result<size_t> Read(void* buf, size_t len) override;

 private:
  FileSource(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
};

// In-memory sink/source (tests; small streams).
class StringSink final : public StreamSink {
 public:
  Status Write(const void* data, size_t len) override {
    out.append(static_cast<const char*>(data), len);
    return Status::Ok();
  }
  std::string out;
};
class StringSource final : public StreamSource {
 public:
  explicit StringSource(std::string data) : data_(std::move(data)) {}
  Result<size_t> Read(void* buf, size_t len) override;

 private:
  std::string data_;
  size_t pos_ = 0;
};

// What the header says, decoded.
struct StreamInfo {
  uint64_t size_bytes = 0;
  bool incremental = false;
  uint64_t base_size_bytes = 0;
  Hash128 base_digest;
  uint64_t stream_id = 0;
};

// Encodes a stream. Records must come in increasing, non-overlapping offset order.
class StreamWriter {
 public:
  explicit StreamWriter(StreamSink* sink) : sink_(sink) {}
  // info.stream_id == 0 picks a random id.
  Status WriteHeader(StreamInfo info, const StreamMeta& meta);
  // len <= kStreamMaxDataRecord.
  Status WriteData(uint64_t offset, const uint8_t* data, uint32_t len);
  // Any length; split into records of at most kStreamMaxZeroRecord.
  Status WriteZeros(uint64_t offset, uint64_t len);
  Status WriteEnd(const Hash128& digest);
  uint64_t bytes_written() const { return bytes_; }
  uint64_t records() const { return sequence_; }
  uint64_t data_bytes() const { return data_bytes_; }
  const StreamInfo& info() const { return info_; }

 private:
  Status Emit(RecordType type, uint64_t offset, uint32_t length, const void* payload,
              size_t payload_len);
  StreamSink* sink_;
  StreamInfo info_;
  uint64_t sequence_ = 0, bytes_ = 0, data_bytes_ = 0, zero_bytes_ = 0;
};

// Decodes and checks a stream. Every error is Corruption ("snapshot stream: ..."), except a
// version from the future (NotSupported) and the source's own I/O errors.
class StreamReader {
 public:
  explicit StreamReader(StreamSource* source) : source_(source) {}
  Status ReadHeader();
  const StreamInfo& info() const { return info_; }
  const StreamMeta& meta() const { return meta_; }

  struct Record {
    RecordType type;
    uint64_t offset = 0;
    uint64_t length = 0;
    const uint8_t* data = nullptr;  // data records: valid until the next Next()
    Hash128 digest;                 // end record
  };
  // The next record, checked (checksum, sequence, order, bounds). The end record is returned
  // only after its totals matched and the source is exhausted.
  Result<Record> Next();
  uint64_t bytes_read() const { return bytes_; }

 private:
  Status ReadFully(void* buf, size_t len, const char* what);
  StreamSource* source_;
  StreamInfo info_;
  StreamMeta meta_;
  std::vector<uint8_t> payload_;
  uint64_t sequence_ = 0, bytes_ = 0, data_bytes_ = 0, zero_bytes_ = 0, next_offset_ = 0;
  bool ended_ = false;
};

}  // namespace shale::snapshot
