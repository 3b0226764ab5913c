// ReplicaServer::VolumeState: the persisted epoch and generation of one replica volume, shared
// by every connection open on it (private to replica_server*.cc).
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <functional>
#include <mutex>
#include <string>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/pool/metadata_store.h"
#include "replication/replica_server.h"

namespace shale::replication {

struct ReplicaServer::VolumeState {
  Engine* engine;
  std::string pool;
  uint64_t volume_id;
  std::mutex mu;                   // serializes changes of the persisted state
  ReplicaState persisted;          // under mu
  std::atomic<uint64_t> fence{0};  // == persisted.epoch; read on the reactor
  std::atomic<uint64_t> generation{0};
  // ReplicaServerOptions::on_epoch_raised (may be empty); called after a raise, outside mu.
  const std::function<void(const std::string&, uint64_t)>* on_raised = nullptr;

  void Raised(const std::string& volume, uint64_t epoch) const {
    if (on_raised != nullptr && *on_raised) (*on_raised)(volume, epoch);
  }

  // Persists `next` (under mu) and publishes it.
  Status Persist(const ReplicaState& next) {
    MetaBatch batch;
    batch.Put(ReplicaStateKey(volume_id), EncodeReplicaState(next));
    SHALE_RETURN_IF_ERROR(engine->WriteRecords(pool, std::move(batch)));
    persisted = next;
    generation.store(next.generation, std::memory_order_release);
    fence.store(next.epoch, std::memory_order_release);
    return Status::Ok();
  }
  // Makes `epoch` durable before anything carrying it is accepted. No-op if not higher.
  Status Raise(uint64_t epoch, const std::string& volume) {
    {
      std::lock_guard lock(mu);
      if (epoch <= persisted.epoch) return Status::Ok();
      ReplicaState next = persisted;
      next.epoch = epoch;
      SHALE_RETURN_IF_ERROR(Persist(next));
    }
    SHALE_LOG_INFO("replica epoch raised", {"volume", volume}, {"epoch", epoch});
    Raised(volume, epoch);
    return Status::Ok();
  }
  Status SetGeneration(uint64_t gen, uint64_t epoch, const std::string& volume) {
    bool raised = false;
    {
      std::lock_guard lock(mu);
      if (epoch < persisted.epoch) return Status::FromErrno(ESTALE, "stale epoch");
      if (gen > epoch) return Status::InvalidArgument("generation above the request's epoch");
      ReplicaState next = persisted;
      raised = epoch > next.epoch;
      next.epoch = std::max(next.epoch, epoch);
      next.generation = gen;
      SHALE_RETURN_IF_ERROR(Persist(next));
    }
    SHALE_LOG_INFO("replica generation set", {"volume", volume}, {"generation", gen},
                   {"epoch", epoch});
    if (raised) Raised(volume, epoch);
    return Status::Ok();
  }
};

}  // namespace shale::replication
