// ReplicatedVolumes::Resize: growing a replicated volume (docs/replication.md, "Growing a
// replicated volume").
//
//   the membership's size_bytes is the volume's size; one compare-and-swap raises it
//   -> a target opening afterwards grows its local replica (OpenTarget) and every remote replica
//      grows at its OPEN (the replica server, under a valid epoch), so a replica out or down now
//      grows when it is next opened, and a crash between the swap and the growth loses nothing
//   -> the volume grows while no node serves it (detached), or on the node serving it when it
//      has no clients there (the target closes, the size changes, the target opens again).
#include <chrono>
#include <thread>

#include "daemon/replica_membership.h"
#include "daemon/replicated_target.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/block.h"
#include "engine/common/log.h"
#include "engine/common/units.h"

namespace shale::daemon {

namespace {
// How long Resize waits for the target to have no other holder than this node's map.
constexpr auto kIdleWait = std::chrono::seconds(5);
}  // namespace

Result<uint64_t> ReplicatedVolumes::Resize(const std::string& name, uint64_t size_bytes,
                                           bool grow_only) {
  SHALE_RETURN_IF_ERROR(ValidateName("volume", name));
  if (store_ == nullptr) return Status::Unavailable("shaled is starting or stopping");
  if (size_bytes == 0) return Status::InvalidArgument("a volume needs a size");
  const uint64_t size = RoundUpToBlock(size_bytes);
  SHALE_ASSIGN_OR_RETURN(cluster::VolumeRecord record, store_->GetVolume(name));
  const cluster::Membership& m = record.membership;
  if (size < m.size_bytes && grow_only) return m.size_bytes;
  if (size < m.size_bytes) {
    return Status::InvalidArgument("volume '" + name + "' has " + FormatSize(m.size_bytes) +
                                   "; shrinking to " + FormatSize(size) + " is refused");
  }
  if (size == m.size_bytes) return size;
  const std::string& self = options_.node_name;
  const bool here = !m.detached && m.target == self;
  if (!m.detached && !here) {
    return Status::FailedPrecondition(
        "volume '" + name + "' is attached on node " + m.target +
        "; a replicated volume grows on the node serving it (when it has no clients there) or "
        "while it is detached (no pod uses it)");
  }
  if (here) {
    // The repair thread holds a target for moments (a resync at its start): wait that out.
    const auto deadline = std::chrono::steady_clock::now() + kIdleWait;
    std::shared_ptr<Target> target;
    std::unique_lock lock(mu_);
    while (true) {
      auto it = targets_.find(name);
      if (it == targets_.end() || it->second.use_count() == 1) {
        if (it != targets_.end()) {
          target = std::move(it->second);
          targets_.erase(it);
        }
        pending_[name] = "growing to " + FormatSize(size);
        resizing_.insert(name);  // the repair thread leaves it closed
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return Status::Busy("volume '" + name + "' has clients on " + self +
                            "; a replicated volume grows without clients (disconnect them, or "
                            "detach it) since their connections keep the old size");
      }
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      lock.lock();
    }
    lock.unlock();
    target.reset();  // closed: nothing writes through it while the size changes
  }
  Result<cluster::VolumeRecord> grown =
      EditMembership(store_.get(), name, [&](cluster::Membership* next) -> Result<bool> {
        if (next->target != m.target || next->detached != m.detached) {
          return Status::Aborted("volume '" + name + "' was attached or detached meanwhile");
        }
        if (next->size_bytes >= size) return false;
        next->size_bytes = size;  // no change of in_sync or target: the epoch stays
        return true;
      });
  if (grown.ok()) {
    SHALE_LOG_INFO("replicated volume grown", {"volume", name}, {"from", m.size_bytes},
                   {"to", grown->membership.size_bytes});
  }
  if (m.detached && grown.ok()) {
    // The local replica (if any) grows now, so this node shows the new size at once.
    if (Result<VolumeInfo> local = lifecycle_->engine()->GetVolume(name);
        local.ok() && !ReplicaUuidOf(*local).empty()) {
      GrowLocalReplica(*local, grown->membership.size_bytes).IgnoreError();  // else at its OPEN
    }
  }
  if (here) {
    // Opens again (with the new size when it was recorded; the repair thread retries otherwise).
    Result<std::shared_ptr<Target>> target = OpenTarget(name);
    std::lock_guard lock(mu_);
    resizing_.erase(name);
    if (target.ok()) {
      pending_.erase(name);
      targets_[name] = std::move(target).value();
    } else {
      pending_[name] = target.status().ToString();
    }
  }
  if (!grown.ok()) return grown.status().WithContext("record the new size of " + name);
  return grown->membership.size_bytes;
}

// In OpenTarget: the local replica of a volume grown while it was closed grows to `size`.
Status ReplicatedVolumes::GrowLocalReplica(const VolumeInfo& info, uint64_t size) {
  if (info.size_bytes >= size) return Status::Ok();
  Result<VolumeInfo> grown = lifecycle_->Resize(info.name, size, {}, 0, nullptr);
  if (!grown.ok()) return grown.status().WithContext("grow the local replica of " + info.name);
  SHALE_LOG_INFO("replica grown", {"volume", info.name}, {"from", info.size_bytes}, {"to", size});
  return Status::Ok();
}

}  // namespace shale::daemon
