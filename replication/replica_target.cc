#include "replication/replica_target.h"

#include "engine/common/assert.h"
#include "engine/io/reactor.h"
#include "engine/volume/volume.h"

namespace shale::replication {

void ReplicaTarget::SubmitHash(ChildIo*, uint32_t) {
  SHALE_CHECK(false, "SubmitHash on a replica that cannot hash");
}

void ReplicaTarget::SubmitSnapshot(ChildIo*, const std::string&, const Labels&) {
  SHALE_CHECK(false, "SubmitSnapshot on a replica that takes no remote snapshot");
}

void LocalReplica::Submit(ChildIo* child) {
  child->target = this;
  child->fenced = false;
  child->io.ctx = child;
  child->io.done = &LocalReplica::OnDone;
  volume_->Submit(&child->io);
}

void LocalReplica::SubmitSetGeneration(ChildIo* child, uint64_t) {
  child->target = this;
  child->fenced = false;
  volume_->reactor()->Post([child] {
    child->io.status = Status::Ok();
    child->done(child);
  });
}

void LocalReplica::OnDone(VolumeIo* io) {
  auto* child = static_cast<ChildIo*>(io->ctx);
  child->done(child);
}

RemoteReplica::~RemoteReplica() {
  if (client_) client_->Close();
}

namespace {

ReplicaOp RemoteOp(VolumeOp op) {
  switch (op) {
    case VolumeOp::kRead:
      return ReplicaOp::kRead;
    case VolumeOp::kWrite:
      return ReplicaOp::kWrite;
    case VolumeOp::kWriteZeroes:
      return ReplicaOp::kWriteZeroes;
    case VolumeOp::kDiscard:
      return ReplicaOp::kDiscard;
    case VolumeOp::kFlush:
      return ReplicaOp::kFlush;
  }
  return ReplicaOp::kFlush;
}

}  // namespace

ReplicaRequest& RemoteReplica::Prepare(ChildIo* child, ReplicaOp op) {
  child->target = this;
  child->fenced = false;
  ReplicaRequest& r = child->remote;
  r = ReplicaRequest();
  r.op = op;
  r.offset = child->io.offset;
  r.length = child->io.length;
  r.ctx = child;
  r.done = &RemoteReplica::OnDone;
  return r;
}

void RemoteReplica::Submit(ChildIo* child) {
  ReplicaRequest& r = Prepare(child, RemoteOp(child->io.op));
  r.flags = child->io.flags;
  if (child->io.op == VolumeOp::kFlush) r.length = 0;
  r.buf = child->io.buf;
  client_->Submit(&r);
}

void RemoteReplica::SubmitHash(ChildIo* child, uint32_t block) {
  ReplicaRequest& r = Prepare(child, ReplicaOp::kHashRanges);
  r.region_size = block;
  client_->Submit(&r);
}

void RemoteReplica::SubmitSetGeneration(ChildIo* child, uint64_t generation) {
  ReplicaRequest& r = Prepare(child, ReplicaOp::kSetGeneration);
  r.offset = r.length = 0;
  r.generation = generation;
  client_->Submit(&r);
}

void RemoteReplica::SubmitSnapshot(ChildIo* child, const std::string& name, const Labels& labels) {
  ReplicaRequest& r = Prepare(child, ReplicaOp::kSnapshot);
  r.offset = r.length = 0;
  r.snapshot_name = name;
  r.snapshot_labels = labels;
  client_->Submit(&r);
}

void RemoteReplica::OnDone(ReplicaRequest* r) {
  auto* child = static_cast<ChildIo*>(r->ctx);
  switch (r->outcome) {
    case ReplicaOutcome::kOk:
      child->io.status = Status::Ok();
      break;
    case ReplicaOutcome::kStaleEpoch:
      child->fenced = true;
      child->io.status =
          r->status.ok() ? Status::IoError("replica has a newer epoch: fenced") : r->status;
      break;
    default:
      child->io.status = r->status.ok()
                             ? Status::IoError(std::string("replica request failed: ") +
                                               std::string(ReplicaOutcomeName(r->outcome)))
                             : r->status;
      break;
  }
  child->done(child);
}

}  // namespace shale::replication
