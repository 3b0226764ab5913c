// Operability handlers of the ControlService (issue 13, docs/operations.md): a pool's capacity
// settings and fill level, online pool expansion, usage by label, the audit log.
#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/ops/audit_log.h"
#include "daemon/ops/usage.h"

namespace shale::daemon {

using internal::Fail;

namespace internal {

void AddCapacity(const PoolCapacity& in, v1::Pool* out) {
  out->set_provisioned_bytes(in.provisioned_bytes);
  out->set_warn_percent(in.settings.warn_percent);
  out->set_critical_percent(in.settings.critical_percent);
  out->set_overcommit_percent(in.settings.overcommit_percent);
  out->set_overcommit_unlimited(in.settings.overcommit_percent == 0);
  switch (in.level) {
    case FillLevel::kOk:
      out->set_fill_level(v1::FILL_LEVEL_OK);
      break;
    case FillLevel::kWarning:
      out->set_fill_level(v1::FILL_LEVEL_WARNING);
      break;
    case FillLevel::kCritical:
      out->set_fill_level(v1::FILL_LEVEL_CRITICAL);
      break;
  }
  out->set_provisionable_bytes(in.provisionable_bytes == UINT64_MAX ? 0 : in.provisionable_bytes);
}

}  // namespace internal

void ControlService::AddCapacityInfo(v1::Pool* pool) {
  Result<PoolCapacity> capacity = lifecycle_->capacity()->Describe(pool->name());
  if (capacity.ok()) internal::AddCapacity(*capacity, pool);
}

grpc::Status ControlService::SetPoolCapacity(grpc::ServerContext* ctx,
                                             const v1::SetPoolCapacityRequest* req,
                                             v1::Pool* resp) {
  CapacitySettingsUpdate update;
  if (req->has_warn_percent()) update.warn_percent = req->warn_percent();
  if (req->has_critical_percent()) update.critical_percent = req->critical_percent();
  if (req->overcommit_unlimited()) {
    if (req->has_overcommit_percent()) {
      return Fail(ctx,
                  Status::InvalidArgument("overcommit: give a percentage or unlimited, not both"));
    }
    update.overcommit_percent = 0;
  } else if (req->has_overcommit_percent()) {
    if (req->overcommit_percent() == 0) {
      return Fail(ctx, Status::InvalidArgument("overcommit must be 1..." +
                                               std::to_string(kMaxOvercommitPercent) +
                                               " % (or unlimited)"));
    }
    update.overcommit_percent = req->overcommit_percent();
  }
  Result<CapacitySettings> settings = lifecycle_->SetPoolCapacity(req->name(), update);
  if (!settings.ok()) return Fail(ctx, settings.status());
  Result<PoolInfo> pool = engine_->GetPool(req->name());
  if (!pool.ok()) return Fail(ctx, pool.status());
  internal::ToProto(*pool, resp);
  AddCapacityInfo(resp);
  return grpc::Status::OK;
}

grpc::Status ControlService::ExpandPool(grpc::ServerContext* ctx, const v1::ExpandPoolRequest* req,
                                        v1::Pool* resp) {
  Result<PoolInfo> pool = lifecycle_->ExpandPool(req->name(), req->size_bytes());
  if (!pool.ok()) return Fail(ctx, pool.status());
  internal::ToProto(*pool, resp);
  AddCapacityInfo(resp);
  return grpc::Status::OK;
}

namespace {

void ToProto(const ops::UsageFigures& in, v1::UsageGroup* out) {
  out->set_value(in.value);
  out->set_unlabelled(in.unlabelled);
  out->set_volumes(in.volumes);
  out->set_size_bytes(in.size_bytes);
  out->set_provisioned_bytes(in.provisioned_bytes);
  out->set_allocated_bytes(in.allocated_bytes);
  out->set_snapshots(in.snapshots);
  out->set_snapshot_bytes(in.snapshot_bytes);
  out->set_reads(in.reads);
  out->set_writes(in.writes);
  out->set_bytes_read(in.bytes_read);
  out->set_bytes_written(in.bytes_written);
  for (const std::string& name : in.volume_names) out->add_volume_names(name);
}

}  // namespace

grpc::Status ControlService::GetUsage(grpc::ServerContext* ctx, const v1::GetUsageRequest* req,
                                      v1::GetUsageResponse* resp) {
  Result<ops::UsageBy> by = ops::ParseUsageBy(req->by());
  if (!by.ok()) return Fail(ctx, by.status());
  Result<ops::UsageReport> report = ops::ComputeUsage(*lifecycle_, *by);
  if (!report.ok()) return Fail(ctx, report.status());
  resp->set_by(report->by.ToString());
  for (const ops::UsageFigures& g : report->groups) ToProto(g, resp->add_groups());
  ToProto(report->total, resp->mutable_total());
  return grpc::Status::OK;
}

grpc::Status ControlService::GetAudit(grpc::ServerContext* ctx, const v1::GetAuditRequest* req,
                                      v1::GetAuditResponse* resp) {
  constexpr uint32_t kMaxLimit = 100000;
  if (info_.audit_log == nullptr) {
    return Fail(ctx, Status::FailedPrecondition("this shaled keeps no audit log"));
  }
  if (req->limit() > kMaxLimit) {
    return Fail(ctx, Status::InvalidArgument("limit " + std::to_string(req->limit()) +
                                             " is above " + std::to_string(kMaxLimit)));
  }
  if (!req->volume().empty()) {
    if (Status valid = ValidateName("volume", req->volume()); !valid.ok()) return Fail(ctx, valid);
  }
  bool truncated = false;
  Result<std::vector<std::string>> records =
      info_.audit_log->Read({.since_unix_ns = req->since_unix_ns(),
                             .volume = req->volume(),
                             .limit = req->limit() == 0 ? 1000 : req->limit()},
                            &truncated);
  if (!records.ok()) return Fail(ctx, records.status());
  for (std::string& r : *records) resp->add_records(std::move(r));
  resp->set_truncated(truncated);
  resp->set_path(info_.audit_log->path());
  return grpc::Status::OK;
}

}  // namespace shale::daemon
