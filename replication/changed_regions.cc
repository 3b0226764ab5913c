#include "replication/changed_regions.h"

#include <algorithm>
#include <cstdio>

#include "engine/common/assert.h"
#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"

namespace shale::replication {
namespace {

constexpr std::string_view kNamespace = "replication";
constexpr size_t kChunkBytes = kRegionsPerChunk / 8;
static_assert(kChunkBytes == 4096);

std::string Hex(uint64_t v, int digits) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%0*llx", digits, static_cast<unsigned long long>(v));
  return std::string(buf);
}

std::string VolumePrefix(uint64_t volume_id, std::string_view kind) {
  return keys::Extension(kNamespace, Hex(volume_id, 16) + "/" + std::string(kind) + "/");
}

uint64_t RegionsOf(uint64_t size_bytes) { return (size_bytes + kRegionBytes - 1) / kRegionBytes; }

bool TestBit(const std::vector<uint8_t>& chunk, uint64_t bit) {
  return (chunk[bit / 8] >> (bit % 8)) & 1;
}

}  // namespace

ChangedRegions::ChangedRegions(uint64_t volume_id, uint64_t size_bytes, Reactor* reactor,
                               CommitFn commit, std::string_view kind)
    : volume_id_(volume_id),
      prefix_(VolumePrefix(volume_id, kind)),
      size_bytes_(size_bytes),
      regions_(RegionsOf(size_bytes)),
      reactor_(reactor),
      commit_(std::move(commit)) {}

ChangedRegions::~ChangedRegions() = default;

std::string ChangedRegions::NodePrefix(const std::string& node) const {
  return prefix_ + node + "/";
}

std::string ChangedRegions::ChunkKey(const std::string& node, uint64_t chunk) const {
  return NodePrefix(node) + Hex(chunk, 8);
}

Result<std::unique_ptr<ChangedRegions>> ChangedRegions::Load(
    Engine* engine, const std::string& pool, uint64_t volume_id, uint64_t size_bytes,
    Reactor* reactor, CommitFn commit, std::string_view kind) {
  std::unique_ptr<ChangedRegions> log(
      new ChangedRegions(volume_id, size_bytes, reactor, std::move(commit), kind));
  const std::string prefix = log->prefix_;
  Status bad;
  SHALE_RETURN_IF_ERROR(
      engine->ScanRecords(pool, prefix, [&](std::string_view key, std::string_view value) {
        // key: prefix node "/" hex8(chunk)
        std::string_view rest = key.substr(prefix.size());
        const size_t slash = rest.rfind('/');
        if (slash == std::string_view::npos || slash == 0 || rest.size() - slash - 1 != 8 ||
            value.size() != kChunkBytes) {
          bad = Status::Corruption("replication: malformed changed-region record");
          return false;
        }
        const std::string node(rest.substr(0, slash));
        uint64_t chunk = 0;
        for (char c : rest.substr(slash + 1)) {
          const int d = (c >= '0' && c <= '9')   ? c - '0'
                        : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                 : -1;
          if (d < 0) {
            bad = Status::Corruption("replication: malformed changed-region key");
            return false;
          }
          chunk = chunk * 16 + static_cast<uint64_t>(d);
        }
        log->bits_[node][chunk].assign(value.begin(), value.end());
        return true;
      }));
  SHALE_RETURN_IF_ERROR(bad);
  return log;
}

std::string ChangedRegions::TermKey(uint64_t volume_id) {
  return keys::Extension(kNamespace, Hex(volume_id, 16) + "/term");
}

void ChangedRegions::ForgetVolume(uint64_t volume_id, MetaBatch* batch) {
  // Every kind: the volume's prefix up to its '/'.
  const std::string prefix = keys::Extension(kNamespace, Hex(volume_id, 16) + "/");
  std::string end = prefix;
  end.back() = static_cast<char>(end.back() + 1);  // the prefix ends in '/': '0' follows it
  batch->DeleteRange(prefix, end);
}

bool ChangedRegions::MarkedInMemory(const std::string& node, uint64_t region) const {
  auto n = bits_.find(node);
  if (n == bits_.end()) return false;
  auto c = n->second.find(region / kRegionsPerChunk);
  return c != n->second.end() && TestBit(c->second, region % kRegionsPerChunk);
}

bool ChangedRegions::Covered(const std::string& node, uint64_t offset, uint64_t length) const {
  if (length == 0) return true;
  const uint64_t first = offset / kRegionBytes;
  const uint64_t last = (offset + length - 1) / kRegionBytes;
  for (uint64_t r = first; r <= last; ++r) {
    if (!MarkedInMemory(node, r)) return false;
    if (unpersisted_.count({node, r / kRegionsPerChunk})) return false;
  }
  return true;
}

void ChangedRegions::Mark(const std::vector<std::string>& nodes, uint64_t offset, uint64_t length,
                          std::function<void(Status)> done) {
  SHALE_CHECK(reactor_->IsCurrent(), "ChangedRegions::Mark off its reactor");
  if (!failed_.ok()) {
    reactor_->Post([done = std::move(done), st = failed_] { done(st); });
    return;
  }
  bool all_covered = true;
  for (const std::string& n : nodes) all_covered = all_covered && Covered(n, offset, length);
  if (all_covered || length == 0) {
    reactor_->Post([done = std::move(done)] { done(Status::Ok()); });
    return;
  }
  Pending p;
  p.nodes = nodes;
  p.first = offset / kRegionBytes;
  p.last = (offset + length - 1) / kRegionBytes;
  p.done = std::move(done);
  for (const std::string& n : nodes) {
    for (uint64_t r = p.first; r <= p.last; ++r) {
      if (MarkedInMemory(n, r)) continue;
      std::vector<uint8_t>& chunk = bits_[n][r / kRegionsPerChunk];
      if (chunk.empty()) chunk.assign(kChunkBytes, 0);
      const uint64_t bit = r % kRegionsPerChunk;
      chunk[bit / 8] = static_cast<uint8_t>(chunk[bit / 8] | (1u << (bit % 8)));
      unpersisted_.insert({n, r / kRegionsPerChunk});
    }
  }
  queued_.push_back(std::move(p));
  StartCommit();
}

void ChangedRegions::AddChunks(const std::set<std::pair<std::string, uint64_t>>& dirty,
                               MetaBatch* batch) const {
  for (const auto& [node, chunk] : dirty) {
    auto n = bits_.find(node);
    const std::vector<uint8_t>* bits = nullptr;
    if (n != bits_.end()) {
      auto c = n->second.find(chunk);
      if (c != n->second.end()) bits = &c->second;
    }
    bool any = false;
    if (bits != nullptr) {
      for (uint8_t b : *bits) any = any || b != 0;
    }
    if (any) {
      batch->Put(ChunkKey(node, chunk),
                 std::string_view(reinterpret_cast<const char*>(bits->data()), bits->size()));
    } else {
      batch->Delete(ChunkKey(node, chunk));
    }
  }
}

void ChangedRegions::StartCommit() {
  if (committing_) return;  // the next round starts when this one completes
  if (queued_.empty() && persist_waiters_.empty() && unpersisted_.empty()) return;
  committing_ = true;
  std::set<std::pair<std::string, uint64_t>> chunks;
  chunks.swap(unpersisted_);
  std::vector<Pending> waiters;
  waiters.swap(queued_);
  for (auto& w : persist_waiters_) {
    Pending p;
    p.done = std::move(w);
    waiters.push_back(std::move(p));
  }
  persist_waiters_.clear();
  MetaBatch batch;
  AddChunks(chunks, &batch);
  auto shared_waiters = std::make_shared<std::vector<Pending>>(std::move(waiters));
  auto shared_chunks =
      std::make_shared<std::set<std::pair<std::string, uint64_t>>>(std::move(chunks));
  commit_(std::move(batch), [this, shared_waiters, shared_chunks](Status st) {
    reactor_->Post([this, shared_waiters, shared_chunks, st] {
      OnCommitted(st, std::move(*shared_waiters), std::move(*shared_chunks));
    });
  });
}

void ChangedRegions::OnCommitted(Status st, std::vector<Pending> waiters,
                                 std::set<std::pair<std::string, uint64_t>> chunks) {
  committing_ = false;
  if (!st.ok()) {
    failed_ = st;
    // What did not become durable stays unpersisted (nothing will make it durable now).
    unpersisted_.insert(chunks.begin(), chunks.end());
    for (Pending& p : queued_) waiters.push_back(std::move(p));
    queued_.clear();
    for (auto& w : persist_waiters_) {
      Pending p;
      p.done = std::move(w);
      waiters.push_back(std::move(p));
    }
    persist_waiters_.clear();
  }
  if (st.ok()) StartCommit();
  // Last: a waiter may destroy this object (found by ASan: the next round touched it after a
  // test, woken by its Persist, had deleted it).
  for (Pending& p : waiters) p.done(st);
}

std::vector<std::pair<uint64_t, uint64_t>> ChangedRegions::Ranges(const std::string& node) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  auto n = bits_.find(node);
  if (n == bits_.end()) return out;
  for (const auto& [chunk, bits] : n->second) {
    for (uint64_t bit = 0; bit < kRegionsPerChunk; ++bit) {
      if (!TestBit(bits, bit)) continue;
      const uint64_t region = chunk * kRegionsPerChunk + bit;
      if (region >= regions_) break;
      const uint64_t off = region * kRegionBytes;
      const uint64_t len = std::min(kRegionBytes, size_bytes_ - off);
      if (!out.empty() && out.back().first + out.back().second == off) {
        out.back().second += len;
      } else {
        out.emplace_back(off, len);
      }
    }
  }
  return out;
}

uint64_t ChangedRegions::RegionCount(const std::string& node) const {
  uint64_t count = 0;
  auto n = bits_.find(node);
  if (n == bits_.end()) return 0;
  for (const auto& [chunk, bits] : n->second) {
    for (uint8_t b : bits) count += static_cast<uint64_t>(__builtin_popcount(b));
  }
  return count;
}

std::vector<std::string> ChangedRegions::Nodes() const {
  std::vector<std::string> out;
  for (const auto& [node, chunks] : bits_) {
    if (RegionCount(node) > 0) out.push_back(node);
  }
  return out;
}

void ChangedRegions::Clear(const std::string& node, uint64_t region) {
  auto n = bits_.find(node);
  if (n == bits_.end()) return;
  auto c = n->second.find(region / kRegionsPerChunk);
  if (c == n->second.end()) return;
  const uint64_t bit = region % kRegionsPerChunk;
  if (!TestBit(c->second, bit)) return;
  c->second[bit / 8] = static_cast<uint8_t>(c->second[bit / 8] & ~(1u << (bit % 8)));
  unpersisted_.insert({node, region / kRegionsPerChunk});
}

void ChangedRegions::Persist(std::function<void(Status)> done) {
  if (!failed_.ok()) {
    reactor_->Post([done = std::move(done), st = failed_] { done(st); });
    return;
  }
  persist_waiters_.push_back(std::move(done));
  StartCommit();
}

void ChangedRegions::Drop(const std::string& node, std::function<void(Status)> done) {
  auto n = bits_.find(node);
  if (n != bits_.end()) {
    for (auto& [chunk, bits] : n->second) {
      std::fill(bits.begin(), bits.end(), 0);
      unpersisted_.insert({node, chunk});
    }
  }
  Persist([this, node, done = std::move(done)](Status st) {
    // Erased only if nothing was marked for it meanwhile.
    if (st.ok() && RegionCount(node) == 0) bits_.erase(node);
    done(st);
  });
}

void ChangedRegions::Grow(uint64_t size_bytes) {
  size_bytes_ = size_bytes;
  regions_ = RegionsOf(size_bytes);
}

}  // namespace shale::replication
