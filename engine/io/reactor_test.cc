#include "engine/io/reactor.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>

namespace shale {
namespace {

std::unique_ptr<Reactor> StartReactor() {
  auto r = Reactor::Start({.name = "test-reactor"});
  if (!r.ok()) return nullptr;
  return std::move(r).value();
}

TEST(ReactorTest, RunsPostedWorkInOrderOnItsThread) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  std::vector<int> order;
  std::promise<void> done;
  for (int i = 0; i < 100; ++i) {
    reactor->Post([&, i] {
      EXPECT_TRUE(reactor->IsCurrent());
      order.push_back(i);
      if (i == 99) done.set_value();
    });
  }
  done.get_future().wait();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  EXPECT_FALSE(reactor->IsCurrent());
}

TEST(ReactorTest, PostFromManyThreadsLosesNothing) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  std::atomic<int> count{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) reactor->Post([&] { count.fetch_add(1); });
    });
  }
  for (auto& t : threads) t.join();
  reactor->RunSync([] {});
  EXPECT_EQ(count.load(), 20000);
}

TEST(ReactorTest, DeferRunsAfterCurrentTaskNotInside) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  std::vector<int> order;
  reactor->RunSync([&] {
    reactor->Defer([&] { order.push_back(2); });
    order.push_back(1);
  });
  reactor->RunSync([] {});
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(ReactorTest, TimersFireInDeadlineOrderAndCancel) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  std::vector<int> fired;
  std::promise<void> done;
  reactor->RunSync([&] {
    reactor->AddTimer(20'000'000, [&] {
      fired.push_back(2);
      done.set_value();
    });
    reactor->AddTimer(1'000'000, [&] { fired.push_back(1); });
    uint64_t id = reactor->AddTimer(5'000'000, [&] { fired.push_back(99); });
    reactor->CancelTimer(id);
  });
  ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  reactor->RunSync([] {});
  EXPECT_EQ(fired, (std::vector<int>{1, 2}));
}

// A real SQE through the ring: read from an eventfd that another thread writes.
struct EventRead final : CompletionHandler {
  std::promise<int32_t> result;
  uint64_t value = 0;
  void OnCompletion(int32_t res, uint32_t) override { result.set_value(res); }
};

TEST(ReactorTest, CompletesSqesFromTheRing) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  int efd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  EventRead h;
  auto fut = h.result.get_future();
  reactor->RunSync([&] {
    io_uring_sqe* sqe = reactor->PrepareSqe(&h);
    io_uring_prep_read(sqe, efd, &h.value, sizeof(h.value), 0);
  });
  uint64_t v = 7;
  ASSERT_EQ(write(efd, &v, sizeof(v)), 8);
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(fut.get(), 8);
  EXPECT_EQ(h.value, 7u);
  close(efd);
}

TEST(ReactorTest, StopRunsAlreadyPostedWork) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  std::atomic<int> n{0};
  for (int i = 0; i < 10; ++i) reactor->Post([&] { n++; });
  reactor->Stop();
  EXPECT_EQ(n.load(), 10);
  reactor->Stop();  // idempotent
}

TEST(ReactorTest, ReportsProbedFeatures) {
  auto reactor = StartReactor();
  ASSERT_NE(reactor, nullptr);
  EXPECT_TRUE(reactor->features().Supports(IORING_OP_READ));
  EXPECT_TRUE(reactor->features().Supports(IORING_OP_WRITE));
  EXPECT_FALSE(reactor->features().Describe().empty());
}

}  // namespace
}  // namespace shale
