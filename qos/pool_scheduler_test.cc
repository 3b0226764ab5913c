#include "qos/pool_scheduler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "engine/io/reactor.h"

namespace shale::qos {
namespace {

std::unique_ptr<Reactor> StartReactor(const char* name) {
  auto r = Reactor::Start({.name = name});
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(r).value();
}

// Polls `cond` until it holds or 30 s pass.
bool Eventually(const std::function<bool()>& cond) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return cond();
}

// A client of the scheduler: records what it is handed; optionally completes each request on
// the next reactor turn and resubmits until `target` completions.
class Driver final : public PoolScheduler::Sink {
 public:
  Driver(PoolScheduler* sched, Reactor* reactor) : sched_(sched), reactor_(reactor) {}
  ~Driver() {
    if (client != nullptr) sched_->Unregister(client);
  }
  void Register(const std::shared_ptr<Driver>& self, uint32_t weight, uint64_t reservation = 0) {
    client = sched_->Register(std::weak_ptr<PoolScheduler::Sink>(self), reactor_,
                              {.weight = weight, .reservation_iops = reservation});
  }
  void DispatchReady(VolumeIo* io) override {
    if (!reactor_->IsCurrent()) wrong_thread = true;
    if (!order.empty() && io->offset <= order.back()) out_of_order = true;
    order.push_back(io->offset);
    if (!auto_complete) {
      held.push_back(io);
      return;
    }
    reactor_->Defer([this, io] {
      sched_->Complete(client);
      ++completed;
      if (next_seq < target) {
        io->offset = next_seq++;
        sched_->Submit(client, io);
      } else if (completed == target) {
        if (on_done) on_done();
        done.set_value();
      }
    });
  }
  // Starts `depth` requests (posted to the reactor).
  void Start(size_t depth, uint64_t total) {
    Prepare(depth, total);
    reactor_->Post([this] { IssueAll(); });
  }
  void Prepare(size_t depth, uint64_t total) {
    target = total;
    ios.resize(depth);
  }
  void IssueAll() {  // on the reactor
    for (auto& io : ios) {
      if (next_seq >= target) break;
      io.offset = next_seq++;
      sched_->Submit(client, &io);
    }
  }

  PoolScheduler* sched_;
  Reactor* reactor_;
  PoolScheduler::Client* client = nullptr;
  bool auto_complete = true;
  std::vector<VolumeIo> ios;
  std::vector<uint64_t> order;  // reactor thread
  std::vector<VolumeIo*> held;
  bool wrong_thread = false, out_of_order = false;
  uint64_t next_seq = 0, target = 0, completed = 0;
  std::function<void()> on_done;  // on the reactor, when the target is reached
  std::promise<void> done;
};

TEST(PoolSchedulerTest, BelowTheBudgetRequestsPassStraightThrough) {
  auto reactor = StartReactor("ps-test");
  PoolScheduler sched({.budget = 8});
  auto d = std::make_shared<Driver>(&sched, reactor.get());
  d->auto_complete = false;
  d->Register(d, 100);
  std::vector<VolumeIo> ios(5);
  reactor->RunSync([&] {
    for (size_t i = 0; i < ios.size(); ++i) {
      ios[i].offset = i;
      sched.Submit(d->client, &ios[i]);
      EXPECT_EQ(d->order.size(), i + 1) << "dispatched inline";
    }
    EXPECT_EQ(sched.pending(d->client), 0u);
  });
  EXPECT_EQ(sched.GetStats().outstanding, 5u);
  EXPECT_EQ(sched.GetStats().waiting, 0u);
  EXPECT_EQ(sched.GetClientStats(d->client).contended, 0u);
  reactor->RunSync([&] {
    for (int i = 0; i < 5; ++i) sched.Complete(d->client);
  });
  EXPECT_EQ(sched.GetStats().outstanding, 0u);
}

TEST(PoolSchedulerTest, AVolumeAloneIsNotHeldByTheBudgetUntilASecondOneComes) {
  auto reactor = StartReactor("ps-test");
  PoolScheduler sched({.budget = 2});
  auto a = std::make_shared<Driver>(&sched, reactor.get());
  auto b = std::make_shared<Driver>(&sched, reactor.get());
  a->auto_complete = b->auto_complete = false;
  a->Register(a, 100);
  b->Register(b, 100);
  std::vector<VolumeIo> aios(8), bios(2);
  reactor->RunSync([&] {
    for (size_t i = 0; i < aios.size(); ++i) {
      aios[i].offset = i;
      sched.Submit(a->client, &aios[i]);
    }
    EXPECT_EQ(a->order.size(), 8u) << "alone: a deep queue reaches the device";
    sched.Submit(b->client, &bios[0]);
    EXPECT_EQ(b->order.size(), 0u) << "a second volume: the budget applies";
    aios[0].offset = 8;
    sched.Submit(a->client, &aios[0]);
    EXPECT_EQ(a->order.size(), 8u) << "to the first one too";
  });
  EXPECT_EQ(sched.GetStats().outstanding, 8u);
  EXPECT_EQ(sched.GetStats().active, 1u);
  // Completions bring the pool down to the budget before anything else is dispatched.
  for (int i = 0; i < 6; ++i) reactor->RunSync([&] { sched.Complete(a->client); });
  reactor->RunSync([&] {
    EXPECT_EQ(b->order.size(), 0u);
    EXPECT_EQ(a->order.size(), 8u);
  });
  reactor->RunSync([&] { sched.Complete(a->client); });  // 1 outstanding: a slot frees
  reactor->RunSync([&] {
    EXPECT_EQ(b->order.size(), 1u) << "b queued first, equal tags: b goes first";
    EXPECT_EQ(a->order.size(), 8u);
  });
  EXPECT_EQ(sched.GetStats().active, 2u);
  reactor->RunSync([&] {
    sched.Complete(a->client);  // a's last early request: a's queued one goes
    EXPECT_EQ(a->order.size(), 9u);
    sched.Complete(b->client);
    sched.Complete(a->client);
  });
  EXPECT_EQ(sched.GetStats().outstanding, 0u);
  EXPECT_EQ(sched.GetStats().waiting, 0u);
  EXPECT_EQ(sched.GetStats().active, 0u);
}

// A background job asks whether anyone else keeps the device busy (ActiveOthers): its own
// requests do not count, every other client with a request outstanding does.
TEST(PoolSchedulerTest, ActiveOthersCountsTheOtherClientsWithRequestsOutstanding) {
  auto reactor = StartReactor("ps-test");
  PoolScheduler sched({.budget = 8});
  auto a = std::make_shared<Driver>(&sched, reactor.get());
  auto b = std::make_shared<Driver>(&sched, reactor.get());
  a->auto_complete = b->auto_complete = false;
  a->Register(a, 100);
  b->Register(b, 100);
  std::vector<VolumeIo> aios(2), bios(1);
  reactor->RunSync([&] {
    EXPECT_EQ(sched.ActiveOthers(a->client), 0u);
    sched.Submit(a->client, &aios[0]);
    sched.Submit(a->client, &aios[1]);
    EXPECT_EQ(sched.ActiveOthers(a->client), 0u) << "its own requests do not count";
    EXPECT_EQ(sched.ActiveOthers(b->client), 1u);
    sched.Submit(b->client, &bios[0]);
    EXPECT_EQ(sched.ActiveOthers(a->client), 1u);
    EXPECT_EQ(sched.ActiveOthers(b->client), 1u);
    sched.Complete(a->client);
    sched.Complete(a->client);
    EXPECT_EQ(sched.ActiveOthers(b->client), 0u) << "a is idle again";
    sched.Complete(b->client);
    EXPECT_EQ(sched.ActiveOthers(a->client), 0u);
  });
}

TEST(PoolSchedulerTest, AtTheBudgetRequestsWaitAndFollowCompletionsInOrder) {
  auto reactor = StartReactor("ps-test");
  PoolScheduler sched({.budget = 2, .solo_bypass = false});
  auto d = std::make_shared<Driver>(&sched, reactor.get());
  d->auto_complete = false;
  d->Register(d, 100);
  std::vector<VolumeIo> ios(6);
  reactor->RunSync([&] {
    for (size_t i = 0; i < ios.size(); ++i) {
      ios[i].offset = i;
      sched.Submit(d->client, &ios[i]);
    }
    EXPECT_EQ(d->order.size(), 2u);
    EXPECT_EQ(sched.pending(d->client), 4u);
  });
  EXPECT_EQ(sched.GetStats().waiting, 4u);
  EXPECT_EQ(sched.GetClientStats(d->client).waiting, 4u);
  for (size_t done = 1; done <= 4; ++done) {
    reactor->RunSync([&] { sched.Complete(d->client); });
    EXPECT_EQ(d->order.size(), 2 + done);
  }
  EXPECT_FALSE(d->out_of_order);
  EXPECT_EQ(sched.GetClientStats(d->client).contended, 4u);
  EXPECT_EQ(sched.GetClientStats(d->client).weight_dispatches, 4u);
  reactor->RunSync([&] {
    sched.Complete(d->client);
    sched.Complete(d->client);
  });
  // A larger budget dispatches waiting requests at once.
  reactor->RunSync([&] {
    for (auto& io : ios) sched.Submit(d->client, &io);
  });
  EXPECT_EQ(sched.GetStats().waiting, 4u);
  sched.SetBudget(10);
  EXPECT_TRUE(Eventually([&] { return sched.GetStats().waiting == 0; }));
  EXPECT_TRUE(Eventually([&] {
    size_t n = 0;
    reactor->RunSync([&] { n = d->order.size(); });
    return n == 12;
  }));
  EXPECT_FALSE(d->wrong_thread) << "the hand-off from the control thread went through Post";
  reactor->RunSync([&] {
    for (int i = 0; i < 6; ++i) sched.Complete(d->client);
  });
}

TEST(PoolSchedulerTest, DispatchDecidedOnAnotherReactorRunsOnTheClientsReactor) {
  auto r1 = StartReactor("ps-r1");
  auto r2 = StartReactor("ps-r2");
  PoolScheduler sched({.budget = 1});
  auto a = std::make_shared<Driver>(&sched, r1.get());
  auto b = std::make_shared<Driver>(&sched, r2.get());
  a->auto_complete = b->auto_complete = false;
  a->Register(a, 100);
  b->Register(b, 100);
  VolumeIo bio;
  r2->RunSync([&] { sched.Submit(b->client, &bio); });
  std::vector<VolumeIo> aios(3);
  r1->RunSync([&] {
    for (size_t i = 0; i < aios.size(); ++i) {
      aios[i].offset = i;
      sched.Submit(a->client, &aios[i]);
    }
  });
  EXPECT_EQ(sched.GetStats().waiting, 3u);
  r2->RunSync([&] { sched.Complete(b->client); });  // b's done: a's first is picked on r2
  EXPECT_TRUE(Eventually([&] {
    size_t n = 0;
    r1->RunSync([&] { n = a->order.size(); });
    return n == 1;
  }));
  r1->RunSync([&] { sched.Complete(a->client); });
  r1->RunSync([&] { sched.Complete(a->client); });
  EXPECT_TRUE(Eventually([&] {
    size_t n = 0;
    r1->RunSync([&] { n = a->order.size(); });
    return n == 3;
  }));
  EXPECT_FALSE(a->wrong_thread);
  EXPECT_FALSE(a->out_of_order);
  r1->RunSync([&] { sched.Complete(a->client); });
}

TEST(PoolSchedulerTest, TwoReactorsHammeringASmallBudgetNeverLoseARequest) {
  for (bool solo_bypass : {false, true}) {
    SCOPED_TRACE(solo_bypass ? "solo bypass" : "strict budget");
    auto r1 = StartReactor("ps-r1");
    auto r2 = StartReactor("ps-r2");
    PoolScheduler sched({.budget = 3, .solo_bypass = solo_bypass});
    auto a = std::make_shared<Driver>(&sched, r1.get());
    auto b = std::make_shared<Driver>(&sched, r2.get());
    a->Register(a, 100);
    b->Register(b, 300);
    auto fa = a->done.get_future();
    auto fb = b->done.get_future();
    a->Start(16, 200'000);
    b->Start(16, 200'000);
    ASSERT_EQ(fa.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "lost wake-up";
    ASSERT_EQ(fb.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "lost wake-up";
    EXPECT_EQ(sched.GetStats().outstanding, 0u);
    EXPECT_EQ(sched.GetStats().waiting, 0u);
    EXPECT_EQ(sched.GetStats().active, 0u);
    r1->RunSync([] {});
    r2->RunSync([] {});
    EXPECT_FALSE(a->wrong_thread || b->wrong_thread);
    EXPECT_FALSE(a->out_of_order || b->out_of_order);
    const uint64_t contended =
        sched.GetClientStats(a->client).contended + sched.GetClientStats(b->client).contended;
    if (!solo_bypass) {
      EXPECT_GT(contended, 100'000u) << "the budget was actually contended";
    }
  }
}

TEST(PoolSchedulerTest, AReservationIsMetWhenCompletionsComeInBatches) {
  // Slots free four at a time, once per millisecond (a device completing in batches). A 3000/s
  // reservation needs three of every four: its queued requests are tagged by their arrival, so
  // they are overdue together when the batch comes.
  auto reactor = StartReactor("ps-test");
  ManualClock clock;
  PoolScheduler sched({.budget = 4, .solo_bypass = false, .clock = &clock});
  auto a = std::make_shared<Driver>(&sched, reactor.get());
  auto b = std::make_shared<Driver>(&sched, reactor.get());
  a->auto_complete = b->auto_complete = false;
  a->Register(a, 1, 3000);
  b->Register(b, 10000);
  std::vector<VolumeIo> aios(16), bios(16);
  reactor->RunSync([&] {
    for (auto& io : bios) sched.Submit(b->client, &io);
    for (auto& io : aios) sched.Submit(a->client, &io);
  });
  // Completes everything dispatched so far, four slots at once, and resubmits it.
  auto complete_batch = [&](bool resubmit) {
    reactor->RunSync([&] {
      std::vector<std::pair<Driver*, VolumeIo*>> done;
      for (Driver* d : {a.get(), b.get()}) {
        for (VolumeIo* io : d->held) done.push_back({d, io});
        d->held.clear();
      }
      for (auto& [d, io] : done) sched.Complete(d->client);
      if (resubmit) {
        for (auto& [d, io] : done) sched.Submit(d->client, io);
      }
    });
  };
  size_t a_before = 0;
  for (int ms = 0; ms < 200; ++ms) {
    if (ms == 100) reactor->RunSync([&] { a_before = a->order.size(); });
    clock.Advance(std::chrono::milliseconds(1));
    complete_batch(true);
  }
  size_t a_after = 0;
  reactor->RunSync([&] { a_after = a->order.size(); });
  EXPECT_NEAR(static_cast<double>(a_after - a_before), 300.0, 6.0)
      << "3 of 4 slots over the last 100 ms";
  while (sched.GetStats().outstanding > 0) complete_batch(false);
  EXPECT_EQ(sched.GetStats().waiting, 0u);
}

TEST(PoolSchedulerTest, WeightsDecideWhoGetsTheBudget) {
  auto reactor = StartReactor("ps-test");
  PoolScheduler sched({.budget = 1});
  auto a = std::make_shared<Driver>(&sched, reactor.get());
  auto b = std::make_shared<Driver>(&sched, reactor.get());
  a->Register(a, 300);
  b->Register(b, 100);
  auto fb = b->done.get_future();
  uint64_t a_done = 0;
  b->on_done = [&] { a_done = a->completed; };  // same reactor: an exact snapshot
  a->Prepare(8, 1'000'000);
  b->Prepare(8, 1'000);  // b finishes first; a has done ~3x as many by then
  reactor->Post([&] {    // both start in the same reactor turn: no head start for a
    a->IssueAll();
    b->IssueAll();
  });
  ASSERT_EQ(fb.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  reactor->RunSync([&] { a->target = a->next_seq; });  // stop resubmitting
  EXPECT_NEAR(static_cast<double>(a_done) / 1000.0, 3.0, 0.15);
  EXPECT_TRUE(Eventually([&] { return sched.GetStats().outstanding == 0; }));
  reactor->RunSync([] {});  // the last completion callbacks have returned
}

}  // namespace
}  // namespace shale::qos
