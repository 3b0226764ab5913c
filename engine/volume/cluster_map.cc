#include "engine/volume/cluster_map.h"

#include "engine/common/assert.h"

namespace shale {

ClusterMap::ClusterMap(uint64_t vclusters) { Grow(vclusters); }

void ClusterMap::Grow(uint64_t vclusters) {
  if (vclusters <= vclusters_) return;
  vclusters_ = vclusters;
  pages_.resize((vclusters + kPageSlots - 1) >> kPageShift);
}

Fragment* ClusterMap::SlotFor(uint64_t v, bool create) {
  SHALE_CHECK(v < vclusters_, "virtual cluster ", v, " beyond map size ", vclusters_);
  auto& page = pages_[v >> kPageShift];
  if (!page) {
    if (!create) return nullptr;
    page.reset(new Fragment[kPageSlots]);
  }
  return &page[v & (kPageSlots - 1)];
}

const Fragment* ClusterMap::SlotFor(uint64_t v) const {
  SHALE_CHECK(v < vclusters_, "virtual cluster ", v, " beyond map size ", vclusters_);
  const auto& page = pages_[v >> kPageShift];
  return page ? &page[v & (kPageSlots - 1)] : nullptr;
}

std::span<Fragment> ClusterMap::Fragments(uint64_t v) {
  Fragment* slot = SlotFor(v, false);
  if (slot == nullptr || slot->pcluster == kNoCluster) return {};
  if (slot->pcluster == kMulti) return std::span<Fragment>(multi_[slot->image]);
  return std::span<Fragment>(slot, 1);
}

std::span<const Fragment> ClusterMap::Fragments(uint64_t v) const {
  const Fragment* slot = SlotFor(v);
  if (slot == nullptr || slot->pcluster == kNoCluster) return {};
  if (slot->pcluster == kMulti) return std::span<const Fragment>(multi_[slot->image]);
  return std::span<const Fragment>(slot, 1);
}

Fragment& ClusterMap::Add(uint64_t v, const Fragment& f) {
  SHALE_CHECK(f.pcluster != kNoCluster && f.pcluster != kMulti, "adding an invalid fragment");
  Fragment* slot = SlotFor(v, true);
  if (slot->pcluster == kNoCluster) {
    *slot = f;
    return *slot;
  }
  if (slot->pcluster != kMulti) {
    uint32_t idx;
    if (!multi_free_.empty()) {
      idx = multi_free_.back();
      multi_free_.pop_back();
    } else {
      idx = static_cast<uint32_t>(multi_.size());
      multi_.emplace_back();
    }
    multi_[idx].clear();
    multi_[idx].push_back(*slot);
    *slot = Fragment{};
    slot->pcluster = kMulti;
    slot->image = idx;
  }
  auto& vec = multi_[slot->image];
  SHALE_CHECK(vec.size() < 130, "too many fragments in one virtual cluster");
  vec.push_back(f);
  return vec.back();
}

void ClusterMap::RemoveIf(uint64_t v, const std::function<bool(const Fragment&)>& pred) {
  Fragment* slot = SlotFor(v, false);
  if (slot == nullptr || slot->pcluster == kNoCluster) return;
  if (slot->pcluster != kMulti) {
    if (pred(*slot)) *slot = Fragment{};
    return;
  }
  uint32_t idx = slot->image;
  auto& vec = multi_[idx];
  std::erase_if(vec, pred);
  if (vec.size() <= 1) {
    *slot = vec.empty() ? Fragment{} : vec.front();
    vec.clear();
    vec.shrink_to_fit();
    multi_free_.push_back(idx);
  }
}

void ClusterMap::Adopt(ClusterMap&& part, uint64_t begin, uint64_t end) {
  SHALE_CHECK(part.vclusters_ == vclusters_ && begin <= end && end <= vclusters_ &&
                  begin % kPageSlots == 0 && (end % kPageSlots == 0 || end == vclusters_),
              "ClusterMap::Adopt: a range of whole pages of a map of the same size");
  // The part's side vectors follow ours: its multi-fragment slots index them from `base`.
  const auto base = static_cast<uint32_t>(multi_.size());
  for (uint64_t p = begin >> kPageShift; p < (end + kPageSlots - 1) >> kPageShift; ++p) {
    std::unique_ptr<Fragment[]>& page = part.pages_[p];
    if (!page) continue;
    SHALE_CHECK(!pages_[p], "ClusterMap::Adopt: the range is not empty here");
    if (base != 0 && !part.multi_.empty()) {
      for (uint64_t i = 0; i < kPageSlots; ++i) {
        if (page[i].pcluster == kMulti) page[i].image += base;
      }
    }
    pages_[p] = std::move(page);
  }
  multi_.reserve(multi_.size() + part.multi_.size());
  for (auto& m : part.multi_) multi_.push_back(std::move(m));
  for (uint32_t f : part.multi_free_) multi_free_.push_back(base + f);
  part = ClusterMap();
}

void ClusterMap::ForEach(const std::function<void(uint64_t, std::span<const Fragment>)>& fn) const {
  for (uint64_t p = 0; p < pages_.size(); ++p) {
    if (!pages_[p]) continue;
    for (uint64_t i = 0; i < kPageSlots; ++i) {
      uint64_t v = (p << kPageShift) + i;
      if (v >= vclusters_) return;
      auto frags = Fragments(v);
      if (!frags.empty()) fn(v, frags);
    }
  }
}

size_t ClusterMap::memory_bytes() const {
  size_t bytes = pages_.size() * sizeof(void*);
  for (const auto& p : pages_) {
    if (p) bytes += kPageSlots * sizeof(Fragment);
  }
  bytes += multi_.capacity() * sizeof(multi_[0]) + multi_free_.capacity() * sizeof(uint32_t);
  for (const auto& m : multi_) bytes += m.capacity() * sizeof(Fragment);
  return bytes;
}

}  // namespace shale
