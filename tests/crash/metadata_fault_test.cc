// A metadata write or sync that fails under a running engine: the client's FLUSH gets EIO (never
// success), the pool goes to state "error" and every volume of it refuses writes and flushes
// while reads keep working, and after a restart (with a power cut of the metadata disk) nothing
// acknowledged before is lost and the pool is online and consistent again.
#include <gtest/gtest.h>
#include <rocksdb/file_system.h>

#include <cstring>
#include <filesystem>
#include <future>

#include "engine/engine.h"
#include "engine/io/memory_device.h"
#include "engine/pool/fault_fs.h"

namespace shale {
namespace {

namespace fs = std::filesystem;

class MetadataFaultTest : public ::testing::TestWithParam<FsOp> {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-metadata-fault-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    device_ = std::make_shared<MemoryDevice>(64 * kMiB);
    meta_fs_ =
        std::make_shared<FaultInjectingFs>(rocksdb::FileSystem::Default(), /*sync_base=*/false);
  }
  void TearDown() override { fs::remove_all(dir_); }

  EngineOptions Options() {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 64 * kMiB;
    o.default_cluster_size = 64 * kKiB;
    o.commit_interval_ms = 0;
    o.device_factory = [dev = device_](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
      return std::shared_ptr<BlockDevice>(dev);
    };
    o.metadata_fs_factory = [fs = meta_fs_](const std::string&) {
      return std::shared_ptr<rocksdb::FileSystem>(fs);
    };
    return o;
  }

  static Status Io(Engine& engine, const std::string& volume, VolumeOp op, uint64_t off,
                   uint64_t len, uint8_t* buf) {
    auto handle = engine.OpenVolume(volume);
    if (!handle.ok()) return handle.status();
    Volume& v = (*handle)->volume();
    std::promise<Status> p;
    VolumeIo io;
    io.op = op;
    io.offset = off;
    io.length = len;
    io.buf = buf;
    io.ctx = &p;
    io.done = [](VolumeIo* d) { static_cast<std::promise<Status>*>(d->ctx)->set_value(d->status); };
    v.reactor()->Post([&] { v.Submit(&io); });
    return p.get_future().get();
  }
  static Status Write(Engine& engine, const std::string& volume, uint64_t off, uint8_t fill) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    std::memset(buf.get(), fill, kBlock);
    return Io(engine, volume, VolumeOp::kWrite, off, kBlock, buf.get());
  }
  static Status Flush(Engine& engine, const std::string& volume) {
    return Io(engine, volume, VolumeOp::kFlush, 0, 0, nullptr);
  }
  // The byte every byte of the block at `off` holds, or -1 if they differ or the read failed.
  static int ReadFill(Engine& engine, const std::string& volume, uint64_t off) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    if (!Io(engine, volume, VolumeOp::kRead, off, kBlock, buf.get()).ok()) return -1;
    for (uint64_t i = 1; i < kBlock; ++i) {
      if (buf[i] != buf[0]) return -1;
    }
    return buf[0];
  }

  static constexpr uint64_t kBlock = 4096;
  std::string dir_;
  std::shared_ptr<MemoryDevice> device_;
  std::shared_ptr<FaultInjectingFs> meta_fs_;
};

TEST_P(MetadataFaultTest, AFailedCommitPutsThePoolInErrorAndLosesNothingAcknowledged) {
  {
    auto engine_or = Engine::Open(Options());
    ASSERT_TRUE(engine_or.ok()) << engine_or.status();
    Engine& engine = **engine_or;
    for (const char* name : {"a", "b"}) {
      ASSERT_TRUE(engine.CreateVolume({.name = name, .size_bytes = 4 * kMiB}).ok());
    }
    ASSERT_TRUE(Write(engine, "a", 0, 0xa1).ok());
    ASSERT_TRUE(Flush(engine, "a").ok());
    ASSERT_TRUE(Write(engine, "b", 0, 0xb1).ok());
    ASSERT_TRUE(Flush(engine, "b").ok());
    EXPECT_EQ(engine.GetPool("default")->state, "online");

    // The next RocksDB WAL write (or sync) fails: it is the commit of this FLUSH.
    meta_fs_->FailNth(GetParam(), 1);
    ASSERT_TRUE(Write(engine, "a", 1 * kMiB, 0xa2).ok()) << "a write to a new cluster completes";
    Status st = Flush(engine, "a");
    EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
    EXPECT_EQ(st.ToErrno(), EIO);
    // Never a success on top of the lost commit, on any volume of the pool, even for a write in
    // place (no metadata) or a flush with nothing left to commit.
    EXPECT_EQ(Flush(engine, "a").code(), StatusCode::kIoError);
    EXPECT_EQ(Write(engine, "b", 0, 0xb2).code(), StatusCode::kIoError);
    EXPECT_EQ(Flush(engine, "b").code(), StatusCode::kIoError);
    EXPECT_FALSE(engine.CreateVolume({.name = "c", .size_bytes = 4 * kMiB}).ok());
    // Reads keep working.
    EXPECT_EQ(ReadFill(engine, "a", 0), 0xa1);
    EXPECT_EQ(ReadFill(engine, "b", 0), 0xb1);

    auto pool = engine.GetPool("default");
    ASSERT_TRUE(pool.ok());
    EXPECT_EQ(pool->state, "error");
    EXPECT_NE(pool->error.find("refuses writes"), std::string::npos) << pool->error;
    EXPECT_NE(pool->error.find("injected metadata fault"), std::string::npos) << pool->error;
    engine.Shutdown().IgnoreError();  // the failed volumes cannot close cleanly
  }

  // A power cut of the metadata disk, then a restart: the pool recovers its durable state.
  ASSERT_TRUE(meta_fs_->PowerCut().ok());
  auto engine_or = Engine::Open(Options());
  ASSERT_TRUE(engine_or.ok()) << engine_or.status();
  Engine& engine = **engine_or;
  auto pool = engine.GetPool("default");
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->state, "online") << pool->error;
  EXPECT_EQ(ReadFill(engine, "a", 0), 0xa1);
  EXPECT_EQ(ReadFill(engine, "b", 0), 0xb1);
  const int lost = ReadFill(engine, "a", 1 * kMiB);
  EXPECT_TRUE(lost == 0 || lost == 0xa2) << "a never-acknowledged write reads as itself or zeros";
  EXPECT_FALSE(engine.GetVolume("c").ok());
  auto report = engine.CheckPool("default");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->clean()) << report->problems.front();
  // And it works again.
  ASSERT_TRUE(Write(engine, "b", 0, 0xb3).ok());
  ASSERT_TRUE(Flush(engine, "b").ok());
  EXPECT_EQ(ReadFill(engine, "b", 0), 0xb3);
}

INSTANTIATE_TEST_SUITE_P(WalWriteOrSync, MetadataFaultTest,
                         ::testing::Values(FsOp::kWrite, FsOp::kSync),
                         [](const ::testing::TestParamInfo<FsOp>& param_info) {
                           return param_info.param == FsOp::kWrite ? std::string("WalWrite")
                                                                   : std::string("WalSync");
                         });

}  // namespace
}  // namespace shale
