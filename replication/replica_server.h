// ReplicaServer: serves this node's replica volumes to targets over the replica protocol
// (docs/format/replica-protocol.md). It runs inside every shaled started with
// --replica-listen. A replica is an ordinary engine volume of the same name, labelled with the
// replicated volume's uuid (kReplicaUuidLabel); OPEN checks that label and the size.
//
// Fencing (docs/replication.md, rules 2 and 3): per replica volume the server persists, in its
// pool's metadata (ReplicaStateKey), the highest epoch it has seen and the replica's generation.
// A request carrying a higher epoch is accepted only after its connection's earlier requests
// completed (they carry the older epoch) and that epoch is durable; a request
// carrying a lower one is answered STALE_EPOCH. The comparison happens on the volume's reactor
// at submission, so a request admitted before a newer target's OPEN returned is older than
// everything that target sends.
//
// Threads: one accept thread; per connection a receiver thread (handshake, OPEN, parsing and
// checking frames, persisting epochs, submitting batches of requests to the volume's reactor with
// one Reactor::Post each) and a sender thread (replies, many per writev, checksummed there). On
// plain TCP the volume's reactor receives and dispatches the requests on its own ring and sends
// the replies itself (replica_server_ring.cc, replica_server_send.cc); the threads then run what
// may block (epoch raises, SET_GENERATION, SNAPSHOT) and what the socket did not take at once.
// Requests run on the volume's reactor and complete out of order; nothing blocks a reactor.
// A connection holds at most max_requests_in_flight requests and max_bytes_in_flight (plus one
// request) of data buffers; at the bound it stops reading (the peer sees TCP backpressure).
// Frames that fail any check (size, magic, version, type, flags, checksum, truncation, garbage)
// close that connection and are logged; other connections are not affected.
//
// Threading of the API: Start/Stop from a control thread; address/stats from any thread.
// Stop() before Engine::Shutdown().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/common/result.h"
#include "engine/common/uuid.h"
#include "replication/auth.h"
#include "replication/transport.h"

namespace shale {
class Engine;
struct VolumeInfo;
}  // namespace shale

namespace shale::replication {

// Volume label that makes a local volume a replica: the replicated volume's uuid.
inline constexpr char kReplicaUuidLabel[] = "shale.io/replica-uuid";
// Label (value "true") of a volume that carries kReplicaUuidLabel but holds no replica: the
// anchor of a target on a node without a replica (docs/replication.md, "Targets on nodes without
// a replica"). The replica service never serves it (OPEN, STAT, CREATE and DELETE refuse it).
inline constexpr char kTargetOnlyLabel[] = "shale.io/target-only";
// keys::Extension namespace of the persisted replica state.
inline constexpr char kReplicaStateNamespace[] = "replica";

// What a replica persists about itself (docs/replication.md, rule 2).
struct ReplicaState {
  uint64_t epoch = 0;       // highest epoch seen
  uint64_t generation = 0;  // epoch under which it last joined in_sync
};
struct WireReplicaState {
  uint32_t version;  // 1
  uint32_t reserved;
  uint64_t epoch;
  uint64_t generation;
};
static_assert(sizeof(WireReplicaState) == 24);

// keys::Extension("replica", big-endian u64 volume id).
std::string ReplicaStateKey(uint64_t volume_id);
std::string EncodeReplicaState(const ReplicaState& s);
Result<ReplicaState> DecodeReplicaState(std::string_view bytes);
// The persisted state of a volume (zeros when none was written). Blocking (control threads).
Result<ReplicaState> LoadReplicaState(Engine* engine, std::string_view pool, uint64_t volume_id);

struct ReplicaServerOptions {
  std::string listen_address;  // "HOST:PORT"; port 0 picks one (see address())
  std::string node_name;       // this node, sent in HELLO
  ClusterSecret secret;
  unsigned max_connections = 64;             // beyond it, new connections are closed at once
  uint32_t max_requests_in_flight = 256;     // per connection
  uint64_t max_bytes_in_flight = 32 * kMiB;  // per connection (data buffers)
  std::chrono::milliseconds handshake_timeout{10000};  // accept to OPEN done
  std::chrono::milliseconds send_timeout{30000};       // a peer that stops reading replies is cut
  // SNAPSHOT(name) of a replica volume: the daemon supplies it (snapshot/ is above
  // replication/). Runs on the connection's receiver thread once every earlier request of the
  // connection has completed; may block. Null: NOT_SUPPORTED.
  // `labels`: what the SNAPSHOT carried (usually none).
  std::function<Status(const std::string& volume, const std::string& snapshot,
                       const Labels& labels)>
      snapshot;
  // SNAPSHOT_DIGEST(volume, snapshot): the snapshot's digest recomputed from its data;
  // DELETE_SNAPSHOT: deletes it (OK when missing). Run on the connection's receiver thread
  // before OPEN; may block. Null: NOT_SUPPORTED.
  std::function<Result<std::string>(const std::string& volume, const std::string& snapshot)>
      snapshot_digest;
  std::function<Status(const std::string& volume, const std::string& snapshot)> delete_snapshot;
  // DELETE_SNAPSHOT of a copy whose replica volume is gone (deleted after the snapshot, which
  // outlives it): deletes `volume@snapshot` if it is a copy of the volume with that uuid (its
  // labels say so), OK when missing. Null: the request is refused (NOT_FOUND), as without it.
  std::function<Status(const std::string& volume, const std::string& snapshot, const Uuid& uuid)>
      delete_snapshot_of_deleted;
  // LIST_SNAPSHOTS(volume): the snapshots of the replica volume (names after '@'). Run on the
  // connection's receiver thread before OPEN; may block. Null: NOT_SUPPORTED.
  std::function<Result<std::vector<SnapshotEntry>>(const std::string& volume)> list_snapshots;
  // TAKE_SNAPSHOT(volume, snapshot): a snapshot of replicated volume `volume` taken by this node
  // as its target (`shale snapshot create` through another node); refused (FailedPrecondition)
  // when this node does not serve it. May block. Null: NOT_SUPPORTED.
  std::function<Status(const std::string& volume, const std::string& snapshot,
                       const Labels& labels)>
      take_snapshot;
  // CREATE_REPLICA with a source: makes `volume` a writable clone of local snapshot `source`
  // ("VOLUME@SNAP") labelled with `labels`; the daemon supplies it (snapshot/ is above
  // replication/). May block. Null: NOT_SUPPORTED for such a request.
  std::function<Result<VolumeInfo>(const std::string& source, const std::string& volume,
                                   const std::map<std::string, std::string>& labels)>
      clone_snapshot;
  // Called after the persisted epoch of replica volume `volume` was raised to `epoch` (a newer
  // target opened it), on the thread that raised it, before the raising request is answered:
  // the daemon fences a local target of the volume whose epoch is older (its local writes do
  // not pass through this server). May block briefly; must not call back into the server.
  std::function<void(const std::string& volume, uint64_t epoch)> on_epoch_raised;
  // CREATE_REPLICA that names no pool creates the replica volume here ("": the engine's
  // default pool, else its only pool).
  std::string replica_pool;
};

struct ReplicaServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t connections_active = 0;
  uint64_t auth_failures = 0;
  uint64_t protocol_errors = 0;  // connections closed for a bad frame
  uint64_t requests = 0;         // requests answered
  uint64_t stale_epoch_replies = 0;
  uint64_t direct_reply_sends = 0;        // reply batches the volumes' reactors sent themselves
  uint64_t reply_tails = 0;               // ... of which the socket took only a part at once
  uint64_t writes_received_in_place = 0;  // large WRITEs the reactors received into their buffer
};

class ReplicaServer {
 public:
  // `engine` and `transport` must outlive the server.
  ReplicaServer(Engine* engine, Transport* transport, ReplicaServerOptions options);
  ~ReplicaServer();  // Stop()s
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Binds and starts accepting. On error nothing is left listening.
  Status Start();
  // Stops accepting, cuts every connection, waits until no request is in flight on any volume
  // and every connection has released its volume. Idempotent.
  void Stop();

  std::string address() const;  // as bound
  // Raises the persisted epoch of local replica volume `volume` to `epoch` (no-op if not
  // higher): a target taking the volume over on this node fences the old target's requests to
  // this replica before it serves. Blocking (control threads).
  Status RaiseEpoch(const std::string& volume, uint64_t epoch);
  ReplicaServerStats stats() const;

  struct Conn;         // one connection (replica_server.cc)
  struct VolumeState;  // per replica volume: the persisted epoch and generation

 private:
  void AcceptLoop();
  void ReapFinished();
  void Serve(Conn* c);
  // false: the peer was refused (and told so); errors: the connection broke or misbehaved.
  Result<bool> Handshake(Conn* c, FrameReader* reader, Deadline deadline);
  Result<bool> Open(Conn* c, FrameReader* reader, Deadline deadline);
  Result<std::shared_ptr<VolumeState>> StateOf(const std::string& pool, uint64_t volume_id);

  // Placement before OPEN (replica_server_admin.cc): CREATE/DELETE/STAT_REPLICA.
  struct Refusal {  // a wire status other than OK and why; OK: none
    WireStatus status = WireStatus::kOk;
    std::string why;
  };
  static bool IsAdmin(MsgType type);
  // (`anchor_too`: a target-only anchor of the uuid passes too.)
  static Refusal CheckReplica(const VolumeInfo& info, const Uuid& uuid, bool anchor_too = false);
  Status Admin(Connection* conn, const std::string& peer, const std::string& client_node,
               const FrameReader::Frame& f, Deadline deadline);
  Refusal CreateReplica(const CreateReplicaRequest& m, uint64_t epoch, ReplicaStat* stat);
  // CreateReplica with a source: the clone of the local snapshot, grown to the size, fenced.
  Refusal CloneReplica(const CreateReplicaRequest& m, const Uuid& uuid, uint64_t epoch,
                       ReplicaStat* stat);
  Refusal DeleteReplica(const ReplicaRef& m, uint64_t epoch);
  Refusal StatReplica(const ReplicaRef& m, ReplicaStat* stat);
  Refusal ListSnapshots(const ReplicaRef& m, SnapshotList* list);
  Refusal ExistingReplica(const VolumeInfo& info, uint64_t epoch, ReplicaStat* stat);
  Refusal SnapshotAdmin(MsgType type, const SnapshotRef& m, uint64_t epoch, std::string* digest);

  Engine* const engine_;
  Transport* const transport_;
  const ReplicaServerOptions options_;
  std::unique_ptr<Listener> listener_;
  std::string address_;
  std::thread accept_thread_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;

  mutable std::mutex mu_;  // guards conns_ and states_
  std::vector<std::unique_ptr<Conn>> conns_;
  std::map<std::pair<std::string, uint64_t>, std::weak_ptr<VolumeState>> states_;

  struct Counters {
    std::atomic<uint64_t> accepted{0}, refused{0}, auth_failures{0}, protocol_errors{0},
        requests{0}, stale{0}, direct_sends{0}, tails{0}, writes_in_place{0};
  };
  Counters counters_;
  friend struct Conn;
};

}  // namespace shale::replication
