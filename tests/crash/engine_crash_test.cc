// Crash consistency of pools and thin volumes, checked against an oracle.
//
// Each seed: an Engine runs on a FaultDevice whose "disk dies" after a random number of
// operations (FailAllAfter). A random workload — writes of 512 B..256 KiB (aligned and
// sector-aligned), FUA writes, flushes, discards, write-zeroes, volume grows, and create/delete
// of a scratch volume — runs until after the death; then the engine is torn down without any
// successful commit, the device loses power (unflushed writes dropped, or a random subset kept
// with torn writes), and a new Engine recovers the pool. The oracle tracks, per 512-byte sector,
// the value made durable by the last completed flush (or FUA) plus every value written since;
// after recovery each sector must hold one of those values. In particular:
//  - everything acknowledged before a completed flush is intact (invariant 1);
//  - nothing reads data it did not write: sectors hold their own values or zeros (invariant 3);
//  - the pool check finds no leaked or doubly owned cluster (invariants 2 and 3).
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <random>
#include <set>

#include "engine/engine.h"
#include "engine/io/fault_device.h"
#include "engine/io/memory_device.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
constexpr uint64_t kSector = 512;
constexpr uint64_t kPoolSize = 96 * kMiB;
constexpr uint64_t kVolumeSize = 8 * kMiB;

// Sector content for a write tag: distinct for every (tag, sector); tag 0 = zeros. Tags are
// unique across volumes, so a clone holding its source's data holds the source's tags.
void FillSector(uint8_t* out, uint64_t tag, uint64_t /*unused*/, uint64_t sector) {
  if (tag == 0) {
    std::memset(out, 0, kSector);
    return;
  }
  uint64_t x = tag * 0x9E3779B97F4A7C15ull ^ sector;
  for (size_t i = 0; i < kSector; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out + i, &x, 8);
  }
}

struct VolumeModel {
  std::string name;
  uint64_t key = 0;  // distinguishes volumes in the data pattern
  uint64_t size = 0;
  std::vector<std::vector<uint64_t>> sectors;  // candidates; [0] durable, rest written since

  void Resize(uint64_t new_size) {
    size = new_size;
    sectors.resize(new_size / kSector, std::vector<uint64_t>{0});
  }
  void Wrote(uint64_t off, uint64_t len, uint64_t tag) {
    for (uint64_t s = off / kSector; s < (off + len) / kSector; ++s) sectors[s].push_back(tag);
  }
  void Durable(uint64_t off, uint64_t len) {
    for (uint64_t s = off / kSector; s < (off + len) / kSector; ++s) {
      sectors[s] = {sectors[s].back()};
    }
  }
  void FlushAll() { Durable(0, size); }
  std::vector<uint64_t> Latest() const {
    std::vector<uint64_t> out;
    for (const auto& c : sectors) out.push_back(c.back());
    return out;
  }
  // The volume now durably holds exactly `content` (revert, clone).
  void Become(const std::vector<uint64_t>& content) {
    size = content.size() * kSector;
    sectors.clear();
    for (uint64_t t : content) sectors.push_back({t});
  }
};

struct SnapshotModel {
  std::string volume;             // source volume at freeze time
  std::vector<uint64_t> content;  // exact tag of every sector
};

class Harness {
 public:
  Harness(std::string dir, uint64_t seed) : dir_(std::move(dir)), rng_(seed) {
    inner_ = std::make_shared<MemoryDevice>(kPoolSize);
    fault_ = std::make_shared<FaultDevice>(inner_, seed);
  }

  EngineOptions Options() {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = kPoolSize;
    o.commit_interval_ms = 0;
    o.default_cluster_size = rng_() % 2 ? 64 * kKiB : 16 * kKiB;
    o.device_factory = [dev = fault_](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
      return std::shared_ptr<BlockDevice>(dev);
    };
    return o;
  }

  Status Io(Volume& v, VolumeOp op, uint64_t off, uint64_t len, uint8_t* buf, uint32_t flags) {
    std::promise<Status> p;
    VolumeIo io;
    io.op = op;
    io.offset = off;
    io.length = len;
    io.buf = buf;
    io.flags = flags;
    io.ctx = &p;
    io.done = [](VolumeIo* d) { static_cast<std::promise<Status>*>(d->ctx)->set_value(d->status); };
    v.reactor()->Post([&] { v.Submit(&io); });
    return p.get_future().get();
  }

  std::string dir_;
  std::mt19937_64 rng_;
  std::shared_ptr<MemoryDevice> inner_;
  std::shared_ptr<FaultDevice> fault_;
};

// A control operation failed: only a dead disk (an I/O error, then the pool refusing further
// commits) may explain that.
void ExpectDeviceDeath(const Status& st, bool* device_dead) {
  ASSERT_TRUE(st.code() == StatusCode::kIoError || *device_dead) << st;
  *device_dead = true;
}

void RunSeed(const std::string& dir, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  Harness h(dir, seed);
  auto& rng = h.rng_;
  std::map<std::string, VolumeModel> models;
  std::map<uint64_t, SnapshotModel> snapshots;  // live frozen images
  std::set<uint64_t> deleted_snapshots;
  uint64_t next_tag = 1, next_key = 1, next_clone = 1;
  bool device_dead = false;

  {
    EngineOptions opts = h.Options();
    auto engine_or = Engine::Open(opts);
    ASSERT_TRUE(engine_or.ok()) << engine_or.status();
    auto engine = std::move(engine_or).value();
    for (const char* name : {"a", "b"}) {
      ASSERT_TRUE(engine->CreateVolume({.name = name, .size_bytes = kVolumeSize}).ok());
      VolumeModel m;
      m.name = name;
      m.key = next_key++;
      m.Resize(kVolumeSize);
      models[name] = m;
    }
    // The disk dies after a random number of device operations.
    h.fault_->FailAllAfter(20 + rng() % 400);

    AlignedBuffer buf = AllocateAligned(256 * kKiB);
    const int ops = 60 + static_cast<int>(rng() % 120);
    for (int i = 0; i < ops; ++i) {
      // Pick a volume (maybe the scratch one).
      std::vector<std::string> names;
      for (auto& [n, m] : models) names.push_back(n);
      VolumeModel& m = models[names[rng() % names.size()]];
      auto handle = engine->OpenVolume(m.name);
      ASSERT_TRUE(handle.ok());
      Volume& vol = (*handle)->volume();
      const unsigned kind = rng() % 100;
      if (std::getenv("SHALE_CRASH_VERBOSE")) {
        std::fprintf(stderr, "op %d kind %u on %s (next tag %llu, dead %d)\n", i, kind,
                     m.name.c_str(), static_cast<unsigned long long>(next_tag), device_dead);
      }
      if (kind < 50) {  // write
        const bool sector_aligned = rng() % 4 == 0;
        const uint64_t unit = sector_aligned ? kSector : 4096;
        const uint64_t len = unit * (1 + rng() % (sector_aligned ? 16 : 64));
        const uint64_t off = (rng() % ((m.size - len) / unit + 1)) * unit;
        const uint64_t tag = next_tag++;
        for (uint64_t s = 0; s < len / kSector; ++s)
          FillSector(buf.get() + s * kSector, tag, m.key, off / kSector + s);
        const bool fua = rng() % 10 == 0;
        Status st = h.Io(vol, VolumeOp::kWrite, off, len, buf.get(), fua ? kVolumeFua : 0);
        m.Wrote(off, len, tag);
        if (st.ok() && fua) m.Durable(off, len);
        if (!st.ok()) {
          ASSERT_TRUE(st.code() == StatusCode::kIoError || st.code() == StatusCode::kNoSpace) << st;
          device_dead = true;
        }
      } else if (kind < 60) {  // flush
        Status st = h.Io(vol, VolumeOp::kFlush, 0, 0, nullptr, 0);
        if (st.ok()) {
          ASSERT_FALSE(device_dead) << "a flush succeeded after the device died";
          m.FlushAll();
        } else {
          device_dead = true;
        }
      } else if (kind < 68) {  // discard (advisory for partial blocks) or write-zeroes (exact)
        const bool zeroes = rng() % 2;
        const uint64_t len = kSector * (1 + rng() % 512);
        const uint64_t off = (rng() % ((m.size - len) / kSector + 1)) * kSector;
        Status st =
            h.Io(vol, zeroes ? VolumeOp::kWriteZeroes : VolumeOp::kDiscard, off, len, nullptr, 0);
        uint64_t zb = off, ze = off + len;
        if (!zeroes) {
          zb = (off + 4095) / 4096 * 4096;
          ze = (off + len) / 4096 * 4096;
        }
        if (ze > zb) m.Wrote(zb, ze - zb, 0);
        if (!st.ok()) device_dead = true;
      } else if (kind < 71) {  // grow
        const uint64_t new_size = m.size + 4096 * (1 + rng() % 256);
        handle->reset();
        auto r = engine->ResizeVolume(m.name, new_size);
        // After a failed commit the pool refuses metadata changes until it is reopened.
        if (r.ok()) {
          m.Resize(new_size);
        } else {
          ExpectDeviceDeath(r.status(), &device_dead);
        }
      } else if (kind < 82) {  // snapshot: freeze the volume (also makes its writes durable)
        handle->reset();
        auto id = engine->FreezeVolume(m.name);
        if (id.ok()) {
          ASSERT_FALSE(device_dead) << "a freeze succeeded after the device died";
          m.FlushAll();
          snapshots[*id] = SnapshotModel{m.name, m.Latest()};
        } else {
          if (id.status().code() == StatusCode::kFailedPrecondition) continue;  // chain limit
          ExpectDeviceDeath(id.status(), &device_dead);
        }
      } else if (kind < 86) {  // delete a snapshot
        handle->reset();
        if (snapshots.empty()) continue;
        auto it = std::next(snapshots.begin(), static_cast<long>(rng() % snapshots.size()));
        Status st = engine->DeleteImage("default", it->first);
        if (st.ok()) {
          deleted_snapshots.insert(it->first);
          snapshots.erase(it);
        } else {
          ExpectDeviceDeath(st, &device_dead);
        }
      } else if (kind < 89) {  // clone a snapshot (writable or read-only)
        handle->reset();
        if (snapshots.empty() || models.size() >= 6) continue;
        auto it = std::next(snapshots.begin(), static_cast<long>(rng() % snapshots.size()));
        const std::string name = "clone" + std::to_string(next_clone++);
        auto c = engine->CreateVolumeFromImage({.name = name}, it->first);
        if (!c.ok()) {
          if (c.status().code() != StatusCode::kFailedPrecondition)
            ExpectDeviceDeath(c.status(), &device_dead);
          continue;
        }
        VolumeModel cm;
        cm.name = name;
        cm.key = next_key++;
        cm.Become(it->second.content);
        models[name] = cm;
      } else if (kind < 92) {  // revert the volume to one of its ancestor snapshots
        handle->reset();
        std::vector<uint64_t> ancestors;
        auto head = engine->VolumeHeadImage(m.name);
        ASSERT_TRUE(head.ok());
        for (auto img = engine->GetImage("default", *head); img.ok() && img->parent != 0;
             img = engine->GetImage("default", img->parent)) {
          if (snapshots.count(img->parent)) ancestors.push_back(img->parent);
        }
        if (ancestors.empty()) continue;
        const uint64_t target = ancestors[rng() % ancestors.size()];
        Status st = engine->RevertVolume(m.name, target);
        if (st.ok()) {
          m.Become(snapshots[target].content);
        } else {
          ExpectDeviceDeath(st, &device_dead);
        }
      } else if (kind < 94) {  // flatten (a clone's copy commits: its state becomes durable)
        handle->reset();
        auto head = engine->VolumeHeadImage(m.name);
        ASSERT_TRUE(head.ok());
        auto img = engine->GetImage("default", *head);
        const bool has_parent = img.ok() && img->parent != 0;  // else flatten is a no-op
        Status st = engine->FlattenVolume(m.name);
        if (st.ok()) {
          if (has_parent) m.FlushAll();
        } else {
          ExpectDeviceDeath(st, &device_dead);
        }
      } else if (kind < 96) {  // create or delete the scratch volume
        handle->reset();
        if (models.count("scratch")) {
          Status st = engine->DeleteVolume("scratch");
          if (st.ok()) {
            models.erase("scratch");
          } else {
            ExpectDeviceDeath(st, &device_dead);
          }
        } else {
          auto created = engine->CreateVolume({.name = "scratch", .size_bytes = 4 * kMiB});
          if (!created.ok()) {
            ExpectDeviceDeath(created.status(), &device_dead);
            continue;
          }
          VolumeModel s;
          s.name = "scratch";
          s.key = next_key++;
          s.Resize(4 * kMiB);
          models["scratch"] = s;
        }
      } else {  // read back the current state and check it against the latest values
        const uint64_t len = 4096 * (1 + rng() % 32);
        const uint64_t off = (rng() % ((m.size - len) / 4096 + 1)) * 4096;
        Status st = h.Io(vol, VolumeOp::kRead, off, len, buf.get(), 0);
        if (st.ok() && !device_dead) {
          uint8_t expect[kSector];
          for (uint64_t s = 0; s < len / kSector; ++s) {
            const uint64_t sector = off / kSector + s;
            FillSector(expect, m.sectors[sector].back(), m.key, sector);
            ASSERT_EQ(std::memcmp(expect, buf.get() + s * kSector, kSector), 0)
                << "live read of " << m.name << " sector " << sector;
          }
        }
      }
    }
    // Crash: the disk is dead for everything the shutdown attempts.
    h.fault_->FailAllAfter(0);
    engine->Shutdown().IgnoreError();
  }
  h.fault_->PowerCut(seed % 2 ? FaultDevice::CutMode::kRandom : FaultDevice::CutMode::kDropAll);

  auto engine_or = Engine::Open(h.Options());
  ASSERT_TRUE(engine_or.ok()) << engine_or.status();
  auto engine = std::move(engine_or).value();
  auto vols = engine->ListVolumes();
  ASSERT_EQ(vols.size(), models.size());
  AlignedBuffer buf = AllocateAligned(kVolumeSize * 4);
  for (auto& [name, m] : models) {
    auto info = engine->GetVolume(name);
    ASSERT_TRUE(info.ok()) << name;
    ASSERT_EQ(info->size_bytes, m.size) << name;
    auto handle = engine->OpenVolume(name);
    ASSERT_TRUE(handle.ok());
    ASSERT_TRUE(h.Io((*handle)->volume(), VolumeOp::kRead, 0, m.size, buf.get(), 0).ok());
    uint8_t expect[kSector];
    for (uint64_t s = 0; s < m.size / kSector; ++s) {
      bool matched = false;
      for (uint64_t tag : m.sectors[s]) {
        FillSector(expect, tag, m.key, s);
        if (std::memcmp(expect, buf.get() + s * kSector, kSector) == 0) {
          matched = true;
          break;
        }
      }
      if (!matched) {
        std::string cands;
        for (uint64_t t : m.sectors[s]) cands += std::to_string(t) + " ";
        FAIL() << "volume " << name << " sector " << s << " holds none of its possible values {"
               << cands << "} (durable value first)";
      }
    }
  }
  // Snapshots never change: each reads exactly what it held when it was taken.
  for (auto& [id, snap] : snapshots) {
    auto view = engine->OpenImage("default", id);
    ASSERT_TRUE(view.ok()) << "snapshot image " << id << ": " << view.status();
    Volume& v = (*view)->volume();
    const uint64_t size = snap.content.size() * kSector;
    ASSERT_EQ(v.size_bytes(), size);
    ASSERT_TRUE(h.Io(v, VolumeOp::kRead, 0, size, buf.get(), 0).ok());
    uint8_t expect[kSector];
    for (uint64_t s = 0; s < snap.content.size(); ++s) {
      FillSector(expect, snap.content[s], 0, s);
      ASSERT_EQ(std::memcmp(expect, buf.get() + s * kSector, kSector), 0)
          << "snapshot image " << id << " of " << snap.volume << " changed at sector " << s;
    }
  }
  for (uint64_t id : deleted_snapshots) {
    auto img = engine->GetImage("default", id);
    ASSERT_TRUE(!img.ok() || img->deleted) << "deleted snapshot image " << id << " came back";
  }
  auto report = engine->CheckPool("default");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->clean()) << report->problems.front();
}

TEST(EngineCrashTest, RandomWorkloadsSurvivePowerCuts) {
  char tmpl[] = "/tmp/shale-crash-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const char* env = std::getenv("SHALE_CRASH_SEEDS");
  const uint64_t seeds = env ? std::strtoull(env, nullptr, 10) : 300;
  const uint64_t first = std::getenv("SHALE_CRASH_FIRST_SEED")
                             ? std::strtoull(std::getenv("SHALE_CRASH_FIRST_SEED"), nullptr, 10)
                             : 1;
  for (uint64_t seed = first; seed < first + seeds; ++seed) {
    const std::string dir = std::string(tmpl) + "/" + std::to_string(seed);
    fs::create_directories(dir);
    RunSeed(dir, seed);
    fs::remove_all(dir);
    if (::testing::Test::HasFatalFailure() || ::testing::Test::HasFailure()) {
      ADD_FAILURE() << "reproduce with SHALE_CRASH_FIRST_SEED=" << seed << " SHALE_CRASH_SEEDS=1";
      break;
    }
  }
  fs::remove_all(tmpl);
}

}  // namespace
}  // namespace shale
