#include "qos/qos_manager.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "engine/volume/volume_test_util.h"

namespace shale::qos {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

bool Eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 30s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return cond();
}

// Keeps `depth` 4 KiB reads in flight through a VolumeLayer on its reactor until stopped.
class Reader {
 public:
  Reader(VolumeLayer* target, Reactor* reactor, size_t depth) : target_(target), reactor_(reactor) {
    slots_.resize(depth);
    for (auto& s : slots_) {
      s.buf = AllocateAligned(4096);
      s.reader = this;
    }
  }
  void Start() {
    reactor_->RunSync([this] {
      for (size_t i = 0; i < slots_.size(); ++i) Issue(slots_[i], i);
    });
  }
  void Stop() {
    reactor_->RunSync([this] { stop_ = true; });
    EXPECT_TRUE(Eventually([this] { return in_flight_.load() == 0; }));
    reactor_->RunSync([] {});
  }
  std::atomic<uint64_t> completed{0}, errors{0};

 private:
  struct Slot {
    VolumeIo io;
    AlignedBuffer buf;
    Reader* reader = nullptr;
    uint64_t n = 0;
  };
  void Issue(Slot& s, uint64_t seed) {
    s.io = VolumeIo{};
    s.io.op = VolumeOp::kRead;
    s.io.offset = ((seed * 7919 + s.n++) % 1024) * 4096;
    s.io.length = 4096;
    s.io.buf = s.buf.get();
    s.io.ctx = &s;
    s.io.done = [](VolumeIo* io) {
      auto* slot = static_cast<Slot*>(io->ctx);
      Reader* r = slot->reader;
      if (!io->status.ok()) r->errors.fetch_add(1);
      r->completed.fetch_add(1);
      r->in_flight_.fetch_sub(1);
      if (!r->stop_) r->Issue(*slot, slot->n);
    };
    in_flight_.fetch_add(1);
    target_->Submit(&s.io);
  }
  VolumeLayer* target_;
  Reactor* reactor_;
  std::vector<Slot> slots_;
  bool stop_ = false;
  std::atomic<uint64_t> in_flight_{0};
};

class QosManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-qos-manager-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    qos_.reset();
    engine_.reset();
    fs::remove_all(dir_);
  }
  void Start(unsigned reactors = 1) {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 256 * kMiB;
    o.commit_interval_ms = 0;
    o.reactors = reactors;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
    auto q = QosManager::Open(engine_.get(), {});
    ASSERT_TRUE(q.ok()) << q.status();
    qos_ = std::move(q).value();
  }
  void Restart(unsigned reactors = 1) {
    qos_.reset();
    ASSERT_TRUE(engine_->Shutdown().ok());
    engine_.reset();
    Start(reactors);
  }
  std::shared_ptr<QosVolume> Open(const std::string& name) {
    auto h = engine_->OpenVolume(name);
    EXPECT_TRUE(h.ok()) << h.status();
    auto w = qos_->Wrap(std::move(h).value());
    EXPECT_TRUE(w.ok()) << w.status();
    return std::move(w).value();
  }
  size_t QosRecords(const std::string& pool) {
    size_t n = 0;
    EXPECT_TRUE(engine_
                    ->ScanRecords(pool, keys::ExtensionPrefix("qos"),
                                  [&](std::string_view, std::string_view) {
                                    ++n;
                                    return true;
                                  })
                    .ok());
    return n;
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<QosManager> qos_;
};

TEST_F(QosManagerTest, SettingsAndPoolBudgetPersistAcrossRestart) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 16 * kMiB}).ok());
  const QosSettings s{.iops = 1000,
                      .write_bps = 50 << 20,
                      .burst_iops = 3000,
                      .burst_seconds = 20,
                      .weight = 300,
                      .reservation_iops = 200};
  ASSERT_TRUE(qos_->Set("a", s).ok());
  ASSERT_TRUE(qos_->SetPoolBudget("default", 48).ok());
  EXPECT_EQ(*qos_->Get("a"), s.Normalized());
  EXPECT_EQ(*qos_->Get("b"), QosSettings{}.Normalized())
      << "a volume without settings reports defaults";
  Restart();
  auto got = qos_->Get("a");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, s.Normalized());
  EXPECT_EQ(*qos_->GetPoolBudget("default"), 48u);
  // Applied to the layer created after the restart.
  auto a = Open("a");
  auto st = qos_->Stats("a");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->open);
  EXPECT_EQ(st->settings.iops, 1000);
  EXPECT_EQ(st->pool_budget, 48u);
  ASSERT_EQ(st->buckets.size(), 2u);
  EXPECT_EQ(st->buckets[0].burst_rate, 3000u);
  EXPECT_DOUBLE_EQ(st->buckets[0].capacity, 2000.0 * 20 + 10) << "(B - r) * T + r * q";
}

TEST_F(QosManagerTest, BadInputGetsClearErrors) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  Status st = qos_->Set("a", {.iops = -5});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("iops"), std::string_view::npos);
  st = qos_->Set("a", {.iops = 1000, .burst_iops = 10});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("below"), std::string_view::npos);
  EXPECT_EQ(qos_->Set("a", {.bps = int64_t{1} << 62}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qos_->Set("a", {.burst_bps = 100}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qos_->Set("a", {.iops_unit = 3, .weight = 0}).code(), StatusCode::kInvalidArgument);
  st = qos_->Set("missing", {.iops = 10});
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("missing"), std::string_view::npos);
  EXPECT_EQ(qos_->Get("missing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(qos_->Stats("missing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(qos_->SetPoolBudget("default", 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qos_->SetPoolBudget("default", 100000).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(qos_->SetPoolBudget("nope", 8).code(), StatusCode::kNotFound);
  EXPECT_EQ(*qos_->Get("a"), QosSettings{}.Normalized()) << "a refused Set changes nothing";
  EXPECT_EQ(QosRecords("default"), 0u);
}

TEST_F(QosManagerTest, DeletedVolumesLoseTheirSettings) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(qos_->Set("a", {.iops = 100}).ok());
  ASSERT_TRUE(qos_->Set("b", {.iops = 200}).ok());
  EXPECT_EQ(QosRecords("default"), 2u);
  ASSERT_TRUE(engine_->DeleteVolume("a").ok());
  ASSERT_TRUE(qos_->OnVolumeDeleted("a").ok());
  EXPECT_EQ(QosRecords("default"), 1u);
  EXPECT_TRUE(qos_->OnVolumeDeleted("never-had-settings").ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  EXPECT_EQ(qos_->Get("a")->iops, 0) << "a new volume of the same name starts unlimited";
  // Deleted behind the manager's back (daemon crashed before OnVolumeDeleted): the record is
  // not applied to a new volume of the same name, and is collected at the next start.
  ASSERT_TRUE(engine_->DeleteVolume("b").ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 16 * kMiB}).ok());
  EXPECT_EQ(qos_->Get("b")->iops, 0);
  Restart();
  EXPECT_EQ(QosRecords("default"), 0u);
  EXPECT_EQ(qos_->Get("b")->iops, 0);
}

TEST_F(QosManagerTest, FrontendsShareOneLayerAndLiveChangesApplyAtOnce) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  auto w1 = Open("a");
  auto w2 = Open("a");
  EXPECT_EQ(&w1->layer(), &w2->layer()) << "limits are per volume, not per connection";
  EXPECT_EQ(engine_->DeleteVolume("a").code(), StatusCode::kBusy)
      << "the wrapper keeps the volume open";
  ASSERT_TRUE(qos_->Set("a", {.iops = 20}).ok());
  Reader r1(w1.get(), w1->reactor(), 8);
  Reader r2(w2.get(), w2->reactor(), 8);
  r1.Start();
  r2.Start();
  ASSERT_TRUE(Eventually([&] { return qos_->Stats("a")->queue_depth >= 10; }));
  // Unlimited: the waiting requests go at once (Set returns after the change is in force).
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(qos_->Set("a", {}).ok());
  const uint64_t before = r1.completed.load() + r2.completed.load();
  EXPECT_TRUE(
      Eventually([&] { return r1.completed.load() + r2.completed.load() >= before + 1000; }));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  r1.Stop();
  r2.Stop();
  EXPECT_EQ(r1.errors.load() + r2.errors.load(), 0u);
  auto st = qos_->Stats("a");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->settings.iops, 0);
  EXPECT_GT(st->throttled_requests, 0u);
  EXPECT_EQ(st->in_flight, 0u);
  EXPECT_EQ(st->volume, "a");
  EXPECT_EQ(st->pool, "default");
  w1.reset();
  w2.reset();
  auto closed = qos_->Stats("a");
  ASSERT_TRUE(closed.ok());
  EXPECT_FALSE(closed->open);
  EXPECT_EQ(closed->pool_budget, kDefaultPoolBudget);
  EXPECT_TRUE(engine_->DeleteVolume("a").ok()) << "released with the last wrapper";
  EXPECT_TRUE(qos_->OnVolumeDeleted("a").ok());
}

TEST_F(QosManagerTest, StopThrottlingReleasesHeldRequestsAndKeepsTheSettings) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(qos_->Set("a", {.iops = 5, .weight = 300}).ok());
  auto w = Open("a");
  Reader r(w.get(), w->reactor(), 16);
  r.Start();
  ASSERT_TRUE(Eventually([&] { return qos_->Stats("a")->queue_depth >= 10; }));
  // At 5 IOPS the held requests would take seconds; lifted, they pass at once.
  qos_->StopThrottling();
  EXPECT_TRUE(Eventually([&] { return r.completed.load() >= 1000; }, 10s));
  auto st = qos_->Stats("a");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->buckets.empty()) << "no limit in force";
  EXPECT_EQ(st->settings.weight, 300) << "the weight stays";
  r.Stop();
  EXPECT_EQ(r.errors.load(), 0u);
  // Stored settings are unchanged, and a volume opened afterwards is not limited either.
  EXPECT_EQ(qos_->Get("a")->iops, 5);
  w.reset();
  auto again = Open("a");
  EXPECT_TRUE(qos_->Stats("a")->buckets.empty());
  ASSERT_TRUE(qos_->Set("a", {.iops = 7}).ok());
  EXPECT_TRUE(qos_->Stats("a")->buckets.empty());
  EXPECT_EQ(qos_->Get("a")->iops, 7);
  again.reset();
}

TEST_F(QosManagerTest, VolumesOnDifferentReactorsShareThePoolByWeight) {
  Start(/*reactors=*/2);
  ASSERT_TRUE(qos_->SetPoolBudget("default", 1).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(engine_->CreateVolume({.name = "b", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(qos_->Set("a", {.weight = 300}).ok());
  ASSERT_TRUE(qos_->Set("b", {.weight = 100}).ok());
  auto a = Open("a");
  auto b = Open("b");
  ASSERT_NE(a->reactor(), b->reactor()) << "volume ids 1 and 2 land on different reactors";
  Reader ra(a.get(), a->reactor(), 16);
  Reader rb(b.get(), b->reactor(), 16);
  ra.Start();
  rb.Start();
  // Measured once both are running (a starts alone for a moment).
  ASSERT_TRUE(Eventually([&] { return rb.completed.load() >= 200; }));
  const uint64_t a0 = ra.completed.load(), b0 = rb.completed.load();
  ASSERT_TRUE(Eventually([&] { return rb.completed.load() >= b0 + 2000; }));
  const double ratio =
      static_cast<double>(ra.completed.load() - a0) / static_cast<double>(rb.completed.load() - b0);
  ra.Stop();
  rb.Stop();
  EXPECT_NEAR(ratio, 3.0, 0.45);
  EXPECT_EQ(ra.errors.load() + rb.errors.load(), 0u);
  // The budget can be raised live.
  ASSERT_TRUE(qos_->SetPoolBudget("default", 64).ok());
  EXPECT_EQ(qos_->Stats("a")->pool_budget, 64u);
}

TEST_F(QosManagerTest, SnapshotViewsAreScheduledAsDefaultClients) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 16 * kMiB}).ok());
  ASSERT_TRUE(qos_->Set("a", {.iops = 10}).ok());
  auto image = engine_->FreezeVolume("a");
  ASSERT_TRUE(image.ok()) << image.status();
  auto h = engine_->OpenImage("default", *image);
  ASSERT_TRUE(h.ok());
  auto view = qos_->Wrap(std::move(h).value());
  ASSERT_TRUE(view.ok());
  EXPECT_EQ((*view)->layer().settings().iops, 0) << "the volume's limit is not the view's";
  Reader r(view->get(), (*view)->reactor(), 4);
  r.Start();
  ASSERT_TRUE(Eventually([&] { return r.completed.load() >= 200; }));
  r.Stop();
  EXPECT_EQ(r.errors.load(), 0u);
}

TEST_F(QosManagerTest, AFlattenIsAdmittedThroughTheVolumesLayerWithoutItsLimits) {
  Start();
  ASSERT_TRUE(engine_->CreateVolume({.name = "a", .size_bytes = 4 * kMiB}).ok());
  const auto data = testing::Pattern(4 * kMiB, 9);
  {
    auto h = engine_->OpenVolume("a");
    ASSERT_TRUE(h.ok());
    AlignedBuffer buf = AllocateAligned(data.size());
    std::memcpy(buf.get(), data.data(), data.size());
    ASSERT_TRUE(
        testing::RunVolumeIo((*h)->volume(), VolumeOp::kWrite, 0, data.size(), buf.get()).ok());
  }
  auto image = engine_->FreezeVolume("a");
  ASSERT_TRUE(image.ok()) << image.status();
  ASSERT_TRUE(engine_->CreateVolumeFromImage({.name = "c"}, *image).ok());
  // At 1 IOPS the two 2 MiB batches (512 units each) would take ~17 minutes if they were charged.
  ASSERT_TRUE(qos_->Set("c", {.iops = 1}).ok());
  auto h = engine_->OpenVolume("c");
  ASSERT_TRUE(h.ok());
  auto admission = qos_->OpenBackgroundAdmission(std::move(h).value());
  ASSERT_TRUE(admission.ok()) << admission.status();
  EXPECT_TRUE(qos_->Stats("c")->open) << "the admission opened the volume's layer";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(engine_->FlattenVolume("c", nullptr, admission->get()).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  const QosStats during = *qos_->Stats("c");
  EXPECT_EQ(during.in_flight, 0u);
  EXPECT_EQ(during.queue_depth, 0u);
  admission->reset();
  EXPECT_FALSE(qos_->Stats("c")->open) << "the layer and handle go with the admission";
  EXPECT_EQ(qos_->OpenBackgroundAdmission(nullptr).status().code(), StatusCode::kInvalidArgument);
  auto c = engine_->OpenVolume("c");
  ASSERT_TRUE(c.ok());
  AlignedBuffer out = AllocateAligned(data.size());
  ASSERT_TRUE(
      testing::RunVolumeIo((*c)->volume(), VolumeOp::kRead, 0, data.size(), out.get()).ok());
  EXPECT_EQ(std::memcmp(out.get(), data.data(), data.size()), 0);
}

}  // namespace
}  // namespace shale::qos
