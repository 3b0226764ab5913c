#include "snapshot/stream_format.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <random>

#include "snapshot/digest.h"

namespace shale::snapshot {

namespace {

Status Corrupt(const std::string& what) { return Status::Corruption("snapshot stream: " + what); }

uint64_t RecordChecksum(const RecordHeader& h, const void* payload, size_t len,
                        uint64_t stream_id) {
  const uint64_t seed = Hash64(&h, offsetof(RecordHeader, checksum), stream_id);
  return Hash64(payload, len, seed);
}

uint64_t RandomStreamId() {
  std::random_device rd;
  uint64_t id = 0;
  while (id == 0) id = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return id;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Files

Result<std::unique_ptr<FileSink>> FileSink::Create(const std::string& path, bool overwrite) {
  if (path.empty()) return Status::InvalidArgument("export file name must not be empty");
  if (!overwrite && ::access(path.c_str(), F_OK) == 0) {
    return Status::AlreadyExists("file '" + path + "' already exists");
  }
  const std::string partial = path + ".partial";
  int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create '" + partial + "'");
  return std::unique_ptr<FileSink>(new FileSink(path, fd));
}

FileSink::~FileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink((path_ + ".partial").c_str());
}

Status FileSink::Write(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd_, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write '" + path_ + ".partial'");
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FileSink::Finish() {
  if (::fsync(fd_) != 0) return Status::FromErrno(errno, "fsync '" + path_ + ".partial'");
  ::close(fd_);
  fd_ = -1;
  const std::string partial = path_ + ".partial";
  if (::rename(partial.c_str(), path_.c_str()) != 0) {
    return Status::FromErrno(errno, "rename '" + partial + "' to '" + path_ + "'");
  }
  finished_ = true;
  return Status::Ok();
}

Result<std::unique_ptr<FileSource>> FileSource::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open '" + path + "'");
  return std::unique_ptr<FileSource>(new FileSource(path, fd));
}

FileSource::~FileSource() { ::close(fd_); }

Result<size_t> FileSource::Read(void* buf, size_t len) {
  for (;;) {
    ssize_t n = ::read(fd_, buf, len);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) return Status::FromErrno(errno, "read '" + path_ + "'");
  }
}

Result<size_t> StringSource::Read(void* buf, size_t len) {
  const size_t n = std::min(len, data_.size() - pos_);
  std::memcpy(buf, data_.data() + pos_, n);
  pos_ += n;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Writer

Status StreamWriter::WriteHeader(StreamInfo info, const StreamMeta& meta) {
  if (info.stream_id == 0) info.stream_id = RandomStreamId();
  info_ = info;
  const std::string meta_bytes = meta.SerializeAsString();
  if (meta_bytes.size() > kStreamMaxMetaLength) {
    return Status::InvalidArgument("snapshot metadata is too large for a stream");
  }
  StreamHeader h{};
  std::memcpy(h.magic, kStreamMagic, sizeof(h.magic));
  h.version = kStreamVersion;
  h.header_size = sizeof(StreamHeader);
  h.flags = info.incremental ? kStreamFlagIncremental : 0;
  h.block_size = kDigestBlockSize;
  h.meta_length = static_cast<uint32_t>(meta_bytes.size());
  h.size_bytes = info.size_bytes;
  h.base_size_bytes = info.incremental ? info.base_size_bytes : 0;
  if (info.incremental) {
    const auto c = CanonicalHash(info.base_digest);
    std::memcpy(h.base_digest, c.data(), 16);
  }
  h.stream_id = info.stream_id;
  h.meta_checksum = Hash64(meta_bytes.data(), meta_bytes.size(), info.stream_id);
  h.header_checksum = Hash64(&h, offsetof(StreamHeader, header_checksum), 0);
  SHALE_RETURN_IF_ERROR(sink_->Write(&h, sizeof(h)));
  SHALE_RETURN_IF_ERROR(sink_->Write(meta_bytes.data(), meta_bytes.size()));
  bytes_ += sizeof(h) + meta_bytes.size();
  return Status::Ok();
}

Status StreamWriter::Emit(RecordType type, uint64_t offset, uint32_t length, const void* payload,
                          size_t payload_len) {
  RecordHeader r{};
  r.magic = kRecordMagic;
  r.type = static_cast<uint16_t>(type);
  r.length = length;
  r.sequence = sequence_++;
  r.offset = offset;
  r.checksum = RecordChecksum(r, payload, payload_len, info_.stream_id);
  SHALE_RETURN_IF_ERROR(sink_->Write(&r, sizeof(r)));
  if (payload_len > 0) SHALE_RETURN_IF_ERROR(sink_->Write(payload, payload_len));
  bytes_ += sizeof(r) + payload_len;
  return Status::Ok();
}

Status StreamWriter::WriteData(uint64_t offset, const uint8_t* data, uint32_t len) {
  SHALE_CHECK(len > 0 && len <= kStreamMaxDataRecord, "data record of ", len, " bytes");
  data_bytes_ += len;
  return Emit(RecordType::kData, offset, len, data, len);
}

Status StreamWriter::WriteZeros(uint64_t offset, uint64_t len) {
  while (len > 0) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(len, kStreamMaxZeroRecord));
    SHALE_RETURN_IF_ERROR(Emit(RecordType::kZero, offset, n, nullptr, 0));
    zero_bytes_ += n;
    offset += n;
    len -= n;
  }
  return Status::Ok();
}

Status StreamWriter::WriteEnd(const Hash128& digest) {
  EndPayload e{};
  e.record_count = sequence_;
  e.data_bytes = data_bytes_;
  e.zero_bytes = zero_bytes_;
  const auto c = CanonicalHash(digest);
  std::memcpy(e.digest, c.data(), 16);
  return Emit(RecordType::kEnd, 0, sizeof(e), &e, sizeof(e));
}

// ---------------------------------------------------------------------------------------------
// Reader

Status StreamReader::ReadFully(void* buf, size_t len, const char* what) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t got = 0;
  while (got < len) {
    SHALE_ASSIGN_OR_RETURN(size_t n, source_->Read(p + got, len - got));
    if (n == 0) {
      return Corrupt("truncated: the stream ends inside " + std::string(what) + " after " +
                     std::to_string(bytes_ + got) + " bytes (" + std::to_string(sequence_) +
                     " records read, no end record)");
    }
    got += n;
  }
  bytes_ += len;
  return Status::Ok();
}

Status StreamReader::ReadHeader() {
  StreamHeader h;
  SHALE_RETURN_IF_ERROR(ReadFully(&h, sizeof(h), "the header"));
  if (std::memcmp(h.magic, kStreamMagic, sizeof(h.magic)) != 0) {
    return Corrupt("not a Shale snapshot stream (bad magic)");
  }
  if (h.header_checksum != Hash64(&h, offsetof(StreamHeader, header_checksum), 0)) {
    return Corrupt("header checksum mismatch");
  }
  if (h.version != kStreamVersion) {
    return Status::NotSupported("snapshot stream version " + std::to_string(h.version) +
                                " is not supported (this shale reads version " +
                                std::to_string(kStreamVersion) + ")");
  }
  if (h.header_size != sizeof(StreamHeader)) return Corrupt("bad header size");
  if ((h.flags & ~kStreamKnownFlags) != 0) return Corrupt("unknown header flags");
  if (h.block_size != kDigestBlockSize) return Corrupt("unsupported block size");
  if (h.size_bytes == 0 || h.size_bytes % kDigestBlockSize != 0) {
    return Corrupt("snapshot size " + std::to_string(h.size_bytes) +
                   " is not a positive multiple of 4 KiB");
  }
  if (h.meta_length > kStreamMaxMetaLength) return Corrupt("metadata block too large");
  info_.size_bytes = h.size_bytes;
  info_.incremental = (h.flags & kStreamFlagIncremental) != 0;
  info_.base_size_bytes = h.base_size_bytes;
  info_.base_digest = HashFromCanonical(h.base_digest);
  info_.stream_id = h.stream_id;
  if (info_.incremental && (h.base_size_bytes == 0 || h.base_size_bytes > h.size_bytes)) {
    return Corrupt("incremental stream with a base size of " + std::to_string(h.base_size_bytes));
  }
  std::string meta_bytes(h.meta_length, '\0');
  SHALE_RETURN_IF_ERROR(ReadFully(meta_bytes.data(), meta_bytes.size(), "the metadata block"));
  if (Hash64(meta_bytes.data(), meta_bytes.size(), h.stream_id) != h.meta_checksum) {
    return Corrupt("metadata checksum mismatch");
  }
  if (!meta_.ParseFromString(meta_bytes)) return Corrupt("metadata block does not decode");
  return Status::Ok();
}

Result<StreamReader::Record> StreamReader::Next() {
  SHALE_CHECK(!ended_, "StreamReader::Next after the end record");
  RecordHeader r;
  SHALE_RETURN_IF_ERROR(ReadFully(&r, sizeof(r), "a record header"));
  const std::string where = "record " + std::to_string(sequence_) + ": ";
  if (r.magic != kRecordMagic) return Corrupt(where + "bad record magic");
  const auto type = static_cast<RecordType>(r.type);
  size_t payload_len = 0;
  switch (type) {
    case RecordType::kData:
      if (r.length == 0 || r.length > kStreamMaxDataRecord) {
        return Corrupt(where + "bad data length");
      }
      payload_len = r.length;
      break;
    case RecordType::kZero:
      if (r.length == 0 || r.length > kStreamMaxZeroRecord) {
        return Corrupt(where + "bad zero length");
      }
      break;
    case RecordType::kEnd:
      if (r.length != sizeof(EndPayload)) return Corrupt(where + "bad end record length");
      payload_len = sizeof(EndPayload);
      break;
    default:
      return Corrupt(where + "unknown record type " + std::to_string(r.type));
  }
  payload_.resize(payload_len);
  SHALE_RETURN_IF_ERROR(ReadFully(payload_.data(), payload_len, "a record payload"));
  if (r.checksum != RecordChecksum(r, payload_.data(), payload_len, info_.stream_id)) {
    return Corrupt(where + "checksum mismatch");
  }
  if (r.sequence != sequence_) {
    return Corrupt(where + "out of sequence (found number " + std::to_string(r.sequence) + ")");
  }
  if (r.flags != 0 || r.reserved != 0) return Corrupt(where + "reserved fields are not zero");
  ++sequence_;
  Record out;
  out.type = type;
  if (type == RecordType::kEnd) {
    EndPayload e;
    std::memcpy(&e, payload_.data(), sizeof(e));
    if (e.reserved != 0) return Corrupt("end record: reserved field is not zero");
    if (e.record_count != sequence_ - 1 || e.data_bytes != data_bytes_ ||
        e.zero_bytes != zero_bytes_) {
      return Corrupt("end record totals do not match the records read (records missing)");
    }
    uint8_t extra;
    SHALE_ASSIGN_OR_RETURN(size_t n, source_->Read(&extra, 1));
    if (n != 0) return Corrupt("unexpected bytes after the end record");
    out.digest = HashFromCanonical(e.digest);
    ended_ = true;
    return out;
  }
  const uint64_t end = r.offset + r.length;
  if (r.offset % kDigestBlockSize != 0 || r.offset < next_offset_ || end < r.offset ||
      end > info_.size_bytes || (r.length % kDigestBlockSize != 0 && end != info_.size_bytes)) {
    return Corrupt(where + "range [" + std::to_string(r.offset) + ", +" + std::to_string(r.length) +
                   ") is misaligned, out of order or past the size");
  }
  next_offset_ = end;
  out.offset = r.offset;
  out.length = r.length;
  if (type == RecordType::kData) {
    out.data = payload_.data();
    data_bytes_ += r.length;
  } else {
    zero_bytes_ += r.length;
  }
  return out;
}

}  // namespace shale::snapshot
