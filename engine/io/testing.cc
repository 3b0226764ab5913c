#include "engine/io/testing.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <system_error>

namespace shale::testutil {

namespace {

// Waits for one request; notify happens under the lock so the waiter (on the caller's stack)
// cannot disappear while done() still touches it.
struct OneWaiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
};

void OneDone(IoRequest* req) {
  auto* w = static_cast<OneWaiter*>(req->ctx);
  std::lock_guard lock(w->mu);
  w->done = true;
  w->cv.notify_all();
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Word w of the pattern for seed.
uint64_t PatternWord(uint64_t seed, uint64_t w) {
  return SplitMix64(seed * 0x100000001b3ull ^ SplitMix64(w));
}

bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kIoBufferAlignment == 0; }

}  // namespace

std::unique_ptr<Reactor> StartReactor(std::string name) {
  auto r = Reactor::Start({.name = std::move(name)});
  SHALE_CHECK(r.ok(), "cannot start a reactor: ", r.status().ToString());
  return std::move(r).value();
}

Status RunIo(Reactor& reactor, BlockDevice& device, IoRequest& req) {
  SHALE_CHECK(!reactor.IsCurrent(), "RunIo on the reactor's own thread would deadlock");
  OneWaiter waiter;
  req.ctx = &waiter;
  req.done = &OneDone;
  reactor.Post([&device, &req] { device.Submit(&req); });
  std::unique_lock lock(waiter.mu);
  bool ok = waiter.cv.wait_for(lock, kIoDeadline, [&] { return waiter.done; });
  SHALE_CHECK(ok, "RunIo: ", device.kind(), " ", IoOpName(req.op), " at offset ", req.offset,
              " did not complete within ", kIoDeadline.count(), " s");
  return req.status;
}

Status ReadAt(Reactor& reactor, BlockDevice& device, uint64_t offset, std::span<uint8_t> out) {
  AlignedBuffer bounce;
  void* buf = out.data();
  if (!IsAligned(buf)) {
    bounce = AllocateAligned(out.size());
    buf = bounce.get();
  }
  IoRequest req;
  req.op = IoOp::kRead;
  req.offset = offset;
  req.length = out.size();
  req.buf = buf;
  Status st = RunIo(reactor, device, req);
  if (st.ok() && bounce) std::memcpy(out.data(), bounce.get(), out.size());
  return st;
}

Status WriteAt(Reactor& reactor, BlockDevice& device, uint64_t offset,
               std::span<const uint8_t> data, uint32_t flags) {
  AlignedBuffer bounce;
  void* buf = const_cast<uint8_t*>(data.data());
  if (!IsAligned(buf)) {
    bounce = AllocateAligned(data.size());
    std::memcpy(bounce.get(), data.data(), data.size());
    buf = bounce.get();
  }
  IoRequest req;
  req.op = IoOp::kWrite;
  req.flags = flags;
  req.offset = offset;
  req.length = data.size();
  req.buf = buf;
  return RunIo(reactor, device, req);
}

Status Flush(Reactor& reactor, BlockDevice& device) {
  IoRequest req;
  req.op = IoOp::kFlush;
  return RunIo(reactor, device, req);
}

Status Discard(Reactor& reactor, BlockDevice& device, uint64_t offset, uint64_t length) {
  IoRequest req;
  req.op = IoOp::kDiscard;
  req.offset = offset;
  req.length = length;
  return RunIo(reactor, device, req);
}

Status WriteZeroes(Reactor& reactor, BlockDevice& device, uint64_t offset, uint64_t length) {
  IoRequest req;
  req.op = IoOp::kWriteZeroes;
  req.offset = offset;
  req.length = length;
  return RunIo(reactor, device, req);
}

IoRequest& IoBatch::Add(IoOp op, uint64_t offset, uint64_t length, void* buf, uint32_t flags) {
  Entry& e = entries_.emplace_back();
  e.batch = this;
  e.req.op = op;
  e.req.offset = offset;
  e.req.length = length;
  e.req.buf = buf;
  e.req.flags = flags;
  e.req.ctx = &e;
  e.req.done = &IoBatch::OnDone;
  return e.req;
}

void IoBatch::OnDone(IoRequest* req) {
  auto* e = static_cast<Entry*>(req->ctx);
  IoBatch* batch = e->batch;
  std::lock_guard lock(batch->mu_);
  if (e->submitting) e->inline_completion = true;
  if (Reactor::Current() != e->reactor) e->wrong_reactor = true;
  if (++e->done_calls == 1) ++batch->completed_;
  batch->cv_.notify_all();
}

void IoBatch::SubmitAndWait(Reactor& reactor, BlockDevice& device) {
  size_t to_submit = 0;
  for (Entry& e : entries_) to_submit += e.submitted ? 0 : 1;
  size_t target;
  {
    std::lock_guard lock(mu_);
    target = completed_ + to_submit;
  }
  reactor.Post([this, &reactor, &device] {
    for (Entry& e : entries_) {
      if (e.submitted) continue;
      e.submitted = true;
      e.reactor = &reactor;
      {
        std::lock_guard lock(mu_);
        e.submitting = true;
      }
      device.Submit(&e.req);
      std::lock_guard lock(mu_);
      e.submitting = false;
    }
  });
  {
    std::unique_lock lock(mu_);
    bool ok = cv_.wait_for(lock, kIoDeadline, [&] { return completed_ >= target; });
    SHALE_CHECK(ok, "IoBatch: ", target - completed_, " of ", entries_.size(), " requests on ",
                device.kind(), " did not complete within ", kIoDeadline.count(), " s");
  }
  // Give a buggy device the chance to complete something twice before the caller checks.
  reactor.RunSync([] {});
  reactor.RunSync([] {});
}

bool IoBatch::ContractHeld() const { return ContractViolation().empty(); }

std::string IoBatch::ContractViolation() const {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    std::string what = "request " + std::to_string(i) + " (" + std::string(IoOpName(e.req.op)) +
                       " at " + std::to_string(e.req.offset) + ")";
    if (e.submitted && e.done_calls != 1) {
      return what + " completed " + std::to_string(e.done_calls) + " times";
    }
    if (e.inline_completion) return what + " completed inside Submit()";
    if (e.wrong_reactor) return what + " completed on another thread than its reactor";
  }
  return "";
}

size_t IoBatch::failures() const {
  size_t n = 0;
  for (const Entry& e : entries_) n += e.req.status.ok() ? 0 : 1;
  return n;
}

TempDir::TempDir(std::string_view prefix, const std::string& base) {
  std::string tmpl = base + "/" + std::string(prefix) + ".XXXXXX";
  char* p = mkdtemp(tmpl.data());
  SHALE_CHECK(p != nullptr, "mkdtemp ", tmpl, ": ", std::strerror(errno));
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);  // best effort: a leftover temp dir is harmless
}

std::string TempDir::SparseFile(std::string_view name, uint64_t size) const {
  std::string path = File(name);
  Status st = CreateSparseFile(path, size);
  SHALE_CHECK(st.ok(), "create ", path, ": ", st.ToString());
  return path;
}

void FillPattern(std::span<uint8_t> buf, uint64_t seed) {
  uint64_t word = 0;
  for (uint64_t i = 0; i < buf.size(); ++i) {
    if (i % 8 == 0) word = PatternWord(seed, i / 8);
    buf[i] = static_cast<uint8_t>(word >> (8 * (i % 8)));
  }
}

int64_t FindPatternMismatch(std::span<const uint8_t> buf, uint64_t seed) {
  uint64_t word = 0;
  for (uint64_t i = 0; i < buf.size(); ++i) {
    if (i % 8 == 0) word = PatternWord(seed, i / 8);
    if (buf[i] != static_cast<uint8_t>(word >> (8 * (i % 8)))) return static_cast<int64_t>(i);
  }
  return -1;
}

bool IsAllZero(std::span<const uint8_t> buf) {
  for (uint8_t b : buf) {
    if (b != 0) return false;
  }
  return true;
}

}  // namespace shale::testutil
