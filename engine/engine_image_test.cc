// Layered images: freeze (snapshot), clone, read-only views, delete with merge / free / defer,
// revert, flatten, space accounting and the pool check, through the Engine API.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <random>

#include "engine/engine.h"
#include "engine/io/memory_device.h"
#include "engine/pool/keys.h"
#include "engine/volume/volume_test_util.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
using testing::Pattern;
using testing::RunVolumeIo;

class EngineImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-image-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 1 * kGiB;
    o.commit_interval_ms = 0;
    o.verify_map_checkpoints = true;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
  }
  void TearDown() override {
    engine_.reset();
    fs::remove_all(dir_);
  }

  std::shared_ptr<VolumeHandle> Open(const std::string& name) {
    auto h = engine_->OpenVolume(name);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : nullptr;
  }
  Status Write(Volume& v, uint64_t off, const std::vector<uint8_t>& data) {
    AlignedBuffer buf = AllocateAligned(data.size());
    std::memcpy(buf.get(), data.data(), data.size());
    return RunVolumeIo(v, VolumeOp::kWrite, off, data.size(), buf.get());
  }
  std::vector<uint8_t> Read(Volume& v, uint64_t off, uint64_t len) {
    AlignedBuffer buf = AllocateAligned(len);
    Status st = RunVolumeIo(v, VolumeOp::kRead, off, len, buf.get());
    EXPECT_TRUE(st.ok()) << st;
    return std::vector<uint8_t>(buf.get(), buf.get() + len);
  }
  void ExpectClean() {
    auto r = engine_->CheckPool("default");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->clean()) << r->problems.front();
  }
  uint64_t FreeBytes() { return engine_->GetPool("default")->free_bytes; }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineImageTest, SnapshotKeepsOldDataWhileTheVolumeAndClonesDiverge) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 16 * kMiB}).ok());
  auto a = Pattern(2 * kMiB, 1), b = Pattern(2 * kMiB, 2), c = Pattern(1 * kMiB, 3);
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());  // pattern A, not even flushed
  }
  auto snap = engine_->FreezeVolume("v");
  ASSERT_TRUE(snap.ok()) << snap.status();
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, b).ok());
    EXPECT_EQ(Read(h->volume(), 0, b.size()), b);
  }
  // The snapshot, exported read-only, still reads A and refuses writes.
  auto view = engine_->OpenImage("default", *snap);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(Read((*view)->volume(), 0, a.size()), a);
  AlignedBuffer buf = AllocateAligned(4096);
  EXPECT_EQ(RunVolumeIo((*view)->volume(), VolumeOp::kWrite, 0, 4096, buf.get()).code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(engine_->DeleteImage("default", *snap).code(), StatusCode::kBusy)
      << "exported images stay";
  view->reset();
  // Sizes out of range are refused with what is wrong (a size near UINT64_MAX must not wrap
  // into "smaller than its source").
  auto huge = engine_->CreateVolumeFromImage({.name = "huge", .size_bytes = UINT64_MAX}, *snap);
  EXPECT_EQ(huge.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("exceeds the maximum"), std::string_view::npos)
      << huge.status();
  EXPECT_EQ(
      engine_->CreateVolumeFromImage({.name = "tiny", .size_bytes = 4096}, *snap).status().code(),
      StatusCode::kInvalidArgument);
  // A writable clone reads A, diverges, and the snapshot does not change.
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "clone"}, *snap).ok());
  auto ro = engine_->CreateVolumeFromImage({.name = "ro", .read_only = true}, *snap);
  ASSERT_TRUE(ro.ok());
  EXPECT_TRUE(ro->read_only);
  {
    auto h = Open("clone");
    EXPECT_EQ(h->volume().size_bytes(), 16 * kMiB);
    EXPECT_EQ(Read(h->volume(), 0, a.size()), a);
    ASSERT_TRUE(Write(h->volume(), 512 * kKiB, c).ok());
    auto expect = a;
    std::copy(c.begin(), c.end(), expect.begin() + 512 * kKiB);
    EXPECT_EQ(Read(h->volume(), 0, a.size()), expect);
    auto r = Open("ro");
    EXPECT_EQ(RunVolumeIo(r->volume(), VolumeOp::kWrite, 0, 4096, buf.get()).code(),
              StatusCode::kPermissionDenied);
    EXPECT_EQ(Read(r->volume(), 0, a.size()), a);
  }
  view = engine_->OpenImage("default", *snap);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(Read((*view)->volume(), 0, a.size()), a);
  view->reset();
  ExpectClean();
}

TEST_F(EngineImageTest, SmallWriteAfterASnapshotCopiesNothing) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 8 * kMiB}).ok());
  auto base = Pattern(8 * kMiB, 7);
  auto h = Open("v");
  ASSERT_TRUE(Write(h->volume(), 0, base).ok());
  ASSERT_TRUE(engine_->FreezeVolume("v").ok());
  const uint64_t bytes_before = h->volume().counters().bytes_written.load();
  ASSERT_TRUE(Write(h->volume(), 128 * kKiB + 4096, Pattern(4096, 8)).ok());
  EXPECT_EQ(h->volume().counters().bytes_written.load() - bytes_before, 4096u);
  auto u = engine_->GetVolumeUsage("v");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->written_bytes, 4096u) << "only the written block lives in the new cluster";
  EXPECT_EQ(u->owned_bytes, 64 * kKiB);
  EXPECT_EQ(u->shared_bytes, 8 * kMiB - 4096);
  auto expect = base;
  auto p = Pattern(4096, 8);
  std::copy(p.begin(), p.end(), expect.begin() + 128 * kKiB + 4096);
  EXPECT_EQ(Read(h->volume(), 0, 8 * kMiB), expect);
  // A sector write into a shared block copies just that block (read-modify-write of 4 KiB).
  auto s = Pattern(512, 9);
  ASSERT_TRUE(Write(h->volume(), 1 * kMiB + 1024, s).ok());
  std::copy(s.begin(), s.end(), expect.begin() + 1 * kMiB + 1024);
  EXPECT_EQ(Read(h->volume(), 0, 8 * kMiB), expect);
  EXPECT_EQ(engine_->GetVolumeUsage("v")->written_bytes, 8192u);
}

// 64 snapshots with interleaved writes; every snapshot reads exactly its own content; deletes
// in random order keep every survivor correct; the pool check is clean after each step; at
// the end all space is back.
TEST_F(EngineImageTest, SixtyFourSnapshotsReadTheirOwnContentThroughRandomDeletes) {
  constexpr uint64_t kSize = 4 * kMiB;
  const uint64_t free_at_start = FreeBytes();
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = kSize}).ok());
  std::mt19937_64 rng(7);
  std::vector<uint8_t> current(kSize, 0);
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> snaps;  // image id, expected content
  {
    auto h = Open("v");
    for (int i = 0; i < 64; ++i) {
      for (int w = 0; w < 4; ++w) {
        const uint64_t len = 4096 * (1 + rng() % 32);
        const uint64_t off = (rng() % ((kSize - len) / 4096 + 1)) * 4096;
        auto p = Pattern(len, static_cast<uint32_t>(i * 10 + w));
        ASSERT_TRUE(Write(h->volume(), off, p).ok());
        std::copy(p.begin(), p.end(), current.begin() + static_cast<long>(off));
      }
      if (i % 9 == 4) {  // some discards too
        ASSERT_TRUE(RunVolumeIo(h->volume(), VolumeOp::kDiscard, 64 * kKiB * (rng() % 60),
                                64 * kKiB, nullptr)
                        .ok());
      }
      current = Read(h->volume(), 0, kSize);  // discard granularity is the block: reread
      auto id = engine_->FreezeVolume("v");
      ASSERT_TRUE(id.ok()) << id.status();
      snaps.emplace_back(*id, current);
    }
  }
  EXPECT_EQ(engine_->GetImage("default", *engine_->VolumeHeadImage("v"))->depth, 65u);
  auto check_all = [&] {
    for (auto& [id, content] : snaps) {
      auto view = engine_->OpenImage("default", id);
      ASSERT_TRUE(view.ok()) << view.status();
      ASSERT_EQ(Read((*view)->volume(), 0, kSize), content) << "snapshot image " << id;
    }
    auto h = Open("v");
    ASSERT_EQ(Read(h->volume(), 0, kSize), current);
  };
  check_all();
  ExpectClean();
  std::shuffle(snaps.begin(), snaps.end(), rng);
  while (!snaps.empty()) {
    ASSERT_TRUE(engine_->DeleteImage("default", snaps.back().first).ok());
    snaps.pop_back();
    if (snaps.size() % 8 == 0) {
      check_all();
      ExpectClean();
    }
  }
  EXPECT_EQ(engine_->GetImage("default", *engine_->VolumeHeadImage("v"))->depth, 1u);
  ASSERT_TRUE(engine_->DeleteVolume("v").ok());
  ExpectClean();
  EXPECT_EQ(FreeBytes(), free_at_start);
}

// Point-in-time: a writer fills block i with value i, one write after another, while snapshots
// are taken. Snapshot S must hold every write acknowledged before FreezeVolume was called and
// none issued after it returned, and it must read the same later.
TEST_F(EngineImageTest, SnapshotsArePointInTimeUnderConcurrentWrites) {
  constexpr uint64_t kBlocks = 4096;
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = kBlocks * 4096}).ok());
  auto h = Open("v");
  std::atomic<uint64_t> acked{0}, issued{0};
  std::thread writer([&] {
    AlignedBuffer buf = AllocateAligned(4096);
    for (uint64_t i = 0; i < kBlocks; ++i) {
      std::memset(buf.get(), 0, 4096);
      std::memcpy(buf.get(), &i, sizeof(i));
      buf.get()[4095] = 1;
      issued.store(i + 1);
      ASSERT_TRUE(RunVolumeIo(h->volume(), VolumeOp::kWrite, i * 4096, 4096, buf.get()).ok());
      acked.store(i + 1);
    }
  });
  struct Snap {
    uint64_t id, acked_before, issued_after;
  };
  std::vector<Snap> snaps;
  while (acked.load() < kBlocks && snaps.size() < 40) {
    const uint64_t before = acked.load();
    auto id = engine_->FreezeVolume("v");
    ASSERT_TRUE(id.ok()) << id.status();
    snaps.push_back({*id, before, issued.load()});
  }
  writer.join();
  ASSERT_GE(snaps.size(), 3u);
  std::map<uint64_t, std::vector<uint8_t>> first_read;
  for (int pass = 0; pass < 2; ++pass) {
    for (const Snap& s : snaps) {
      auto view = engine_->OpenImage("default", s.id);
      ASSERT_TRUE(view.ok());
      auto content = Read((*view)->volume(), 0, kBlocks * 4096);
      uint64_t written = 0;
      for (uint64_t i = 0; i < kBlocks; ++i) {
        const bool has = content[i * 4096 + 4095] == 1;
        if (has) {
          uint64_t v;
          std::memcpy(&v, &content[i * 4096], sizeof(v));
          ASSERT_EQ(v, i);
          ASSERT_EQ(written, i) << "snapshot " << s.id << " is not a prefix of the write order";
          ++written;
        }
      }
      EXPECT_GE(written, s.acked_before)
          << "an acknowledged write is missing from snapshot " << s.id;
      EXPECT_LE(written, s.issued_after)
          << "a write issued after the snapshot is in snapshot " << s.id;
      if (pass == 0) {
        first_read[s.id] = std::move(content);
      } else {
        EXPECT_EQ(first_read[s.id], content) << "snapshot " << s.id << " changed";
      }
    }
  }
  ExpectClean();
}

TEST_F(EngineImageTest, ChangedRangesBetweenSnapshots) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 4 * kMiB}).ok());
  auto h = Open("v");
  ASSERT_TRUE(Write(h->volume(), 0, Pattern(4 * kMiB, 1)).ok());
  auto s1 = engine_->FreezeVolume("v");
  ASSERT_TRUE(Write(h->volume(), 8192, Pattern(8192, 2)).ok());
  ASSERT_TRUE(RunVolumeIo(h->volume(), VolumeOp::kDiscard, 1 * kMiB, 64 * kKiB, nullptr).ok());
  auto s2 = engine_->FreezeVolume("v");
  ASSERT_TRUE(Write(h->volume(), 2 * kMiB, Pattern(4096, 3)).ok());
  h.reset();
  ASSERT_TRUE(engine_->ResizeVolume("v", 5 * kMiB).ok());
  auto s3 = engine_->FreezeVolume("v");
  ASSERT_TRUE(s1.ok() && s2.ok() && s3.ok());
  auto r = engine_->ChangedRanges("default", *s1, *s2);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::pair<uint64_t, uint64_t>> want = {{8192, 8192}, {1 * kMiB, 64 * kKiB}};
  EXPECT_EQ(*r, want);
  r = engine_->ChangedRanges("default", *s1, *s3);
  ASSERT_TRUE(r.ok());
  want = {{8192, 8192}, {1 * kMiB, 64 * kKiB}, {2 * kMiB, 4096}, {4 * kMiB, 1 * kMiB}};
  EXPECT_EQ(*r, want);
  EXPECT_EQ(engine_->ChangedRanges("default", *s2, *s1).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(EngineImageTest, ChainDepthIsLimitedWithAClearError) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = kMiB}).ok());
  for (size_t i = 0; i + 1 < Volume::kMaxChainDepth; ++i)
    ASSERT_TRUE(engine_->FreezeVolume("v").ok()) << i;
  auto r = engine_->FreezeVolume("v");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("limit of 127 snapshots"), std::string_view::npos);
}

TEST_F(EngineImageTest, DeletingASnapshotWithClonesDefersItsSpace) {
  const uint64_t free_at_start = FreeBytes();
  ASSERT_TRUE(engine_->CreateVolume({.name = "src", .size_bytes = 8 * kMiB}).ok());
  auto a = Pattern(4 * kMiB, 1);
  {
    auto h = Open("src");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());
  }
  auto snap = engine_->FreezeVolume("src");
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c1"}, *snap).ok());
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c2", .read_only = true}, *snap).ok());
  ASSERT_TRUE(engine_->DeleteImage("default", *snap).ok());  // three children: deferred
  auto info = engine_->GetImage("default", *snap);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->deleted);
  EXPECT_FALSE(engine_->OpenImage("default", *snap).ok()) << "a deleted image is not exported";
  {
    auto h = Open("c2");
    EXPECT_EQ(Read(h->volume(), 0, a.size()), a);
  }
  ExpectClean();
  ASSERT_TRUE(engine_->DeleteVolume("src").ok());
  ASSERT_TRUE(engine_->DeleteVolume("c2").ok());  // one child left: merged into c1
  EXPECT_FALSE(engine_->GetImage("default", *snap).ok());
  {
    auto h = Open("c1");
    EXPECT_EQ(Read(h->volume(), 0, a.size()), a);
    ASSERT_TRUE(Write(h->volume(), 0, Pattern(4096, 5)).ok());  // c1 now owns the data
    EXPECT_EQ(engine_->GetVolumeUsage("c1")->owned_bytes, 4 * kMiB);
  }
  ExpectClean();
  ASSERT_TRUE(engine_->DeleteVolume("c1").ok());
  ExpectClean();
  EXPECT_EQ(FreeBytes(), free_at_start);
}

TEST_F(EngineImageTest, SnapshotSpaceAccounting) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 8 * kMiB}).ok());
  auto h = Open("v");
  ASSERT_TRUE(Write(h->volume(), 0, Pattern(2 * kMiB, 1)).ok());
  auto snap = engine_->FreezeVolume("v");
  ASSERT_TRUE(snap.ok());
  // Overwrite the first MiB entirely: the snapshot alone holds it now.
  ASSERT_TRUE(Write(h->volume(), 0, Pattern(1 * kMiB, 2)).ok());
  ASSERT_TRUE(RunVolumeIo(h->volume(), VolumeOp::kFlush, 0, 0, nullptr).ok());
  auto u = engine_->GetImageUsage("default", *snap);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->data_bytes, 2 * kMiB);
  EXPECT_EQ(u->exclusive_bytes, 1 * kMiB);
  EXPECT_EQ(u->shared_bytes, 1 * kMiB);
  auto vu = engine_->GetVolumeUsage("v");
  EXPECT_EQ(vu->owned_bytes, 1 * kMiB);
  EXPECT_EQ(vu->shared_bytes, 1 * kMiB);
}

TEST_F(EngineImageTest, RevertRollsBackContentAndSize) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 4 * kMiB}).ok());
  auto a = Pattern(4 * kMiB, 1);
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());
  }
  auto s1 = engine_->FreezeVolume("v");
  ASSERT_TRUE(s1.ok());
  ASSERT_TRUE(engine_->ResizeVolume("v", 8 * kMiB).ok());
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, Pattern(8 * kMiB, 2)).ok());
    EXPECT_EQ(engine_->RevertVolume("v", *s1).code(), StatusCode::kBusy)
        << "open volumes are not reverted";
  }
  auto s2 = engine_->FreezeVolume("v");
  ASSERT_TRUE(s2.ok());
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, Pattern(1 * kMiB, 3)).ok());
  }
  ASSERT_TRUE(engine_->RevertVolume("v", *s1).ok());
  {
    auto h = Open("v");
    EXPECT_EQ(h->volume().size_bytes(), 4 * kMiB);
    EXPECT_EQ(Read(h->volume(), 0, 4 * kMiB), a);
    ASSERT_TRUE(Write(h->volume(), 0, Pattern(4096, 4)).ok());
  }
  // The later snapshot s2 still exists and reads its own content.
  auto view = engine_->OpenImage("default", *s2);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(Read((*view)->volume(), 0, 8 * kMiB), Pattern(8 * kMiB, 2));
  view->reset();
  EXPECT_FALSE(engine_->RevertVolume("v", 999).ok());
  ExpectClean();
}

TEST_F(EngineImageTest, FlattenDetachesAClonePreservingConcurrentWrites) {
  const uint64_t free_at_start = FreeBytes();
  ASSERT_TRUE(engine_->CreateVolume({.name = "src", .size_bytes = 16 * kMiB}).ok());
  auto a = Pattern(16 * kMiB, 1);
  {
    auto h = Open("src");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());
  }
  auto snap = engine_->FreezeVolume("src");
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c"}, *snap).ok());
  auto h = Open("c");
  // Writes keep coming from another thread while the flatten runs.
  std::atomic<bool> stop{false};
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> written;
  std::mutex mu;
  std::thread writer([&] {
    std::mt19937_64 rng(3);
    for (uint32_t i = 0; !stop.load() && i < 400; ++i) {
      const uint64_t off = (rng() % (16 * kMiB / 4096)) * 4096;
      auto p = Pattern(4096, 100 + i);
      ASSERT_TRUE(Write(h->volume(), off, p).ok());
      std::lock_guard lock(mu);
      written.emplace_back(off, p);
    }
  });
  std::vector<uint64_t> progress;
  Status st =
      engine_->FlattenVolume("c", [&](uint64_t done, uint64_t) { progress.push_back(done); });
  stop = true;
  writer.join();
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_GT(progress.size(), 2u);
  EXPECT_EQ(engine_->GetImage("default", *engine_->VolumeHeadImage("c"))->parent, 0u);
  auto expect = a;
  for (auto& [off, p] : written)
    std::copy(p.begin(), p.end(), expect.begin() + static_cast<long>(off));
  EXPECT_EQ(Read(h->volume(), 0, 16 * kMiB), expect);
  h.reset();
  // Source and snapshot can go; the flattened clone keeps everything.
  ASSERT_TRUE(engine_->DeleteImage("default", *snap).ok());
  ASSERT_TRUE(engine_->DeleteVolume("src").ok());
  ExpectClean();
  h = Open("c");
  EXPECT_EQ(Read(h->volume(), 0, 16 * kMiB), expect);
  h.reset();
  ASSERT_TRUE(engine_->DeleteVolume("c").ok());
  EXPECT_EQ(FreeBytes(), free_at_start);
  ExpectClean();
}

// A BackgroundAdmission test double: records each Admit and keeps its `go` until the test
// releases it, counting the done() calls the engine makes.
class QueuedAdmission final : public BackgroundAdmission {
 public:
  void Admit(uint64_t bytes, std::function<void(Done done)> go) override {
    std::lock_guard lock(mu);
    asked.push_back(bytes);
    asked_while_running += running;  // a batch must report done() before the next asks
    waiting.push_back(std::move(go));
    cv.notify_all();
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint64_t> asked;
  std::deque<std::function<void(Done)>> waiting;
  int running = 0;  // admitted, done() not yet called
  int asked_while_running = 0;
  int released = 0;
};

TEST_F(EngineImageTest, FlattenAsksAnAdmissionPerBatchAndWaitsForIt) {
  // 64 KiB clusters, 32 per batch: 81 clusters with data are 3 batches of parent bytes.
  ASSERT_EQ(engine_->GetPool("default")->cluster_size, 64 * kKiB);
  ASSERT_TRUE(engine_->CreateVolume({.name = "src", .size_bytes = 16 * kMiB}).ok());
  auto a = Pattern(5 * kMiB, 1), tail = Pattern(4096, 2);
  {
    auto h = Open("src");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());
    ASSERT_TRUE(Write(h->volume(), 12 * kMiB, tail).ok());
  }
  auto snap = engine_->FreezeVolume("src");
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c"}, *snap).ok());
  auto h = Open("c");
  QueuedAdmission adm;
  std::atomic<bool> finished{false};
  Status st;
  std::thread flatten([&] {
    st = engine_->FlattenVolume("c", nullptr, &adm);
    finished = true;
    adm.cv.notify_all();
  });
  std::vector<uint8_t> expect(16 * kMiB, 0);
  std::copy(a.begin(), a.end(), expect.begin());
  std::copy(tail.begin(), tail.end(), expect.begin() + 12 * kMiB);
  size_t batches = 0;
  for (;;) {
    std::function<void(BackgroundAdmission::Done)> go;
    {
      std::unique_lock lock(adm.mu);
      ASSERT_TRUE(adm.cv.wait_for(lock, std::chrono::seconds(30), [&] {
        return !adm.waiting.empty() || finished.load();
      })) << "flatten neither asked for admission nor finished";
      if (adm.waiting.empty()) break;
      go = std::move(adm.waiting.front());
      adm.waiting.pop_front();
    }
    ++batches;
    // While a batch waits for its turn, client writes are not parked by it.
    auto p = Pattern(4096, 50 + batches);
    const uint64_t off = (batches - 1) * 2 * kMiB + 8192;
    ASSERT_TRUE(Write(h->volume(), off, p).ok());
    std::copy(p.begin(), p.end(), expect.begin() + static_cast<long>(off));
    EXPECT_FALSE(finished.load()) << "flatten went on without its admission";
    h->reactor()->RunSync([&] {
      {
        std::lock_guard lock(adm.mu);
        ++adm.running;
      }
      go([&adm] {
        std::lock_guard lock(adm.mu);
        --adm.running;
        ++adm.released;
      });
    });
  }
  flatten.join();
  ASSERT_TRUE(st.ok()) << st;
  std::lock_guard lock(adm.mu);
  EXPECT_EQ(batches, 3u);
  EXPECT_EQ(adm.asked, (std::vector<uint64_t>{2 * kMiB, 2 * kMiB, 1 * kMiB + 4096}));
  EXPECT_EQ(adm.released, 3) << "done() once per admitted batch";
  EXPECT_EQ(adm.running, 0);
  EXPECT_EQ(adm.asked_while_running, 0);
  EXPECT_EQ(engine_->GetImage("default", *engine_->VolumeHeadImage("c"))->parent, 0u);
  EXPECT_EQ(Read(h->volume(), 0, 16 * kMiB), expect);
  h.reset();
  ASSERT_TRUE(engine_->DeleteImage("default", *snap).ok());
  ASSERT_TRUE(engine_->DeleteVolume("src").ok());
  h = Open("c");
  EXPECT_EQ(Read(h->volume(), 0, 16 * kMiB), expect);
  h.reset();
  ExpectClean();
}

TEST_F(EngineImageTest, ImagesSurviveRestart) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 4 * kMiB}).ok());
  auto a = Pattern(4 * kMiB, 1);
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, a).ok());
  }
  auto snap = engine_->FreezeVolume("v");
  ASSERT_TRUE(snap.ok());
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c"}, *snap).ok());
  {
    auto h = Open("v");
    ASSERT_TRUE(Write(h->volume(), 0, Pattern(4096, 2)).ok());
  }
  engine_.reset();
  EngineOptions o;
  o.data_dir = dir_ + "/data";
  o.commit_interval_ms = 0;
  engine_ = std::move(Engine::Open(o)).value();
  auto view = engine_->OpenImage("default", *snap);
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(Read((*view)->volume(), 0, 4 * kMiB), a);
  view->reset();
  auto h = Open("c");
  EXPECT_EQ(Read(h->volume(), 0, 4 * kMiB), a);
  auto v = Open("v");
  EXPECT_EQ(Read(v->volume(), 0, 4096), Pattern(4096, 2));
  ExpectClean();
}

// A device whose flushes wait while the gate is closed: holds a commit in flight.
class GatedFlushDevice final : public BlockDevice {
 public:
  explicit GatedFlushDevice(uint64_t size) : inner_(std::make_shared<MemoryDevice>(size)) {}
  DeviceGeometry geometry() const override { return inner_->geometry(); }
  std::string kind() const override { return inner_->kind(); }
  void Submit(IoRequest* req) override { inner_->Submit(req); }
  Status ReadSync(uint64_t o, void* b, uint64_t l) override { return inner_->ReadSync(o, b, l); }
  Status WriteSync(uint64_t o, const void* b, uint64_t l) override {
    return inner_->WriteSync(o, b, l);
  }
  Status DiscardSync(uint64_t o, uint64_t l) override { return inner_->DiscardSync(o, l); }
  Status FlushSync() override {
    std::unique_lock lock(mu_);
    ++flushes_waiting_;
    cv_.notify_all();
    // Bounded: a test that forgets to open the gate fails instead of hanging.
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return open_; });
    --flushes_waiting_;
    return inner_->FlushSync();
  }
  void SetOpen(bool open) {
    std::lock_guard lock(mu_);
    open_ = open;
    cv_.notify_all();
  }
  bool WaitForBlockedFlush() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return flushes_waiting_ > 0; });
  }

 private:
  std::shared_ptr<MemoryDevice> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int flushes_waiting_ = 0;
};

// FreezeVolume with a durable callback answers at the cut while its commit is still in flight;
// I/O goes on meanwhile, every reader of stored state waits for the commit, and the frozen
// image holds exactly what was written before the call.
TEST(EngineFreezeAtTheCut, AnswersBeforeTheCommitAndReadersWaitForIt) {
  char tmpl[] = "/tmp/shale-freeze-cut-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto device = std::make_shared<GatedFlushDevice>(256 * kMiB);
  EngineOptions o;
  o.data_dir = dir + "/data";
  o.default_pool_size = 256 * kMiB;
  o.commit_interval_ms = 0;
  o.device_factory = [device](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
    return std::shared_ptr<BlockDevice>(device);
  };
  {
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    std::unique_ptr<Engine> engine = std::move(e).value();
    ASSERT_TRUE(engine->CreateVolume({.name = "v", .size_bytes = 16 * kMiB}).ok());
    auto h = engine->OpenVolume("v");
    ASSERT_TRUE(h.ok());
    Volume& vol = (*h)->volume();
    AlignedBuffer buf = AllocateAligned(kMiB);
    std::memset(buf.get(), 0xA1, kMiB);
    ASSERT_TRUE(RunVolumeIo(vol, VolumeOp::kWrite, 0, kMiB, buf.get()).ok());

    device->SetOpen(false);
    std::promise<Status> durable;
    const std::string key = keys::Extension("test", "snap");
    auto image = engine->FreezeVolume(
        "v", [&](uint64_t, MetaBatch* batch) { batch->Put(key, "record"); },
        [&durable](const Status& st) { durable.set_value(st); });
    ASSERT_TRUE(image.ok()) << image.status();
    ASSERT_TRUE(device->WaitForBlockedFlush()) << "the freeze's commit never reached the device";
    auto durable_future = durable.get_future();
    EXPECT_EQ(durable_future.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
        << "the freeze waited for its commit";

    // Writes after the cut go on while the commit waits, and are not in the image.
    std::memset(buf.get(), 0xB2, kMiB);
    ASSERT_TRUE(RunVolumeIo(vol, VolumeOp::kWrite, 0, kMiB, buf.get()).ok());
    // A reader of stored state waits for the commit rather than seeing it half made.
    auto record = std::async(std::launch::async, [&] { return engine->GetRecord("default", key); });
    EXPECT_EQ(record.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
        << "a record read did not wait for the freeze's commit";

    device->SetOpen(true);
    ASSERT_EQ(durable_future.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    EXPECT_TRUE(durable_future.get().ok());
    auto got = record.get();
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->has_value());
    EXPECT_EQ(**got, "record");
    auto view = engine->OpenImage("default", *image);
    ASSERT_TRUE(view.ok()) << view.status();
    ASSERT_TRUE(RunVolumeIo((*view)->volume(), VolumeOp::kRead, 0, kMiB, buf.get()).ok());
    EXPECT_EQ(buf.get()[0], 0xA1);
    EXPECT_EQ(buf.get()[kMiB - 1], 0xA1);
    ASSERT_TRUE(RunVolumeIo(vol, VolumeOp::kRead, 0, kMiB, buf.get()).ok());
    EXPECT_EQ(buf.get()[0], 0xB2);
    view->reset();
    h->reset();
    auto check = engine->CheckPool("default");
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_TRUE(check->clean()) << check->problems.front();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace shale
