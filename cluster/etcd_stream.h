// Internal to cluster/: one bidirectional gRPC stream (lease keep-alive, watch) driven from one
// thread over a private completion queue, with a deadline on every step, so a peer that stops
// answering costs at most the step's deadline and never a blocked thread.
//
// Threading: Start/Write/Read/Close from the owning thread only; Cancel from any thread (it
// makes the pending and every later step fail promptly).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "cluster/etcd_rpc.h"

namespace shale::cluster::internal {

template <typename Request, typename Response>
class BoundedStream {
 public:
  using ReaderWriter = grpc::ClientAsyncReaderWriter<Request, Response>;
  using Prepare =
      std::function<std::unique_ptr<ReaderWriter>(grpc::ClientContext*, grpc::CompletionQueue*)>;
  enum class ReadResult { kOk, kTimeout, kClosed };

  BoundedStream() {
    // etcd cancels the stream when its member loses the leader (a partitioned member would
    // otherwise keep a watch silent forever).
    context_.AddMetadata("hasleader", "true");
  }
  ~BoundedStream() { Close(); }
  BoundedStream(const BoundedStream&) = delete;
  BoundedStream& operator=(const BoundedStream&) = delete;

  // Starts the call; false when it cannot start before the deadline.
  bool Start(const Prepare& prepare, Deadline deadline) {
    stream_ = prepare(&context_, &cq_);
    stream_->StartCall(Tag(kStart));
    pending_[kStart] = true;
    return Wait(kStart, deadline);
  }

  // Sends one message; false when it is not sent before the deadline (the stream is then broken).
  bool Write(const Request& request, Deadline deadline) {
    if (pending_[kWrite]) return false;
    stream_->Write(request, Tag(kWrite));
    pending_[kWrite] = true;
    return Wait(kWrite, deadline);
  }

  // Receives one message. kTimeout leaves the read pending: the next Read waits for the same
  // message. kClosed: the stream ended (Close() tells why).
  ReadResult Read(Response* response, Deadline deadline) {
    if (!pending_[kRead]) {
      stream_->Read(&read_buffer_, Tag(kRead));
      pending_[kRead] = true;
    }
    if (!Wait(kRead, deadline)) {
      if (pending_[kRead]) return ReadResult::kTimeout;
      ended_ = true;  // the server or the transport ended the stream: Finish says why
      return ReadResult::kClosed;
    }
    *response = std::move(read_buffer_);
    return ReadResult::kOk;
  }

  // Thread-safe.
  void Cancel() { context_.TryCancel(); }

  // Cancels the call (unless it already ended), waits for every pending step, and returns the
  // call's final status.
  grpc::Status Close() {
    if (closed_) return final_;
    closed_ = true;
    if (stream_ != nullptr) {
      if (!ended_ || pending_[kStart] || pending_[kWrite] || pending_[kRead]) context_.TryCancel();
      for (int tag = 0; tag < kTags; ++tag) WaitForever(tag);
      stream_->Finish(&final_, Tag(kFinish));
      pending_[kFinish] = true;
      WaitForever(kFinish);
    }
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
    return final_;
  }

 private:
  enum : int { kStart = 0, kWrite = 1, kRead = 2, kFinish = 3, kTags = 4 };
  static void* Tag(int tag) { return reinterpret_cast<void*>(static_cast<intptr_t>(tag + 1)); }

  // Processes completions until `tag` completed (true when it succeeded) or the deadline passed.
  bool Wait(int tag, Deadline deadline) {
    while (pending_[tag]) {
      void* got = nullptr;
      bool ok = false;
      const auto status = cq_.AsyncNext(&got, &ok, ToSystemClock(deadline));
      if (status != grpc::CompletionQueue::GOT_EVENT) return false;
      const int done = static_cast<int>(reinterpret_cast<intptr_t>(got)) - 1;
      pending_[done] = false;
      ok_[done] = ok;
    }
    return ok_[tag];
  }

  void WaitForever(int tag) {
    while (pending_[tag]) {
      void* got = nullptr;
      bool ok = false;
      if (!cq_.Next(&got, &ok)) return;
      const int done = static_cast<int>(reinterpret_cast<intptr_t>(got)) - 1;
      pending_[done] = false;
      ok_[done] = ok;
    }
  }

  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<ReaderWriter> stream_;
  Response read_buffer_;
  bool pending_[kTags] = {};
  bool ok_[kTags] = {};
  bool ended_ = false;
  bool closed_ = false;
  grpc::Status final_;
};

}  // namespace shale::cluster::internal
