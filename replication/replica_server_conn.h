// ReplicaServer::Conn: one replica connection's state, shared by the server's files
// (replica_server.cc: receive and dispatch; replica_server_send.cc: replies). Private to them.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/common/log.h"
#include "engine/engine.h"
#include "engine/io/buffer_cache.h"
#include "engine/io/reactor.h"
#include "engine/volume/volume.h"
#include "replication/protocol.h"
#include "replication/replica_server.h"
#include "replication/replica_state.h"
#include "replication/transport.h"

namespace shale::replication {

namespace replica_server_internal {

inline constexpr size_t kRepliesPerSend = 256;          // replies per writev (2 iovecs each)
inline constexpr size_t kBufferCacheBytes = 32 * kMiB;  // idle data buffers kept per connection

inline void NameThread(const char* name) { pthread_setname_np(pthread_self(), name); }

// A connection's data buffers: engine/io's BufferCache behind a mutex, as raw pointers (a Request
// holds its buffer until its reply is sent). The receiver takes buffers, the sender returns them.
class SharedBufferCache {
 public:
  uint8_t* Get(size_t size) {
    uint64_t cap = 0;
    std::lock_guard lock(mu_);
    return cache_.Get(size, &cap).release();
  }
  // `size` is what Get was asked for.
  void Put(uint8_t* p, size_t size) {
    if (p == nullptr) return;
    AlignedBuffer buf(p);
    std::lock_guard lock(mu_);
    cache_.Put(std::move(buf), BufferCache::CapacityFor(size));
  }

 private:
  std::mutex mu_;
  BufferCache cache_{kBufferCacheBytes};
};

struct Request {
  ReplicaServer::Conn* conn = nullptr;
  FrameHeader hdr;  // the request's
  VolumeIo io;
  uint8_t* data = nullptr;  // READ result, WRITE data, HASH_RANGES scratch (from the cache)
  size_t data_size = 0;
  HashRangesRequest hash;
  uint32_t hash_index = 0;
  HashRangesReply hashes;
  InfoRequest info;
  // The reply.
  WireStatus status = WireStatus::kOk;
  std::string payload;      // small payloads and error messages
  bool reply_data = false;  // the reply's payload is `data` (an OK READ)
  HeaderBytes reply_header{};
};

}  // namespace replica_server_internal

struct ReplicaServer::Conn {
  using Request = replica_server_internal::Request;

  ReplicaServer* server = nullptr;
  std::unique_ptr<Connection> connection;
  std::string peer;
  std::string client_node;
  std::string volume_name;
  std::thread receiver;
  std::thread sender;
  std::atomic<bool> finished{false};
  // After OPEN.
  std::shared_ptr<VolumeHandle> handle;
  Volume* volume = nullptr;
  Reactor* reactor = nullptr;
  std::shared_ptr<VolumeState> state;
  replica_server_internal::SharedBufferCache buffers;
  // Requests between receipt and the end of their reply's send, under mu.
  std::mutex mu;
  std::condition_variable room_cv;  // receiver: in-flight bounds; teardown: drained
  std::condition_variable send_cv;  // sender: replies queued or stop
  std::vector<Request*> replies;
  uint32_t in_flight = 0;
  uint64_t bytes_in_flight = 0;
  bool sender_stop = false;
  std::atomic<bool> send_failed{false};  // the sender thread's or the reactor's send failed
  // Replies sent by the reactor itself (docs/format/replica-protocol.md, "Server threading"):
  // on a connection that can send without waiting, the replies finished in one completion batch
  // are sent at its end by the volume's reactor, with no wake-up of the sender thread. One writer
  // at a time: the reactor sends only while the sender thread is idle and nothing is left over;
  // what the socket does not take at once (`tail`, from `tail_batch`) the sender thread sends
  // before anything else.
  bool direct_replies = false;  // connection->can_try_send(); set before the sender starts
  bool flush_deferred = false;  // a FlushReplies is Defer'd (reactor only)
  bool sender_busy = false;     // the sender thread is sending
  bool direct_sending = false;  // the reactor is sending
  std::vector<Request*> tail_batch;
  std::vector<ConstBuffer> tail;

  // Any thread (the reactor, the receiver): hands a finished request to the sender (on the
  // volume's reactor of a direct connection: to the flush at the end of the completion batch).
  void QueueReply(Request* r) {
    if (direct_replies && reactor != nullptr && reactor->IsCurrent()) {
      {
        std::lock_guard lock(mu);
        replies.push_back(r);
        if (flush_deferred) return;
        flush_deferred = true;
        ++in_flight;  // the flush holds the connection like a request (teardown waits for it)
      }
      reactor->Defer([this] { FlushReplies(); });
      return;
    }
    std::lock_guard lock(mu);
    replies.push_back(r);
    if (replies.size() == 1) send_cv.notify_one();
  }
  void FlushReplies();
  // The frames of `batch`'s replies (their headers sealed into the requests).
  std::vector<ConstBuffer> SealReplies(const std::vector<Request*>& batch);
  void FreeReplies(const std::vector<Request*>& batch);
  void Reply(Request* r, WireStatus status, std::string_view message) {
    r->status = status;
    r->reply_data = false;
    r->payload.clear();
    if (status != WireStatus::kOk) Encode(ErrorReply{std::string(message)}, &r->payload);
    QueueReply(r);
  }
  void ReplyStatus(Request* r, const Status& st) {
    Reply(r, WireStatusFromStatus(st), st.message());
  }
  Request* NewRequest(const FrameHeader& h, size_t data_size) {
    auto* r = new Request;
    r->conn = this;
    r->hdr = h;
    r->data_size = data_size;
    if (data_size > 0) r->data = buffers.Get(data_size);
    std::lock_guard lock(mu);
    ++in_flight;
    bytes_in_flight += data_size;
    return r;
  }
  // nullptr: releases the hold of a FlushReplies.
  void FreeRequest(Request* r) {
    if (r != nullptr) buffers.Put(r->data, r->data_size);
    bool resume = false;
    {
      std::lock_guard lock(mu);
      --in_flight;
      if (r != nullptr) bytes_in_flight -= r->data_size;
      room_cv.notify_all();
      if (ring_waiting_room && HasRoomLocked()) {
        ring_waiting_room = false;
        resume = true;
      }
    }
    delete r;
    if (resume) ResumeRing();
  }
  bool HasRoomLocked() const {
    return in_flight < server->options_.max_requests_in_flight &&
           bytes_in_flight < server->options_.max_bytes_in_flight;
  }

  // Requests received on the volume's reactor's own ring (plain TCP; replica_server_ring.cc,
  // docs/format/replica-protocol.md "Reactor receives"): the receiver thread then runs only what
  // may block — epoch raises, SET_GENERATION, SNAPSHOT — handed over as whole frames in
  // `control` while the ring waits, and then waits for the ring's end.
  class RingReceiver;
  std::shared_ptr<RingReceiver> ring;
  std::deque<std::string> control;     // under mu
  std::condition_variable control_cv;  // the receiver thread: control frames or the ring's end
  bool ring_ended = false;             // under mu
  bool ring_waiting_room = false;      // under mu: the ring stopped receiving at the bounds
  // Starts the ring receiver if the connection allows it (false: serve on this thread).
  bool StartRing(const FrameReader& reader);
  // The receiver thread in ring mode: control frames until the ring ends.
  void ServeRing();
  void ResumeRing();  // any thread: the ring goes on receiving (on the reactor)

  void SenderLoop();
  void SendFailed(const Status& st);
  void SendReplies(std::vector<Request*>& batch);
  void Dispatch(Request* r);
  void HashStep(Request* r);
  void GetInfo(Request* r);
  Status HandleFrame(const FrameReader::Frame& f, uint8_t* data, std::vector<Request*>* batch);
  Status HandleControl(const FrameReader::Frame& f, std::vector<Request*>* batch);
  void Flush(std::vector<Request*>* batch);
  void ServeRequests(FrameReader* reader);
};

}  // namespace shale::replication
