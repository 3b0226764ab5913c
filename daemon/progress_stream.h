// Server-streaming long operations of the control API (FlattenVolume, ExportSnapshot,
// ImportSnapshot, CheckPool; docs/operations.md, "Progress and Ctrl-C").
//
// StreamOperation runs the operation on a worker thread. The operation reports how far it got
// into a ProgressCounter (any thread; it only stores, so a callback on a reactor never blocks);
// the gRPC handler thread sends a progress message whenever the counter moved, at most once per
// `interval`, and at the end the operation's last message with WriteLast, so the last message
// leaves together with the call's status (after the audit interceptor wrote its record). A
// client that goes away only stops the messages: whether the operation stops too is its own
// business (it polls ServerContext::IsCancelled(): export, import and check stop; flatten goes
// on). The handler always waits for the operation, so nothing outlives the call's objects.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>

#include "engine/common/status.h"

namespace shale::daemon {

// Done/total of a running operation; written by the operation, read by the streaming thread.
class ProgressCounter {
 public:
  void Set(uint64_t done, uint64_t total) {
    total_.store(total, std::memory_order_relaxed);
    done_.store(done, std::memory_order_relaxed);
  }
  uint64_t done() const { return done_.load(std::memory_order_relaxed); }
  uint64_t total() const { return total_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> total_{0};
};

// Runs `operation(counter, &last)` on a worker thread while streaming `fill(done, total, &msg)`
// messages through `writer` (only once `total` is known, and only when `done` moved). On
// success `last` is sent as the final message. Returns the operation's status (the caller turns
// an error into the call's gRPC status).
template <typename Message>
Status StreamOperation(grpc::ServerWriter<Message>* writer, std::chrono::milliseconds interval,
                       const std::function<Status(ProgressCounter&, Message*)>& operation,
                       const std::function<void(uint64_t, uint64_t, Message*)>& fill) {
  ProgressCounter counter;
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Status result;
  Message last;
  std::thread worker([&] {
    Status st = operation(counter, &last);
    std::lock_guard lock(mu);
    result = std::move(st);
    finished = true;
    cv.notify_all();
  });
  uint64_t sent_done = UINT64_MAX;
  bool client_gone = false;
  {
    std::unique_lock lock(mu);
    while (!cv.wait_for(lock, interval, [&] { return finished; })) {
      const uint64_t done = counter.done();
      const uint64_t total = counter.total();
      if (client_gone || total == 0 || done == sent_done) continue;
      Message progress;
      fill(done, total, &progress);
      lock.unlock();
      client_gone = !writer->Write(progress);
      lock.lock();
      sent_done = done;
    }
  }
  worker.join();
  if (result.ok() && !client_gone) writer->WriteLast(last, grpc::WriteOptions());
  return result;
}

}  // namespace shale::daemon
