// Map checkpoints: a clean shutdown writes every volume's cluster map to a file and the next
// open reads it instead of scanning the image chain's records (docs/format/map-checkpoint.md).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "engine/common/checksum.h"
#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/engine_internal.h"
#include "engine/pool/keys.h"
#include "engine/volume/map_checkpoint.h"

namespace shale {
namespace fs = std::filesystem;
namespace {

fs::path CheckpointDir(const meta::PoolRegistration& reg) {
  return fs::path(reg.metadata_dir()).parent_path() / "map-checkpoints";
}

fs::path CheckpointFile(const meta::PoolRegistration& reg, uint64_t volume_id) {
  return CheckpointDir(reg) / (std::to_string(volume_id) + ".map");
}

Status Errno(const std::string& what) {
  return Status::IoError(what + ": " + std::strerror(errno));
}

Status SyncDir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + dir.string());
  const int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? Status::Ok() : Errno("fsync " + dir.string());
}

// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
Status WriteFileDurably(const fs::path& path, const std::string& bytes) {
  const fs::path tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create " + tmp.string());
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      Status st = Errno("write " + tmp.string());
      ::close(fd);
      return st;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    Status st = Errno("fsync " + tmp.string());
    ::close(fd);
    return st;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Errno("rename " + tmp.string());
  return SyncDir(path.parent_path());
}

// A read-only mapping of a whole file (page cache, not the heap).
class MappedFile {
 public:
  static Result<MappedFile> Open(const fs::path& path) {
    MappedFile f;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Errno("open " + path.string());
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      Status err = Errno("stat " + path.string());
      ::close(fd);
      return err;
    }
    f.size_ = static_cast<size_t>(st.st_size);
    if (f.size_ > 0) {
      void* p = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        Status err = Errno("mmap " + path.string());
        ::close(fd);
        return err;
      }
      ::madvise(p, f.size_, MADV_SEQUENTIAL);
      f.data_ = p;
    }
    ::close(fd);
    return f;
  }
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr; }
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  std::string_view bytes() const {
    return data_ == nullptr ? std::string_view()
                            : std::string_view(static_cast<char*>(data_), size_);
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace

Status Engine::WriteMapCheckpoint(VolumeSlot& vs) {
  PoolSlot& ps = *vs.pool;
  const Volume& vol = *vs.volume;
  const meta::VolumeRecord& rec = vs.record;
  std::vector<uint64_t> chain = ChainOf(ps, rec.head_image());
  if (chain != vol.chain() || rec.head_image() != vol.head_image() ||
      rec.size_bytes() != vol.size_bytes()) {
    return Status::FailedPrecondition("the volume's records and its map disagree");
  }
  const std::string file = EncodeMapCheckpoint(vol.map(), static_cast<uint32_t>(vol.head_image()));
  std::error_code ec;
  fs::create_directories(CheckpointDir(ps.reg), ec);
  if (ec) return Status::IoError("create " + CheckpointDir(ps.reg).string() + ": " + ec.message());
  SHALE_RETURN_IF_ERROR(WriteFileDurably(CheckpointFile(ps.reg, rec.id()), file));
  meta::MapCheckpointRecord cp;
  cp.set_volume_id(rec.id());
  cp.set_head_image(rec.head_image());
  for (uint64_t image : chain) cp.add_chain(image);
  cp.set_size_bytes(rec.size_bytes());
  cp.set_cluster_size(ps.pool->cluster_size());
  cp.set_file_bytes(file.size());
  cp.set_file_xxh3(Hash64(file.data(), file.size()));
  return ps.pool->meta().Put(keys::MapCheckpoint(rec.id()), cp.SerializeAsString());
}

void Engine::WriteMapCheckpointsLocked(const std::vector<VolumeSlot*>& closed) {
  std::set<PoolSlot*> unsettled;
  for (VolumeSlot* vs : closed) {
    if (unsettled.count(vs->pool) || !vs->pool->pool) continue;
    if (Status settled = SettleFreezesLocked(*vs->pool); !settled.ok()) {
      unsettled.insert(vs->pool);
      continue;
    }
    Status st = WriteMapCheckpoint(*vs);
    if (!st.ok()) {
      SHALE_LOG_WARN("map checkpoint not written; the next start scans the volume's map",
                     {"volume", vs->record.name()}, {"error", st.ToString()});
    }
  }
}

std::optional<ClusterMap> Engine::ReadMapCheckpoint(PoolSlot& slot, const meta::VolumeRecord& rec,
                                                    const std::vector<uint64_t>& chain) {
  Pool& pool = *slot.pool;
  auto stored = pool.meta().Get(keys::MapCheckpoint(rec.id()));
  if (!stored.ok() || !stored->has_value()) return std::nullopt;
  auto refuse = [&](const std::string& why) -> std::optional<ClusterMap> {
    SHALE_LOG_WARN("map checkpoint not used; scanning the volume's map", {"volume", rec.name()},
                   {"reason", why});
    return std::nullopt;
  };
  meta::MapCheckpointRecord cp;
  if (!cp.ParseFromString(**stored)) return refuse("unreadable checkpoint record");
  if (cp.volume_id() != rec.id() || cp.head_image() != rec.head_image() ||
      cp.size_bytes() != rec.size_bytes() || cp.cluster_size() != pool.cluster_size() ||
      std::vector<uint64_t>(cp.chain().begin(), cp.chain().end()) != chain) {
    return refuse("it describes another state of the volume");
  }
  auto file = MappedFile::Open(CheckpointFile(slot.reg, rec.id()));
  if (!file.ok()) return refuse(file.status().ToString());
  const std::string_view bytes = file->bytes();
  if (bytes.size() != cp.file_bytes() || Hash64(bytes.data(), bytes.size()) != cp.file_xxh3()) {
    return refuse("the file's length or hash differs from its record");
  }
  const uint64_t cs = pool.cluster_size();
  auto map = DecodeMapCheckpoint(bytes, (rec.size_bytes() + cs - 1) / cs, pool.cluster_count());
  if (!map.ok()) return refuse(map.status().ToString());
  return std::move(map).value();
}

Result<ClusterMap> Engine::LoadVolumeMap(PoolSlot& slot, const meta::VolumeRecord& rec,
                                         const std::vector<uint64_t>& chain) {
  std::optional<ClusterMap> from_file;
  if (options_.map_checkpoints) from_file = ReadMapCheckpoint(slot, rec, chain);
  if (from_file.has_value() && !options_.verify_map_checkpoints) {
    ++load_stats_.maps_from_checkpoints;
    return std::move(*from_file);
  }
  SHALE_ASSIGN_OR_RETURN(ClusterMap scanned,
                         Volume::LoadMap(*slot.pool, chain, rec.size_bytes(), nullptr));
  if (!from_file.has_value()) {
    ++load_stats_.maps_scanned;
    return scanned;
  }
  if (!SameMappings(*from_file, scanned)) {
    return Status::Corruption("volume '" + rec.name() +
                              "': its map checkpoint differs from its records");
  }
  ++load_stats_.maps_from_checkpoints;
  return std::move(*from_file);
}

Status Engine::ConsumeMapCheckpoints(PoolSlot& slot) {
  MetaBatch batch;
  SHALE_RETURN_IF_ERROR(slot.pool->meta().Scan(keys::MapCheckpointPrefix(),
                                               [&](std::string_view k, std::string_view) {
                                                 batch.Delete(k);
                                                 return true;
                                               }));
  if (!batch.empty()) {
    SHALE_RETURN_IF_ERROR(
        slot.pool->meta().Write(batch).WithContext("consume the map checkpoints"));
  }
  std::error_code ec;
  fs::remove_all(CheckpointDir(slot.reg), ec);
  if (ec) {
    SHALE_LOG_WARN("map checkpoint files not removed", {"pool", slot.reg.name()},
                   {"error", ec.message()});
  }
  return Status::Ok();
}

}  // namespace shale
