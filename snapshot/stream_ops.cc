// SnapshotManager: export and import of snapshot streams (docs/format/snapshot-stream.md).
#include <algorithm>
#include <cstring>
#include <functional>

#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "snapshot/digest.h"
#include "snapshot/records.h"
#include "snapshot/snapshot_manager.h"
#include "snapshot/stream_format.h"
#include "snapshot/volume_scan.h"

namespace shale::snapshot {

namespace {

constexpr unsigned kImportDepth = 4;  // writes in flight while importing

Status ExportCancelled() {
  return Status::Aborted("export cancelled (a file export removes its partial file)");
}

StreamMeta MetaFor(const SnapshotRecord& rec) {
  StreamMeta meta;
  meta.set_source_volume(rec.volume());
  meta.set_snapshot(rec.name());
  for (const auto& [k, v] : rec.labels()) (*meta.mutable_labels())[k] = v;
  meta.set_created_unix_ns(rec.created_unix_ns());
  meta.set_exported_unix_ns(Clock::Real()->WallNanos());
  meta.set_exporter("shale");
  return meta;
}

// Stream metadata is input: bad names or labels in it are the stream's fault.
Status CheckStreamMeta(const StreamMeta& meta, bool incremental) {
  auto bad = [](const Status& st) {
    return Status::Corruption("snapshot stream: " + std::string(st.message()));
  };
  if (Status st = ValidateName("snapshot", meta.snapshot()); !st.ok()) return bad(st);
  if (incremental) {
    if (Status st = ValidateName("snapshot", meta.base_snapshot()); !st.ok()) return bad(st);
  }
  Labels labels(meta.labels().begin(), meta.labels().end());
  if (Status st = ValidateLabels(labels); !st.ok()) return bad(st);
  return Status::Ok();
}

// Records (or updates) the marker of an import in progress: Start() undoes what it names.
Status WriteImportMarker(Engine& engine, const std::string& pool, const ImportRecord& marker) {
  MetaBatch batch;
  batch.Put(ImportKey(marker.volume()), marker.SerializeAsString());
  return engine.WriteRecords(pool, std::move(batch));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Export

Result<ExportResult> SnapshotManager::Export(std::string_view ref, const std::string& path,
                                             const ExportOptions& options) {
  SHALE_RETURN_IF_ERROR(ParseSnapshotRef(ref).status());
  if (!options.base.empty()) SHALE_RETURN_IF_ERROR(ParseSnapshotRef(options.base).status());
  SHALE_ASSIGN_OR_RETURN(auto sink, FileSink::Create(path, options.overwrite));
  return Export(ref, sink.get(), options);  // the sink removes its partial file unless finished
}

Result<ExportResult> SnapshotManager::Export(std::string_view ref, StreamSink* sink,
                                             const ExportOptions& options) {
  SHALE_ASSIGN_OR_RETURN(SnapshotRef r, ParseSnapshotRef(ref));
  Lock lock(mu_);
  SHALE_ASSIGN_OR_RETURN(Found target, FindLocked(r));
  if (!options.base.empty()) {
    SHALE_ASSIGN_OR_RETURN(SnapshotRef b, ParseSnapshotRef(options.base));
    SHALE_ASSIGN_OR_RETURN(Found base, FindLocked(b));
    if (base.key == target.key) {
      return Status::InvalidArgument("snapshot '" + target.key +
                                     "' cannot be the base of its own export");
    }
    return ExportIncremental(lock, target, base, sink, options);
  }
  // The view keeps the snapshot from being deleted while it is read.
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> view,
                         engine_->OpenImage(target.pool, target.rec.image_id()));
  lock.unlock();
  const uint64_t size = view->volume().size_bytes();
  StreamWriter writer(sink);
  StreamInfo info;
  info.size_bytes = size;
  SHALE_RETURN_IF_ERROR(writer.WriteHeader(info, MetaFor(target.rec)));
  // A full stream carries only data; everything else reads as zeros in a new volume. The digest
  // is computed from exactly the bytes written.
  DigestBuilder builder(size);
  const std::shared_ptr<VolumeLayer> io_target = BackgroundTarget(view);
  ScanOptions scan;
  scan.target = io_target.get();
  Status st = ScanContent(*view, {{0, size}}, scan, [&](const ScanPiece& p) -> Status {
    if (p.data != nullptr) {
      builder.AddData(p.data, p.length);
      SHALE_RETURN_IF_ERROR(writer.WriteData(p.offset, p.data, static_cast<uint32_t>(p.length)));
    } else {
      builder.AddZeros(p.length);
    }
    if (options.progress) options.progress(p.offset + p.length, size);
    if (options.cancelled && options.cancelled()) return ExportCancelled();
    return Status::Ok();
  });
  view.reset();
  SHALE_RETURN_IF_ERROR(st.WithContext("export '" + target.key + "'"));
  const Hash128 digest = builder.Finish();
  lock.lock();
  SHALE_ASSIGN_OR_RETURN(auto current, ReadRecordLocked(target.pool, target.key));
  if (current && current->image_id() == target.rec.image_id()) {
    if (current->digest_state() == DIGEST_READY) {
      const std::string recorded = DigestHex(current->digest());
      if (recorded != digest.ToHex()) {
        // Never hand out a stream of data that no longer matches what was snapshotted.
        return Status::Corruption("snapshot '" + target.key +
                                  "' failed verification while exporting: its "
                                  "recorded digest is " +
                                  recorded + " but the data on disk hashes to " + digest.ToHex());
      }
    } else {
      Status s = StoreDigestLocked(target.pool, target.key, target.rec.image_id(), digest);
      if (!s.ok()) {
        SHALE_LOG_WARN("export: cannot record the digest", {"snapshot", target.key},
                       {"error", s.ToString()});
      }
    }
  }
  lock.unlock();
  SHALE_RETURN_IF_ERROR(writer.WriteEnd(digest));
  SHALE_RETURN_IF_ERROR(sink->Finish());
  ExportResult result;
  result.snapshot = target.key;
  result.stream_bytes = writer.bytes_written();
  result.data_bytes = writer.data_bytes();
  result.records = writer.records();
  result.digest = digest.ToHex();
  SHALE_LOG_INFO("snapshot exported", {"snapshot", target.key}, {"bytes", result.stream_bytes});
  return result;
}

namespace {

// An incremental export that compares content: writes the blocks of `p` that differ from the
// base (up to `base_size`; unallocated in the target: the base's data ranges become zeros) and
// everything of `p` past `base_size`. `base_buf` holds one scan window.
Status WriteChangedPart(
    const ScanPiece& p, uint64_t base_size, VolumeHandle& base_view, VolumeLayer* base_io_target,
    uint8_t* base_buf,
    const std::function<Status(uint64_t, uint64_t, const uint8_t*)>& write_piece) {
  const uint64_t end = p.offset + p.length;
  const uint64_t split = std::clamp(base_size, p.offset, end);
  if (split > p.offset) {
    const uint64_t len = split - p.offset;
    if (p.data != nullptr) {
      SHALE_RETURN_IF_ERROR(RunIo(base_view, VolumeOp::kRead, p.offset, len, base_buf,
                                  IoClass::kBackground, 0, base_io_target));
      uint64_t run = len;  // start of a run of differing blocks; len = none
      for (uint64_t b = 0; b <= len; b += kDigestBlockSize) {
        const bool differs =
            b < len && std::memcmp(p.data + b, base_buf + b,
                                   std::min<uint64_t>(kDigestBlockSize, len - b)) != 0;
        if (differs && run == len) run = b;
        if (!differs && run != len) {
          SHALE_RETURN_IF_ERROR(write_piece(p.offset + run, std::min(b, len) - run, p.data + run));
          run = len;
        }
      }
    } else {
      SHALE_ASSIGN_OR_RETURN(auto base_runs, QueryRuns(base_view, p.offset, len));
      for (const AllocationRun& br : base_runs) {
        if (!br.zero) SHALE_RETURN_IF_ERROR(write_piece(br.offset, br.length, nullptr));
      }
    }
  }
  if (end > split) {
    SHALE_RETURN_IF_ERROR(
        write_piece(split, end - split, p.data ? p.data + (split - p.offset) : nullptr));
  }
  return Status::Ok();
}

}  // namespace

Result<ExportResult> SnapshotManager::ExportIncremental(Lock& lock, const Found& target,
                                                        const Found& base, StreamSink* sink,
                                                        const ExportOptions& options) {
  SHALE_ASSIGN_OR_RETURN(ImageInfo target_image,
                         engine_->GetImage(target.pool, target.rec.image_id()));
  SHALE_ASSIGN_OR_RETURN(ImageInfo base_image, engine_->GetImage(base.pool, base.rec.image_id()));
  const uint64_t size = target_image.size_bytes;
  const uint64_t base_size = base_image.size_bytes;
  if (base_size > size) {
    return Status::InvalidArgument(
        "base '" + base.key + "' (" + FormatSize(base_size) + ") is larger than '" + target.key +
        "' (" + FormatSize(size) +
        "); an incremental stream cannot shrink a volume, export it in full");
  }
  // Both digests go into the stream: the importer checks its base against the first and the
  // result against the second.
  SHALE_ASSIGN_OR_RETURN(const Hash128 base_digest, EnsureDigestLocked(lock, base));
  SHALE_ASSIGN_OR_RETURN(const Hash128 target_digest, EnsureDigestLocked(lock, target));
  ByteRanges ranges;
  bool compare = true;
  if (target.pool == base.pool) {
    auto changed = engine_->ChangedRanges(target.pool, base.rec.image_id(), target.rec.image_id());
    if (changed.ok()) {
      ranges = std::move(changed).value();
      compare = false;
    } else if (changed.status().code() != StatusCode::kInvalidArgument) {
      return changed.status().WithContext("changes from '" + base.key + "' to '" + target.key +
                                          "'");
    }
    // InvalidArgument: the base is not an ancestor (another branch, a flattened volume): compare.
  }
  SHALE_ASSIGN_OR_RETURN(std::shared_ptr<VolumeHandle> view,
                         engine_->OpenImage(target.pool, target.rec.image_id()));
  std::shared_ptr<VolumeHandle> base_view;
  if (compare) {
    SHALE_ASSIGN_OR_RETURN(base_view, engine_->OpenImage(base.pool, base.rec.image_id()));
  }
  lock.unlock();

  StreamWriter writer(sink);
  StreamInfo info;
  info.size_bytes = size;
  info.incremental = true;
  info.base_size_bytes = base_size;
  info.base_digest = base_digest;
  StreamMeta meta = MetaFor(target.rec);
  meta.set_base_volume(base.rec.volume());
  meta.set_base_snapshot(base.rec.name());
  meta.set_content_compared(compare);
  SHALE_RETURN_IF_ERROR(writer.WriteHeader(info, meta));

  const std::function<Status(uint64_t, uint64_t, const uint8_t*)> write_piece =
      [&](uint64_t offset, uint64_t length, const uint8_t* data) -> Status {
    if (data != nullptr) return writer.WriteData(offset, data, static_cast<uint32_t>(length));
    return writer.WriteZeros(offset, length);
  };
  Status st;
  const std::shared_ptr<VolumeLayer> io_target = BackgroundTarget(view);
  const std::shared_ptr<VolumeLayer> base_io_target = BackgroundTarget(base_view);
  ScanOptions scan;
  scan.target = io_target.get();
  if (!compare) {
    st = ScanContent(*view, ranges, scan, [&](const ScanPiece& p) -> Status {
      SHALE_RETURN_IF_ERROR(write_piece(p.offset, p.length, p.data));
      if (options.progress) options.progress(p.offset + p.length, size);
      if (options.cancelled && options.cancelled()) return ExportCancelled();
      return Status::Ok();
    });
  } else {
    // Compare block by block with the base; past the base's end everything is new.
    AlignedBuffer base_buf = AllocateAligned(ScanOptions{}.window);
    st = ScanContent(*view, {{0, size}}, scan, [&](const ScanPiece& p) -> Status {
      SHALE_RETURN_IF_ERROR(WriteChangedPart(p, base_size, *base_view, base_io_target.get(),
                                             base_buf.get(), write_piece));
      if (options.progress) options.progress(p.offset + p.length, size);
      if (options.cancelled && options.cancelled()) return ExportCancelled();
      return Status::Ok();
    });
  }
  view.reset();
  base_view.reset();
  SHALE_RETURN_IF_ERROR(st.WithContext("export '" + target.key + "' since '" + base.key + "'"));
  SHALE_RETURN_IF_ERROR(writer.WriteEnd(target_digest));
  SHALE_RETURN_IF_ERROR(sink->Finish());
  ExportResult result;
  result.snapshot = target.key;
  result.base = base.key;
  result.content_compared = compare;
  result.stream_bytes = writer.bytes_written();
  result.data_bytes = writer.data_bytes();
  result.records = writer.records();
  result.digest = target_digest.ToHex();
  SHALE_LOG_INFO("snapshot exported (incremental)", {"snapshot", target.key}, {"base", base.key},
                 {"bytes", result.stream_bytes}, {"compared", compare ? 1 : 0});
  return result;
}

// ---------------------------------------------------------------------------------------------
// Import

Result<std::string> SnapshotManager::ResolvePoolLocked(const std::string& pool) {
  const auto pools = engine_->ListPools();
  if (!pool.empty()) {
    for (const PoolInfo& p : pools) {
      if (p.name != pool) continue;
      if (p.state != "online") {
        return Status::FailedPrecondition("pool '" + pool + "' is offline: " + p.error);
      }
      return pool;
    }
    return Status::NotFound("pool '" + pool + "' not found");
  }
  for (const PoolInfo& p : pools) {
    if (p.name == engine_->options().default_pool_name) return p.name;
  }
  if (pools.size() == 1) return pools[0].name;
  return Status::InvalidArgument(pools.empty()
                                     ? "there is no pool; create one first"
                                     : "several pools exist; choose the pool to import into");
}

Result<ImportResult> SnapshotManager::Import(const std::string& path, std::string_view volume,
                                             const ImportOptions& options) {
  SHALE_ASSIGN_OR_RETURN(auto source, FileSource::Open(path));
  return Import(source.get(), volume, options);
}

Result<ImportResult> SnapshotManager::Import(StreamSource* source, std::string_view volume,
                                             const ImportOptions& options) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", volume));
  StreamReader reader(source);
  SHALE_RETURN_IF_ERROR(reader.ReadHeader());
  SHALE_RETURN_IF_ERROR(CheckStreamMeta(reader.meta(), reader.info().incremental));
  const std::string name(volume);
  Lock lock(mu_);
  SHALE_RETURN_IF_ERROR(CheckNotBusyLocked(name));
  busy_[name] = "import in progress";
  auto result = ImportLocked(lock, reader, name, options);
  busy_.erase(name);
  return result;
}

// What an import checked before it changes anything, and the marker that lets Start() undo it.
struct SnapshotManager::ImportPlan {
  std::string volume;
  std::string pool;
  Found base;  // incremental: the volume's copy of the stream's base
  ImportRecord marker;
};

Result<ImportResult> SnapshotManager::ImportLocked(Lock& lock, StreamReader& reader,
                                                   const std::string& volume,
                                                   const ImportOptions& options) {
  SHALE_ASSIGN_OR_RETURN(ImportPlan plan, PlanImportLocked(lock, reader, volume, options));
  plan.marker.set_started_unix_ns(Clock::Real()->WallNanos());
  SHALE_RETURN_IF_ERROR(WriteImportMarker(*engine_, plan.pool, plan.marker));
  // From here on, a failure undoes everything (and a crash is undone by Start()).
  SHALE_RETURN_IF_ERROR(PrepareImportVolumeLocked(lock, reader.info(), plan));
  auto opened = engine_->OpenVolume(volume);
  if (!opened.ok()) return FailImportLocked(lock, plan, opened.status());
  std::shared_ptr<VolumeHandle> handle = std::move(opened).value();
  lock.unlock();
  auto stream_digest = ApplyImportRecords(handle, reader, options);
  handle.reset();
  lock.lock();
  if (!stream_digest.ok()) {
    return FailImportLocked(
        lock, plan, stream_digest.status().WithContext("import into volume '" + volume + "'"));
  }
  return FinishImportLocked(lock, reader, plan, *stream_digest);
}

Result<SnapshotManager::ImportPlan> SnapshotManager::PlanImportLocked(
    Lock& lock, const StreamReader& reader, const std::string& volume,
    const ImportOptions& options) {
  const StreamInfo& info = reader.info();
  const StreamMeta& meta = reader.meta();
  const SnapshotRef ref{volume, meta.snapshot()};
  SHALE_ASSIGN_OR_RETURN(auto existing, LookupLocked(ref));
  if (existing) {
    return Status::AlreadyExists("snapshot '" + ref.ToString() +
                                 "' already exists; the stream's snapshot '" + meta.snapshot() +
                                 "' cannot be imported into volume '" + volume + "'");
  }
  ImportPlan plan;
  plan.volume = volume;
  plan.marker.set_volume(volume);
  plan.marker.set_incremental(info.incremental);
  plan.marker.set_snapshot(meta.snapshot());
  plan.marker.set_base_snapshot(meta.base_snapshot());
  if (!info.incremental) {
    if (engine_->GetVolume(volume).ok()) {
      return Status::AlreadyExists("volume '" + volume +
                                   "' already exists; a full stream is imported into a new volume");
    }
    SHALE_ASSIGN_OR_RETURN(plan.pool, ResolvePoolLocked(options.pool));
    return plan;
  }
  const std::string base_key = volume + "@" + meta.base_snapshot();
  auto vol = engine_->GetVolume(volume);
  if (!vol.ok()) {
    return vol.status().WithContext(
        "an incremental stream applies to the volume holding its base '" + base_key + "'");
  }
  plan.pool = vol->pool;
  plan.marker.set_volume_id(vol->id);
  SHALE_ASSIGN_OR_RETURN(plan.base, CheckImportBaseLocked(lock, reader, *vol));
  auto again = engine_->GetVolume(volume);  // the lock was released while hashing
  if (!again.ok() || again->id != vol->id) {
    return Status::FailedPrecondition("volume '" + volume + "' changed during the import; retry");
  }
  return plan;
}

Result<SnapshotManager::Found> SnapshotManager::CheckImportBaseLocked(Lock& lock,
                                                                      const StreamReader& reader,
                                                                      const VolumeInfo& vol) {
  const StreamInfo& info = reader.info();
  const std::string& base_name = reader.meta().base_snapshot();
  const std::string base_key = vol.name + "@" + base_name;
  SHALE_ASSIGN_OR_RETURN(auto found, LookupLocked(SnapshotRef{vol.name, base_name}));
  if (!found) {
    return Status::FailedPrecondition(
        "volume '" + vol.name + "' has no snapshot '" + base_name +
        "', the base of this incremental stream; import the base first");
  }
  Found base = std::move(*found);
  if (base.pool != vol.pool || base.rec.source_volume_id() != vol.id) {
    return Status::FailedPrecondition("snapshot '" + base_key +
                                      "' was taken from an earlier volume named '" + vol.name +
                                      "'; the stream cannot be applied to this one");
  }
  SHALE_ASSIGN_OR_RETURN(ImageInfo base_image, engine_->GetImage(vol.pool, base.rec.image_id()));
  if (base_image.size_bytes != info.base_size_bytes) {
    return Status::FailedPrecondition("snapshot '" + base_key + "' is " +
                                      FormatSize(base_image.size_bytes) +
                                      " but the stream's base was " +
                                      FormatSize(info.base_size_bytes) + "; refusing to apply it");
  }
  SHALE_ASSIGN_OR_RETURN(const Hash128 have, EnsureDigestLocked(lock, base));
  if (have != info.base_digest) {
    return Status::FailedPrecondition("snapshot '" + base_key + "' has digest " + have.ToHex() +
                                      " but the stream was made against a base with digest " +
                                      info.base_digest.ToHex() + "; refusing to apply it");
  }
  return base;
}

Status SnapshotManager::PrepareImportVolumeLocked(Lock& lock, const StreamInfo& info,
                                                  ImportPlan& plan) {
  const std::string& volume = plan.volume;
  if (!info.incremental) {
    CreateVolumeParams params;
    params.name = volume;
    params.size_bytes = info.size_bytes;
    params.pool = plan.pool;
    auto created = engine_->CreateVolume(params);
    if (!created.ok()) return FailImportLocked(lock, plan, created.status().WithContext("import"));
    plan.marker.set_volume_id(created->id);
    if (Status st = WriteImportMarker(*engine_, plan.pool, plan.marker); !st.ok()) {
      return FailImportLocked(lock, plan, st);
    }
    return Status::Ok();
  }
  if (Status st = engine_->RevertVolume(volume, plan.base.rec.image_id()); !st.ok()) {
    // A failed revert changes nothing (engine contract): only the marker must go, or the
    // next start would revert the volume.
    MetaBatch batch;
    batch.Delete(ImportKey(volume));
    engine_->WriteRecords(plan.pool, std::move(batch)).IgnoreError();
    return st.WithContext("import: revert '" + volume + "' to its snapshot '" +
                          plan.base.rec.name() + "'");
  }
  if (info.size_bytes > info.base_size_bytes) {
    auto grown = engine_->ResizeVolume(volume, info.size_bytes);
    if (!grown.ok()) return FailImportLocked(lock, plan, grown.status().WithContext("import"));
  }
  return Status::Ok();
}

Result<Hash128> SnapshotManager::ApplyImportRecords(const std::shared_ptr<VolumeHandle>& handle,
                                                    StreamReader& reader,
                                                    const ImportOptions& options) {
  const bool incremental = reader.info().incremental;
  const std::shared_ptr<VolumeLayer> io_target = BackgroundTarget(handle);
  WriteQueue queue(handle.get(), kImportDepth, IoClass::kBackground, io_target.get());
  Status st;
  Hash128 stream_digest;
  for (;;) {
    auto rec = reader.Next();
    if (!rec.ok()) {
      st = rec.TakeStatus();
      break;
    }
    if (rec->type == RecordType::kEnd) {
      stream_digest = rec->digest;
      break;
    }
    if (rec->type == RecordType::kData) {
      st = queue.Write(rec->offset, rec->data, rec->length);
    } else if (incremental) {  // a new volume reads zeros already
      st = queue.WriteZeros(rec->offset, rec->length);
    }
    if (!st.ok()) break;
    if (options.progress) options.progress(reader.bytes_read());
    if (options.cancelled && options.cancelled()) {
      st = Status::Aborted("import cancelled; what it wrote is being undone");
      break;
    }
  }
  Status drained = queue.Drain();
  if (st.ok()) st = drained;
  if (!st.ok()) return st;
  return stream_digest;
}

Result<ImportResult> SnapshotManager::FinishImportLocked(Lock& lock, const StreamReader& reader,
                                                         const ImportPlan& plan,
                                                         const Hash128& stream_digest) {
  const StreamInfo& info = reader.info();
  const StreamMeta& meta = reader.meta();
  auto vol = engine_->GetVolume(plan.volume);
  if (!vol.ok()) return FailImportLocked(lock, plan, vol.status());
  Labels labels(meta.labels().begin(), meta.labels().end());
  auto snap = CreateLocked(*vol, meta.snapshot(), labels, false, "", false);
  if (!snap.ok()) return FailImportLocked(lock, plan, snap.status());
  // The imported data, read back from disk, must hash to the stream's digest.
  auto view = engine_->OpenImage(plan.pool, snap->rec.image_id());
  if (!view.ok()) return FailImportLocked(lock, plan, view.status());
  std::shared_ptr<VolumeHandle> view_handle = std::move(view).value();
  lock.unlock();
  auto computed = ComputeDigest(view_handle, nullptr, nullptr);
  view_handle.reset();
  lock.lock();
  if (!computed.ok()) {
    return FailImportLocked(lock, plan,
                            computed.status().WithContext("digest of the imported snapshot"));
  }
  if (*computed != stream_digest) {
    return FailImportLocked(lock, plan,
                            Status::Corruption("snapshot stream: the imported data hashes to " +
                                               computed->ToHex() + " but the stream's digest is " +
                                               stream_digest.ToHex() + "; the import was undone"));
  }
  MetaBatch finished;
  finished.Delete(ImportKey(plan.volume));  // the import completes atomically with its digest
  if (Status s = StoreDigestLocked(plan.pool, snap->key, snap->rec.image_id(), *computed,
                                   std::move(finished));
      !s.ok()) {
    return FailImportLocked(lock, plan, s);
  }
  const SnapshotRef ref{plan.volume, meta.snapshot()};
  SHALE_ASSIGN_OR_RETURN(Found done, FindLocked(ref));
  ImportResult result;
  SHALE_ASSIGN_OR_RETURN(result.snapshot, DescribeLocked(done, true, {}));
  result.incremental = info.incremental;
  result.created_volume = !info.incremental;
  result.stream_bytes = reader.bytes_read();
  SHALE_LOG_INFO("snapshot imported", {"snapshot", ref.ToString()},
                 {"incremental", info.incremental ? 1 : 0}, {"digest", computed->ToHex()});
  return result;
}

Status SnapshotManager::FailImportLocked(Lock& lock, const ImportPlan& plan, Status st) {
  Status undo = UndoImportLocked(lock, plan.marker, plan.pool);
  if (!undo.ok()) {
    SHALE_LOG_ERROR("import: undo incomplete (retried at the next start)", {"volume", plan.volume},
                    {"error", undo.ToString()});
  }
  return st;
}

Status SnapshotManager::UndoImportLocked(Lock& lock, const ImportRecord& marker,
                                         const std::string& pool) {
  Status first;
  auto note = [&](Status st) {
    if (!st.ok() && first.ok()) first = std::move(st);
  };
  const std::string key = marker.volume() + "@" + marker.snapshot();
  auto snap = ReadRecordLocked(pool, key);
  if (!snap.ok()) {
    note(snap.status());
  } else if (*snap && marker.volume_id() != 0 &&
             (*snap)->source_volume_id() == marker.volume_id()) {
    note(DeleteSnapshotLocked(lock, Found{pool, key, **snap}));
  }
  auto vol = engine_->GetVolume(marker.volume());
  // A full import's volume is ours if its id matches, or (crash before the id was recorded) if
  // it was created after the import started.
  const bool ours =
      vol.ok() && vol->pool == pool &&
      (marker.volume_id() != 0
           ? vol->id == marker.volume_id()
           : !marker.incremental() && vol->created_unix_ns >= marker.started_unix_ns());
  if (ours && !marker.incremental()) {
    note(engine_->DeleteVolume(marker.volume()));
  } else if (ours) {
    auto base = ReadRecordLocked(pool, marker.volume() + "@" + marker.base_snapshot());
    if (base.ok() && *base) note(engine_->RevertVolume(marker.volume(), (*base)->image_id()));
  }
  if (first.ok()) {
    MetaBatch batch;
    batch.Delete(ImportKey(marker.volume()));
    note(engine_->WriteRecords(pool, std::move(batch)));
  }
  return first;
}

Status SnapshotManager::RecoverImportsLocked(Lock& lock) {
  Status first;
  for (const std::string& pool : OnlinePools()) {
    std::vector<ImportRecord> markers;
    SHALE_RETURN_IF_ERROR(engine_->ScanRecords(pool, keys::ExtensionPrefix(kImportNamespace),
                                               [&](std::string_view, std::string_view v) {
                                                 ImportRecord m;
                                                 if (m.ParseFromString(std::string(v))) {
                                                   markers.push_back(std::move(m));
                                                 }
                                                 return true;
                                               }));
    for (const ImportRecord& m : markers) {
      SHALE_LOG_WARN("undoing an import interrupted by a crash", {"volume", m.volume()},
                     {"snapshot", m.snapshot()});
      Status st = UndoImportLocked(lock, m, pool);
      if (!st.ok() && first.ok()) first = st;
    }
  }
  return first;
}

}  // namespace shale::snapshot
