// BackupManager::Create: plan (base, changed chunks, what the bucket holds), read and upload the
// chunks with several in flight, write the manifest last (docs/backup.md, "Creating a backup").
#include <algorithm>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "backup/backup_internal.h"
#include "engine/common/log.h"
#include "snapshot/digest.h"
#include "snapshot/snapshot_manager.h"
#include "snapshot/volume_scan.h"

namespace shale::backup {

namespace {

struct HashOf {
  size_t operator()(const Hash128& h) const { return static_cast<size_t>(h.low ^ (h.high * 31)); }
};

// One chunk's fate.
struct Outcome {
  uint64_t index = 0;
  bool zero = false;
  Hash128 hash;
  uint64_t uploaded = 0;  // bytes sent (0: the bucket had it)
};

Result<Hash128> HashFromChunkKey(std::string_view name) {
  if (name.size() != 32) return Status::InvalidArgument("not a chunk name");
  Hash128 h;
  for (size_t i = 0; i < 32; ++i) {
    const char c = name[i];
    uint64_t v;
    if (c >= '0' && c <= '9') {
      v = static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v = static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return Status::InvalidArgument("not a chunk name");
    }
    uint64_t& half = i < 16 ? h.high : h.low;
    half = (half << 4) | v;
  }
  return h;
}

using PresentMap = std::unordered_map<Hash128, uint64_t, HashOf>;

// Hashes a complete chunk (`buf`, chunk `index`) and uploads it unless it is all zeros, the place
// holds it already, or another worker of this backup is uploading it. `present` (guarded by `mu`)
// maps the chunks in the place to their object sizes (0 while this backup uploads one).
Result<Outcome> UploadChunk(S3Client& s3, const Location& loc, std::mutex& mu, PresentMap& present,
                            int level, const std::string& buf, uint64_t index) {
  Outcome o{.index = index};
  const auto* data = reinterpret_cast<const uint8_t*>(buf.data());
  if (IsZero(data, buf.size())) {
    o.zero = true;
    return o;
  }
  o.hash = HashContent128(data, buf.size());
  uint64_t listed = 0;
  {
    std::lock_guard lock(mu);
    auto [it, fresh] = present.emplace(o.hash, 0);
    if (!fresh && it->second == 0) return o;  // this backup is uploading it already
    listed = it->second;
    it->second = 0;  // claimed: other workers with the same chunk reuse ours
  }
  const std::string object = CompressChunk(data, buf.size(), level);
  // A listed object of the size this chunk compresses to is the chunk (zstd is deterministic);
  // any other size (a foreign object, or one cut short by a server that died mid-upload) is
  // replaced.
  if (listed == object.size()) {
    std::lock_guard lock(mu);
    present[o.hash] = listed;
    return o;
  }
  Status st = s3.Put(loc.Key(ChunkName(o.hash)), object);
  std::lock_guard lock(mu);
  if (!st.ok()) {
    present.erase(o.hash);
    return st.WithContext("upload chunk " + ChunkName(o.hash));
  }
  present[o.hash] = object.size();
  o.uploaded = object.size();
  return o;
}

// The manifest's chunk list: the base's unchanged chunks and the stored ones just handled, by
// index; counts what was uploaded, reused and zero.
void AddOutcomes(const std::vector<Outcome>& outcomes, const std::vector<ChunkRef>& carried,
                 const PresentMap& present, Manifest* m, CreateResult* result) {
  std::vector<ChunkRef> chunks = carried;
  for (const Outcome& o : outcomes) {
    if (o.zero) {
      ++result->zero_chunks;
      continue;
    }
    if (o.uploaded > 0) {
      ++m->uploaded_chunks;
      m->uploaded_bytes += o.uploaded;
    } else {
      ++result->reused_chunks;
    }
    chunks.push_back({o.index, o.hash, present.at(o.hash)});
  }
  std::sort(chunks.begin(), chunks.end(),
            [](const ChunkRef& a, const ChunkRef& b) { return a.index < b.index; });
  m->chunks = std::move(chunks);
  result->reused_chunks += carried.size();
}

}  // namespace

struct SnapshotFacts {
  std::string ref;
  snapshot::SnapshotInfo info;
};

struct BackupManager::UploadState {
  std::mutex mu;
  // Chunks in the bucket (listed at the start) or uploaded by this backup: hash -> object size
  // (0 while its upload is in flight).
  PresentMap present;
};

struct BackupManager::Plan {
  Manifest manifest;
  std::optional<Manifest> base;
  std::string full_reason;
  std::vector<uint64_t> to_read;  // chunk indices to read, sorted
  std::vector<ChunkRef> carried;  // unchanged chunks referenced from the base
  UploadState upload;
};

Status BackupManager::PlanBase(Session& s, const SnapshotFacts& snap, bool full, Plan* plan) {
  const Manifest& m = plan->manifest;
  const uint64_t chunks = m.ChunkCountOfVolume();
  auto everything = [&](std::string reason) {
    plan->full_reason = std::move(reason);
    plan->base.reset();
    plan->to_read.clear();
    plan->carried.clear();
    for (uint64_t i = 0; i < chunks; ++i) plan->to_read.push_back(i);
    return Status::Ok();
  };
  if (full) return everything("--full was asked");
  SHALE_ASSIGN_OR_RETURN(std::vector<Manifest> earlier, ListHeaders(s, m.volume));
  if (earlier.empty()) return everything("no earlier backup of volume " + m.volume + " here");
  SHALE_ASSIGN_OR_RETURN(Manifest base, ReadManifest(s, earlier.back().id));
  const std::string base_ref = base.volume + "@" + base.snapshot;
  Result<snapshot::SnapshotInfo> local = snapshots_->Get(base_ref);
  if (!local.ok()) {
    return everything("the snapshot " + base_ref + " of the newest backup " + base.id +
                      " is no longer here");
  }
  if (local->image_id != base.provenance.image_id || local->pool != base.provenance.pool ||
      local->digest != base.digest) {
    return everything(base_ref + " here is not the snapshot backup " + base.id + " was made from");
  }
  if (base.size_bytes > m.size_bytes) return everything("the volume is smaller than at " + base.id);
  Result<std::vector<std::pair<uint64_t, uint64_t>>> changed =
      engine_->ChangedRanges(snap.info.pool, local->image_id, snap.info.image_id);
  if (!changed.ok()) {
    return everything(base_ref + " is not an earlier snapshot of " + snap.ref + " (" +
                      std::string(changed.status().message()) + ")");
  }
  std::vector<bool> dirty(chunks, false);
  for (const auto& [off, len] : *changed) {
    if (len == 0) continue;
    const uint64_t last = std::min(chunks - 1, (off + len - 1) / m.chunk_size);
    for (uint64_t i = off / m.chunk_size; i <= last; ++i) dirty[i] = true;
  }
  for (uint64_t i = base.ChunkCountOfVolume(); i < chunks; ++i) dirty[i] = true;
  // A chunk of the base that left the bucket (deleted by hand) is read again, not inherited.
  for (const ChunkRef& c : base.chunks) {
    if (c.index < chunks && !plan->upload.present.contains(c.hash)) dirty[c.index] = true;
  }
  // A partial last chunk of the base is a different chunk once the volume grew.
  if (base.size_bytes % m.chunk_size != 0 && base.size_bytes < m.size_bytes) {
    dirty[base.size_bytes / m.chunk_size] = true;
  }
  for (const ChunkRef& c : base.chunks) {
    if (c.index < chunks && !dirty[c.index]) plan->carried.push_back(c);
  }
  for (uint64_t i = 0; i < chunks; ++i) {
    if (dirty[i]) plan->to_read.push_back(i);
  }
  plan->manifest.base = base.id;
  plan->base = std::move(base);
  return Status::Ok();
}

Status BackupManager::RunChunks(Session& s, const std::shared_ptr<VolumeHandle>& view, Plan& plan,
                                const ProgressFn& progress, CreateResult* result) {
  Manifest& m = plan.manifest;
  snapshot::ByteRanges ranges;
  uint64_t total = 0;
  for (uint64_t i : plan.to_read) {
    const uint64_t off = i * m.chunk_size, len = m.ChunkLength(i);
    total += len;
    if (!ranges.empty() && ranges.back().first + ranges.back().second == off) {
      ranges.back().second += len;
    } else {
      ranges.emplace_back(off, len);
    }
  }
  // A backup that reads everything checks the snapshot's recorded digest on the way.
  const bool whole = plan.to_read.size() == m.ChunkCountOfVolume();
  std::optional<snapshot::DigestBuilder> digest;
  if (whole) digest.emplace(m.size_bytes);

  std::deque<std::future<Result<Outcome>>> inflight;
  std::vector<Outcome> outcomes;
  Progress p{.phase = "uploading", .total_bytes = total, .chunks_total = plan.to_read.size()};
  auto last_lock = std::chrono::steady_clock::now();
  const std::string lock_key = s.loc().Key(std::string(kLocksDir) + "backup-" + m.id + ".lock");
  auto finish_one = [&]() -> Status {
    Result<Outcome> o = inflight.front().get();
    inflight.pop_front();
    if (!o.ok()) return o.status();
    p.uploaded_bytes += o->uploaded;
    outcomes.push_back(*o);
    return Status::Ok();
  };
  auto after_chunk = [&](uint64_t len) -> Status {
    p.done_bytes += len;
    ++p.chunks_done;
    if (options_.chunk_hook) options_.chunk_hook(p.done_bytes);
    if (std::chrono::steady_clock::now() - last_lock >= options_.lock_refresh) {
      SHALE_RETURN_IF_ERROR(s.s3->Put(lock_key, "{\"kind\":\"backup\",\"id\":\"" + m.id + "\"}"));
      last_lock = std::chrono::steady_clock::now();
    }
    return internal::Report(progress, p, stopping_);
  };
  auto upload = [this, &s, &plan](std::shared_ptr<std::string> buf, uint64_t index) {
    return [this, &s, &plan, buf, index]() {
      return UploadChunk(*s.s3, s.loc(), plan.upload.mu, plan.upload.present,
                         options_.compression_level, *buf, index);
    };
  };

  // The chunk being assembled from the scan's pieces.
  uint64_t cur = UINT64_MAX, cur_filled = 0;
  std::shared_ptr<std::string> cur_buf;
  std::shared_ptr<VolumeLayer> layer =
      options_.background_io ? options_.background_io(view) : nullptr;
  snapshot::ScanOptions so;
  so.cancel = &stopping_;
  so.target = layer.get();
  Status scanned = snapshot::ScanContent(*view, ranges, so, [&](const snapshot::ScanPiece& piece) {
    if (digest) {
      piece.data != nullptr ? digest->AddData(piece.data, piece.length)
                            : digest->AddZeros(piece.length);
    }
    uint64_t off = piece.offset, left = piece.length;
    while (left > 0) {
      const uint64_t c = off / m.chunk_size;
      const uint64_t start = c * m.chunk_size, len = m.ChunkLength(c);
      if (c != cur) {
        cur = c;
        cur_filled = 0;
        cur_buf.reset();
      }
      const uint64_t n = std::min(left, start + len - off);
      if (piece.data != nullptr) {
        if (!cur_buf) cur_buf = std::make_shared<std::string>(len, '\0');
        std::memcpy(cur_buf->data() + (off - start), piece.data + (off - piece.offset), n);
      }
      cur_filled += n;
      off += n;
      left -= n;
      if (cur_filled == len) {
        if (cur_buf) {
          while (inflight.size() >= options_.parallel) SHALE_RETURN_IF_ERROR(finish_one());
          inflight.push_back(std::async(std::launch::async, upload(std::move(cur_buf), c)));
        } else {
          outcomes.push_back({.index = c, .zero = true});
        }
        cur = UINT64_MAX;
        SHALE_RETURN_IF_ERROR(after_chunk(len));
      }
    }
    return Status::Ok();
  });
  while (!inflight.empty()) {
    Status st = finish_one();
    if (scanned.ok() && !st.ok()) scanned = st;
  }
  SHALE_RETURN_IF_ERROR(scanned.WithContext("back up " + m.volume + "@" + m.snapshot));
  if (digest) {
    const std::string computed = digest->Finish().ToHex();
    if (computed != m.digest) {
      return Status::Corruption("the data of " + m.volume + "@" + m.snapshot + " hashes to " +
                                computed + " but its recorded digest is " + m.digest +
                                "; nothing was backed up (run `shale snapshot verify`)");
    }
  }
  AddOutcomes(outcomes, plan.carried, plan.upload.present, &m, result);
  m.read_bytes = total;
  result->reused_chunks += plan.carried.size();
  return Status::Ok();
}

Result<CreateResult> BackupManager::Create(std::string_view snapshot_ref, const Target& target,
                                           const CreateOptions& options) {
  SHALE_ASSIGN_OR_RETURN(snapshot::SnapshotRef ref, snapshot::ParseSnapshotRef(snapshot_ref));
  SnapshotFacts snap{ref.ToString(), {}};
  // The manifest carries the digest: computed first if it is still pending.
  SHALE_ASSIGN_OR_RETURN(snap.info, snapshots_->WaitDigest(snap.ref));
  if (snap.info.digest_state != snapshot::DigestState::kReady) {
    return Status::FailedPrecondition("the digest of " + snap.ref +
                                      " could not be computed: " + snap.info.digest_error);
  }
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Open(target));
  auto plan = std::make_unique<Plan>();
  Manifest& m = plan->manifest;
  m.id = NewBackupId(ref.volume, internal::NowNs());
  m.volume = ref.volume;
  m.snapshot = ref.snapshot;
  m.size_bytes = snap.info.size_bytes;
  m.digest = snap.info.digest;
  m.snapshot_created_unix_ns = snap.info.created_unix_ns;
  m.labels = snap.info.labels;
  m.provenance = {options_.host, options_.version, snap.info.pool, snap.info.source_volume_id,
                  snap.info.image_id};

  SHALE_RETURN_IF_ERROR(AcquireBackupLock(*s, m.id, options.progress));
  const std::string lock_key = s->loc().Key(std::string(kLocksDir) + "backup-" + m.id + ".lock");
  Result<CreateResult> result = [&]() -> Result<CreateResult> {
    CreateResult r;
    // What the bucket holds already: listed after the lock, so no sweep removes it meanwhile.
    const std::string dir = s->loc().Key(kChunksDir);
    SHALE_ASSIGN_OR_RETURN(S3Listing chunks, s->s3->List(dir));
    for (const S3Object& obj : chunks.objects) {
      Result<Hash128> h = HashFromChunkKey(std::string_view(obj.key).substr(dir.size()));
      if (h.ok() && obj.size > 0) plan->upload.present[*h] = obj.size;
    }
    SHALE_RETURN_IF_ERROR(PlanBase(*s, snap, options.full, plan.get()));
    SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> view, snapshots_->OpenSnapshot(snap.ref));
    SHALE_RETURN_IF_ERROR(RunChunks(*s, view, *plan, options.progress, &r));
    view.reset();
    m.created_unix_ns = internal::NowNs();
    m.Summarize();
    // The manifest last: until it is written, the backup does not exist.
    SHALE_RETURN_IF_ERROR(s->s3->Put(s->loc().Key(ManifestName(m.id)), EncodeManifest(m))
                              .WithContext("write the manifest of backup " + m.id));
    r.manifest = m;
    r.manifest.chunks.clear();
    r.location = s->loc().ToString();
    r.full_reason = plan->full_reason;
    return r;
  }();
  Status unlocked = s->s3->Delete(lock_key);
  if (!unlocked.ok()) {
    SHALE_LOG_WARN("backup: could not remove its lock (it expires)", {"key", lock_key},
                   {"error", unlocked.ToString()});
  }
  if (!result.ok()) return result.status();
  result->requests = s->s3->stats().requests;
  result->bytes_sent = s->s3->stats().bytes_sent;
  SHALE_LOG_INFO("backup created", {"id", m.id}, {"to", result->location},
                 {"base", m.base.empty() ? std::string("(full)") : m.base},
                 {"chunks", m.chunk_count}, {"uploaded_chunks", m.uploaded_chunks},
                 {"uploaded_bytes", m.uploaded_bytes});
  return result;
}

}  // namespace shale::backup
