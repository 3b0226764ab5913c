// FaultInjectingFs: a rocksdb::FileSystem wrapper for crash and error tests of the metadata store
// (the RocksDB counterpart of engine/io/fault_device.h; its model follows RocksDB's own
// FaultInjectionTestFS, written anew for Shale's needs).
//
// Writes go through to the wrapped file system at once, so RocksDB reads back what it wrote. The
// wrapper remembers, for every file created through it, what a power loss would keep:
//  - data: the file's length at its last successful Sync/Fsync. Close and RangeSync make nothing
//    durable (a closed file's dirty pages can still be lost), unlike FaultInjectionTestFS, which
//    counts Close as a sync.
//  - name: a created file's name is durable once its directory was fsynced after the creation.
//    RocksDB fsyncs the directory after creating every file it depends on (CURRENT and IDENTITY
//    after their rename, table files after a flush, a WAL at its first synced write).
// PowerCut() applies that model, as a power loss followed by a reboot would: a file whose name is
// not durable is deleted (its directory entry never reached the disk, so after a real crash the
// file would not exist — deleting, not emptying, is what RocksDB must cope with); every other
// file is truncated to its durable length (emptied if it was never synced), or with
// CutMode::kRandom to a random point between that and its end (partial writeback, torn WAL
// records). Files not created through this wrapper (older than it, the info LOG, the LOCK file)
// are durable as they are.
//
// Renames and deletes take effect at once and are durable when they return (the same model as
// FaultInjectionTestFS; RocksDB fsyncs the directory right after every rename it relies on). A
// rename carries the file's state to the new name: a file renamed before its name was durable is
// still deleted at a cut.
//
// Faults (each failed operation returns an IOError and has no effect):
//  - FailNth(op, n): the n-th future operation of one kind fails.
//  - FailAllAfter(n), or a power gate returning false: the file system loses power. That
//    operation and every later one that opens, creates, writes, syncs, renames or deletes a file
//    fails until PowerCut(); reads of files already open still work (the page cache).
// RocksDB 7.8 treats a failed WAL write or sync as a background error: the database refuses
// every later write until it is reopened, while reads keep working.
//
// The wrapped file system must be a local one: PowerCut() truncates with truncate(2).
// Thread-safe. Log recycling (ReuseWritableFile) and random-RW files are refused (NotSupported):
// MetadataStore uses neither, and the model does not cover them.
#pragma once

#include <rocksdb/file_system.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale {

// Kinds of file system operations that can be counted and failed.
enum class FsOp : uint8_t {
  kCreate = 0,  // NewWritableFile, ReopenWritableFile
  kWrite,       // Append, PositionedAppend, Truncate (of an open file or by path)
  kSync,        // Sync or Fsync of a file
  kDirSync,     // fsync of a directory
  kRename,      // RenameFile, LinkFile
  kDelete,      // DeleteFile, DeleteDir
  kCount
};
std::string_view FsOpName(FsOp op);

class FaultInjectingFs final : public rocksdb::FileSystemWrapper {
 public:
  enum class CutMode {
    kDropAll,  // every file loses everything written since its last sync
    kRandom,   // each file keeps a random prefix of that (partial writeback; seeded)
  };
  // What PowerCut() threw away.
  struct CutReport {
    uint64_t files_deleted = 0;    // names that were not durable
    uint64_t files_truncated = 0;  // files cut back (to their last sync, or past it: kRandom)
    uint64_t bytes_dropped = 0;    // unsynced bytes cut off the truncated files
  };

  // Wraps `base` (the durable medium), e.g. rocksdb::FileSystem::Default(). With
  // sync_base = false, file and directory syncs are only modelled, never passed to `base`: the
  // process never really loses power, so the model is all a crash test needs, and it runs
  // without waiting for the disk.
  explicit FaultInjectingFs(std::shared_ptr<rocksdb::FileSystem> base, bool sync_base = true);
  ~FaultInjectingFs() override;

  static const char* kClassName() { return "ShaleFaultInjectingFs"; }
  const char* Name() const override { return kClassName(); }

  // The n-th (1-based, counted from this call) future operation of kind op fails. Replaces an
  // earlier pending FailNth for the same op.
  void FailNth(FsOp op, uint64_t n);
  // After n more operations (of any kind in FsOp) succeed or fail normally, power is lost.
  void FailAllAfter(uint64_t n);
  // Asked before every operation of a kind in FsOp; once it returns false, power is lost (as
  // with FailAllAfter). Lets a test put this file system and a FaultDevice on one power supply,
  // so both die at the same instant. May be called on any RocksDB thread; must not call back
  // into this file system.
  void SetPowerGate(std::function<bool()> gate);
  // Power loss and reboot. The store using this file system must be closed. Deletes the files
  // whose names are not durable, truncates the others to their last sync (kDropAll) or to a
  // random point between their last sync and their end (kRandom, reproducible for the seed),
  // forgets all tracking and clears every fault (FailNth, FailAllAfter, the gate): the file
  // system works again and holds only what survived.
  Result<CutReport> PowerCut(CutMode mode = CutMode::kDropAll, uint64_t seed = 0);

  // Operations of kind op seen so far (failed ones included; never reset).
  uint64_t ops(FsOp op) const;
  // Whether power is lost (FailAllAfter ran out or the gate said so).
  bool powered_off() const;
  // Bytes written to tracked files since their last sync.
  uint64_t unsynced_bytes() const;

  // --- rocksdb::FileSystem ---
  rocksdb::IOStatus NewSequentialFile(const std::string& f, const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSSequentialFile>* r,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomAccessFile(const std::string& f, const rocksdb::FileOptions& o,
                                        std::unique_ptr<rocksdb::FSRandomAccessFile>* r,
                                        rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& o,
                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteDir(const std::string& d, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& f, size_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& s, const std::string& t,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& s, const std::string& t,
                             const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;

 private:
  class File;
  class Directory;
  struct FileState {
    uint64_t size = 0;    // bytes written through the wrapper (the file's length)
    uint64_t synced = 0;  // length at the last successful sync
  };
  struct PendingFault {
    uint64_t remaining = 0;  // operations to let through first
  };

  // Counts an operation of kind op and decides whether it fails (power lost or injected).
  rocksdb::IOStatus Admit(FsOp op, const std::string& what);
  // Fails when power is lost, without counting (opening files for reading, closing).
  rocksdb::IOStatus CheckPower(const std::string& what) const;
  // Bookkeeping after a successful operation.
  // A file opened for writing: `existed` = its name was already on the medium; `keep` = keep
  // the tracked state (reopen) rather than start at `size` bytes, all of them durable.
  void Opened(const std::string& path, bool existed, bool keep, uint64_t size);
  // The file's length became max(length, end) (append) or exactly end (truncate).
  void Wrote(const std::string& path, uint64_t end, bool truncate);
  void Appended(const std::string& path, uint64_t bytes);
  void Synced(const std::string& path);
  void DirSynced(const std::string& dir);
  void Removed(const std::string& path);
  void Renamed(const std::string& from, const std::string& to, bool keep_source);

  mutable std::mutex mu_;
  std::map<std::string, FileState> files_;                  // tracked files by path
  std::map<std::string, std::set<std::string>> new_names_;  // dir -> names not yet durable
  std::array<uint64_t, static_cast<size_t>(FsOp::kCount)> ops_{};
  std::array<std::optional<PendingFault>, static_cast<size_t>(FsOp::kCount)> fail_nth_;
  std::optional<PendingFault> fail_all_after_;
  std::function<bool()> gate_;
  bool powered_off_ = false;
  const bool sync_base_;
};

}  // namespace shale
