// CapacityPolicy: fill thresholds with hysteresis, the overcommit limit the lifecycle service
// enforces on create, clone and resize, what volumes count, persistence (docs/operations.md).
#include "daemon/lifecycle/capacity.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <future>

#include "daemon/lifecycle/lifecycle_test_fixture.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/units.h"
#include "qos/qos_manager.h"

namespace shale::daemon {
namespace {

TEST(FillLevelTest, ThresholdsAreInclusiveAndGoingDownNeedsHysteresis) {
  const CapacitySettings s;  // 80 / 90
  EXPECT_EQ(NextFillLevel(FillLevel::kOk, 79, 100, s), FillLevel::kOk);
  EXPECT_EQ(NextFillLevel(FillLevel::kOk, 80, 100, s), FillLevel::kWarning);
  EXPECT_EQ(NextFillLevel(FillLevel::kOk, 95, 100, s), FillLevel::kCritical);
  EXPECT_EQ(NextFillLevel(FillLevel::kWarning, 90, 100, s), FillLevel::kCritical);
  // Down: 89 % stays critical (within 2 points), 87 % is a warning, 78 % still a warning.
  EXPECT_EQ(NextFillLevel(FillLevel::kCritical, 89, 100, s), FillLevel::kCritical);
  EXPECT_EQ(NextFillLevel(FillLevel::kCritical, 87, 100, s), FillLevel::kWarning);
  EXPECT_EQ(NextFillLevel(FillLevel::kWarning, 79, 100, s), FillLevel::kWarning);
  EXPECT_EQ(NextFillLevel(FillLevel::kWarning, 77, 100, s), FillLevel::kOk);
  EXPECT_EQ(NextFillLevel(FillLevel::kCritical, 10, 100, s), FillLevel::kOk);
  // Exact, not rounded: 79.99 % is below 80 %.
  EXPECT_EQ(NextFillLevel(FillLevel::kOk, 7999, 10000, s), FillLevel::kOk);
  EXPECT_EQ(NextFillLevel(FillLevel::kOk, 0, 0, s), FillLevel::kOk);
}

TEST(CapacitySettingsTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(CapacitySettings{}.Validate().ok());
  const CapacitySettings no_warn{.warn_percent = 0};
  EXPECT_NE(no_warn.Validate().message().find("warning"), std::string_view::npos);
  const CapacitySettings equal{.warn_percent = 90, .critical_percent = 90};
  EXPECT_NE(equal.Validate().message().find("critical"), std::string_view::npos);
  const CapacitySettings over{.critical_percent = 101};
  EXPECT_FALSE(over.Validate().ok());
  const CapacitySettings huge{.overcommit_percent = kMaxOvercommitPercent + 1};
  EXPECT_FALSE(huge.Validate().ok());
  const CapacitySettings unlimited{.overcommit_percent = 0};
  EXPECT_TRUE(unlimited.Validate().ok());
}

constexpr uint64_t kMiB = 1 << 20;

class CapacityTest : public LifecycleTest {
 protected:
  CapacityTest() : LifecycleTest("shale-capacity-test") {}
  void Tune(EngineOptions* o) override {
    o->default_pool_size = 65 * kMiB;  // 64 MiB of clusters
    o->commit_interval_ms = 0;
  }
  Result<VolumeInfo> Create(const std::string& name, uint64_t size, bool read_only = false) {
    return lifecycle_->Create(
        {.params = {.name = name, .size_bytes = size, .read_only = read_only}});
  }
  PoolCapacity Describe() {
    auto c = lifecycle_->capacity()->Describe("default");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : PoolCapacity{};
  }
  // Writes `bytes` of data at offset 0 of volume `name`, 4 MiB at a time.
  void Write(const std::string& name, uint64_t bytes) {
    auto handle = engine_->OpenVolume(name);
    ASSERT_TRUE(handle.ok());
    Volume& v = (*handle)->volume();
    AlignedBuffer buf = AllocateAligned(4 * kMiB);
    std::memset(buf.get(), 0x42, 4 * kMiB);
    for (uint64_t off = 0; off < bytes; off += 4 * kMiB) {
      std::promise<Status> done;
      VolumeIo io;
      io.op = VolumeOp::kWrite;
      io.offset = off;
      io.length = std::min<uint64_t>(4 * kMiB, bytes - off);
      io.buf = buf.get();
      io.ctx = &done;
      io.done = [](VolumeIo* i) {
        static_cast<std::promise<Status>*>(i->ctx)->set_value(i->status);
      };
      v.reactor()->Post([&] { v.Submit(&io); });
      ASSERT_TRUE(done.get_future().get().ok());
    }
  }
};

TEST_F(CapacityTest, CreateBeyondTheOvercommitLimitIsRefusedWithTheNumbers) {
  EXPECT_EQ(Describe().settings.overcommit_percent, kDefaultOvercommitPercent);
  EXPECT_EQ(kDefaultOvercommitPercent, 300u);
  ASSERT_TRUE(lifecycle_->SetPoolCapacity("default", {.overcommit_percent = 200}).ok());
  // 200 % of 64 MiB: 128 MiB may be promised.
  ASSERT_TRUE(Create("a", 100 * kMiB).ok());
  std::vector<std::string> advice;
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "b", .size_bytes = 28 * kMiB}}, &advice).ok());
  // 28 MiB fit under the limit but not in the 64 MiB... they do fit; nothing to say.
  EXPECT_TRUE(advice.empty()) << advice.front();
  auto refused = Create("c", 4 * kMiB);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kNoSpace);
  const std::string msg(refused.status().message());
  for (const char* part : {"pool 'default'", "volume 'c' (4 MiB provisioned)", "128 MiB already",
                           "132 MiB would exceed", "200 %", "64 MiB capacity", "0 B left",
                           "--overcommit 207%", "pool expand default"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << part << " in: " << msg;
  }
  EXPECT_FALSE(engine_->GetVolume("c").ok());
  // Read-only volumes promise nothing: they never allocate.
  ASSERT_TRUE(Create("ro", 1024 * kMiB, /*read_only=*/true).ok());
  const PoolCapacity c = Describe();
  EXPECT_EQ(c.provisioned_bytes, 128 * kMiB);
  EXPECT_EQ(c.provisionable_bytes, 0u);
  EXPECT_DOUBLE_EQ(c.overcommit_ratio(), 2.0);
  // Deleting gives the promise back.
  ASSERT_TRUE(lifecycle_->Delete("b").ok());
  EXPECT_EQ(Describe().provisioned_bytes, 100 * kMiB);
  EXPECT_TRUE(Create("c", 4 * kMiB).ok());
}

TEST_F(CapacityTest, CloneAndResizeAreCheckedTooAndReadOnlyClonesAreFree) {
  ASSERT_TRUE(lifecycle_->SetPoolCapacity("default", {.overcommit_percent = 200}).ok());
  ASSERT_TRUE(Create("src", 60 * kMiB).ok());
  ASSERT_TRUE(lifecycle_->Snapshot("src", "s").ok());
  ASSERT_TRUE(lifecycle_->Clone({.source = "src@s", .name = "w1"}).ok());  // 120 MiB promised
  auto refused = lifecycle_->Clone({.source = "src@s", .name = "w2"});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kNoSpace);
  EXPECT_NE(refused.status().message().find("clone 'w2'"), std::string_view::npos)
      << refused.status();
  // Any number of read-only clones: the notebook flow.
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        lifecycle_->Clone({.source = "src@s", .name = "ro" + std::to_string(i), .read_only = true})
            .ok());
  }
  auto grown = lifecycle_->Resize("w1", 72 * kMiB);  // +12 MiB: 132 > 128
  ASSERT_FALSE(grown.ok());
  EXPECT_EQ(grown.status().code(), StatusCode::kNoSpace);
  EXPECT_NE(grown.status().message().find("grown to 72 MiB"), std::string_view::npos)
      << grown.status();
  EXPECT_EQ(engine_->GetVolume("w1")->size_bytes, 60 * kMiB);
  EXPECT_TRUE(lifecycle_->Resize("w1", 68 * kMiB).ok());  // exactly the limit
  EXPECT_EQ(Describe().provisioned_bytes, 128 * kMiB);
}

TEST_F(CapacityTest, ExplicitPromisesCountInsteadOfTheSizeAndSurviveARestart) {
  // A CSI volume: 8 MiB of capacity in a 32 MiB engine volume (expansion headroom).
  auto v = lifecycle_->Create(
      {.params = {.name = "pvc", .size_bytes = 32 * kMiB}, .provisioned_bytes = 8 * kMiB});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(Describe().provisioned_bytes, 8 * kMiB);
  ASSERT_TRUE(lifecycle_->Resize("pvc", 64 * kMiB, {}, 16 * kMiB).ok());
  EXPECT_EQ(Describe().provisioned_bytes, 16 * kMiB);
  auto set = lifecycle_->SetPoolCapacity(
      "default", {.warn_percent = 50, .critical_percent = 75, .overcommit_percent = 300});
  ASSERT_TRUE(set.ok()) << set.status();
  Close();
  Open();
  const PoolCapacity c = Describe();
  EXPECT_EQ(c.provisioned_bytes, 16 * kMiB);
  EXPECT_EQ(c.settings.warn_percent, 50u);
  EXPECT_EQ(c.settings.critical_percent, 75u);
  EXPECT_EQ(c.settings.overcommit_percent, 300u);
  EXPECT_EQ(c.provisionable_bytes, 192 * kMiB - 16 * kMiB);
  // Unset fields keep their value; bad ones are refused and change nothing.
  ASSERT_TRUE(lifecycle_->SetPoolCapacity("default", {.overcommit_percent = 0}).ok());
  EXPECT_EQ(Describe().provisionable_bytes, UINT64_MAX);
  EXPECT_EQ(Describe().settings.warn_percent, 50u);
  EXPECT_EQ(lifecycle_->SetPoolCapacity("default", {.critical_percent = 40}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(lifecycle_->SetPoolCapacity("nope", {.warn_percent = 10}).status().code(),
            StatusCode::kNotFound);
  EXPECT_TRUE(Create("huge", 100 * 1024 * kMiB).ok()) << "no limit";
}

TEST_F(CapacityTest, EvaluateRaisesEachLevelOnceAndAdvisesAboutAFillingPool) {
  ASSERT_TRUE(Create("v", 64 * kMiB).ok());
  CapacityPolicy& policy = *lifecycle_->capacity();
  EXPECT_EQ(policy.Evaluate().at(0).level, FillLevel::kOk);
  Write("v", 52 * kMiB);  // 81 %
  EXPECT_EQ(policy.Evaluate().at(0).level, FillLevel::kWarning);
  EXPECT_EQ(policy.Evaluate().at(0).level, FillLevel::kWarning);
  std::vector<std::string> advice;
  ASSERT_TRUE(lifecycle_->Create({.params = {.name = "w", .size_bytes = 16 * kMiB}}, &advice).ok());
  ASSERT_EQ(advice.size(), 2u);
  EXPECT_NE(advice[0].find("above its warning threshold (80 %)"), std::string::npos) << advice[0];
  EXPECT_NE(advice[1].find("more than the 12 MiB pool 'default' has free"), std::string::npos)
      << advice[1];
  Write("v", 60 * kMiB);  // 93 %
  const PoolCapacity c = policy.Evaluate().at(0);
  EXPECT_EQ(c.level, FillLevel::kCritical);
  EXPECT_EQ(c.used_percent(), 93u);
  // Expanding the pool brings it back down (and re-evaluates at once).
  ASSERT_TRUE(lifecycle_->ExpandPool("default", 129 * kMiB).ok());
  EXPECT_EQ(Describe().level, FillLevel::kOk);
  EXPECT_EQ(Describe().capacity_bytes, 128 * kMiB);
}

}  // namespace
}  // namespace shale::daemon
