#include "engine/io/reactor.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "engine/common/clock.h"
#include "engine/common/log.h"

namespace shale {

namespace {
thread_local Reactor* tls_current = nullptr;
std::mutex g_ids_mu;
bool g_ids_used[Reactor::kMaxReactors] = {};

int AcquireId() {
  std::lock_guard lock(g_ids_mu);
  for (int i = 0; i < Reactor::kMaxReactors; ++i) {
    if (!g_ids_used[i]) {
      g_ids_used[i] = true;
      return i;
    }
  }
  return -1;
}
void ReleaseId(int id) {
  std::lock_guard lock(g_ids_mu);
  if (id >= 0) g_ids_used[id] = false;
}
uint64_t NowNanos() { return Clock::Real()->NowNanos(); }
}  // namespace

std::string UringFeatures::Describe() const {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (on) {
      if (!s.empty()) s += ',';
      s += name;
    }
  };
  add(setup_flags & IORING_SETUP_SINGLE_ISSUER, "single_issuer");
  add(setup_flags & IORING_SETUP_DEFER_TASKRUN, "defer_taskrun");
  add(setup_flags & IORING_SETUP_COOP_TASKRUN, "coop_taskrun");
  add(features & IORING_FEAT_NODROP, "nodrop");
  add(features & IORING_FEAT_EXT_ARG, "ext_arg");
  add(features & IORING_FEAT_FAST_POLL, "fast_poll");
  add(ring_fd_registered, "registered_ring_fd");
  return s;
}

Reactor::Reactor(const Options& options) : options_(options) {}

Result<std::unique_ptr<Reactor>> Reactor::Start(const Options& options) {
  std::unique_ptr<Reactor> r(new Reactor(options));
  r->id_ = AcquireId();
  if (r->id_ < 0) return Status::FailedPrecondition("too many reactors (limit 64)");
  std::promise<Status> started;
  auto fut = started.get_future();
  r->thread_ = std::thread([raw = r.get(), &started] { raw->ThreadMain(&started); });
  Status st = fut.get();
  if (!st.ok()) {
    r->thread_.join();
    return st;
  }
  return r;
}

uint64_t Reactor::CpuNanos() const {
  std::lock_guard lock(cpu_mu_);
  if (has_cpu_clock_) {
    timespec ts{};
    if (clock_gettime(cpu_clock_, &ts) == 0) {
      last_cpu_ns_ =
          static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(ts.tv_nsec);
    }
  }
  return last_cpu_ns_;
}

Reactor::~Reactor() {
  Stop();
  ReleaseId(id_);
}

Status Reactor::InitRing() {
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  params.cq_entries = options_.ring_entries * 4;
  int rc = io_uring_queue_init_params(options_.ring_entries, &ring_, &params);
  if (rc == -EINVAL) {  // kernels before 6.1: no DEFER_TASKRUN / SINGLE_ISSUER
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN;
    params.cq_entries = options_.ring_entries * 4;
    rc = io_uring_queue_init_params(options_.ring_entries, &ring_, &params);
  }
  if (rc == -EINVAL) {
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = options_.ring_entries * 4;
    rc = io_uring_queue_init_params(options_.ring_entries, &ring_, &params);
  }
  if (rc < 0) {
    return Status::FromErrno(-rc,
                             "io_uring_queue_init (is io_uring disabled by "
                             "kernel.io_uring_disabled or seccomp?)");
  }
  ring_ready_ = true;
  features_.setup_flags = params.flags;
  features_.features = params.features;
  if (!(params.features & IORING_FEAT_NODROP)) {
    return Status::NotSupported("io_uring lacks IORING_FEAT_NODROP (kernel older than 5.5)");
  }
  if (!(params.features & IORING_FEAT_EXT_ARG)) {
    return Status::NotSupported("io_uring lacks IORING_FEAT_EXT_ARG (kernel older than 5.11)");
  }
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  if (probe == nullptr) return Status::NotSupported("io_uring opcode probe failed");
  features_.op_supported.assign(IORING_OP_LAST, false);
  for (int op = 0; op < IORING_OP_LAST; ++op) {
    features_.op_supported[op] = io_uring_opcode_supported(probe, op) != 0;
  }
  io_uring_free_probe(probe);
  if (!features_.Supports(IORING_OP_READ)) {
    return Status::NotSupported("io_uring lacks IORING_OP_READ (kernel older than 5.6)");
  }
  // Saves the ring fd lookup on every io_uring_enter (kernel 5.18+; optional).
  if (io_uring_register_ring_fd(&ring_) == 1) features_.ring_fd_registered = true;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return Status::FromErrno(errno, "eventfd");
  return Status::Ok();
}

void Reactor::ThreadMain(std::promise<Status>* started) {
  tls_current = this;
  std::string tname = options_.name.substr(0, 15);
  pthread_setname_np(pthread_self(), tname.c_str());
  clockid_t cpu_clock;
  if (pthread_getcpuclockid(pthread_self(), &cpu_clock) == 0) {
    std::lock_guard lock(cpu_mu_);
    cpu_clock_ = cpu_clock;
    has_cpu_clock_ = true;
  }
  Status st = InitRing();
  if (!st.ok()) {
    if (ring_ready_) io_uring_queue_exit(&ring_);
    if (wake_fd_ >= 0) close(wake_fd_);
    {
      std::lock_guard lock(cpu_mu_);
      has_cpu_clock_ = false;
    }
    tls_current = nullptr;
    started->set_value(st);
    return;
  }
  ArmWakeup();
  SHALE_LOG_DEBUG("reactor started", {"reactor", options_.name}, {"id", id_},
                  {"io_uring", features_.Describe()});
  started->set_value(Status::Ok());
  Loop();
  // Drain: everything posted before Stop() has run; wait for in-flight SQEs so no kernel
  // operation still references memory the owners are about to free.
  while (in_flight_ > 1) {  // the wakeup read stays armed
    io_uring_submit_and_wait(&ring_, 1);
    ReapCompletions();
    RunDeferred();
  }
  io_uring_queue_exit(&ring_);
  close(wake_fd_);
  // The thread's CPU clock dies with it (and its id could name a later thread): keep the total.
  CpuNanos();
  {
    std::lock_guard lock(cpu_mu_);
    has_cpu_clock_ = false;
  }
  tls_current = nullptr;
}

void Reactor::ArmWakeup() {
  io_uring_sqe* sqe = PrepareSqe(&wake_handler_);
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof(wake_buf_), 0);
}

void Reactor::WakeHandler::OnCompletion(int32_t /*res*/, uint32_t /*flags*/) {
  if (!reactor_->stop_.load(std::memory_order_acquire)) reactor_->ArmWakeup();
}

void Reactor::Stop() {
  if (!thread_.joinable()) return;
  if (std::this_thread::get_id() == thread_.get_id()) {
    stop_.store(true);
    return;  // the owner joins later
  }
  Post([this] { stop_.store(true, std::memory_order_release); });
  thread_.join();
}

void Reactor::Post(std::function<void()> fn) {
  {
    std::lock_guard lock(post_mu_);
    posted_.push_back(std::move(fn));
    posted_count_.fetch_add(1, std::memory_order_seq_cst);
  }
  if (sleeping_.load(std::memory_order_seq_cst)) {
    uint64_t one = 1;
    ssize_t n = write(wake_fd_, &one, sizeof(one));
    (void)n;  // EAGAIN means a wakeup is already pending
  }
}

void Reactor::RunSync(const std::function<void()>& fn) {
  SHALE_CHECK(!IsCurrent(), "RunSync on the reactor's own thread would deadlock");
  std::promise<void> done;
  auto fut = done.get_future();
  Post([&] {
    fn();
    done.set_value();
  });
  fut.wait();
}

Reactor* Reactor::Current() { return tls_current; }

void Reactor::Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

uint64_t Reactor::AddTimer(uint64_t delay_ns, std::function<void()> fn) {
  uint64_t id = next_timer_id_++;
  uint64_t deadline = NowNanos() + delay_ns;
  timers_.emplace(TimerKey{deadline, id}, std::move(fn));
  timer_deadlines_[id] = deadline;
  return id;
}

void Reactor::CancelTimer(uint64_t timer_id) {
  auto it = timer_deadlines_.find(timer_id);
  if (it == timer_deadlines_.end()) return;
  timers_.erase(TimerKey{it->second, timer_id});
  timer_deadlines_.erase(it);
}

io_uring_sqe* Reactor::PrepareSqe(CompletionHandler* handler) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    SubmitNow();
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, handler);
  ++pending_sqes_;
  ++in_flight_;
  return sqe;
}

void Reactor::SubmitNow() {
  if (pending_sqes_ == 0) return;
  int rc;
  do {
    rc = io_uring_submit(&ring_);
  } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
  SHALE_CHECK(rc >= 0, "io_uring_submit failed: ", std::strerror(-rc));
  pending_sqes_ = 0;
}

bool Reactor::RunPosted() {
  if (posted_count_.load(std::memory_order_acquire) == 0) return false;
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(post_mu_);
    batch.swap(posted_);
    posted_count_.store(0, std::memory_order_release);
  }
  for (auto& fn : batch) fn();
  return !batch.empty();
}

void Reactor::RunDeferred() {
  // Deferred work may defer more; bound the rounds so timers and I/O still get a turn.
  for (int round = 0; round < 64 && !deferred_.empty(); ++round) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void Reactor::RunTimers() {
  if (timers_.empty()) return;
  uint64_t now = NowNanos();
  while (!timers_.empty() && timers_.begin()->first.deadline <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadlines_.erase(node.key().id);
    node.mapped()();
  }
}

int64_t Reactor::NextTimeoutNanos() {
  if (!deferred_.empty() || posted_count_.load() != 0) return 0;
  if (timers_.empty()) return -1;
  uint64_t now = NowNanos();
  uint64_t deadline = timers_.begin()->first.deadline;
  return deadline <= now ? 0 : static_cast<int64_t>(deadline - now);
}

void Reactor::ReapCompletions() {
  io_uring_cqe* cqe;
  unsigned head;
  unsigned count = 0;
  // Handlers may prepare SQEs (never reap) while we iterate; advancing at the end is safe.
  io_uring_for_each_cqe(&ring_, head, cqe) {
    auto* handler = static_cast<CompletionHandler*>(io_uring_cqe_get_data(cqe));
    --in_flight_;
    handler->OnCompletion(cqe->res, cqe->flags);
    ++count;
  }
  io_uring_cq_advance(&ring_, count);
}

void Reactor::Loop() {
  while (!stop_.load(std::memory_order_acquire)) {
    RunPosted();
    RunTimers();
    RunDeferred();
    if (stop_.load(std::memory_order_acquire)) break;

    int64_t timeout = NextTimeoutNanos();
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (timeout == 0) {
      rc = io_uring_submit_and_get_events(&ring_);
    } else {
      sleeping_.store(true, std::memory_order_seq_cst);
      if (posted_count_.load(std::memory_order_seq_cst) != 0) {
        sleeping_.store(false);
        rc = io_uring_submit_and_get_events(&ring_);
      } else if (timeout < 0) {
        rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, nullptr, nullptr);
      } else {
        __kernel_timespec ts{};
        ts.tv_sec = timeout / 1'000'000'000;
        ts.tv_nsec = timeout % 1'000'000'000;
        rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      }
      sleeping_.store(false, std::memory_order_seq_cst);
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      SHALE_CHECK(false, "io_uring wait failed: ", std::strerror(-rc));
    }
    pending_sqes_ = 0;
    ReapCompletions();
  }
}

}  // namespace shale
