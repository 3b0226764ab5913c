// One suite, every BlockDevice: the semantics in block_device.h, checked against each
// implementation so that fakes (memory, fault) never drift from the real backends.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <thread>

#include "engine/io/aio_device.h"
#include "engine/io/fault_device.h"
#include "engine/io/memory_device.h"
#include "engine/io/testing.h"
#include "engine/io/uring_device.h"

namespace shale {
namespace {

using testutil::FillPattern;
using testutil::FindPatternMismatch;
using testutil::IoBatch;
using testutil::IsAllZero;
using testutil::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kDeviceSize = 64 * kMiB;

struct Config {
  std::string name;  // gtest parameter name
  std::string kind;  // expected BlockDevice::kind()
  std::string base;  // where the temp dir goes
  // Creates the device under dir; returns nullptr after setting *skip to skip the config.
  std::function<std::shared_ptr<BlockDevice>(const TempDir& dir, std::string* skip)> make;
};

// gtest prints the parameter of a failing test with this.
void PrintTo(const Config& config, std::ostream* os) { *os << config.name; }

std::shared_ptr<BlockDevice> OpenFile(const TempDir& dir, IoBackend backend, bool direct) {
  DeviceOptions options;
  options.backend = backend;
  options.direct = direct;
  auto dev = OpenBlockDevice(dir.SparseFile("device", kDeviceSize), options);
  SHALE_CHECK(dev.ok(), dev.status().ToString());
  return std::shared_ptr<BlockDevice>(std::move(dev).value());
}

bool DirExists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<Config> Configs() {
  auto tmpfs = [](const TempDir&, std::string* skip) {
    if (!DirExists("/dev/shm")) *skip = "no /dev/shm (tmpfs) on this machine";
    return skip->empty();
  };
  return {
      {"io_uring", "io_uring", "/tmp",
       [](const TempDir& d, std::string*) { return OpenFile(d, IoBackend::kIoUring, true); }},
      {"libaio", "libaio", "/tmp",
       [](const TempDir& d, std::string*) { return OpenFile(d, IoBackend::kLibaio, true); }},
      {"memory", "memory", "/tmp",
       [](const TempDir&, std::string*) { return std::make_shared<MemoryDevice>(kDeviceSize); }},
      {"fault_memory", "fault(memory)", "/tmp",
       [](const TempDir&, std::string*) {
         return std::make_shared<FaultDevice>(std::make_shared<MemoryDevice>(kDeviceSize));
       }},
      {"fault_io_uring", "fault(io_uring)", "/tmp",
       [](const TempDir& d, std::string*) {
         return std::make_shared<FaultDevice>(OpenFile(d, IoBackend::kIoUring, true));
       }},
      // Buffered I/O on tmpfs: the page-cache path and the write-zeroes fallback (tmpfs has
      // no FALLOC_FL_ZERO_RANGE).
      {"io_uring_buffered_tmpfs", "io_uring", "/dev/shm",
       [tmpfs](const TempDir& d, std::string* skip) -> std::shared_ptr<BlockDevice> {
         if (!tmpfs(d, skip)) return nullptr;
         return OpenFile(d, IoBackend::kIoUring, false);
       }},
      {"libaio_buffered_tmpfs", "libaio", "/dev/shm",
       [tmpfs](const TempDir& d, std::string* skip) -> std::shared_ptr<BlockDevice> {
         if (!tmpfs(d, skip)) return nullptr;
         return OpenFile(d, IoBackend::kLibaio, false);
       }},
  };
}

class BlockDeviceConformance : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    const std::string base = DirExists(GetParam().base) ? GetParam().base : "/tmp";
    dir_ = std::make_unique<TempDir>("shale-conformance", base);
    std::string skip;
    device_ = GetParam().make(*dir_, &skip);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_NE(device_, nullptr);
    reactor_ = testutil::StartReactor("conformance");
  }
  void TearDown() override {
    device_.reset();  // all I/O has completed
    reactor_.reset();
    dir_.reset();
  }

  BlockDevice& dev() { return *device_; }
  Reactor& reactor() { return *reactor_; }

  Status Write(uint64_t offset, std::span<const uint8_t> data, uint32_t flags = 0) {
    return testutil::WriteAt(reactor(), dev(), offset, data, flags);
  }
  Status Read(uint64_t offset, std::span<uint8_t> out) {
    return testutil::ReadAt(reactor(), dev(), offset, out);
  }
  // Reads length bytes at offset into a fresh buffer pre-filled with 0xA5 (so "zeros" are real).
  AlignedBuffer ReadBack(uint64_t offset, uint64_t length) {
    AlignedBuffer buf = AllocateAligned(length);
    std::memset(buf.get(), 0xA5, length);
    Status st = Read(offset, {buf.get(), length});
    EXPECT_TRUE(st.ok()) << st;
    return buf;
  }
  AlignedBuffer Pattern(uint64_t length, uint64_t seed) {
    AlignedBuffer buf = AllocateAligned(length);
    FillPattern({buf.get(), length}, seed);
    return buf;
  }

  std::unique_ptr<TempDir> dir_;
  std::shared_ptr<BlockDevice> device_;
  std::unique_ptr<Reactor> reactor_;
};

TEST_P(BlockDeviceConformance, ReportsKindAndGeometry) {
  EXPECT_EQ(dev().kind(), GetParam().kind);
  const DeviceGeometry& g = dev().geometry();
  EXPECT_EQ(g.size_bytes, kDeviceSize);
  EXPECT_EQ(g.logical_block_size, 512u);
  EXPECT_GE(g.physical_block_size, g.logical_block_size);
  EXPECT_EQ(g.physical_block_size & (g.physical_block_size - 1), 0u);
  EXPECT_FALSE(g.is_block_device);
}

TEST_P(BlockDeviceConformance, WriteReadRoundTripAtSeveralOffsetsAndSizes) {
  const std::vector<uint64_t> sizes = {4 * kKiB, 8 * kKiB, 25 * 512, 1 * kMiB, 4 * kMiB};
  const std::vector<uint64_t> offsets = {0, 512, 4 * kKiB + 512, 1 * kMiB + 1536,
                                         7 * kMiB + 4 * kKiB};
  uint64_t seed = 100;
  for (uint64_t size : sizes) {
    std::vector<uint64_t> where = offsets;
    where.push_back(kDeviceSize - size);  // the very end
    for (uint64_t offset : where) {
      SCOPED_TRACE("offset " + std::to_string(offset) + " size " + std::to_string(size));
      AlignedBuffer data = Pattern(size, ++seed);
      IoRequest w;
      w.op = IoOp::kWrite;
      w.offset = offset;
      w.length = size;
      w.buf = data.get();
      ASSERT_TRUE(testutil::RunIo(reactor(), dev(), w).ok()) << w.status;
      EXPECT_EQ(w.transferred, size);
      AlignedBuffer back = ReadBack(offset, size);
      ASSERT_EQ(FindPatternMismatch({back.get(), size}, seed), -1);
    }
  }
  // Neighbours stay intact: two adjacent blocks written separately read back as both.
  AlignedBuffer a = Pattern(4 * kKiB, 1), b = Pattern(4 * kKiB, 2);
  ASSERT_TRUE(Write(32 * kMiB, {a.get(), 4 * kKiB}).ok());
  ASSERT_TRUE(Write(32 * kMiB + 4 * kKiB, {b.get(), 4 * kKiB}).ok());
  AlignedBuffer both = ReadBack(32 * kMiB, 8 * kKiB);
  EXPECT_EQ(FindPatternMismatch({both.get(), 4 * kKiB}, 1), -1);
  EXPECT_EQ(FindPatternMismatch({both.get() + 4 * kKiB, 4 * kKiB}, 2), -1);
}

TEST_P(BlockDeviceConformance, UnwrittenAreasReadAsZeros) {
  AlignedBuffer fresh = ReadBack(10 * kMiB, 1 * kMiB);
  EXPECT_TRUE(IsAllZero({fresh.get(), 1 * kMiB}));
  AlignedBuffer end = ReadBack(kDeviceSize - 512, 512);
  EXPECT_TRUE(IsAllZero({end.get(), 512}));
  // One block written in the middle of a range: the rest of the range is still zeros.
  AlignedBuffer data = Pattern(4 * kKiB, 7);
  ASSERT_TRUE(Write(20 * kMiB + 32 * kKiB, {data.get(), 4 * kKiB}).ok());
  AlignedBuffer around = ReadBack(20 * kMiB, 64 * kKiB);
  EXPECT_TRUE(IsAllZero({around.get(), 32 * kKiB}));
  EXPECT_EQ(FindPatternMismatch({around.get() + 32 * kKiB, 4 * kKiB}, 7), -1);
  EXPECT_TRUE(IsAllZero({around.get() + 36 * kKiB, 28 * kKiB}));
}

TEST_P(BlockDeviceConformance, FuaWriteCompletesAndReadsBack) {
  AlignedBuffer data = Pattern(64 * kKiB, 11);
  Status st = Write(3 * kMiB + 512, {data.get(), 64 * kKiB}, kIoFua);
  ASSERT_TRUE(st.ok()) << st;
  AlignedBuffer back = ReadBack(3 * kMiB + 512, 64 * kKiB);
  EXPECT_EQ(FindPatternMismatch({back.get(), 64 * kKiB}, 11), -1);
}

TEST_P(BlockDeviceConformance, FlushCompletesWithAndWithoutDirtyData) {
  Status st = testutil::Flush(reactor(), dev());
  EXPECT_TRUE(st.ok()) << st;
  AlignedBuffer data = Pattern(128 * kKiB, 12);
  ASSERT_TRUE(Write(5 * kMiB, {data.get(), 128 * kKiB}).ok());
  st = testutil::Flush(reactor(), dev());
  EXPECT_TRUE(st.ok()) << st;
  AlignedBuffer back = ReadBack(5 * kMiB, 128 * kKiB);
  EXPECT_EQ(FindPatternMismatch({back.get(), 128 * kKiB}, 12), -1);
}

TEST_P(BlockDeviceConformance, WriteZeroesZeroesExactlyTheRange) {
  const uint64_t base = 8 * kMiB, span = 6 * kMiB;
  AlignedBuffer data = Pattern(span, 13);
  ASSERT_TRUE(Write(base, {data.get(), span}).ok());
  // Not 4 KiB aligned and longer than the 1 MiB zero chunk of the fallback paths.
  const uint64_t zoff = base + 1 * kMiB + 512, zlen = 3 * kMiB + 1024;
  Status st = testutil::WriteZeroes(reactor(), dev(), zoff, zlen);
  ASSERT_TRUE(st.ok()) << st;
  AlignedBuffer back = ReadBack(base, span);
  const uint64_t rel = zoff - base;
  EXPECT_EQ(FindPatternMismatch({back.get(), rel}, 13), -1);
  EXPECT_TRUE(IsAllZero({back.get() + rel, zlen}));
  AlignedBuffer expect = Pattern(span, 13);
  EXPECT_EQ(std::memcmp(back.get() + rel + zlen, expect.get() + rel + zlen, span - rel - zlen), 0);
  // On a never-written range too.
  st = testutil::WriteZeroes(reactor(), dev(), 40 * kMiB, 512);
  EXPECT_TRUE(st.ok()) << st;
}

TEST_P(BlockDeviceConformance, DiscardSucceedsAndLeavesZerosOrOldData) {
  const uint64_t base = 16 * kMiB, span = 1 * kMiB;
  AlignedBuffer data = Pattern(span, 14);
  ASSERT_TRUE(Write(base, {data.get(), span}).ok());
  const uint64_t doff = base + 4 * kKiB, dlen = 512 * kKiB;
  Status st = testutil::Discard(reactor(), dev(), doff, dlen);
  ASSERT_TRUE(st.ok()) << st;
  AlignedBuffer back = ReadBack(base, span);
  for (uint64_t s = 0; s < span; s += 512) {
    const bool old = std::memcmp(back.get() + s, data.get() + s, 512) == 0;
    if (s >= doff - base && s < doff - base + dlen) {
      ASSERT_TRUE(old || IsAllZero({back.get() + s, 512})) << "garbage in discarded sector " << s;
    } else {
      ASSERT_TRUE(old) << "discard changed sector " << s << " outside its range";
    }
  }
  st = dev().DiscardSync(doff, dlen);
  EXPECT_TRUE(st.ok()) << st;
}

TEST_P(BlockDeviceConformance, InvalidRequestsCompleteWithTheRightError) {
  AlignedBuffer buf = AllocateAligned(16 * kKiB);
  const uint64_t size = dev().geometry().size_bytes;
  struct Case {
    IoOp op;
    uint64_t offset, length;
    void* buf;
    StatusCode want;
  };
  const std::vector<Case> cases = {
      {IoOp::kRead, size, 4 * kKiB, buf.get(), StatusCode::kOutOfRange},
      {IoOp::kWrite, size - 4 * kKiB, 8 * kKiB, buf.get(), StatusCode::kOutOfRange},
      {IoOp::kRead, UINT64_MAX - 511, 4 * kKiB, buf.get(), StatusCode::kOutOfRange},
      {IoOp::kDiscard, size - 512, 1024, nullptr, StatusCode::kOutOfRange},
      {IoOp::kWriteZeroes, size, 512, nullptr, StatusCode::kOutOfRange},
      {IoOp::kRead, 100, 4 * kKiB, buf.get(), StatusCode::kInvalidArgument},
      {IoOp::kWrite, 0, 1000, buf.get(), StatusCode::kInvalidArgument},
      {IoOp::kRead, 0, 4 * kKiB, nullptr, StatusCode::kInvalidArgument},
      {IoOp::kWrite, 0, 4 * kKiB, buf.get() + 1, StatusCode::kInvalidArgument},
      {IoOp::kRead, 0, 0, buf.get(), StatusCode::kInvalidArgument},
      {IoOp::kWriteZeroes, 512, 100, nullptr, StatusCode::kInvalidArgument},
      {IoOp::kDiscard, 0, 0, nullptr, StatusCode::kInvalidArgument},
      {IoOp::kCount, 0, 512, buf.get(), StatusCode::kInvalidArgument},
  };
  IoBatch batch;
  for (const Case& c : cases) batch.Add(c.op, c.offset, c.length, c.buf);
  batch.SubmitAndWait(reactor(), dev());
  EXPECT_TRUE(batch.ContractHeld()) << batch.ContractViolation();
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(batch.request(i).status.code(), cases[i].want)
        << "case " << i << ": " << batch.request(i).status;
  }
  // The device still works.
  AlignedBuffer data = Pattern(4 * kKiB, 15);
  ASSERT_TRUE(Write(0, {data.get(), 4 * kKiB}).ok());
  AlignedBuffer back = ReadBack(0, 4 * kKiB);
  EXPECT_EQ(FindPatternMismatch({back.get(), 4 * kKiB}, 15), -1);
}

TEST_P(BlockDeviceConformance, SyncApiRoundTripAndValidation) {
  const uint64_t size = dev().geometry().size_bytes;
  AlignedBuffer data = Pattern(64 * kKiB, 16);
  Status st = dev().WriteSync(8 * kKiB + 512, data.get(), 64 * kKiB);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_TRUE(dev().FlushSync().ok());
  AlignedBuffer back = AllocateAligned(64 * kKiB);
  ASSERT_TRUE(dev().ReadSync(8 * kKiB + 512, back.get(), 64 * kKiB).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 64 * kKiB}, 16), -1);
  EXPECT_TRUE(dev().DiscardSync(1 * kMiB, 64 * kKiB).ok());

  EXPECT_EQ(dev().ReadSync(size, back.get(), 512).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(dev().WriteSync(size - 512, data.get(), 1024).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(dev().DiscardSync(size, 512).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(dev().ReadSync(100, back.get(), 512).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev().WriteSync(0, data.get(), 100).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev().DiscardSync(512, 3).code(), StatusCode::kInvalidArgument);
}

TEST_P(BlockDeviceConformance, SyncAndAsyncSeeEachOthersWrites) {
  AlignedBuffer a = Pattern(16 * kKiB, 17), b = Pattern(16 * kKiB, 18);
  ASSERT_TRUE(dev().WriteSync(2 * kMiB, a.get(), 16 * kKiB).ok());
  AlignedBuffer back = ReadBack(2 * kMiB, 16 * kKiB);
  EXPECT_EQ(FindPatternMismatch({back.get(), 16 * kKiB}, 17), -1);
  ASSERT_TRUE(Write(2 * kMiB, {b.get(), 16 * kKiB}).ok());
  ASSERT_TRUE(dev().ReadSync(2 * kMiB, back.get(), 16 * kKiB).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 16 * kKiB}, 18), -1);
}

// 2000 random 4 KiB writes with distinct contents in one burst (far beyond the default
// max_in_flight, so the bounded queue and its FIFO are exercised), flushes mixed in, then
// 2000 reads in one burst.
TEST_P(BlockDeviceConformance, ThousandsOfRequestsInFlightAtOnce) {
  constexpr size_t kWrites = 2000;
  constexpr uint64_t kBlock = 4 * kKiB;
  std::mt19937_64 rng(2024);
  std::set<uint64_t> chosen;
  while (chosen.size() < kWrites) chosen.insert(rng() % (kDeviceSize / kBlock));
  std::vector<uint64_t> blocks(chosen.begin(), chosen.end());
  std::shuffle(blocks.begin(), blocks.end(), rng);

  AlignedBuffer out = AllocateAligned(kWrites * kBlock);
  IoBatch writes;
  for (size_t i = 0; i < kWrites; ++i) {
    uint8_t* buf = out.get() + i * kBlock;
    FillPattern({buf, kBlock}, 5000 + i);
    writes.Add(IoOp::kWrite, blocks[i] * kBlock, kBlock, buf, i % 97 == 0 ? kIoFua : 0);
    if (i % 250 == 249) writes.Add(IoOp::kFlush, 0, 0);
  }
  writes.SubmitAndWait(reactor(), dev());
  ASSERT_TRUE(writes.ContractHeld()) << writes.ContractViolation();
  ASSERT_EQ(writes.failures(), 0u);

  AlignedBuffer in = AllocateAligned(kWrites * kBlock);
  std::memset(in.get(), 0xA5, kWrites * kBlock);
  IoBatch reads;
  for (size_t i = 0; i < kWrites; ++i) {
    reads.Add(IoOp::kRead, blocks[i] * kBlock, kBlock, in.get() + i * kBlock);
  }
  reads.SubmitAndWait(reactor(), dev());
  ASSERT_TRUE(reads.ContractHeld()) << reads.ContractViolation();
  ASSERT_EQ(reads.failures(), 0u);
  for (size_t i = 0; i < kWrites; ++i) {
    ASSERT_EQ(FindPatternMismatch({in.get() + i * kBlock, kBlock}, 5000 + i), -1)
        << "block " << blocks[i] << " (write " << i << ")";
  }
}

// Several reactors drive the same device at once; each completion comes back on its own
// reactor, and the sync API sees all of it.
TEST_P(BlockDeviceConformance, SeveralReactorsAtOnce) {
  constexpr int kReactors = 3;
  constexpr size_t kPerReactor = 300;
  constexpr uint64_t kBlock = 8 * kKiB;
  std::vector<std::unique_ptr<Reactor>> reactors;
  for (int r = 0; r < kReactors; ++r) {
    reactors.push_back(testutil::StartReactor("conf-" + std::to_string(r)));
  }
  AlignedBuffer data = AllocateAligned(kReactors * kPerReactor * kBlock);
  std::vector<std::unique_ptr<IoBatch>> batches;
  for (int r = 0; r < kReactors; ++r) {
    batches.push_back(std::make_unique<IoBatch>());
    for (size_t i = 0; i < kPerReactor; ++i) {
      const size_t n = static_cast<size_t>(r) * kPerReactor + i;
      uint8_t* buf = data.get() + n * kBlock;
      FillPattern({buf, kBlock}, 9000 + n);
      batches[r]->Add(IoOp::kWrite, n * kBlock, kBlock, buf);
    }
    batches[r]->Add(IoOp::kFlush, 0, 0);
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < kReactors; ++r) {
    threads.emplace_back([&, r] { batches[r]->SubmitAndWait(*reactors[r], dev()); });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kReactors; ++r) {
    EXPECT_TRUE(batches[r]->ContractHeld()) << batches[r]->ContractViolation();
    EXPECT_EQ(batches[r]->failures(), 0u);
  }
  AlignedBuffer back = AllocateAligned(kReactors * kPerReactor * kBlock);
  ASSERT_TRUE(dev().ReadSync(0, back.get(), kReactors * kPerReactor * kBlock).ok());
  for (size_t n = 0; n < kReactors * kPerReactor; ++n) {
    ASSERT_EQ(FindPatternMismatch({back.get() + n * kBlock, kBlock}, 9000 + n), -1) << n;
  }
  for (auto& r : reactors) r->Stop();
}

INSTANTIATE_TEST_SUITE_P(AllDevices, BlockDeviceConformance, ::testing::ValuesIn(Configs()),
                         [](const ::testing::TestParamInfo<Config>& param_info) {
                           return param_info.param.name;
                         });

}  // namespace
}  // namespace shale
