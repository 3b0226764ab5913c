// ReplicatedVolumes after a restart of the target (docs/replication.md, "Changed regions and the
// activity log" and "Replicated volumes in shaled"): what a replica may have missed while the
// target was down is marked from the activity log; the log's regions are compared and copied to
// every reachable in-sync replica before the target serves; the local replica's generation is
// persisted.
#include <algorithm>
#include <cstring>
#include <future>

#include "daemon/replicated_target.h"
#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "engine/pool/metadata_store.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"
#include "replication/replica_target.h"

namespace shale::daemon {

using replication::MemberState;

namespace {

// How long a target's teardown waits for the activity log's record update in flight.
constexpr auto kLogDrain = std::chrono::seconds(30);
// GET_INFO pages asked of one replica for its allocation, at most (each reports up to
// kMaxInfoExtents ranges and must move forward).
constexpr uint32_t kMaxInfoPages = 1u << 20;

// On the reactor: marks `ranges` changed for `node`; `marked` gets the first failure (or OK)
// once every mark is durable.
void MarkRanges(ReplicatedVolumes::Target& t, const std::string& node,
                const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                std::promise<Status>* marked) {
  auto pending = std::make_shared<size_t>(ranges.size() + 1);
  auto first = std::make_shared<Status>();
  auto one = [marked, pending, first](Status st) {
    if (!st.ok() && first->ok()) *first = st;
    if (--*pending == 0) marked->set_value(*first);
  };
  for (const auto& [off, len] : ranges) t.changed->Mark({node}, off, len, one);
  one(Status::Ok());
}

// The allocated ranges of `node`'s replica (GET_INFO, page by page), rounded out to whole
// changed regions and merged; blocking (a control thread).
Result<std::vector<std::pair<uint64_t, uint64_t>>> RemoteAllocation(ReplicatedVolumes::Target& t,
                                                                    const std::string& node) {
  std::shared_ptr<replication::ReplicaTarget> target;
  t.reactor->RunSync([&] { target = t.layer->Target(node); });
  auto* remote = dynamic_cast<replication::RemoteReplica*>(target.get());
  if (remote == nullptr)
    return Status::FailedPrecondition("no connection to the replica on " + node);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  uint64_t at = 0;
  for (uint32_t page = 0; at < t.size_bytes; ++page) {
    if (page == kMaxInfoPages) return Status::Internal("GET_INFO of " + node + " never ended");
    replication::ReplicaRequest req;
    req.op = replication::ReplicaOp::kGetInfo;
    req.offset = at;
    req.length = t.size_bytes - at;
    std::promise<void> answered;
    req.ctx = &answered;
    req.done = [](replication::ReplicaRequest* r) {
      static_cast<std::promise<void>*>(r->ctx)->set_value();
    };
    remote->client().Submit(&req);
    answered.get_future().wait();  // bounded: every request has the replica timeout
    if (req.outcome != replication::ReplicaOutcome::kOk) {
      return req.status.WithContext("allocation of the replica on " + node);
    }
    for (const auto& [off, len] : req.info.allocated) {
      const uint64_t begin = off / replication::kRegionBytes * replication::kRegionBytes;
      const uint64_t end =
          std::min(t.size_bytes, (off + len + replication::kRegionBytes - 1) /
                                     replication::kRegionBytes * replication::kRegionBytes);
      if (end <= begin) continue;
      if (!out.empty() && out.back().first + out.back().second >= begin) {
        out.back().second = std::max(out.back().first + out.back().second, end) - out.back().first;
      } else {
        out.emplace_back(begin, end - begin);
      }
    }
    if (req.info.next_offset <= at) {
      return Status::Corruption("GET_INFO of " + node + " did not move forward");
    }
    at = req.info.next_offset;
  }
  return out;
}

}  // namespace

Status ReplicatedVolumes::RecordTermStart(const std::string& name, uint64_t epoch) {
  Engine* engine = lifecycle_->engine();
  SHALE_ASSIGN_OR_RETURN(VolumeInfo info, engine->GetVolume(name));
  std::string value(sizeof(epoch), '\0');
  std::memcpy(value.data(), &epoch, sizeof(epoch));
  MetaBatch batch;
  batch.Put(replication::ChangedRegions::TermKey(info.id), value);
  return engine->WriteRecords(info.pool, std::move(batch));
}

Result<uint64_t> ReplicatedVolumes::TermStart(const VolumeInfo& info) {
  SHALE_ASSIGN_OR_RETURN(
      std::optional<std::string> rec,
      lifecycle_->engine()->GetRecord(info.pool, replication::ChangedRegions::TermKey(info.id)));
  if (!rec) return uint64_t{0};  // none: this node has served it since it was created here
  if (rec->size() != sizeof(uint64_t))
    return Status::Corruption("target term record of " + info.name);
  uint64_t epoch = 0;
  std::memcpy(&epoch, rec->data(), sizeof(epoch));
  return epoch;
}

Status ReplicatedVolumes::MarkAllFor(Target& t, const std::string& node) {
  std::promise<Status> marked;
  t.reactor->Post([&] {
    if (!t.local_replica) {
      t.changed->Mark({node}, 0, t.size_bytes, [&](Status st) { marked.set_value(st); });
      return;
    }
    replication::Rebuilder::MarkAllocated(&t.handle->volume(), t.changed.get(), node,
                                          [&](Status st) { marked.set_value(st); });
  });
  return marked.get_future().get();
}

Status ReplicatedVolumes::MarkRemoteAllocated(Target& t, const std::vector<std::string>& holders,
                                              const std::string& node) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const std::string& holder : holders) {
    using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
    SHALE_ASSIGN_OR_RETURN(Ranges some, RemoteAllocation(t, holder));
    ranges.insert(ranges.end(), some.begin(), some.end());
  }
  std::promise<Status> marked;
  t.reactor->Post([&] { MarkRanges(t, node, ranges, &marked); });
  return marked.get_future().get();
}

void ReplicatedVolumes::Target::DrainActivityLog() {
  if (activity == nullptr || reactor == nullptr) return;
  const auto deadline = std::chrono::steady_clock::now() + kLogDrain;
  bool busy = true;
  while (busy && std::chrono::steady_clock::now() < deadline) {
    reactor->RunSync([&] { busy = activity->busy(); });
    if (busy) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  activity.reset();
}

Status ReplicatedVolumes::MarkForResync(Target& t, const std::string& node) {
  // No log was kept for this volume here (its target ran a shaled without one, or this is a new
  // target-only anchor): anything allocated may differ — without a local replica to tell what
  // is allocated, every region.
  if (!t.activity->kept_before()) return MarkAllFor(t, node);
  std::promise<Status> marked;
  t.reactor->Post([&] { MarkRanges(t, node, t.activity->Ranges(), &marked); });
  return marked.get_future().get();
}

namespace {

// Copies what ChangedRegions marks for `node` from `source` (a Rebuilder that compares 4 KiB
// hashes), before any client I/O; blocking.
Status RunResync(ReplicatedVolumes::Target& t, const std::string& source, const std::string& node,
                 replication::Rebuilder::Progress* progress) {
  std::promise<Status> done;
  t.reactor->RunSync([&] {
    t.rebuilder = std::make_unique<replication::Rebuilder>(
        t.reactor, t.layer.get(), t.changed.get(), source, node, replication::Rebuilder::Options{});
    t.rebuild_running = true;
    t.rebuilder->Start([&](Status st) {
      t.rebuild_running = false;
      *progress = t.rebuilder->progress();
      done.set_value(st);
    });
  });
  Status st = done.get_future().get();  // bounded: every replica request has its timeout
  t.reactor->RunSync([&] { t.rebuilder.reset(); });
  return st;
}

}  // namespace

Status ReplicatedVolumes::ResyncAfterRestart(const std::shared_ptr<Target>& t) {
  // The source: the local replica (the one the target reads), or without one the first in-sync
  // remote replica; every other in-sync replica is made equal to it in the logged regions.
  std::vector<std::string> nodes;
  uint64_t logged = 0;
  std::string source;
  t->reactor->RunSync([&] {
    source = t->SourceFor("");
    for (const replication::ReplicaStatus& s : t->layer->Replicas()) {
      if (!s.local && s.state == MemberState::kInSync && s.node != source) nodes.push_back(s.node);
    }
    logged = t->activity->RegionCount();
  });
  const bool kept = t->activity->kept_before();
  for (const std::string& node : nodes) {
    if (kept && logged == 0) break;  // nothing was in flight: the in-sync replicas are equal
    replication::Rebuilder::Progress progress;
    // A new target-only anchor has no log of the previous target's writes: what either replica
    // holds is compared (their allocations), as a new target on a replica node compares what its
    // own replica holds.
    Status st = !kept && !t->local_replica ? MarkRemoteAllocated(*t, {source, node}, node)
                                           : MarkForResync(*t, node);
    if (st.ok()) st = RunResync(*t, source, node, &progress);
    {
      std::lock_guard lock(t->mu);
      NodeRepair& r = t->repair[node];
      r.Ended(progress);
      if (!st.ok()) r.last_error = st.ToString();
    }
    if (st.ok()) {
      SHALE_LOG_INFO("activity-log resync at target start", {"volume", t->name}, {"node", node},
                     {"log_regions", logged}, {"kept_log", kept ? 1 : 0},
                     {"compared_bytes", progress.total_bytes}, {"sent_bytes", progress.sent_bytes});
      continue;
    }
    // It stays behind: out of in_sync (its marks are kept), rebuilt when the repair thread
    // reconnects it.
    Result<cluster::VolumeRecord> left =
        EditMembership(store_.get(), t->name,
                       ReplicaLeaves(node, "resync at target start failed: " + st.ToString()));
    if (!left.ok()) return left.status().WithContext("record the leave of " + node);
    t->reactor->RunSync([&] {
      t->layer->SetState(node, MemberState::kOut);
      t->layer->SetEpoch(left->membership.epoch);
    });
    SHALE_LOG_WARN("resync at target start failed; the replica left the in-sync set",
                   {"volume", t->name}, {"node", node}, {"error", st.ToString()},
                   {"epoch", left->membership.epoch});
  }
  // The in-sync replicas are equal in every logged region now: the log starts empty.
  std::promise<Status> reset;
  t->reactor->Post([&] { t->activity->Reset([&](Status st) { reset.set_value(st); }); });
  SHALE_RETURN_IF_ERROR(reset.get_future().get());
  t->reactor->RunSync([&] { t->layer->SetActivityLog(t->activity.get()); });
  return Status::Ok();
}

Status ReplicatedVolumes::PersistLocalGeneration(Target& t, const VolumeInfo& info) {
  uint64_t epoch = 0;
  t.reactor->RunSync([&] { epoch = t.layer->epoch(); });
  Engine* engine = lifecycle_->engine();
  SHALE_ASSIGN_OR_RETURN(replication::ReplicaState prev,
                         replication::LoadReplicaState(engine, info.pool, info.id));
  // It serves at `epoch` as a member of in_sync: that is its generation (rule 2), persisted
  // before the target serves.
  const replication::ReplicaState next{std::max(prev.epoch, epoch), epoch};
  if (next.epoch == prev.epoch && next.generation == prev.generation) return Status::Ok();
  MetaBatch batch;
  batch.Put(replication::ReplicaStateKey(info.id), replication::EncodeReplicaState(next));
  SHALE_RETURN_IF_ERROR(engine->WriteRecords(info.pool, std::move(batch)));
  SHALE_LOG_INFO("local replica generation persisted", {"volume", t.name}, {"generation", epoch});
  return Status::Ok();
}

uint64_t ReplicatedVolumes::LocalGeneration(const std::string& name) {
  Engine* engine = lifecycle_->engine();
  Result<VolumeInfo> info = engine->GetVolume(name);
  if (!info.ok()) return 0;
  Result<replication::ReplicaState> state =
      replication::LoadReplicaState(engine, info->pool, info->id);
  return state.ok() ? state->generation : 0;
}

}  // namespace shale::daemon
