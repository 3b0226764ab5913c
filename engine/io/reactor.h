// Reactor: one thread that owns one io_uring ring and runs everything posted to it.
//
// The data path of Shale runs on a small number of reactors. Code running on a reactor never
// blocks: device I/O (and, for frontends, socket I/O) is submitted to the ring and continues in
// a CompletionHandler; work from other threads arrives through Post(). All SQEs prepared while
// handling one batch of completions are submitted with a single io_uring_enter (batching).
//
// Threading: Post() and Stop() are thread-safe; every other member must be called on the
// reactor's own thread (IsCurrent()).
#pragma once

#include <liburing.h>
#include <time.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/common/result.h"

namespace shale {

// Receives the CQE of an SQE prepared with Reactor::PrepareSqe. Must stay alive until then.
class CompletionHandler {
 public:
  virtual void OnCompletion(int32_t res, uint32_t cqe_flags) = 0;

 protected:
  ~CompletionHandler() = default;
};

// What the kernel's io_uring offers, probed once per reactor at start.
struct UringFeatures {
  uint32_t setup_flags = 0;  // flags the ring was created with
  uint32_t features = 0;     // IORING_FEAT_* reported by the kernel
  bool ring_fd_registered = false;
  std::vector<bool> op_supported;
  bool Supports(int opcode) const {
    return opcode >= 0 && static_cast<size_t>(opcode) < op_supported.size() && op_supported[opcode];
  }
  std::string Describe() const;
};

class Reactor {
 public:
  static constexpr int kMaxReactors = 64;

  struct Options {
    std::string name = "reactor";
    unsigned ring_entries = 256;  // SQ size; CQ is 4x (completions never dropped)
  };

  // Creates and starts a reactor thread; fails with a clear status if io_uring is unusable.
  static Result<std::unique_ptr<Reactor>> Start(const Options& options);
  ~Reactor();  // Stop()s
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Stops the loop after running everything already posted, then joins the thread. Idempotent.
  void Stop();

  // Thread-safe: runs fn on the reactor thread soon, in posting order.
  void Post(std::function<void()> fn);
  // Thread-safe: posts fn and blocks until it has run. Must not be called on this reactor.
  void RunSync(const std::function<void()>& fn);

  // --- reactor thread only ---
  static Reactor* Current();  // the reactor of the calling thread, or nullptr
  bool IsCurrent() const { return Current() == this; }
  int id() const { return id_; }
  const std::string& name() const { return options_.name; }
  const UringFeatures& features() const { return features_; }

  // Runs fn after the current completion batch (never re-entrantly).
  void Defer(std::function<void()> fn);
  // Runs fn once after delay_ns; returns an id for CancelTimer.
  uint64_t AddTimer(uint64_t delay_ns, std::function<void()> fn);
  void CancelTimer(uint64_t timer_id);

  // Returns an SQE whose completion goes to handler. Submits queued SQEs if the SQ is full.
  // The SQE is submitted at the end of the current loop iteration at the latest.
  io_uring_sqe* PrepareSqe(CompletionHandler* handler);
  // Submits prepared SQEs now (normally unnecessary; the loop does it).
  void SubmitNow();

  // Number of SQEs submitted and not yet completed (for tests and stats).
  uint64_t in_flight() const { return in_flight_; }

  // Thread-safe: CPU time (user + system) the reactor's thread has used, in nanoseconds — the
  // time it was busy, since waiting in io_uring_enter costs none. Read from the thread's CPU
  // clock, so the data path pays nothing for it; after the thread ended, the last value read.
  uint64_t CpuNanos() const;

 private:
  explicit Reactor(const Options& options);
  void ThreadMain(std::promise<Status>* started);
  Status InitRing();
  void Loop();
  bool RunPosted();
  void RunDeferred();
  void RunTimers();
  void ArmWakeup();
  int64_t NextTimeoutNanos();
  void ReapCompletions();

  class WakeHandler final : public CompletionHandler {
   public:
    explicit WakeHandler(Reactor* r) : reactor_(r) {}
    void OnCompletion(int32_t res, uint32_t flags) override;

   private:
    Reactor* reactor_;
  };

  Options options_;
  int id_ = -1;
  io_uring ring_{};
  bool ring_ready_ = false;
  UringFeatures features_;
  int wake_fd_ = -1;
  uint64_t wake_buf_ = 0;
  WakeHandler wake_handler_{this};
  uint64_t in_flight_ = 0;
  unsigned pending_sqes_ = 0;

  std::thread thread_;
  mutable std::mutex cpu_mu_;  // guards the three below
  clockid_t cpu_clock_{};
  bool has_cpu_clock_ = false;
  mutable uint64_t last_cpu_ns_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  std::mutex post_mu_;
  std::vector<std::function<void()>> posted_;
  std::atomic<size_t> posted_count_{0};

  std::vector<std::function<void()>> deferred_;
  struct TimerKey {
    uint64_t deadline;
    uint64_t id;
    bool operator<(const TimerKey& o) const {
      return deadline != o.deadline ? deadline < o.deadline : id < o.id;
    }
  };
  std::map<TimerKey, std::function<void()>> timers_;
  std::unordered_map<uint64_t, uint64_t> timer_deadlines_;
  uint64_t next_timer_id_ = 1;
};

}  // namespace shale
