// Engine::FreezeVolumes: several volumes frozen at one instant (group snapshots), in one pool and
// across pools, under a concurrent writer; refusals leave nothing behind.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "engine/volume/volume_test_util.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
using testing::RunVolumeIo;

class EngineGroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-group-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 256 * kMiB;
    o.commit_interval_ms = 0;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
  }
  void TearDown() override {
    engine_.reset();
    fs::remove_all(dir_);
  }
  uint64_t ReadSeq(const std::string& pool, uint64_t image) {
    auto view = engine_->OpenImage(pool, image);
    EXPECT_TRUE(view.ok()) << view.status();
    if (!view.ok()) return UINT64_MAX;
    AlignedBuffer buf = AllocateAligned(4096);
    EXPECT_TRUE(RunVolumeIo((*view)->volume(), VolumeOp::kRead, 0, 4096, buf.get()).ok());
    uint64_t v = 0;
    std::memcpy(&v, buf.get(), sizeof(v));
    return v;
  }
  // A writer puts sequence number n into block 0 of every volume in turn, each write
  // acknowledged before the next, while groups are frozen. Every group must show a consistent
  // cut: members read k+1 up to some point and k after it (never a gap, never an inversion).
  void RunConsistency(const std::vector<std::pair<std::string, std::string>>& volumes) {
    std::vector<std::shared_ptr<VolumeHandle>> handles;
    std::vector<std::string> names;
    for (const auto& [pool, name] : volumes) {
      auto h = engine_->OpenVolume(name);
      ASSERT_TRUE(h.ok()) << h.status();
      handles.push_back(*h);
      names.push_back(name);
    }
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> rounds{0};
    std::thread writer([&] {
      AlignedBuffer buf = AllocateAligned(4096);
      for (uint64_t n = 1; !stop.load() && n < 1'000'000; ++n) {
        std::memset(buf.get(), 0, 4096);
        std::memcpy(buf.get(), &n, sizeof(n));
        for (auto& h : handles) {
          ASSERT_TRUE(RunVolumeIo(h->volume(), VolumeOp::kWrite, 0, 4096, buf.get()).ok());
        }
        rounds.store(n);
      }
    });
    std::vector<std::vector<uint64_t>> groups;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (groups.size() < 25 && std::chrono::steady_clock::now() < deadline) {
      const uint64_t before = rounds.load();
      auto images = engine_->FreezeVolumes(names);
      ASSERT_TRUE(images.ok()) << images.status();
      ASSERT_EQ(images->size(), names.size());
      std::vector<uint64_t> seqs;
      for (size_t i = 0; i < names.size(); ++i) {
        seqs.push_back(ReadSeq(volumes[i].first, (*images)[i]));
        EXPECT_GE(seqs.back(), before) << "an acknowledged round is missing from " << names[i];
      }
      groups.push_back(seqs);
      while (rounds.load() < before + 2 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
    }
    stop.store(true);
    writer.join();
    ASSERT_GE(groups.size(), 5u);
    for (const auto& seqs : groups) {
      for (size_t i = 1; i < seqs.size(); ++i) {
        EXPECT_LE(seqs[i], seqs[i - 1]) << "member " << i << " is ahead of an earlier member";
        EXPECT_LE(seqs[0], seqs[i] + 1) << "member " << i << " lags by more than one round";
      }
    }
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineGroupTest, MembersOfOnePoolAreMutuallyConsistent) {
  for (const char* n : {"a", "b", "c"}) {
    ASSERT_TRUE(engine_->CreateVolume({.name = n, .size_bytes = 4 * kMiB}).ok());
  }
  RunConsistency({{"default", "a"}, {"default", "b"}, {"default", "c"}});
  auto r = engine_->CheckPool("default");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->clean()) << r->problems.front();
}

TEST_F(EngineGroupTest, MembersAcrossPoolsAreMutuallyConsistent) {
  ASSERT_TRUE(
      engine_
          ->CreatePool(
              {.name = "second", .device_path = dir_ + "/second.img", .size_bytes = 128 * kMiB})
          .ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 4 * kMiB}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 4 * kMiB, .pool = "second"}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "c", .size_bytes = 4 * kMiB}).ok());
  RunConsistency({{"default", "a"}, {"second", "b"}, {"default", "c"}});
}

TEST_F(EngineGroupTest, RecordsCommitOncePerPoolWithEveryImage) {
  ASSERT_TRUE(
      engine_
          ->CreatePool(
              {.name = "second", .device_path = dir_ + "/second.img", .size_bytes = 128 * kMiB})
          .ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 1 * kMiB}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 1 * kMiB, .pool = "second"}).ok());
  std::vector<std::string> pools;
  auto images = engine_->FreezeVolumes(
      {"a", "b"}, [&](std::string_view pool, const std::vector<uint64_t>& ids, MetaBatch* batch) {
        pools.emplace_back(pool);
        EXPECT_EQ(ids.size(), 2u);
        batch->Put(keys::Extension("test", "group"), std::to_string(ids[0]));
      });
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_EQ(pools, (std::vector<std::string>{"default", "second"}));
  for (const char* pool : {"default", "second"}) {
    auto rec = engine_->GetRecord(pool, keys::Extension("test", "group"));
    ASSERT_TRUE(rec.ok() && rec->has_value());
    EXPECT_EQ(**rec, std::to_string((*images)[0]));
  }
  auto img = engine_->GetImage("second", (*images)[1]);
  ASSERT_TRUE(img.ok());
  EXPECT_TRUE(img->frozen);
  EXPECT_EQ(img->volume, "b");
}

TEST_F(EngineGroupTest, RefusalsFreezeNothing) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 1 * kMiB}).ok());
  const size_t before = engine_->ListImages("default").size();
  EXPECT_EQ(engine_->FreezeVolumes({}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->FreezeVolumes({"a", "a"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->FreezeVolumes({"a", "nope"}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->ListImages("default").size(), before);
  auto ok = engine_->FreezeVolumes({"a"});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(engine_->ListImages("default").size(), before + 1);
}

}  // namespace
}  // namespace shale
