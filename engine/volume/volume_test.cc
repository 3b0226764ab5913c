#include "engine/volume/volume.h"

#include <gtest/gtest.h>

#include <atomic>

#include "engine/io/fault_device.h"
#include "engine/io/memory_device.h"
#include "engine/volume/volume_test_util.h"

namespace shale {
namespace {

using testing::Pattern;
using testing::RunVolumeIo;

class VolumeTest : public testing::VolumeFixture {};

TEST_F(VolumeTest, UnwrittenRangesReadAsZeros) {
  Volume* v = CreateVolume("v", 16 * kMiB);
  auto data = Read(v, 0, 1 * kMiB);
  EXPECT_EQ(data, std::vector<uint8_t>(1 * kMiB, 0));
  EXPECT_EQ(v->allocated_bytes(), 0u);
}

TEST_F(VolumeTest, WritesReadBackAcrossClustersAndAtTheEnd) {
  Volume* v = CreateVolume("v", 16 * kMiB);
  struct Case {
    uint64_t off, len;
  } cases[] = {{0, 4096},
               {60 * kKiB, 8 * kKiB},
               {1 * kMiB, 1 * kMiB},
               {16 * kMiB - 4096, 4096},
               {3 * kMiB + 4096, 200 * kKiB}};
  uint32_t seed = 1;
  for (auto c : cases) {
    auto p = Pattern(c.len, seed++);
    ASSERT_TRUE(Write(v, c.off, p).ok());
    EXPECT_EQ(Read(v, c.off, c.len), p) << "offset " << c.off;
  }
  // Space is allocated on first write, cluster by cluster.
  EXPECT_GT(v->allocated_bytes(), 0u);
  EXPECT_LE(v->allocated_bytes(), 2 * kMiB);
}

TEST_F(VolumeTest, SectorAlignedWritesKeepTheirNeighbours) {
  Volume* v = CreateVolume("v", 4 * kMiB);
  auto base = Pattern(16 * kKiB, 7);
  ASSERT_TRUE(Write(v, 0, base).ok());
  auto patch = Pattern(1536, 8);  // 3 sectors straddling a block boundary
  ASSERT_TRUE(Write(v, 4096 - 512, patch).ok());
  auto expect = base;
  std::copy(patch.begin(), patch.end(), expect.begin() + 4096 - 512);
  EXPECT_EQ(Read(v, 0, 16 * kKiB), expect);
  // Unaligned reads too.
  EXPECT_EQ(Read(v, 512, 2048), std::vector<uint8_t>(expect.begin() + 512, expect.begin() + 2560));
  // A sector write into a never-written block leaves the rest of the block zero.
  auto s = Pattern(512, 9);
  ASSERT_TRUE(Write(v, 1 * kMiB + 1024, s).ok());
  auto blk = Read(v, 1 * kMiB, 4096);
  EXPECT_EQ(std::vector<uint8_t>(blk.begin() + 1024, blk.begin() + 1536), s);
  EXPECT_EQ(std::count(blk.begin(), blk.end(), 0), 4096 - 512 + std::count(s.begin(), s.end(), 0));
}

TEST_F(VolumeTest, ConcurrentSectorWritesToOneBlockAllSurvive) {
  Volume* v = CreateVolume("v", 4 * kMiB);
  constexpr int kSectors = 8;
  std::vector<AlignedBuffer> bufs;
  std::vector<VolumeIo> ios(kSectors);
  std::atomic<int> done{0};
  std::promise<void> all;
  for (int i = 0; i < kSectors; ++i) {
    bufs.push_back(AllocateAligned(512));
    std::memset(bufs.back().get(), 0x10 + i, 512);
  }
  reactor_->RunSync([&] {
    for (int i = 0; i < kSectors; ++i) {
      ios[i].op = VolumeOp::kWrite;
      ios[i].offset = static_cast<uint64_t>(i) * 512;
      ios[i].length = 512;
      ios[i].buf = bufs[i].get();
      ios[i].ctx = &done;
      ios[i].done = [](VolumeIo* io) {
        EXPECT_TRUE(io->status.ok()) << io->status;
        static_cast<std::atomic<int>*>(io->ctx)->fetch_add(1);
      };
      v->Submit(&ios[i]);
    }
  });
  for (int i = 0; i < 1000 && done.load() < kSectors; ++i) reactor_->RunSync([] {});
  ASSERT_EQ(done.load(), kSectors);
  auto blk = Read(v, 0, 4096);
  for (int i = 0; i < kSectors; ++i) {
    EXPECT_EQ(blk[static_cast<size_t>(i) * 512], 0x10 + i) << "sector " << i;
  }
}

TEST_F(VolumeTest, DiscardAndWriteZeroesReadZerosAndReturnSpace) {
  Volume* v = CreateVolume("v", 8 * kMiB);
  ASSERT_TRUE(Write(v, 0, Pattern(2 * kMiB, 3)).ok());
  ASSERT_TRUE(Flush(v).ok());
  const uint64_t free_before = pool_->allocator().free_count();
  EXPECT_EQ(v->allocated_bytes(), 2 * kMiB);
  ASSERT_TRUE(RunVolumeIo(*v, VolumeOp::kDiscard, 0, 1 * kMiB, nullptr).ok());
  EXPECT_EQ(Read(v, 0, 1 * kMiB), std::vector<uint8_t>(1 * kMiB, 0));
  EXPECT_EQ(v->allocated_bytes(), 1 * kMiB);
  // Freed clusters come back only once the free is durable.
  EXPECT_EQ(pool_->allocator().free_count(), free_before);
  ASSERT_TRUE(Flush(v).ok());
  EXPECT_EQ(pool_->allocator().free_count(), free_before + 16);

  // Write-zeroes with unaligned edges: exact zeros, neighbours intact.
  auto before = Read(v, 1 * kMiB, 64 * kKiB);
  ASSERT_TRUE(RunVolumeIo(*v, VolumeOp::kWriteZeroes, 1 * kMiB + 512, 10 * kKiB, nullptr).ok());
  auto after = Read(v, 1 * kMiB, 64 * kKiB);
  for (size_t i = 0; i < after.size(); ++i) {
    bool zeroed = i >= 512 && i < 512 + 10 * kKiB;
    ASSERT_EQ(after[i], zeroed ? 0 : before[i]) << "byte " << i;
  }
}

TEST_F(VolumeTest, WriteZeroesWithNoUnmapKeepsBlocksAllocated) {
  Volume* v = CreateVolume("v", 8 * kMiB);
  ASSERT_TRUE(RunVolumeIo(*v, VolumeOp::kWriteZeroes, 0, 3 * kMiB, nullptr, kVolumeNoUnmap).ok());
  EXPECT_EQ(v->allocated_bytes(), 3 * kMiB);
  EXPECT_EQ(Read(v, 0, 3 * kMiB), std::vector<uint8_t>(3 * kMiB, 0));
}

TEST_F(VolumeTest, BadRequestsGetClearErrors) {
  Volume* v = CreateVolume("v", 1 * kMiB);
  AlignedBuffer buf = AllocateAligned(8192);
  Status s = RunVolumeIo(*v, VolumeOp::kRead, 1 * kMiB - 4096, 8192, buf.get());
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  s = RunVolumeIo(*v, VolumeOp::kWrite, 100, 512, buf.get());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  s = RunVolumeIo(*v, VolumeOp::kWrite, 0, 0, buf.get());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  s = RunVolumeIo(*v, VolumeOp::kRead, UINT64_MAX - 511, 512, buf.get());
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  s = RunVolumeIo(*v, VolumeOp::kDiscard, 0, 2 * kMiB, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  Volume* ro = CreateVolume("ro", 1 * kMiB, /*read_only=*/true);
  s = RunVolumeIo(*ro, VolumeOp::kWrite, 0, 4096, buf.get());
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.ToErrno(), EPERM);
  s = RunVolumeIo(*ro, VolumeOp::kDiscard, 0, 4096, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(RunVolumeIo(*ro, VolumeOp::kRead, 0, 4096, buf.get()).ok());
}

TEST_F(VolumeTest, FlushedDataAndMappingsSurviveReopen) {
  Volume* v = CreateVolume("v", 8 * kMiB);
  auto p = Pattern(3 * kMiB, 11);
  ASSERT_TRUE(Write(v, 512 * kKiB, p).ok());
  ASSERT_TRUE(Flush(v).ok());
  ASSERT_TRUE(CloseVolume("v").ok());
  v = OpenVolume("v");
  EXPECT_EQ(Read(v, 512 * kKiB, 3 * kMiB), p);
  EXPECT_EQ(Read(v, 0, 512 * kKiB), std::vector<uint8_t>(512 * kKiB, 0));
  EXPECT_EQ(v->allocated_bytes(), 3 * kMiB);
}

TEST_F(VolumeTest, FuaWriteCommitsItsMapping) {
  Volume* v = CreateVolume("v", 8 * kMiB);
  const uint64_t writes_before = pool_->meta().write_count();
  ASSERT_TRUE(Write(v, 0, Pattern(4096, 1), kVolumeFua).ok());
  EXPECT_GT(pool_->meta().write_count(), writes_before);
  // Overwrite in place with FUA: no metadata change needed.
  const uint64_t writes_mid = pool_->meta().write_count();
  ASSERT_TRUE(Write(v, 0, Pattern(4096, 2), kVolumeFua).ok());
  EXPECT_EQ(pool_->meta().write_count(), writes_mid);
}

TEST_F(VolumeTest, ConcurrentFlushesShareCommits) {
  Volume* v = CreateVolume("v", 64 * kMiB);
  constexpr int kN = 256;
  std::vector<AlignedBuffer> bufs;
  std::vector<VolumeIo> ios(2 * kN);
  std::atomic<int> done{0};
  for (int i = 0; i < kN; ++i) {
    bufs.push_back(AllocateAligned(4096));
    std::memset(bufs.back().get(), i, 4096);
  }
  const uint64_t writes_before = pool_->meta().write_count();
  reactor_->RunSync([&] {
    for (int i = 0; i < kN; ++i) {
      for (int k = 0; k < 2; ++k) {
        VolumeIo& io = ios[2 * i + k];
        io.op = k == 0 ? VolumeOp::kWrite : VolumeOp::kFlush;
        io.offset = static_cast<uint64_t>(i) * 256 * kKiB;
        io.length = k == 0 ? 4096 : 0;
        io.buf = bufs[i].get();
        io.ctx = &done;
        io.done = [](VolumeIo* d) {
          EXPECT_TRUE(d->status.ok());
          static_cast<std::atomic<int>*>(d->ctx)->fetch_add(1);
        };
        v->Submit(&io);
      }
    }
  });
  for (int i = 0; i < 100000 && done.load() < 2 * kN; ++i) reactor_->RunSync([] {});
  ASSERT_EQ(done.load(), 2 * kN);
  const uint64_t writes = pool_->meta().write_count() - writes_before;
  EXPECT_LT(writes, static_cast<uint64_t>(kN)) << "flushes were not grouped";
  ASSERT_TRUE(CloseVolume("v").ok());
  v = OpenVolume("v");
  for (int i = 0; i < kN; i += 17) {
    EXPECT_EQ(Read(v, static_cast<uint64_t>(i) * 256 * kKiB, 4096),
              std::vector<uint8_t>(4096, static_cast<uint8_t>(i)));
  }
}

TEST_F(VolumeTest, ResizeGrowsAndNewSpaceReadsZeros) {
  Volume* v = CreateVolume("v", 1 * kMiB);
  reactor_->RunSync([&] { v->Grow(3 * kMiB); });
  EXPECT_EQ(v->size_bytes(), 3 * kMiB);
  EXPECT_EQ(Read(v, 2 * kMiB, 1 * kMiB), std::vector<uint8_t>(1 * kMiB, 0));
  auto p = Pattern(8192, 4);
  ASSERT_TRUE(Write(v, 3 * kMiB - 8192, p).ok());
  EXPECT_EQ(Read(v, 3 * kMiB - 8192, 8192), p);
}

TEST_F(VolumeTest, QueryAllocationReportsDataAndZeroRuns) {
  Volume* v = CreateVolume("v", 1 * kMiB);
  ASSERT_TRUE(Write(v, 64 * kKiB, Pattern(8192, 1)).ok());
  ASSERT_TRUE(Write(v, 128 * kKiB, Pattern(4096, 2)).ok());
  ASSERT_TRUE(RunVolumeIo(*v, VolumeOp::kDiscard, 68 * kKiB, 4096, nullptr).ok());
  std::vector<Volume::Extent> ext;
  reactor_->RunSync([&] { ext = v->QueryAllocation(0, 1 * kMiB, 100); });
  std::vector<std::pair<uint64_t, bool>> got;
  for (auto& e : ext) got.emplace_back(e.length, e.zero);
  std::vector<std::pair<uint64_t, bool>> want = {{64 * kKiB, true},
                                                 {4096, false},
                                                 {60 * kKiB, true},
                                                 {4096, false},
                                                 {1 * kMiB - 132 * kKiB, true}};
  EXPECT_EQ(got, want);
  reactor_->RunSync([&] { ext = v->QueryAllocation(64 * kKiB + 512, 1024, 10); });
  ASSERT_EQ(ext.size(), 1u);
  EXPECT_EQ(ext[0].length, 1024u);
  EXPECT_FALSE(ext[0].zero);
  reactor_->RunSync([&] { ext = v->QueryAllocation(0, 1 * kMiB, 2); });
  EXPECT_EQ(ext.size(), 2u);
  reactor_->RunSync([&] { ext = v->QueryAllocation(2 * kMiB, 4096, 2); });
  EXPECT_TRUE(ext.empty());
}

class CountingVolumeTest : public testing::VolumeFixture {
 protected:
  std::shared_ptr<BlockDevice> MakeDevice() override {
    fault_ = std::make_shared<FaultDevice>(std::make_shared<MemoryDevice>(pool_size_));
    return fault_;
  }
  std::shared_ptr<FaultDevice> fault_;
};

TEST_F(CountingVolumeTest, SequentialDataIsReadAndWrittenInOneDeviceOpPerMegabyte) {
  Volume* v = CreateVolume("v", 16 * kMiB);
  const uint64_t w0 = fault_->ops(IoOp::kWrite);
  const auto p = Pattern(4 * kMiB, 1);
  ASSERT_TRUE(Write(v, 0, p).ok());
  // Clusters are allocated contiguously, so a 4 MiB write is one device op (merges are capped
  // at 4 MiB).
  EXPECT_EQ(fault_->ops(IoOp::kWrite) - w0, 1u);
  const uint64_t r0 = fault_->ops(IoOp::kRead);
  auto data = Read(v, 1 * kMiB, 1 * kMiB);
  EXPECT_EQ(fault_->ops(IoOp::kRead) - r0, 1u)
      << "a 1 MiB read of contiguous clusters is one device read";
  EXPECT_EQ(data, std::vector<uint8_t>(p.begin() + kMiB, p.begin() + 2 * kMiB));
  // A read mixing data and never-written blocks reads only the data.
  const uint64_t r1 = fault_->ops(IoOp::kRead);
  (void)Read(v, 4 * kMiB - 8192, 16384);
  EXPECT_EQ(fault_->ops(IoOp::kRead) - r1, 1u);
}

class SmallPoolVolumeTest : public testing::VolumeFixture {
 protected:
  void SetUp() override {
    pool_size_ = kPoolDataOffset + 32 * 64 * kKiB;  // 32 clusters = 2 MiB of data
    VolumeFixture::SetUp();
  }
};

TEST_F(SmallPoolVolumeTest, OutOfSpaceFailsTheWriterAndKeepsEveryVolumeIntact) {
  Volume* a = CreateVolume("a", 16 * kMiB);
  Volume* b = CreateVolume("b", 16 * kMiB);
  auto pa = Pattern(1 * kMiB, 1);
  ASSERT_TRUE(Write(a, 0, pa).ok());
  auto pb = Pattern(512 * kKiB, 2);
  ASSERT_TRUE(Write(b, 0, pb).ok());
  // 24 of 32 clusters used. A 1 MiB write needs 16 more.
  Status s = Write(a, 4 * kMiB, Pattern(1 * kMiB, 3));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNoSpace);
  EXPECT_EQ(s.ToErrno(), ENOSPC);
  EXPECT_EQ(Read(a, 0, 1 * kMiB), pa);
  EXPECT_EQ(Read(b, 0, 512 * kKiB), pb);
  EXPECT_EQ(Read(a, 4 * kMiB, 1 * kMiB), std::vector<uint8_t>(1 * kMiB, 0));
  // The failed write's partial allocation was rolled back: 8 clusters are still free.
  EXPECT_EQ(pool_->allocator().free_count(), 8u);
  ASSERT_TRUE(Write(b, 8 * kMiB, Pattern(512 * kKiB, 4)).ok());
  ASSERT_TRUE(Flush(a).ok());
  ASSERT_TRUE(Flush(b).ok());
}

TEST_F(SmallPoolVolumeTest, ReusedClustersNeverShowTheirOldData) {
  Volume* a = CreateVolume("a", 16 * kMiB);
  ASSERT_TRUE(Write(a, 0, std::vector<uint8_t>(2 * kMiB, 0xaa)).ok());
  ASSERT_TRUE(Flush(a).ok());
  ASSERT_TRUE(RunVolumeIo(*a, VolumeOp::kDiscard, 0, 2 * kMiB, nullptr).ok());
  ASSERT_TRUE(Flush(a).ok());
  EXPECT_EQ(pool_->allocator().free_count(), 32u);
  Volume* b = CreateVolume("b", 16 * kMiB);
  // One block per cluster: every cluster of the pool is reused, the rest must read zeros.
  for (uint64_t c = 0; c < 32; ++c)
    ASSERT_TRUE(Write(b, c * 64 * kKiB, std::vector<uint8_t>(4096, 0xbb)).ok());
  auto all = Read(b, 0, 2 * kMiB);
  for (uint64_t i = 0; i < all.size(); ++i) {
    uint8_t expect = (i % (64 * kKiB)) < 4096 ? 0xbb : 0x00;
    ASSERT_EQ(all[i], expect) << "byte " << i;
  }
}

// A memory device that can hold reads back (not executed, not completed) until Release().
class HoldingDevice final : public BlockDevice {
 public:
  explicit HoldingDevice(uint64_t size) : inner_(std::make_shared<MemoryDevice>(size)) {}
  DeviceGeometry geometry() const override { return inner_->geometry(); }
  std::string kind() const override { return "holding(memory)"; }
  void Submit(IoRequest* req) override {
    if (hold_reads && req->op == IoOp::kRead) return held_.push_back(req);
    inner_->Submit(req);
  }
  Status ReadSync(uint64_t o, void* b, uint64_t l) override { return inner_->ReadSync(o, b, l); }
  Status WriteSync(uint64_t o, const void* b, uint64_t l) override {
    return inner_->WriteSync(o, b, l);
  }
  Status FlushSync() override { return inner_->FlushSync(); }
  Status DiscardSync(uint64_t o, uint64_t l) override { return inner_->DiscardSync(o, l); }
  // On the reactor: stops holding and submits the held reads.
  void Release() {
    hold_reads = false;
    for (IoRequest* r : held_) inner_->Submit(r);
    held_.clear();
  }
  std::atomic<bool> hold_reads{false};

 private:
  std::shared_ptr<MemoryDevice> inner_;
  std::vector<IoRequest*> held_;  // reactor only
};

class HeldReadVolumeTest : public testing::VolumeFixture {
 protected:
  std::shared_ptr<BlockDevice> MakeDevice() override {
    dev_ = std::make_shared<HoldingDevice>(pool_size_);
    return dev_;
  }
  std::shared_ptr<HoldingDevice> dev_;
};

// The volume counts device I/Os in flight per physical cluster (InflightTable): a cluster whose
// data a read is still fetching is neither dropped from the map nor freed (and so never reused
// by another volume under the read) until that read completes.
TEST_F(HeldReadVolumeTest, AClusterUnderAReadInFlightIsFreedOnlyAfterTheRead) {
  Volume* a = CreateVolume("a", 4 * kMiB);
  const auto old = Pattern(64 * kKiB, 1);
  ASSERT_TRUE(Write(a, 0, old).ok());
  ASSERT_TRUE(Write(a, 64 * kKiB, old).ok());
  ASSERT_TRUE(Flush(a).ok());
  const uint64_t free_before = pool_->allocator().free_count();
  dev_->hold_reads = true;
  AlignedBuffer buf = AllocateAligned(128 * kKiB);
  std::promise<Status> read_done;
  VolumeIo io;
  io.op = VolumeOp::kRead;
  io.length = 128 * kKiB;
  io.buf = buf.get();
  io.ctx = &read_done;
  io.done = [](VolumeIo* d) { static_cast<std::promise<Status>*>(d->ctx)->set_value(d->status); };
  reactor_->Post([&] { a->Submit(&io); });
  // Both clusters lose every block while the read waits at the device; the commit frees nothing.
  ASSERT_TRUE(RunVolumeIo(*a, VolumeOp::kDiscard, 0, 128 * kKiB, nullptr).ok());
  ASSERT_TRUE(Flush(a).ok());
  EXPECT_EQ(pool_->allocator().free_count(), free_before);
  reactor_->RunSync([&] {
    EXPECT_EQ(a->map().Fragments(0).size(), 1u);
    EXPECT_EQ(a->map().Fragments(1).size(), 1u);
    dev_->Release();
  });
  ASSERT_TRUE(read_done.get_future().get().ok());
  EXPECT_EQ(std::vector<uint8_t>(buf.get(), buf.get() + 64 * kKiB), old);
  // The read is over: both empty fragments are gone and their clusters free once committed.
  ASSERT_TRUE(Flush(a).ok());
  EXPECT_EQ(pool_->allocator().free_count(), free_before + 2);
  reactor_->RunSync([&] { EXPECT_TRUE(a->map().Fragments(0).empty()); });
  EXPECT_EQ(Read(a, 0, 128 * kKiB), std::vector<uint8_t>(128 * kKiB, 0));
}

}  // namespace
}  // namespace shale
