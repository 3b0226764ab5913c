// UringDevice specifics: bounded queue, FIFO, short transfers, open-time checks, fallbacks.
// The common BlockDevice semantics are in block_device_conformance_test.cc.
#include "engine/io/uring_device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <unistd.h>

#include <array>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>

#include "engine/io/testing.h"

namespace shale {
namespace {

using testutil::FillPattern;
using testutil::FindPatternMismatch;
using testutil::IsAllZero;
using testutil::TempDir;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

std::unique_ptr<UringDevice> OpenUring(const std::string& path, DeviceOptions options = {}) {
  auto dev = UringDevice::Open(path, options);
  SHALE_CHECK(dev.ok(), dev.status().ToString());
  return std::move(dev).value();
}

UringDevice::QueueStats StatsOn(Reactor& reactor, UringDevice& dev) {
  UringDevice::QueueStats stats;
  reactor.RunSync([&] { stats = dev.queue_stats(); });
  return stats;
}

// Requests that record, at each completion, how many device SQEs the reactor still has in
// flight (its own count, independent of the device's bookkeeping) and the completion order.
struct DepthProbe {
  struct Tracked {
    IoRequest req;
    DepthProbe* probe = nullptr;
    size_t index = 0;
  };
  Reactor* reactor = nullptr;
  std::deque<Tracked> requests;
  uint64_t max_sqes_in_flight = 0;  // reactor SQEs minus its wakeup read
  std::vector<size_t> order;
  std::mutex mu;
  std::condition_variable cv;
  size_t completed = 0;

  static void Done(IoRequest* req) {
    auto* t = static_cast<Tracked*>(req->ctx);
    DepthProbe* p = t->probe;
    p->max_sqes_in_flight = std::max(p->max_sqes_in_flight, p->reactor->in_flight() - 1);
    p->order.push_back(t->index);
    std::lock_guard lock(p->mu);
    ++p->completed;
    p->cv.notify_all();
  }
  IoRequest& Add(IoOp op, uint64_t offset, uint64_t length, void* buf) {
    Tracked& t = requests.emplace_back();
    t.probe = this;
    t.index = requests.size() - 1;
    t.req.op = op;
    t.req.offset = offset;
    t.req.length = length;
    t.req.buf = buf;
    t.req.ctx = &t;
    t.req.done = &Done;
    return t.req;
  }
  void Wait() {
    std::unique_lock lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, testutil::kIoDeadline, [&] { return completed == requests.size(); }))
        << completed << " of " << requests.size() << " completed";
  }
};

class UringDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { reactor_ = testutil::StartReactor("uring-test"); }
  TempDir dir_{"shale-uring"};
  std::unique_ptr<Reactor> reactor_;
};

TEST_F(UringDeviceTest, BurstNeverHasMoreThanMaxInFlightInTheKernel) {
  constexpr size_t kRequests = 500;
  DeviceOptions options;
  options.max_in_flight = 4;
  auto dev = OpenUring(dir_.SparseFile("dev", 16 * kMiB), options);
  AlignedBuffer data = AllocateAligned(kRequests * 4 * kKiB);
  DepthProbe probe;
  probe.reactor = reactor_.get();
  for (size_t i = 0; i < kRequests; ++i) {
    FillPattern({data.get() + i * 4 * kKiB, 4 * kKiB}, i);
    probe.Add(IoOp::kWrite, i * 4 * kKiB, 4 * kKiB, data.get() + i * 4 * kKiB);
  }
  UringDevice::QueueStats after_burst;
  uint64_t reactor_sqes_after_burst = 0;
  reactor_->Post([&] {
    for (auto& t : probe.requests) dev->Submit(&t.req);
    after_burst = dev->queue_stats();
    reactor_sqes_after_burst = reactor_->in_flight() - 1;
  });
  probe.Wait();
  EXPECT_EQ(after_burst.in_flight, 4u);
  EXPECT_EQ(after_burst.waiting, kRequests - 4);
  EXPECT_EQ(reactor_sqes_after_burst, 4u);
  EXPECT_LE(probe.max_sqes_in_flight, 4u);
  UringDevice::QueueStats end = StatsOn(*reactor_, *dev);
  EXPECT_EQ(end.in_flight, 0u);
  EXPECT_EQ(end.waiting, 0u);
  EXPECT_EQ(end.peak_in_flight, 4u);
  EXPECT_EQ(end.sqes, kRequests);
  for (auto& t : probe.requests) ASSERT_TRUE(t.req.status.ok()) << t.req.status;

  AlignedBuffer back = AllocateAligned(kRequests * 4 * kKiB);
  ASSERT_TRUE(dev->ReadSync(0, back.get(), kRequests * 4 * kKiB).ok());
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(FindPatternMismatch({back.get() + i * 4 * kKiB, 4 * kKiB}, i), -1) << i;
  }
}

TEST_F(UringDeviceTest, WaitingRequestsStartInSubmissionOrder) {
  DeviceOptions options;
  options.max_in_flight = 1;  // one at a time: completion order is start order
  auto dev = OpenUring(dir_.SparseFile("dev", 4 * kMiB), options);
  AlignedBuffer data = AllocateAligned(64 * 4 * kKiB);
  DepthProbe probe;
  probe.reactor = reactor_.get();
  for (size_t i = 0; i < 64; ++i) {
    const IoOp op = i % 8 == 7 ? IoOp::kFlush : (i % 3 == 0 ? IoOp::kRead : IoOp::kWrite);
    probe.Add(op, i * 4 * kKiB, 4 * kKiB, data.get() + i * 4 * kKiB);
  }
  reactor_->Post([&] {
    for (auto& t : probe.requests) dev->Submit(&t.req);
  });
  probe.Wait();
  ASSERT_EQ(probe.order.size(), 64u);
  for (size_t i = 0; i < 64; ++i) EXPECT_EQ(probe.order[i], i);
  EXPECT_LE(probe.max_sqes_in_flight, 1u);
}

TEST_F(UringDeviceTest, ShortTransfersResubmitTheRemainder) {
  auto dev = OpenUring(dir_.SparseFile("dev", 8 * kMiB));
  dev->set_max_transfer_for_testing(4 * kKiB);           // every SQE moves at most 4 KiB
  const uint64_t offset = 512, length = 1 * kMiB + 512;  // 256 full chunks + 512 bytes
  AlignedBuffer data = AllocateAligned(length);
  FillPattern({data.get(), length}, 77);

  IoRequest w;
  w.op = IoOp::kWrite;
  w.offset = offset;
  w.length = length;
  w.buf = data.get();
  ASSERT_TRUE(testutil::RunIo(*reactor_, *dev, w).ok()) << w.status;
  EXPECT_EQ(w.transferred, length);
  EXPECT_EQ(StatsOn(*reactor_, *dev).sqes, 257u);

  AlignedBuffer back = AllocateAligned(length);
  std::memset(back.get(), 0xA5, length);
  IoRequest r;
  r.op = IoOp::kRead;
  r.offset = offset;
  r.length = length;
  r.buf = back.get();
  ASSERT_TRUE(testutil::RunIo(*reactor_, *dev, r).ok()) << r.status;
  EXPECT_EQ(r.transferred, length);
  EXPECT_EQ(StatsOn(*reactor_, *dev).sqes, 2 * 257u);
  EXPECT_EQ(FindPatternMismatch({back.get(), length}, 77), -1);
  // Cross-check with the sync path.
  ASSERT_TRUE(dev->ReadSync(offset, back.get(), length).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), length}, 77), -1);
}

TEST_F(UringDeviceTest, ReadThatHitsEndOfAShrunkFileIsAnIoError) {
  const std::string path = dir_.SparseFile("dev", 1 * kMiB);
  auto dev = OpenUring(path);
  AlignedBuffer data = AllocateAligned(8 * kKiB);
  FillPattern({data.get(), 8 * kKiB}, 5);
  ASSERT_TRUE(dev->WriteSync(1 * kMiB - 8 * kKiB, data.get(), 8 * kKiB).ok());
  ASSERT_EQ(truncate(path.c_str(), 1 * kMiB - 4 * kKiB), 0);  // shrinks under the device

  AlignedBuffer back = AllocateAligned(8 * kKiB);
  IoRequest r;
  r.op = IoOp::kRead;
  r.offset = 1 * kMiB - 8 * kKiB;
  r.length = 8 * kKiB;
  r.buf = back.get();
  Status st = testutil::RunIo(*reactor_, *dev, r);
  EXPECT_EQ(st.code(), StatusCode::kIoError) << st;
  // The kernel returned the first 4 KiB (a short read), the remainder then read 0 bytes.
  EXPECT_EQ(r.transferred, 4 * kKiB);
  EXPECT_EQ(FindPatternMismatch({back.get(), 4 * kKiB}, 5), -1);
  EXPECT_EQ(dev->ReadSync(1 * kMiB - 8 * kKiB, back.get(), 8 * kKiB).code(), StatusCode::kIoError);
}

TEST_F(UringDeviceTest, GrowExtendsAFileOnlineAndNeverShrinksIt) {
  const std::string path = dir_.SparseFile("dev", 1 * kMiB);
  auto dev = OpenUring(path);
  AlignedBuffer data = AllocateAligned(8 * kKiB);
  FillPattern({data.get(), 8 * kKiB}, 9);
  // Beyond the end: refused before the growth, served after it.
  IoRequest w;
  w.op = IoOp::kWrite;
  w.offset = 2 * kMiB;
  w.length = 8 * kKiB;
  w.buf = data.get();
  EXPECT_EQ(testutil::RunIo(*reactor_, *dev, w).code(), StatusCode::kOutOfRange);
  auto grown = dev->Grow(3 * kMiB);
  ASSERT_TRUE(grown.ok()) << grown.status();
  EXPECT_EQ(*grown, 3 * kMiB);
  EXPECT_EQ(dev->geometry().size_bytes, 3 * kMiB);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 3 * kMiB);
  w.status = Status::Ok();
  w.transferred = 0;
  ASSERT_TRUE(testutil::RunIo(*reactor_, *dev, w).ok());
  AlignedBuffer back = AllocateAligned(8 * kKiB);
  ASSERT_TRUE(dev->ReadSync(2 * kMiB, back.get(), 8 * kKiB).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 8 * kKiB}, 9), -1);
  // 0 = as it is now (a file grown by someone else is taken in); smaller sizes are refused.
  ASSERT_EQ(truncate(path.c_str(), 4 * kMiB), 0);
  EXPECT_EQ(dev->Grow(0).value(), 4 * kMiB);
  auto smaller = dev->Grow(2 * kMiB);
  ASSERT_FALSE(smaller.ok());
  EXPECT_EQ(smaller.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dev->Grow(4 * kMiB + 100).status().code(), StatusCode::kInvalidArgument);
  ASSERT_EQ(truncate(path.c_str(), 1 * kMiB), 0);  // shrunk under the device
  EXPECT_EQ(dev->Grow(0).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(dev->geometry().size_bytes, 4 * kMiB);
}

TEST_F(UringDeviceTest, OpenRejectsWhatIsNotAUsableDevice) {
  auto missing = UringDevice::Open(dir_.File("missing"), {});
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status();

  auto directory = UringDevice::Open(dir_.path(), {});
  EXPECT_EQ(directory.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(directory.status().message().find("directory"), std::string_view::npos)
      << directory.status();

  const std::string empty = dir_.File("empty");
  int fd = open(empty.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  auto zero = UringDevice::Open(empty, {});
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("empty"), std::string_view::npos) << zero.status();

  auto chardev = UringDevice::Open("/dev/null", {});
  EXPECT_EQ(chardev.status().code(), StatusCode::kInvalidArgument) << chardev.status();

  DeviceOptions no_queue;
  no_queue.max_in_flight = 0;
  auto bad = UringDevice::Open(dir_.SparseFile("dev", 1 * kMiB), no_queue);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(UringDeviceTest, OpenBlockDevicePicksTheRequestedBackend) {
  const std::string path = dir_.SparseFile("dev", 1 * kMiB);
  DeviceOptions options;
  auto uring = OpenBlockDevice(path, options);
  ASSERT_TRUE(uring.ok()) << uring.status();
  EXPECT_EQ(uring.value()->kind(), "io_uring");
  options.backend = IoBackend::kLibaio;
  auto aio = OpenBlockDevice(path, options);
  ASSERT_TRUE(aio.ok()) << aio.status();
  EXPECT_EQ(aio.value()->kind(), "libaio");
  options.max_in_flight = 0;
  EXPECT_EQ(OpenBlockDevice(path, options).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(UringDeviceTest, UsesODirectWhereTheFilesystemAllowsIt) {
  const std::string path = dir_.SparseFile("dev", 1 * kMiB);
  int fd = open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  const bool fs_allows = fd >= 0;
  if (fd >= 0) close(fd);
  EXPECT_EQ(OpenUring(path)->direct(), fs_allows);
  DeviceOptions buffered;
  buffered.direct = false;
  EXPECT_FALSE(OpenUring(path, buffered)->direct());
}

TEST_F(UringDeviceTest, FallsBackToBufferedIoWhereODirectIsRefused) {
  // ramfs refuses O_DIRECT (EINVAL). Mounting needs privileges: skip without them.
  TempDir mnt("shale-ramfs");
  if (mount("shale-ramfs", mnt.path().c_str(), "ramfs", 0, nullptr) != 0) {
    GTEST_SKIP() << "cannot mount a ramfs here: " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt.path()};
  const std::string path = mnt.SparseFile("dev", 1 * kMiB);
  auto dev = OpenUring(path);
  EXPECT_FALSE(dev->direct());
  AlignedBuffer data = AllocateAligned(64 * kKiB);
  FillPattern({data.get(), 64 * kKiB}, 9);
  ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, 4 * kKiB, {data.get(), 64 * kKiB}, kIoFua).ok());
  ASSERT_TRUE(testutil::Flush(*reactor_, *dev).ok());
  AlignedBuffer back = AllocateAligned(64 * kKiB);
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, 4 * kKiB, {back.get(), 64 * kKiB}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 64 * kKiB}, 9), -1);
  dev.reset();
}

// How many of the pages of [offset, offset + length) of `path` are in the page cache (mincore).
size_t CachedPages(const std::string& path, uint64_t offset, uint64_t length) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  void* map = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
  close(fd);
  if (map == MAP_FAILED) return 0;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((length + page - 1) / page);
  size_t cached = 0;
  if (mincore(map, length, resident.data()) == 0) {
    for (unsigned char r : resident) cached += r & 1;
  }
  munmap(map, length);
  return cached;
}

TEST_F(UringDeviceTest, CachedReadsComeFromThePageCacheAndStayCoherentWithDirectWrites) {
  const std::string path = dir_.SparseFile("dev", 8 * kMiB);
  DeviceOptions options;
  options.cached_reads = true;
  auto dev = OpenUring(path, options);
  if (!dev->direct()) GTEST_SKIP() << "this filesystem refuses O_DIRECT: reads are buffered anyway";
  constexpr uint64_t kLen = 64 * kKiB;
  AlignedBuffer data = AllocateAligned(kLen), back = AllocateAligned(kLen);
  FillPattern({data.get(), kLen}, 1);
  ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, kMiB, {data.get(), kLen}).ok());
  EXPECT_EQ(CachedPages(path, kMiB, kLen), 0u) << "a direct write caches nothing";
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, kMiB, {back.get(), kLen}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), kLen}, 1), -1);
  EXPECT_EQ(CachedPages(path, kMiB, kLen), kLen / 4096) << "the read went through the page cache";

  // A direct write over cached pages: the next read has the new bytes.
  FillPattern({data.get(), kLen}, 2);
  ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, kMiB, {data.get(), kLen}).ok());
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, kMiB, {back.get(), kLen}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), kLen}, 2), -1) << "a stale cached page was read";
  // A punched hole and zeroed range over cached pages read as zeros.
  if (dev->fallocate_supported()) {
    ASSERT_TRUE(testutil::Discard(*reactor_, *dev, kMiB, kLen).ok());
    ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, kMiB, {back.get(), kLen}).ok());
    EXPECT_TRUE(IsAllZero({back.get(), kLen})) << "the discarded range read stale bytes";
    ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, kMiB, {data.get(), kLen}).ok());
    ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, kMiB, {back.get(), kLen}).ok());
    ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev, kMiB, kLen).ok());
    ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, kMiB, {back.get(), kLen}).ok());
    EXPECT_TRUE(IsAllZero({back.get(), kLen})) << "the zeroed range read stale bytes";
  }

  // Overlapping writes and reads of random 4 KiB-aligned ranges against an oracle.
  constexpr uint64_t kSpan = 1 * kMiB;
  std::vector<uint8_t> oracle(kSpan, 0);
  ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev, 0, kSpan).ok());
  std::mt19937_64 rng(7);
  AlignedBuffer buf = AllocateAligned(kLen);
  for (int i = 0; i < 400; ++i) {
    const uint64_t len = 4 * kKiB * (1 + rng() % 16);
    const uint64_t off = 4 * kKiB * (rng() % ((kSpan - len) / (4 * kKiB) + 1));
    if (rng() % 2 == 0) {
      for (uint64_t b = 0; b < len; ++b) buf.get()[b] = static_cast<uint8_t>(rng());
      ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, off, {buf.get(), len}).ok());
      std::memcpy(oracle.data() + off, buf.get(), len);
    } else {
      ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, off, {buf.get(), len}).ok());
      ASSERT_EQ(std::memcmp(buf.get(), oracle.data() + off, len), 0)
          << "step " << i << ": a stale read at " << off;
    }
  }
}

TEST_F(UringDeviceTest, WriteZeroesUsesZeroRangeOrFallsBackToWritingZeros) {
  // ext4 (/tmp here) has FALLOC_FL_ZERO_RANGE: one SQE. tmpfs does not: one refused
  // fallocate, then 1 MiB writes from the shared zero buffer.
  struct Case {
    std::string base;
    bool zero_range;
  };
  for (const Case& c : {Case{"/tmp", true}, Case{"/dev/shm", false}}) {
    SCOPED_TRACE(c.base);
    if (access(c.base.c_str(), W_OK) != 0) continue;
    TempDir dir("shale-zero", c.base);
    DeviceOptions options;
    options.direct = false;
    auto dev = OpenUring(dir.SparseFile("dev", 8 * kMiB), options);
    if (!dev->fallocate_supported()) GTEST_SKIP() << "no IORING_OP_FALLOCATE";
    AlignedBuffer data = AllocateAligned(4 * kMiB);
    FillPattern({data.get(), 4 * kMiB}, 3);
    ASSERT_TRUE(dev->WriteSync(0, data.get(), 4 * kMiB).ok());
    ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev, 512, 3 * kMiB).ok());
    const uint64_t sqes = StatsOn(*reactor_, *dev).sqes;
    if (c.zero_range) {
      EXPECT_EQ(sqes, 1u);
    } else {
      EXPECT_EQ(sqes, 1u + 3u);
    }
    AlignedBuffer back = AllocateAligned(4 * kMiB);
    ASSERT_TRUE(dev->ReadSync(0, back.get(), 4 * kMiB).ok());
    EXPECT_EQ(FindPatternMismatch({back.get(), 512}, 3), -1);
    EXPECT_TRUE(IsAllZero({back.get() + 512, 3 * kMiB}));
    EXPECT_EQ(std::memcmp(back.get() + 512 + 3 * kMiB, data.get() + 512 + 3 * kMiB, kMiB - 512), 0);
    // Once refused, later write-zeroes skip the fallocate attempt.
    ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev, 0, 1 * kMiB).ok());
    EXPECT_EQ(StatsOn(*reactor_, *dev).sqes, sqes + 1);
  }
}

TEST_F(UringDeviceTest, SyncApiAcceptsUnalignedBuffers) {
  auto dev = OpenUring(dir_.SparseFile("dev", 4 * kMiB));
  std::vector<uint8_t> raw(3 * kMiB + 2);
  std::span<uint8_t> odd(raw.data() + 1, 3 * kMiB);  // not even 2-byte aligned
  FillPattern(odd, 12);
  ASSERT_TRUE(dev->WriteSync(512, odd.data(), odd.size()).ok());
  std::vector<uint8_t> raw_back(3 * kMiB + 2);
  std::span<uint8_t> odd_back(raw_back.data() + 1, 3 * kMiB);
  ASSERT_TRUE(dev->ReadSync(512, odd_back.data(), odd_back.size()).ok());
  EXPECT_EQ(FindPatternMismatch(odd_back, 12), -1);
}

TEST_F(UringDeviceTest, ServesANewReactorThatReusesAnOldReactorsId) {
  auto dev = OpenUring(dir_.SparseFile("dev", 4 * kMiB));
  AlignedBuffer data = AllocateAligned(4 * kKiB);
  FillPattern({data.get(), 4 * kKiB}, 21);
  ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, 0, {data.get(), 4 * kKiB}).ok());
  const int old_id = reactor_->id();
  reactor_.reset();
  reactor_ = testutil::StartReactor("uring-test-2");
  EXPECT_EQ(reactor_->id(), old_id);  // ids are reused lowest-first
  AlignedBuffer back = AllocateAligned(4 * kKiB);
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, 0, {back.get(), 4 * kKiB}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 4 * kKiB}, 21), -1);
}

// A real block device: geometry from BLKGETSIZE64/BLKSSZGET/BLKPBSZGET, and the data path.
// Needs root and loop devices; skips without them.
TEST_F(UringDeviceTest, BlockDeviceGeometryComesFromIoctls) {
  const std::string image = dir_.SparseFile("loop.img", 16 * kMiB);
  std::string cmd = "losetup --find --show " + image + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) GTEST_SKIP() << "cannot run losetup";
  std::array<char, 128> line{};
  const bool got = fgets(line.data(), line.size(), p) != nullptr;
  pclose(p);
  std::string loop = got ? std::string(line.data()) : "";
  while (!loop.empty() && (loop.back() == '\n' || loop.back() == ' ')) loop.pop_back();
  if (loop.rfind("/dev/loop", 0) != 0) GTEST_SKIP() << "no loop device (needs root)";
  struct Detach {
    std::string dev;
    ~Detach() {
      std::string detach = "losetup -d " + dev;
      if (std::system(detach.c_str()) != 0) std::fprintf(stderr, "cannot detach %s\n", dev.c_str());
    }
  } detach{loop};

  auto dev = OpenUring(loop);
  const DeviceGeometry& g = dev->geometry();
  EXPECT_TRUE(g.is_block_device);
  EXPECT_EQ(g.size_bytes, 16 * kMiB);
  EXPECT_GE(g.logical_block_size, 512u);
  EXPECT_GE(g.physical_block_size, g.logical_block_size);
  AlignedBuffer data = AllocateAligned(1 * kMiB);
  FillPattern({data.get(), 1 * kMiB}, 31);
  ASSERT_TRUE(testutil::WriteAt(*reactor_, *dev, 4 * kKiB, {data.get(), 1 * kMiB}, kIoFua).ok());
  ASSERT_TRUE(testutil::Flush(*reactor_, *dev).ok());
  AlignedBuffer back = AllocateAligned(1 * kMiB);
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, 4 * kKiB, {back.get(), 1 * kMiB}).ok());
  EXPECT_EQ(FindPatternMismatch({back.get(), 1 * kMiB}, 31), -1);
  ASSERT_TRUE(testutil::WriteZeroes(*reactor_, *dev, 4 * kKiB, 64 * kKiB).ok());
  ASSERT_TRUE(testutil::ReadAt(*reactor_, *dev, 4 * kKiB, {back.get(), 64 * kKiB}).ok());
  EXPECT_TRUE(IsAllZero({back.get(), 64 * kKiB}));
  EXPECT_TRUE(testutil::Discard(*reactor_, *dev, 1 * kMiB, 64 * kKiB).ok());
  dev.reset();
}

}  // namespace
}  // namespace shale
