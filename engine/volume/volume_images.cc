// Volume: the image side of snapshots and clones — building the merged map of an image chain
// (LoadMap), and the head's image mechanics driven by the Engine (engine_images.cc): freeze,
// merge of the parent into the head, relabel, replace the head (revert), flatten and detach.
#include <algorithm>
#include <bit>
#include <memory>
#include <system_error>
#include <thread>
#include <tuple>

#include "engine/common/block.h"
#include "engine/io/reactor.h"
#include "engine/pool/keys.h"
#include "engine/pool/pool.h"
#include "engine/volume/volume.h"
#include "engine/volume/volume_internal.h"

namespace shale {

using internal::BlockMask;
using internal::kInternal;

namespace {
// Dirty clusters above which a freeze commits first, outside its write pause.
constexpr size_t kFreezePrecommitThreshold = 256;
// Virtual clusters copied per flatten batch (writes are parked while one is copied).
constexpr size_t kFlattenBatchClusters = 32;
}  // namespace

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

// A large map loads in parallel: the virtual clusters are split into ranges, one thread and one
// RocksDB iterator each (after a crash, an open scans every record: docs/performance.md).
constexpr uint64_t kParallelLoadClusters = 1ull << 18;  // 16 GiB of 64 KiB clusters
constexpr unsigned kMaxLoadThreads = 4;

// Loads the mappings of virtual clusters [lo, hi) of every image of `chain` into `map`. The
// range that ends at the volume's end also reads what lies beyond it (an error).
Status LoadMapRange(Pool& pool, const std::vector<uint64_t>& chain, uint64_t vclusters, uint64_t lo,
                    uint64_t hi, ClusterMap* map, uint64_t* owned_out) {
  MapEntry entry;      // reused: decoding allocates nothing per record
  uint64_t owned = 0;  // counted here: the threads' results share a cache line
  // Top (head) first: an image's blocks are visible where no image above it already claimed them.
  for (size_t level = chain.size(); level-- > 0;) {
    const uint64_t image = chain[level];
    const std::string begin = lo == 0 ? keys::MapImagePrefix(image) : keys::Map(image, lo);
    // Image ids are 32-bit: the next image's prefix is this prefix's successor.
    const std::string end =
        hi >= vclusters ? keys::MapImagePrefix(image + 1) : keys::Map(image, hi);
    Status err;
    SHALE_RETURN_IF_ERROR(
        pool.meta().ScanRange(begin, end, [&](std::string_view k, std::string_view v) {
          if (k.size() != 17) {
            err = Status::Corruption("malformed mapping key");
            return false;
          }
          uint64_t vc = keys::DecodeU64At(k, 9);
          Status decoded = MapEntry::DecodeInto(v, &entry);
          if (!decoded.ok()) {
            err = decoded.WithContext("image " + std::to_string(image) + " cluster " +
                                      std::to_string(vc));
            return false;
          }
          if (vc >= vclusters) {
            // Blocks past the logical end (possible after a crash during a shrink, which Shale
            // never does) would be unreachable; treat as corruption.
            err = Status::Corruption("mapping beyond the volume size");
            return false;
          }
          uint64_t covered = 0;
          for (const auto& f : map->Fragments(vc)) covered |= f.blocks;
          for (const auto& sf : entry.fragments) {
            if (sf.pcluster >= pool.cluster_count()) {
              err = Status::Corruption("mapping references cluster " + std::to_string(sf.pcluster) +
                                       " beyond the pool");
              return false;
            }
            Fragment f;
            f.pcluster = sf.pcluster;
            f.image = static_cast<uint32_t>(image);
            f.blocks = sf.blocks & ~covered;
            // The head keeps its fragments even when empty: they hold an allocated cluster.
            if (f.blocks != 0 || level + 1 == chain.size()) map->Add(vc, f);
            if (level + 1 == chain.size()) ++owned;
          }
          uint64_t zeros = entry.zero_blocks & ~covered;
          if (zeros != 0) {
            Fragment z;
            z.pcluster = kZeroCluster;
            z.image = static_cast<uint32_t>(image);
            z.blocks = zeros;
            map->Add(vc, z);
          }
          return true;
        }));
    SHALE_RETURN_IF_ERROR(err);
  }
  *owned_out = owned;
  return Status::Ok();
}

}  // namespace

Result<ClusterMap> Volume::LoadMap(Pool& pool, const std::vector<uint64_t>& chain,
                                   uint64_t size_bytes, uint64_t* owned_clusters) {
  const uint64_t cs = pool.cluster_size();
  const uint64_t vclusters = (size_bytes + cs - 1) / cs;
  ClusterMap map(vclusters);
  const unsigned parts =
      vclusters < kParallelLoadClusters
          ? 1
          : std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, kMaxLoadThreads);
  std::vector<uint64_t> owned(parts, 0);
  if (parts == 1) {
    SHALE_RETURN_IF_ERROR(LoadMapRange(pool, chain, vclusters, 0, vclusters, &map, &owned[0]));
  } else {
    const uint64_t align = ClusterMap::kRangeAlign;
    const uint64_t step = ((vclusters + parts - 1) / parts + align - 1) / align * align;
    std::vector<ClusterMap> maps;
    std::vector<Status> results(parts);
    for (unsigned i = 0; i < parts; ++i) maps.emplace_back(vclusters);
    auto run = [&](unsigned i) {
      const uint64_t lo = std::min(vclusters, i * step);
      const uint64_t hi = i + 1 == parts ? vclusters : std::min(vclusters, lo + step);
      results[i] = LoadMapRange(pool, chain, vclusters, lo, hi, &maps[i], &owned[i]);
    };
    std::vector<std::thread> threads;
    for (unsigned i = 1; i < parts; ++i) {
      try {
        threads.emplace_back(run, i);
      } catch (const std::system_error&) {
        run(i);  // no thread to be had (a limit): this range on this one
      }
    }
    run(0);
    for (auto& t : threads) t.join();
    for (unsigned i = 0; i < parts; ++i) {
      SHALE_RETURN_IF_ERROR(results[i]);
      const uint64_t lo = std::min(vclusters, i * step);
      const uint64_t hi = i + 1 == parts ? vclusters : std::min(vclusters, lo + step);
      map.Adopt(std::move(maps[i]), lo, hi);
    }
  }
  if (owned_clusters) {
    *owned_clusters = 0;
    for (uint64_t n : owned) *owned_clusters += n;
  }
  return map;
}

// ---------------------------------------------------------------------------------------------
// Image mechanics

void Volume::Freeze(uint64_t new_head, MetaBatch records, std::function<void()> cut,
                    std::function<void(const Status&)> durable) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::Freeze misuse");
  SHALE_CHECK(new_head <= UINT32_MAX, "image id too large");
  // Much is dirty: submit it first without waiting for it (the pipeline keeps the freeze's
  // commit after it), so the capture at the cut stays small.
  if (dirty_list_.size() > kFreezePrecommitThreshold) Commit(nullptr);
  if (!write_gate_ && freeze_ == nullptr) {
    return CutFreeze(new_head, std::move(records), std::move(cut), std::move(durable));
  }
  // Another gate is up, or an earlier cut's writes are still in flight: cut once drained.
  auto batch = std::make_shared<MetaBatch>(std::move(records));
  GateWrites([this, new_head, batch, cut = std::move(cut), durable = std::move(durable)]() mutable {
    CutFreeze(new_head, std::move(*batch), nullptr, std::move(durable));
    UngateWrites();
    if (cut) cut();
  });
}

void Volume::CutFreeze(uint64_t new_head, MetaBatch records, std::function<void()> cut,
                       std::function<void(const Status&)> durable) {
  // Writes in flight were admitted before the cut: they finish into the frozen image. Keep its
  // stored entries of the clusters they touch, as they stand now, to complete them later.
  std::unique_ptr<PendingFreeze> pending;
  for (Request* r = live_writes_; r != nullptr; r = r->live_next) {
    if (pending == nullptr) {
      pending = std::make_unique<PendingFreeze>();
      pending->image = head_;
      pending->first_commit = std::make_shared<Status>();
      pending->durable = std::move(durable);
    }
    r->precut = true;
    ++pending->writes;
    for (const Seg& sg : r->segs) {
      if (!pending->entries.contains(sg.v)) pending->entries.emplace(sg.v, StoredEntry(sg.v));
    }
  }
  std::function<void(const Status&)> first_done = std::move(durable);
  if (pending != nullptr) {
    first_done = [first = pending->first_commit](const Status& st) { *first = st; };
  }
  CommitWith(std::move(records), {}, {}, std::move(first_done));
  chain_.push_back(new_head);
  head_ = static_cast<uint32_t>(new_head);
  owned_clusters_.store(0, std::memory_order_relaxed);
  counters_.last_write_pause_ns.store(0, std::memory_order_relaxed);
  freeze_ = std::move(pending);
  if (cut) cut();
}

void Volume::FinishPrecutSeg(const Seg& s, Fragment* f) {
  // The frozen image's stored entry: the written blocks now live in this fragment only.
  MapEntry& e = freeze_->entries[s.v];
  bool found = false;
  for (StoredFragment& sf : e.fragments) {
    if (sf.pcluster == s.pcluster) {
      sf.blocks |= s.blocks;
      found = true;
    } else {
      sf.blocks &= ~s.blocks;
    }
  }
  if (!found) e.fragments.push_back(StoredFragment{s.pcluster, s.blocks});
  e.zero_blocks &= ~s.blocks;
  // The view: blocks the head has written or zeroed since the cut stay the head's.
  uint64_t covered = 0;
  for (const Fragment& g : map_.Fragments(s.v)) {
    if (g.image == head_) covered |= g.blocks;
  }
  const uint64_t shown = s.blocks & ~covered;
  f->blocks |= shown;
  for (Fragment& g : map_.Fragments(s.v)) {
    if (&g != f && g.image != head_) g.blocks &= ~shown;
  }
  ReapEmpty(s.v);
}

void Volume::FinishedPrecutWrite() {
  SHALE_CHECK(freeze_ != nullptr && freeze_->writes > 0, "precut write without a freeze");
  if (--freeze_->writes != 0) return;
  std::unique_ptr<PendingFreeze> p = std::move(freeze_);
  MetaBatch batch;
  for (const auto& [v, e] : p->entries) {
    if (e.empty()) {
      batch.Delete(keys::Map(p->image, v));
    } else {
      batch.Put(keys::Map(p->image, v), e.Encode());
    }
  }
  CommitWith(std::move(batch), {}, {},
             [first = p->first_commit, durable = std::move(p->durable)](const Status& st) {
               if (durable) durable(first->ok() ? st : *first);
             });
  for (VolumeIo* io : p->flushes) FlushAfter(io, Status::Ok());
}

bool Volume::ParkFlushBehindFreeze(VolumeIo* io) {
  if (freeze_ == nullptr) return false;
  freeze_->flushes.push_back(io);
  return true;
}

void Volume::Quiesce(std::function<void()> drained) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::Quiesce misuse");
  // Reads and flushes park too: a flush answered between the capture and the submission of
  // the group's commit would claim durability for mappings that commit has not written yet.
  GateWrites(std::move(drained), /*all_io=*/true);
}

CommitPipeline::Request Volume::CaptureFreeze(uint64_t new_head,
                                              std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && write_gate_ && gate_all_, "Volume::CaptureFreeze misuse");
  SHALE_CHECK(new_head <= UINT32_MAX, "image id too large");
  CommitPipeline::Request req = PrepareCommit(MetaBatch(), {}, {}, std::move(done));
  chain_.push_back(new_head);
  head_ = static_cast<uint32_t>(new_head);
  owned_clusters_.store(0, std::memory_order_relaxed);
  return req;
}

void Volume::Resume() {
  SHALE_CHECK(reactor_->IsCurrent() && write_gate_, "Volume::Resume misuse");
  UngateWrites();
}

void Volume::MergeParentIntoHead(uint64_t from,
                                 std::vector<std::pair<uint64_t, MapEntry>> from_entries,
                                 MetaBatch records, std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::MergeParentIntoHead misuse");
  if (!(chain_.size() >= 2 && chain_[chain_.size() - 2] == from)) {
    std::string c;
    for (uint64_t id : chain_) c += std::to_string(id) + " ";
    SHALE_CHECK(false, "merge of image ", from, " that is not the head's parent; chain: ", c);
  }
  const uint32_t src = static_cast<uint32_t>(from);
  // From now on the parent's fragments belong to the head's stored entries (so any commit
  // keeps them) but are not write targets until the merge is durable.
  merging_from_ = src;
  std::vector<uint32_t> freed;
  auto touched = std::make_shared<std::vector<uint64_t>>();
  for (const auto& [v, entry] : from_entries) {
    bool shows = false;
    for (const StoredFragment& sf : entry.fragments) {
      if (v < map_.size() && FindFragment(v, sf.pcluster) != nullptr) {
        shows = true;
      } else {
        freed.push_back(sf.pcluster);  // hidden by the head everywhere: nothing shows it any more
      }
    }
    if (v < map_.size()) {
      for (const Fragment& f : map_.Fragments(v)) shows = shows || f.image == src;
    }
    if (shows) {
      touched->push_back(v);
      MarkDirty(v);
    }
  }
  CommitWith(std::move(records), std::move(freed), {},
             [this, src, touched, done = std::move(done)](const Status& st) {
               if (st.ok()) {
                 uint64_t gained = 0;
                 for (uint64_t v : *touched) {
                   for (Fragment& f : map_.Fragments(v)) {
                     if (f.image != src) continue;
                     f.image = head_;
                     if (!f.is_zero()) ++gained;
                   }
                 }
                 owned_clusters_.fetch_add(gained, std::memory_order_relaxed);
                 std::erase(chain_, static_cast<uint64_t>(src));
               }
               merging_from_ = 0;
               done(st);
             });
}

void Volume::RelabelImage(uint64_t from, uint64_t to, const std::vector<uint64_t>& vclusters) {
  SHALE_CHECK(reactor_->IsCurrent(), "Volume::RelabelImage off the reactor");
  SHALE_CHECK(to != head_ || options_.view_only, "use MergeParentIntoHead to merge into the head");
  const uint32_t f32 = static_cast<uint32_t>(from), t32 = static_cast<uint32_t>(to);
  for (uint64_t v : vclusters) {
    if (v >= map_.size()) continue;
    for (Fragment& f : map_.Fragments(v)) {
      if (f.image == f32) f.image = t32;
    }
  }
  std::erase(chain_, from);
}

void Volume::ReplaceHead(std::vector<uint64_t> chain, ClusterMap map, uint64_t new_size,
                         MetaBatch records, std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::ReplaceHead misuse");
  SHALE_CHECK(chain.back() <= UINT32_MAX, "image id too large");
  auto state = std::make_shared<std::tuple<std::vector<uint64_t>, ClusterMap, MetaBatch>>(
      std::move(chain), std::move(map), std::move(records));
  GateWrites(
      [this, state, new_size, done = std::move(done)]() mutable {
        // No I/O references the old map now. Everything the old head owned is freed (clusters
        // allocated since the last commit are in allocated_ too: set then cleared). The old
        // head's dirty mappings are dropped: its entries are deleted by `records`.
        std::vector<uint32_t> freed = OwnedClusters();
        for (uint64_t v : dirty_list_) dirty_bits_[v >> 6] &= ~(1ull << (v & 63));
        dirty_list_.clear();
        auto& batch = std::get<2>(*state);
        // I/O stays parked until the new head is durable, so a failed revert changes nothing.
        CommitWith(std::move(batch), std::move(freed), {},
                   [this, state, new_size, done = std::move(done)](const Status& st) {
                     if (st.ok()) {
                       auto& [new_chain, new_map, unused] = *state;
                       chain_ = std::move(new_chain);
                       head_ = static_cast<uint32_t>(chain_.back());
                       map_ = std::move(new_map);
                       map_.Grow((new_size + cluster_size_ - 1) / cluster_size_);
                       size_bytes_.store(new_size, std::memory_order_release);
                       dirty_bits_.assign((map_.size() + 63) / 64, 0);
                       owned_clusters_.store(0, std::memory_order_relaxed);
                     }
                     UngateWrites();
                     done(st);
                   });
      },
      /*all_io=*/true);
}

struct Volume::FlattenJob {
  std::vector<uint64_t> to_copy;  // virtual clusters that read blocks through parents
  size_t next = 0;
  std::function<void(uint64_t, uint64_t)> progress;
  std::function<void(const Status&)> done;
  BackgroundAdmission* admission = nullptr;  // null: batches run unpaced
  BackgroundAdmission::Done admitted;        // the running batch's admission, until it ends
  // The batch being copied: one read then one write per run of parent blocks.
  struct Copy {
    uint64_t offset = 0, length = 0;
    AlignedBuffer buf;
    VolumeIo io;
    FlattenJob* job = nullptr;
  };
  std::vector<std::unique_ptr<Copy>> copies;
  size_t pending = 0;
  bool writing = false;
  Status status;
  Volume* vol = nullptr;
  std::shared_ptr<FlattenJob> self;  // kept alive while I/O is in flight
};

void Volume::Flatten(std::function<void(uint64_t, uint64_t)> progress,
                     std::function<void(const Status&)> done, BackgroundAdmission* admission) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::Flatten misuse");
  auto job = std::make_shared<FlattenJob>();
  job->vol = this;
  job->admission = admission;
  job->progress = std::move(progress);
  job->done = std::move(done);
  map_.ForEach([&](uint64_t v, std::span<const Fragment> frags) {
    for (const Fragment& f : frags) {
      if (f.image != head_ && !f.is_zero() && f.blocks != 0) {
        job->to_copy.push_back(v);
        return;
      }
    }
  });
  FlattenNextBatch(job);
}

void Volume::FlattenNextBatch(std::shared_ptr<FlattenJob> job) {
  if (job->progress) job->progress(job->next, job->to_copy.size());
  if (!job->status.ok() || job->next >= job->to_copy.size()) {
    if (!job->status.ok()) return job->done(job->status);
    // Make the copies durable before the caller detaches the volume from its parents.
    return Commit([job](const Status& st) { job->done(st); });
  }
  if (job->admission == nullptr) return FlattenCopyBatch(std::move(job));
  // Admission first, the write gate after it: client writes are never parked while the batch
  // waits for its turn (which may take long on a busy pool).
  const uint64_t bytes = FlattenBatchBytes(*job);
  job->admission->Admit(bytes, [this, job](BackgroundAdmission::Done admitted) {
    job->admitted = std::move(admitted);
    FlattenCopyBatch(job);
  });
}

uint64_t Volume::FlattenBatchBytes(const FlattenJob& job) const {
  uint64_t blocks = 0;
  const size_t end = std::min(job.next + kFlattenBatchClusters, job.to_copy.size());
  for (size_t i = job.next; i < end; ++i) {
    uint64_t parent_blocks = 0;
    for (const Fragment& f : map_.Fragments(job.to_copy[i])) {
      if (f.image != head_ && !f.is_zero()) parent_blocks |= f.blocks;
    }
    blocks += static_cast<uint64_t>(std::popcount(parent_blocks));
  }
  return blocks << kBlockShift;
}

void Volume::FlattenBatchEnded(std::shared_ptr<FlattenJob> job) {
  UngateWrites();
  if (job->admitted) {
    BackgroundAdmission::Done admitted = std::move(job->admitted);
    job->admitted = nullptr;
    admitted();
  }
  reactor_->Defer([this, job = std::move(job)] { FlattenNextBatch(job); });
}

void Volume::FlattenCopyBatch(std::shared_ptr<FlattenJob> job) {
  GateWrites([this, job]() {
    // No client write is in flight: copy up to 32 clusters' parent blocks.
    job->copies.clear();
    const size_t end = std::min(job->next + kFlattenBatchClusters, job->to_copy.size());
    for (; job->next < end; ++job->next) {
      const uint64_t v = job->to_copy[job->next];
      uint64_t parent_blocks = 0;
      for (const Fragment& f : map_.Fragments(v)) {
        if (f.image != head_ && !f.is_zero()) parent_blocks |= f.blocks;
      }
      while (parent_blocks != 0) {
        const uint32_t first = static_cast<uint32_t>(std::countr_zero(parent_blocks));
        const uint32_t run = static_cast<uint32_t>(std::countr_one(parent_blocks >> first));
        auto c = std::make_unique<FlattenJob::Copy>();
        c->offset = (v << cluster_shift_) + (static_cast<uint64_t>(first) << kBlockShift);
        c->length =
            std::min<uint64_t>(static_cast<uint64_t>(run) << kBlockShift, size_bytes() - c->offset);
        c->buf = AllocateAligned(c->length);
        c->job = job.get();
        job->copies.push_back(std::move(c));
        parent_blocks &= ~BlockMask(first, run);
      }
    }
    job->writing = false;
    job->self = job;
    auto issue = [this](FlattenJob* j, VolumeOp op) {
      j->pending = j->copies.size();
      for (auto& c : j->copies) {
        c->io = VolumeIo{};
        c->io.op = op;
        c->io.offset = c->offset;
        c->io.length = c->length;
        c->io.buf = c->buf.get();
        c->io.flags = kInternal;
        c->io.io_class = IoClass::kBackground;
        c->io.ctx = c.get();
        c->io.done = [](VolumeIo* io) {
          auto* copy = static_cast<FlattenJob::Copy*>(io->ctx);
          FlattenJob* jb = copy->job;
          if (!io->status.ok() && jb->status.ok()) jb->status = io->status;
          if (--jb->pending != 0) return;
          Volume* self_vol = jb->vol;
          if (!jb->writing && jb->status.ok()) {
            jb->writing = true;  // all parent blocks read: write them into our own clusters
            jb->pending = jb->copies.size();
            for (auto& cc : jb->copies) {
              cc->io.op = VolumeOp::kWrite;
              cc->io.status = Status::Ok();
              self_vol->Submit(&cc->io);
            }
            return;
          }
          self_vol->FlattenBatchEnded(std::move(jb->self));
        };
        Submit(&c->io);
      }
    };
    if (job->copies.empty()) {
      FlattenBatchEnded(std::move(job->self));
      return;
    }
    issue(job.get(), VolumeOp::kRead);
  });
}

void Volume::DetachFromParents(MetaBatch records, std::function<void(const Status&)> done) {
  SHALE_CHECK(reactor_->IsCurrent() && !options_.view_only, "Volume::DetachFromParents misuse");
  // Zero marks mean nothing without parents: store the head's entries without them, in the same
  // commit as `records`. Memory changes only once that commit is durable, so a failed detach
  // leaves the volume exactly as it was.
  auto touched = std::make_shared<std::vector<uint64_t>>();
  map_.ForEach([&](uint64_t v, std::span<const Fragment> frags) {
    for (const Fragment& f : frags) {
      if (f.is_zero() || f.image != head_) {
        touched->push_back(v);
        return;
      }
    }
  });
  for (uint64_t v : *touched) {
    MapEntry e = StoredEntry(v);
    e.zero_blocks = 0;
    if (e.empty()) {
      records.Delete(keys::Map(head_, v));
    } else {
      records.Put(keys::Map(head_, v), e.Encode());
    }
  }
  CommitWith(std::move(records), {}, {}, [this, touched, done = std::move(done)](const Status& st) {
    if (st.ok()) {
      for (uint64_t v : *touched) {
        // Parents' data is all hidden after Flatten; empty leftovers with I/O in flight are
        // reaped when it completes.
        map_.RemoveIf(v, [&](const Fragment& f) {
          return f.is_zero() ||
                 (f.image != head_ && f.blocks == 0 && inflight_.Get(f.pcluster) == 0);
        });
      }
      chain_ = {chain_.back()};
    }
    done(st);
  });
}

}  // namespace shale
