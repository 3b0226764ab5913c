#include "engine/pool/metadata_store.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <unistd.h>

namespace shale {

namespace {
Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return Status::NotFound(msg);
  if (s.IsCorruption()) return Status::Corruption(msg);
  if (s.IsInvalidArgument()) return Status::InvalidArgument(msg);
  if (s.IsNoSpace()) return Status::NoSpace(msg);
  // RocksDB reports a held LOCK file as an IOError ("While lock file: ..." from another process,
  // "lock hold by current process" from this one).
  const std::string text = s.ToString();
  if (s.IsBusy() || text.find("While lock file") != std::string::npos ||
      text.find("lock hold by current process") != std::string::npos) {
    return Status::Busy(msg + " (is another shaled using this data directory?)");
  }
  return Status::IoError(msg);
}
}  // namespace

MetaBatch::MetaBatch() : batch_(std::make_unique<rocksdb::WriteBatch>()) {}
MetaBatch::~MetaBatch() = default;
MetaBatch::MetaBatch(MetaBatch&&) noexcept = default;
MetaBatch& MetaBatch::operator=(MetaBatch&&) noexcept = default;
void MetaBatch::Put(std::string_view key, std::string_view value) {
  batch_->Put(rocksdb::Slice(key.data(), key.size()), rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
}
void MetaBatch::Delete(std::string_view key) {
  batch_->Delete(rocksdb::Slice(key.data(), key.size())).PermitUncheckedError();
}
void MetaBatch::DeleteRange(std::string_view begin, std::string_view end) {
  batch_
      ->DeleteRange(rocksdb::Slice(begin.data(), begin.size()),
                    rocksdb::Slice(end.data(), end.size()))
      .PermitUncheckedError();
}
namespace {
// Replays another batch's records into a target batch (RocksDB has no public append).
class AppendHandler final : public rocksdb::WriteBatch::Handler {
 public:
  explicit AppendHandler(rocksdb::WriteBatch* target) : target_(target) {}
  void Put(const rocksdb::Slice& key, const rocksdb::Slice& value) override {
    target_->Put(key, value).PermitUncheckedError();
  }
  void Delete(const rocksdb::Slice& key) override { target_->Delete(key).PermitUncheckedError(); }
  rocksdb::Status DeleteRangeCF(uint32_t cf, const rocksdb::Slice& begin,
                                const rocksdb::Slice& end) override {
    if (cf != 0) return rocksdb::Status::InvalidArgument("unexpected column family");
    return target_->DeleteRange(begin, end);
  }

 private:
  rocksdb::WriteBatch* target_;
};
}  // namespace

void MetaBatch::Append(const MetaBatch& other) {
  AppendHandler handler(batch_.get());
  rocksdb::Status s = other.batch_->Iterate(&handler);
  SHALE_CHECK(s.ok(), "MetaBatch::Append: ", s.ToString());
}
size_t MetaBatch::count() const { return static_cast<size_t>(batch_->Count()); }
size_t MetaBatch::data_bytes() const { return batch_->GetDataSize(); }

MetadataStore::MetadataStore(std::string dir, std::unique_ptr<rocksdb::Env> env, rocksdb::DB* db)
    : dir_(std::move(dir)), env_(std::move(env)), db_(db) {}

MetadataStore::~MetadataStore() {
  if (db_) db_->Close().PermitUncheckedError();
}

Result<std::unique_ptr<MetadataStore>> MetadataStore::Open(const std::string& dir,
                                                           const Options& options) {
  if (!options.create_if_missing && access((dir + "/CURRENT").c_str(), F_OK) != 0) {
    return Status::NotFound("metadata database " + dir + " does not exist");
  }
  rocksdb::Options ro;
  ro.create_if_missing = options.create_if_missing;
  ro.error_if_exists = options.error_if_exists;
  ro.paranoid_checks = true;
  ro.use_fsync = false;  // fdatasync is enough for the WAL
  ro.max_open_files = 256;
  ro.keep_log_file_num = 3;
  ro.write_buffer_size = 16 << 20;
  ro.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  ro.disable_auto_compactions = options.defer_compactions;
  std::unique_ptr<rocksdb::Env> env;
  if (options.file_system) {
    env = rocksdb::NewCompositeEnv(options.file_system);
    ro.env = env.get();
  }
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, dir, &db);
  if (!s.ok()) {
    if (s.IsInvalidArgument() && s.ToString().find("does not exist") != std::string::npos) {
      return Status::NotFound("metadata database " + dir + " does not exist");
    }
    return FromRocks(s, "open metadata " + dir);
  }
  return std::unique_ptr<MetadataStore>(new MetadataStore(dir, std::move(env), db));
}

Result<std::optional<std::string>> MetadataStore::Get(std::string_view key) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), rocksdb::Slice(key.data(), key.size()), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "metadata read");
  return std::optional<std::string>(std::move(value));
}

Status MetadataStore::Write(const MetaBatch& batch) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  SHALE_RETURN_IF_ERROR(FromRocks(db_->Write(wo, batch.batch_.get()), "metadata write"));
  write_count_.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

Status MetadataStore::Put(std::string_view key, std::string_view value) {
  MetaBatch b;
  b.Put(key, value);
  return Write(b);
}

Status MetadataStore::ResumeCompactions() {
  return FromRocks(db_->EnableAutoCompaction({db_->DefaultColumnFamily()}),
                   "resume metadata compactions");
}

bool MetadataStore::compactions_deferred() const {
  return db_->GetOptions().disable_auto_compactions;
}

Status MetadataStore::Scan(
    std::string_view prefix,
    const std::function<bool(std::string_view key, std::string_view value)>& fn) const {
  // The prefix's successor bounds the scan (none when the prefix is all 0xff bytes).
  std::string upper(prefix);
  while (!upper.empty() && static_cast<uint8_t>(upper.back()) == 0xff) upper.pop_back();
  if (!upper.empty()) upper.back() = static_cast<char>(static_cast<uint8_t>(upper.back()) + 1);
  return ScanRange(prefix, upper, [&](std::string_view k, std::string_view v) {
    return k.starts_with(prefix) && fn(k, v);
  });
}

Status MetadataStore::ScanRange(
    std::string_view begin, std::string_view end,
    const std::function<bool(std::string_view key, std::string_view value)>& fn) const {
  // A scan reads each record once (loading a volume's map reads millions): its blocks are not
  // worth the block cache's bookkeeping nor its memory, and sequential reads get readahead. The
  // upper bound keeps the iterator from reading past the range.
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  ro.readahead_size = 2 << 20;
  const rocksdb::Slice upper_slice(end.data(), end.size());
  if (!end.empty()) ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(rocksdb::Slice(begin.data(), begin.size())); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key();
    rocksdb::Slice v = it->value();
    if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
  }
  return FromRocks(it->status(), "metadata scan");
}

MetadataStore::MemoryUsage MetadataStore::memory_usage() const {
  MemoryUsage m;
  auto get = [&](const std::string& property, uint64_t* out) {
    if (!db_->GetIntProperty(property, out)) *out = 0;
  };
  get(rocksdb::DB::Properties::kCurSizeAllMemTables, &m.memtables);
  get(rocksdb::DB::Properties::kEstimateTableReadersMem, &m.table_readers);
  get(rocksdb::DB::Properties::kBlockCacheUsage, &m.block_cache);
  return m;
}

Status DestroyMetadataStore(const std::string& dir) {
  return FromRocks(rocksdb::DestroyDB(dir, rocksdb::Options()), "destroy metadata " + dir);
}

}  // namespace shale
