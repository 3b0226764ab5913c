// CommitPipeline when the metadata store fails: every waiter of the failed round gets the error,
// the pipeline stays failed (never a later success on top of a lost commit), clusters freed by
// the failed round are not released, and what was acknowledged before survives a power cut.
#include "engine/pool/commit_pipeline.h"

#include <gtest/gtest.h>
#include <rocksdb/file_system.h>

#include <chrono>
#include <filesystem>
#include <future>

#include "engine/io/memory_device.h"
#include "engine/pool/fault_fs.h"
#include "engine/pool/keys.h"
#include "engine/pool/pool.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
constexpr auto kDeadline = std::chrono::seconds(30);

class CommitPipelineFaultTest : public ::testing::TestWithParam<FsOp> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-commit-fault-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    device_ = std::make_shared<MemoryDevice>(64 * kMiB);
    fs_ = std::make_shared<FaultInjectingFs>(rocksdb::FileSystem::Default(), /*sync_base=*/false);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string dir_;
  std::shared_ptr<MemoryDevice> device_;
  std::shared_ptr<FaultInjectingFs> fs_;
};

// A request that records its outcome.
CommitPipeline::Request Req(std::string key, std::vector<uint32_t> allocated,
                            std::vector<uint32_t> freed, std::promise<Status>* result) {
  CommitPipeline::Request r;
  if (!key.empty()) r.batch.Put(key, "v");
  r.allocated = std::move(allocated);
  r.freed = std::move(freed);
  r.done = [result](const Status& s) { result->set_value(s); };
  return r;
}

Status Wait(std::promise<Status>& p) {
  auto f = p.get_future();
  if (f.wait_for(kDeadline) != std::future_status::ready) return Status::Internal("timed out");
  return f.get();
}

TEST_P(CommitPipelineFaultTest, EveryWaiterOfAFailedRoundGetsTheErrorAndThePoolStaysFailed) {
  const std::string meta_dir = dir_ + "/meta";
  Uuid uuid;
  uint32_t kept = 0, freed = 0;
  std::vector<uint32_t> lost;
  {
    auto pool_or = Pool::Create(
        device_,
        {.name = "tank", .metadata_dir = meta_dir, .cluster_size = 64 * kKiB, .metadata_fs = fs_});
    ASSERT_TRUE(pool_or.ok()) << pool_or.status();
    Pool& pool = **pool_or;
    uuid = pool.uuid();
    CommitPipeline& pipeline = pool.pipeline();
    kept = pool.allocator().Allocate(0).value();
    freed = pool.allocator().Allocate(0).value();
    {
      CommitPipeline::Request r;
      r.batch.Put(keys::Extension("test", "acked"), "v");
      r.allocated = {kept, freed};
      ASSERT_TRUE(pipeline.CommitSync(std::move(r)).ok());
    }

    // Hold the next round (a flush-only request) in the hook so that the following requests
    // queue up and form one round together.
    std::promise<void> entered, release;
    auto release_f = release.get_future().share();
    bool first = true;
    pipeline.SetBeforeMetadataWriteHook([&, release_f] {
      if (!first) return;
      first = false;
      entered.set_value();
      release_f.wait_for(kDeadline);
    });
    std::promise<Status> flush_only;
    pipeline.Submit(Req("", {}, {}, &flush_only));
    ASSERT_EQ(entered.get_future().wait_for(kDeadline), std::future_status::ready);

    std::promise<Status> waiters[3];
    for (int i = 0; i < 3; ++i) {
      const uint32_t c = pool.allocator().Allocate(0).value();
      lost.push_back(c);
      pipeline.Submit(Req(keys::Extension("test", "lost" + std::to_string(i)), {c},
                          i == 0 ? std::vector<uint32_t>{freed} : std::vector<uint32_t>{},
                          &waiters[i]));
    }
    fs_->FailNth(GetParam(), 1);
    release.set_value();

    EXPECT_TRUE(Wait(flush_only).ok()) << "the held round wrote no metadata";
    for (auto& w : waiters) {
      Status st = Wait(w);
      EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
      EXPECT_NE(st.ToString().find("injected metadata fault"), std::string::npos) << st;
    }
    EXPECT_TRUE(pipeline.failed());
    EXPECT_EQ(pipeline.failure().code(), StatusCode::kIoError);
    // The cluster the failed round freed stays in use: its free is not durable.
    EXPECT_TRUE(pool.allocator().IsUsed(freed));

    // Later requests fail too, even a flush with no metadata: never a success after a loss.
    std::promise<Status> later, later_meta;
    pipeline.Submit(Req("", {}, {}, &later));
    pipeline.Submit(Req(keys::Extension("test", "later"), {}, {}, &later_meta));
    EXPECT_EQ(Wait(later).code(), StatusCode::kIoError);
    EXPECT_EQ(Wait(later_meta).code(), StatusCode::kIoError);
    pipeline.SetBeforeMetadataWriteHook(nullptr);
  }

  // Power cut of the metadata disk, then a reopen: exactly the acknowledged commit is there.
  ASSERT_TRUE(fs_->PowerCut().ok());
  auto pool_or = Pool::Open(
      device_,
      {.name = "tank", .metadata_dir = meta_dir, .expected_uuid = uuid, .metadata_fs = fs_});
  ASSERT_TRUE(pool_or.ok()) << pool_or.status();
  Pool& pool = **pool_or;
  auto acked = pool.meta().Get(keys::Extension("test", "acked"));
  ASSERT_TRUE(acked.ok());
  EXPECT_TRUE(acked->has_value());
  for (const char* k : {"lost0", "lost1", "lost2", "later"}) {
    auto v = pool.meta().Get(keys::Extension("test", k));
    ASSERT_TRUE(v.ok());
    EXPECT_FALSE(v->has_value()) << k;
  }
  const ClusterBitmap committed = pool.pipeline().committed_bitmap();
  EXPECT_TRUE(committed.Test(kept));
  EXPECT_TRUE(committed.Test(freed)) << "the free was never durable";
  for (uint32_t c : lost) EXPECT_FALSE(committed.Test(c)) << "cluster " << c;
  EXPECT_FALSE(pool.pipeline().failed());
  CommitPipeline::Request r;
  r.freed = {freed};
  EXPECT_TRUE(pool.pipeline().CommitSync(std::move(r)).ok()) << "the reopened pool works";
}

INSTANTIATE_TEST_SUITE_P(WalWriteOrSync, CommitPipelineFaultTest,
                         ::testing::Values(FsOp::kWrite, FsOp::kSync),
                         [](const ::testing::TestParamInfo<FsOp>& param_info) {
                           return param_info.param == FsOp::kWrite ? std::string("WalWrite")
                                                                   : std::string("WalSync");
                         });

}  // namespace
}  // namespace shale
