// Replica placement from a target (or the daemon's lifecycle service) on a peer's ReplicaServer:
// CREATE_REPLICA, DELETE_REPLICA, STAT_REPLICA (docs/format/replica-protocol.md, "Placing
// replicas"). Each call opens one authenticated connection, sends one request, reads its reply
// and closes. Blocking with a deadline: call from control threads, never from a reactor.
//
// Every call carries the caller's epoch: a replica that persisted a newer epoch refuses it with
// STALE_EPOCH (IsStaleEpoch), so a fenced target cannot delete or recreate a replica either.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "engine/common/result.h"
#include "engine/common/uuid.h"
#include "replication/auth.h"
#include "replication/protocol.h"
#include "replication/transport.h"

namespace shale::replication {

struct ReplicaAdminOptions {
  std::string address;    // the peer's replica server, "HOST:PORT"
  std::string node_name;  // this node, sent in AUTH
  ClusterSecret secret;
  Transport* transport = nullptr;
  std::chrono::milliseconds timeout{5000};  // connect + authenticate + request + reply
};

// What a target places: the replicated volume's name, uuid and size, and the peer's pool
// (empty: the server's replica pool).
struct ReplicaSpec {
  std::string volume;
  Uuid uuid;
  uint64_t size_bytes = 0;  // a multiple of 4096
  std::string pool;
  // "VOLUME@SNAP": CREATE_REPLICA makes the replica a clone of that snapshot on the node (a
  // replicated clone of a replicated volume's snapshot); empty: an empty replica.
  std::string source;
};

// Creates the replica volume (epoch persisted with it, generation 0). Idempotent: an existing
// replica of the same uuid and size (and pool, if named) is returned with created = false.
// InvalidArgument: the name is taken by another volume or replica, or the size differs.
Result<ReplicaStat> CreateReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                                  uint64_t epoch);
// Deletes the replica volume. Idempotent: OK when it does not exist. InvalidArgument when the
// volume is not a replica of spec.uuid (nothing is deleted); Unavailable while it is open.
Status DeleteReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec, uint64_t epoch);
// The replica's size, allocation and persisted epoch and generation; NotFound if missing.
Result<ReplicaStat> StatReplica(const ReplicaAdminOptions& options, const ReplicaSpec& spec);

// The digest of snapshot `snapshot` of the replica, recomputed from its data (SNAPSHOT_DIGEST;
// reads only, epoch 0). NotFound if the replica or the snapshot is missing; Corruption when the
// data no longer hashes to the digest recorded there.
Result<std::string> SnapshotDigestOf(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                                     const std::string& snapshot);
// The snapshots the replica holds (LIST_SNAPSHOTS; reads only, epoch 0). NotFound if the
// replica is missing.
Result<SnapshotList> ListReplicaSnapshots(const ReplicaAdminOptions& options,
                                          const ReplicaSpec& spec);
// Deletes snapshot `snapshot` of the replica (DELETE_SNAPSHOT at `epoch`: STALE_EPOCH from a
// fenced target). Idempotent: OK when it does not exist.
Status DeleteReplicaSnapshot(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                             const std::string& snapshot, uint64_t epoch);
// Deletes the node's copy of snapshot `volume`@`snapshot` of a replicated volume the cluster no
// longer has, whatever its uuid (DELETE_SNAPSHOT with a nil uuid, epoch 0): the node deletes it
// only if it holds no volume of that name, the copy is a replicated volume's and no volume record
// of that uuid exists. NotFound when the node holds no such copy; FAILED_PRECONDITION when it
// holds one it must keep.
Status DeleteCopyOfDeletedVolume(const ReplicaAdminOptions& options, const std::string& volume,
                                 const std::string& snapshot);

// Asks the node at options.address, which serves replicated volume spec.volume, to take snapshot
// `snapshot` of it (TAKE_SNAPSHOT), with `labels`: on every in-sync replica, as there.
// FailedPrecondition when that node does not serve it.
Status TakeSnapshotOnTarget(const ReplicaAdminOptions& options, const ReplicaSpec& spec,
                            const std::string& snapshot, const Labels& labels = {});

// The client's side of HELLO and AUTH on a fresh connection (shared with ReplicaClient): reads
// HELLO, proves the secret, checks the server's proof. Returns the HELLO.
Result<Hello> AuthenticateToServer(Connection* connection, FrameReader* reader,
                                   const ClusterSecret& secret, const std::string& node_name,
                                   const std::string& address, Deadline deadline);

}  // namespace shale::replication
