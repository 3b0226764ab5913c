// ReplicaTarget: one replica of a volume as its target reaches it — the local engine volume
// (LocalReplica) or a peer over the replica protocol (RemoteReplica). The ReplicationLayer fans
// a client request out into one ChildIo per replica.
//
// Threading: everything on the layer's reactor. Submit never completes inline: child->done runs
// later on the reactor, exactly once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/volume/volume_io.h"
#include "replication/replica_client.h"

namespace shale {
class Volume;
class Reactor;
}  // namespace shale

namespace shale::replication {

class ReplicaTarget;

// One replica's part of a client request.
struct ChildIo {
  VolumeIo io;            // op, flags, offset, length, buf; io.status on completion
  ReplicaRequest remote;  // RemoteReplica's request (unused for the local replica)
  // Set with io.status: the replica rejected the target's epoch (the target is fenced); this is
  // never a failure of the replica itself.
  bool fenced = false;
  ReplicaTarget* target = nullptr;
  void (*done)(ChildIo* child) = nullptr;
  void* owner = nullptr;
  uint32_t slot = 0;
};

class ReplicaTarget {
 public:
  virtual ~ReplicaTarget() = default;
  virtual const std::string& node() const = 0;
  virtual bool local() const = 0;
  virtual void Submit(ChildIo* child) = 0;
  // Requests submitted after this carry `epoch`.
  virtual void SetEpoch(uint64_t epoch) = 0;
  // Whether the connection is gone for good (a new target must be connected).
  virtual bool broken() const = 0;
  // Whether SubmitHash works (a remote replica hashes on its own node).
  virtual bool can_hash() const { return false; }
  // XXH3-128 of every `block`-byte block of [child->io.offset, + child->io.length) into
  // child->remote.hashes (HASH_RANGES); child->io.status as for Submit.
  virtual void SubmitHash(ChildIo* child, uint32_t block);
  // Persists the replica's generation (SET_GENERATION at the target's epoch).
  virtual void SubmitSetGeneration(ChildIo* child, uint64_t generation) = 0;
  // Takes snapshot `name` of a remote replica (SNAPSHOT at the target's epoch). The local
  // replica's snapshot is the owner's to take (it blocks): NotSupported here by default.
  virtual void SubmitSnapshot(ChildIo* child, const std::string& name, const Labels& labels);
};

// The replica on this node: the engine volume itself (its handle keeps it open).
class LocalReplica final : public ReplicaTarget {
 public:
  LocalReplica(std::string node, Volume* volume) : node_(std::move(node)), volume_(volume) {}
  const std::string& node() const override { return node_; }
  bool local() const override { return true; }
  void Submit(ChildIo* child) override;
  void SetEpoch(uint64_t) override {}
  bool broken() const override { return false; }
  // Completes at once: the local replica's generation is the owner's to persist (it has the
  // engine; a reactor must not block on a metadata write).
  void SubmitSetGeneration(ChildIo* child, uint64_t generation) override;

 private:
  static void OnDone(VolumeIo* io);
  const std::string node_;
  Volume* const volume_;
};

// A replica on a peer, through a connected ReplicaClient (its completion reactor must be the
// layer's reactor). Requests larger than kMaxIoBytes are refused (the layer splits them).
class RemoteReplica final : public ReplicaTarget {
 public:
  RemoteReplica(std::string node, std::unique_ptr<ReplicaClient> client)
      : node_(std::move(node)), client_(std::move(client)) {}
  ~RemoteReplica() override;
  const std::string& node() const override { return node_; }
  bool local() const override { return false; }
  void Submit(ChildIo* child) override;
  void SetEpoch(uint64_t epoch) override { client_->SetEpoch(epoch); }
  bool broken() const override { return client_->failed(); }
  bool can_hash() const override { return true; }
  void SubmitHash(ChildIo* child, uint32_t block) override;
  void SubmitSetGeneration(ChildIo* child, uint64_t generation) override;
  void SubmitSnapshot(ChildIo* child, const std::string& name, const Labels& labels) override;
  ReplicaClient& client() { return *client_; }

 private:
  // child->remote reset for `op` (range from child->io, completion to OnDone).
  ReplicaRequest& Prepare(ChildIo* child, ReplicaOp op);
  static void OnDone(ReplicaRequest* r);
  const std::string node_;
  std::unique_ptr<ReplicaClient> client_;
};

}  // namespace shale::replication
