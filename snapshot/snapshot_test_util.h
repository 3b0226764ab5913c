// Test fixture for the snapshot layer: an Engine on a file-backed default pool in a temporary
// data dir, a started SnapshotManager, synchronous I/O helpers, restart and a pool check.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "engine/engine.h"
#include "engine/volume/volume_test_util.h"
#include "snapshot/digest.h"
#include "snapshot/snapshot_manager.h"

namespace shale::snapshot::testing {

using ::shale::testing::Pattern;
using ::shale::testing::RunVolumeIo;

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-snapshot-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    OpenEngine();
    initial_free_ = FreeBytes();
  }
  void TearDown() override {
    mgr_.reset();
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }

  virtual SnapshotManager::Options ManagerOptions() { return {}; }

  void OpenEngine(bool start_manager = true) {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 1 * kGiB;
    o.commit_interval_ms = 0;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
    mgr_ = std::make_unique<SnapshotManager>(engine_.get(), ManagerOptions());
    if (start_manager) {
      ASSERT_TRUE(mgr_->Start().ok());
    }
  }
  void Restart(bool start_manager = true) {
    mgr_.reset();
    engine_.reset();
    OpenEngine(start_manager);
  }

  std::string PoolFile() const { return dir_ + "/data/default-pool.img"; }
  uint64_t FreeBytes() { return engine_->GetPool("default")->free_bytes; }
  void ExpectClean() {
    auto r = engine_->CheckPool("default");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->clean()) << r->problems.front();
  }

  void CreateVolume(const std::string& name, uint64_t size) {
    auto v = engine_->CreateVolume({.name = name, .size_bytes = size});
    ASSERT_TRUE(v.ok()) << v.status();
  }
  static Status WriteTo(VolumeHandle& h, uint64_t off, const std::vector<uint8_t>& data) {
    AlignedBuffer buf = AllocateAligned(data.size());
    std::memcpy(buf.get(), data.data(), data.size());
    return RunVolumeIo(h.volume(), VolumeOp::kWrite, off, data.size(), buf.get());
  }
  static std::vector<uint8_t> ReadFrom(VolumeHandle& h, uint64_t off, uint64_t len,
                                       Status* st = nullptr) {
    AlignedBuffer buf = AllocateAligned(len);
    Status s = RunVolumeIo(h.volume(), VolumeOp::kRead, off, len, buf.get());
    if (st != nullptr) *st = s;
    EXPECT_TRUE(st != nullptr || s.ok()) << s;
    return std::vector<uint8_t>(buf.get(), buf.get() + len);
  }
  Status Write(const std::string& volume, uint64_t off, const std::vector<uint8_t>& data) {
    auto h = engine_->OpenVolume(volume);
    if (!h.ok()) return h.status();
    return WriteTo(**h, off, data);
  }
  Status Discard(const std::string& volume, uint64_t off, uint64_t len) {
    auto h = engine_->OpenVolume(volume);
    if (!h.ok()) return h.status();
    return RunVolumeIo((*h)->volume(), VolumeOp::kDiscard, off, len, nullptr);
  }
  // Commits the volume's mappings (snapshot space usage is computed from committed state).
  Status Flush(const std::string& volume) {
    auto h = engine_->OpenVolume(volume);
    if (!h.ok()) return h.status();
    return RunVolumeIo((*h)->volume(), VolumeOp::kFlush, 0, 0, nullptr);
  }
  std::vector<uint8_t> Read(const std::string& volume, uint64_t off, uint64_t len) {
    auto h = engine_->OpenVolume(volume);
    EXPECT_TRUE(h.ok()) << h.status();
    if (!h.ok()) return {};
    return ReadFrom(**h, off, len);
  }
  // Whole content of a volume or (name with '@') a snapshot.
  std::vector<uint8_t> Content(const std::string& name) {
    std::shared_ptr<VolumeHandle> h;
    if (name.find('@') != std::string::npos) {
      auto r = mgr_->OpenSnapshot(name);
      EXPECT_TRUE(r.ok()) << name << ": " << r.status();
      if (!r.ok()) return {};
      h = *r;
    } else {
      auto r = engine_->OpenVolume(name);
      EXPECT_TRUE(r.ok()) << name << ": " << r.status();
      if (!r.ok()) return {};
      h = *r;
    }
    return ReadFrom(*h, 0, h->volume().size_bytes());
  }
  static std::string DigestHexOf(const std::vector<uint8_t>& content) {
    return DigestOf(content.data(), content.size()).ToHex();
  }
  SnapshotInfo Snap(const std::string& volume, const std::string& name, Labels labels = {}) {
    auto r = mgr_->Create(volume, name, {.labels = std::move(labels), .wait_digest = false});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : SnapshotInfo{};
  }
  std::string WaitDigest(const std::string& ref) {
    auto r = mgr_->WaitDigest(ref);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return "";
    EXPECT_EQ(r->digest_state, DigestState::kReady) << r->digest_error;
    return r->digest;
  }

  // Polls `cond` until it holds or the deadline passes (no fixed sleeps).
  template <typename Cond>
  static bool Eventually(Cond cond, std::chrono::seconds deadline = std::chrono::seconds(60)) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!cond()) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::yield();
    }
    return true;
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<SnapshotManager> mgr_;
  uint64_t initial_free_ = 0;
};

}  // namespace shale::snapshot::testing
