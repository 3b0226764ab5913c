// Engine-level benchmark: drives a volume through the volume API (no network) and fio with
// io_uring on the same pool file, in turn, in the same run, and prints IOPS, p99 latency and the
// median ratio engine/raw per workload (see ../../shared/BENCH.md for why ratios).
//
//   shale-engine-bench [--dir DIR] [--volume-size 2G] [--runtime 5] [--reps 3]
//                      [--cluster-size 64K] [--io-backend io_uring] [--workloads ...] [--json FILE]
//
// The generator runs on the volume's reactor thread itself (like fio's single job on one core),
// keeping `iodepth` requests in flight; every completion resubmits until the deadline.
#include <malloc.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/common/assert.h"
#include "engine/common/log.h"
#include "engine/engine.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct Workload {
  std::string name;
  std::string rw;  // fio --rw, or "stride": block 0 of every 64 KiB (one write per cluster)
  uint64_t bs;
  unsigned iodepth;
};

struct Sample {
  double iops = 0;
  double p99_us = 0;
};

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// Keeps iodepth requests in flight on the volume's reactor until the deadline.
class Generator {
 public:
  // runtime_ns == 0: issue exactly span / bs requests (a sequential fill), then stop.
  // flush_every > 0: a FLUSH after every flush_every completed requests (like a journaling
  // filesystem committing), at most one in flight.
  // op_limit > 0: stop after that many requests.
  Generator(Volume& vol, const Workload& w, uint64_t span, uint64_t runtime_ns,
            uint64_t flush_every = 0, uint64_t op_limit = 0)
      : vol_(vol),
        w_(w),
        span_(span),
        runtime_ns_(runtime_ns),
        flush_every_(flush_every),
        rng_(42) {
    op_limit_ = op_limit != 0 ? op_limit : (runtime_ns == 0 ? span / w.bs : UINT64_MAX);
    slots_.resize(w.iodepth);
    // One buffer region for all slots, like fio's (iodepth x bs in one allocation), 2 MiB aligned
    // and eligible for transparent huge pages: a 1 MiB buffer made of scattered 4 KiB pages
    // needs 256 segments, more than a virtio disk's max_segments (254), so the kernel would
    // split every 1 MiB request in two — a cost of the client's buffers, not of the engine.
    const size_t region = RoundUp(static_cast<uint64_t>(w.bs) * w.iodepth, kHugePage);
    region_.reset(static_cast<uint8_t*>(std::aligned_alloc(kHugePage, region)));
    SHALE_CHECK(region_ != nullptr, "bench: cannot allocate ", region, " bytes of I/O buffers");
    madvise(region_.get(), region, MADV_HUGEPAGE);  // advisory: a kernel without THP ignores it
    std::memset(region_.get(), 0x5a, region);
    for (size_t i = 0; i < slots_.size(); ++i) {
      slots_[i].buf = region_.get() + i * w.bs;
      slots_[i].gen = this;
    }
    lat_ns_.reserve(4'000'000);
  }

  // Sequential and stride workloads start at `offset` instead of 0.
  void SkipTo(uint64_t offset) { cursor_ = offset; }

  Sample Run() {
    std::promise<void> done;
    done_ = &done;
    vol_.reactor()->Post([this] {
      start_ = NowNs();
      deadline_ = runtime_ns_ == 0 ? UINT64_MAX : start_ + runtime_ns_;
      for (auto& s : slots_) {
        if (issued_ < op_limit_) Issue(s);
      }
    });
    done.get_future().wait();
    Sample out;
    out.iops = static_cast<double>(completed_) / (static_cast<double>(end_ - start_) / 1e9);
    if (!lat_ns_.empty()) {
      size_t k = lat_ns_.size() * 99 / 100;
      std::nth_element(lat_ns_.begin(), lat_ns_.begin() + static_cast<long>(k), lat_ns_.end());
      out.p99_us = static_cast<double>(lat_ns_[k]) / 1000.0;
    }
    return out;
  }

 private:
  static constexpr size_t kHugePage = 2 * 1024 * 1024;
  static uint64_t RoundUp(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }
  struct FreeRegion {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, FreeRegion> region_;  // every slot's buffer
  struct Slot {
    VolumeIo io;
    uint8_t* buf = nullptr;  // in region_
    uint64_t issued_ns = 0;
    Generator* gen = nullptr;
  };

  void Issue(Slot& s) {
    s.io = VolumeIo{};
    const bool read = w_.rw == "randread" || w_.rw == "read";
    s.io.op = read ? VolumeOp::kRead : VolumeOp::kWrite;
    s.io.length = w_.bs;
    s.io.buf = s.buf;
    if (w_.rw == "randread" || w_.rw == "randwrite") {
      s.io.offset = (rng_() % (span_ / w_.bs)) * w_.bs;
    } else if (w_.rw == "stride" || w_.rw == "stride2") {
      s.io.offset = cursor_;
      cursor_ = (cursor_ + (w_.rw == "stride" ? 64 : 128) * kKiB) % span_;
    } else {
      s.io.offset = cursor_;
      cursor_ = (cursor_ + w_.bs) % span_;
    }
    s.io.ctx = &s;
    s.io.done = [](VolumeIo* io) {
      auto* slot = static_cast<Slot*>(io->ctx);
      slot->gen->OnDone(*slot);
    };
    ++inflight_;
    ++issued_;
    s.issued_ns = NowNs();
    vol_.Submit(&s.io);
  }

  void OnDone(Slot& s) {
    --inflight_;
    const uint64_t now = NowNs();
    if (!s.io.status.ok()) {
      std::fprintf(stderr, "I/O error: %s\n", s.io.status.ToString().c_str());
      std::exit(1);
    }
    ++completed_;
    lat_ns_.push_back(now - s.issued_ns);
    if (flush_every_ != 0 && !flush_inflight_ && completed_ % flush_every_ == 0) {
      flush_inflight_ = true;
      ++inflight_;
      flush_io_ = VolumeIo{};
      flush_io_.op = VolumeOp::kFlush;
      flush_io_.ctx = this;
      flush_io_.done = [](VolumeIo* io) {
        auto* g = static_cast<Generator*>(io->ctx);
        g->flush_inflight_ = false;
        --g->inflight_;
        if (g->inflight_ == 0 && (NowNs() >= g->deadline_ || g->issued_ >= g->op_limit_)) {
          g->end_ = NowNs();
          g->done_->set_value();
        }
      };
      vol_.Submit(&flush_io_);
    }
    if (now < deadline_ && issued_ < op_limit_) {
      Issue(s);
    } else if (inflight_ == 0) {
      end_ = now;
      done_->set_value();
    }
  }

  Volume& vol_;
  Workload w_;
  uint64_t span_;
  uint64_t runtime_ns_;
  uint64_t flush_every_ = 0;
  bool flush_inflight_ = false;
  VolumeIo flush_io_;
  std::mt19937_64 rng_;
  std::vector<Slot> slots_;
  std::vector<uint64_t> lat_ns_;
  uint64_t cursor_ = 0;
  uint64_t inflight_ = 0, completed_ = 0, issued_ = 0, op_limit_ = UINT64_MAX;
  uint64_t start_ = 0, deadline_ = 0, end_ = 0;
  std::promise<void>* done_ = nullptr;
};

// fio with io_uring, O_DIRECT, on the pool file's data area (where the volume's clusters are).
Sample RunFio(const std::string& file, uint64_t offset, uint64_t span, const Workload& w,
              unsigned runtime_s) {
  std::string out =
      fs::temp_directory_path() / ("shale-bench-fio-" + std::to_string(getpid()) + ".json");
  std::string cmd =
      "fio --name=raw --filename=" + file + " --offset=" + std::to_string(offset) +
      " --size=" + std::to_string(span) + " --rw=" + w.rw + " --bs=" + std::to_string(w.bs) +
      " --iodepth=" + std::to_string(w.iodepth) +
      " --ioengine=io_uring --direct=1 --time_based --runtime=" + std::to_string(runtime_s) +
      " --randrepeat=0 --norandommap --output-format=json --output=" + out + " > /dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    std::fprintf(stderr, "fio failed: %s\n", cmd.c_str());
    std::exit(1);
  }
  std::ifstream in(out);
  json j = json::parse(in);
  fs::remove(out);
  const json& job = j["jobs"][0];
  const json& side = (w.rw == "randread" || w.rw == "read") ? job["read"] : job["write"];
  Sample s;
  s.iops = side["iops"].get<double>();
  s.p99_us = side["clat_ns"]["percentile"]["99.000000"].get<double>() / 1000.0;
  return s;
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += e.file_size();
  }
  return total;
}

// The engine options of every study: metadata under `dir`/data, no default pool.
EngineOptions BenchEngineOptions(const std::string& dir, IoBackend backend) {
  EngineOptions o;
  o.data_dir = dir + "/data";
  o.create_default_pool = false;
  o.device.backend = backend;
  return o;
}

// For each cluster size: first-write sequential throughput, first-touch random 4 KiB writes
// with a flush every 256 writes, space amplification of those random writes, and the metadata
// cost (in-memory map, RocksDB) of a fully written volume.
int ClusterStudy(const std::string& dir, uint64_t vsize, unsigned runtime, IoBackend backend) {
  std::printf(
      "| cluster | seq first write MiB/s | sparse rand 4K write IOPS (flush/256) | space used / "
      "written (128 MiB over 16 GiB) | map RAM per GiB | RocksDB per GiB | randread 4K IOPS |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (uint64_t cs : {16 * kKiB, 64 * kKiB, 256 * kKiB}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const EngineOptions o = BenchEngineOptions(dir, backend);
    auto engine = std::move(Engine::Open(o)).value();
    const uint64_t sparse_size = 16 * kGiB, sparse_writes = 32768;  // 128 MiB spread over 16 GiB
    const uint64_t pool_size = vsize + sparse_writes * cs + 64 * kMiB;
    if (!engine
             ->CreatePool({.name = "p",
                           .device_path = dir + "/pool.img",
                           .size_bytes = pool_size,
                           .cluster_size = static_cast<uint32_t>(cs)})
             .ok())
      return 1;
    if (!engine->CreateVolume({.name = "seq", .size_bytes = vsize, .pool = "p"}).ok()) return 1;
    if (!engine->CreateVolume({.name = "rand", .size_bytes = sparse_size, .pool = "p"}).ok())
      return 1;
    auto seq = std::move(engine->OpenVolume("seq")).value();
    auto rnd = std::move(engine->OpenVolume("rand")).value();
    Sample fill = Generator(seq->volume(), {"fill", "write", 1 * kMiB, 8}, vsize, 0, 64).Run();
    std::promise<Status> c1;
    seq->reactor()->Post([&] { seq->volume().Commit([&](const Status& s) { c1.set_value(s); }); });
    (void)c1.get_future().get();
    size_t map_bytes = 0;
    seq->reactor()->RunSync([&] { map_bytes = seq->volume().map().memory_bytes(); });
    const uint64_t meta_bytes = DirBytes(o.data_dir + "/pools");
    Generator rg(rnd->volume(), {"randwrite", "randwrite", 4096, 32}, sparse_size, 0, 256,
                 sparse_writes);
    Sample r = rg.Run();
    const double written = static_cast<double>(sparse_writes) * 4096.0;
    const double amp =
        static_cast<double>(rnd->volume().allocated_bytes()) / std::max(written, 1.0);
    Sample rr = Generator(seq->volume(), {"randread", "randread", 4096, 32}, vsize,
                          static_cast<uint64_t>(runtime) * 1'000'000'000)
                    .Run();
    const double gib = static_cast<double>(vsize) / static_cast<double>(kGiB);
    std::printf("| %s | %.0f | %.0f | %.2f | %.2f MiB | %.2f MiB | %.0f |\n",
                FormatSize(cs).c_str(), fill.iops, r.iops, amp,
                static_cast<double>(map_bytes) / gib / kMiB,
                static_cast<double>(meta_bytes) / gib / kMiB, rr.iops);
    std::fflush(stdout);
  }
  fs::remove_all(dir);
  return 0;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[k];
}

// A fresh engine on `dir` with pool "p" for the snapshot study: sparse 72 GiB so that a fully
// mapped 64 GiB volume fits (only written blocks use disk), or preallocated 8 GiB of real disk
// space (the 64 GiB fully mapped case is then skipped). nullptr on failure.
std::unique_ptr<Engine> OpenSnapshotPool(const std::string& dir, IoBackend backend,
                                         bool preallocate) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const EngineOptions o = BenchEngineOptions(dir, backend);
  auto engine = std::move(Engine::Open(o)).value();
  const uint64_t pool_size = preallocate ? 8 * kGiB : 72 * kGiB;
  if (preallocate) {
    // Written zeros, not fallocate: fallocate leaves "unwritten" extents that ext4 converts on
    // every first write, which would be measured as Shale's cost.
    std::string cmd = "dd if=/dev/zero of=" + dir +
                      "/pool.img bs=4M count=" + std::to_string(pool_size / (4 * kMiB)) +
                      " oflag=direct status=none";
    if (std::system(cmd.c_str()) != 0) return nullptr;
  }
  if (!engine
           ->CreatePool({.name = "p",
                         .device_path = dir + "/pool.img",
                         .size_bytes = preallocate ? 0 : pool_size})
           .ok()) {
    return nullptr;
  }
  return engine;
}

struct FreezeCase {
  const char* label;
  uint64_t size;
  bool fill;
};

// One row of the freeze latency table: a volume of c.size (fully mapped when c.fill), 50
// snapshots each after 256 random 4 KiB writes; then the snapshots and the volume are deleted.
// 1 on failure.
int FreezeLatencyRow(Engine& engine, const FreezeCase& c) {
  std::string name =
      std::string("lat-") + (c.size > kGiB ? "64g" : "1g") + (c.fill ? "-full" : "-empty");
  if (!engine.CreateVolume({.name = name, .size_bytes = c.size, .pool = "p"}).ok()) return 1;
  auto h = std::move(engine.OpenVolume(name)).value();
  if (c.fill) {
    // Every cluster mapped: 1 GiB fully written; 64 GiB with one 4 KiB block per 64 KiB
    // cluster (4 GiB of data) — a freeze's cost depends on the mapping state, not the bytes.
    if (c.size <= kGiB) {
      Generator(h->volume(), {"fill", "write", 1 * kMiB, 8}, c.size, 0).Run();
    } else {
      // A strided fill: block 0 of every cluster.
      Generator(h->volume(), {"fill", "write", 4096, 32}, c.size, 0, 0, 0).Run();
    }
    std::promise<Status> flushed;  // a writer flushes; the freezes measure steady state
    h->reactor()->Post(
        [&] { h->volume().Commit([&](const Status& st) { flushed.set_value(st); }); });
    if (!flushed.get_future().get().ok()) return 1;
  }
  std::vector<double> lat, pause;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 50; ++i) {
    // Some fresh writes before each snapshot, so every freeze has dirty mappings to commit.
    Generator(h->volume(), {"dirty", "randwrite", 4096, 32}, c.size, 0, 0, 256).Run();
    const uint64_t t0 = NowNs();
    auto id = engine.FreezeVolume(name);
    const uint64_t t1 = NowNs();
    if (!id.ok()) return 1;
    ids.push_back(*id);
    lat.push_back(static_cast<double>(t1 - t0) / 1e6);
    pause.push_back(static_cast<double>(h->volume().counters().last_write_pause_ns.load()) / 1e6);
  }
  std::printf("| %s | %s | %.2f | %.2f | %.3f |\n", c.label, c.fill ? "fully mapped" : "empty",
              Percentile(lat, 0.5), Percentile(lat, 0.99), Percentile(pause, 0.99));
  std::fflush(stdout);
  h.reset();
  for (uint64_t id : ids) {
    Status st = engine.DeleteImage("p", id);
    if (!st.ok()) {
      std::fprintf(stderr, "delete snapshot: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  Status st = engine.DeleteVolume(name);
  if (!st.ok()) {
    std::fprintf(stderr, "delete volume: %s\n", st.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "# pool free after %s: %s\n", name.c_str(),
               FormatSize(engine.GetPool("p")->free_bytes).c_str());
  return 0;
}

// 4 KiB random writes (QD 32, flush every 256) on the fully written volume "cow" of `size`
// bytes, before and right after a snapshot, with the write amplification after it. 1 on failure.
int SnapshotWriteCost(Engine& engine, Volume& vol, uint64_t size, unsigned runtime) {
  const uint64_t rt = static_cast<uint64_t>(runtime) * 1'000'000'000;
  Sample before = Generator(vol, {"randwrite", "randwrite", 4096, 32}, size, rt, 256).Run();
  const uint64_t meta_before = engine.GetPool("p")->metadata_bytes_written;
  const uint64_t dev_before = vol.counters().device_bytes_written.load();
  const uint64_t client_before = vol.counters().bytes_written.load();
  auto snap = engine.FreezeVolume("cow");
  if (!snap.ok()) return 1;
  Sample after = Generator(vol, {"randwrite", "randwrite", 4096, 32}, size, rt, 256).Run();
  std::promise<Status> committed;
  vol.reactor()->Post([&] { vol.Commit([&](const Status& st) { committed.set_value(st); }); });
  (void)committed.get_future().get();
  const double dev = static_cast<double>(vol.counters().device_bytes_written.load() - dev_before);
  const double client = static_cast<double>(vol.counters().bytes_written.load() - client_before);
  const double meta =
      static_cast<double>(engine.GetPool("p")->metadata_bytes_written - meta_before);
  std::printf(
      "\n## 4 KiB random writes (QD 32, flush every 256) on a fully written 1 GiB volume\n\n");
  std::printf("| phase | IOPS | p99 us |\n|---|---|---|\n");
  std::printf("| before the snapshot | %.0f | %.1f |\n| first %u s after it | %.0f | %.1f |\n",
              before.iops, before.p99_us, runtime, after.iops, after.p99_us);
  std::printf(
      "\nafter/before = %.3f; write amplification after the snapshot: data %.3f (device bytes / "
      "client "
      "bytes), data + metadata written %.3f\n",
      after.iops / before.iops, dev / client, (dev + meta) / client);
  return 0;
}

// 4 KiB random reads of the volume "cow" (`size` bytes, one snapshot so far), then again after
// 63 more (a 64-deep chain), each preceded by rewriting 1024 random 4 KiB blocks, so that the
// map's fragments come from all 65 images. 1 on failure.
int SnapshotChainReads(Engine& engine, Volume& vol, uint64_t size, unsigned runtime) {
  const uint64_t rt = static_cast<uint64_t>(runtime) * 1'000'000'000;
  Sample flat = Generator(vol, {"randread", "randread", 4096, 32}, size, rt).Run();
  for (int i = 0; i < 63; ++i) {
    // 1024 random blocks per generation: ~4 images per cluster on average at the end, within
    // the pool (each generation's first write to a cluster takes a fresh cluster).
    Generator(vol, {"scatter", "randwrite", 4096, 32}, size, 0, 0, 1024).Run();
    if (!engine.FreezeVolume("cow").ok()) return 1;
  }
  Sample deep = Generator(vol, {"randread", "randread", 4096, 32}, size, rt).Run();
  std::printf(
      "\n## 4 KiB random reads (QD 32), 1 GiB volume\n\n| chain | IOPS | p99 us "
      "|\n|---|---|---|\n");
  std::printf("| no snapshot | %.0f | %.1f |\n| 64 snapshots | %.0f | %.1f |\n", flat.iops,
              flat.p99_us, deep.iops, deep.p99_us);
  std::printf("\n64 snapshots / none = %.3f\n", deep.iops / flat.iops);
  return 0;
}

// Snapshot costs: freeze latency and write pause on 1 GiB and 64 GiB volumes, empty and fully
// mapped; 4 KiB random writes right after a snapshot vs before, with write amplification; 4 KiB
// random reads with 64 snapshots in the chain vs none.
int SnapshotStudy(const std::string& dir, unsigned runtime, IoBackend backend, bool preallocate) {
  std::unique_ptr<Engine> engine = OpenSnapshotPool(dir, backend, preallocate);
  if (engine == nullptr) return 1;
  std::printf(
      "## freeze latency (50 snapshots each, 256 random 4 KiB writes before each), %s pool "
      "file\n\n",
      preallocate ? "preallocated" : "sparse");
  std::printf(
      "| volume | state | freeze p50 ms | freeze p99 ms | write pause p99 ms "
      "|\n|---|---|---|---|---|\n");
  for (FreezeCase c :
       {FreezeCase{"1 GiB", 1 * kGiB, false}, FreezeCase{"1 GiB", 1 * kGiB, true},
        FreezeCase{"64 GiB", 64 * kGiB, false}, FreezeCase{"64 GiB", 64 * kGiB, true}}) {
    if (preallocate && c.fill && c.size > kGiB) continue;
    if (FreezeLatencyRow(*engine, c) != 0) return 1;
  }

  const uint64_t size = 1 * kGiB;
  if (!engine->CreateVolume({.name = "cow", .size_bytes = size, .pool = "p"}).ok()) return 1;
  auto h = std::move(engine->OpenVolume("cow")).value();
  Generator(h->volume(), {"fill", "write", 1 * kMiB, 8}, size, 0).Run();
  if (SnapshotWriteCost(*engine, h->volume(), size, runtime) != 0) return 1;
  if (SnapshotChainReads(*engine, h->volume(), size, runtime) != 0) return 1;
  h.reset();
  engine.reset();
  fs::remove_all(dir);
  return 0;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// The workloads --workloads names; nullptr for an unknown name.
const Workload* FindWorkload(const std::string& name) {
  static const std::map<std::string, Workload> all = {
      {"randread-4k", {"randread-4k", "randread", 4096, 32}},
      {"randwrite-4k", {"randwrite-4k", "randwrite", 4096, 32}},
      {"read-1m", {"read-1m", "read", 1 * kMiB, 8}},
      {"write-1m", {"write-1m", "write", 1 * kMiB, 8}},
  };
  auto it = all.find(name);
  return it == all.end() ? nullptr : &it->second;
}

// One sample per rep of a workload, through the engine and through fio.
struct Row {
  std::vector<Sample> engine, raw;
};

// `reps` rounds of every workload of `names`, the engine on `vol` then fio on the same bytes of
// `pool_file` (from `data_offset`), one progress line each. 2 for an unknown workload, 1 when
// the engine's data cannot be made durable before fio runs.
int CompareWithFio(Volume& vol, const std::string& pool_file, uint64_t data_offset, uint64_t vsize,
                   const std::vector<std::string>& names, unsigned runtime, unsigned reps,
                   std::map<std::string, Row>& rows) {
  for (unsigned rep = 0; rep < reps; ++rep) {
    for (const auto& n : names) {
      const Workload* w = FindWorkload(n);
      if (w == nullptr) {
        std::fprintf(stderr, "unknown workload %s\n", n.c_str());
        return 2;
      }
      Sample e = Generator(vol, *w, vsize, static_cast<uint64_t>(runtime) * 1'000'000'000).Run();
      // Make sure the engine is idle and its data durable before fio touches the file.
      std::promise<Status> flushed;
      vol.reactor()->Post([&] { vol.Commit([&](const Status& s) { flushed.set_value(s); }); });
      if (!flushed.get_future().get().ok()) return 1;
      Sample r = RunFio(pool_file, data_offset, vsize, *w, runtime);
      rows[n].engine.push_back(e);
      rows[n].raw.push_back(r);
      std::printf(
          "# rep %u %-13s engine %9.0f IOPS p99 %7.1f us | fio io_uring %9.0f IOPS p99 %7.1f us | "
          "ratio %.3f\n",
          rep + 1, n.c_str(), e.iops, e.p99_us, r.iops, r.p99_us, e.iops / r.iops);
      std::fflush(stdout);
    }
  }
  return 0;
}

// Prints the table of medians of `rows` (in the order of `names`) and returns it as JSON.
json PrintComparison(const std::vector<std::string>& names, std::map<std::string, Row>& rows,
                     unsigned reps) {
  json results = json::array();
  std::printf(
      "\n| workload | shale engine IOPS | p99 us | fio io_uring IOPS | p99 us | engine/raw (median "
      "of %u) |\n",
      reps);
  std::printf("|---|---|---|---|---|---|\n");
  for (const auto& n : names) {
    const Row& row = rows[n];
    std::vector<double> ei, ep, ri, rp, ratio;
    for (size_t i = 0; i < row.engine.size(); ++i) {
      ei.push_back(row.engine[i].iops);
      ep.push_back(row.engine[i].p99_us);
      ri.push_back(row.raw[i].iops);
      rp.push_back(row.raw[i].p99_us);
      ratio.push_back(row.engine[i].iops / row.raw[i].iops);
    }
    std::printf("| %s | %.0f | %.1f | %.0f | %.1f | %.3f |\n", n.c_str(), Median(ei), Median(ep),
                Median(ri), Median(rp), Median(ratio));
    results.push_back({{"workload", n},
                       {"engine_iops", Median(ei)},
                       {"engine_p99_us", Median(ep)},
                       {"raw_iops", Median(ri)},
                       {"raw_p99_us", Median(rp)},
                       {"ratio", Median(ratio)}});
  }
  return results;
}

// The default run: a fresh pool on `dir` (cluster size `csize`) with one volume of `vsize`,
// preconditioned by a sequential fill, measured against fio on the same pool file; writes the
// JSON to `json_out` when given. Exit code.
int EngineVsFio(const std::string& dir, uint64_t vsize, uint64_t csize, IoBackend backend,
                const std::vector<std::string>& names, unsigned runtime, unsigned reps,
                const std::string& json_out) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string pool_file = dir + "/pool.img";
  const EngineOptions o = BenchEngineOptions(dir, backend);
  auto engine_or = Engine::Open(o);
  if (!engine_or.ok()) {
    std::fprintf(stderr, "%s\n", engine_or.status().ToString().c_str());
    return 1;
  }
  auto engine = std::move(engine_or).value();
  const uint64_t pool_size = vsize + vsize / 8 + 64 * kMiB;
  auto pool = engine->CreatePool({.name = "bench",
                                  .device_path = pool_file,
                                  .size_bytes = pool_size,
                                  .cluster_size = static_cast<uint32_t>(csize)});
  if (!pool.ok()) {
    std::fprintf(stderr, "%s\n", pool.status().ToString().c_str());
    return 1;
  }
  if (!engine->CreateVolume({.name = "bench", .size_bytes = vsize, .pool = "bench"}).ok()) return 1;
  auto handle = std::move(engine->OpenVolume("bench")).value();
  Volume& vol = handle->volume();

  std::printf("# precondition: writing %s sequentially through the volume\n",
              FormatSize(vsize).c_str());
  Sample fill = Generator(vol, {"fill", "write", 1 * kMiB, 8}, vsize, 0).Run();
  std::printf("# precondition: %.0f MiB/s\n", fill.iops);
  // The volume's clusters were allocated in order from the start of the data area, so fio on
  // [data_offset, data_offset + size) of the pool file touches the same bytes.
  const uint64_t data_offset = kPoolDataOffset;
  if (vol.allocated_bytes() != vsize) {
    std::fprintf(stderr, "precondition left the volume partly unallocated\n");
    return 1;
  }
  std::map<std::string, Row> rows;
  if (int rc = CompareWithFio(vol, pool_file, data_offset, vsize, names, runtime, reps, rows);
      rc != 0) {
    return rc;
  }
  json results = PrintComparison(names, rows, reps);
  if (!json_out.empty()) std::ofstream(json_out) << results.dump(2) << "\n";
  handle.reset();
  engine.reset();
  fs::remove_all(dir);
  return 0;
}

// VmRSS of this process, in bytes (0 if /proc cannot say), after malloc_trim: memory the heap
// holds free (RocksDB frees each flushed memtable to it) is given back first, so that the figure
// is what is in use rather than what the heap happened to keep.
uint64_t RssBytes() {
  malloc_trim(0);
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

// One 4 KiB write at `first` and every 64 KiB after it, `count` of them (QD 32), in `span` bytes.
// The generator (whose latency log grows 8 bytes per write) is gone before the caller measures
// memory: it would add 128 MiB per TiB mapped to the slopes.
// With every_other, every other cluster (128 KiB apart).
void MapStride(Volume& vol, uint64_t span, uint64_t first, uint64_t count,
               bool every_other = false) {
  Generator g(vol, {"map", every_other ? "stride2" : "stride", 4096, 32}, span, 0, 0, count);
  g.SkipTo(first);
  g.Run();
}

struct MemoryPoint {
  uint64_t mapped, rss, map_bytes;
  MetadataStore::MemoryUsage rocks;
};

// The memory study's table and slopes between its two points. RocksDB's memtables and block
// cache are bounded by their configured sizes (fixed costs, however much is mapped), but how full
// they happen to be at each point moves the RSS slope by up to ~30 MiB / 96 GiB = 300 MiB per TiB
// at the default size: the second slope takes them out. Table readers (index blocks of the SST
// files) grow with the data and stay in.
void PrintMemoryPoints(const std::vector<MemoryPoint>& p) {
  auto mib = [](uint64_t b) { return static_cast<double>(b) / kMiB; };
  std::printf(
      "| mapped | RSS | cluster map | RocksDB memtables | table readers | block cache "
      "|\n|---|---|---|---|---|---|\n");
  for (const MemoryPoint& m : p) {
    std::printf("| %.0f GiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB |\n",
                static_cast<double>(m.mapped) / kGiB, mib(m.rss), mib(m.map_bytes),
                mib(m.rocks.memtables), mib(m.rocks.table_readers), mib(m.rocks.block_cache));
  }
  auto bounded = [](const MemoryPoint& m) {
    return static_cast<double>(m.rocks.memtables + m.rocks.block_cache);
  };
  const double span = static_cast<double>(p[1].mapped - p[0].mapped);
  const double tib = static_cast<double>(kTiB);
  const double rss = static_cast<double>(p[1].rss) - static_cast<double>(p[0].rss);
  const double net = rss - (bounded(p[1]) - bounded(p[0]));
  const double map = static_cast<double>(p[1].map_bytes) / static_cast<double>(p[1].mapped);
  std::printf(
      "\nslope: %.0f MiB of RSS per TiB mapped; %.0f MiB without the memtables and block cache "
      "(cluster map alone: %.0f MiB per TiB)\n",
      rss / span * tib / kMiB, net / span * tib / kMiB, map * tib / kMiB);
  std::fflush(stdout);
}

// The memory study (issue 17; docs/performance.md, "Memory per TiB mapped"): the engine's
// resident memory with one volume mapped at big/4 and at big (one 4 KiB write per 64 KiB cluster:
// what the maps hold depends on mapped clusters, not on bytes), the slope per TiB between the two
// (fixed costs such as RocksDB's memtables cancel), the cluster map's own bytes, and the time to
// open the engine and the volume again (the map loaded from the metadata) with its memory then;
// then the snapshot phase (SnapshotMemory). With `keep`, the work directory stays as the restart
// found it (no snapshot phase), to profile `--study memory-reopen --dir DIR` on it.
int MemoryStudy(const std::string& dir, IoBackend backend, uint64_t big, bool keep,
                bool interleave) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  const EngineOptions o = BenchEngineOptions(dir, backend);
  auto engine = std::move(Engine::Open(o)).value();
  if (!engine
           ->CreatePool(
               // Room for the snapshot phase's copies of a quarter's clusters.
               {.name = "p",
                .device_path = dir + "/pool.img",
                .size_bytes = big + big / 4 + 8 * kGiB})
           .ok() ||
      !engine->CreateVolume({.name = "m", .size_bytes = big, .pool = "p"}).ok()) {
    std::fprintf(stderr, "memory study: cannot create the pool or volume in %s\n", dir.c_str());
    return 1;
  }
  auto h = std::move(engine->OpenVolume("m")).value();
  std::vector<MemoryPoint> points;
  uint64_t done = 0;
  for (const uint64_t span : {big / 4, big}) {
    // Clusters [done, span) get their first write; then a commit (steady state, nothing dirty).
    const uint64_t n = (span - done) / (64 * kKiB);
    if (interleave) {
      // Even clusters, then odd ones: no two neighbours in neighbouring physical clusters, so
      // the map checkpoint holds one record per cluster (its worst case: no runs).
      MapStride(h->volume(), span, done, (n + 1) / 2, true);
      MapStride(h->volume(), span, done + 64 * kKiB, n / 2, true);
    } else {
      MapStride(h->volume(), span, done, n);
    }
    done = span;
    std::promise<Status> flushed;
    h->reactor()->Post(
        [&] { h->volume().Commit([&](const Status& st) { flushed.set_value(st); }); });
    if (!flushed.get_future().get().ok()) return 1;
    uint64_t map_bytes = 0;
    h->reactor()->RunSync([&] { map_bytes = h->volume().map().memory_bytes(); });
    points.push_back({span, RssBytes(), map_bytes, h->volume().pool()->meta().memory_usage()});
  }
  h.reset();
  engine.reset();
  PrintMemoryPoints(points);
  // The restart and the snapshot phase in processes of their own (this one's heap keeps what the
  // first engine freed).
  const std::string cmd = "/proc/" + std::to_string(getpid()) + "/exe --dir " + dir +
                          " --io-backend " + std::string(IoBackendName(backend)) + " --study ";
  // The first restart reads the map checkpoint the shutdown above wrote; the second scans (what
  // a restart after a crash does).
  int rc = std::system((cmd + "memory-reopen").c_str());
  if (rc == 0) rc = std::system((cmd + "memory-reopen-scan").c_str());
  if (keep) return rc == 0 ? 0 : 1;
  if (rc == 0) rc = std::system((cmd + "memory-snapshot").c_str());
  fs::remove_all(dir);
  return rc == 0 ? 0 : 1;
}

// The memory study's worst case for random 4 KiB writes after a snapshot: a snapshot of volume
// "m" (`mapped` bytes, one fragment per cluster), then one 4 KiB write into every cluster of the
// first quarter, beside the block each holds. Each such cluster then has two fragments (the
// snapshot's and the head's): the map's multi-fragment form, the most a cluster can have after one
// snapshot however many random writes hit it. Reports the growth of RSS and of the map per TiB of
// clusters so written (in a process of its own, which opens the engine in `dir`). 1 on failure.
int SnapshotMemory(const std::string& dir, IoBackend backend) {
  auto opened = Engine::Open(BenchEngineOptions(dir, backend));
  if (!opened.ok()) return 1;
  Engine& engine = **opened;
  auto handle = engine.OpenVolume("m");
  if (!handle.ok()) return 1;
  VolumeHandle& h = **handle;
  const MetadataStore& meta = h.volume().pool()->meta();
  const uint64_t rss_open = RssBytes(), memtables_open = meta.memory_usage().memtables;
  uint64_t map0 = 0, map1 = 0, mapped = 0;
  h.reactor()->RunSync([&] {
    map0 = h.volume().map().memory_bytes();
    h.volume().map().ForEach([&](uint64_t, std::span<const Fragment>) { mapped += 64 * kKiB; });
  });
  if (!engine.FreezeVolume("m").ok()) return 1;
  const uint64_t quarter = mapped / 4;
  MapStride(h.volume(), mapped, 4096, quarter / (64 * kKiB));
  std::promise<Status> committed;
  h.reactor()->Post([&] { h.volume().Commit([&](const Status& st) { committed.set_value(st); }); });
  if (!committed.get_future().get().ok()) return 1;
  uint64_t multi = 0;
  h.reactor()->RunSync([&] {
    map1 = h.volume().map().memory_bytes();
    multi = h.volume().map().multi_fragment_clusters();
  });
  const double per_tib = static_cast<double>(kTiB) / static_cast<double>(quarter) / kMiB;
  const double rss = static_cast<double>(RssBytes()) - static_cast<double>(rss_open);
  const double memtables =
      static_cast<double>(meta.memory_usage().memtables) - static_cast<double>(memtables_open);
  std::printf(
      "after a snapshot, one 4 KiB write into each cluster of %.0f GiB (%llu clusters with two "
      "fragments): RSS %+.0f MiB per TiB so written, %+.0f MiB without the memtables; cluster map "
      "%+.0f MiB per TiB\n",
      static_cast<double>(quarter) / kGiB, static_cast<unsigned long long>(multi), rss * per_tib,
      (rss - memtables) * per_tib, static_cast<double>(map1 - map0) * per_tib);
  return 0;
}

// The second half of the memory study: opens the engine in `dir` and volume "m" (its map loaded)
// and says how long that took and the process's memory then.
int MemoryReopen(const std::string& dir, IoBackend backend, bool scan) {
  EngineOptions o = BenchEngineOptions(dir, backend);
  o.map_checkpoints = !scan;
  const uint64_t rss_before = RssBytes();
  const uint64_t t0 = NowNs();
  auto engine = Engine::Open(o);
  const uint64_t t_engine = NowNs();
  if (!engine.ok()) return 1;
  auto h = (*engine)->OpenVolume("m");
  const uint64_t t1 = NowNs();
  if (!h.ok()) return 1;
  uint64_t mapped = 0;
  (*h)->reactor()->RunSync([&] {
    (*h)->volume().map().ForEach([&](uint64_t, std::span<const Fragment>) { mapped += 64 * kKiB; });
  });
  std::printf(
      "restart, %s (Engine::Open + OpenVolume in a new process, %.0f GiB mapped): %.2f s (%.2f "
      "+ %.2f); RSS %.1f MiB (%.1f MiB before the open)\n",
      scan ? "the map scanned (as after a crash)" : "from the map checkpoint (clean shutdown)",
      static_cast<double>(mapped) / kGiB, static_cast<double>(t1 - t0) / 1e9,
      static_cast<double>(t_engine - t0) / 1e9, static_cast<double>(t1 - t_engine) / 1e9,
      static_cast<double>(RssBytes()) / kMiB, static_cast<double>(rss_before) / kMiB);
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"Shale engine benchmark: volume API vs fio io_uring on the same pool file"};
  std::string dir = "/var/tmp/shale-engine-bench";
  std::string volume_size_s = "2G", cluster_size_s = "64K", backend = "io_uring", json_out;
  unsigned runtime = 5, reps = 3;
  std::vector<std::string> names = {"randread-4k", "randwrite-4k", "read-1m", "write-1m"};
  app.add_option("--dir", dir, "work directory (pool file and metadata; removed at the end)");
  app.add_option("--volume-size", volume_size_s, "volume size (preconditioned fully)");
  app.add_option("--cluster-size", cluster_size_s, "pool cluster size");
  app.add_option("--io-backend", backend, "io_uring or libaio");
  app.add_option("--runtime", runtime, "seconds per measurement");
  app.add_option("--reps", reps, "repetitions (median of ratios is reported)");
  app.add_option("--workloads", names, "subset of randread-4k randwrite-4k read-1m write-1m");
  app.add_option("--json", json_out, "also write results as JSON to this file");
  std::string study;
  bool preallocate = false;
  app.add_flag("--preallocate", preallocate, "snapshot study: preallocate the pool file");
  app.add_option("--study", study, "run a study instead: cluster-size | snapshots | memory");
  std::string mapped_s = "256G";
  app.add_option("--mapped", mapped_s, "memory study: the larger mapped size (the smaller: 1/4)");
  bool keep = false;
  app.add_flag("--keep", keep,
               "memory study: keep --dir after the restart (no snapshot phase), to profile "
               "--study memory-reopen on it");
  bool interleave = false;
  app.add_flag("--interleave", interleave,
               "memory study: map even clusters, then odd ones (no runs in the map checkpoint)");
  CLI11_PARSE(app, argc, argv);

  auto vsize = ParseSize(volume_size_s);
  auto csize = ParseSize(cluster_size_s);
  auto be = ParseIoBackend(backend);
  if (!vsize.ok() || !csize.ok() || !be.ok()) {
    std::fprintf(stderr, "bad option\n");
    return 2;
  }
  log::Init("warn");
  if (study == "cluster-size") return ClusterStudy(dir, *vsize, runtime, *be);
  if (study == "snapshots") return SnapshotStudy(dir, runtime, *be, preallocate);
  if (study == "memory-reopen" || study == "memory-reopen-scan") {
    return MemoryReopen(dir, *be, study == "memory-reopen-scan");
  }
  if (study == "memory-snapshot") return SnapshotMemory(dir, *be);
  if (study == "memory") {
    auto mapped = ParseSize(mapped_s);
    if (!mapped.ok() || *mapped < kGiB) {
      std::fprintf(stderr, "bad --mapped\n");
      return 2;
    }
    return MemoryStudy(dir, *be, *mapped, keep, interleave);
  }
  if (!study.empty()) {
    std::fprintf(stderr, "unknown study %s\n", study.c_str());
    return 2;
  }
  return EngineVsFio(dir, *vsize, *csize, *be, names, runtime, reps, json_out);
}

}  // namespace
}  // namespace shale

int main(int argc, char** argv) { return shale::Main(argc, argv); }
