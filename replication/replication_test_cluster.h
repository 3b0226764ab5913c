// Test harness for the target side (replication_layer_test, rebuilder_test): three Engines on
// file pools in this process — node-a (the target; its volume is the local replica), node-b and
// node-c (each a ReplicaServer on TCP loopback, port 0) — the replicas placed with
// CreateReplica, a ReplicationLayer on the target volume's reactor, ChangedRegions committed
// through node-a's pool pipeline, and a MembershipClient fake that records every call and can
// hold or fail its answer. Remote replicas are dialed through a FaultTransport.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/io/reactor.h"
#include "engine/pool/pool.h"
#include "engine/volume/volume.h"
#include "replication/activity_log.h"
#include "replication/changed_regions.h"
#include "replication/rebuilder.h"
#include "replication/replica_admin.h"
#include "replication/replica_client.h"
#include "replication/replica_server.h"
#include "replication/replication_layer.h"

namespace shale::replication::testing {

using namespace std::chrono_literals;

inline constexpr char kSecret[] = "replication-layer-test-secret";
inline constexpr uint64_t kVolSize = 64 * kMiB;
inline constexpr auto kWait = 30s;  // bound of every wait

inline std::vector<uint8_t> Pattern(size_t len, uint64_t seed) {
  std::vector<uint8_t> v(len);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < len; i += 8) {
    const uint64_t x = rng();
    for (size_t k = 0; k < 8 && i + k < len; ++k) v[i + k] = static_cast<uint8_t>(x >> (8 * k));
  }
  return v;
}

// Polls `cond` every 5 ms until it holds or `within` passed.
template <typename F>
bool WaitFor(F cond, std::chrono::milliseconds within = kWait) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  for (int i = 0; i < 1000000 && std::chrono::steady_clock::now() < deadline; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

// The membership store of the test: every leave gets epoch + 1, unless held (the answer waits
// for Release) or failing (etcd unreachable).
class FakeMembership final : public MembershipClient {
 public:
  explicit FakeMembership(uint64_t epoch) : epoch_(epoch) {}
  void ReplicaFailed(const std::string& node, const std::string& reason,
                     std::function<void(Result<uint64_t>)> done) override {
    Reactor* reactor = Reactor::Current();
    std::lock_guard lock(mu_);
    calls_.push_back(node);
    reasons_.push_back(reason);
    auto answer = [this, reactor, done = std::move(done)](bool fail) {
      Result<uint64_t> r = fail ? Result<uint64_t>(Status::Unavailable("etcd unreachable (test)"))
                                : Result<uint64_t>(++epoch_);
      reactor->Post([done, r] { done(r); });
    };
    if (hold_) {
      held_.push_back(std::move(answer));
    } else {
      answer(fail_);
    }
  }
  void ReplicaRebuilt(const std::string& node,
                      std::function<void(Result<uint64_t>)> done) override {
    Reactor* reactor = Reactor::Current();
    {
      std::lock_guard lock(mu_);
      joins_.push_back(node);
    }
    const uint64_t epoch = ++epoch_;
    reactor->Post([done = std::move(done), epoch] { done(epoch); });
  }
  std::vector<std::string> joins() const {
    std::lock_guard lock(mu_);
    return joins_;
  }
  void Hold(bool hold) {
    std::lock_guard lock(mu_);
    hold_ = hold;
  }
  void Fail(bool fail) {
    std::lock_guard lock(mu_);
    fail_ = fail;
  }
  // Answers every held call (OK unless failing).
  void Release() {
    std::vector<std::function<void(bool)>> held;
    {
      std::lock_guard lock(mu_);
      held.swap(held_);
      hold_ = false;
    }
    for (auto& a : held) a(fail_);
  }
  std::vector<std::string> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  uint64_t epoch() const { return epoch_.load(); }

 private:
  mutable std::mutex mu_;
  std::atomic<uint64_t> epoch_;
  bool hold_ = false, fail_ = false;
  std::vector<std::string> calls_, reasons_, joins_;
  std::vector<std::function<void(bool)>> held_;
};

// A request through the layer, waited on from the test thread.
struct LayerIo {
  VolumeIo io;
  std::vector<uint8_t> buf;
  std::promise<Status> promise;
  std::future<Status> future = promise.get_future();
  LayerIo(VolumeOp op, uint64_t offset, uint64_t length) {
    io.op = op;
    io.offset = offset;
    io.length = length;
    if (op == VolumeOp::kRead || op == VolumeOp::kWrite) {
      buf.resize(length);
      io.buf = buf.data();
    }
    io.ctx = this;
    io.done = [](VolumeIo* v) { static_cast<LayerIo*>(v->ctx)->promise.set_value(v->status); };
  }
  bool Done(std::chrono::milliseconds within = 0ms) {
    return future.wait_for(within) == std::future_status::ready;
  }
  Status Wait() {
    if (!Done(std::chrono::duration_cast<std::chrono::milliseconds>(kWait))) {
      return Status::IoError("test: request did not complete in time");
    }
    return future.get();
  }
};

class ReplicationCluster : public ::testing::Test {
 protected:
  static constexpr const char* kNodes[3] = {"node-a", "node-b", "node-c"};

  void SetUp() override;
  void TearDown() override;

  // (Re)opens node-a's engine, handle, reactor and changed-region record.
  void OpenTarget();
  // Destroys the layer (every request must be done), the record, closes node-a.
  void CloseTarget();
  // A new layer at the membership's epoch: node-a local (if `local`), node-b and node-c remote,
  // each in the given state.
  // Without `c`: node-c is not part of the layer (a replica placed later).
  void MakeLayer(uint32_t min_in_sync, bool local, MemberState b, std::optional<MemberState> c);
  // Loads node-a's activity log (its commits counted in log_commits_) and gives it to the layer.
  void OpenActivityLog(uint64_t max_regions = kActivityLogMaxRegions);
  // Connects a client for a remote node at `epoch`.
  std::unique_ptr<ReplicaClient> Connect(int node, uint64_t epoch);
  // Replaces node's target in the layer by a fresh connection, in `state`.
  void Reconnect(int node, MemberState state);

  // Submits on the layer's reactor.
  void Submit(LayerIo* io) {
    reactor_->Post([this, io] { layer_->Submit(&io->io); });
  }
  Status Write(uint64_t offset, const std::vector<uint8_t>& data);
  Status Flush();
  Result<std::vector<uint8_t>> Read(uint64_t offset, uint64_t length);
  // Reads straight from one replica (outside the fan-out).
  Result<std::vector<uint8_t>> ReadReplica(const std::string& node, uint64_t offset,
                                           uint64_t length);
  // Every replica in `nodes` holds `expect` at `offset` (the oracle).
  void ExpectReplicas(const std::vector<std::string>& nodes, uint64_t offset,
                      const std::vector<uint8_t>& expect);
  MemberState StateOf(const std::string& node);
  std::vector<std::pair<uint64_t, uint64_t>> ChangedRanges(const std::string& node);
  // Runs a rebuild of `target` from `source` to its end; its status and progress.
  Status Rebuild(const std::string& source, const std::string& target, Rebuilder::Options o,
                 Rebuilder::Progress* progress, const std::function<void()>& meanwhile = {});

  std::string dir_;
  Uuid uuid_;
  TcpTransport tcp_;
  FaultTransport fault_{&tcp_};
  std::unique_ptr<Engine> engines_[3];
  std::unique_ptr<ReplicaServer> servers_[3];  // [1] and [2]
  std::shared_ptr<VolumeHandle> handle_;       // node-a's volume
  Reactor* reactor_ = nullptr;
  std::unique_ptr<ChangedRegions> changed_;
  std::unique_ptr<ActivityLog> activity_;
  std::atomic<uint64_t> log_commits_{0};
  std::unique_ptr<FakeMembership> membership_;
  std::unique_ptr<ReplicationLayer> layer_;
  std::vector<uint8_t> oracle_;  // what the volume must read as
  // --replica-timeout of the clients Connect makes: long, so a loaded machine (several builds
  // on 2 cores) never times a healthy replica out; tests of timeouts set it short.
  std::chrono::milliseconds request_timeout_ = 10000ms;
};

}  // namespace shale::replication::testing
