#include "replication/replication_layer.h"

#include <algorithm>
#include <cerrno>

#include "engine/common/assert.h"
#include "engine/common/log.h"
#include "engine/io/reactor.h"
#include "replication/activity_log.h"
#include "replication/changed_regions.h"

namespace shale::replication {

std::string_view MemberStateName(MemberState state) {
  switch (state) {
    case MemberState::kInSync:
      return "healthy";
    case MemberState::kRebuilding:
    case MemberState::kJoining:
      return "rebuilding";
    case MemberState::kLeaving:
      return "faulted";
    case MemberState::kOut:
      return "faulted";
  }
  return "unknown";
}

namespace {

bool IsWriteOp(VolumeOp op) {
  return op == VolumeOp::kWrite || op == VolumeOp::kWriteZeroes || op == VolumeOp::kDiscard;
}

// Retry cadence of a membership change that failed (etcd unreachable, a lost race).
constexpr uint64_t kMembershipRetryNs = 200'000'000;

}  // namespace

// One client request and its children (one per replica, or several per remote replica when
// the request is larger than a replica frame may carry).
struct ReplicationLayer::Fanout {
  ReplicationLayer* layer = nullptr;
  VolumeIo* client = nullptr;
  std::vector<ChildIo> children;  // reserved up front: children never move once submitted
  uint32_t pending = 0;           // children not done
  uint32_t waits = 0;             // leaves whose recording this write waits for
  std::vector<bool> waiting_on;   // by slot
  Status status;                  // the first error that fails the whole request
  bool write = false;             // write, zeroes, discard or flush
  int read_slot = -1;
  std::vector<bool> read_tried;  // by slot
  std::set<uint64_t> flushing;   // a flush: the regions written before it (unflushed_ then)
  uint64_t log_token = 0;        // a flush: ActivityLog::FlushStarted's token
  std::chrono::steady_clock::time_point sent;  // a write: when its children were submitted
};

ReplicationLayer::ReplicationLayer(Reactor* reactor, std::string volume, uint64_t size_bytes,
                                   ChangedRegions* changed, MembershipClient* membership,
                                   Options options)
    : reactor_(reactor),
      volume_(std::move(volume)),
      size_bytes_(size_bytes),
      changed_(changed),
      membership_(membership),
      options_(options),
      epoch_(options.epoch) {}

ReplicationLayer::~ReplicationLayer() {
  SHALE_CHECK(writes_in_flight_.empty() && held_.empty(),
              "ReplicationLayer destroyed with requests in flight");
}

size_t ReplicationLayer::InSyncCount() const {
  size_t n = 0;
  for (const Slot& s : slots_) n += s.state == MemberState::kInSync ? 1 : 0;
  return n;
}

std::vector<std::string> ReplicationLayer::OutNodes() const {
  std::vector<std::string> out;
  for (const Slot& s : slots_) {
    if (!s.removed && (s.state == MemberState::kOut || s.state == MemberState::kLeaving)) {
      out.push_back(s.target->node());
    }
  }
  return out;
}

ReplicationLayer::Slot* ReplicationLayer::FindSlot(const std::string& node, size_t* index) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].removed && slots_[i].target->node() == node) {
      if (index != nullptr) *index = i;
      return &slots_[i];
    }
  }
  return nullptr;
}

bool ReplicationLayer::Overlaps(const VolumeIo* io) const {
  if (io->op == VolumeOp::kFlush) return false;
  for (const RangeLock& l : range_locks_) {
    if (io->offset < l.offset + l.length && l.offset < io->offset + io->length) return true;
  }
  return false;
}

bool ReplicationLayer::WriteInFlightTo(uint64_t offset, uint64_t length) const {
  for (const Fanout* f : writes_in_flight_) {
    const VolumeIo* c = f->client;
    if (IsWriteOp(c->op) && c->offset < offset + length && offset < c->offset + c->length) {
      return true;
    }
  }
  return false;
}

// Runs the go() of every lock whose range no longer has a write in flight.
void ReplicationLayer::GrantDrainedLocks() {
  std::vector<std::function<void()>> ready;
  for (RangeLock& l : range_locks_) {
    if (l.waiter && !WriteInFlightTo(l.offset, l.length)) {
      ready.push_back(std::move(l.waiter));
      l.waiter = nullptr;
    }
  }
  for (auto& go : ready) go();  // may lock or unlock ranges
}

bool ReplicationLayer::WritesBlocked() const {
  for (const Slot& s : slots_) {
    if (s.state == MemberState::kLeaving) return true;
  }
  return false;
}

void ReplicationLayer::Fail(VolumeIo* io, Status status) {
  reactor_->Post([io, status = std::move(status)] {
    io->status = status;
    io->done(io);
  });
}

void ReplicationLayer::Submit(VolumeIo* io) {
  SHALE_CHECK(reactor_->IsCurrent(), "ReplicationLayer::Submit off its reactor");
  if (fenced_) return Fail(io, fence_status_);
  if (io->op == VolumeOp::kRead) return StartRead(io, nullptr);
  StartWrite(io);
}

// ---------------------------------------------------------------------------------------------
// Writes (write, write-zeroes, discard) and flushes

void ReplicationLayer::StartWrite(VolumeIo* io) {
  if (fenced_) return Fail(io, fence_status_);
  if (WritesBlocked()) {
    // A leave is being recorded. Past the membership timeout, fail rather than wait.
    for (const Slot& s : slots_) {
      if (s.state == MemberState::kLeaving &&
          std::chrono::steady_clock::now() - s.leaving_since > options_.membership_timeout) {
        return Fail(io, Status::IoError("replica " + s.target->node() +
                                        " failed and the cluster store cannot record it; "
                                        "writes fail until it can"));
      }
    }
    held_.push_back(io);
    return;
  }
  if (Overlaps(io) || (quiesced_ && IsWriteOp(io->op))) {
    held_.push_back(io);
    return;
  }
  if (InSyncCount() < std::max<uint32_t>(options_.min_in_sync, 1)) {
    return Fail(io, Status::IoError("volume " + volume_ + " has " + std::to_string(InSyncCount()) +
                                    " in-sync replica(s), fewer than --min-in-sync " +
                                    std::to_string(options_.min_in_sync)));
  }
  const std::vector<std::string> out = OutNodes();
  bool covered = true;
  if (IsWriteOp(io->op)) {
    for (const std::string& n : out)
      covered = covered && changed_->Covered(n, io->offset, io->length);
  }
  if (covered) return LogAndDispatch(io);
  // The regions must be durably marked for every out replica before the write goes out.
  changed_->Mark(out, io->offset, io->length, [this, io](Status st) {
    if (!st.ok()) {
      return Fail(io, Status::IoError("cannot record the changed regions of an out replica: " +
                                      st.ToString()));
    }
    StartWrite(io);  // checks again: something may have changed meanwhile
  });
}

void ReplicationLayer::DispatchWrite(VolumeIo* io) {
  auto* f = new Fanout();
  f->layer = this;
  f->client = io;
  f->write = true;
  f->waiting_on.assign(slots_.size(), false);
  const bool flush = io->op == VolumeOp::kFlush;
  size_t children = 0;
  for (const Slot& s : slots_) {
    // A rebuilding replica gets flushes too: the activity log frees a region only once every
    // replica that received its writes made them durable.
    const bool gets = s.state == MemberState::kInSync || s.state == MemberState::kJoining ||
                      s.state == MemberState::kRebuilding;
    if (!gets) continue;
    children += s.target->local() || flush
                    ? 1
                    : std::max<uint64_t>(1, (io->length + kMaxIoBytes - 1) / kMaxIoBytes);
  }
  f->children.reserve(children);
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    // A rebuilding replica gets flushes too: the activity log frees a region only once every
    // replica that received its writes made them durable.
    const bool gets = s.state == MemberState::kInSync || s.state == MemberState::kJoining ||
                      s.state == MemberState::kRebuilding;
    if (!gets) continue;
    const uint64_t piece =
        s.target->local() || flush ? std::max<uint64_t>(io->length, 1) : uint64_t{kMaxIoBytes};
    for (uint64_t done = 0; done == 0 || done < io->length; done += piece) {
      ChildIo& c = f->children.emplace_back();
      c.io.op = io->op;
      c.io.flags = io->flags;
      c.io.offset = io->offset + done;
      c.io.length = flush ? 0 : std::min(piece, io->length - done);
      c.io.buf = io->buf != nullptr ? io->buf + done : nullptr;
      c.io.io_class = io->io_class;
      c.owner = f;
      c.slot = static_cast<uint32_t>(i);
      c.done = &ReplicationLayer::OnChildDone;
      if (flush) break;
    }
  }
  SHALE_CHECK(f->children.size() == children, "fan-out size");
  f->pending = static_cast<uint32_t>(f->children.size());
  if (flush) f->flushing.swap(unflushed_);  // what this flush makes durable, if it succeeds
  writes_in_flight_.insert(f);
  if (activity_ != nullptr) LogStarted(f);
  f->sent = std::chrono::steady_clock::now();
  for (ChildIo& c : f->children) slots_[c.slot].target->Submit(&c);
}

void ReplicationLayer::OnChildDone(ChildIo* child) {
  auto* f = static_cast<Fanout*>(child->owner);
  f->layer->FinishChild(f, child);
}

void ReplicationLayer::FinishChild(Fanout* f, ChildIo* child) {
  --f->pending;
  if (!f->write) {
    // A read: retried on another in-sync replica when it failed there.
    if (!child->io.status.ok() && f->status.ok() && !child->fenced) {
      f->status = child->io.status;
      ReplicaFailed(child->slot, child->io.status.ToString());
    } else if (child->fenced) {
      Fence(child->io.status);
    }
    if (f->pending > 0) return;
    if (!f->status.ok() && !fenced_) {
      f->status = Status::Ok();
      auto* retry = f;
      return StartRead(retry->client, retry);
    }
    return Complete(f, fenced_ ? fence_status_ : Status::Ok());
  }
  if (child->io.status.ok() && child->io.op == VolumeOp::kWrite) {
    const auto took = std::chrono::steady_clock::now() - f->sent;
    slots_[child->slot].write_latency->Record(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(took).count()));
  } else if (!child->io.status.ok()) {
    if (child->fenced) {
      Fence(child->io.status);
    } else {
      Slot& s = slots_[child->slot];
      const MemberState before = s.state;
      if (before == MemberState::kInSync || before == MemberState::kRebuilding ||
          before == MemberState::kJoining || before == MemberState::kLeaving) {
        if (before != MemberState::kLeaving)
          ReplicaFailed(child->slot, child->io.status.ToString());
        if (s.state == MemberState::kLeaving && !f->waiting_on[child->slot]) {
          f->waiting_on[child->slot] = true;
          ++f->waits;
          s.waiting.push_back(f);
        } else if (s.state == MemberState::kInSync && f->status.ok()) {
          // The last in-sync replica failed: nothing may acknowledge this write.
          f->status = Status::IoError("write failed on " + s.target->node() +
                                      ", the last in-sync replica: " + child->io.status.ToString());
        }
      }
    }
  }
  MaybeComplete(f);
}

void ReplicationLayer::MaybeComplete(Fanout* f) {
  if (f->pending > 0 || f->waits > 0) return;
  Status st = fenced_ ? fence_status_ : f->status;
  // Every in-sync replica has the write (a failed one has left first), so the write is on
  // InSyncCount() replicas: fewer than min_in_sync must not be acknowledged.
  if (st.ok() && InSyncCount() < std::max<uint32_t>(options_.min_in_sync, 1)) {
    st = Status::IoError("volume " + volume_ + " has " + std::to_string(InSyncCount()) +
                         " in-sync replica(s), fewer than --min-in-sync " +
                         std::to_string(options_.min_in_sync));
  }
  Complete(f, std::move(st));
}

void ReplicationLayer::Complete(Fanout* f, Status status) {
  writes_in_flight_.erase(f);
  if (f->write) NoteCompleted(f, status);
  if (activity_ != nullptr && f->write) LogCompleted(f, status);
  VolumeIo* io = f->client;
  delete f;
  io->status = std::move(status);
  io->done(io);
  GrantDrainedLocks();
  MaybeQuiesced();
}

// ---------------------------------------------------------------------------------------------
// Reads

int ReplicationLayer::PickReader(size_t) const {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].state == MemberState::kInSync && slots_[i].target->local()) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

void ReplicationLayer::StartRead(VolumeIo* io, Fanout* retry) {
  Fanout* f = retry;
  if (f == nullptr) {
    f = new Fanout();
    f->layer = this;
    f->client = io;
    f->read_tried.assign(slots_.size(), false);
  }
  f->read_tried.resize(slots_.size(), false);
  int slot = PickReader(0);
  if (slot >= 0 && f->read_tried[static_cast<size_t>(slot)]) slot = -1;
  if (slot < 0) {
    // Round-robin over the in-sync replicas not tried yet.
    for (size_t n = 0; n < slots_.size(); ++n) {
      const size_t i = (next_reader_ + n) % slots_.size();
      if (slots_[i].state == MemberState::kInSync && !f->read_tried[i]) {
        slot = static_cast<int>(i);
        next_reader_ = i + 1;
        break;
      }
    }
  }
  if (slot < 0) {
    delete f;
    return Fail(io, fenced_ ? fence_status_
                            : Status::IoError("no in-sync replica of " + volume_ +
                                              " could serve the read"));
  }
  f->read_tried[static_cast<size_t>(slot)] = true;
  f->read_slot = slot;
  const Slot& s = slots_[static_cast<size_t>(slot)];
  const uint64_t piece =
      s.target->local() ? std::max<uint64_t>(io->length, 1) : uint64_t{kMaxIoBytes};
  f->children.clear();
  f->children.reserve(std::max<uint64_t>(1, (io->length + piece - 1) / piece));
  for (uint64_t done = 0; done == 0 || done < io->length; done += piece) {
    ChildIo& c = f->children.emplace_back();
    c.io.op = VolumeOp::kRead;
    c.io.flags = io->flags;
    c.io.offset = io->offset + done;
    c.io.length = std::min(piece, io->length - done);
    c.io.buf = io->buf + done;
    c.io.io_class = io->io_class;
    c.owner = f;
    c.slot = static_cast<uint32_t>(slot);
    c.done = &ReplicationLayer::OnChildDone;
  }
  f->pending = static_cast<uint32_t>(f->children.size());
  for (ChildIo& c : f->children) s.target->Submit(&c);
}

// ---------------------------------------------------------------------------------------------
// Failures and membership

void ReplicationLayer::ReplicaFailed(size_t index, const std::string& reason) {
  Slot& s = slots_[index];
  ++s.errors;
  s.last_error = reason;
  if (s.state == MemberState::kInSync && InSyncCount() == 1) {
    SHALE_LOG_ERROR("replication: the last in-sync replica failed; writes fail until it returns",
                    {"volume", volume_}, {"node", s.target->node()}, {"error", reason});
    return;
  }
  if (s.state != MemberState::kInSync && s.state != MemberState::kRebuilding &&
      s.state != MemberState::kJoining) {
    return;
  }
  // A joining replica may be in the recorded set already: its leave is recorded too.
  const bool was_in_sync = s.state == MemberState::kInSync || s.state == MemberState::kJoining;
  SHALE_LOG_WARN("replication: replica failed, taking it out", {"volume", volume_},
                 {"node", s.target->node()}, {"in_sync", was_in_sync ? 1 : 0}, {"error", reason});
  s.state = MemberState::kLeaving;
  s.leaving_since = std::chrono::steady_clock::now();
  ExpireLeaveLater(index);
  // Every write in flight may have reached the others and not this one: mark their regions
  // for it before anything is acknowledged.
  const std::string node = s.target->node();
  auto marks = std::make_shared<uint32_t>(1);
  auto failed = std::make_shared<Status>();
  auto one_done = [this, index, marks, failed, was_in_sync](Status st) {
    if (!st.ok() && failed->ok()) *failed = st;
    if (--*marks > 0) return;
    if (!failed->ok()) return LeaveRecorded(index, *failed);
    if (was_in_sync) return RecordLeave(index);
    LeaveRecorded(index, epoch_);  // a rebuilding replica: no membership change
  };
  for (Fanout* f : writes_in_flight_) {
    if (!IsWriteOp(f->client->op)) continue;
    ++*marks;
    changed_->Mark({node}, f->client->offset, f->client->length, one_done);
  }
  MarkUnflushed(node, marks, one_done);
  // So may every write not yet flushed everywhere: a replica that crashed lost those (its own
  // unflushed writes), so the activity log's regions are marked for it too.
  if (activity_ != nullptr) {
    for (const auto& [off, len] : activity_->Ranges()) {
      ++*marks;
      changed_->Mark({node}, off, len, one_done);
    }
  }
  one_done(Status::Ok());
}

void ReplicationLayer::RecordLeave(size_t index) {
  Slot& s = slots_[index];
  if (s.membership_call_running) return;
  s.membership_call_running = true;
  membership_->ReplicaFailed(s.target->node(), s.last_error, [this, index](Result<uint64_t> r) {
    slots_[index].membership_call_running = false;
    LeaveRecorded(index, std::move(r));
  });
}

void ReplicationLayer::LeaveRecorded(size_t index, Result<uint64_t> epoch) {
  Slot& s = slots_[index];
  if (s.state != MemberState::kLeaving) return;
  if (!epoch.ok()) {
    const bool expired =
        std::chrono::steady_clock::now() - s.leaving_since > options_.membership_timeout;
    if (expired) FailWaitingOnLeave(index, epoch.status().ToString());
    SHALE_LOG_WARN("replication: recording a replica's leave failed; retrying", {"volume", volume_},
                   {"node", s.target->node()}, {"error", epoch.status().ToString()});
    reactor_->AddTimer(kMembershipRetryNs, [this, alive = std::weak_ptr<int>(alive_), index] {
      if (alive.expired()) return;  // the layer is gone
      if (slots_[index].state == MemberState::kLeaving) RecordLeave(index);
    });
    return;
  }
  s.state = MemberState::kOut;
  if (*epoch != epoch_) SetEpoch(*epoch);
  SHALE_LOG_INFO("replication: replica is out", {"volume", volume_}, {"node", s.target->node()},
                 {"epoch", epoch_});
  std::vector<Fanout*> waiting = std::move(s.waiting);
  s.waiting.clear();
  for (Fanout* f : waiting) {
    f->waiting_on[index] = false;
    --f->waits;
    MaybeComplete(f);
  }
  if (on_out_) on_out_(s.target->node());
  ResumeHeld();
}

void ReplicationLayer::Fence(const Status& why) {
  if (fenced_) return;
  fenced_ = true;
  fence_status_ = Status::IoError("volume " + volume_ +
                                  " was taken over by a target with a newer epoch (this one is "
                                  "fenced): " +
                                  why.ToString());
  SHALE_LOG_ERROR("replication: fenced, serving no more I/O", {"volume", volume_},
                  {"epoch", epoch_}, {"error", why.ToString()});
  ResumeHeld();  // fails every held write
  if (on_fenced_) on_fenced_();
}

void ReplicationLayer::ResumeHeld() {
  std::deque<VolumeIo*> held;
  held.swap(held_);
  for (VolumeIo* io : held) StartWrite(io);
}

// ---------------------------------------------------------------------------------------------
// Control

void ReplicationLayer::SetReplica(std::shared_ptr<ReplicaTarget> target, MemberState state) {
  target->SetEpoch(epoch_);
  size_t index = 0;
  if (Slot* s = FindSlot(target->node(), &index)) {
    SHALE_CHECK(s->waiting.empty() || state == MemberState::kLeaving,
                "replacing a replica with writes waiting on it");
    s->target = std::move(target);
    s->state = state;
    for (Fanout* f : writes_in_flight_) f->waiting_on.resize(slots_.size(), false);
  } else {
    Slot slot;
    slot.target = std::move(target);
    slot.state = state;
    slots_.push_back(std::move(slot));
    for (Fanout* f : writes_in_flight_) f->waiting_on.resize(slots_.size(), false);
  }
  ResumeHeld();
}

void ReplicationLayer::SetState(const std::string& node, MemberState state) {
  if (Slot* s = FindSlot(node)) s->state = state;
  ResumeHeld();
}

void ReplicationLayer::Join(const std::string& node, std::function<void(Status)> done) {
  const auto fail = [this, &done](Status st) {
    reactor_->Post([done = std::move(done), st = std::move(st)] { done(st); });
  };
  size_t index = 0;
  Slot* s = FindSlot(node, &index);
  if (s == nullptr || s->state != MemberState::kRebuilding) {
    return fail(Status::FailedPrecondition("replica " + node + " is not rebuilding"));
  }
  if (changed_->RegionCount(node) > 0) {
    return fail(Status::FailedPrecondition("replica " + node + " has regions left to rebuild"));
  }
  // From now on a write is acknowledged only once the joining replica has it too, and a failure
  // of it is recorded as a leave, so no write is ever acknowledged on fewer replicas than the
  // set the store may already record. It is not read before the join is recorded.
  s->state = MemberState::kJoining;
  membership_->ReplicaRebuilt(node, [this, alive = std::weak_ptr<int>(alive_), index, node,
                                     done = std::move(done)](Result<uint64_t> epoch) mutable {
    if (alive.expired()) return;
    Slot& slot = slots_[index];
    if (!epoch.ok()) {
      if (slot.state == MemberState::kJoining) slot.state = MemberState::kRebuilding;
      return done(epoch.status().WithContext("record the join of " + node));
    }
    if (*epoch > epoch_) SetEpoch(*epoch);
    if (slot.state != MemberState::kJoining) {
      return done(Status::Aborted("replica " + node + " failed while joining"));
    }
    // Its generation: the epoch under which it joined (docs/replication.md, rule 2).
    auto* gen = new ChildIo();
    struct Ctx {
      ReplicationLayer* layer;
      std::weak_ptr<int> alive;
      size_t index;
      std::function<void(Status)> done;
    };
    gen->owner = new Ctx{this, alive, index, std::move(done)};
    gen->done = [](ChildIo* c) {
      std::unique_ptr<ChildIo> owned(c);
      std::unique_ptr<Ctx> ctx(static_cast<Ctx*>(c->owner));
      if (ctx->alive.expired()) return;
      ctx->layer->Joined(ctx->index, c->io.status, std::move(ctx->done));
    };
    slot.target->SubmitSetGeneration(gen, epoch_);
  });
}

void ReplicationLayer::Joined(size_t index, const Status& generation,
                              std::function<void(Status)> done) {
  Slot& s = slots_[index];
  const std::string node = s.target->node();
  if (!generation.ok()) {
    if (s.state == MemberState::kJoining) ReplicaFailed(index, generation.ToString());
    return done(generation.WithContext("persist the generation of " + node));
  }
  if (s.state != MemberState::kJoining) {
    return done(Status::Aborted("replica " + node + " failed while joining"));
  }
  s.state = MemberState::kInSync;
  SHALE_LOG_INFO("replication: replica rebuilt and in sync", {"volume", volume_}, {"node", node},
                 {"epoch", epoch_});
  changed_->Drop(node, std::move(done));
}

void ReplicationLayer::SetEpoch(uint64_t epoch) {
  epoch_ = epoch;
  for (Slot& s : slots_) s.target->SetEpoch(epoch);
}

void ReplicationLayer::RemoveReplica(const std::string& node, std::function<void(Status)> done) {
  Slot* s = FindSlot(node);
  Status refused;
  if (s == nullptr) {
    refused = Status::NotFound("replica " + node + " is not a replica of " + volume_);
  } else if (s->state == MemberState::kInSync &&
             InSyncCount() <= std::max<size_t>(options_.min_in_sync, 1)) {
    refused = Status::FailedPrecondition("replica " + node + " is one of the last " +
                                         std::to_string(InSyncCount()) + " in-sync replicas");
  } else if (s->state != MemberState::kInSync && s->state != MemberState::kOut) {
    refused = Status::FailedPrecondition("replica " + node + " is " +
                                         std::string(MemberStateName(s->state)));
  }
  if (!refused.ok()) {
    return reactor_->Post([done = std::move(done), refused] { done(refused); });
  }
  s->state = MemberState::kOut;
  s->removed = true;
  SHALE_LOG_INFO("replication: replica removed", {"volume", volume_}, {"node", node},
                 {"epoch", epoch_});
  changed_->Drop(node, std::move(done));
  ResumeHeld();
}

std::vector<ReplicaStatus> ReplicationLayer::Replicas() const {
  std::vector<ReplicaStatus> out;
  std::vector<int> at(slots_.size(), -1);  // slot -> index in out
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.removed) continue;
    at[i] = static_cast<int>(out.size());
    ReplicaStatus r;
    r.node = s.target->node();
    r.state = s.state;
    r.local = s.target->local();
    r.errors = s.errors;
    r.last_error = s.last_error;
    r.write_latency = s.write_latency->Take();
    out.push_back(std::move(r));
  }
  for (const Fanout* f : writes_in_flight_) {
    for (const ChildIo& c : f->children) {
      if (at[c.slot] >= 0) ++out[static_cast<size_t>(at[c.slot])].writes_in_flight;
    }
  }
  return out;
}

std::shared_ptr<ReplicaTarget> ReplicationLayer::Target(const std::string& node) const {
  for (const Slot& s : slots_) {
    if (!s.removed && s.target->node() == node) return s.target;
  }
  return nullptr;
}

uint64_t ReplicationLayer::LockRange(uint64_t offset, uint64_t length, std::function<void()> go) {
  for (const RangeLock& l : range_locks_) {
    SHALE_CHECK(offset >= l.offset + l.length || l.offset >= offset + length,
                "overlapping range locks");
  }
  RangeLock lock;
  lock.id = next_lock_id_++;
  lock.offset = offset;
  lock.length = length;
  if (!WriteInFlightTo(offset, length)) {
    reactor_->Post(std::move(go));
  } else {
    lock.waiter = std::move(go);
  }
  range_locks_.push_back(std::move(lock));
  return range_locks_.back().id;
}

void ReplicationLayer::UnlockRange(uint64_t id) {
  const auto it = std::find_if(range_locks_.begin(), range_locks_.end(),
                               [id](const RangeLock& l) { return l.id == id; });
  SHALE_CHECK(it != range_locks_.end() && !it->waiter, "UnlockRange of a range not locked");
  range_locks_.erase(it);
  ResumeHeld();
}

void ReplicationLayer::SubmitTo(const std::string& node, ChildIo* child) {
  size_t index = 0;
  Slot* s = FindSlot(node, &index);
  SHALE_CHECK(s != nullptr, "SubmitTo an unknown replica");
  child->slot = static_cast<uint32_t>(index);
  s->target->Submit(child);
}

// ---------------------------------------------------------------------------------------------
// Writes not yet flushed

// A replica acknowledges a write before it is durable; killed before the next FLUSH it may have
// lost it (e2e FioVerifiesThroughAReplicaKillAndTheRebuildIsIncremental: a replica daemon
// kill -9-ed after unflushed writes came back without them). So the regions of writes completed
// since the last FLUSH that every replica it went to completed are kept, and marked changed for
// a replica that leaves, like the writes in flight.
void ReplicationLayer::NoteCompleted(Fanout* f, const Status& status) {
  const VolumeIo* io = f->client;
  if (io->op == VolumeOp::kFlush) {
    // Durable on every replica it went to only if it succeeded; otherwise still unflushed.
    if (!status.ok()) unflushed_.merge(f->flushing);
    return;
  }
  if (io->length == 0) return;
  for (uint64_t r = io->offset / kRegionBytes; r <= (io->offset + io->length - 1) / kRegionBytes;
       ++r) {
    unflushed_.insert(r);
  }
}

void ReplicationLayer::MarkUnflushed(const std::string& node,
                                     const std::shared_ptr<uint32_t>& marks,
                                     const std::function<void(Status)>& one_done) {
  std::set<uint64_t> regions = unflushed_;
  for (const Fanout* f : writes_in_flight_) regions.insert(f->flushing.begin(), f->flushing.end());
  // Runs of adjacent regions, one mark each.
  for (auto it = regions.begin(); it != regions.end();) {
    const uint64_t first = *it;
    uint64_t last = first;
    for (++it; it != regions.end() && *it == last + 1; ++it) last = *it;
    const uint64_t offset = first * kRegionBytes;
    const uint64_t end = std::min(size_bytes_, (last + 1) * kRegionBytes);
    if (offset >= end) continue;
    ++*marks;
    changed_->Mark({node}, offset, end - offset, one_done);
  }
}

// ---------------------------------------------------------------------------------------------
// The bound on a leave the store does not answer

// The waiting writes cannot be acknowledged on fewer replicas than the recorded set: they fail,
// and so do held writes (StartWrite sees the expired leave).
void ReplicationLayer::FailWaitingOnLeave(size_t index, const std::string& why) {
  Slot& s = slots_[index];
  std::vector<Fanout*> waiting = std::move(s.waiting);
  s.waiting.clear();
  for (Fanout* f : waiting) {
    if (f->status.ok()) {
      f->status = Status::IoError("replica " + s.target->node() +
                                  " failed and the cluster store could not record it: " + why);
    }
    f->waiting_on[index] = false;
    --f->waits;
    MaybeComplete(f);
  }
  ResumeHeld();
}

// A store call that hangs (etcd stopped: the client waits for its own deadline, ~10 s) must not
// stretch the bound: when the membership timeout passes and the slot is still leaving from the
// same failure, the writes waiting on it fail then, not when the call returns.
void ReplicationLayer::ExpireLeaveLater(size_t index) {
  const auto since = slots_[index].leaving_since;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.membership_timeout);
  reactor_->AddTimer(static_cast<uint64_t>(ns.count()) + 1'000'000,
                     [this, alive = std::weak_ptr<int>(alive_), index, since] {
                       if (alive.expired()) return;  // the layer is gone
                       const Slot& s = slots_[index];
                       if (s.state != MemberState::kLeaving || s.leaving_since != since) return;
                       FailWaitingOnLeave(index, "no answer within the membership timeout");
                     });
}

// ---------------------------------------------------------------------------------------------
// Snapshots and fencing

void ReplicationLayer::Quiesce(std::function<void()> go) {
  SHALE_CHECK(!quiesced_, "one quiesce at a time");
  quiesced_ = true;
  quiesce_waiter_ = std::move(go);
  MaybeQuiesced();
}

void ReplicationLayer::MaybeQuiesced() {
  if (!quiesce_waiter_) return;
  for (const Fanout* f : writes_in_flight_) {
    if (IsWriteOp(f->client->op)) return;
  }
  reactor_->Post(std::move(quiesce_waiter_));
  quiesce_waiter_ = nullptr;
}

void ReplicationLayer::Resume() {
  quiesced_ = false;
  quiesce_waiter_ = nullptr;
  ResumeHeld();
}

void ReplicationLayer::SnapshotRemotes(const std::string& name, const Labels& labels,
                                       std::function<void(SnapshotResults)> done) {
  struct Ctx {
    ReplicationLayer* layer;
    std::weak_ptr<int> alive;
    uint32_t pending = 1;
    SnapshotResults results;
    std::function<void(SnapshotResults)> done;
    std::vector<std::unique_ptr<ChildIo>> children;
    void One() {
      if (--pending == 0) done(std::move(results));
    }
  };
  auto* ctx = new Ctx{this, alive_, 1, {}, std::move(done), {}};
  for (size_t i = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.state != MemberState::kInSync || s.target->local()) continue;
    auto& child = ctx->children.emplace_back(std::make_unique<ChildIo>());
    child->owner = ctx;
    child->slot = static_cast<uint32_t>(ctx->results.size());
    ctx->results.emplace_back(s.target->node(), Status::Ok());
    child->done = [](ChildIo* c) {
      auto* x = static_cast<Ctx*>(c->owner);
      x->results[c->slot].second = c->io.status;
      if (c->fenced && !x->alive.expired()) x->layer->Fence(c->io.status);
      const bool last = x->pending == 1;
      x->One();
      if (last) delete x;
    };
    ++ctx->pending;
  }
  for (size_t i = 0, n = 0; i < slots_.size(); ++i) {
    const Slot& s = slots_[i];
    if (s.state != MemberState::kInSync || s.target->local()) continue;
    s.target->SubmitSnapshot(ctx->children[n++].get(), name, labels);
  }
  reactor_->Post([ctx] {
    const bool last = ctx->pending == 1;
    ctx->One();
    if (last) delete ctx;
  });
}

void ReplicationLayer::FenceAt(uint64_t epoch) {
  if (epoch <= epoch_ || fenced_) return;
  Fence(Status::FromErrno(ESTALE, "a replica of this volume on this node persisted epoch " +
                                      std::to_string(epoch) + ", newer than this target's " +
                                      std::to_string(epoch_)));
}

// ---------------------------------------------------------------------------------------------
// The activity log (activity_log.h)

void ReplicationLayer::LogAndDispatch(VolumeIo* io) {
  if (activity_ == nullptr || !IsWriteOp(io->op) || activity_->Covered(io->offset, io->length)) {
    return DispatchWrite(io);
  }
  if (!activity_->HasRoom(io->offset, io->length)) {
    // The log is full: a flush frees the regions with nothing in flight, then it goes on.
    log_held_.push_back(io);
    return StartLogFlush();
  }
  // Only the first write to a region outside the log pays this commit.
  activity_->Add(io->offset, io->length, [this, io](Status st) {
    if (!st.ok()) {
      return Fail(io,
                  Status::IoError("cannot record the write in the activity log: " + st.ToString()));
    }
    StartWrite(io);  // checks again: a flush may have freed the region meanwhile
  });
}

void ReplicationLayer::StartLogFlush() {
  if (log_flush_ != nullptr) return;
  log_flush_ = std::make_unique<VolumeIo>();
  log_flush_->op = VolumeOp::kFlush;
  log_flush_->ctx = this;
  log_flush_->done = [](VolumeIo* io) {
    static_cast<ReplicationLayer*>(io->ctx)->LogFlushDone(io->status);
  };
  StartWrite(log_flush_.get());
}

void ReplicationLayer::LogFlushDone(Status status) {
  log_flush_.reset();
  std::deque<VolumeIo*> held;
  held.swap(log_held_);
  for (VolumeIo* io : held) {
    if (!status.ok()) {
      Fail(io, status.WithContext("flush to make room in the activity log"));
    } else {
      StartWrite(io);
    }
  }
}

void ReplicationLayer::LogStarted(Fanout* f) {
  const VolumeIo* io = f->client;
  if (io->op == VolumeOp::kFlush) {
    f->log_token = activity_->FlushStarted();
  } else if (IsWriteOp(io->op)) {
    activity_->WriteStarted(io->offset, io->length);
  }
}

void ReplicationLayer::LogCompleted(Fanout* f, const Status& status) {
  const VolumeIo* io = f->client;
  if (io->op == VolumeOp::kFlush) {
    // Durable on every replica that received writes (a failed one left first).
    if (status.ok() && !fenced_) activity_->FlushDone(f->log_token);
  } else if (IsWriteOp(io->op)) {
    activity_->WriteDone(io->offset, io->length);
  }
}

}  // namespace shale::replication
