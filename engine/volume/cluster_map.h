// ClusterMap: the in-memory, flat read index of one volume: for every virtual cluster, where
// each of its blocks lives right now. It is the merge of the volume's image chain (head image on
// top of its parents), so a read costs one lookup however many parent images exist.
//
// Each virtual cluster has zero or more Fragments with disjoint `blocks` bitmaps:
//  - a data fragment: those blocks live at the same block positions of physical cluster
//    `pcluster`, which belongs to image `image`;
//  - a zero fragment (pcluster == kZeroCluster): those blocks were zeroed by image `image` over
//    data of a parent image;
//  - blocks in no fragment read as zeros.
// Fragments whose image is the volume's head image are "owned": writable in place.
//
// Memory: one 16-byte slot per virtual cluster in lazily allocated pages; virtual clusters with
// more than one fragment (only after snapshots/clones) keep a small side vector. I/Os in flight
// per fragment are counted outside the map (Volume's InflightTable).
// Not thread-safe: a volume's map is touched only on the volume's reactor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace shale {

inline constexpr uint32_t kNoCluster = UINT32_MAX;
inline constexpr uint32_t kZeroCluster = UINT32_MAX - 1;

struct Fragment {
  uint64_t blocks = 0;             // blocks of the virtual cluster whose data is here
  uint32_t pcluster = kNoCluster;  // physical cluster, or kZeroCluster
  uint32_t image = 0;              // image owning the physical cluster / the zero marks
  bool is_zero() const { return pcluster == kZeroCluster; }
};
static_assert(sizeof(Fragment) == 16);

class ClusterMap {
 public:
  explicit ClusterMap(uint64_t vclusters = 0);
  ClusterMap(ClusterMap&&) noexcept = default;
  ClusterMap& operator=(ClusterMap&&) noexcept = default;

  uint64_t size() const { return vclusters_; }
  // Grows the map (never shrinks).
  void Grow(uint64_t vclusters);

  // The fragments of virtual cluster v; valid until the next change to v.
  std::span<Fragment> Fragments(uint64_t v);
  std::span<const Fragment> Fragments(uint64_t v) const;
  // Adds a fragment to v; returns it (valid until the next change to v).
  Fragment& Add(uint64_t v, const Fragment& f);
  // Removes the fragments of v for which pred(fragment) is true.
  void RemoveIf(uint64_t v, const std::function<bool(const Fragment&)>& pred);
  // Calls fn(v, fragments) for every virtual cluster with at least one fragment, in order.
  void ForEach(const std::function<void(uint64_t v, std::span<const Fragment>)>& fn) const;

  // Loading in parallel (Volume::LoadMap): `part`, a map of the same size holding nothing
  // outside [begin, end), moves its clusters into this map, which holds nothing inside it.
  // begin is a multiple of kRangeAlign; end too, or the map's size.
  static constexpr uint64_t kRangeAlign = 512;  // slots per page
  void Adopt(ClusterMap&& part, uint64_t begin, uint64_t end);

  uint64_t multi_fragment_clusters() const { return multi_.size() - multi_free_.size(); }
  // Bytes the map holds: pages, side vectors and their headers (not the allocator's overhead).
  size_t memory_bytes() const;

 private:
  static constexpr uint64_t kPageShift = 9;  // 512 slots (8 KiB) per page
  static constexpr uint64_t kPageSlots = 1ull << kPageShift;
  static_assert(kPageSlots == kRangeAlign);
  static constexpr uint32_t kMulti = UINT32_MAX - 2;  // slot.pcluster: fragments in multi_

  Fragment* SlotFor(uint64_t v, bool create);
  const Fragment* SlotFor(uint64_t v) const;

  uint64_t vclusters_ = 0;
  std::vector<std::unique_ptr<Fragment[]>> pages_;
  std::vector<std::vector<Fragment>> multi_;  // slot.image indexes here when slot is kMulti
  std::vector<uint32_t> multi_free_;
};

}  // namespace shale
