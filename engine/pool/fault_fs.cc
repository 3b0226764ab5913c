#include "engine/pool/fault_fs.h"

#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

namespace shale {

namespace {

// Paths are compared as strings: collapse repeated '/' and drop a trailing one, so that
// "dir//000004.log" and the directory "dir/" match what RocksDB passes elsewhere.
std::string Normalize(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out.push_back(c);
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::pair<std::string, std::string> SplitPath(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return {".", path};
  if (slash == 0) return {"/", path.substr(1)};
  return {path.substr(0, slash), path.substr(slash + 1)};
}

}  // namespace

std::string_view FsOpName(FsOp op) {
  switch (op) {
    case FsOp::kCreate:
      return "create";
    case FsOp::kWrite:
      return "write";
    case FsOp::kSync:
      return "sync";
    case FsOp::kDirSync:
      return "directory sync";
    case FsOp::kRename:
      return "rename";
    case FsOp::kDelete:
      return "delete";
    case FsOp::kCount:
      break;
  }
  return "?";
}

// A file opened for writing: every change is admitted (counted, maybe failed) by the file
// system and recorded in its durability model.
class FaultInjectingFs::File final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  File(FaultInjectingFs* fs, std::string path, std::unique_ptr<rocksdb::FSWritableFile> target)
      : FSWritableFileOwnerWrapper(std::move(target)), fs_(fs), path_(std::move(path)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kWrite, path_);
    if (s.ok()) s = target()->Append(data, o, dbg);
    if (s.ok()) fs_->Appended(path_, data.size());
    return s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kWrite, path_);
    if (s.ok()) s = target()->Append(data, o, info, dbg);
    if (s.ok()) fs_->Appended(path_, data.size());
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kWrite, path_);
    if (s.ok()) s = target()->PositionedAppend(data, offset, o, dbg);
    if (s.ok()) fs_->Wrote(path_, offset + data.size(), /*truncate=*/false);
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kWrite, path_);
    if (s.ok()) s = target()->PositionedAppend(data, offset, o, info, dbg);
    if (s.ok()) fs_->Wrote(path_, offset + data.size(), /*truncate=*/false);
    return s;
  }
  rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kWrite, path_);
    if (s.ok()) s = target()->Truncate(size, o, dbg);
    if (s.ok()) fs_->Wrote(path_, size, /*truncate=*/true);
    return s;
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kSync, path_);
    if (s.ok() && fs_->sync_base_) s = target()->Sync(o, dbg);
    if (s.ok()) fs_->Synced(path_);
    return s;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kSync, path_);
    if (s.ok() && fs_->sync_base_) s = target()->Fsync(o, dbg);
    if (s.ok()) fs_->Synced(path_);
    return s;
  }
  // A hint to start writeback: makes nothing durable.
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->CheckPower(path_);
    return s.ok() ? target()->RangeSync(offset, nbytes, o, dbg) : s;
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->CheckPower(path_);
    return s.ok() ? target()->Flush(o, dbg) : s;
  }
  // Always closes the descriptor; reports a lost power all the same. Makes nothing durable.
  rocksdb::IOStatus Close(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Close(o, dbg);
    rocksdb::IOStatus power = fs_->CheckPower(path_);
    return power.ok() ? s : power;
  }

 private:
  FaultInjectingFs* const fs_;
  const std::string path_;
};

class FaultInjectingFs::Directory final : public rocksdb::FSDirectoryWrapper {
 public:
  Directory(FaultInjectingFs* fs, std::string path, std::unique_ptr<rocksdb::FSDirectory> target)
      : FSDirectoryWrapper(std::move(target)), fs_(fs), path_(std::move(path)) {}

  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kDirSync, path_);
    if (s.ok() && fs_->sync_base_) s = FSDirectoryWrapper::Fsync(o, dbg);
    if (s.ok()) fs_->DirSynced(path_);
    return s;
  }
  rocksdb::IOStatus FsyncWithDirOptions(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg,
                                        const rocksdb::DirFsyncOptions& dir_options) override {
    rocksdb::IOStatus s = fs_->Admit(FsOp::kDirSync, path_);
    if (s.ok() && fs_->sync_base_) s = FSDirectoryWrapper::FsyncWithDirOptions(o, dbg, dir_options);
    if (s.ok()) fs_->DirSynced(path_);
    return s;
  }

 private:
  FaultInjectingFs* const fs_;
  const std::string path_;
};

FaultInjectingFs::FaultInjectingFs(std::shared_ptr<rocksdb::FileSystem> base, bool sync_base)
    : FileSystemWrapper(base), sync_base_(sync_base) {
  SHALE_CHECK(base != nullptr, "FaultInjectingFs needs a base file system");
}

FaultInjectingFs::~FaultInjectingFs() = default;

void FaultInjectingFs::FailNth(FsOp op, uint64_t n) {
  SHALE_CHECK(op < FsOp::kCount, "FailNth: bad op");
  SHALE_CHECK(n >= 1, "FailNth: n is 1-based");
  std::lock_guard lock(mu_);
  fail_nth_[static_cast<size_t>(op)] = PendingFault{n};
}

void FaultInjectingFs::FailAllAfter(uint64_t n) {
  std::lock_guard lock(mu_);
  fail_all_after_ = PendingFault{n};
}

void FaultInjectingFs::SetPowerGate(std::function<bool()> gate) {
  std::lock_guard lock(mu_);
  gate_ = std::move(gate);
}

uint64_t FaultInjectingFs::ops(FsOp op) const {
  SHALE_CHECK(op < FsOp::kCount, "ops: bad op");
  std::lock_guard lock(mu_);
  return ops_[static_cast<size_t>(op)];
}

bool FaultInjectingFs::powered_off() const {
  std::lock_guard lock(mu_);
  return powered_off_;
}

uint64_t FaultInjectingFs::unsynced_bytes() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (const auto& [path, st] : files_) n += st.size > st.synced ? st.size - st.synced : 0;
  return n;
}

rocksdb::IOStatus FaultInjectingFs::CheckPower(const std::string& what) const {
  std::lock_guard lock(mu_);
  if (!powered_off_) return rocksdb::IOStatus::OK();
  return rocksdb::IOStatus::IOError("injected metadata fault: power is off", what);
}

rocksdb::IOStatus FaultInjectingFs::Admit(FsOp op, const std::string& what) {
  auto lost = [&] {
    return rocksdb::IOStatus::IOError(
        "injected metadata fault: power is off (" + std::string(FsOpName(op)) + ")", what);
  };
  std::function<bool()> gate;
  {
    std::lock_guard lock(mu_);
    ++ops_[static_cast<size_t>(op)];
    if (powered_off_) return lost();
    gate = gate_;
  }
  // Outside the lock: the gate may cut other devices (which never call back into this one).
  const bool powered = !gate || gate();
  std::lock_guard lock(mu_);
  if (!powered) powered_off_ = true;
  if (powered_off_) return lost();
  if (fail_all_after_) {
    if (fail_all_after_->remaining == 0) {
      powered_off_ = true;
      fail_all_after_.reset();
      return lost();
    }
    --fail_all_after_->remaining;
  }
  auto& nth = fail_nth_[static_cast<size_t>(op)];
  if (nth) {
    if (nth->remaining <= 1) {
      nth.reset();
      return rocksdb::IOStatus::IOError(
          "injected metadata fault: " + std::string(FsOpName(op)) + " failed", what);
    }
    --nth->remaining;
  }
  return rocksdb::IOStatus::OK();
}

void FaultInjectingFs::Opened(const std::string& path, bool existed, bool keep, uint64_t size) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (!keep || it == files_.end()) files_[path] = FileState{size, size};
  // A name already on the medium stays as durable as it was; a new one is not durable until its
  // directory is synced.
  if (!existed) {
    auto [dir, name] = SplitPath(path);
    new_names_[dir].insert(name);
  }
}

void FaultInjectingFs::Appended(const std::string& path, uint64_t bytes) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it != files_.end()) it->second.size += bytes;
}

void FaultInjectingFs::Wrote(const std::string& path, uint64_t end, bool truncate) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return;
  FileState& st = it->second;
  if (truncate) {
    st.size = end;
    if (st.synced > end) st.synced = end;
  } else if (end > st.size) {
    st.size = end;
  }
}

void FaultInjectingFs::Synced(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it != files_.end()) it->second.synced = it->second.size;
}

void FaultInjectingFs::DirSynced(const std::string& dir) {
  std::lock_guard lock(mu_);
  new_names_.erase(dir);
}

void FaultInjectingFs::Removed(const std::string& path) {
  std::lock_guard lock(mu_);
  files_.erase(path);
  auto [dir, name] = SplitPath(path);
  auto it = new_names_.find(dir);
  if (it != new_names_.end()) it->second.erase(name);
}

void FaultInjectingFs::Renamed(const std::string& from, const std::string& to, bool keep_source) {
  std::lock_guard lock(mu_);
  std::optional<FileState> state;
  if (auto it = files_.find(from); it != files_.end()) {
    state = it->second;
    if (!keep_source) files_.erase(it);
  }
  if (state) {
    files_[to] = *state;
  } else {
    files_.erase(to);  // an untracked file took the name: durable as it is
  }
  auto [from_dir, from_name] = SplitPath(from);
  auto [to_dir, to_name] = SplitPath(to);
  bool from_new = false;
  if (auto it = new_names_.find(from_dir); it != new_names_.end()) {
    from_new = it->second.count(from_name) != 0;
    if (!keep_source) it->second.erase(from_name);
  }
  // A link is a new directory entry; a rename keeps the durability of the source's name.
  if (keep_source || from_new) {
    new_names_[to_dir].insert(to_name);
  } else if (auto it = new_names_.find(to_dir); it != new_names_.end()) {
    it->second.erase(to_name);
  }
}

Result<FaultInjectingFs::CutReport> FaultInjectingFs::PowerCut(CutMode mode, uint64_t seed) {
  std::lock_guard lock(mu_);
  CutReport report;
  std::mt19937_64 rng(seed);
  const rocksdb::IOOptions io;
  for (const auto& [dir, names] : new_names_) {
    for (const std::string& name : names) {
      const std::string path = dir + "/" + name;
      files_.erase(path);
      rocksdb::IOStatus s = target()->FileExists(path, io, nullptr);
      if (s.IsNotFound()) continue;  // deleted since, or its directory was moved away
      if (s.ok()) s = target()->DeleteFile(path, io, nullptr);
      if (!s.ok()) return Status::IoError("power cut: delete " + path + ": " + s.ToString());
      ++report.files_deleted;
    }
  }
  for (const auto& [path, st] : files_) {
    uint64_t size = 0;
    rocksdb::IOStatus s = target()->GetFileSize(path, io, &size, nullptr);
    if (s.IsNotFound() || s.IsPathNotFound()) continue;
    if (!s.ok()) return Status::IoError("power cut: size of " + path + ": " + s.ToString());
    if (size <= st.synced) continue;
    uint64_t keep = st.synced;
    if (mode == CutMode::kRandom) keep += rng() % (size - st.synced + 1);
    if (keep == size) continue;
    // truncate(2): RocksDB's posix file system does not implement FileSystem::Truncate.
    if (::truncate(path.c_str(), static_cast<off_t>(keep)) != 0) {
      return Status::FromErrno(errno, "power cut: truncate " + path);
    }
    ++report.files_truncated;
    report.bytes_dropped += size - keep;
  }
  files_.clear();
  new_names_.clear();
  fail_nth_ = {};
  fail_all_after_.reset();
  gate_ = nullptr;
  powered_off_ = false;
  return report;
}

// --- rocksdb::FileSystem ---

rocksdb::IOStatus FaultInjectingFs::NewSequentialFile(const std::string& f,
                                                      const rocksdb::FileOptions& o,
                                                      std::unique_ptr<rocksdb::FSSequentialFile>* r,
                                                      rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus s = CheckPower(f);
  return s.ok() ? target()->NewSequentialFile(f, o, r, dbg) : s;
}

rocksdb::IOStatus FaultInjectingFs::NewRandomAccessFile(
    const std::string& f, const rocksdb::FileOptions& o,
    std::unique_ptr<rocksdb::FSRandomAccessFile>* r, rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus s = CheckPower(f);
  return s.ok() ? target()->NewRandomAccessFile(f, o, r, dbg) : s;
}

rocksdb::IOStatus FaultInjectingFs::NewWritableFile(const std::string& f,
                                                    const rocksdb::FileOptions& o,
                                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                                    rocksdb::IODebugContext* dbg) {
  const std::string path = Normalize(f);
  rocksdb::IOStatus s = Admit(FsOp::kCreate, path);
  if (!s.ok()) return s;
  const bool existed = target()->FileExists(f, rocksdb::IOOptions(), dbg).ok();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  s = target()->NewWritableFile(f, o, &file, dbg);
  if (!s.ok()) return s;
  Opened(path, existed, /*keep=*/false, 0);  // truncated: nothing of it is durable
  *r = std::make_unique<File>(this, path, std::move(file));
  return s;
}

rocksdb::IOStatus FaultInjectingFs::ReopenWritableFile(const std::string& f,
                                                       const rocksdb::FileOptions& o,
                                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                                       rocksdb::IODebugContext* dbg) {
  const std::string path = Normalize(f);
  rocksdb::IOStatus s = Admit(FsOp::kCreate, path);
  if (!s.ok()) return s;
  uint64_t size = 0;
  const bool existed = target()->GetFileSize(f, rocksdb::IOOptions(), &size, dbg).ok();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  s = target()->ReopenWritableFile(f, o, &file, dbg);
  if (!s.ok()) return s;
  Opened(path, existed, /*keep=*/true, existed ? size : 0);
  *r = std::make_unique<File>(this, path, std::move(file));
  return s;
}

rocksdb::IOStatus FaultInjectingFs::ReuseWritableFile(const std::string&, const std::string&,
                                                      const rocksdb::FileOptions&,
                                                      std::unique_ptr<rocksdb::FSWritableFile>*,
                                                      rocksdb::IODebugContext*) {
  return rocksdb::IOStatus::NotSupported("FaultInjectingFs does not model log recycling");
}

rocksdb::IOStatus FaultInjectingFs::NewRandomRWFile(const std::string&, const rocksdb::FileOptions&,
                                                    std::unique_ptr<rocksdb::FSRandomRWFile>*,
                                                    rocksdb::IODebugContext*) {
  return rocksdb::IOStatus::NotSupported("FaultInjectingFs does not model random-RW files");
}

rocksdb::IOStatus FaultInjectingFs::NewDirectory(const std::string& name,
                                                 const rocksdb::IOOptions& o,
                                                 std::unique_ptr<rocksdb::FSDirectory>* r,
                                                 rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus s = CheckPower(name);
  if (!s.ok()) return s;
  std::unique_ptr<rocksdb::FSDirectory> dir;
  s = target()->NewDirectory(name, o, &dir, dbg);
  if (!s.ok()) return s;
  *r = std::make_unique<Directory>(this, Normalize(name), std::move(dir));
  return s;
}

rocksdb::IOStatus FaultInjectingFs::DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                                               rocksdb::IODebugContext* dbg) {
  const std::string path = Normalize(f);
  rocksdb::IOStatus s = Admit(FsOp::kDelete, path);
  if (s.ok()) s = target()->DeleteFile(f, o, dbg);
  if (s.ok()) Removed(path);
  return s;
}

rocksdb::IOStatus FaultInjectingFs::DeleteDir(const std::string& d, const rocksdb::IOOptions& o,
                                              rocksdb::IODebugContext* dbg) {
  const std::string path = Normalize(d);
  rocksdb::IOStatus s = Admit(FsOp::kDelete, path);
  if (s.ok()) s = target()->DeleteDir(d, o, dbg);
  if (s.ok()) {
    std::lock_guard lock(mu_);
    new_names_.erase(path);
  }
  return s;
}

rocksdb::IOStatus FaultInjectingFs::Truncate(const std::string& f, size_t size,
                                             const rocksdb::IOOptions& o,
                                             rocksdb::IODebugContext* dbg) {
  const std::string path = Normalize(f);
  rocksdb::IOStatus s = Admit(FsOp::kWrite, path);
  if (s.ok()) s = target()->Truncate(f, size, o, dbg);
  if (s.ok()) Wrote(path, size, /*truncate=*/true);
  return s;
}

rocksdb::IOStatus FaultInjectingFs::RenameFile(const std::string& s, const std::string& t,
                                               const rocksdb::IOOptions& o,
                                               rocksdb::IODebugContext* dbg) {
  const std::string from = Normalize(s), to = Normalize(t);
  rocksdb::IOStatus st = Admit(FsOp::kRename, from + " -> " + to);
  if (st.ok()) st = target()->RenameFile(s, t, o, dbg);
  if (st.ok()) Renamed(from, to, /*keep_source=*/false);
  return st;
}

rocksdb::IOStatus FaultInjectingFs::LinkFile(const std::string& s, const std::string& t,
                                             const rocksdb::IOOptions& o,
                                             rocksdb::IODebugContext* dbg) {
  const std::string from = Normalize(s), to = Normalize(t);
  rocksdb::IOStatus st = Admit(FsOp::kRename, from + " -> " + to);
  if (st.ok()) st = target()->LinkFile(s, t, o, dbg);
  if (st.ok()) Renamed(from, to, /*keep_source=*/true);
  return st;
}

}  // namespace shale
