#include "engine/pool/pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "engine/io/memory_device.h"
#include "engine/pool/keys.h"

namespace shale {
namespace {

namespace fs = std::filesystem;

class PoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-pool-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    device_ = std::make_shared<MemoryDevice>(256 * kMiB);
  }
  void TearDown() override { fs::remove_all(dir_); }

  PoolCreateOptions CreateOpts(const std::string& name = "tank") {
    return {.name = name, .metadata_dir = dir_ + "/meta-" + name, .cluster_size = 64 * kKiB};
  }
  PoolOpenOptions OpenOpts(const std::string& name = "tank", Uuid uuid = {}) {
    return {.name = name, .metadata_dir = dir_ + "/meta-" + name, .expected_uuid = uuid};
  }

  std::string dir_;
  std::shared_ptr<MemoryDevice> device_;
};

TEST_F(PoolTest, CreateThenOpenFindsTheSamePool) {
  Uuid uuid;
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok()) << pool.status();
    uuid = (*pool)->uuid();
    EXPECT_EQ((*pool)->cluster_size(), 64 * kKiB);
    EXPECT_EQ((*pool)->cluster_count(), (256 * kMiB - kPoolDataOffset) / (64 * kKiB));
    EXPECT_EQ((*pool)->allocator().free_count(), (*pool)->cluster_count());
  }
  auto pool = Pool::Open(device_, OpenOpts("tank", uuid));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->uuid(), uuid);
  EXPECT_EQ((*pool)->name(), "tank");
}

TEST_F(PoolTest, RefusesToFormatANonBlankDevice) {
  AlignedBuffer junk = AllocateAligned(4096);
  std::memset(junk.get(), 0xab, 4096);
  ASSERT_TRUE(device_->WriteSync(8192, junk.get(), 4096).ok());
  auto pool = Pool::Create(device_, CreateOpts());
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(pool.status().message().find("not blank"), std::string_view::npos);
  auto opts = CreateOpts();
  opts.force = true;
  EXPECT_TRUE(Pool::Create(device_, opts).ok());
}

TEST_F(PoolTest, RefusesToFormatAnotherPoolsDevice) {
  ASSERT_TRUE(Pool::Create(device_, CreateOpts("first")).ok());
  auto second = Pool::Create(device_, CreateOpts("second"));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find("first"), std::string_view::npos);
}

TEST_F(PoolTest, RefusesMetadataOfAnotherPool) {
  auto other_device = std::make_shared<MemoryDevice>(256 * kMiB);
  ASSERT_TRUE(Pool::Create(device_, CreateOpts("a")).ok());
  ASSERT_TRUE(Pool::Create(other_device, CreateOpts("b")).ok());
  // Device of pool b with the metadata of pool a.
  auto pool = Pool::Open(other_device, OpenOpts("a"));
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(pool.status().message().find("refusing"), std::string_view::npos);
  // And the device was not touched: pool b still opens.
  EXPECT_TRUE(Pool::Open(other_device, OpenOpts("b")).ok());
}

TEST_F(PoolTest, RefusesWhenMetadataIsMissing) {
  ASSERT_TRUE(Pool::Create(device_, CreateOpts()).ok());
  fs::remove_all(dir_ + "/meta-tank");
  auto pool = Pool::Open(device_, OpenOpts());
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(pool.status().message().find("metadata is missing"), std::string_view::npos);
  EXPECT_TRUE(Pool::ReadSuperblock(*device_).ok()) << "device must be left untouched";
}

TEST_F(PoolTest, RefusesABlankDeviceForAnExistingPool) {
  ASSERT_TRUE(Pool::Create(device_, CreateOpts()).ok());
  auto blank = std::make_shared<MemoryDevice>(256 * kMiB);
  auto pool = Pool::Open(blank, OpenOpts());
  ASSERT_FALSE(pool.ok());
  EXPECT_NE(pool.status().message().find("no Shale superblock"), std::string_view::npos);
}

TEST_F(PoolTest, RepairsADamagedPrimarySuperblockFromTheBackup) {
  ASSERT_TRUE(Pool::Create(device_, CreateOpts()).ok());
  AlignedBuffer buf = AllocateAligned(4096);
  ASSERT_TRUE(device_->ReadSync(0, buf.get(), 4096).ok());
  buf.get()[100] ^= 0xff;
  ASSERT_TRUE(device_->WriteSync(0, buf.get(), 4096).ok());
  auto read = Pool::ReadSuperblock(*device_);
  ASSERT_TRUE(read.ok());
  EXPECT_TRUE(read->primary_damaged);
  ASSERT_TRUE(Pool::Open(device_, OpenOpts()).ok());
  read = Pool::ReadSuperblock(*device_);
  ASSERT_TRUE(read.ok());
  EXPECT_FALSE(read->primary_damaged) << "open should have rewritten the primary copy";
}

TEST_F(PoolTest, BothSuperblocksDamagedIsAClearError) {
  ASSERT_TRUE(Pool::Create(device_, CreateOpts()).ok());
  AlignedBuffer buf = AllocateAligned(4096);
  for (uint64_t off : {uint64_t{0}, kSuperblockBackupOffset}) {
    ASSERT_TRUE(device_->ReadSync(off, buf.get(), 4096).ok());
    buf.get()[200] ^= 0xff;
    ASSERT_TRUE(device_->WriteSync(off, buf.get(), 4096).ok());
  }
  auto pool = Pool::Open(device_, OpenOpts());
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), StatusCode::kCorruption);
  EXPECT_NE(pool.status().message().find("checksum"), std::string_view::npos);
}

TEST_F(PoolTest, FinishesAnInterruptedCreation) {
  // Simulate a crash after the metadata said CREATING but before the superblock was written.
  Uuid uuid;
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok());
    uuid = (*pool)->uuid();
    meta::PoolRecord rec;
    ASSERT_TRUE(rec.ParseFromString(*(*pool)->meta().Get(keys::Pool()).value()));
    rec.set_state(meta::POOL_CREATING);
    ASSERT_TRUE((*pool)->meta().Put(keys::Pool(), rec.SerializeAsString()).ok());
  }
  ASSERT_TRUE(Pool::WipeSuperblock(*device_).ok());
  auto pool = Pool::Open(device_, OpenOpts());
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->uuid(), uuid);
  EXPECT_TRUE(Pool::ReadSuperblock(*device_).ok());
}

TEST_F(PoolTest, PipelineGroupsCommitsAndReleasesFreedClustersOnlyAfterDurable) {
  auto pool_or = Pool::Create(device_, CreateOpts());
  ASSERT_TRUE(pool_or.ok());
  Pool& pool = **pool_or;
  uint32_t a = pool.allocator().Allocate(0).value();
  uint32_t b = pool.allocator().Allocate(0).value();
  {
    CommitPipeline::Request req;
    req.batch.Put("Xtest\0k1", "v1");
    req.allocated = {a, b};
    ASSERT_TRUE(pool.pipeline().CommitSync(std::move(req)).ok());
  }
  EXPECT_TRUE(pool.pipeline().committed_bitmap().Test(a));
  // Free `a`: before the commit runs, the allocator must not hand it out again.
  bool released_before_write = true;
  pool.pipeline().SetBeforeMetadataWriteHook(
      [&] { released_before_write = !pool.allocator().IsUsed(a); });
  CommitPipeline::Request req;
  req.freed = {a};
  ASSERT_TRUE(pool.pipeline().CommitSync(std::move(req)).ok());
  EXPECT_FALSE(released_before_write);
  EXPECT_FALSE(pool.allocator().IsUsed(a));
  EXPECT_FALSE(pool.pipeline().committed_bitmap().Test(a));
  EXPECT_TRUE(pool.pipeline().committed_bitmap().Test(b));
  pool.pipeline().SetBeforeMetadataWriteHook(nullptr);

  // Many concurrent submitters share rounds.
  std::atomic<int> done{0};
  const uint64_t writes_before = pool.meta().write_count();
  for (int i = 0; i < 200; ++i) {
    CommitPipeline::Request r;
    r.batch.Put("Xtest\0k" + std::to_string(i), "v");
    r.done = [&](const Status& s) {
      EXPECT_TRUE(s.ok());
      done++;
    };
    pool.pipeline().Submit(std::move(r));
  }
  pool.pipeline().Stop();
  EXPECT_EQ(done.load(), 200);
  EXPECT_LT(pool.meta().write_count() - writes_before, 200u);
}

TEST_F(PoolTest, CommittedBitmapSurvivesReopen) {
  Uuid uuid;
  uint32_t c;
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok());
    uuid = (*pool)->uuid();
    c = (*pool)->allocator().Allocate(5).value();
    CommitPipeline::Request req;
    req.allocated = {c};
    ASSERT_TRUE((*pool)->pipeline().CommitSync(std::move(req)).ok());
  }
  auto pool = Pool::Open(device_, OpenOpts("tank", uuid));
  ASSERT_TRUE(pool.ok());
  EXPECT_TRUE((*pool)->allocator().IsUsed(c));
  EXPECT_EQ((*pool)->allocator().free_count(), (*pool)->cluster_count() - 1);
}

TEST_F(PoolTest, MetadataIsExclusiveToOneOpener) {
  auto pool = Pool::Create(device_, CreateOpts());
  ASSERT_TRUE(pool.ok());
  auto second = Pool::Open(device_, OpenOpts());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kBusy);
}

// --- Expansion (Pool::Expand, docs/format/superblock.md "Expansion") ---

// Allocates every free cluster and commits them; returns how many it got.
uint64_t FillPool(Pool& pool) {
  CommitPipeline::Request req;
  while (true) {
    Result<uint32_t> c = pool.allocator().Allocate(0);
    if (!c.ok()) break;
    req.allocated.push_back(*c);
  }
  const uint64_t n = req.allocated.size();
  EXPECT_TRUE(pool.pipeline().CommitSync(std::move(req)).ok());
  return n;
}

TEST_F(PoolTest, ExpandAddsFreeClustersThatSurviveReopen) {
  device_ = std::make_shared<MemoryDevice>(64 * kMiB);
  Uuid uuid;
  const uint64_t old_count = (64 * kMiB - kPoolDataOffset) / (64 * kKiB);
  const uint64_t new_count = (96 * kMiB - kPoolDataOffset) / (64 * kKiB);
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok()) << pool.status();
    uuid = (*pool)->uuid();
    EXPECT_EQ(FillPool(**pool), old_count);
    EXPECT_EQ((*pool)->allocator().Allocate(0).status().code(), StatusCode::kNoSpace);
    auto added = (*pool)->Expand(96 * kMiB);
    ASSERT_TRUE(added.ok()) << added.status();
    EXPECT_EQ(*added, new_count - old_count);
    EXPECT_EQ((*pool)->cluster_count(), new_count);
    EXPECT_EQ(device_->geometry().size_bytes, 96 * kMiB);
    // The new clusters are handed out and recorded in the committed bitmap.
    EXPECT_EQ(FillPool(**pool), new_count - old_count);
    EXPECT_EQ((*pool)->pipeline().committed_bitmap().Count(), new_count);
  }
  auto pool = Pool::Open(device_, OpenOpts("tank", uuid));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->cluster_count(), new_count);
  EXPECT_EQ((*pool)->superblock().device_size, 96 * kMiB);
  EXPECT_EQ((*pool)->allocator().free_count(), 0u);
  auto sb = Pool::ReadSuperblock(*device_);
  ASSERT_TRUE(sb.ok());
  EXPECT_FALSE(sb->primary_damaged);
  EXPECT_EQ(sb->superblock.generation, 2u);
}

TEST_F(PoolTest, ExpandWithoutRoomIsAClearErrorAndChangesNothing) {
  auto pool = Pool::Create(device_, CreateOpts());
  ASSERT_TRUE(pool.ok());
  const uint64_t count = (*pool)->cluster_count();
  auto same = (*pool)->Expand(0);
  ASSERT_FALSE(same.ok());
  EXPECT_EQ(same.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(same.status().message().find("already uses all of its"), std::string_view::npos)
      << same.status();
  // Less than one more cluster of room: nothing to add either.
  EXPECT_FALSE((*pool)->Expand(256 * kMiB + 32 * kKiB).ok());
  EXPECT_EQ((*pool)->cluster_count(), count);
}

TEST_F(PoolTest, ExpandInterruptedAfterTheRecordIsFinishedByOpen) {
  device_ = std::make_shared<MemoryDevice>(64 * kMiB);
  Uuid uuid;
  const uint64_t new_count = (128 * kMiB - kPoolDataOffset) / (64 * kKiB);
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok());
    uuid = (*pool)->uuid();
    // A crash between the record's commit and the superblock rewrite.
    (*pool)->SetExpandHook([] { return Status::IoError("power cut (test)"); });
    auto added = (*pool)->Expand(128 * kMiB);
    ASSERT_FALSE(added.ok());
    // Nothing of the new space was handed out in this run.
    EXPECT_EQ((*pool)->cluster_count(), (64 * kMiB - kPoolDataOffset) / (64 * kKiB));
    auto sb = Pool::ReadSuperblock(*device_);
    ASSERT_TRUE(sb.ok());
    EXPECT_EQ(sb->superblock.cluster_count, (*pool)->cluster_count()) << "superblock not yet";
  }
  auto pool = Pool::Open(device_, OpenOpts("tank", uuid));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->cluster_count(), new_count);
  EXPECT_EQ((*pool)->allocator().free_count(), new_count);
  auto sb = Pool::ReadSuperblock(*device_);
  ASSERT_TRUE(sb.ok());
  EXPECT_EQ(sb->superblock.cluster_count, new_count);
  EXPECT_EQ(sb->superblock.device_size, 128 * kMiB);
}

TEST_F(PoolTest, ExpandWithAStaleBackupSuperblockStillOpens) {
  // The primary copy was rewritten, the backup not (a crash between the two writes), and the
  // primary is damaged later: the backup's older geometry is finished from the record.
  device_ = std::make_shared<MemoryDevice>(64 * kMiB);
  Uuid uuid;
  std::string old_backup(kSuperblockSize, '\0');
  ASSERT_TRUE(device_->ReadSync(kSuperblockBackupOffset, old_backup.data(), kSuperblockSize).ok());
  {
    auto pool = Pool::Create(device_, CreateOpts());
    ASSERT_TRUE(pool.ok());
    uuid = (*pool)->uuid();
    AlignedBuffer buf = AllocateAligned(kSuperblockSize);
    ASSERT_TRUE(device_->ReadSync(kSuperblockBackupOffset, buf.get(), kSuperblockSize).ok());
    old_backup.assign(reinterpret_cast<const char*>(buf.get()), kSuperblockSize);
    ASSERT_TRUE((*pool)->Expand(96 * kMiB).ok());
  }
  AlignedBuffer buf = AllocateAligned(kSuperblockSize);
  std::memcpy(buf.get(), old_backup.data(), kSuperblockSize);
  ASSERT_TRUE(device_->WriteSync(kSuperblockBackupOffset, buf.get(), kSuperblockSize).ok());
  std::memset(buf.get(), 0x5a, kSuperblockSize);
  ASSERT_TRUE(device_->WriteSync(0, buf.get(), kSuperblockSize).ok());
  auto pool = Pool::Open(device_, OpenOpts("tank", uuid));
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ((*pool)->cluster_count(), (96 * kMiB - kPoolDataOffset) / (64 * kKiB));
  auto sb = Pool::ReadSuperblock(*device_);
  ASSERT_TRUE(sb.ok());
  EXPECT_FALSE(sb->primary_damaged);
}

}  // namespace
}  // namespace shale
