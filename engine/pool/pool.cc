#include "engine/pool/pool.h"

#include <algorithm>
#include <cstring>

#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/common/units.h"
#include "engine/pool/keys.h"

namespace shale {

namespace {
bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}
std::string UuidBytes(const Uuid& u) { return std::string(u.bytes.begin(), u.bytes.end()); }
}  // namespace

Pool::Pool(std::shared_ptr<BlockDevice> device, std::unique_ptr<MetadataStore> meta,
           Superblock superblock, meta::PoolRecord record)
    : device_(std::move(device)),
      meta_(std::move(meta)),
      superblock_(std::move(superblock)),
      record_(std::move(record)),
      cluster_count_(superblock_.cluster_count) {}

Pool::~Pool() { Close(); }

void Pool::Close() {
  if (pipeline_) pipeline_->Stop();
}

Status Pool::WriteSuperblocks(BlockDevice& device, const Superblock& sb) {
  std::string bytes = sb.Encode();
  AlignedBuffer buf = AllocateAligned(kSuperblockSize);
  std::memcpy(buf.get(), bytes.data(), kSuperblockSize);
  SHALE_RETURN_IF_ERROR(device.WriteSync(0, buf.get(), kSuperblockSize));
  SHALE_RETURN_IF_ERROR(device.FlushSync());
  SHALE_RETURN_IF_ERROR(device.WriteSync(kSuperblockBackupOffset, buf.get(), kSuperblockSize));
  return device.FlushSync();
}

Status Pool::WipeSuperblock(BlockDevice& device) {
  AlignedBuffer buf = AllocateAligned(kSuperblockSize);
  std::memset(buf.get(), 0, kSuperblockSize);
  SHALE_RETURN_IF_ERROR(device.WriteSync(0, buf.get(), kSuperblockSize));
  SHALE_RETURN_IF_ERROR(device.WriteSync(kSuperblockBackupOffset, buf.get(), kSuperblockSize));
  return device.FlushSync();
}

Result<Pool::SuperblockRead> Pool::ReadSuperblock(BlockDevice& device) {
  if (device.geometry().size_bytes < kPoolDataOffset) {
    return Status::InvalidArgument("device is smaller than 1 MiB");
  }
  AlignedBuffer buf = AllocateAligned(kSuperblockSize);
  SHALE_RETURN_IF_ERROR(device.ReadSync(0, buf.get(), kSuperblockSize));
  auto primary = Superblock::Decode(buf.get(), kSuperblockSize);
  if (primary.ok()) return SuperblockRead{std::move(primary).value(), false};
  SHALE_RETURN_IF_ERROR(device.ReadSync(kSuperblockBackupOffset, buf.get(), kSuperblockSize));
  auto backup = Superblock::Decode(buf.get(), kSuperblockSize);
  if (backup.ok()) return SuperblockRead{std::move(backup).value(), true};
  // Report the more informative of the two errors.
  if (primary.status().code() == StatusCode::kNotFound) return backup.TakeStatus();
  return primary.TakeStatus();
}

Result<std::unique_ptr<Pool>> Pool::Create(std::shared_ptr<BlockDevice> device,
                                           const PoolCreateOptions& options) {
  SHALE_RETURN_IF_ERROR(ValidateName("pool", options.name));
  SHALE_RETURN_IF_ERROR(ValidateClusterSize(options.cluster_size));
  if (options.metadata_dir.empty())
    return Status::InvalidArgument("pool needs a metadata directory");

  // Never silently overwrite: a device holding a pool or other data needs force.
  if (!options.force) {
    auto existing = ReadSuperblock(*device);
    if (existing.ok()) {
      return Status::AlreadyExists("device already holds Shale pool '" +
                                   existing->superblock.pool_name + "' (" +
                                   existing->superblock.pool_uuid.ToString() +
                                   "); refusing to overwrite it (use --force to reformat)");
    }
    AlignedBuffer head = AllocateAligned(64 * kKiB);
    SHALE_RETURN_IF_ERROR(device->ReadSync(0, head.get(), 64 * kKiB));
    if (!AllZero(head.get(), 64 * kKiB)) {
      return Status::FailedPrecondition(
          "device is not blank (it holds data that is not a Shale pool); refusing to overwrite "
          "it (use --force to format it anyway)");
    }
  }

  SHALE_ASSIGN_OR_RETURN(Superblock sb,
                         Superblock::ForNewPool(options.name, device->geometry().size_bytes,
                                                options.cluster_size, Clock::Real()->WallNanos()));
  SHALE_ASSIGN_OR_RETURN(
      auto meta, MetadataStore::Open(options.metadata_dir, {.create_if_missing = true,
                                                            .error_if_exists = true,
                                                            .file_system = options.metadata_fs}));
  meta::PoolRecord rec;
  rec.set_name(sb.pool_name);
  rec.set_uuid(UuidBytes(sb.pool_uuid));
  rec.set_state(meta::POOL_CREATING);
  rec.set_format_version(sb.format_version);
  rec.set_cluster_size(sb.cluster_size);
  rec.set_cluster_count(sb.cluster_count);
  rec.set_data_offset(sb.data_offset);
  rec.set_created_unix_ns(sb.created_unix_ns);
  rec.set_next_volume_id(1);
  rec.set_next_image_id(1);
  SHALE_RETURN_IF_ERROR(meta->Put(keys::Pool(), rec.SerializeAsString()));
  SHALE_RETURN_IF_ERROR(WriteSuperblocks(*device, sb).WithContext("write superblock"));
  rec.set_state(meta::POOL_READY);
  SHALE_RETURN_IF_ERROR(meta->Put(keys::Pool(), rec.SerializeAsString()));

  std::unique_ptr<Pool> pool(
      new Pool(std::move(device), std::move(meta), std::move(sb), std::move(rec)));
  SHALE_RETURN_IF_ERROR(pool->LoadAllocation(options.discard_freed));
  SHALE_LOG_INFO("pool created", {"pool", pool->name()}, {"uuid", pool->uuid().ToString()},
                 {"clusters", pool->cluster_count()}, {"cluster_size", pool->cluster_size()},
                 {"device", pool->device_->kind()});
  return pool;
}

Result<std::unique_ptr<Pool>> Pool::Open(std::shared_ptr<BlockDevice> device,
                                         const PoolOpenOptions& options) {
  const std::string who = "pool '" + options.name + "'";
  auto meta_or = MetadataStore::Open(
      options.metadata_dir,
      {.file_system = options.metadata_fs, .defer_compactions = options.defer_compactions});
  if (!meta_or.ok()) {
    if (meta_or.status().IsNotFound()) {
      return Status::FailedPrecondition(who + ": its metadata is missing at " +
                                        options.metadata_dir +
                                        "; refusing to open the device (it is left untouched)");
    }
    return meta_or.status().WithContext(who);
  }
  auto meta = std::move(meta_or).value();
  SHALE_ASSIGN_OR_RETURN(auto rec_bytes, meta->Get(keys::Pool()));
  if (!rec_bytes) return Status::Corruption(who + ": metadata has no pool record");
  meta::PoolRecord rec;
  if (!rec.ParseFromString(*rec_bytes)) return Status::Corruption(who + ": unreadable pool record");
  Uuid meta_uuid;
  if (rec.uuid().size() != 16) return Status::Corruption(who + ": pool record has a bad UUID");
  std::memcpy(meta_uuid.bytes.data(), rec.uuid().data(), 16);
  if (!options.expected_uuid.IsNil() && !(options.expected_uuid == meta_uuid)) {
    return Status::FailedPrecondition(
        who + ": metadata at " + options.metadata_dir + " belongs to pool " + meta_uuid.ToString() +
        ", not to the registered " + options.expected_uuid.ToString());
  }

  auto sb_read = ReadSuperblock(*device);
  Superblock sb;
  if (!sb_read.ok()) {
    if (rec.state() == meta::POOL_CREATING && sb_read.status().code() == StatusCode::kNotFound) {
      // Creation was interrupted before the superblock became durable: finish it.
      sb.pool_uuid = meta_uuid;
      sb.pool_name = rec.name();
      sb.created_unix_ns = rec.created_unix_ns();
      sb.device_size = device->geometry().size_bytes;
      sb.cluster_size = rec.cluster_size();
      sb.cluster_count = rec.cluster_count();
      sb.data_offset = rec.data_offset();
      SHALE_RETURN_IF_ERROR(WriteSuperblocks(*device, sb).WithContext(who));
      SHALE_LOG_WARN("finished an interrupted pool creation", {"pool", rec.name()});
    } else if (sb_read.status().code() == StatusCode::kNotFound) {
      return Status::FailedPrecondition(who +
                                        ": device has no Shale superblock (wrong device, or "
                                        "it was overwritten); refusing to open it");
    } else {
      return sb_read.status().WithContext(who + ": cannot read superblock");
    }
  } else {
    sb = sb_read->superblock;
    if (!(sb.pool_uuid == meta_uuid)) {
      return Status::FailedPrecondition(who + ": device holds pool " + sb.pool_uuid.ToString() +
                                        " ('" + sb.pool_name + "') but the metadata belongs to " +
                                        meta_uuid.ToString() + "; refusing to open");
    }
    const uint64_t device_size = device->geometry().size_bytes;
    if (sb.cluster_count < rec.cluster_count() && sb.cluster_size == rec.cluster_size() &&
        sb.data_offset == rec.data_offset() &&
        sb.data_offset + rec.cluster_count() * sb.cluster_size <= device_size) {
      // An expansion committed its record but not both superblocks: finish it (Expand()).
      SHALE_LOG_WARN("finished an interrupted pool expansion", {"pool", rec.name()},
                     {"clusters_before", sb.cluster_count}, {"clusters", rec.cluster_count()});
      sb.cluster_count = rec.cluster_count();
      sb.device_size = std::max(sb.device_size, device_size);
      ++sb.generation;
      SHALE_RETURN_IF_ERROR(WriteSuperblocks(*device, sb).WithContext(who));
      sb_read->primary_damaged = false;
    }
    if (sb.cluster_size != rec.cluster_size() || sb.cluster_count != rec.cluster_count() ||
        sb.data_offset != rec.data_offset()) {
      return Status::Corruption(who + ": superblock geometry disagrees with the metadata");
    }
    if (sb.device_size > device->geometry().size_bytes) {
      return Status::FailedPrecondition(who + ": device shrank from " + FormatSize(sb.device_size) +
                                        " to " + FormatSize(device->geometry().size_bytes));
    }
    if (sb_read->primary_damaged) {
      SHALE_LOG_WARN("primary superblock damaged; repaired from the backup copy",
                     {"pool", sb.pool_name});
      SHALE_RETURN_IF_ERROR(WriteSuperblocks(*device, sb).WithContext(who));
    }
  }
  if (rec.state() == meta::POOL_CREATING) {
    rec.set_state(meta::POOL_READY);
    SHALE_RETURN_IF_ERROR(meta->Put(keys::Pool(), rec.SerializeAsString()));
  }
  std::unique_ptr<Pool> pool(
      new Pool(std::move(device), std::move(meta), std::move(sb), std::move(rec)));
  SHALE_RETURN_IF_ERROR(pool->LoadAllocation(options.discard_freed).WithContext(who));
  return pool;
}

Status Pool::LoadAllocation(bool discard_freed) {
  const uint64_t n = superblock_.cluster_count;
  ClusterBitmap committed(n);
  Status parse;
  SHALE_RETURN_IF_ERROR(
      meta_->Scan(keys::BitmapPrefix(), [&](std::string_view k, std::string_view v) {
        if (k.size() != 9) {
          parse = Status::Corruption("malformed bitmap key");
          return false;
        }
        parse = committed.DecodeChunk(keys::DecodeU64At(k, 1), keys::kClustersPerBitmapChunk, v);
        return parse.ok();
      }));
  SHALE_RETURN_IF_ERROR(parse);
  allocator_ = std::make_unique<ClusterAllocator>(n);
  for (uint64_t i = 0; i < n; ++i) {
    if (committed.Test(i)) allocator_->MarkUsed(i);
  }
  pipeline_ = std::make_unique<CommitPipeline>(
      superblock_.pool_name, device_.get(), meta_.get(), allocator_.get(), std::move(committed),
      superblock_.cluster_size, superblock_.data_offset, discard_freed);
  return Status::Ok();
}

Result<uint64_t> Pool::Expand(uint64_t size_bytes) {
  const std::string who = "pool '" + name() + "'";
  if (pipeline_->failed()) {
    return Status::FailedPrecondition(who + " is in error: " + pipeline_->failure().ToString());
  }
  Result<uint64_t> grown_to = device_->Grow(size_bytes);
  if (!grown_to.ok()) return grown_to.status().WithContext(who + ": grow the device");
  const uint64_t device_size = *grown_to;
  const uint64_t old_count = cluster_count();
  const uint64_t usable = device_size > superblock_.data_offset
                              ? (device_size - superblock_.data_offset) / cluster_size()
                              : 0;
  const uint64_t new_count = std::min<uint64_t>(usable, UINT32_MAX - 16);
  if (new_count <= old_count) {
    return Status::FailedPrecondition(
        who + " already uses all of its " + FormatSize(device_size) + " device (" +
        std::to_string(old_count) + " clusters of " + FormatSize(cluster_size()) +
        "); grow the device first, or give a larger --size for a file-backed pool");
  }
  // 1. The new size is durable before anything refers to it (a file's size is metadata that
  //    fdatasync makes durable).
  SHALE_RETURN_IF_ERROR(device_->FlushSync().WithContext(who + ": flush the grown device"));
  // 2. The record: after this commit the pool is the larger one, whatever happens next.
  meta::PoolRecord grown = record_;
  grown.set_cluster_count(new_count);
  CommitPipeline::Request req;
  req.batch.Put(keys::Pool(), grown.SerializeAsString());
  req.flush_device = false;
  SHALE_RETURN_IF_ERROR(pipeline_->CommitSync(std::move(req)).WithContext(who + ": record"));
  record_ = grown;
  if (expand_hook_) SHALE_RETURN_IF_ERROR(expand_hook_());
  // 3. Both superblock copies (Open() finishes this step after a crash).
  Superblock sb = superblock_;
  sb.cluster_count = new_count;
  sb.device_size = device_size;
  ++sb.generation;
  SHALE_RETURN_IF_ERROR(WriteSuperblocks(*device_, sb).WithContext(who + ": write superblock"));
  superblock_ = sb;
  // 4. Now the new clusters may be handed out: the pipeline records them first.
  pipeline_->GrowBitmap(new_count);
  allocator_->Grow(new_count);
  cluster_count_.store(new_count, std::memory_order_release);
  return new_count - old_count;
}

uint64_t Pool::ReserveVolumeId(MetaBatch* batch) {
  uint64_t id = record_.next_volume_id();
  record_.set_next_volume_id(id + 1);
  batch->Put(keys::Pool(), record_.SerializeAsString());
  return id;
}

uint64_t Pool::ReserveImageId(MetaBatch* batch) {
  uint64_t id = record_.next_image_id();
  record_.set_next_image_id(id + 1);
  batch->Put(keys::Pool(), record_.SerializeAsString());
  return id;
}

}  // namespace shale
