// AioDevice specifics: the bounded per-reactor queue and its FIFO, with reads/writes going to
// the kernel and flush/discard/write-zeroes going through the worker thread. The common
// BlockDevice semantics are in block_device_conformance_test.cc.
#include "engine/io/aio_device.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <deque>

#include "engine/io/testing.h"

namespace shale {
namespace {

using testutil::FillPattern;
using testutil::FindPatternMismatch;

constexpr uint64_t kBlock = 4096;

AioDevice::QueueStats StatsOn(Reactor& reactor, AioDevice& dev) {
  AioDevice::QueueStats stats;
  reactor.RunSync([&] { stats = dev.queue_stats(); });
  return stats;
}

TEST(AioDeviceTest, BurstIsBoundedByMaxInFlight) {
  testutil::TempDir dir("shale-aio");
  auto reactor = testutil::StartReactor("aio-test");
  DeviceOptions options;
  options.backend = IoBackend::kLibaio;
  options.max_in_flight = 4;
  auto opened = AioDevice::Open(dir.SparseFile("dev", 8 << 20), options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<AioDevice> dev = std::move(opened).value();

  constexpr size_t kRequests = 500;
  AlignedBuffer data = AllocateAligned(kRequests * kBlock);
  testutil::IoBatch batch;
  for (size_t i = 0; i < kRequests; ++i) {
    FillPattern({data.get() + i * kBlock, kBlock}, 40 + i);
    batch.Add(IoOp::kWrite, i * kBlock, kBlock, data.get() + i * kBlock, i % 50 == 0 ? kIoFua : 0);
    if (i % 100 == 99) {
      batch.Add(IoOp::kFlush, 0, 0);
      batch.Add(IoOp::kWriteZeroes, (kRequests + i) * kBlock, kBlock);
      batch.Add(IoOp::kDiscard, (kRequests + i) * kBlock, kBlock);
    }
  }
  batch.SubmitAndWait(*reactor, *dev);
  EXPECT_TRUE(batch.ContractHeld()) << batch.ContractViolation();
  EXPECT_EQ(batch.failures(), 0u);
  AioDevice::QueueStats stats = StatsOn(*reactor, *dev);
  EXPECT_EQ(stats.peak_in_flight, 4u);
  EXPECT_EQ(stats.in_flight, 0u);
  EXPECT_EQ(stats.waiting, 0u);
  EXPECT_EQ(stats.iocbs, kRequests);  // flush/discard/write-zeroes never become iocbs

  AlignedBuffer back = AllocateAligned(kRequests * kBlock);
  ASSERT_TRUE(dev->ReadSync(0, back.get(), kRequests * kBlock).ok());
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_EQ(FindPatternMismatch({back.get() + i * kBlock, kBlock}, 40 + i), -1) << i;
  }
}

TEST(AioDeviceTest, OneSlotCompletesInSubmissionOrderAcrossKernelAndWorkerOps) {
  testutil::TempDir dir("shale-aio");
  auto reactor = testutil::StartReactor("aio-test");
  DeviceOptions options;
  options.max_in_flight = 1;
  auto opened = AioDevice::Open(dir.SparseFile("dev", 4 << 20), options);
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<AioDevice> dev = std::move(opened).value();

  struct Ordered {
    IoRequest req;
    std::vector<int>* order;
    int index;
  };
  constexpr int kRequests = 40;
  std::vector<int> order;
  std::deque<Ordered> reqs;
  AlignedBuffer data = AllocateAligned(kRequests * kBlock);
  for (int i = 0; i < kRequests; ++i) {
    Ordered& o = reqs.emplace_back();
    o.order = &order;
    o.index = i;
    const IoOp ops[] = {IoOp::kWrite, IoOp::kFlush, IoOp::kRead, IoOp::kWriteZeroes,
                        IoOp::kDiscard};
    o.req.op = ops[i % 5];
    o.req.offset = static_cast<uint64_t>(i) * kBlock;
    o.req.length = kBlock;
    o.req.buf = data.get() + i * kBlock;
    o.req.ctx = &o;
    o.req.done = [](IoRequest* r) {
      auto* self = static_cast<Ordered*>(r->ctx);
      self->order->push_back(self->index);
    };
  }
  reactor->RunSync([&] {
    for (auto& o : reqs) dev->Submit(&o.req);
  });
  // Poll (each RunSync is a reactor round trip, no sleeps) until done or the deadline.
  const auto deadline = std::chrono::steady_clock::now() + testutil::kIoDeadline;
  for (size_t n = 0; n < kRequests && std::chrono::steady_clock::now() < deadline;) {
    reactor->RunSync([&] { n = order.size(); });
  }
  reactor->RunSync([] {});
  ASSERT_EQ(order.size(), static_cast<size_t>(kRequests));
  for (int i = 0; i < kRequests; ++i) EXPECT_EQ(order[static_cast<size_t>(i)], i);
  for (auto& o : reqs) EXPECT_TRUE(o.req.status.ok()) << o.req.status;
}

}  // namespace
}  // namespace shale
