// Engine: freezing several volumes at one instant (group snapshots; docs/snapshots.md, "Group
// snapshots"). The mechanism is Volume::Quiesce / CaptureFreeze / Resume; this file orders them
// across the members and their pools.
#include <future>
#include <set>

#include "engine/common/clock.h"
#include "engine/engine_internal.h"
#include "engine/pool/keys.h"

namespace shale {

namespace {
constexpr size_t kMaxGroupVolumes = 64;

Result<meta::ImageRecord> CommittedRecord(const std::map<uint64_t, meta::ImageRecord>& images,
                                          uint64_t id) {
  auto it = images.find(id);
  if (it == images.end()) {
    return Status::FailedPrecondition("image " + std::to_string(id) +
                                      " has no committed record (restart shaled)");
  }
  return it->second;
}

// Parks every request of every volume and returns once none of them has one in flight.
void QuiesceAll(const std::vector<Volume*>& volumes) {
  std::vector<std::promise<void>> drained(volumes.size());
  for (size_t i = 0; i < volumes.size(); ++i) {
    Volume* vol = volumes[i];
    std::promise<void>* p = &drained[i];
    vol->reactor()->Post([vol, p] { vol->Quiesce([p] { p->set_value(); }); });
  }
  for (std::promise<void>& p : drained) p.get_future().wait();
}

// Captures a quiesced volume into `req` (merged with what is there); *durable is set once the
// commit carrying it is.
void CaptureInto(Volume* vol, uint64_t new_head, CommitPipeline::Request* req,
                 std::vector<std::function<void(const Status&)>>* dones,
                 std::future<Status>* durable) {
  auto promise = std::make_shared<std::promise<Status>>();
  *durable = promise->get_future();
  CommitPipeline::Request captured;
  vol->reactor()->RunSync([&] {
    captured =
        vol->CaptureFreeze(new_head, [promise](const Status& st) { promise->set_value(st); });
  });
  req->batch.Append(captured.batch);
  req->allocated.insert(req->allocated.end(), captured.allocated.begin(), captured.allocated.end());
  req->freed.insert(req->freed.end(), captured.freed.begin(), captured.freed.end());
  dones->push_back(std::move(captured.done));
}

// Waits for every future; the first error wins.
Status WaitAll(std::vector<std::future<Status>>& futures) {
  Status first;
  for (std::future<Status>& f : futures) {
    Status st = f.get();
    if (first.ok() && !st.ok()) first = st;
  }
  return first;
}
}  // namespace

Result<std::vector<uint64_t>> Engine::FreezeVolumes(const std::vector<std::string>& names,
                                                    const GroupRecords& extra) {
  std::lock_guard lock(mu_);
  if (names.empty()) return Status::InvalidArgument("a group freeze needs at least one volume");
  if (names.size() > kMaxGroupVolumes) {
    return Status::InvalidArgument("a group freeze takes at most " +
                                   std::to_string(kMaxGroupVolumes) + " volumes");
  }
  struct Member {
    VolumeSlot* vs = nullptr;
    uint64_t old_head = 0, new_head = 0;
    meta::ImageRecord frozen, head;
    meta::VolumeRecord rec;
    std::future<Status> durable;
  };
  std::vector<Member> members;
  std::vector<PoolSlot*> pools;  // in order of first appearance: pools[0] is the primary
  std::map<PoolSlot*, MetaBatch> records;
  std::set<std::string, std::less<>> seen;
  const uint64_t now = Clock::Real()->WallNanos();
  for (const std::string& name : names) {
    auto it = volumes_.find(name);
    if (it == volumes_.end()) return Status::NotFound("volume '" + name + "' not found");
    if (!seen.insert(name).second) {
      return Status::InvalidArgument("volume '" + name + "' is named twice");
    }
    VolumeSlot& vs = *it->second;
    if (!vs.busy.empty()) {
      return Status::FailedPrecondition("volume '" + name + "' is busy: " + vs.busy);
    }
    if (vs.volume->read_only()) {
      return Status::FailedPrecondition("volume '" + name + "' is read-only");
    }
    PoolSlot& ps = *vs.pool;
    if (ChainOf(ps, vs.volume->head_image()).size() >= Volume::kMaxChainDepth) {
      return Status::FailedPrecondition("volume '" + name + "' has reached the limit of " +
                                        std::to_string(Volume::kMaxChainDepth - 1) +
                                        " snapshots in its chain");
    }
    if (!records.count(&ps)) pools.push_back(&ps);
    MetaBatch& batch = records[&ps];
    Member m;
    m.vs = &vs;
    m.old_head = vs.volume->head_image();
    m.new_head = ps.pool->ReserveImageId(&batch);
    SHALE_ASSIGN_OR_RETURN(m.frozen, CommittedRecord(ps.images, m.old_head));
    m.frozen.set_kind(meta::IMAGE_FROZEN);
    m.frozen.set_size_bytes(vs.volume->size_bytes());
    m.frozen.set_created_unix_ns(now);
    m.head.set_id(m.new_head);
    m.head.set_parent(m.old_head);
    m.head.set_volume_id(vs.volume->id());
    m.head.set_kind(meta::IMAGE_HEAD);
    m.head.set_created_unix_ns(now);
    m.rec = vs.record;
    m.rec.set_head_image(m.new_head);
    batch.Put(keys::Image(m.old_head), m.frozen.SerializeAsString());
    batch.Put(keys::Image(m.new_head), m.head.SerializeAsString());
    batch.Put(keys::Volume(m.rec.id()), m.rec.SerializeAsString());
    members.push_back(std::move(m));
  }
  std::vector<uint64_t> images;
  for (const Member& m : members) images.push_back(m.old_head);
  if (extra) {
    for (PoolSlot* ps : pools) extra(ps->reg.name(), images, &records[ps]);
  }

  // 1. Quiesce every member: from here until its Resume no request of any member is admitted,
  //    and once all drained nothing is in flight anywhere — that instant is the group's cut.
  std::vector<Volume*> vols;
  for (const Member& m : members) vols.push_back(m.vs->volume.get());
  QuiesceAll(vols);

  // 2. Capture every member into its pool's one commit request.
  std::map<PoolSlot*, CommitPipeline::Request> requests;
  std::map<PoolSlot*, std::vector<std::function<void(const Status&)>>> dones;
  for (Member& m : members) {
    CaptureInto(m.vs->volume.get(), m.new_head, &requests[m.vs->pool], &dones[m.vs->pool],
                &m.durable);
  }

  // 3. Submit. Every pool but the primary first, its members resumed once their commit is
  //    queued (pipeline order keeps their later commits behind it); the primary (which holds
  //    the caller's group record) only after those commits are durable, so a group record never
  //    names snapshots a crash lost. A single-pool group is one commit and no wait.
  auto submit = [&](PoolSlot* ps) {
    CommitPipeline::Request& req = requests[ps];
    req.batch.Append(records[ps]);
    req.flush_device = true;
    req.done = [d = std::move(dones[ps])](const Status& st) {
      for (const auto& fn : d) fn(st);
    };
    ps->pool->pipeline().Submit(std::move(req));
    for (Member& m : members) {
      if (m.vs->pool != ps) continue;
      Volume* vol = m.vs->volume.get();
      vol->reactor()->RunSync([vol] { vol->Resume(); });
    }
  };
  std::vector<std::future<Status>> others, primary;
  for (size_t i = 1; i < pools.size(); ++i) submit(pools[i]);
  for (Member& m : members) {
    if (m.vs->pool != pools[0]) others.push_back(std::move(m.durable));
  }
  Status status = WaitAll(others);
  submit(pools[0]);
  for (Member& m : members) {
    if (m.vs->pool == pools[0]) primary.push_back(std::move(m.durable));
  }
  Status primary_status = WaitAll(primary);
  if (status.ok()) status = primary_status;
  if (!status.ok()) return status.WithContext("group freeze");
  for (Member& m : members) {
    m.vs->pool->images[m.old_head] = m.frozen;
    m.vs->pool->images[m.new_head] = m.head;
    m.vs->record = m.rec;
  }
  return images;
}

}  // namespace shale
