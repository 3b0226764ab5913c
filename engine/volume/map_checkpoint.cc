#include "engine/volume/map_checkpoint.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <tuple>
#include <vector>

namespace shale {
namespace {

constexpr char kMagic[8] = {'S', 'H', 'A', 'L', 'E', 'M', 'A', 'P'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8;
constexpr uint8_t kRun = 1;
constexpr uint8_t kCluster = 2;
static_assert(std::endian::native == std::endian::little, "the file is little-endian");

template <typename T>
void Put(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

void PutFragment(std::string* out, const Fragment& f) {
  Put<uint64_t>(out, f.blocks);
  Put<uint32_t>(out, f.pcluster);
  Put<uint32_t>(out, f.image);
}

// Reads fixed-size values off the front of a byte string; ok() turns false past its end.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : rest_(bytes) {}
  template <typename T>
  T Get() {
    T value{};
    if (rest_.size() < sizeof(T)) {
      ok_ = false;
      rest_ = {};
      return value;
    }
    std::memcpy(&value, rest_.data(), sizeof(T));
    rest_.remove_prefix(sizeof(T));
    return value;
  }
  Fragment GetFragment() {
    Fragment f;
    f.blocks = Get<uint64_t>();
    f.pcluster = Get<uint32_t>();
    f.image = Get<uint32_t>();
    return f;
  }
  bool ok() const { return ok_; }
  bool done() const { return rest_.empty(); }

 private:
  std::string_view rest_;
  bool ok_ = true;
};

// The fragments of one virtual cluster that the scan would load.
std::vector<Fragment> Visible(std::span<const Fragment> frags, uint32_t head) {
  std::vector<Fragment> out;
  for (const Fragment& f : frags) {
    // The head keeps its fragments even when empty (they hold an allocated cluster); every other
    // fragment only while it shows a block.
    if (f.blocks != 0 || (f.image == head && !f.is_zero())) out.push_back(f);
  }
  return out;
}

bool Continues(const Fragment& run_first, uint32_t count, const std::vector<Fragment>& next) {
  return next.size() == 1 && !run_first.is_zero() && next[0].blocks == run_first.blocks &&
         next[0].image == run_first.image &&
         static_cast<uint64_t>(run_first.pcluster) + count == next[0].pcluster &&
         count < UINT32_MAX;
}

}  // namespace

std::string EncodeMapCheckpoint(const ClusterMap& map, uint32_t head) {
  std::string out;
  out.append(kMagic, sizeof(kMagic));
  Put<uint32_t>(&out, kVersion);
  Put<uint32_t>(&out, 0);
  Put<uint64_t>(&out, map.size());
  // A pending run: `count` clusters from `run_v`, the first one's fragment `run_first`.
  uint64_t run_v = 0;
  uint32_t count = 0;
  Fragment run_first;
  auto flush_run = [&] {
    if (count == 0) return;
    if (count == 1) {
      out.push_back(static_cast<char>(kCluster));
      Put<uint64_t>(&out, run_v);
      out.push_back(1);
      PutFragment(&out, run_first);
    } else {
      out.push_back(static_cast<char>(kRun));
      Put<uint64_t>(&out, run_v);
      Put<uint32_t>(&out, count);
      PutFragment(&out, run_first);
    }
    count = 0;
  };
  map.ForEach([&](uint64_t v, std::span<const Fragment> frags) {
    std::vector<Fragment> visible = Visible(frags, head);
    if (visible.empty()) return;
    if (count != 0 && run_v + count == v && Continues(run_first, count, visible)) {
      ++count;
      return;
    }
    flush_run();
    if (visible.size() == 1 && !visible[0].is_zero()) {
      run_v = v;
      run_first = visible[0];
      count = 1;
      return;
    }
    // More than 255 fragments cannot happen (at most 64 data and 64 zero fragments); split
    // defensively all the same, as consecutive records of the same cluster.
    for (size_t i = 0; i < visible.size(); i += 255) {
      const size_t n = std::min<size_t>(255, visible.size() - i);
      out.push_back(static_cast<char>(kCluster));
      Put<uint64_t>(&out, v);
      out.push_back(static_cast<char>(n));
      for (size_t j = i; j < i + n; ++j) PutFragment(&out, visible[j]);
    }
  });
  flush_run();
  return out;
}

Result<ClusterMap> DecodeMapCheckpoint(std::string_view file, uint64_t vclusters,
                                       uint64_t pool_clusters) {
  if (file.size() < kHeaderBytes || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) {
    return Status::Corruption("map checkpoint: bad header");
  }
  Reader r(file.substr(sizeof(kMagic)));
  const uint32_t version = r.Get<uint32_t>();
  r.Get<uint32_t>();
  const uint64_t size = r.Get<uint64_t>();
  if (version != kVersion) {
    return Status::Corruption("map checkpoint: version " + std::to_string(version));
  }
  if (size != vclusters) {
    return Status::Corruption("map checkpoint: " + std::to_string(size) +
                              " virtual clusters, the volume has " + std::to_string(vclusters));
  }
  ClusterMap map(vclusters);
  auto valid = [&](const Fragment& f) {
    return f.pcluster == kZeroCluster ? f.blocks != 0 : f.pcluster < pool_clusters;
  };
  uint64_t next_v = 0;              // records come in increasing order
  uint64_t cluster_v = UINT64_MAX;  // a cluster record's cluster may continue in the next record
  while (!r.done()) {
    const uint8_t kind = r.Get<uint8_t>();
    const uint64_t v = r.Get<uint64_t>();
    if (kind == kRun) {
      const uint32_t count = r.Get<uint32_t>();
      const Fragment first = r.GetFragment();
      if (!r.ok() || count < 2 || v < next_v || v >= vclusters || count > vclusters - v ||
          first.is_zero() || !valid(first) || count > pool_clusters - first.pcluster) {
        return Status::Corruption("map checkpoint: bad run at virtual cluster " +
                                  std::to_string(v));
      }
      Fragment f = first;
      for (uint32_t i = 0; i < count; ++i, ++f.pcluster) map.Add(v + i, f);
      next_v = v + count;
      cluster_v = UINT64_MAX;
    } else if (kind == kCluster) {
      const uint8_t n = r.Get<uint8_t>();
      if (!r.ok() || n == 0 || (v < next_v && v != cluster_v) || v >= vclusters) {
        return Status::Corruption("map checkpoint: bad record at virtual cluster " +
                                  std::to_string(v));
      }
      for (uint8_t i = 0; i < n; ++i) {
        const Fragment f = r.GetFragment();
        if (!r.ok() || !valid(f)) {
          return Status::Corruption("map checkpoint: bad fragment at virtual cluster " +
                                    std::to_string(v));
        }
        map.Add(v, f);
      }
      next_v = v + 1;
      cluster_v = v;
    } else {
      return Status::Corruption("map checkpoint: unknown record kind " + std::to_string(kind));
    }
  }
  return map;
}

bool SameMappings(const ClusterMap& a, const ClusterMap& b) {
  if (a.size() != b.size()) return false;
  auto sorted = [](std::span<const Fragment> frags) {
    std::vector<std::tuple<uint32_t, uint32_t, uint64_t>> out;
    for (const Fragment& f : frags) out.emplace_back(f.image, f.pcluster, f.blocks);
    std::sort(out.begin(), out.end());
    return out;
  };
  for (uint64_t v = 0; v < a.size(); ++v) {
    if (sorted(a.Fragments(v)) != sorted(b.Fragments(v))) return false;
  }
  return true;
}

}  // namespace shale
