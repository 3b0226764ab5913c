#include "engine/pool/commit_pipeline.h"

#include <pthread.h>

#include <algorithm>
#include <future>
#include <set>

#include "engine/common/log.h"
#include "engine/pool/keys.h"

namespace shale {

CommitPipeline::CommitPipeline(std::string pool_name, BlockDevice* device, MetadataStore* meta,
                               ClusterAllocator* allocator, ClusterBitmap committed,
                               uint32_t cluster_size, uint64_t data_offset, bool discard_freed)
    : pool_name_(std::move(pool_name)),
      device_(device),
      meta_(meta),
      allocator_(allocator),
      cluster_size_(cluster_size),
      data_offset_(data_offset),
      discard_freed_(discard_freed),
      committed_(std::move(committed)) {
  thread_ = std::thread([this] { ThreadMain(); });
}

CommitPipeline::~CommitPipeline() { Stop(); }

void CommitPipeline::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CommitPipeline::Submit(Request request) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(request));
      cv_.notify_one();
      return;
    }
  }
  if (request.done) request.done(Status::Unavailable("pool " + pool_name_ + " is closing"));
}

Status CommitPipeline::CommitSync(Request request) {
  std::promise<Status> result;
  auto fut = result.get_future();
  auto user_done = std::move(request.done);
  request.done = [&result, user_done = std::move(user_done)](const Status& s) {
    if (user_done) user_done(s);
    result.set_value(s);
  };
  Submit(std::move(request));
  return fut.get();
}

Status CommitPipeline::failure() const {
  std::lock_guard lock(mu_);
  return failure_;
}

CommitPipeline::Stats CommitPipeline::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void CommitPipeline::SetBeforeMetadataWriteHook(std::function<void()> hook) {
  std::lock_guard lock(mu_);
  before_metadata_write_ = std::move(hook);
}

void CommitPipeline::GrowBitmap(uint64_t cluster_count) {
  std::lock_guard lock(mu_);
  committed_.Grow(cluster_count);
}

ClusterBitmap CommitPipeline::committed_bitmap() const {
  std::lock_guard lock(mu_);
  return committed_;
}

void CommitPipeline::ThreadMain() {
  std::string tname = ("commit-" + pool_name_).substr(0, 15);
  pthread_setname_np(pthread_self(), tname.c_str());
  while (true) {
    std::vector<Request> round;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() && stopping_) return;
      while (!queue_.empty()) {
        round.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    Status failed = failure();
    std::vector<uint32_t> to_release;
    Status st = failed.ok() ? RunRound(round, &to_release) : failed;
    if (!st.ok() && failed.ok()) {
      SHALE_LOG_ERROR(
          "metadata commit failed; the pool is in error: its volumes refuse writes and flushes "
          "until shaled restarts and reopens it from its durable state",
          {"pool", pool_name_}, {"error", st.ToString()}, {"requests", round.size()});
      std::lock_guard lock(mu_);
      failure_ = st;
      failed_.store(true, std::memory_order_release);
    }
    if (st.ok() && !to_release.empty()) {
      if (discard_freed_) DiscardClusters(to_release);
      allocator_->Release(to_release);
    }
    for (auto& r : round) {
      if (r.done) r.done(st);
    }
  }
}

Status CommitPipeline::RunRound(std::vector<Request>& round, std::vector<uint32_t>* to_release) {
  bool flush = false;
  MetaBatch merged;
  std::set<uint64_t> dirty_chunks;
  std::unique_lock lock(mu_);
  // Updated in place: if this round fails the pipeline is failed for good, and a reopen reloads
  // the bitmap from the metadata store.
  for (auto& r : round) {
    flush |= r.flush_device;
    if (!r.batch.empty()) merged.Append(r.batch);
    // Allocations before frees: a cluster allocated and freed again within the round ends free.
    for (uint32_t c : r.allocated) {
      committed_.Set(c);
      dirty_chunks.insert(c / keys::kClustersPerBitmapChunk);
    }
    for (uint32_t c : r.freed) {
      committed_.Clear(c);
      dirty_chunks.insert(c / keys::kClustersPerBitmapChunk);
      to_release->push_back(c);
    }
  }
  for (uint64_t chunk : dirty_chunks) {
    merged.Put(keys::Bitmap(chunk), committed_.EncodeChunk(chunk, keys::kClustersPerBitmapChunk));
  }
  std::function<void()> hook = before_metadata_write_;
  lock.unlock();
  if (flush) {
    SHALE_RETURN_IF_ERROR(
        device_->FlushSync().WithContext("pool " + pool_name_ + ": device flush"));
  }
  if (hook) hook();
  if (!merged.empty()) {
    SHALE_RETURN_IF_ERROR(meta_->Write(merged).WithContext("pool " + pool_name_));
  }
  lock.lock();
  stats_.rounds++;
  stats_.requests += round.size();
  if (flush) stats_.device_flushes++;
  if (!merged.empty()) {
    stats_.metadata_writes++;
    stats_.metadata_bytes += merged.data_bytes();
  }
  return Status::Ok();
}

void CommitPipeline::DiscardClusters(std::vector<uint32_t> clusters) {
  // Best effort: give the space back to a sparse file / thin device. Runs of adjacent clusters
  // become one discard. Never required for correctness (freed data is never read: mappings
  // decide what is visible), so errors are only logged.
  std::sort(clusters.begin(), clusters.end());
  size_t i = 0;
  while (i < clusters.size()) {
    size_t j = i + 1;
    while (j < clusters.size() && clusters[j] == clusters[j - 1] + 1) ++j;
    uint64_t off = data_offset_ + static_cast<uint64_t>(clusters[i]) * cluster_size_;
    uint64_t len = static_cast<uint64_t>(j - i) * cluster_size_;
    Status s = device_->DiscardSync(off, len);
    if (!s.ok()) {
      SHALE_LOG_WARN("discard of freed clusters failed", {"pool", pool_name_},
                     {"error", s.ToString()});
    }
    i = j;
  }
}

}  // namespace shale
