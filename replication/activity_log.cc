#include "replication/activity_log.h"

#include <algorithm>
#include <cstdio>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"

namespace shale::replication {
namespace {

constexpr char kLogNode[] = "log";

std::string MarkerKey(uint64_t volume_id) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(volume_id));
  return keys::Extension("replication", std::string(hex) + "/al-kept");
}

}  // namespace

ActivityLog::ActivityLog(std::unique_ptr<ChangedRegions> regions, uint64_t max_regions)
    : regions_(std::move(regions)), max_regions_(max_regions) {}

ActivityLog::~ActivityLog() = default;

Result<std::unique_ptr<ActivityLog>> ActivityLog::Load(Engine* engine, const std::string& pool,
                                                       uint64_t volume_id, uint64_t size_bytes,
                                                       Reactor* reactor,
                                                       ChangedRegions::CommitFn commit,
                                                       uint64_t max_regions) {
  SHALE_ASSIGN_OR_RETURN(std::unique_ptr<ChangedRegions> regions,
                         ChangedRegions::Load(engine, pool, volume_id, size_bytes, reactor,
                                              std::move(commit), "activity"));
  std::unique_ptr<ActivityLog> log(
      new ActivityLog(std::move(regions), std::max<uint64_t>(max_regions, 1)));
  for (const auto& [off, len] : log->regions_->Ranges(kLogNode)) {
    for (uint64_t r = off / kRegionBytes; r * kRegionBytes < off + len; ++r) log->logged_[r];
  }
  SHALE_ASSIGN_OR_RETURN(std::optional<std::string> marker,
                         engine->GetRecord(pool, MarkerKey(volume_id)));
  log->kept_before_ = marker.has_value();
  if (!log->kept_before_) {
    MetaBatch batch;
    batch.Put(MarkerKey(volume_id), "1");
    SHALE_RETURN_IF_ERROR(engine->WriteRecords(pool, std::move(batch)));
  }
  return log;
}

bool ActivityLog::Covered(uint64_t offset, uint64_t length) const {
  return regions_->Covered(kLogNode, offset, length);
}

bool ActivityLog::HasRoom(uint64_t offset, uint64_t length) const {
  if (length == 0) return true;
  uint64_t added = 0;
  for (uint64_t r = offset / kRegionBytes; r <= (offset + length - 1) / kRegionBytes; ++r) {
    added += logged_.contains(r) ? 0 : 1;
  }
  // A single request larger than the bound still goes (alone): it cannot wait for room.
  return added == 0 || logged_.size() + added <= max_regions_ || logged_.empty();
}

void ActivityLog::Add(uint64_t offset, uint64_t length, std::function<void(Status)> done) {
  const uint64_t first = offset / kRegionBytes;
  const uint64_t last = length == 0 ? first : (offset + length - 1) / kRegionBytes;
  // Counted as in flight until the entry is durable: no flush frees a region being added.
  for (uint64_t r = first; r <= last; ++r) {
    Region& region = logged_[r];
    ++region.in_flight;
    region.last_event = ++seq_;
  }
  regions_->Mark({kLogNode}, offset, length,
                 [this, first, last, done = std::move(done)](Status st) {
                   for (uint64_t r = first; r <= last; ++r) {
                     auto it = logged_.find(r);
                     if (it != logged_.end() && it->second.in_flight > 0) --it->second.in_flight;
                   }
                   done(st);
                 });
}

void ActivityLog::WriteStarted(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  for (uint64_t r = offset / kRegionBytes; r <= (offset + length - 1) / kRegionBytes; ++r) {
    Region& region = logged_[r];
    ++region.in_flight;
    region.last_event = ++seq_;
  }
}

void ActivityLog::WriteDone(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  for (uint64_t r = offset / kRegionBytes; r <= (offset + length - 1) / kRegionBytes; ++r) {
    auto it = logged_.find(r);
    if (it == logged_.end()) continue;
    if (it->second.in_flight > 0) --it->second.in_flight;
    it->second.last_event = ++seq_;
  }
}

uint64_t ActivityLog::FlushStarted() { return ++seq_; }

void ActivityLog::FlushDone(uint64_t token) {
  uint64_t freed = 0;
  for (auto it = logged_.begin(); it != logged_.end();) {
    if (it->second.in_flight == 0 && it->second.last_event < token) {
      regions_->Clear(kLogNode, it->first);
      it = logged_.erase(it);
      ++freed;
    } else {
      ++it;
    }
  }
  if (freed == 0) return;
  freed_ += freed;
  PersistFrees();
}

void ActivityLog::PersistFrees() {
  if (persisting_) {
    persist_again_ = true;
    return;
  }
  persisting_ = true;
  regions_->Persist([this](Status st) {
    persisting_ = false;
    if (!st.ok()) {
      SHALE_LOG_WARN("replication: activity log update failed", {"error", st.ToString()});
      return;
    }
    if (persist_again_) {
      persist_again_ = false;
      PersistFrees();
    }
  });
}

std::vector<std::pair<uint64_t, uint64_t>> ActivityLog::Ranges() const {
  return regions_->Ranges(kLogNode);  // the same regions as logged_
}

uint64_t ActivityLog::RegionCount() const { return logged_.size(); }

void ActivityLog::Reset(std::function<void(Status)> done) {
  for (const auto& [r, state] : logged_) regions_->Clear(kLogNode, r);
  logged_.clear();
  ++resets_;
  regions_->Persist([this, done = std::move(done)](Status st) {
    --resets_;
    done(st);
  });
}

}  // namespace shale::replication
