// FaultDevice: volatile write log, power cuts, injected failures.
#include "engine/io/fault_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "engine/io/memory_device.h"
#include "engine/io/testing.h"
#include "engine/io/uring_device.h"

namespace shale {
namespace {

using testutil::FillPattern;
using testutil::FindPatternMismatch;
using testutil::IsAllZero;

constexpr uint64_t kBlock = 4096;
constexpr uint64_t kSize = 16 << 20;

class FaultDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    reactor_ = testutil::StartReactor("fault-test");
    inner_ = std::make_shared<MemoryDevice>(kSize);
    dev_ = std::make_unique<FaultDevice>(inner_, 7);
  }
  void TearDown() override {
    dev_.reset();
    reactor_.reset();
  }

  // Async write of one block of pattern seed at block index b.
  Status WriteBlock(uint64_t b, uint64_t seed, uint32_t flags = 0) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    FillPattern({buf.get(), kBlock}, seed);
    return testutil::WriteAt(*reactor_, *dev_, b * kBlock, {buf.get(), kBlock}, flags);
  }
  Status WriteBlockSync(uint64_t b, uint64_t seed) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    FillPattern({buf.get(), kBlock}, seed);
    return dev_->WriteSync(b * kBlock, buf.get(), kBlock);
  }
  // Async read of block b through the fault device.
  AlignedBuffer ReadBlock(uint64_t b) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    std::memset(buf.get(), 0xA5, kBlock);
    Status st = testutil::ReadAt(*reactor_, *dev_, b * kBlock, {buf.get(), kBlock});
    EXPECT_TRUE(st.ok()) << st;
    return buf;
  }
  // Block b as the durable medium holds it.
  AlignedBuffer DurableBlock(uint64_t b) {
    AlignedBuffer buf = AllocateAligned(kBlock);
    EXPECT_TRUE(inner_->ReadSync(b * kBlock, buf.get(), kBlock).ok());
    return buf;
  }
  bool BlockIs(const AlignedBuffer& buf, uint64_t seed) {
    return FindPatternMismatch({buf.get(), kBlock}, seed) == -1;
  }
  bool BlockIsZero(const AlignedBuffer& buf) { return IsAllZero({buf.get(), kBlock}); }

  std::unique_ptr<Reactor> reactor_;
  std::shared_ptr<MemoryDevice> inner_;
  std::unique_ptr<FaultDevice> dev_;
};

TEST_F(FaultDeviceTest, KindAndGeometryComeFromInner) {
  EXPECT_EQ(dev_->kind(), "fault(memory)");
  EXPECT_EQ(dev_->geometry().size_bytes, inner_->geometry().size_bytes);
  EXPECT_EQ(dev_->geometry().logical_block_size, inner_->geometry().logical_block_size);
  EXPECT_EQ(dev_->inner(), inner_);
}

TEST_F(FaultDeviceTest, ReadsSeeTheVolatileLogBeforeTheCut) {
  ASSERT_TRUE(WriteBlock(3, 1).ok());
  EXPECT_TRUE(BlockIs(ReadBlock(3), 1));
  EXPECT_TRUE(BlockIsZero(DurableBlock(3)));  // not on the medium yet
  EXPECT_EQ(dev_->unflushed_writes(), 1u);

  // A later partial overwrite wins where it overlaps, in log order.
  AlignedBuffer half = AllocateAligned(kBlock / 2);
  FillPattern({half.get(), kBlock / 2}, 2);
  ASSERT_TRUE(dev_->WriteSync(3 * kBlock + kBlock / 2, half.get(), kBlock / 2).ok());
  AlignedBuffer expect = AllocateAligned(kBlock);
  FillPattern({expect.get(), kBlock}, 1);
  std::memcpy(expect.get() + kBlock / 2, half.get(), kBlock / 2);
  AlignedBuffer got = ReadBlock(3);
  EXPECT_EQ(std::memcmp(got.get(), expect.get(), kBlock), 0);
  AlignedBuffer got_sync = AllocateAligned(kBlock);
  ASSERT_TRUE(dev_->ReadSync(3 * kBlock, got_sync.get(), kBlock).ok());
  EXPECT_EQ(std::memcmp(got_sync.get(), expect.get(), kBlock), 0);
  EXPECT_EQ(dev_->unflushed_writes(), 2u);
}

TEST_F(FaultDeviceTest, PowerCutDropsUnflushedWritesAndKeepsFlushedOnes) {
  ASSERT_TRUE(WriteBlock(0, 10).ok());
  ASSERT_TRUE(WriteBlockSync(1, 11).ok());
  ASSERT_TRUE(testutil::Flush(*reactor_, *dev_).ok());
  EXPECT_EQ(dev_->unflushed_writes(), 0u);
  EXPECT_TRUE(BlockIs(DurableBlock(0), 10));

  ASSERT_TRUE(WriteBlock(0, 20).ok());  // overwrites flushed data, unflushed
  ASSERT_TRUE(WriteBlock(2, 21).ok());
  ASSERT_TRUE(WriteBlockSync(3, 22).ok());
  EXPECT_EQ(dev_->unflushed_writes(), 3u);
  dev_->PowerCut(FaultDevice::CutMode::kDropAll);

  EXPECT_EQ(dev_->unflushed_writes(), 0u);
  EXPECT_TRUE(BlockIs(ReadBlock(0), 10));
  EXPECT_TRUE(BlockIs(ReadBlock(1), 11));
  EXPECT_TRUE(BlockIsZero(ReadBlock(2)));
  EXPECT_TRUE(BlockIsZero(ReadBlock(3)));
  // And it works again afterwards.
  ASSERT_TRUE(WriteBlock(2, 23).ok());
  ASSERT_TRUE(dev_->FlushSync().ok());
  dev_->PowerCut();
  EXPECT_TRUE(BlockIs(ReadBlock(2), 23));
}

TEST_F(FaultDeviceTest, FuaWriteSurvivesAndMakesEarlierWritesDurable) {
  ASSERT_TRUE(WriteBlock(5, 30).ok());          // unflushed
  ASSERT_TRUE(WriteBlock(6, 31, kIoFua).ok());  // FUA: flushes the whole log
  EXPECT_EQ(dev_->unflushed_writes(), 0u);
  ASSERT_TRUE(WriteBlock(7, 32).ok());  // after the FUA: volatile
  dev_->PowerCut();
  EXPECT_TRUE(BlockIs(ReadBlock(5), 30));
  EXPECT_TRUE(BlockIs(ReadBlock(6), 31));
  EXPECT_TRUE(BlockIsZero(ReadBlock(7)));
}

TEST_F(FaultDeviceTest, WriteZeroesAndDiscardAreVolatileZeroWritesUntilFlushed) {
  ASSERT_TRUE(WriteBlock(8, 40).ok());
  ASSERT_TRUE(WriteBlock(9, 41).ok());
  ASSERT_TRUE(dev_->FlushSync().ok());

  ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev_, 8 * kBlock, kBlock).ok());
  ASSERT_TRUE(testutil::Discard(*reactor_, *dev_, 9 * kBlock, kBlock).ok());
  EXPECT_EQ(dev_->unflushed_writes(), 2u);
  EXPECT_TRUE(BlockIsZero(ReadBlock(8)));
  EXPECT_TRUE(BlockIsZero(ReadBlock(9)));
  dev_->PowerCut();
  EXPECT_TRUE(BlockIs(ReadBlock(8), 40));
  EXPECT_TRUE(BlockIs(ReadBlock(9), 41));

  ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev_, 8 * kBlock, kBlock).ok());
  ASSERT_TRUE(dev_->DiscardSync(9 * kBlock, kBlock).ok());
  ASSERT_TRUE(testutil::Flush(*reactor_, *dev_).ok());
  dev_->PowerCut();
  EXPECT_TRUE(BlockIsZero(ReadBlock(8)));
  EXPECT_TRUE(BlockIsZero(ReadBlock(9)));
  EXPECT_TRUE(BlockIsZero(DurableBlock(8)));
}

TEST_F(FaultDeviceTest, FailNthFailsExactlyThatOperationWithThatErrno) {
  dev_->FailNth(IoOp::kWrite, 3, ENOSPC);
  // Operations of other kinds do not count towards it.
  EXPECT_TRUE(BlockIsZero(ReadBlock(0)));
  ASSERT_TRUE(dev_->FlushSync().ok());

  EXPECT_TRUE(WriteBlock(0, 50).ok());      // write 1 (async)
  EXPECT_TRUE(WriteBlockSync(1, 51).ok());  // write 2 (sync)
  Status third = WriteBlock(2, 52);         // write 3: fails
  EXPECT_EQ(third.code(), StatusCode::kNoSpace) << third;
  EXPECT_EQ(third.sys_errno(), ENOSPC);
  EXPECT_TRUE(WriteBlockSync(3, 53).ok());  // write 4
  EXPECT_TRUE(WriteBlock(4, 54).ok());      // write 5
  EXPECT_EQ(dev_->ops(IoOp::kWrite), 5u);
  EXPECT_EQ(dev_->unflushed_writes(), 4u);  // the failed write left nothing behind

  EXPECT_TRUE(BlockIs(ReadBlock(0), 50));
  EXPECT_TRUE(BlockIs(ReadBlock(1), 51));
  EXPECT_TRUE(BlockIsZero(ReadBlock(2)));  // no effect
  EXPECT_TRUE(BlockIs(ReadBlock(3), 53));
  EXPECT_TRUE(BlockIs(ReadBlock(4), 54));

  // Reads, flushes and sync calls too; the count starts at the FailNth call.
  dev_->FailNth(IoOp::kRead, 2);
  AlignedBuffer buf = AllocateAligned(kBlock);
  EXPECT_TRUE(dev_->ReadSync(0, buf.get(), kBlock).ok());
  Status read2 = testutil::ReadAt(*reactor_, *dev_, 0, {buf.get(), kBlock});
  EXPECT_EQ(read2.code(), StatusCode::kIoError) << read2;
  EXPECT_EQ(read2.sys_errno(), EIO);
  EXPECT_TRUE(dev_->ReadSync(0, buf.get(), kBlock).ok());

  dev_->FailNth(IoOp::kFlush, 1);
  Status flush = testutil::Flush(*reactor_, *dev_);
  EXPECT_EQ(flush.code(), StatusCode::kIoError);
  EXPECT_EQ(dev_->unflushed_writes(), 4u);  // a failed flush has no effect
  EXPECT_TRUE(BlockIsZero(DurableBlock(0)));
  EXPECT_TRUE(dev_->FlushSync().ok());
  EXPECT_TRUE(BlockIs(DurableBlock(0), 50));
}

TEST_F(FaultDeviceTest, FailNthCoversDiscardAndWriteZeroes) {
  ASSERT_TRUE(WriteBlock(0, 55).ok());
  dev_->FailNth(IoOp::kDiscard, 1, EROFS);
  Status st = dev_->DiscardSync(0, kBlock);
  EXPECT_EQ(st.code(), StatusCode::kPermissionDenied) << st;
  dev_->FailNth(IoOp::kWriteZeroes, 1);
  EXPECT_EQ(testutil::WriteZeroes(*reactor_, *dev_, 0, kBlock).code(), StatusCode::kIoError);
  EXPECT_TRUE(BlockIs(ReadBlock(0), 55));
  EXPECT_TRUE(testutil::Discard(*reactor_, *dev_, 0, kBlock).ok());
  EXPECT_TRUE(BlockIsZero(ReadBlock(0)));
}

TEST_F(FaultDeviceTest, FailAllAfterKillsEveryOperationUntilPowerCut) {
  dev_->FailAllAfter(3);
  ASSERT_TRUE(WriteBlock(0, 60).ok());                  // 1
  EXPECT_TRUE(BlockIs(ReadBlock(0), 60));               // 2
  ASSERT_TRUE(testutil::Flush(*reactor_, *dev_).ok());  // 3
  // The disk is dead: every kind, async and sync.
  AlignedBuffer buf = AllocateAligned(kBlock);
  EXPECT_EQ(WriteBlock(1, 61).code(), StatusCode::kIoError);
  EXPECT_EQ(testutil::ReadAt(*reactor_, *dev_, 0, {buf.get(), kBlock}).code(),
            StatusCode::kIoError);
  EXPECT_EQ(testutil::Flush(*reactor_, *dev_).code(), StatusCode::kIoError);
  EXPECT_EQ(testutil::Discard(*reactor_, *dev_, 0, kBlock).code(), StatusCode::kIoError);
  EXPECT_EQ(testutil::WriteZeroes(*reactor_, *dev_, 0, kBlock).code(), StatusCode::kIoError);
  EXPECT_EQ(dev_->ReadSync(0, buf.get(), kBlock).code(), StatusCode::kIoError);
  EXPECT_EQ(dev_->WriteSync(0, buf.get(), kBlock).sys_errno(), EIO);
  EXPECT_EQ(dev_->FlushSync().code(), StatusCode::kIoError);
  EXPECT_EQ(dev_->DiscardSync(0, kBlock).code(), StatusCode::kIoError);
  EXPECT_EQ(dev_->unflushed_writes(), 0u);

  dev_->PowerCut();
  EXPECT_TRUE(BlockIs(ReadBlock(0), 60));  // flushed before the disk died
  EXPECT_TRUE(BlockIsZero(ReadBlock(1)));
  EXPECT_TRUE(WriteBlock(1, 62).ok());
}

TEST_F(FaultDeviceTest, FailAllAfterZeroFailsTheNextOperationWithTheGivenErrno) {
  dev_->FailAllAfter(0, ENOSPC);
  EXPECT_EQ(WriteBlock(0, 63).code(), StatusCode::kNoSpace);
  EXPECT_EQ(dev_->FlushSync().sys_errno(), ENOSPC);
}

TEST_F(FaultDeviceTest, PowerCutClearsPendingFaults) {
  dev_->FailNth(IoOp::kWrite, 1);
  dev_->FailAllAfter(5);
  dev_->PowerCut();
  for (uint64_t b = 0; b < 8; ++b) EXPECT_TRUE(WriteBlock(b, 64 + b).ok()) << b;
}

TEST_F(FaultDeviceTest, CountsValidatedOperationsOfEachKind) {
  AlignedBuffer buf = AllocateAligned(kBlock);
  ASSERT_TRUE(WriteBlock(0, 70).ok());
  ASSERT_TRUE(WriteBlockSync(1, 71).ok());
  ASSERT_TRUE(WriteBlock(2, 72, kIoFua).ok());
  ASSERT_TRUE(dev_->ReadSync(0, buf.get(), kBlock).ok());
  ReadBlock(0);
  ASSERT_TRUE(dev_->FlushSync().ok());
  ASSERT_TRUE(testutil::Discard(*reactor_, *dev_, 0, kBlock).ok());
  ASSERT_TRUE(dev_->DiscardSync(0, kBlock).ok());
  ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev_, 0, kBlock).ok());
  // Invalid requests are rejected before they reach the "disk" and are not counted.
  EXPECT_EQ(dev_->ReadSync(kSize, buf.get(), kBlock).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(testutil::ReadAt(*reactor_, *dev_, 1, {buf.get(), kBlock}).code(),
            StatusCode::kInvalidArgument);

  EXPECT_EQ(dev_->ops(IoOp::kWrite), 3u);
  EXPECT_EQ(dev_->ops(IoOp::kRead), 2u);
  EXPECT_EQ(dev_->ops(IoOp::kFlush), 1u);
  EXPECT_EQ(dev_->ops(IoOp::kDiscard), 2u);
  EXPECT_EQ(dev_->ops(IoOp::kWriteZeroes), 1u);
}

// History shared by the kRandom tests: kWrites blocks of "old" content flushed, then
// kWrites unflushed writes of "new" content over them, each kSectors sectors long.
constexpr uint64_t kWrites = 200;
constexpr uint64_t kSectors = 8;
constexpr uint64_t kOldSeed = 1000, kNewSeed = 2000;

void WriteHistory(Reactor& reactor, FaultDevice& dev) {
  AlignedBuffer buf = AllocateAligned(kBlock);
  for (uint64_t i = 0; i < kWrites; ++i) {
    FillPattern({buf.get(), kBlock}, kOldSeed + i);
    ASSERT_TRUE(dev.WriteSync(i * kBlock, buf.get(), kBlock).ok());
  }
  ASSERT_TRUE(dev.FlushSync().ok());
  for (uint64_t i = 0; i < kWrites; ++i) {
    FillPattern({buf.get(), kBlock}, kNewSeed + i);
    ASSERT_TRUE(testutil::WriteAt(reactor, dev, i * kBlock, {buf.get(), kBlock}).ok());
  }
}

std::vector<uint8_t> Contents(BlockDevice& dev, uint64_t length) {
  std::vector<uint8_t> out(length);
  EXPECT_TRUE(dev.ReadSync(0, out.data(), length).ok());
  return out;
}

TEST_F(FaultDeviceTest, RandomCutIsReproducibleForASeed) {
  std::vector<std::vector<uint8_t>> results;
  for (uint64_t seed : {42, 42, 43}) {
    auto inner = std::make_shared<MemoryDevice>(kSize);
    FaultDevice dev(inner, seed);
    WriteHistory(*reactor_, dev);
    dev.PowerCut(FaultDevice::CutMode::kRandom);
    results.push_back(Contents(*inner, kWrites * kBlock));
  }
  EXPECT_TRUE(results[0] == results[1]) << "same seed, same history, different outcome";
  EXPECT_FALSE(results[0] == results[2]) << "different seeds gave the same outcome";
}

TEST_F(FaultDeviceTest, RandomCutLeavesEachSectorOldOrNewAndTearsOnlyPrefixes) {
  WriteHistory(*reactor_, *dev_);
  dev_->PowerCut(FaultDevice::CutMode::kRandom);
  EXPECT_EQ(dev_->unflushed_writes(), 0u);
  constexpr uint64_t kSector = kBlock / kSectors;
  uint64_t dropped = 0, kept = 0, torn = 0;
  AlignedBuffer oldb = AllocateAligned(kBlock), newb = AllocateAligned(kBlock);
  for (uint64_t i = 0; i < kWrites; ++i) {
    AlignedBuffer got = ReadBlock(i);
    FillPattern({oldb.get(), kBlock}, kOldSeed + i);
    FillPattern({newb.get(), kBlock}, kNewSeed + i);
    uint64_t new_sectors = 0;
    bool seen_old = false;
    for (uint64_t s = 0; s < kSectors; ++s) {
      const uint8_t* sector = got.get() + s * kSector;
      const bool is_new = std::memcmp(sector, newb.get() + s * kSector, kSector) == 0;
      const bool is_old = std::memcmp(sector, oldb.get() + s * kSector, kSector) == 0;
      ASSERT_TRUE(is_new || is_old) << "garbage in write " << i << " sector " << s;
      if (is_new) {
        ASSERT_FALSE(seen_old) << "write " << i << " persisted a non-prefix of its sectors";
        ++new_sectors;
      } else {
        seen_old = true;
      }
    }
    if (new_sectors == 0) {
      ++dropped;
    } else if (new_sectors == kSectors) {
      ++kept;
    } else {
      ++torn;
    }
  }
  // p(drop)=1/2, p(torn)=1/8 over 200 writes; the seed makes this deterministic.
  EXPECT_GT(dropped, 0u);
  EXPECT_GT(kept, 0u);
  EXPECT_GT(torn, 0u);
  // The device works after the cut and holds what survived.
  ASSERT_TRUE(WriteBlock(0, 99).ok());
  EXPECT_TRUE(BlockIs(ReadBlock(0), 99));
}

TEST_F(FaultDeviceTest, RandomCutAppliesSurvivorsInLogOrder) {
  // Two unflushed writes to the same block, A then B, each kept or not and maybe torn to a
  // prefix. Applied in log order the block must read as B* A* old* sector by sector (B's
  // surviving prefix on top of A's); any other shape means reordering or garbage.
  AlignedBuffer old = AllocateAligned(kBlock), a = AllocateAligned(kBlock),
                b = AllocateAligned(kBlock);
  FillPattern({old.get(), kBlock}, 1);
  FillPattern({a.get(), kBlock}, 2);
  FillPattern({b.get(), kBlock}, 3);
  int first_sector_b = 0, first_sector_a = 0;
  for (uint64_t seed = 1; seed <= 64; ++seed) {
    auto inner = std::make_shared<MemoryDevice>(kSize);
    FaultDevice dev(inner, seed);
    ASSERT_TRUE(dev.WriteSync(0, old.get(), kBlock).ok());
    ASSERT_TRUE(dev.FlushSync().ok());
    ASSERT_TRUE(dev.WriteSync(0, a.get(), kBlock).ok());
    ASSERT_TRUE(dev.WriteSync(0, b.get(), kBlock).ok());
    dev.PowerCut(FaultDevice::CutMode::kRandom);
    AlignedBuffer got = AllocateAligned(kBlock);
    ASSERT_TRUE(dev.ReadSync(0, got.get(), kBlock).ok());
    int phase = 0;  // 0: B allowed, 1: A allowed, 2: only old
    for (uint64_t off = 0; off < kBlock; off += 512) {
      int cls;
      if (std::memcmp(got.get() + off, b.get() + off, 512) == 0) {
        cls = 0;
      } else if (std::memcmp(got.get() + off, a.get() + off, 512) == 0) {
        cls = 1;
      } else if (std::memcmp(got.get() + off, old.get() + off, 512) == 0) {
        cls = 2;
      } else {
        FAIL() << "garbage: seed " << seed << " sector " << off / 512;
      }
      ASSERT_GE(cls, phase) << "not B*A*old*: seed " << seed << " sector " << off / 512;
      phase = cls;
    }
    first_sector_b += std::memcmp(got.get(), b.get(), 512) == 0 ? 1 : 0;
    first_sector_a += std::memcmp(got.get(), a.get(), 512) == 0 ? 1 : 0;
  }
  // B survives in 1/2 of the cuts, A shows at sector 0 only when B was dropped (1/4).
  EXPECT_GT(first_sector_b, first_sector_a);
  EXPECT_GT(first_sector_a, 0);
}

TEST_F(FaultDeviceTest, ConcurrentSyncAndAsyncUseIsSafe) {
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 64;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      AlignedBuffer buf = AllocateAligned(kBlock);
      for (uint64_t i = 0; i < kPerThread; ++i) {
        const uint64_t b = static_cast<uint64_t>(t) * kPerThread + i;
        FillPattern({buf.get(), kBlock}, 3000 + b);
        EXPECT_TRUE(dev_->WriteSync(b * kBlock, buf.get(), kBlock).ok());
        if (i % 16 == 0) {
          EXPECT_TRUE(dev_->FlushSync().ok());
        }
      }
    });
  }
  testutil::IoBatch batch;
  AlignedBuffer bufs = AllocateAligned(kPerThread * kBlock);
  for (uint64_t i = 0; i < kPerThread; ++i) {
    const uint64_t b = kThreads * kPerThread + i;
    FillPattern({bufs.get() + i * kBlock, kBlock}, 3000 + b);
    batch.Add(IoOp::kWrite, b * kBlock, kBlock, bufs.get() + i * kBlock);
  }
  batch.SubmitAndWait(*reactor_, *dev_);
  for (auto& t : threads) t.join();
  EXPECT_TRUE(batch.ContractHeld()) << batch.ContractViolation();
  ASSERT_TRUE(dev_->FlushSync().ok());
  dev_->PowerCut();
  for (uint64_t b = 0; b < (kThreads + 1) * kPerThread; ++b) {
    ASSERT_TRUE(BlockIs(ReadBlock(b), 3000 + b)) << b;
  }
}

TEST(FaultDeviceOverFileTest, FlushReachesTheFileAndTheCutDropsTheRest) {
  testutil::TempDir dir("shale-fault");
  const std::string path = dir.SparseFile("device", 8 << 20);
  auto opened = UringDevice::Open(path, DeviceOptions{});
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::shared_ptr<BlockDevice> inner(std::move(opened).value());
  auto reactor = testutil::StartReactor("fault-file");
  FaultDevice dev(inner, 3);
  EXPECT_EQ(dev.kind(), "fault(io_uring)");

  // What another process would see in the file.
  auto file_block = [&](uint64_t b) {
    std::vector<uint8_t> out(kBlock);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pread(fd, out.data(), kBlock, static_cast<off_t>(b * kBlock)),
              static_cast<ssize_t>(kBlock));
    close(fd);
    return out;
  };
  AlignedBuffer buf = AllocateAligned(kBlock);
  FillPattern({buf.get(), kBlock}, 80);
  ASSERT_TRUE(testutil::WriteAt(*reactor, dev, 0, {buf.get(), kBlock}).ok());
  EXPECT_TRUE(IsAllZero(file_block(0)));
  ASSERT_TRUE(testutil::Flush(*reactor, dev).ok());
  EXPECT_EQ(FindPatternMismatch(file_block(0), 80), -1);

  FillPattern({buf.get(), kBlock}, 81);
  ASSERT_TRUE(testutil::WriteAt(*reactor, dev, kBlock, {buf.get(), kBlock}).ok());
  dev.PowerCut();
  EXPECT_TRUE(IsAllZero(file_block(1)));
  AlignedBuffer back = AllocateAligned(kBlock);
  ASSERT_TRUE(testutil::ReadAt(*reactor, dev, 0, {back.get(), kBlock}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), kBlock}, 80), -1);
}

}  // namespace
}  // namespace shale
