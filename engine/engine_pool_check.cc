// Engine::CheckPool: the pool consistency check (`shale pool check`). It reads only committed
// metadata (after committing every volume of the pool) and reports; it never repairs.
#include <algorithm>
#include <future>
#include <map>
#include <set>
#include <string>

#include "engine/engine_internal.h"
#include "engine/pool/keys.h"

namespace shale {

namespace {

// Progress of one check: units of work (mapping fragments, then clusters of the bitmap) against
// an estimate of their total; reports and polls for cancellation every kStep units.
class CheckProgress {
 public:
  static constexpr uint64_t kStep = 4096;
  CheckProgress(const PoolCheckOptions& options, uint64_t total)
      : options_(options), total_(total) {}
  // False once the caller asked to stop.
  bool Step(uint64_t units) {
    done_ += units;
    pending_ += units;
    if (pending_ < kStep) return true;
    pending_ = 0;
    Report();
    return !(options_.cancelled && options_.cancelled());
  }
  void Report() {
    total_ = std::max(total_, done_);
    if (options_.progress) options_.progress(done_, total_);
  }
  void Finish() {
    total_ = done_;
    Report();
  }

 private:
  const PoolCheckOptions& options_;
  uint64_t total_;
  uint64_t done_ = 0;
  uint64_t pending_ = 0;
};

Status Cancelled(Pool& pool) {
  return Status::Aborted("check of pool '" + pool.name() + "' cancelled (nothing was changed)");
}

// Every stored mapping: of an existing image, decodable, inside the pool, and no cluster owned
// twice. Fills `owner` (cluster -> "image I cluster V").
Status CheckMappings(Pool& pool, std::map<uint32_t, std::string>* owner, PoolCheckReport* report,
                     CheckProgress* progress) {
  std::set<uint64_t> images;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::ImagePrefix(), [&](std::string_view k, std::string_view) {
        images.insert(keys::DecodeU64At(k, 1));
        return true;
      }));
  bool stopped = false;
  Status scan = pool.meta().Scan(keys::MapPrefix(), [&](std::string_view k, std::string_view v) {
    uint64_t image = keys::DecodeU64At(k, 1), vc = keys::DecodeU64At(k, 9);
    std::string where = "image " + std::to_string(image) + " cluster " + std::to_string(vc);
    if (!images.count(image)) report->problems.push_back(where + ": mapping of a missing image");
    auto e = MapEntry::Decode(v);
    if (!e.ok()) {
      report->problems.push_back(where + ": " + e.status().ToString());
      return true;
    }
    for (const auto& f : e->fragments) {
      if (f.pcluster >= pool.cluster_count()) {
        report->problems.push_back(where + ": references cluster " + std::to_string(f.pcluster) +
                                   " beyond the pool");
        continue;
      }
      auto [pos, inserted] = owner->emplace(f.pcluster, where);
      if (!inserted) {
        report->problems.push_back("cluster " + std::to_string(f.pcluster) + " owned twice: by " +
                                   pos->second + " and by " + where);
      }
    }
    stopped = !progress->Step(std::max<size_t>(1, e->fragments.size()));
    return !stopped;
  });
  if (scan.ok() && stopped) return Cancelled(pool);
  return scan;
}

// The image tree: parents exist and are frozen, every head belongs to one volume, a deleted
// image is kept only while at least two children read through it, chains stay in bounds.
Status CheckImageTree(Pool& pool, PoolCheckReport* report) {
  std::map<uint64_t, meta::ImageRecord> stored_images;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::ImagePrefix(), [&](std::string_view, std::string_view v) {
        meta::ImageRecord rec;
        if (rec.ParseFromArray(v.data(), static_cast<int>(v.size()))) stored_images[rec.id()] = rec;
        return true;
      }));
  std::map<uint64_t, std::string> head_of;
  SHALE_RETURN_IF_ERROR(
      pool.meta().Scan(keys::VolumePrefix(), [&](std::string_view, std::string_view v) {
        meta::VolumeRecord rec;
        if (rec.ParseFromArray(v.data(), static_cast<int>(v.size())))
          head_of[rec.head_image()] = rec.name();
        return true;
      }));
  for (const auto& [id, rec] : stored_images) {
    const std::string who = "image " + std::to_string(id);
    if (rec.parent() != 0) {
      auto p = stored_images.find(rec.parent());
      if (p == stored_images.end()) {
        report->problems.push_back(who + ": parent " + std::to_string(rec.parent()) +
                                   " is missing");
      } else if (p->second.kind() != meta::IMAGE_FROZEN) {
        report->problems.push_back(who + ": parent " + std::to_string(rec.parent()) +
                                   " is not frozen");
      }
    }
    if (rec.kind() == meta::IMAGE_HEAD && !head_of.count(id)) {
      report->problems.push_back(who + ": a head image that no volume uses (leak)");
    }
    size_t depth = 0;
    for (uint64_t cur = id; cur != 0 && depth <= Volume::kMaxChainDepth; ++depth) {
      auto c = stored_images.find(cur);
      cur = c == stored_images.end() ? 0 : c->second.parent();
    }
    if (depth > Volume::kMaxChainDepth)
      report->problems.push_back(who + ": chain too long or cyclic");
    if (rec.deleted()) {
      size_t children = 0;
      for (const auto& [cid, crec] : stored_images) children += crec.parent() == id;
      if (children < 2) {
        report->problems.push_back(who + ": deleted with " + std::to_string(children) +
                                   " children but not collected");
      }
    }
  }
  for (const auto& [head, vol_name] : head_of) {
    auto h = stored_images.find(head);
    if (h == stored_images.end() || h->second.kind() != meta::IMAGE_HEAD) {
      report->problems.push_back("volume '" + vol_name + "': head image " + std::to_string(head) +
                                 " missing or not a head");
    }
  }
  return Status::Ok();
}

// The committed allocation bitmap against the referenced clusters: every referenced cluster is
// allocated, no allocated cluster is unreferenced (reports at most ~1000 leaks).
Status CheckBitmap(Pool& pool, const std::map<uint32_t, std::string>& owner,
                   PoolCheckReport* report, CheckProgress* progress) {
  ClusterBitmap committed = pool.pipeline().committed_bitmap();
  report->referenced_clusters = owner.size();
  report->committed_clusters = committed.Count();
  for (const auto& [c, where] : owner) {
    if (!committed.Test(c))
      report->problems.push_back("cluster " + std::to_string(c) + " used by " + where +
                                 " is marked free");
  }
  for (uint64_t c = 0; c < pool.cluster_count(); ++c) {
    if (c % CheckProgress::kStep == 0 && c != 0 && !progress->Step(CheckProgress::kStep)) {
      return Cancelled(pool);
    }
    if (committed.Test(c) && !owner.count(static_cast<uint32_t>(c))) {
      report->problems.push_back("cluster " + std::to_string(c) +
                                 " is allocated but unreferenced (leak)");
      if (report->problems.size() > 1000) break;
    }
  }
  // The clusters after the last full step (all of them in a pool under kStep clusters).
  progress->Step(pool.cluster_count() % CheckProgress::kStep);
  return Status::Ok();
}

}  // namespace

Result<PoolCheckReport> Engine::CheckPool(std::string_view name, const PoolCheckOptions& options) {
  std::lock_guard lock(mu_);
  auto it = pools_.find(name);
  if (it == pools_.end()) return Status::NotFound("pool '" + std::string(name) + "' not found");
  PoolSlot* slot = it->second.get();
  if (!slot->pool)
    return Status::FailedPrecondition("pool '" + std::string(name) +
                                      "' is offline: " + slot->error);
  Pool& pool = *slot->pool;
  // Make every volume's in-memory mapping durable so the stored state is complete.
  for (auto& [n, vs] : volumes_) {
    if (vs->pool != slot) continue;
    std::promise<Status> done;
    Volume* v = vs->volume.get();
    v->reactor()->Post([&] { v->Commit([&](const Status& s) { done.set_value(s); }); });
    SHALE_RETURN_IF_ERROR(done.get_future().get().WithContext("commit volume '" + n + "'"));
  }
  PoolCheckReport report;
  std::map<uint32_t, std::string> owner;
  // Mapping fragments are about the clusters in use; the bitmap pass walks every cluster.
  CheckProgress progress(options,
                         pool.pipeline().committed_bitmap().Count() + pool.cluster_count());
  progress.Report();
  SHALE_RETURN_IF_ERROR(CheckMappings(pool, &owner, &report, &progress));
  SHALE_RETURN_IF_ERROR(CheckImageTree(pool, &report));
  SHALE_RETURN_IF_ERROR(CheckBitmap(pool, owner, &report, &progress));
  progress.Finish();
  return report;
}

}  // namespace shale
