// Engine::FreezeVolume cuts without draining: writes in flight at the cut finish into the frozen
// image, writes after it go to the new head, flushes wait for the frozen image's last commit,
// and all of it holds after a restart (docs/snapshots.md, "Freeze latency").
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/io/memory_device.h"
#include "engine/io/reactor.h"
#include "engine/volume/volume_test_util.h"

namespace shale {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A memory device that, while holding, keeps data writes queued until the test releases them
// one by one, in any order: writes "in flight" for as long as the test wants. A watchdog
// releases whatever is still held after 20 s, so a failing test ends instead of hanging.
class HeldWriteDevice final : public BlockDevice {
 public:
  explicit HeldWriteDevice(uint64_t size) : inner_(std::make_shared<MemoryDevice>(size)) {}
  ~HeldWriteDevice() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (watchdog_.joinable()) watchdog_.join();
  }
  DeviceGeometry geometry() const override { return inner_->geometry(); }
  std::string kind() const override { return inner_->kind(); }
  void Submit(IoRequest* req) override {
    {
      std::lock_guard lock(mu_);
      if (hold_ && req->op == IoOp::kWrite) {
        reactor_ = Reactor::Current();
        held_.push_back(req);
        cv_.notify_all();
        return;
      }
    }
    inner_->Submit(req);
  }
  Status ReadSync(uint64_t o, void* b, uint64_t l) override { return inner_->ReadSync(o, b, l); }
  Status WriteSync(uint64_t o, const void* b, uint64_t l) override {
    return inner_->WriteSync(o, b, l);
  }
  Status DiscardSync(uint64_t o, uint64_t l) override { return inner_->DiscardSync(o, l); }
  Status FlushSync() override { return inner_->FlushSync(); }

  void Hold() {
    std::lock_guard lock(mu_);
    hold_ = true;
    if (watchdog_.joinable()) return;
    watchdog_ = std::thread([this] {
      std::unique_lock guard(mu_);
      if (cv_.wait_for(guard, 20s, [&] { return stop_; })) return;
      hold_ = false;
      for (size_t i = 0; i < held_.size(); ++i) {
        IoRequest* req = std::exchange(held_[i], nullptr);
        if (req == nullptr) continue;
        guard.unlock();
        reactor_->RunSync([&] { inner_->Submit(req); });
        guard.lock();
      }
    });
  }
  // Waits (bounded) until n writes are held.
  bool WaitHeld(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return held_.size() >= n; });
  }
  // Submits the i-th held write (in the order they arrived) to the memory device; on `reactor`,
  // whose loop completes it.
  void Release(size_t i) {
    IoRequest* req = nullptr;
    Reactor* reactor = nullptr;
    {
      std::lock_guard lock(mu_);
      req = std::exchange(held_.at(i), nullptr);
      reactor = reactor_;
    }
    ASSERT_NE(req, nullptr) << "write " << i << " released twice";
    reactor->RunSync([&] { inner_->Submit(req); });
  }

 private:
  std::shared_ptr<MemoryDevice> inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false, stop_ = false;
  Reactor* reactor_ = nullptr;
  std::vector<IoRequest*> held_;
  std::thread watchdog_;
};

// One request submitted without waiting for it.
struct AsyncIo {
  VolumeIo io;
  AlignedBuffer buf;
  std::promise<Status> done;
  std::future<Status> result = done.get_future();
};

std::unique_ptr<AsyncIo> Submit(Volume& vol, VolumeOp op, uint64_t off, uint64_t len,
                                uint8_t fill) {
  auto a = std::make_unique<AsyncIo>();
  if (len != 0) {
    a->buf = AllocateAligned(len);
    std::memset(a->buf.get(), fill, len);
  }
  a->io.op = op;
  a->io.offset = off;
  a->io.length = len;
  a->io.buf = a->buf.get();
  a->io.ctx = a.get();
  a->io.done = [](VolumeIo* io) { static_cast<AsyncIo*>(io->ctx)->done.set_value(io->status); };
  vol.reactor()->Post([&vol, io = &a->io] { vol.Submit(io); });
  return a;
}

bool Ready(std::future<Status>& f, std::chrono::milliseconds wait = 0ms) {
  return f.wait_for(wait) == std::future_status::ready;
}

uint8_t ByteAt(Volume& vol, uint64_t off) {
  AlignedBuffer buf = AllocateAligned(4096);
  Status st = testing::RunVolumeIo(vol, VolumeOp::kRead, off & ~4095ull, 4096, buf.get());
  EXPECT_TRUE(st.ok()) << st;
  return buf.get()[off & 4095];
}

class EngineFreezeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shale-freeze-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    device_ = std::make_shared<HeldWriteDevice>(256 * kMiB);
    OpenEngine();
  }
  void TearDown() override {
    engine_.reset();
    fs::remove_all(dir_);
  }
  void OpenEngine() {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 256 * kMiB;
    o.commit_interval_ms = 0;
    o.verify_map_checkpoints = true;
    o.device_factory = [dev = device_](const std::string&) -> Result<std::shared_ptr<BlockDevice>> {
      return std::shared_ptr<BlockDevice>(dev);
    };
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
  }
  void ExpectClean() {
    auto r = engine_->CheckPool("default");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->clean()) << r->problems.front();
  }

  std::string dir_;
  std::shared_ptr<HeldWriteDevice> device_;
  std::unique_ptr<Engine> engine_;
};

// The three writes in flight at the cut (in place, into a new cluster, and one that a write
// after the cut overlaps) land in the snapshot; the head keeps the later write; a flush after
// the cut answers only once the snapshot's last commit is submitted; a restart reads the same.
TEST_F(EngineFreezeTest, WritesInFlightAtTheCutFinishIntoTheSnapshot) {
  constexpr uint64_t kInPlace = 0, kOverlap = 8192, kNewCluster = 4 * kMiB;
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 16 * kMiB}).ok());
  uint64_t image = 0;
  {
    auto h = engine_->OpenVolume("v");
    ASSERT_TRUE(h.ok()) << h.status();
    Volume& vol = (*h)->volume();
    auto base = Submit(vol, VolumeOp::kWrite, 0, kMiB, 0xA1);
    ASSERT_TRUE(base->result.get().ok());
    auto flushed = Submit(vol, VolumeOp::kFlush, 0, 0, 0);
    ASSERT_TRUE(flushed->result.get().ok());

    device_->Hold();
    std::vector<std::unique_ptr<AsyncIo>> precut;
    precut.push_back(Submit(vol, VolumeOp::kWrite, kInPlace, 4096, 0xC3));
    precut.push_back(Submit(vol, VolumeOp::kWrite, kNewCluster, 4096, 0xC4));
    precut.push_back(Submit(vol, VolumeOp::kWrite, kOverlap, 4096, 0xC5));
    ASSERT_TRUE(device_->WaitHeld(3));

    std::promise<Status> durable;
    auto durable_future = durable.get_future();
    auto freeze = std::async(std::launch::async, [&] {
      return engine_->FreezeVolume("v", nullptr,
                                   [&durable](const Status& st) { durable.set_value(st); });
    });
    ASSERT_EQ(freeze.wait_for(10s), std::future_status::ready)
        << "the freeze waited for the writes in flight";
    auto id = freeze.get();
    ASSERT_TRUE(id.ok()) << id.status();
    image = *id;
    EXPECT_FALSE(Ready(durable_future)) << "durable before the writes in flight completed";

    auto after = Submit(vol, VolumeOp::kWrite, kOverlap, 4096, 0xD6);  // held write #3
    ASSERT_TRUE(device_->WaitHeld(4));
    auto flush = Submit(vol, VolumeOp::kFlush, 0, 0, 0);

    device_->Release(3);
    ASSERT_TRUE(after->result.get().ok());
    device_->Release(2);  // the overlapped precut write completes after it
    device_->Release(0);
    ASSERT_TRUE(precut[2]->result.get().ok());
    ASSERT_TRUE(precut[0]->result.get().ok());
    EXPECT_FALSE(Ready(flush->result, 200ms)) << "a flush answered before the snapshot's commit";
    EXPECT_FALSE(Ready(durable_future));
    device_->Release(1);
    ASSERT_TRUE(precut[1]->result.get().ok());
    ASSERT_TRUE(Ready(durable_future, 30s));
    EXPECT_TRUE(durable_future.get().ok());
    ASSERT_TRUE(Ready(flush->result, 30s));
    EXPECT_TRUE(flush->result.get().ok());

    auto view = engine_->OpenImage("default", image);
    ASSERT_TRUE(view.ok()) << view.status();
    Volume& snap = (*view)->volume();
    EXPECT_EQ(ByteAt(snap, kInPlace), 0xC3);
    EXPECT_EQ(ByteAt(snap, kOverlap), 0xC5);
    EXPECT_EQ(ByteAt(snap, kNewCluster), 0xC4);
    EXPECT_EQ(ByteAt(snap, 64 * 1024), 0xA1);
    EXPECT_EQ(ByteAt(vol, kInPlace), 0xC3);
    EXPECT_EQ(ByteAt(vol, kOverlap), 0xD6) << "a write from before the cut hid a later one";
    EXPECT_EQ(ByteAt(vol, kNewCluster), 0xC4);
    view->reset();
  }
  ExpectClean();
  engine_.reset();
  OpenEngine();
  auto h = engine_->OpenVolume("v");
  ASSERT_TRUE(h.ok()) << h.status();
  auto view = engine_->OpenImage("default", image);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(ByteAt((*view)->volume(), kInPlace), 0xC3);
  EXPECT_EQ(ByteAt((*view)->volume(), kOverlap), 0xC5);
  EXPECT_EQ(ByteAt((*view)->volume(), kNewCluster), 0xC4);
  EXPECT_EQ(ByteAt((*h)->volume(), kOverlap), 0xD6);
  EXPECT_EQ(ByteAt((*h)->volume(), kNewCluster), 0xC4);
  view->reset();
  h->reset();
  ExpectClean();
}

// Readers of stored state (here: opening the snapshot) wait until the writes in flight at the
// cut completed and their commit landed; a second freeze waits for them too.
TEST_F(EngineFreezeTest, ReadersAndTheNextFreezeWaitForTheWritesInFlightAtTheCut) {
  ASSERT_TRUE(engine_->CreateVolume({.name = "v", .size_bytes = 16 * kMiB}).ok());
  auto h = engine_->OpenVolume("v");
  ASSERT_TRUE(h.ok()) << h.status();
  Volume& vol = (*h)->volume();
  device_->Hold();
  auto w = Submit(vol, VolumeOp::kWrite, 0, 64 * 1024, 0xE7);
  ASSERT_TRUE(device_->WaitHeld(1));
  std::promise<Status> durable;
  auto id = engine_->FreezeVolume("v", nullptr, [&](const Status& st) { durable.set_value(st); });
  ASSERT_TRUE(id.ok()) << id.status();
  auto open = std::async(std::launch::async, [&] { return engine_->OpenImage("default", *id); });
  auto second = std::async(std::launch::async, [&] { return engine_->FreezeVolume("v"); });
  EXPECT_EQ(open.wait_for(200ms), std::future_status::timeout)
      << "the snapshot opened before the write in flight at its cut completed";
  EXPECT_EQ(second.wait_for(0ms), std::future_status::timeout);
  device_->Release(0);
  ASSERT_TRUE(w->result.get().ok());
  ASSERT_EQ(open.wait_for(30s), std::future_status::ready);
  auto view = open.get();
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(ByteAt((*view)->volume(), 4096), 0xE7);
  ASSERT_EQ(second.wait_for(30s), std::future_status::ready);
  auto second_id = second.get();
  ASSERT_TRUE(second_id.ok()) << second_id.status();
  auto view2 = engine_->OpenImage("default", *second_id);
  ASSERT_TRUE(view2.ok()) << view2.status();
  EXPECT_EQ(ByteAt((*view2)->volume(), 4096), 0xE7);
  view->reset();
  view2->reset();
  h->reset();
  ExpectClean();
}

}  // namespace
}  // namespace shale
