// VolumeLifecycle: group snapshots — member snapshots of several volumes at one instant and the
// group record that ties them together (docs/lifecycle.md, "Group snapshots").
#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/clock.h"
#include "engine/common/log.h"
#include "engine/pool/keys.h"
#include "snapshot/names.h"

namespace shale::daemon {
namespace {

constexpr std::string_view kGroupNamespace = "snapshot-group";
constexpr size_t kMaxGroupVolumes = 64;

std::string GroupKey(std::string_view name) {
  return keys::Extension(kGroupNamespace, std::string(name));
}

std::string NewGroupId() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string Encode(const GroupSnapshotInfo& g) {
  nlohmann::ordered_json j;
  j["name"] = g.name;
  j["id"] = g.id;
  j["volumes"] = g.volumes;
  j["volume_ids"] = g.volume_ids;
  j["snapshots"] = g.snapshots;
  j["labels"] = g.labels;
  j["created_unix_ns"] = g.created_unix_ns;
  return j.dump();
}

Result<GroupSnapshotInfo> Decode(std::string_view pool, std::string_view value) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("name") || !j.contains("snapshots")) {
    return Status::Corruption("unreadable group snapshot record in pool " + std::string(pool));
  }
  GroupSnapshotInfo g;
  g.pool = std::string(pool);
  g.name = j.value("name", "");
  g.id = j.value("id", "");
  g.volumes = j.value("volumes", std::vector<std::string>());
  g.volume_ids = j.value("volume_ids", std::vector<uint64_t>());
  g.snapshots = j.value("snapshots", std::vector<std::string>());
  g.labels = j.value("labels", Labels());
  g.created_unix_ns = j.value("created_unix_ns", uint64_t{0});
  return g;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

Result<GroupSnapshotInfo> VolumeLifecycle::GetGroupSnapshot(std::string_view name) {
  SHALE_RETURN_IF_ERROR(ValidateName("group snapshot", name));
  for (const PoolInfo& pool : engine_->ListPools()) {
    if (pool.state != "online") continue;
    SHALE_ASSIGN_OR_RETURN(auto value, engine_->GetRecord(pool.name, GroupKey(name)));
    if (value) return Decode(pool.name, *value);
  }
  return Status::NotFound("group snapshot '" + std::string(name) + "' not found");
}

Result<std::vector<GroupSnapshotInfo>> VolumeLifecycle::ListGroupSnapshots() {
  std::vector<GroupSnapshotInfo> out;
  Status err;
  for (const PoolInfo& pool : engine_->ListPools()) {
    if (pool.state != "online") continue;
    SHALE_RETURN_IF_ERROR(engine_->ScanRecords(
        pool.name, GroupKey(""), [&](std::string_view, std::string_view value) {
          Result<GroupSnapshotInfo> g = Decode(pool.name, value);
          if (!g.ok()) {
            err = g.status();
            return false;
          }
          out.push_back(std::move(g).value());
          return true;
        }));
    SHALE_RETURN_IF_ERROR(err);
  }
  std::sort(out.begin(), out.end(),
            [](const GroupSnapshotInfo& a, const GroupSnapshotInfo& b) { return a.name < b.name; });
  return out;
}

Result<GroupSnapshotInfo> VolumeLifecycle::CreateGroupSnapshot(const GroupSnapshotSpec& spec,
                                                               bool* created) {
  if (created != nullptr) *created = false;
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  SHALE_RETURN_IF_ERROR(ValidateName("group snapshot", spec.name));
  SHALE_RETURN_IF_ERROR(ValidateLabels(spec.labels));
  if (spec.volumes.empty()) {
    return Status::InvalidArgument("group snapshot '" + spec.name + "' names no volume");
  }
  if (spec.volumes.size() > kMaxGroupVolumes) {
    return Status::InvalidArgument("a group snapshot takes at most " +
                                   std::to_string(kMaxGroupVolumes) + " volumes");
  }
  for (const std::string& v : spec.volumes) SHALE_RETURN_IF_ERROR(ValidateName("volume", v));
  const std::vector<std::string> wanted = Sorted(spec.volumes);
  if (std::adjacent_find(wanted.begin(), wanted.end()) != wanted.end()) {
    return Status::InvalidArgument("group snapshot '" + spec.name + "' names a volume twice");
  }
  std::lock_guard lock(group_mu_);
  Result<GroupSnapshotInfo> existing = GetGroupSnapshot(spec.name);
  if (existing.ok()) {
    if (Sorted(existing->volumes) == wanted) return existing;
    return Status::AlreadyExists("group snapshot '" + spec.name +
                                 "' already exists with other volumes");
  }
  if (!existing.status().IsNotFound()) return existing.status();
  GroupSnapshotInfo g;
  g.name = spec.name;
  g.id = NewGroupId();
  g.volumes = spec.volumes;
  g.labels = spec.labels;
  g.created_unix_ns = Clock::Real()->WallNanos();
  std::map<std::string, std::string> pools;  // by volume
  for (const std::string& v : spec.volumes) {
    SHALE_ASSIGN_OR_RETURN(VolumeInfo info, engine_->GetVolume(v));
    if (info.read_only) {
      return Status::FailedPrecondition("volume '" + v + "' is read-only: snapshot its source");
    }
    pools[v] = info.pool;
    g.volume_ids.push_back(info.id);
    g.snapshots.push_back(v + "@" + spec.name);
  }
  // A member whose snapshots live only on its replicas (served here without one): a snapshot of
  // that name there would be replaced by the group's copies, so it is refused here, as the
  // engine refuses it for local members.
  for (const std::string& ref : g.snapshots) {
    Result<snapshot::SnapshotInfo> taken = FindSnapshot(ref);
    if (taken.ok()) {
      return Status::AlreadyExists("snapshot '" + ref + "' already exists (group snapshot '" +
                                   spec.name + "' would take it)");
    }
  }
  snapshot::CreateSnapshotOptions options;
  options.labels = spec.labels;
  options.labels[std::string(kGroupLabel)] = spec.name;
  options.labels[std::string(kGroupIdLabel)] = g.id;
  SHALE_RETURN_IF_ERROR(ValidateLabels(options.labels));
  // Replicated members: quiesced until `hold` goes (docs/replication.md).
  std::unique_ptr<SnapshotReplication::GroupHold> hold;
  if (SnapshotReplication* r = snapshot_replication_.load(); r != nullptr) {
    SHALE_ASSIGN_OR_RETURN(hold, r->HoldGroup(spec.volumes));
  }
  // Members served here without a replica are not frozen here: their copies are their members.
  std::vector<std::string> local;
  for (const std::string& v : spec.volumes) {
    if (hold == nullptr || !hold->RemoteOnly().contains(v)) local.push_back(v);
  }
  g.pool = pools[local.empty() ? spec.volumes.front() : local.front()];
  if (!local.empty()) {
    auto members = snapshots_->CreateGroup(
        local, spec.name, options,
        [&](std::string_view pool, MetaBatch* batch) {
          if (pool == g.pool) batch->Put(GroupKey(g.name), Encode(g));
        },
        hold != nullptr ? hold->MemberLabels() : std::map<std::string, Labels>());
    if (!members.ok()) return members.status();
  }
  if (hold != nullptr) {
    Status copies = hold->SnapshotRemotes(spec.name, options.labels);
    hold.reset();  // resumes the replicated members
    if (copies.ok() && local.empty()) {
      MetaBatch batch;  // the record alone: no member of this node's pools was frozen
      batch.Put(GroupKey(g.name), Encode(g));
      copies = engine_->WriteRecords(g.pool, std::move(batch));
    }
    if (!copies.ok()) {
      // All or none: the members (and the copies taken) and the record go again.
      const Status undone = DeleteGroupLocked(g, DeleteOptions{});
      SHALE_LOG_WARN("group snapshot failed on a replica; undone", {"group", g.name},
                     {"error", copies.ToString()}, {"undo", undone.ToString()});
      return copies.WithContext("group snapshot '" + g.name + "'");
    }
  }
  if (created != nullptr) *created = true;
  return g;
}

Status VolumeLifecycle::DeleteGroupLocked(const GroupSnapshotInfo& g,
                                          const DeleteOptions& options) {
  // Members first, the record last: an interrupted delete is finished by the next one.
  for (const std::string& member : g.snapshots) {
    Result<snapshot::DeleteSnapshotResult> gone = DeleteSnapshot(member, options);
    if (!gone.ok() && !gone.status().IsNotFound()) {
      return gone.status().WithContext("group snapshot '" + g.name + "'");
    }
  }
  MetaBatch batch;
  batch.Delete(GroupKey(g.name));
  return engine_->WriteRecords(g.pool, std::move(batch));
}

Status VolumeLifecycle::DeleteGroupSnapshot(std::string_view name, const DeleteOptions& options) {
  SHALE_RETURN_IF_ERROR(CheckChangeGate());
  std::lock_guard lock(group_mu_);
  SHALE_ASSIGN_OR_RETURN(GroupSnapshotInfo g, GetGroupSnapshot(name));
  return DeleteGroupLocked(g, options);
}

}  // namespace shale::daemon
