#include "replication/replication_test_cluster.h"

#include <cstring>

namespace shale::replication::testing {

namespace {

ClusterSecret Secret() { return *ClusterSecret::FromBytes(kSecret); }

std::unique_ptr<Engine> OpenEngine(const std::string& dir) {
  EngineOptions options;
  options.data_dir = dir;
  options.default_pool_size = 256 * kMiB;
  options.reactors = 1;
  options.commit_interval_ms = 100;
  auto engine = Engine::Open(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

// One child request straight to a replica, waited on from the test thread.
struct Child {
  ChildIo child;
  std::promise<Status> promise;
  Child() {
    child.owner = this;
    child.done = [](ChildIo* c) { static_cast<Child*>(c->owner)->promise.set_value(c->io.status); };
  }
};

// Commits through `pool`'s pipeline, counting the rounds in `count` (if any).
ChangedRegions::CommitFn PoolCommit(Pool* pool, std::atomic<uint64_t>* count) {
  return [pool, count](MetaBatch batch, std::function<void(Status)> done) {
    if (count != nullptr) ++*count;
    CommitPipeline::Request req;
    req.batch = std::move(batch);
    req.flush_device = false;
    req.done = [done = std::move(done)](const Status& st) { done(st); };
    pool->pipeline().Submit(std::move(req));
  };
}

}  // namespace

void ReplicationCluster::SetUp() {
  std::string tmpl = "/tmp/shale-replication-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  dir_ = tmpl;
  uuid_ = Uuid::Random();
  oracle_.assign(kVolSize, 0);
  membership_ = std::make_unique<FakeMembership>(1);
  for (int i = 0; i < 3; ++i) {
    engines_[i] = OpenEngine(dir_ + "/" + kNodes[i]);
    ASSERT_NE(engines_[i], nullptr);
  }
  auto made = engines_[0]->CreateVolume(
      {.name = "vol", .size_bytes = kVolSize, .labels = {{kReplicaUuidLabel, uuid_.ToString()}}});
  ASSERT_TRUE(made.ok()) << made.status();
  for (int i = 1; i < 3; ++i) {
    ReplicaServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.node_name = kNodes[i];
    o.secret = Secret();
    servers_[i] = std::make_unique<ReplicaServer>(engines_[i].get(), &tcp_, std::move(o));
    ASSERT_TRUE(servers_[i]->Start().ok());
    const ReplicaAdminOptions admin{servers_[i]->address(), "node-a", Secret(), &tcp_};
    auto placed = CreateReplica(admin, {"vol", uuid_, kVolSize, ""}, 1);
    ASSERT_TRUE(placed.ok()) << placed.status();
    ASSERT_TRUE(placed->created);
  }
  OpenTarget();
}

void ReplicationCluster::TearDown() {
  fault_.HealAll();
  if (membership_) membership_->Release();
  CloseTarget();
  for (int i = 2; i >= 0; --i) {
    if (servers_[i]) servers_[i]->Stop();
    servers_[i].reset();
    if (engines_[i]) {
      EXPECT_TRUE(engines_[i]->Shutdown().ok());
    }
    engines_[i].reset();
  }
  std::filesystem::remove_all(dir_);
}

void ReplicationCluster::OpenTarget() {
  if (!engines_[0]) engines_[0] = OpenEngine(dir_ + "/" + kNodes[0]);
  ASSERT_NE(engines_[0], nullptr);
  auto info = engines_[0]->GetVolume("vol");
  ASSERT_TRUE(info.ok()) << info.status();
  auto handle = engines_[0]->OpenVolume("vol");
  ASSERT_TRUE(handle.ok()) << handle.status();
  handle_ = std::move(handle).value();
  reactor_ = handle_->reactor();
  auto changed = ChangedRegions::Load(engines_[0].get(), info->pool, info->id, kVolSize, reactor_,
                                      PoolCommit(handle_->volume().pool(), nullptr));
  ASSERT_TRUE(changed.ok()) << changed.status();
  changed_ = std::move(changed).value();
}

void ReplicationCluster::OpenActivityLog(uint64_t max_regions) {
  auto info = engines_[0]->GetVolume("vol");
  ASSERT_TRUE(info.ok()) << info.status();
  auto log = ActivityLog::Load(engines_[0].get(), info->pool, info->id, kVolSize, reactor_,
                               PoolCommit(handle_->volume().pool(), &log_commits_), max_regions);
  ASSERT_TRUE(log.ok()) << log.status();
  activity_ = std::move(log).value();
  if (layer_) reactor_->RunSync([&] { layer_->SetActivityLog(activity_.get()); });
}

void ReplicationCluster::CloseTarget() {
  // The reactor task that completed the last request may still be inside the layer.
  if (reactor_ != nullptr) reactor_->RunSync([] {});
  layer_.reset();  // closes the remote clients (blocking: never on the reactor)
  if (reactor_ != nullptr) reactor_->RunSync([] {});  // completions posted meanwhile ran
  if (activity_ != nullptr) {
    EXPECT_TRUE(WaitFor([&] {
      bool busy = false;
      reactor_->RunSync([&] { busy = activity_->busy(); });
      return !busy;
    }));
    activity_.reset();
  }
  changed_.reset();
  handle_.reset();
  reactor_ = nullptr;
  if (engines_[0]) {
    EXPECT_TRUE(engines_[0]->Shutdown().ok());
  }
  engines_[0].reset();
}

std::unique_ptr<ReplicaClient> ReplicationCluster::Connect(int node, uint64_t epoch) {
  ReplicaClientOptions o;
  o.address = servers_[node]->address();
  o.node_name = "node-a";
  o.secret = Secret();
  o.volume = "vol";
  o.volume_uuid = uuid_;
  o.size_bytes = kVolSize;
  o.epoch = epoch;
  o.transport = &fault_;
  o.completion_reactor = reactor_;
  o.connect_timeout = 5000ms;
  o.request_timeout = request_timeout_;
  auto c = ReplicaClient::Connect(std::move(o));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(c).value() : nullptr;
}

void ReplicationCluster::MakeLayer(uint32_t min_in_sync, bool local, MemberState b,
                                   std::optional<MemberState> c) {
  if (layer_) {
    reactor_->RunSync([] {});  // a task that completed a request may still be in the layer
    layer_.reset();
  }
  ReplicationLayer::Options o;
  o.min_in_sync = min_in_sync;
  o.epoch = membership_->epoch();
  o.membership_timeout = 3000ms;
  layer_ = std::make_unique<ReplicationLayer>(reactor_, "vol", kVolSize, changed_.get(),
                                              membership_.get(), o);
  std::vector<std::pair<std::shared_ptr<ReplicaTarget>, MemberState>> targets;
  if (local) {
    targets.emplace_back(std::make_shared<LocalReplica>("node-a", &handle_->volume()),
                         MemberState::kInSync);
  }
  targets.emplace_back(std::make_shared<RemoteReplica>("node-b", Connect(1, o.epoch)), b);
  if (c) targets.emplace_back(std::make_shared<RemoteReplica>("node-c", Connect(2, o.epoch)), *c);
  reactor_->RunSync([&] {
    for (auto& [t, state] : targets) layer_->SetReplica(t, state);
  });
}

void ReplicationCluster::Reconnect(int node, MemberState state) {
  auto target = std::make_shared<RemoteReplica>(kNodes[node], Connect(node, membership_->epoch()));
  std::shared_ptr<ReplicaTarget> old;
  reactor_->RunSync([&] {
    old = layer_->Target(kNodes[node]);
    layer_->SetReplica(target, state);
  });
  old.reset();  // here, not on the reactor: closing a client joins its threads
}

Status ReplicationCluster::Write(uint64_t offset, const std::vector<uint8_t>& data) {
  LayerIo io(VolumeOp::kWrite, offset, data.size());
  io.buf = data;
  io.io.buf = io.buf.data();
  Submit(&io);
  Status st = io.Wait();
  if (st.ok()) std::memcpy(oracle_.data() + offset, data.data(), data.size());
  return st;
}

Status ReplicationCluster::Flush() {
  LayerIo io(VolumeOp::kFlush, 0, 0);
  Submit(&io);
  return io.Wait();
}

Result<std::vector<uint8_t>> ReplicationCluster::Read(uint64_t offset, uint64_t length) {
  LayerIo io(VolumeOp::kRead, offset, length);
  Submit(&io);
  SHALE_RETURN_IF_ERROR(io.Wait());
  return std::move(io.buf);
}

Result<std::vector<uint8_t>> ReplicationCluster::ReadReplica(const std::string& node,
                                                             uint64_t offset, uint64_t length) {
  std::vector<uint8_t> out(length);
  for (uint64_t done = 0; done < length; done += kMaxIoBytes) {
    Child c;
    c.child.io.op = VolumeOp::kRead;
    c.child.io.offset = offset + done;
    c.child.io.length = std::min<uint64_t>(kMaxIoBytes, length - done);
    c.child.io.buf = out.data() + done;
    auto f = c.promise.get_future();
    reactor_->Post([&] { layer_->SubmitTo(node, &c.child); });
    if (f.wait_for(kWait) != std::future_status::ready) return Status::IoError("read timed out");
    SHALE_RETURN_IF_ERROR(f.get());
  }
  return out;
}

void ReplicationCluster::ExpectReplicas(const std::vector<std::string>& nodes, uint64_t offset,
                                        const std::vector<uint8_t>& expect) {
  for (const std::string& n : nodes) {
    auto got = ReadReplica(n, offset, expect.size());
    ASSERT_TRUE(got.ok()) << n << ": " << got.status();
    EXPECT_TRUE(*got == expect) << n << " differs from the oracle in [" << offset << ", +"
                                << expect.size() << ")";
  }
}

MemberState ReplicationCluster::StateOf(const std::string& node) {
  MemberState state = MemberState::kOut;
  reactor_->RunSync([&] {
    for (const ReplicaStatus& r : layer_->Replicas()) {
      if (r.node == node) state = r.state;
    }
  });
  return state;
}

std::vector<std::pair<uint64_t, uint64_t>> ReplicationCluster::ChangedRanges(
    const std::string& node) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  reactor_->RunSync([&] { out = changed_->Ranges(node); });
  return out;
}

Status ReplicationCluster::Rebuild(const std::string& source, const std::string& target,
                                   Rebuilder::Options o, Rebuilder::Progress* progress,
                                   const std::function<void()>& meanwhile) {
  Rebuilder rebuilder(reactor_, layer_.get(), changed_.get(), source, target, o);
  std::promise<Status> p;
  auto f = p.get_future();
  reactor_->Post([&] { rebuilder.Start([&](Status st) { p.set_value(st); }); });
  if (meanwhile) meanwhile();
  if (f.wait_for(2 * kWait) != std::future_status::ready) {
    reactor_->RunSync([&] { rebuilder.Cancel(); });
    f.wait();  // the window in flight ends
    return Status::IoError("test: rebuild did not finish in time");
  }
  reactor_->RunSync([&] { *progress = rebuilder.progress(); });
  return f.get();
}

}  // namespace shale::replication::testing
