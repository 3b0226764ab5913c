// Crash consistency of pools and thin volumes, checked against an oracle.
//
// Each seed: an Engine runs on a FaultDevice (the pool's data) and a FaultInjectingFs (the pool's
// RocksDB metadata). One of three faults strikes after a random number of operations:
//  - power cut (half the seeds): the device and the metadata file system draw from one power
//    supply, and both lose power at the same instant, whichever of them the last operation hit;
//  - the data disk dies (FailAllAfter) while the metadata keeps working;
//  - the metadata disk dies (every RocksDB write and sync fails) while the data disk keeps working.
// A random workload — writes of 512 B..256 KiB (aligned and sector-aligned), FUA writes, flushes,
// discards, write-zeroes, volume grows, snapshots, clones, reverts, flattens, online pool
// expansions (the recovered capacity is checked too), and create/delete of
// a scratch volume — runs until after the fault; then the engine is torn down with both dead, both
// lose power (device: unflushed writes dropped, or a random subset kept with torn writes;
// metadata: names never made durable dropped, and file data written since its last sync dropped or
// partly kept), and a new Engine recovers the pool. The oracle tracks, per 512-byte sector, the
// value made durable by the last completed flush (or FUA) plus every value written since; after
// recovery each sector must hold one of those values. In particular:
//  - everything acknowledged before a completed flush is intact (invariant 1);
//  - nothing reads data it did not write: sectors hold their own values or zeros (invariant 3);
//  - the pool check finds no leaked or doubly owned cluster (invariants 2 and 3);
//  - once an operation failed, no later flush or metadata change reports success.
// The operation whose commit was in flight when the fault struck has an unknown outcome (its
// RocksDB batch can be durable although the commit failed, e.g. power lost after the WAL sync but
// before RocksDB's directory sync), so the oracle also keeps the world in which that operation took
// effect; the recovered pool must match one of the two.
#include <gtest/gtest.h>
#include <rocksdb/file_system.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include "engine/engine.h"
#include "engine/io/fault_device.h"
#include "engine/io/memory_device.h"
#include "engine/pool/fault_fs.h"

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

// What the oracle knows: volumes, live snapshots, deleted snapshots.
struct World {
  std::map<std::string, VolumeModel> models;
  std::map<uint64_t, SnapshotModel> snapshots;  // live frozen images
  std::set<uint64_t> deleted_snapshots;
  uint64_t capacity_bytes = 0;  // of the pool: grows with expansions
};

enum class Fault { kPowerCut, kDataDiskDies, kMetadataDiskDies };

const char* FaultName(Fault f) {
  switch (f) {
    case Fault::kPowerCut:
      return "power cut";
    case Fault::kDataDiskDies:
      return "data disk dies";
    case Fault::kMetadataDiskDies:
      return "metadata disk dies";
  }
  return "?";
}

// One power supply for the data device and the metadata file system: every operation of either
// draws from one budget, and the first operation past it cuts both at once.
class PowerSupply {
 public:
  PowerSupply(FaultDevice* device, FaultInjectingFs* fs) : device_(device), fs_(fs) {}
  // `ops` more operations of either device succeed; the next one has no power.
  void Arm(uint64_t ops) {
    std::lock_guard lock(mu_);
    armed_ = true;
    left_ = ops;
  }
  // Stops counting (the reboot after the cut: the devices work again).
  void Disarm() {
    std::lock_guard lock(mu_);
    armed_ = false;
  }
  // Called before every operation of either device; false once the power is off. Cutting both
  // under the lock makes the cut one instant: an operation that draws after it finds both dead.
  bool Draw() {
    std::lock_guard lock(mu_);
    if (!armed_) return true;
    if (left_ > 0) {
      --left_;
      return true;
    }
    if (!off_) {
      off_ = true;
      device_->FailAllAfter(0);
      fs_->FailAllAfter(0);
    }
    return false;
  }

 private:
  FaultDevice* const device_;
  FaultInjectingFs* const fs_;
  std::mutex mu_;
  bool armed_ = false;
  bool off_ = false;
  uint64_t left_ = 0;
};

// The pool device as the engine sees it: the FaultDevice, on the power supply.
class PoweredDevice final : public BlockDevice {
 public:
  PoweredDevice(std::shared_ptr<FaultDevice> inner, PowerSupply* supply)
      : inner_(std::move(inner)), supply_(supply) {}
  DeviceGeometry geometry() const override { return inner_->geometry(); }
  Result<uint64_t> Grow(uint64_t size_bytes) override { return inner_->Grow(size_bytes); }
  std::string kind() const override { return inner_->kind(); }
  // Without power the FaultDevice is dead already and fails the operation itself.
  void Submit(IoRequest* req) override {
    static_cast<void>(supply_->Draw());
    inner_->Submit(req);
  }
  Status ReadSync(uint64_t offset, void* buf, uint64_t length) override {
    static_cast<void>(supply_->Draw());
    return inner_->ReadSync(offset, buf, length);
  }
  Status WriteSync(uint64_t offset, const void* buf, uint64_t length) override {
    static_cast<void>(supply_->Draw());
    return inner_->WriteSync(offset, buf, length);
  }
  Status FlushSync() override {
    static_cast<void>(supply_->Draw());
    return inner_->FlushSync();
  }
  Status DiscardSync(uint64_t offset, uint64_t length) override {
    static_cast<void>(supply_->Draw());
    return inner_->DiscardSync(offset, length);
  }

 private:
  const std::shared_ptr<FaultDevice> inner_;
  PowerSupply* const supply_;
};

class Harness {
 public:
  Harness(std::string dir, uint64_t seed) : dir_(std::move(dir)), rng_(seed) {
    inner_ = std::make_shared<MemoryDevice>(kPoolSize);
    fault_ = std::make_shared<FaultDevice>(inner_, seed);
    // Syncs are modelled, not done: the model decides what a power cut keeps.
    meta_fs_ =
        std::make_shared<FaultInjectingFs>(rocksdb::FileSystem::Default(), /*sync_base=*/false);
    supply_ = std::make_unique<PowerSupply>(fault_.get(), meta_fs_.get());
    device_ = std::make_shared<PoweredDevice>(fault_, supply_.get());
  }

  EngineOptions Options() {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = kPoolSize;
    o.commit_interval_ms = 0;
    o.verify_map_checkpoints = true;
    o.default_cluster_size = rng_() % 2 ? 64 * kKiB : 16 * kKiB;
    o.device_factory = [dev = device_](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
      return std::shared_ptr<BlockDevice>(dev);
    };
    o.metadata_fs_factory = [fs = meta_fs_](const std::string&) {
      return std::shared_ptr<rocksdb::FileSystem>(fs);
    };
    return o;
  }

  // Arms the seed's fault to strike after a random number of operations.
  void ArmFault(Fault fault) {
    switch (fault) {
      case Fault::kPowerCut:
        meta_fs_->SetPowerGate([supply = supply_.get()] { return supply->Draw(); });
        supply_->Arm(20 + rng_() % 600);
        break;
      case Fault::kDataDiskDies:
        fault_->FailAllAfter(20 + rng_() % 400);
        break;
      case Fault::kMetadataDiskDies:
        meta_fs_->FailAllAfter(rng_() % 120);
        break;
    }
  }
  // The crash: both disks are dead for everything the shutdown attempts.
  void KillBoth() {
    fault_->FailAllAfter(0);
    meta_fs_->FailAllAfter(0);
  }

  // Power loss and reboot of both disks; returns what the metadata lost. `random`: the device
  // keeps a random, partly torn subset of its unflushed writes and each metadata file a random
  // part of its unsynced data; else both lose all of it.
  Result<FaultInjectingFs::CutReport> CutPower(bool random, uint64_t seed) {
    supply_->Disarm();
    fault_->PowerCut(random ? FaultDevice::CutMode::kRandom : FaultDevice::CutMode::kDropAll);
    return meta_fs_->PowerCut(
        random ? FaultInjectingFs::CutMode::kRandom : FaultInjectingFs::CutMode::kDropAll, seed);
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

  // One request submitted without waiting (its buffer and promise live here).
  struct AsyncIo {
    VolumeIo io;
    std::promise<Status> done;
    AlignedBuffer buf;
    uint64_t tag = 0;
  };
  std::unique_ptr<AsyncIo> WriteAsync(Volume& v, uint64_t off, uint64_t len, uint64_t tag,
                                      uint64_t key) {
    auto a = std::make_unique<AsyncIo>();
    a->buf = AllocateAligned(len);
    a->tag = tag;
    for (uint64_t s = 0; s < len / kSector; ++s)
      FillSector(a->buf.get() + s * kSector, tag, key, off / kSector + s);
    a->io.op = VolumeOp::kWrite;
    a->io.offset = off;
    a->io.length = len;
    a->io.buf = a->buf.get();
    a->io.ctx = &a->done;
    a->io.done = [](VolumeIo* d) {
      static_cast<std::promise<Status>*>(d->ctx)->set_value(d->status);
    };
    VolumeIo* io = &a->io;
    v.reactor()->Post([&v, io] { v.Submit(io); });
    return a;
  }

  std::string dir_;
  std::mt19937_64 rng_;
  std::shared_ptr<MemoryDevice> inner_;
  std::shared_ptr<FaultDevice> fault_;
  std::shared_ptr<FaultInjectingFs> meta_fs_;
  std::unique_ptr<PowerSupply> supply_;
  std::shared_ptr<PoweredDevice> device_;
};

// Checks the recovered engine against one world; returns what differs (empty: it matches).
std::string CheckWorld(Engine& engine, Harness& h, const World& w, uint8_t* buf) {
  auto pool = engine.GetPool("default");
  if (!pool.ok()) return "pool: " + pool.status().ToString();
  if (pool->capacity_bytes != w.capacity_bytes) {
    return "pool capacity " + std::to_string(pool->capacity_bytes) + ", expected " +
           std::to_string(w.capacity_bytes);
  }
  auto vols = engine.ListVolumes();
  if (vols.size() != w.models.size()) {
    return std::to_string(vols.size()) + " volumes, expected " + std::to_string(w.models.size());
  }
  uint8_t expect[kSector];
  for (const auto& [name, m] : w.models) {
    auto info = engine.GetVolume(name);
    if (!info.ok()) return "volume " + name + ": " + info.status().ToString();
    if (info->size_bytes != m.size) {
      return "volume " + name + " has size " + std::to_string(info->size_bytes) + ", expected " +
             std::to_string(m.size);
    }
    auto handle = engine.OpenVolume(name);
    if (!handle.ok()) return "open " + name + ": " + handle.status().ToString();
    Status st = h.Io((*handle)->volume(), VolumeOp::kRead, 0, m.size, buf, 0);
    if (!st.ok()) return "read " + name + ": " + st.ToString();
    for (uint64_t s = 0; s < m.size / kSector; ++s) {
      bool matched = false;
      for (uint64_t tag : m.sectors[s]) {
        FillSector(expect, tag, m.key, s);
        if (std::memcmp(expect, buf + s * kSector, kSector) == 0) {
          matched = true;
          break;
        }
      }
      if (!matched) {
        std::string cands;
        for (uint64_t t : m.sectors[s]) cands += std::to_string(t) + " ";
        return "volume " + name + " sector " + std::to_string(s) +
               " holds none of its possible values {" + cands + "} (durable value first)";
      }
    }
  }
  // Snapshots never change: each reads exactly what it held when it was taken.
  for (const auto& [id, snap] : w.snapshots) {
    auto view = engine.OpenImage("default", id);
    if (!view.ok()) return "snapshot image " + std::to_string(id) + ": " + view.status().ToString();
    Volume& v = (*view)->volume();
    const uint64_t size = snap.content.size() * kSector;
    if (v.size_bytes() != size) return "snapshot image " + std::to_string(id) + " changed size";
    Status st = h.Io(v, VolumeOp::kRead, 0, size, buf, 0);
    if (!st.ok()) return "read snapshot image " + std::to_string(id) + ": " + st.ToString();
    for (uint64_t s = 0; s < snap.content.size(); ++s) {
      FillSector(expect, snap.content[s], 0, s);
      if (std::memcmp(expect, buf + s * kSector, kSector) != 0) {
        return "snapshot image " + std::to_string(id) + " of " + snap.volume +
               " changed at sector " + std::to_string(s);
      }
    }
  }
  for (uint64_t id : w.deleted_snapshots) {
    auto img = engine.GetImage("default", id);
    if (img.ok() && !img->deleted)
      return "deleted snapshot image " + std::to_string(id) + " came back";
  }
  return "";
}

// A snapshot taken at its cut under load (FreezeVolume with a durable callback, as `shale
// snapshot create` does): writes in flight at the call may or may not be in it, writes issued
// after it returns must not be, and writes acknowledged before it must be. The writes use
// disjoint 64 KiB slots so that their order never matters. Reading the image back (which waits
// for its commit) resolves what it holds; once read, it must survive the crash exactly so.
struct LoadedSnapshot {
  Status status;                  // freeze, commit or read-back failure
  bool chain_limit = false;       // refused: nothing happened
  std::optional<uint64_t> image;  // known and read back
  std::vector<uint64_t> content;
};

LoadedSnapshot SnapshotUnderLoad(Harness& h, Engine& engine, Volume& vol, VolumeModel& m,
                                 uint64_t& next_tag, bool& write_failed) {
  LoadedSnapshot out;
  auto& rng = h.rng_;
  const uint64_t slot = 64 * kKiB;
  std::vector<uint64_t> slots(m.size / slot);
  for (uint64_t i = 0; i < slots.size(); ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  const size_t before_n = 1 + rng() % 4, after_n = 1 + rng() % 3;
  const std::vector<uint64_t> acked = m.Latest();
  std::vector<uint64_t> in_flight_tag(acked.size(), 0);  // per sector, 0: none
  std::vector<std::unique_ptr<Harness::AsyncIo>> writes;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (size_t i = 0; i < before_n + after_n; ++i) {
    const uint64_t len = 4096 * (1 + rng() % 16);
    ranges.emplace_back(slots[i] * slot + (rng() % (slot / 4096 - len / 4096 + 1)) * 4096, len);
  }
  auto submit = [&](size_t i) {
    writes.push_back(h.WriteAsync(vol, ranges[i].first, ranges[i].second, next_tag++, m.key));
  };
  for (size_t i = 0; i < before_n; ++i) {
    submit(i);
    for (uint64_t s = ranges[i].first / kSector; s < (ranges[i].first + ranges[i].second) / kSector;
         ++s)
      in_flight_tag[s] = writes.back()->tag;
  }
  std::promise<Status> durable;
  auto id =
      engine.FreezeVolume(m.name, nullptr, [&durable](const Status& st) { durable.set_value(st); });
  for (size_t i = before_n; i < ranges.size(); ++i) submit(i);
  for (size_t i = 0; i < writes.size(); ++i) {
    Status st = writes[i]->done.get_future().get();
    m.Wrote(ranges[i].first, ranges[i].second, writes[i]->tag);
    if (!st.ok()) {
      EXPECT_TRUE(st.code() == StatusCode::kIoError || st.code() == StatusCode::kNoSpace) << st;
      write_failed = true;
    }
  }
  if (!id.ok()) {
    out.chain_limit = id.status().code() == StatusCode::kFailedPrecondition;
    out.status = id.status();
    return out;
  }
  auto view = engine.OpenImage("default", *id);  // waits for the commit
  auto durable_future = durable.get_future();
  if (durable_future.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    ADD_FAILURE() << "the freeze's durable callback never ran";
    return out;
  }
  const Status committed = durable_future.get();
  if (!committed.ok()) {
    EXPECT_FALSE(view.ok()) << "a snapshot whose commit failed was opened";
    out.status = committed;
    return out;
  }
  if (!view.ok()) {
    out.status = view.status();
    return out;
  }
  AlignedBuffer buf = AllocateAligned(acked.size() * kSector);
  Status st = h.Io((*view)->volume(), VolumeOp::kRead, 0, acked.size() * kSector, buf.get(), 0);
  if (!st.ok()) {
    out.status = st;
    return out;
  }
  uint8_t expect[kSector];
  for (uint64_t s = 0; s < acked.size(); ++s) {
    uint64_t found = UINT64_MAX;
    std::vector<uint64_t> candidates{acked[s]};
    if (in_flight_tag[s] != 0) candidates.push_back(in_flight_tag[s]);
    for (uint64_t tag : candidates) {
      FillSector(expect, tag, m.key, s);
      if (std::memcmp(expect, buf.get() + s * kSector, kSector) == 0) found = tag;
    }
    if (found == UINT64_MAX) {
      ADD_FAILURE() << "snapshot taken under load holds at sector " << s
                    << " neither the acknowledged value nor a write in flight at the cut";
      return out;
    }
    out.content.push_back(found);
  }
  out.image = *id;
  // What the volume holds durably now: the snapshot's content, except where a write that
  // landed after the cut (issued after it, or in flight and left out of it) may have.
  std::vector<uint64_t> later_tag(acked.size(), 0);
  for (size_t i = before_n; i < ranges.size(); ++i) {
    for (uint64_t s = ranges[i].first / kSector; s < (ranges[i].first + ranges[i].second) / kSector;
         ++s)
      later_tag[s] = writes[i]->tag;
  }
  for (uint64_t s = 0; s < acked.size(); ++s) {
    if (in_flight_tag[s] != 0 && out.content[s] != in_flight_tag[s])
      later_tag[s] = in_flight_tag[s];
    m.sectors[s] = {out.content[s]};
    if (later_tag[s] != 0) m.sectors[s].push_back(later_tag[s]);
  }
  return out;
}

void RunSeed(const std::string& dir, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  Harness h(dir, seed);
  auto& rng = h.rng_;
  World world;
  // The world in which the operation that failed first took effect (see the file comment).
  std::optional<World> alt;
  uint64_t next_tag = 1, next_key = 1, next_clone = 1;
  bool device_dead = false;  // some operation failed: a disk is dead (or the pool refuses)
  const Fault fault =
      rng() % 2 ? Fault::kPowerCut : (rng() % 2 ? Fault::kDataDiskDies : Fault::kMetadataDiskDies);
  SCOPED_TRACE(std::string("fault: ") + FaultName(fault));
  const bool verbose = std::getenv("SHALE_CRASH_VERBOSE") != nullptr;

  // A control operation with effect `apply` on the oracle succeeded: apply it (to both worlds).
  auto succeeded = [&](const std::function<void(World&)>& apply) {
    apply(world);
    if (alt) apply(*alt);
  };
  // A control operation failed: only a dead disk (an I/O error, then the pool refusing further
  // commits) may explain that. If it is the first failure, its commit was in flight when the disk
  // died: keep the world where it took effect (`apply`, null when it changes nothing we check).
  auto failed = [&](const Status& st, const std::function<void(World&)>& apply) {
    ASSERT_TRUE(st.code() == StatusCode::kIoError || device_dead) << st;
    if (!device_dead && apply) {
      alt = world;
      apply(*alt);
    }
    device_dead = true;
  };

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
      world.models[name] = m;
    }
    world.capacity_bytes = engine->GetPool("default")->capacity_bytes;
    h.ArmFault(fault);

    AlignedBuffer buf = AllocateAligned(256 * kKiB);
    const int ops = 60 + static_cast<int>(rng() % 120);
    for (int i = 0; i < ops && !::testing::Test::HasFatalFailure(); ++i) {
      // Pick a volume (maybe the scratch one).
      std::vector<std::string> names;
      for (auto& [n, m] : world.models) names.push_back(n);
      VolumeModel& m = world.models[names[rng() % names.size()]];
      const std::string name = m.name;
      auto handle = engine->OpenVolume(m.name);
      ASSERT_TRUE(handle.ok());
      Volume& vol = (*handle)->volume();
      const unsigned kind = rng() % 100;
      if (verbose) {
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
        if (st.ok() && fua) {
          ASSERT_FALSE(device_dead) << "a FUA write succeeded after a failure";
          m.Durable(off, len);
        }
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
        auto r = engine->ResizeVolume(name, new_size);
        auto apply = [name, new_size](World& w) { w.models[name].Resize(new_size); };
        // After a failed commit the pool refuses metadata changes until it is reopened; a
        // metadata-only change can still succeed while only the data disk is dead.
        if (r.ok()) {
          succeeded(apply);
        } else {
          failed(r.status(), apply);
        }
      } else if (kind < 76) {  // snapshot at its cut, under load
        bool write_failed = false;
        const bool dead_before = device_dead;
        LoadedSnapshot snap = SnapshotUnderLoad(h, *engine, vol, m, next_tag, write_failed);
        if (write_failed) device_dead = true;
        if (snap.chain_limit) continue;
        if (snap.image) {
          ASSERT_FALSE(dead_before) << "a snapshot's commit succeeded after the device died";
          succeeded([id = *snap.image, s = SnapshotModel{name, snap.content}](World& w) {
            w.snapshots[id] = s;
          });
        } else if (!snap.status.ok()) {
          // If it committed, an image we do not know of exists: nothing checked changes.
          failed(snap.status, nullptr);
        }
      } else if (kind < 82) {  // snapshot: freeze the volume (also makes its writes durable)
        handle->reset();
        auto id = engine->FreezeVolume(name);
        if (id.ok()) {
          ASSERT_FALSE(device_dead) << "a freeze succeeded after the device died";
          m.FlushAll();
          world.snapshots[*id] = SnapshotModel{name, m.Latest()};
        } else {
          if (id.status().code() == StatusCode::kFailedPrecondition) continue;  // chain limit
          // If it committed, an image we do not know of exists: nothing checked changes.
          failed(id.status(), nullptr);
        }
      } else if (kind < 86) {  // delete a snapshot
        handle->reset();
        if (world.snapshots.empty()) continue;
        auto it =
            std::next(world.snapshots.begin(), static_cast<long>(rng() % world.snapshots.size()));
        const uint64_t id = it->first;
        Status st = engine->DeleteImage("default", id);
        auto apply = [id](World& w) {
          w.deleted_snapshots.insert(id);
          w.snapshots.erase(id);
        };
        if (st.ok()) {
          succeeded(apply);
        } else {
          failed(st, apply);
        }
      } else if (kind < 89) {  // clone a snapshot (writable or read-only)
        handle->reset();
        if (world.snapshots.empty() || world.models.size() >= 6) continue;
        auto it =
            std::next(world.snapshots.begin(), static_cast<long>(rng() % world.snapshots.size()));
        const std::string clone = "clone" + std::to_string(next_clone++);
        auto c = engine->CreateVolumeFromImage({.name = clone}, it->first);
        VolumeModel cm;
        cm.name = clone;
        cm.key = next_key++;
        cm.Become(it->second.content);
        auto apply = [clone, cm](World& w) { w.models[clone] = cm; };
        if (c.ok()) {
          succeeded(apply);
        } else if (c.status().code() != StatusCode::kFailedPrecondition) {
          failed(c.status(), apply);
        }
      } else if (kind < 92) {  // revert the volume to one of its ancestor snapshots
        handle->reset();
        std::vector<uint64_t> ancestors;
        auto head = engine->VolumeHeadImage(name);
        ASSERT_TRUE(head.ok());
        for (auto img = engine->GetImage("default", *head); img.ok() && img->parent != 0;
             img = engine->GetImage("default", img->parent)) {
          if (world.snapshots.count(img->parent)) ancestors.push_back(img->parent);
        }
        if (ancestors.empty()) continue;
        const uint64_t target = ancestors[rng() % ancestors.size()];
        Status st = engine->RevertVolume(name, target);
        auto apply = [name, content = world.snapshots[target].content](World& w) {
          w.models[name].Become(content);
        };
        if (st.ok()) {
          succeeded(apply);
        } else {
          failed(st, apply);
        }
      } else if (kind < 94) {  // flatten (a clone's copy commits: its state becomes durable)
        handle->reset();
        auto head = engine->VolumeHeadImage(name);
        ASSERT_TRUE(head.ok());
        auto img = engine->GetImage("default", *head);
        const bool has_parent = img.ok() && img->parent != 0;  // else flatten is a no-op
        Status st = engine->FlattenVolume(name);
        if (st.ok()) {
          if (has_parent) m.FlushAll();
        } else {
          failed(st, nullptr);  // the content is the same either way
        }
      } else if (kind < 96) {  // create or delete the scratch volume
        handle->reset();
        if (world.models.count("scratch")) {
          Status st = engine->DeleteVolume("scratch");
          auto apply = [](World& w) { w.models.erase("scratch"); };
          if (st.ok()) {
            succeeded(apply);
          } else {
            failed(st, apply);
          }
        } else {
          auto created = engine->CreateVolume({.name = "scratch", .size_bytes = 4 * kMiB});
          VolumeModel sm;
          sm.name = "scratch";
          sm.key = next_key++;
          sm.Resize(4 * kMiB);
          auto apply = [sm](World& w) { w.models["scratch"] = sm; };
          if (created.ok()) {
            succeeded(apply);
          } else {
            failed(created.status(), apply);
          }
        }
      } else if (kind < 98) {  // expand the pool online (the device grows by 1..8 MiB)
        auto pool = engine->GetPool("default");
        ASSERT_TRUE(pool.ok());
        const uint64_t cluster = pool->cluster_size;
        const uint64_t device = kPoolDataOffset + pool->capacity_bytes +
                                kMiB * (1 + rng() % 8);  // whole MiB: whole clusters
        if (device > 4 * kPoolSize) continue;
        Result<PoolInfo> grown = engine->ExpandPool("default", device);
        const uint64_t capacity = (device - kPoolDataOffset) / cluster * cluster;
        auto apply = [capacity](World& w) { w.capacity_bytes = capacity; };
        if (grown.ok()) {
          ASSERT_EQ(grown->capacity_bytes, capacity);
          succeeded(apply);
        } else {
          failed(grown.status(), apply);
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
    // Crash: both disks are dead for everything the shutdown attempts.
    h.KillBoth();
    engine->Shutdown().IgnoreError();
  }
  if (::testing::Test::HasFatalFailure()) return;
  auto cut = h.CutPower(/*random=*/seed % 2 != 0, seed);
  ASSERT_TRUE(cut.ok()) << cut.status();
  if (verbose) {
    std::fprintf(stderr, "fault %s; metadata cut: %llu files deleted, %llu bytes dropped\n",
                 FaultName(fault), static_cast<unsigned long long>(cut->files_deleted),
                 static_cast<unsigned long long>(cut->bytes_dropped));
  }

  auto engine_or = Engine::Open(h.Options());
  ASSERT_TRUE(engine_or.ok()) << engine_or.status();
  auto engine = std::move(engine_or).value();
  AlignedBuffer buf = AllocateAligned(kVolumeSize * 4);
  const std::string problem = CheckWorld(*engine, h, world, buf.get());
  if (!problem.empty()) {
    const std::string alt_problem =
        alt ? CheckWorld(*engine, h, *alt, buf.get()) : "(no operation was in flight)";
    if (!alt_problem.empty()) {
      FAIL() << problem << "; and where the operation in flight took effect: " << alt_problem;
    }
    if (verbose) std::fprintf(stderr, "the failed operation in flight took effect\n");
  }
  auto report = engine->CheckPool("default");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->clean()) << report->problems.front();
}

TEST(EngineCrashTest, RandomWorkloadsSurvivePowerCuts) {
  // On tmpfs when there is one: the fault models decide what survives a cut, so real syncs (and
  // ext4's journal) would only cost time.
  std::string tmpl_str =
      std::string(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + "/shale-crash-XXXXXX";
  char* tmpl = tmpl_str.data();
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
