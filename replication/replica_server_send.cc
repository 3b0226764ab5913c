// The reply side of a replica connection (docs/format/replica-protocol.md, "Threads"): the
// sender thread, and the replies the volume's reactor sends itself.
#include "replication/replica_server_conn.h"

namespace shale::replication {

using replica_server_internal::kRepliesPerSend;
using replica_server_internal::NameThread;
using replica_server_internal::Request;

void ReplicaServer::Conn::SenderLoop() {
  NameThread("repl-send");
  std::unique_lock lock(mu);
  while (true) {
    send_cv.wait(lock, [&] {
      return !tail.empty() || (!replies.empty() && !direct_sending) || sender_stop;
    });
    sender_busy = true;
    if (!tail.empty()) {  // the rest of the reactor's send comes first
      std::vector<Request*> batch = std::move(tail_batch);
      std::vector<ConstBuffer> rest = std::move(tail);
      tail_batch.clear();
      tail.clear();
      lock.unlock();
      if (!send_failed) {
        const Status st = connection->Send(rest, DeadlineIn(server->options_.send_timeout));
        if (!st.ok()) SendFailed(st);
      }
      FreeReplies(batch);
      lock.lock();
      sender_busy = false;
      continue;
    }
    if (replies.empty()) break;
    std::vector<Request*> batch;
    batch.swap(replies);
    lock.unlock();
    for (size_t i = 0; i < batch.size(); i += kRepliesPerSend) {
      std::vector<Request*> part(
          batch.begin() + static_cast<std::ptrdiff_t>(i),
          batch.begin() + static_cast<std::ptrdiff_t>(std::min(batch.size(), i + kRepliesPerSend)));
      SendReplies(part);
    }
    lock.lock();
    sender_busy = false;
  }
}

std::vector<ConstBuffer> ReplicaServer::Conn::SealReplies(const std::vector<Request*>& batch) {
  std::vector<ConstBuffer> iov;
  iov.reserve(2 * batch.size());
  const uint64_t epoch = state ? state->fence.load(std::memory_order_acquire) : 0;
  for (Request* r : batch) {
    FrameHeader h;
    h.type = r->hdr.type | kReplyBit;
    h.status = static_cast<uint32_t>(r->status);
    h.request_id = r->hdr.request_id;
    h.epoch = epoch;
    const ConstBuffer body =
        r->reply_data ? ConstBuffer(r->data, r->io.length) : AsBytes(r->payload);
    r->reply_header = SealFrame(h, {body});
    iov.push_back(r->reply_header);
    iov.push_back(body);
  }
  return iov;
}

void ReplicaServer::Conn::SendFailed(const Status& st) {
  send_failed = true;
  SHALE_LOG_WARN("replica connection: sending replies failed", {"peer", peer},
                 {"volume", volume_name}, {"error", st.ToString()});
  connection->Shutdown();
}

void ReplicaServer::Conn::FreeReplies(const std::vector<Request*>& batch) {
  server->counters_.requests.fetch_add(batch.size(), std::memory_order_relaxed);
  for (Request* r : batch) FreeRequest(r);
}

// Seals and sends replies (unless the send side failed), then frees them.
void ReplicaServer::Conn::SendReplies(std::vector<Request*>& batch) {
  if (!send_failed) {
    const Status st =
        connection->Send(SealReplies(batch), DeadlineIn(server->options_.send_timeout));
    if (!st.ok()) SendFailed(st);
  }
  FreeReplies(batch);
}

// On the volume's reactor, at the end of a completion batch (QueueReply).
void ReplicaServer::Conn::FlushReplies() {
  std::vector<Request*> batch;
  {
    std::lock_guard lock(mu);
    flush_deferred = false;
    if (sender_busy || !tail.empty() || send_failed) {
      if (!replies.empty()) send_cv.notify_one();  // the sender thread takes them
    } else {
      batch.swap(replies);
      direct_sending = !batch.empty();
    }
  }
  if (!batch.empty()) {
    const std::vector<ConstBuffer> iov = SealReplies(batch);
    size_t total = 0;
    for (const ConstBuffer& b : iov) total += b.size();
    const Result<size_t> sent = connection->TrySend(iov);
    server->counters_.direct_sends.fetch_add(1, std::memory_order_relaxed);
    if (!sent.ok()) SendFailed(sent.status());
    if (!sent.ok() || *sent == total) {
      FreeReplies(batch);
      std::lock_guard lock(mu);
      direct_sending = false;
      if (!replies.empty()) send_cv.notify_one();
    } else {
      std::lock_guard lock(mu);
      server->counters_.tails.fetch_add(1, std::memory_order_relaxed);
      tail_batch = std::move(batch);
      tail = BytesAfter(iov, *sent);
      direct_sending = false;
      send_cv.notify_one();
    }
  }
  FreeRequest(nullptr);  // the flush's hold on the connection; nothing touches it after this
}

}  // namespace shale::replication
