// BackupManager::Verify and RestoreInto: fetch a backup's chunks (several in flight, consumed in
// order), check each against its name, and check the digest — of the chunks (verify) or of what
// the restored volume holds once written and flushed (restore).
#include <deque>
#include <future>

#include "backup/backup_internal.h"
#include "engine/common/log.h"
#include "snapshot/digest.h"
#include "snapshot/volume_scan.h"

namespace shale::backup {

namespace {

// Fetches the chunks of a manifest in index order with up to `parallel` GETs in flight.
class ChunkFetcher {
 public:
  ChunkFetcher(S3Client* s3, const Location& loc, const Manifest& m, unsigned parallel)
      : s3_(s3), loc_(loc), m_(m), parallel_(parallel) {}
  ~ChunkFetcher() {
    for (auto& f : inflight_) f.wait();
  }

  bool done() const { return next_ == m_.chunks.size() && inflight_.empty(); }

  // The next chunk's uncompressed bytes, checked against its name and length.
  Result<std::string> Next() {
    while (next_ < m_.chunks.size() && inflight_.size() < parallel_) {
      const ChunkRef c = m_.chunks[next_++];
      inflight_.push_back(std::async(std::launch::async, [this, c] { return Fetch(c); }));
    }
    Result<std::string> r = inflight_.front().get();
    inflight_.pop_front();
    return r;
  }

 private:
  Result<std::string> Fetch(const ChunkRef& c) const {
    const std::string name = ChunkName(c.hash);
    const uint64_t off = c.index * m_.chunk_size, len = m_.ChunkLength(c.index);
    const std::string where = " (volume bytes " + std::to_string(off) + ".." +
                              std::to_string(off + len) + " of backup " + m_.id + ")";
    Result<std::string> object = s3_->Get(loc_.Key(name));
    if (!object.ok()) {
      if (object.status().IsNotFound() &&
          object.status().message().find("bucket") == std::string::npos) {
        return Status::NotFound("chunk " + name + where + " is missing from " + loc_.ToString());
      }
      return object.status().WithContext("fetch chunk " + name);
    }
    Result<std::string> data = DecompressChunk(*object, c.hash, len);
    if (!data.ok()) return Status::Corruption(std::string(data.status().message()) + where);
    return data;
  }

  S3Client* const s3_;
  const Location loc_;
  const Manifest& m_;
  const unsigned parallel_;
  size_t next_ = 0;
  std::deque<std::future<Result<std::string>>> inflight_;
};

Status CompareDigest(const Manifest& m, const std::string& computed, const std::string& what) {
  if (computed == m.digest) return Status::Ok();
  return Status::Corruption(what + " of backup " + m.id + " has digest " + computed +
                            ", the manifest says " + m.digest);
}

}  // namespace

Result<VerifyResult> BackupManager::Verify(const Target& target, std::string_view id,
                                           const ProgressFn& progress) {
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  SHALE_ASSIGN_OR_RETURN(Manifest m, ReadManifest(*s, id));
  snapshot::DigestBuilder digest(m.size_bytes);
  ChunkFetcher fetcher(s->s3.get(), s->loc(), m, options_.parallel);
  Progress p{.phase = "verifying", .total_bytes = m.data_bytes, .chunks_total = m.chunk_count};
  uint64_t pos = 0;
  for (const ChunkRef& c : m.chunks) {
    SHALE_ASSIGN_OR_RETURN(std::string data, fetcher.Next());
    const uint64_t off = c.index * m.chunk_size;
    digest.AddZeros(off - pos);
    digest.AddData(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    pos = off + data.size();
    p.done_bytes += data.size();
    ++p.chunks_done;
    SHALE_RETURN_IF_ERROR(internal::Report(progress, p, stopping_));
  }
  digest.AddZeros(m.size_bytes - pos);
  VerifyResult r;
  r.digest = digest.Finish().ToHex();
  SHALE_RETURN_IF_ERROR(CompareDigest(m, r.digest, "the data in the bucket"));
  r.chunks_checked = m.chunks.size();
  r.manifest = std::move(m);
  r.manifest.chunks.clear();
  return r;
}

Status BackupManager::RestoreInto(const std::shared_ptr<VolumeHandle>& handle, const Manifest& m,
                                  const Target& target, const RestoreOptions& options) {
  if (handle->volume().size_bytes() < m.size_bytes) {
    return Status::InvalidArgument("the volume is smaller than backup " + m.id);
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  std::shared_ptr<VolumeLayer> layer =
      options_.background_io ? options_.background_io(handle) : nullptr;
  Progress p{.phase = "restoring", .total_bytes = m.data_bytes, .chunks_total = m.chunk_count};
  {
    snapshot::WriteQueue writes(handle.get(), 8, IoClass::kBackground, layer.get());
    ChunkFetcher fetcher(s->s3.get(), s->loc(), m, options_.parallel);
    for (const ChunkRef& c : m.chunks) {
      SHALE_ASSIGN_OR_RETURN(std::string data, fetcher.Next());
      const uint64_t off = c.index * m.chunk_size;
      const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
      // Only the blocks that hold data: zero blocks inside a chunk stay unallocated too.
      constexpr uint64_t kBlock = 4096;
      for (uint64_t i = 0; i < data.size();) {
        if (IsZero(bytes + i, std::min(kBlock, data.size() - i))) {
          i += kBlock;
          continue;
        }
        uint64_t j = i + kBlock;
        while (j < data.size() && !IsZero(bytes + j, std::min(kBlock, data.size() - j)))
          j += kBlock;
        j = std::min<uint64_t>(j, data.size());
        SHALE_RETURN_IF_ERROR(writes.Write(off + i, bytes + i, j - i));
        i = j;
      }
      p.done_bytes += data.size();
      ++p.chunks_done;
      SHALE_RETURN_IF_ERROR(internal::Report(options.progress, p, stopping_));
    }
    SHALE_RETURN_IF_ERROR(writes.Drain().WithContext("write the restored data"));
  }
  // What the volume now holds, read back, must be the backed-up snapshot.
  p = {.phase = "checking", .total_bytes = m.size_bytes};
  SHALE_RETURN_IF_ERROR(internal::Report(options.progress, p, stopping_));
  snapshot::DigestBuilder digest(m.size_bytes);
  snapshot::ScanOptions so;
  so.cancel = &stopping_;
  so.target = layer.get();
  SHALE_RETURN_IF_ERROR(snapshot::ScanContent(
      *handle, {{0, m.size_bytes}}, so, [&](const snapshot::ScanPiece& piece) {
        piece.data != nullptr ? digest.AddData(piece.data, piece.length)
                              : digest.AddZeros(piece.length);
        return Status::Ok();
      }));
  return CompareDigest(m, digest.Finish().ToHex(), "the restored volume");
}

}  // namespace shale::backup
