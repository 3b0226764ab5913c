// ChangedRegions: marks are durable before their callback runs, grouped into few commits,
// survive a reload, clear and drop durably, and a failed commit fails every later mark.
#include "replication/changed_regions.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <future>

#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "engine/pool/metadata_store.h"
#include "engine/pool/pool.h"

namespace shale::replication {
namespace {

constexpr uint64_t kMiB = 1 << 20;

class ChangedRegionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-changed-regions-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 64 * kMiB;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
    auto v = engine_->CreateVolume({.name = "v", .size_bytes = kVolumeSize});
    ASSERT_TRUE(v.ok());
    volume_ = *v;
    auto h = engine_->OpenVolume("v");
    ASSERT_TRUE(h.ok());
    handle_ = *h;
  }
  void TearDown() override {
    log_.reset();
    handle_.reset();
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }
  Reactor* reactor() { return handle_->reactor(); }

  // Loads the log with a commit function through the pool's pipeline (as the daemon does),
  // counting commits; `fail` makes every commit fail instead.
  void Load() {
    log_.reset();
    ChangedRegions::CommitFn commit = [this](MetaBatch batch, std::function<void(Status)> done) {
      ++commits_;
      if (fail_) {
        done(Status::IoError("injected commit failure"));
        return;
      }
      CommitPipeline::Request req;
      req.batch = std::move(batch);
      req.flush_device = false;
      req.done = std::move(done);
      handle_->volume().pool()->pipeline().Submit(std::move(req));
    };
    auto log = ChangedRegions::Load(engine_.get(), volume_.pool, volume_.id, kVolumeSize, reactor(),
                                    commit);
    ASSERT_TRUE(log.ok()) << log.status();
    log_ = std::move(log).value();
  }
  Status MarkSync(std::vector<std::string> nodes, uint64_t off, uint64_t len) {
    std::promise<Status> p;
    reactor()->Post([&] { log_->Mark(nodes, off, len, [&](Status st) { p.set_value(st); }); });
    return p.get_future().get();
  }
  template <typename F>
  auto OnReactor(F f) {
    decltype(f()) out;
    reactor()->RunSync([&] { out = f(); });
    return out;
  }
  Status PersistSync(bool drop_b = false) {
    std::promise<Status> p;
    reactor()->Post([&] {
      auto done = [&](Status st) { p.set_value(st); };
      if (drop_b) {
        log_->Drop("b", done);
      } else {
        log_->Persist(done);
      }
    });
    return p.get_future().get();
  }

  static constexpr uint64_t kVolumeSize = 40 * kMiB + 512 * 1024;  // 41 regions, the last half
  std::string dir_;
  std::unique_ptr<Engine> engine_;
  VolumeInfo volume_;
  std::shared_ptr<VolumeHandle> handle_;
  std::unique_ptr<ChangedRegions> log_;
  std::atomic<int> commits_{0};
  std::atomic<bool> fail_{false};
};

TEST_F(ChangedRegionsTest, MarksAreDurableAndSurviveAReload) {
  Load();
  ASSERT_TRUE(MarkSync({"b", "c"}, kMiB + 4096, 2 * kMiB).ok());  // regions 1..3
  EXPECT_TRUE(OnReactor([&] { return log_->Covered("b", kMiB, 3 * kMiB); }));
  EXPECT_FALSE(OnReactor([&] { return log_->Covered("b", 0, kMiB); }));
  ASSERT_TRUE(MarkSync({"b"}, 40 * kMiB + 4096, 4096).ok());  // the last, partial region
  const int before = commits_.load();
  ASSERT_TRUE(MarkSync({"b"}, 2 * kMiB, 4096).ok());  // already marked: no commit
  EXPECT_EQ(commits_.load(), before);
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  const Ranges want_b = {{kMiB, 3 * kMiB}, {40 * kMiB, 512 * 1024}};
  EXPECT_EQ(OnReactor([&] { return log_->Ranges("b"); }), want_b);
  // A restart of the target: the record is in the pool's metadata.
  Load();
  EXPECT_EQ(OnReactor([&] { return log_->Ranges("b"); }), want_b);
  EXPECT_EQ(OnReactor([&] { return log_->Ranges("c"); }), (Ranges{{kMiB, 3 * kMiB}}));
  EXPECT_EQ(OnReactor([&] { return log_->RegionCount("b"); }), 4u);
}

TEST_F(ChangedRegionsTest, ConcurrentMarksShareCommits) {
  Load();
  constexpr int kMarks = 200;
  std::atomic<int> done{0};
  std::promise<void> all;
  reactor()->Post([&] {
    for (int i = 0; i < kMarks; ++i) {
      log_->Mark({"b"}, static_cast<uint64_t>(i % 40) * kMiB, 4096, [&](Status st) {
        EXPECT_TRUE(st.ok()) << st;
        if (++done == kMarks) all.set_value();
      });
    }
  });
  all.get_future().get();
  EXPECT_LE(commits_.load(), 3) << "marks queued while a commit runs join the next one";
  EXPECT_EQ(OnReactor([&] { return log_->RegionCount("b"); }), 40u);
}

TEST_F(ChangedRegionsTest, ClearsAndDropsAreDurable) {
  Load();
  ASSERT_TRUE(MarkSync({"b"}, 0, 8 * kMiB).ok());
  reactor()->RunSync([&] {
    for (uint64_t r = 0; r < 5; ++r) log_->Clear("b", r);
  });
  ASSERT_TRUE(PersistSync().ok());
  Load();
  EXPECT_EQ(OnReactor([&] { return log_->Ranges("b"); }),
            (std::vector<std::pair<uint64_t, uint64_t>>{{5 * kMiB, 3 * kMiB}}));
  ASSERT_TRUE(PersistSync(/*drop_b=*/true).ok());
  Load();
  EXPECT_TRUE(OnReactor([&] { return log_->Nodes(); }).empty());
  // Forgetting the volume deletes every record.
  ASSERT_TRUE(MarkSync({"b"}, 0, kMiB).ok());
  MetaBatch batch;
  ChangedRegions::ForgetVolume(volume_.id, &batch);
  ASSERT_TRUE(engine_->WriteRecords(volume_.pool, std::move(batch)).ok());
  Load();
  EXPECT_TRUE(OnReactor([&] { return log_->Nodes(); }).empty());
}

TEST_F(ChangedRegionsTest, AFailedCommitFailsItsMarksAndEveryLaterOne) {
  Load();
  fail_ = true;
  EXPECT_EQ(MarkSync({"b"}, 0, kMiB).code(), StatusCode::kIoError);
  fail_ = false;
  EXPECT_EQ(MarkSync({"b"}, 0, kMiB).code(), StatusCode::kIoError)
      << "nothing may pass once a mark could not be made durable";
  EXPECT_FALSE(OnReactor([&] { return log_->Covered("b", 0, kMiB); }));
}

}  // namespace
}  // namespace shale::replication
