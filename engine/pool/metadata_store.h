// MetadataStore: a RocksDB database with Shale's conventions. Every write is synced (WAL fsync)
// before it returns, so whatever a write committed survives a crash; that is what the pool's
// crash-consistency argument relies on (docs/crash-consistency.md).
// Thread-safe (RocksDB is).
//
// A failed write has an unknown outcome: it may or may not be found after a restart (its WAL
// record may have reached the disk before the sync failed). RocksDB then refuses every later
// write of this store (a background error) until it is reopened; reads keep working.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace rocksdb {
class DB;
class Env;
class FileSystem;
class WriteBatch;
}  // namespace rocksdb

namespace shale {

// A set of changes applied atomically by MetadataStore::Write.
class MetaBatch {
 public:
  MetaBatch();
  ~MetaBatch();
  MetaBatch(MetaBatch&&) noexcept;
  MetaBatch& operator=(MetaBatch&&) noexcept;

  void Put(std::string_view key, std::string_view value);
  void Delete(std::string_view key);
  // Deletes every key in [begin, end).
  void DeleteRange(std::string_view begin, std::string_view end);
  // Appends all of other's changes after this batch's.
  void Append(const MetaBatch& other);
  size_t count() const;
  size_t data_bytes() const;  // encoded size
  bool empty() const { return count() == 0; }

 private:
  friend class MetadataStore;
  std::unique_ptr<rocksdb::WriteBatch> batch_;
};

class MetadataStore {
 public:
  struct Options {
    bool create_if_missing = false;
    bool error_if_exists = false;
    // The file system RocksDB runs on; null = the default (local files). Tests pass a
    // FaultInjectingFs (fault_fs.h) here. Shared: it must outlive the store.
    std::shared_ptr<rocksdb::FileSystem> file_system;
    // Opens with automatic compactions off until ResumeCompactions(): an engine loading its
    // volume maps scans millions of records, and a compaction the open triggers (the replayed
    // WAL's flush adds an L0 file) would take the core the scan's second thread needs.
    bool defer_compactions = false;
  };
  // Busy when another process holds the database; NotFound when it does not exist and
  // create_if_missing is false.
  static Result<std::unique_ptr<MetadataStore>> Open(const std::string& dir,
                                                     const Options& options);
  ~MetadataStore();
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;

  Result<std::optional<std::string>> Get(std::string_view key) const;
  // Atomic and durable (synced) when it returns OK.
  Status Write(const MetaBatch& batch);
  Status Put(std::string_view key, std::string_view value);
  // After Options::defer_compactions: compactions run again (any owed start now).
  Status ResumeCompactions();
  bool compactions_deferred() const;
  // Calls fn(key, value) for every key starting with prefix, in key order, until fn returns false.
  Status Scan(std::string_view prefix,
              const std::function<bool(std::string_view key, std::string_view value)>& fn) const;
  // The same for every key in [begin, end) (end empty: no upper bound). Iterators are
  // independent: several threads may scan disjoint ranges at once (Volume::LoadMap does).
  Status ScanRange(
      std::string_view begin, std::string_view end,
      const std::function<bool(std::string_view key, std::string_view value)>& fn) const;
  // RocksDB's own memory: memtables (bounded by the write buffers), table readers (index and
  // filter blocks of open SST files: they grow with the data) and the block cache (bounded by
  // its capacity). From RocksDB's estimates; 0 where it has none. Any thread.
  struct MemoryUsage {
    uint64_t memtables = 0, table_readers = 0, block_cache = 0;
  };
  MemoryUsage memory_usage() const;
  // Number of successful Write() calls (for tests of group commit).
  uint64_t write_count() const { return write_count_; }
  const std::string& dir() const { return dir_; }

 private:
  MetadataStore(std::string dir, std::unique_ptr<rocksdb::Env> env, rocksdb::DB* db);
  std::string dir_;
  std::unique_ptr<rocksdb::Env> env_;  // wraps Options::file_system; null = default; outlives db_
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<uint64_t> write_count_{0};
};

// Removes a metadata directory created by MetadataStore (the store must be closed).
Status DestroyMetadataStore(const std::string& dir);

}  // namespace shale
