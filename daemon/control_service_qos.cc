// QoS handlers of the Control service (SetVolumeQos, GetVolumeQos, GetVolumeStats, SetPoolQos,
// GetPoolQos) and the QoS parts of the volume handlers: settings in volume answers, QoS given at
// volume create, records dropped after a delete. The model and the settings: docs/qos.md.
#include <chrono>
#include <string>

#include "daemon/control_service.h"
#include "daemon/control_service_internal.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/replicated_volumes.h"
#include "engine/common/log.h"
#include "engine/engine.h"
#include "qos/qos_manager.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {

using internal::Fail;

namespace {

void ToProto(const qos::QosStats& s, v1::VolumeIoStats* out) {
  out->set_name(s.volume);
  out->set_pool(s.pool);
  qos::SettingsToMessage(s.settings, out->mutable_qos());
  out->set_open(s.open);
  out->set_window_ns(s.window_ns);
  out->set_iops(s.iops);
  out->set_read_iops(s.read_iops);
  out->set_write_iops(s.write_iops);
  out->set_bps(s.bps);
  out->set_read_bps(s.read_bps);
  out->set_write_bps(s.write_bps);
  out->set_reads(s.reads);
  out->set_writes(s.writes);
  out->set_bytes_read(s.bytes_read);
  out->set_bytes_written(s.bytes_written);
  out->set_errors(s.errors);
  out->set_throttled_ns(s.throttled_ns);
  out->set_throttled_requests(s.throttled_requests);
  out->set_contended_requests(s.contended_requests);
  out->set_contended_wait_ns(s.contended_wait_ns);
  out->set_rejected(s.rejected);
  out->set_timer_fires(s.timer_fires);
  out->set_reservation_dispatches(s.reservation_dispatches);
  out->set_weight_dispatches(s.weight_dispatches);
  out->set_queue_depth(s.queue_depth);
  out->set_in_flight(s.in_flight);
  for (const qos::QosBucketStats& b : s.buckets) {
    v1::QosBucket* pb = out->add_buckets();
    pb->set_limit(b.limit);
    pb->set_rate(b.rate);
    pb->set_burst_rate(b.burst_rate);
    pb->set_tokens(b.tokens);
    pb->set_capacity(b.capacity);
    pb->set_peak_tokens(b.peak_tokens);
    pb->set_peak_capacity(b.peak_capacity);
  }
  out->set_pool_budget(s.pool_budget);
  out->set_pool_outstanding(s.pool_outstanding);
  out->set_pool_waiting(s.pool_waiting);
}

uint64_t NowUnixNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// A VolumeQos answer: the settings in force.
Status DescribeQos(Engine* engine, qos::QosManager* qos, const std::string& name,
                   v1::VolumeQos* out) {
  Result<VolumeInfo> volume = engine->GetVolume(name);
  if (!volume.ok()) return volume.status();
  Result<qos::QosSettings> settings = qos->Get(name);
  if (!settings.ok()) return settings.status();
  out->set_name(volume->name);
  out->set_pool(volume->pool);
  qos::SettingsToMessage(*settings, out->mutable_qos());
  return Status::Ok();
}

Status QosDisabled() { return Status::FailedPrecondition("QoS is not enabled in this shaled"); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// QoS parts of the volume handlers

Status ControlService::AddQosInfo(v1::Volume* volume) {
  if (qos_ == nullptr) return Status::Ok();
  Result<qos::QosSettings> settings = qos_->Get(volume->name());
  if (!settings.ok()) return settings.status();
  qos::SettingsToMessage(*settings, volume->mutable_qos());
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// QoS RPCs

grpc::Status ControlService::SetVolumeQos(grpc::ServerContext* ctx,
                                          const v1::SetVolumeQosRequest* req, v1::VolumeQos* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  if (Status valid = ValidateName("volume", req->name()); !valid.ok()) return Fail(ctx, valid);
  if (qos_ == nullptr) return Fail(ctx, QosDisabled());
  if (MaybeReplicated(req->name())) {
    // A replicated volume's QoS lives in its membership and follows it to the node serving it.
    Status st = replicated_->SetQos(req->name(), qos::SettingsFromMessage(req->qos()));
    if (st.ok()) st = ReplicatedQos(req->name(), resp);
    if (st.ok()) return grpc::Status::OK;
    if (!st.IsNotFound() || replicated_->IsReplicated(req->name())) return Fail(ctx, st);
  }
  if (Status st = qos_->Set(req->name(), qos::SettingsFromMessage(req->qos())); !st.ok())
    return Fail(ctx, st);
  if (Status st = DescribeQos(engine_, qos_, req->name(), resp); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

grpc::Status ControlService::GetVolumeQos(grpc::ServerContext* ctx,
                                          const v1::GetVolumeQosRequest* req, v1::VolumeQos* resp) {
  if (Status valid = ValidateName("volume", req->name()); !valid.ok()) return Fail(ctx, valid);
  if (qos_ == nullptr) return Fail(ctx, QosDisabled());
  if (MaybeReplicated(req->name())) {
    // A replicated volume's settings are its membership's (an unreachable etcd is an error, not
    // this node's possibly stale copy); NotFound: not replicated after all.
    Status st = ReplicatedQos(req->name(), resp);
    if (st.ok()) return grpc::Status::OK;
    if (!st.IsNotFound() || replicated_->IsReplicated(req->name())) return Fail(ctx, st);
  }
  if (Status st = DescribeQos(engine_, qos_, req->name(), resp); !st.ok()) return Fail(ctx, st);
  return grpc::Status::OK;
}

Status ControlService::ReplicatedQos(const std::string& name, v1::VolumeQos* resp) {
  SHALE_ASSIGN_OR_RETURN(qos::QosSettings settings, replicated_->GetQos(name));
  resp->set_name(name);
  if (Result<VolumeInfo> local = engine_->GetVolume(name); local.ok()) resp->set_pool(local->pool);
  qos::SettingsToMessage(settings, resp->mutable_qos());
  return Status::Ok();
}

grpc::Status ControlService::GetVolumeStats(grpc::ServerContext* ctx,
                                            const v1::GetVolumeStatsRequest* req,
                                            v1::VolumeIoStats* resp) {
  if (Status valid = ValidateName("volume", req->name()); !valid.ok()) return Fail(ctx, valid);
  if (qos_ == nullptr) return Fail(ctx, QosDisabled());
  Result<qos::QosStats> stats = qos_->Stats(req->name());
  if (!stats.ok()) return Fail(ctx, stats.status());
  ToProto(*stats, resp);
  resp->set_time_unix_ns(NowUnixNs());
  return grpc::Status::OK;
}

grpc::Status ControlService::SetPoolQos(grpc::ServerContext* ctx, const v1::SetPoolQosRequest* req,
                                        v1::PoolQos* resp) {
  if (Status gate = lifecycle_->CheckChangeGate(); !gate.ok()) return Fail(ctx, gate);
  if (Status valid = ValidateName("pool", req->pool()); !valid.ok()) return Fail(ctx, valid);
  if (qos_ == nullptr) return Fail(ctx, QosDisabled());
  if (Status st = qos_->SetPoolBudget(req->pool(), req->budget()); !st.ok()) return Fail(ctx, st);
  Result<uint32_t> budget = qos_->GetPoolBudget(req->pool());
  if (!budget.ok()) return Fail(ctx, budget.status());
  resp->set_pool(req->pool());
  resp->set_budget(*budget);
  return grpc::Status::OK;
}

grpc::Status ControlService::GetPoolQos(grpc::ServerContext* ctx, const v1::GetPoolQosRequest* req,
                                        v1::PoolQos* resp) {
  if (Status valid = ValidateName("pool", req->pool()); !valid.ok()) return Fail(ctx, valid);
  if (qos_ == nullptr) return Fail(ctx, QosDisabled());
  Result<uint32_t> budget = qos_->GetPoolBudget(req->pool());
  if (!budget.ok()) return Fail(ctx, budget.status());
  resp->set_pool(req->pool());
  resp->set_budget(*budget);
  return grpc::Status::OK;
}

}  // namespace shale::daemon
