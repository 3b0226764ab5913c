// Pieces shared by the BackupManager's files (backup_manager.cc, backup_create.cc,
// backup_restore.cc, backup_gc.cc). Not part of the interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "backup/backup_manager.h"

namespace shale::backup {

struct BackupManager::Session {
  Target target;  // endpoint defaults applied
  std::unique_ptr<S3Client> s3;
  const Location& loc() const { return target.location; }
};

namespace internal {

inline uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// Calls `progress` (if any); Aborted when it asks to stop or the manager is stopping.
Status Report(const ProgressFn& progress, const Progress& p, const std::atomic<bool>& stopping);

}  // namespace internal
}  // namespace shale::backup
