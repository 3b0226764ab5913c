// ReplicaClient: one pipelined, authenticated connection from a volume's target to one replica
// (a ReplicaServer on a peer), opened on one replica volume at one epoch.
//
// Threading and cost (docs/format/replica-protocol.md, "Client threading"): Submit() is called
// on the target's reactor and never blocks it: it takes a mutex for a few instructions, appends
// the request to a send queue and wakes the sender thread only when that thread is idle. The
// sender thread drains the whole queue at once (up to the server's in-flight window), checksums
// the frames and sends them with one writev; the receiver thread reads replies (a READ's data
// straight into the request's buffer), matches them by request id (they may come in any order)
// and posts every reply it parsed from one receive to the completion reactor with one
// Reactor::Post. Per request that is one mutex round trip on the reactor plus, at low queue depth,
// one futex wake and one Post; at high queue depth both are shared by a batch. On plain TCP the
// completion reactor does both ends itself instead: it sends the requests queued in one batch
// (FlushFromReactor) and receives the replies on its own ring (replica_client_ring.cc); the
// threads then only finish what the socket did not take at once.
//
// Failure reporting, each a distinct ReplicaOutcome:
//   kStaleEpoch      the replica has persisted a newer epoch: this target is fenced. Not a
//                    replica failure (docs/replication.md, rule 3).
//   kTimeout         no reply within request_timeout (--replica-timeout) of Submit.
//   kConnectionLost  the connection broke (reset, cut, a bad frame from the server) before the
//                    reply: every request in flight and every later Submit fails with it. The
//                    client never reconnects by itself; the caller connects a new one.
//   kClosed          Close() was called before the reply.
//   kError           the replica answered with an error (status: EIO, ENOSPC, INVALID, ...).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/common/result.h"
#include "engine/common/uuid.h"
#include "replication/auth.h"
#include "replication/protocol.h"
#include "replication/transport.h"

namespace shale {
class Reactor;
}

namespace shale::replication {

enum class ReplicaOp : uint8_t {
  kRead,
  kWrite,
  kWriteZeroes,
  kDiscard,
  kFlush,
  kHashRanges,
  kGetInfo,
  kSetGeneration,
  kSnapshot,
};

enum class ReplicaOutcome : uint8_t {
  kOk,
  kError,
  kStaleEpoch,
  kTimeout,
  kConnectionLost,
  kClosed
};
std::string_view ReplicaOutcomeName(ReplicaOutcome outcome);

// The errno a Status of each failed outcome carries (Status::sys_errno): ESTALE, ETIMEDOUT,
// ECONNRESET, ESHUTDOWN. Connect() reports a stale epoch at OPEN with ESTALE too.
bool IsStaleEpoch(const Status& s);
bool IsConnectionLost(const Status& s);

// One request, owned by the submitter; no allocation per request in the client.
struct ReplicaRequest {
  // Set by the submitter.
  ReplicaOp op = ReplicaOp::kRead;
  uint32_t flags = 0;   // kVolumeFua (WRITE, WRITE_ZEROES, DISCARD), kVolumeNoUnmap (WRITE_ZEROES)
  uint64_t offset = 0;  // READ, WRITE, WRITE_ZEROES, DISCARD, HASH_RANGES, GET_INFO (range of
  uint64_t length = 0;  // the allocation report; length 0: none)
  uint8_t* buf = nullptr;     // WRITE: the data, READ: where it goes; valid until done runs
  uint32_t region_size = 0;   // HASH_RANGES
  uint64_t generation = 0;    // SET_GENERATION
  std::string snapshot_name;  // SNAPSHOT
  Labels snapshot_labels;     // SNAPSHOT: the copy's labels
  void (*done)(ReplicaRequest* r) = nullptr;  // runs on the completion reactor, exactly once
  void* ctx = nullptr;

  // Result, set before done().
  ReplicaOutcome outcome = ReplicaOutcome::kOk;
  Status status;
  std::vector<Hash128> hashes;  // HASH_RANGES: one per region
  InfoReply info;               // GET_INFO
  StateReply state;             // SET_GENERATION: the replica's persisted state

  // Private to the client while the request is submitted.
  struct Internal {
    uint64_t id = 0;
    uint64_t epoch = 0;
    SteadyClock::time_point deadline;
    uint8_t phase = 0;
    bool deferred = false;  // finished while the sender still referenced it
    uint64_t window_bytes = 0;
    std::array<uint8_t, kFrameHeaderSize + 32> wire{};  // header and fixed payload
    size_t wire_size = 0;
    std::string payload;  // SNAPSHOT's variable payload
  } internal;
};

struct ReplicaClientOptions {
  std::string address;    // the replica server, "HOST:PORT"
  std::string node_name;  // this node, sent in AUTH
  ClusterSecret secret;
  std::string volume;  // the replica volume's name (the replicated volume's name)
  Uuid volume_uuid;
  uint64_t size_bytes = 0;
  uint64_t epoch = 0;
  Transport* transport = nullptr;
  Reactor* completion_reactor = nullptr;            // where done() runs
  std::chrono::milliseconds connect_timeout{5000};  // connect + authenticate + OPEN
  std::chrono::milliseconds request_timeout{5000};  // --replica-timeout
  uint32_t max_queued = 16384;  // submitted and not yet sent; beyond it Submit fails (kError)
};

struct ReplicaClientStats {
  uint64_t requests = 0;  // finished
  uint64_t timeouts = 0;
  uint64_t late_replies = 0;  // replies to requests that had timed out
  uint64_t sends = 0;         // writev calls
  uint64_t bytes_sent = 0;
  uint64_t posts = 0;           // Reactor::Post calls carrying completions
  uint64_t direct_sends = 0;    // of `sends`: by the completion reactor itself
  uint64_t tails = 0;           // ... of which the socket took only a part at once
  uint64_t ring_receives = 0;   // receives completed on the completion reactor's ring
  uint64_t sender_wakeups = 0;  // the sender thread woken from its wait (work or not)
};

class ReplicaClient {
 public:
  // Connects, authenticates (both ways) and OPENs the volume at options.epoch, within
  // connect_timeout. Blocking: call it from a control thread, never from a reactor. Errors:
  // IsStaleEpoch (the replica has a newer epoch), PermissionDenied (authentication), NotFound /
  // InvalidArgument (no such replica, uuid or size mismatch), IsTimedOut, or the connection's.
  static Result<std::unique_ptr<ReplicaClient>> Connect(ReplicaClientOptions options);
  ~ReplicaClient();  // Close()s
  ReplicaClient(const ReplicaClient&) = delete;
  ReplicaClient& operator=(const ReplicaClient&) = delete;

  // Any thread (normally the completion reactor); never blocks, never calls done() inline.
  // READ/WRITE: length 1..kMaxIoBytes (callers split larger I/O), 512-byte multiples.
  void Submit(ReplicaRequest* r);
  // Requests submitted after this carry `epoch` (the target's epoch after a membership change).
  void SetEpoch(uint64_t epoch);
  // Fails every unfinished request with kClosed (their done() is posted), stops the threads.
  // Any thread; blocks until the threads exit (promptly: the connection is shut down first).
  // Idempotent.
  void Close();

  const OpenReply& opened() const { return open_; }  // what OPEN returned
  const std::string& server_node() const { return server_node_; }
  const std::string& address() const { return options_.address; }
  bool failed() const;     // the connection is lost (or closed)
  Status failure() const;  // why
  ReplicaClientStats stats() const;

 private:
  explicit ReplicaClient(ReplicaClientOptions options);
  Status Handshake(Deadline deadline);
  void SenderLoop();
  void TakeBatchLocked(std::vector<ReplicaRequest*>* batch);
  std::vector<ConstBuffer> EncodeBatch(const std::vector<ReplicaRequest*>& batch);
  void SentLocked(const std::vector<ReplicaRequest*>& batch, std::vector<ReplicaRequest*>* done);
  void FlushFromReactor();
  void SendSoonLocked();
  void ReceiverLoop();
  // Replies received on the completion reactor's ring (replica_client_ring.cc).
  class RingReceiver;
  bool StartRingReceiver();
  // Close(): after it, the ring receiver never touches this client again.
  void DetachRingReceiver();
  // The ring receive broke the connection (`why`): fails every unfinished request.
  void RingFailed(const Status& why, std::vector<ReplicaRequest*>* done);
  void RingExpire(std::vector<ReplicaRequest*>* done);
  size_t Encode(ReplicaRequest* r, ConstBuffer* iov);
  Status HandleReply(const FrameReader::Frame& f, ReplicaRequest* claimed,
                     std::vector<ReplicaRequest*>* done);
  void ExpireLocked(std::vector<ReplicaRequest*>* done);
  void FailLocked(ReplicaOutcome outcome, const Status& why, std::vector<ReplicaRequest*>* done);
  void FinishLocked(ReplicaRequest* r, ReplicaOutcome outcome, Status status,
                    std::vector<ReplicaRequest*>* done);
  ReplicaRequest* ClaimLocked(uint64_t id);
  void Post(std::vector<ReplicaRequest*> done);
  bool WindowOpenLocked(const ReplicaRequest* next) const;

  const ReplicaClientOptions options_;
  std::unique_ptr<Connection> conn_;
  std::unique_ptr<FrameReader> reader_;
  OpenReply open_;
  std::string server_node_;
  std::thread sender_, receiver_;
  std::atomic<uint64_t> epoch_;

  mutable std::mutex mu_;
  std::condition_variable send_cv_;
  std::deque<ReplicaRequest*> queue_;         // submitted, not yet handed to the sender
  std::map<uint64_t, ReplicaRequest*> live_;  // unfinished, by id (= deadline order)
  uint64_t next_id_ = 1;
  uint32_t in_flight_ = 0;        // handed to the sender and unfinished
  uint64_t bytes_in_flight_ = 0;  // their window bytes
  bool sender_idle_ = true;  // the sender thread sends nothing now (also before its first wait)
  // Sends by the completion reactor itself (FlushFromReactor) on a connection that can send
  // without waiting: one writer at a time (the reactor only while the sender thread is idle and
  // no tail is left); the bytes the socket did not take (`tail_`, of `tail_batch_`) go first.
  bool direct_ = false;  // conn_->can_try_send(); set before the threads start
  bool flush_deferred_ = false;
  bool direct_sending_ = false;
  std::vector<ReplicaRequest*> tail_batch_;
  std::vector<ConstBuffer> tail_;
  // Lets a Defer'd flush outlive the client: the destructor clears `client` under `mu` (waiting
  // for a flush that runs) before anything goes.
  struct Flusher {
    std::mutex mu;
    ReplicaClient* client = nullptr;
  };
  std::shared_ptr<Flusher> flusher_ = std::make_shared<Flusher>();
  // On plain TCP the completion reactor receives the replies on its own ring (no receiver
  // thread, no Post): docs/format/replica-protocol.md, "Reactor receives".
  std::shared_ptr<RingReceiver> ring_;
  bool closing_ = false;
  bool failed_ = false;
  Status failure_;

  struct Counters {
    std::atomic<uint64_t> requests{0}, timeouts{0}, late{0}, sends{0}, bytes_sent{0}, posts{0},
        direct_sends{0}, tails{0}, ring_receives{0}, sender_wakeups{0};
  };
  Counters counters_;
};

}  // namespace shale::replication
