// ControlService against a real Engine on a temporary data dir, handlers called directly: every
// request field is validated (bad input is INVALID_ARGUMENT with the shale-error trailer, never
// a crash), engine errors map to the documented gRPC codes, and results mirror the engine.
#include "daemon/control_service.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "api/grpc_status.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "daemon/nbd_export_gate.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"
#include "engine/volume/volume_test_util.h"
#include "nbd/export.h"
#include "nbd/protocol.h"
#include "nbd/server.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {
namespace {

class ControlServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shale-ctl-XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 256 * kMiB;
    options.commit_interval_ms = 100;
    Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    snapshots_ = std::make_unique<snapshot::SnapshotManager>(engine_.get());
    ASSERT_TRUE(snapshots_->Start().ok());
    lifecycle_ = std::make_unique<VolumeLifecycle>(engine_.get(), snapshots_.get(), nullptr);
    service_ = std::make_unique<ControlService>(
        lifecycle_.get(),
        ControlService::DaemonInfo{.version = "9.9.9", .control_endpoint = "unix:///test.sock"});
  }
  void TearDown() override {
    service_.reset();
    lifecycle_.reset();
    if (snapshots_) snapshots_->Stop();
    snapshots_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }

  grpc::Status CreateVolume(const std::string& name, uint64_t size, v1::Volume* out = nullptr) {
    v1::CreateVolumeRequest req;
    req.set_name(name);
    req.set_size_bytes(size);
    v1::Volume resp;
    grpc::ServerContext ctx;
    grpc::Status st = service_->CreateVolume(&ctx, &req, &resp);
    if (out != nullptr) *out = resp;
    return st;
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<snapshot::SnapshotManager> snapshots_;
  std::unique_ptr<VolumeLifecycle> lifecycle_;
  std::unique_ptr<ControlService> service_;
};

TEST_F(ControlServiceTest, StatusDescribesTheDaemon) {
  v1::GetStatusRequest req;
  v1::GetStatusResponse resp;
  grpc::ServerContext ctx;
  ASSERT_TRUE(service_->GetStatus(&ctx, &req, &resp).ok());
  EXPECT_EQ(resp.version(), "9.9.9");
  EXPECT_EQ(resp.data_dir(), dir_ + "/data");
  EXPECT_EQ(resp.control_endpoint(), "unix:///test.sock");
  EXPECT_EQ(resp.reactors(), 1u);
  EXPECT_EQ(resp.io_backend(), "io_uring");
  EXPECT_EQ(resp.pool_count(), 1u);  // the default pool
  EXPECT_EQ(resp.volume_count(), 0u);
  EXPECT_GT(resp.pid(), 0u);
}

TEST_F(ControlServiceTest, VolumeLifecycle) {
  v1::Volume created;
  ASSERT_TRUE(CreateVolume("vol-1", 10 * kMiB + 1, &created).ok());
  EXPECT_EQ(created.name(), "vol-1");
  EXPECT_EQ(created.pool(), "default");
  EXPECT_EQ(created.size_bytes(), 10 * kMiB + 4096);  // rounded up to 4 KiB
  EXPECT_FALSE(created.read_only());
  EXPECT_GT(created.created_unix_ns(), 0u);

  EXPECT_EQ(CreateVolume("vol-1", kMiB).error_code(), grpc::StatusCode::ALREADY_EXISTS);

  {
    v1::ListVolumesRequest req;
    v1::ListVolumesResponse resp;
    grpc::ServerContext ctx;
    ASSERT_TRUE(service_->ListVolumes(&ctx, &req, &resp).ok());
    ASSERT_EQ(resp.volumes_size(), 1);
    EXPECT_EQ(resp.volumes(0).name(), "vol-1");

    req.set_pool("default");
    resp.Clear();
    grpc::ServerContext ctx2;
    ASSERT_TRUE(service_->ListVolumes(&ctx2, &req, &resp).ok());
    EXPECT_EQ(resp.volumes_size(), 1);

    req.set_pool("nope");
    grpc::ServerContext ctx3;
    EXPECT_EQ(service_->ListVolumes(&ctx3, &req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::ResizeVolumeRequest req;
    req.set_name("vol-1");
    req.set_size_bytes(20 * kMiB);
    v1::Volume resp;
    grpc::ServerContext ctx;
    ASSERT_TRUE(service_->ResizeVolume(&ctx, &req, &resp).ok());
    EXPECT_EQ(resp.size_bytes(), 20 * kMiB);

    req.set_size_bytes(kMiB);  // shrinking
    grpc::ServerContext ctx2;
    grpc::Status st = service_->ResizeVolume(&ctx2, &req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("shrink"), std::string::npos) << st.error_message();
  }
  {
    v1::DeleteVolumeRequest req;
    req.set_name("vol-1");
    v1::DeleteVolumeResponse resp;
    grpc::ServerContext ctx;
    ASSERT_TRUE(service_->DeleteVolume(&ctx, &req, &resp).ok());
    grpc::ServerContext ctx2;
    grpc::Status st = service_->DeleteVolume(&ctx2, &req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(st.error_message(), "volume 'vol-1' not found");
  }
}

// Over a real channel: errors carry the "shale-error" trailer that lets clients tell shaled's
// refusals from transport failures; successes do not.
TEST_F(ControlServiceTest, ErrorsCarryTheShaleErrorTrailer) {
  const std::string endpoint = "unix://" + dir_ + "/test.sock";
  grpc::ServerBuilder builder;
  builder.AddListeningPort(endpoint, grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub =
      v1::Control::NewStub(grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));

  {
    grpc::ClientContext ctx;
    v1::GetVolumeRequest req;
    req.set_name("missing");
    v1::Volume resp;
    grpc::Status st = stub->GetVolume(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(st.error_message(), "volume 'missing' not found");
    const auto& trailers = ctx.GetServerTrailingMetadata();
    auto it = trailers.find(api::kShaleErrorMetadataKey);
    ASSERT_NE(it, trailers.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "not found");
  }
  {
    grpc::ClientContext ctx;
    v1::GetStatusResponse resp;
    ASSERT_TRUE(stub->GetStatus(&ctx, v1::GetStatusRequest(), &resp).ok());
    EXPECT_EQ(ctx.GetServerTrailingMetadata().count(api::kShaleErrorMetadataKey), 0u);
  }
  server->Shutdown();
}

// Connects to an NBD server and negotiates `name` with NBD_OPT_GO; returns the socket (or -1).
int ConnectNbdClient(const std::string& address, const std::string& name, uint16_t* port) {
  const size_t colon = address.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr);
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  *port = ntohs(local.sin_port);
  auto read_exact = [fd](size_t n) {
    std::string out(n, '\0');
    size_t got = 0;
    while (got < n) {
      const ssize_t r = recv(fd, out.data() + got, n - got, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return std::string();
      got += static_cast<size_t>(r);
    }
    return out;
  };
  if (read_exact(nbd::kGreetingSize).empty()) return close(fd), -1;
  std::string msg;
  nbd::AppendU32(&msg, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes);
  nbd::AppendU64(&msg, nbd::kOptionMagic);
  nbd::AppendU32(&msg, nbd::kOptGo);
  nbd::AppendU32(&msg, static_cast<uint32_t>(4 + name.size() + 2));
  nbd::AppendU32(&msg, static_cast<uint32_t>(name.size()));
  msg += name;
  nbd::AppendU16(&msg, 0);
  if (send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size())) {
    return close(fd), -1;
  }
  while (true) {
    const std::string header = read_exact(nbd::kOptionReplyHeaderSize);
    if (header.empty()) return close(fd), -1;
    const auto* p = reinterpret_cast<const uint8_t*>(header.data());
    read_exact(nbd::GetU32(p + 16));
    if (nbd::GetU32(p + 12) == nbd::kRepAck) return fd;
    if (nbd::GetU32(p + 12) & nbd::kRepFlagError) return close(fd), -1;
  }
}

// With an NBD server: volumes show their export and clients, ListExports lists them, and a
// volume with clients is only deleted with force (the refusal names the clients).
TEST_F(ControlServiceTest, NbdExportsAndDeletingVolumesWithClients) {
  std::vector<Reactor*> reactors;
  for (const auto& r : engine_->reactors()) reactors.push_back(r.get());
  nbd::EngineExportResolver resolver(engine_.get(), snapshots_.get());
  nbd::NbdServerOptions options;
  options.tcp_address = "127.0.0.1:0";
  options.unix_socket = "";
  nbd::NbdServer server(reactors, &resolver, options);
  ASSERT_TRUE(server.Start().ok());
  NbdExportGate gate(&server);
  lifecycle_->SetExportGate(&gate);
  service_ = std::make_unique<ControlService>(
      lifecycle_.get(), ControlService::DaemonInfo{.version = "9.9.9", .control_endpoint = "x"},
      &server);
  ASSERT_TRUE(CreateVolume("v", 64 * kMiB).ok());
  ASSERT_TRUE(CreateVolume("w", kMiB).ok());
  uint16_t port = 0;
  const int fd = ConnectNbdClient(server.tcp_address(), "v", &port);
  ASSERT_GE(fd, 0);

  v1::GetVolumeRequest get;
  get.set_name("v");
  v1::Volume volume;
  grpc::ServerContext ctx1;
  ASSERT_TRUE(service_->GetVolume(&ctx1, &get, &volume).ok());
  EXPECT_EQ(volume.export_uri(), "nbd://" + server.tcp_address() + "/v");
  EXPECT_EQ(volume.nbd_clients(), 1u);

  v1::ListExportsResponse exports;
  grpc::ServerContext ctx2;
  ASSERT_TRUE(service_->ListExports(&ctx2, nullptr, &exports).ok());
  ASSERT_EQ(exports.exports_size(), 2);
  EXPECT_EQ(exports.exports(0).name(), "v");
  ASSERT_EQ(exports.exports(0).clients_size(), 1);
  EXPECT_EQ(exports.exports(0).clients(0).peer(), "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(exports.exports(1).clients_size(), 0);

  v1::GetStatusResponse status;
  grpc::ServerContext ctx3;
  ASSERT_TRUE(service_->GetStatus(&ctx3, nullptr, &status).ok());
  EXPECT_TRUE(status.nbd().enabled());
  EXPECT_EQ(status.nbd().tcp_address(), server.tcp_address());
  EXPECT_EQ(status.nbd().connections(), 1u);

  v1::DeleteVolumeRequest del;
  del.set_name("v");
  v1::DeleteVolumeResponse deleted;
  grpc::ServerContext ctx4;
  grpc::Status st = service_->DeleteVolume(&ctx4, &del, &deleted);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(
      st.error_message().find("1 connected NBD client(s): tcp 127.0.0.1:" + std::to_string(port)),
      std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("--force"), std::string::npos) << st.error_message();

  del.set_force(true);
  grpc::ServerContext ctx5;
  st = service_->DeleteVolume(&ctx5, &del, &deleted);
  EXPECT_TRUE(st.ok()) << st.error_message();
  char byte;
  EXPECT_EQ(recv(fd, &byte, 1, 0), 0) << "the client was disconnected";
  close(fd);
  grpc::ServerContext ctx6;
  EXPECT_EQ(service_->GetVolume(&ctx6, &get, &volume).error_code(), grpc::StatusCode::NOT_FOUND);
  service_.reset();
  server.Stop();
}

TEST_F(ControlServiceTest, CreateVolumeRejectsBadFields) {
  auto code = [&](const v1::CreateVolumeRequest& req) {
    v1::Volume resp;
    grpc::ServerContext ctx;
    return service_->CreateVolume(&ctx, &req, &resp).error_code();
  };
  v1::CreateVolumeRequest good;
  good.set_name("ok");
  good.set_size_bytes(kMiB);

  for (const std::string& name :
       {std::string(), std::string("a/b"), std::string("a@b"), std::string(300, 'n'),
        std::string("-lead"), std::string("nul\0x", 5)}) {
    v1::CreateVolumeRequest req = good;
    req.set_name(name);
    EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT) << name;
  }
  v1::CreateVolumeRequest req = good;
  req.set_size_bytes(0);
  EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT);
  req = good;
  req.set_size_bytes(UINT64_MAX);
  EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT);
  req = good;
  req.set_pool("bad/pool");
  EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT);
  req = good;
  req.set_pool("missing");
  EXPECT_EQ(code(req), grpc::StatusCode::NOT_FOUND);
  req = good;
  (*req.mutable_labels())["bad key"] = "v";
  EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT);
  req = good;
  for (size_t i = 0; i <= kMaxLabels; ++i) (*req.mutable_labels())["k" + std::to_string(i)] = "v";
  EXPECT_EQ(code(req), grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(engine_->ListVolumes().size(), 0u) << "no bad request created anything";
  EXPECT_EQ(code(good), grpc::StatusCode::OK);
}

TEST_F(ControlServiceTest, LookupsAndResizeRejectBadFields) {
  v1::Volume volume;
  v1::GetVolumeRequest get;
  get.set_name("x/y");
  grpc::ServerContext c1;
  EXPECT_EQ(service_->GetVolume(&c1, &get, &volume).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  get.set_name("missing");
  grpc::ServerContext c2;
  EXPECT_EQ(service_->GetVolume(&c2, &get, &volume).error_code(), grpc::StatusCode::NOT_FOUND);

  ASSERT_TRUE(CreateVolume("grow", kMiB).ok());
  v1::ResizeVolumeRequest resize;
  resize.set_name("grow");
  for (uint64_t size : {uint64_t{0}, UINT64_MAX, UINT64_MAX - 100}) {
    resize.set_size_bytes(size);
    grpc::ServerContext ctx;
    EXPECT_EQ(service_->ResizeVolume(&ctx, &resize, &volume).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << size;
  }
  EXPECT_EQ(engine_->GetVolume("grow")->size_bytes, kMiB);

  v1::Pool pool;
  v1::GetPoolRequest get_pool;
  get_pool.set_name("");
  grpc::ServerContext c3;
  EXPECT_EQ(service_->GetPool(&c3, &get_pool, &pool).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::CheckPoolRequest check;
  check.set_name(std::string(300, 'p'));
  v1::CheckPoolResponse report;
  grpc::ServerContext c4;
  EXPECT_EQ(service_->CheckPoolWork(&c4, &check, &report, nullptr).code(),
            StatusCode::kInvalidArgument);
  v1::DeletePoolRequest del;
  del.set_name("a@b");
  v1::DeletePoolResponse deleted;
  grpc::ServerContext c5;
  EXPECT_EQ(service_->DeletePool(&c5, &del, &deleted).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ControlServiceTest, PoolLifecycleAndErrors) {
  auto create = [&](v1::CreatePoolRequest req, v1::Pool* out) {
    grpc::ServerContext ctx;
    return service_->CreatePool(&ctx, &req, out);
  };
  v1::CreatePoolRequest req;
  req.set_name("p2");
  req.set_device_path(dir_ + "/p2.img");
  req.set_size_bytes(64 * kMiB);
  v1::Pool pool;

  v1::CreatePoolRequest bad = req;
  bad.set_device_path("relative/p2.img");
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad.set_device_path("");
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad.set_device_path("/" + std::string(5000, 'd'));
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;
  bad.set_cluster_size(3 * 1024);
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;
  bad.set_size_bytes(0);  // a missing file needs a size
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;
  bad.set_name("default");
  EXPECT_EQ(create(bad, &pool).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/p2.img"));

  ASSERT_TRUE(create(req, &pool).ok());
  EXPECT_EQ(pool.name(), "p2");
  EXPECT_EQ(pool.state(), v1::POOL_STATE_ONLINE);
  EXPECT_EQ(pool.cluster_size(), kDefaultClusterSize);
  EXPECT_GT(pool.capacity_bytes(), 0u);
  EXPECT_EQ(pool.free_bytes() + pool.used_bytes(), pool.capacity_bytes());
  EXPECT_EQ(pool.device_path(), dir_ + "/p2.img");

  v1::CreateVolumeRequest vol;
  vol.set_name("in-p2");
  vol.set_size_bytes(kMiB);
  vol.set_pool("p2");
  v1::Volume volume;
  grpc::ServerContext cv;
  ASSERT_TRUE(service_->CreateVolume(&cv, &vol, &volume).ok());

  v1::CheckPoolRequest check;
  check.set_name("p2");
  v1::CheckPoolResponse report;
  grpc::ServerContext cc;
  ProgressCounter progress;
  ASSERT_TRUE(service_->CheckPoolWork(&cc, &check, &report, &progress).ok());
  EXPECT_GT(progress.total(), 0u) << "the check reports its progress";
  EXPECT_EQ(progress.done(), progress.total());
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(report.problems_size(), 0);

  v1::DeletePoolRequest del;
  del.set_name("p2");
  v1::DeletePoolResponse deleted;
  grpc::ServerContext cd1;
  grpc::Status st = service_->DeletePool(&cd1, &del, &deleted);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("in-p2"), std::string::npos) << st.error_message();
  del.set_force(true);
  grpc::ServerContext cd2;
  ASSERT_TRUE(service_->DeletePool(&cd2, &del, &deleted).ok());
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/p2.img"));
  EXPECT_FALSE(engine_->GetVolume("in-p2").ok());

  v1::ListPoolsRequest list;
  v1::ListPoolsResponse pools;
  grpc::ServerContext cl;
  ASSERT_TRUE(service_->ListPools(&cl, &list, &pools).ok());
  ASSERT_EQ(pools.pools_size(), 1);
  EXPECT_EQ(pools.pools(0).name(), "default");
}

// ---------------------------------------------------------------------------------------------
// Snapshots and clones

// Calls a unary handler with a fresh server context.
template <typename Req, typename Resp>
grpc::Status Call(ControlService* service,
                  grpc::Status (ControlService::*rpc)(grpc::ServerContext*, const Req*, Resp*),
                  const Req& req, Resp* resp) {
  grpc::ServerContext ctx;
  return (service->*rpc)(&ctx, &req, resp);
}

// Calls a long operation's work without its stream (progress_stream.h), as the gRPC status.
template <typename Req, typename Resp>
grpc::Status Call(ControlService* service,
                  Status (ControlService::*work)(grpc::ServerContext*, const Req*, Resp*,
                                                 ProgressCounter*),
                  const Req& req, Resp* resp, ProgressCounter* progress = nullptr) {
  grpc::ServerContext ctx;
  return api::ToGrpcStatus((service->*work)(&ctx, &req, resp, progress));
}

class ControlServiceSnapshotTest : public ControlServiceTest {
 protected:
  Status Write(const std::string& volume, uint64_t offset, const std::vector<uint8_t>& data) {
    Result<std::shared_ptr<VolumeHandle>> h = engine_->OpenVolume(volume);
    if (!h.ok()) return h.status();
    AlignedBuffer buf = AllocateAligned(data.size());
    std::memcpy(buf.get(), data.data(), data.size());
    SHALE_RETURN_IF_ERROR(::shale::testing::RunVolumeIo((*h)->volume(), VolumeOp::kWrite, offset,
                                                        data.size(), buf.get()));
    return ::shale::testing::RunVolumeIo((*h)->volume(), VolumeOp::kFlush, 0, 0, nullptr);
  }
  grpc::Status Snap(const std::string& volume, const std::string& name, v1::Snapshot* out,
                    std::map<std::string, std::string> labels = {}, bool wait_digest = false) {
    v1::CreateSnapshotRequest req;
    req.set_volume(volume);
    req.set_name(name);
    req.mutable_labels()->insert(labels.begin(), labels.end());
    req.set_wait_digest(wait_digest);
    return Call(service_.get(), &ControlService::CreateSnapshot, req, out);
  }
  grpc::Status Clone(const std::string& source, const std::string& name, bool read_only,
                     v1::Volume* out) {
    v1::CloneVolumeRequest req;
    req.set_source(source);
    req.set_name(name);
    req.set_read_only(read_only);
    return Call(service_.get(), &ControlService::CloneVolume, req, out);
  }
  grpc::Status GetSnap(const std::string& name, v1::Snapshot* out) {
    v1::GetSnapshotRequest req;
    req.set_name(name);
    return Call(service_.get(), &ControlService::GetSnapshot, req, out);
  }
  grpc::Status DeleteSnap(const std::string& name, bool force, v1::DeleteSnapshotResponse* out) {
    v1::DeleteSnapshotRequest req;
    req.set_name(name);
    req.set_force(force);
    return Call(service_.get(), &ControlService::DeleteSnapshot, req, out);
  }
  grpc::Status Revert(const std::string& volume, const std::string& snap, v1::Volume* out) {
    v1::RevertVolumeRequest req;
    req.set_name(volume);
    req.set_snapshot(snap);
    return Call(service_.get(), &ControlService::RevertVolume, req, out);
  }
};

TEST_F(ControlServiceSnapshotTest, SnapshotRpcsRejectBadFields) {
  ASSERT_TRUE(CreateVolume("v", 4 * kMiB).ok());
  v1::Snapshot snap;
  EXPECT_EQ(Snap("", "s", &snap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", "", &snap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", "a@b", &snap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", "a/b", &snap).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", std::string(300, 's'), &snap).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", "s", &snap, {{"bad key", "x"}}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Snap("v", "s", &snap, {{"k", "line\nbreak"}}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  for (const std::string& ref : {std::string(), std::string("v"), std::string("v@"),
                                 std::string("@s"), std::string("v@s@t"), std::string("v/x@s")}) {
    v1::DeleteSnapshotResponse deleted;
    EXPECT_EQ(GetSnap(ref, &snap).error_code(), grpc::StatusCode::INVALID_ARGUMENT) << ref;
    EXPECT_EQ(DeleteSnap(ref, false, &deleted).error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << ref;
    v1::VerifySnapshotRequest verify;
    verify.set_name(ref);
    v1::VerifySnapshotResponse verified;
    EXPECT_EQ(Call(service_.get(), &ControlService::VerifySnapshot, verify, &verified).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << ref;
  }
  v1::ListSnapshotsRequest list;
  list.set_volume("a/b");
  v1::ListSnapshotsResponse listed;
  EXPECT_EQ(Call(service_.get(), &ControlService::ListSnapshots, list, &listed).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // Streams: paths must be absolute paths on shaled's host.
  v1::ExportSnapshotRequest exp;
  exp.set_name("v@s");
  v1::ExportSnapshotResponse exported;
  for (const std::string& path : {std::string(), std::string("relative.stream"),
                                  "/" + std::string(5000, 'p'), std::string("/a\0b", 4)}) {
    exp.set_path(path);
    EXPECT_EQ(
        Call(service_.get(), &ControlService::ExportSnapshotWork, exp, &exported).error_code(),
        grpc::StatusCode::INVALID_ARGUMENT)
        << path;
  }
  exp.set_path(dir_ + "/s.stream");
  exp.set_base("no-at");
  EXPECT_EQ(Call(service_.get(), &ControlService::ExportSnapshotWork, exp, &exported).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::ImportSnapshotRequest imp;
  v1::ImportSnapshotResponse imported;
  imp.set_path("rel");
  imp.set_volume("w");
  EXPECT_EQ(Call(service_.get(), &ControlService::ImportSnapshotWork, imp, &imported).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  imp.set_path(dir_ + "/s.stream");
  imp.set_volume("");
  EXPECT_EQ(Call(service_.get(), &ControlService::ImportSnapshotWork, imp, &imported).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  imp.set_volume("w");
  imp.set_pool("bad/pool");
  EXPECT_EQ(Call(service_.get(), &ControlService::ImportSnapshotWork, imp, &imported).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::Volume volume;
  EXPECT_EQ(Clone("", "c", false, &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Clone("v@", "c", false, &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Clone("v", "", false, &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Clone("v", "c@x", false, &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::CloneVolumeRequest clone;
  clone.set_source("v");
  clone.set_name("c");
  (*clone.mutable_labels())["bad key"] = "x";
  EXPECT_EQ(Call(service_.get(), &ControlService::CloneVolume, clone, &volume).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  EXPECT_EQ(Revert("v", "", &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Revert("v", "a/b", &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Revert("v", "v@", &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Revert("", "s", &volume).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  v1::FlattenVolumeRequest flatten;
  flatten.set_name("x/y");
  grpc::ServerContext ctx;
  EXPECT_EQ(service_->FlattenVolume(&ctx, &flatten, nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // Nothing was created by a bad request.
  Result<std::vector<snapshot::SnapshotInfo>> snaps = snapshots_->List({.include_implicit = true});
  ASSERT_TRUE(snaps.ok());
  EXPECT_TRUE(snaps->empty());
  EXPECT_EQ(engine_->ListVolumes().size(), 1u);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/s.stream"));
}

TEST_F(ControlServiceSnapshotTest, MissingThingsAreNotFound) {
  ASSERT_TRUE(CreateVolume("v", 4 * kMiB).ok());
  v1::Snapshot snap;
  v1::Volume volume;
  v1::DeleteSnapshotResponse deleted;
  grpc::Status st = Snap("missing", "s", &snap);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  st = GetSnap("v@nope", &snap);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("v@nope"), std::string::npos) << st.error_message();
  EXPECT_EQ(DeleteSnap("v@nope", false, &deleted).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(DeleteSnap("v@nope", true, &deleted).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Clone("v@nope", "c", false, &volume).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Clone("missing", "c", false, &volume).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Revert("v", "nope", &volume).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Revert("missing", "s", &volume).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::ImportSnapshotRequest imp;
  imp.set_path(dir_ + "/no-such.stream");
  imp.set_volume("w");
  v1::ImportSnapshotResponse imported;
  st = Call(service_.get(), &ControlService::ImportSnapshotWork, imp, &imported);
  EXPECT_NE(st.error_code(), grpc::StatusCode::OK);
  EXPECT_NE(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "a valid request";
  ASSERT_TRUE(Snap("v", "s", &snap).ok());
  EXPECT_EQ(Snap("v", "s", &snap).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Clone("v@s", "v", false, &volume).error_code(), grpc::StatusCode::ALREADY_EXISTS);
}

// The whole user-level flow through the handlers: labelled snapshot with its digest, listing,
// read-only clone with provenance and space, delete of a snapshot clones depend on, verify,
// export/import round trip, revert.
TEST_F(ControlServiceSnapshotTest, SnapshotsClonesAndProvenance) {
  ASSERT_TRUE(CreateVolume("data", 8 * kMiB).ok());
  const std::vector<uint8_t> a = ::shale::testing::Pattern(2 * kMiB, 1);
  ASSERT_TRUE(Write("data", 0, a).ok());

  v1::Snapshot snap;
  ASSERT_TRUE(Snap("data", "v1", &snap, {{"source", "https://example.com/d.csv"}}, true).ok());
  EXPECT_EQ(snap.name(), "data@v1");
  EXPECT_EQ(snap.volume(), "data");
  EXPECT_EQ(snap.snapshot(), "v1");
  EXPECT_EQ(snap.pool(), "default");
  EXPECT_TRUE(snap.volume_exists());
  EXPECT_EQ(snap.size_bytes(), 8 * kMiB);
  EXPECT_GT(snap.created_unix_ns(), 0u);
  EXPECT_EQ(snap.labels().at("source"), "https://example.com/d.csv");
  EXPECT_EQ(snap.digest_state(), v1::DIGEST_STATE_READY);
  ASSERT_EQ(snap.digest().size(), 32u);
  const std::string digest = snap.digest();

  v1::Snapshot got;
  ASSERT_TRUE(GetSnap("data@v1", &got).ok());
  EXPECT_EQ(got.digest(), digest);
  EXPECT_EQ(got.data_bytes(), a.size());

  v1::Volume clone;
  ASSERT_TRUE(Clone("data@v1", "ro", true, &clone).ok());
  EXPECT_EQ(clone.name(), "ro");
  EXPECT_TRUE(clone.read_only());
  EXPECT_EQ(clone.clone().source(), "data@v1");
  EXPECT_EQ(clone.clone().source_digest(), digest);
  EXPECT_TRUE(clone.clone().read_only());
  EXPECT_TRUE(clone.clone().source_exists());
  EXPECT_EQ(clone.space().owned_bytes(), 0u);
  EXPECT_EQ(clone.space().shared_bytes(), a.size());

  // A clone of the live volume goes through an implicit snapshot, hidden by default.
  v1::Volume live_clone;
  ASSERT_TRUE(Clone("data", "rw", false, &live_clone).ok());
  EXPECT_TRUE(live_clone.clone().implicit_source());
  EXPECT_FALSE(live_clone.read_only());
  v1::ListSnapshotsRequest list;
  v1::ListSnapshotsResponse listed;
  ASSERT_TRUE(Call(service_.get(), &ControlService::ListSnapshots, list, &listed).ok());
  ASSERT_EQ(listed.snapshots_size(), 1);
  EXPECT_EQ(listed.snapshots(0).name(), "data@v1");
  ASSERT_EQ(listed.snapshots(0).clones_size(), 1);
  EXPECT_EQ(listed.snapshots(0).clones(0), "ro");
  list.set_include_implicit(true);
  listed.Clear();
  ASSERT_TRUE(Call(service_.get(), &ControlService::ListSnapshots, list, &listed).ok());
  EXPECT_EQ(listed.snapshots_size(), 2);

  v1::ListClonesResponse clones;
  ASSERT_TRUE(
      Call(service_.get(), &ControlService::ListClones, v1::ListClonesRequest(), &clones).ok());
  ASSERT_EQ(clones.clones_size(), 2);
  EXPECT_EQ(clones.clones(0).volume(), "ro");
  EXPECT_EQ(clones.clones(1).volume(), "rw");
  v1::ListVolumesResponse volumes;
  ASSERT_TRUE(
      Call(service_.get(), &ControlService::ListVolumes, v1::ListVolumesRequest(), &volumes).ok());
  ASSERT_EQ(volumes.volumes_size(), 3);
  for (const v1::Volume& v : volumes.volumes()) {
    EXPECT_EQ(v.has_clone(), v.name() != "data") << v.name();
  }

  v1::VerifySnapshotRequest verify;
  verify.set_name("data@v1");
  v1::VerifySnapshotResponse verified;
  ASSERT_TRUE(Call(service_.get(), &ControlService::VerifySnapshot, verify, &verified).ok());
  EXPECT_EQ(verified.digest(), digest);

  // Export and import: the digest travels with the data.
  v1::ExportSnapshotRequest exp;
  exp.set_name("data@v1");
  exp.set_path(dir_ + "/v1.stream");
  v1::ExportSnapshotResponse exported;
  ProgressCounter export_progress;
  ASSERT_TRUE(
      Call(service_.get(), &ControlService::ExportSnapshotWork, exp, &exported, &export_progress)
          .ok());
  EXPECT_EQ(exported.digest(), digest);
  EXPECT_EQ(export_progress.total(), engine_->GetVolume("data")->size_bytes)
      << "export progress counts the snapshot's bytes";
  EXPECT_EQ(export_progress.done(), export_progress.total());
  EXPECT_EQ(exported.data_bytes(), a.size());
  EXPECT_EQ(Call(service_.get(), &ControlService::ExportSnapshotWork, exp, &exported).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  v1::ImportSnapshotRequest imp;
  imp.set_path(dir_ + "/v1.stream");
  imp.set_volume("copy");
  v1::ImportSnapshotResponse imported;
  ProgressCounter import_progress;
  grpc::Status st =
      Call(service_.get(), &ControlService::ImportSnapshotWork, imp, &imported, &import_progress);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(import_progress.total(), std::filesystem::file_size(dir_ + "/v1.stream"))
      << "import progress counts the stream file's bytes";
  EXPECT_EQ(import_progress.done(), imported.stream_bytes());
  EXPECT_TRUE(imported.created_volume());
  EXPECT_EQ(imported.snapshot().name(), "copy@v1");
  EXPECT_EQ(imported.snapshot().digest(), digest);
  EXPECT_EQ(imported.snapshot().labels().at("source"), "https://example.com/d.csv");

  // Deleting the source snapshot keeps the clone working and names it.
  v1::DeleteSnapshotResponse deleted;
  ASSERT_TRUE(DeleteSnap("data@v1", false, &deleted).ok());
  ASSERT_EQ(deleted.still_read_by_size(), 1);
  EXPECT_EQ(deleted.still_read_by(0), "ro");
  v1::GetVolumeRequest get;
  get.set_name("ro");
  v1::Volume ro;
  ASSERT_TRUE(Call(service_.get(), &ControlService::GetVolume, get, &ro).ok());
  EXPECT_FALSE(ro.clone().source_exists());
  EXPECT_EQ(ro.clone().source_digest(), digest);

  // Revert: back to the snapshot's content.
  ASSERT_TRUE(Snap("data", "v2", &snap).ok());
  ASSERT_TRUE(Write("data", 0, ::shale::testing::Pattern(kMiB, 2)).ok());
  v1::Volume reverted;
  st = Revert("data", "data@v2", &reverted);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(reverted.name(), "data");
  EXPECT_EQ(Revert("data", "other@v2", &reverted).error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << "a snapshot of another volume";

  // Volume delete goes through the snapshot layer: the implicit snapshot goes with its clone.
  v1::DeleteVolumeRequest del;
  del.set_name("rw");
  v1::DeleteVolumeResponse gone;
  ASSERT_TRUE(Call(service_.get(), &ControlService::DeleteVolume, del, &gone).ok());
  listed.Clear();
  ASSERT_TRUE(Call(service_.get(), &ControlService::ListSnapshots, list, &listed).ok());
  EXPECT_EQ(listed.snapshots_size(), 2);  // data@v2, copy@v1
  for (const v1::Snapshot& s : listed.snapshots()) EXPECT_FALSE(s.implicit()) << s.name();

  v1::CheckPoolRequest check;
  check.set_name("default");
  v1::CheckPoolResponse report;
  ASSERT_TRUE(Call(service_.get(), &ControlService::CheckPoolWork, check, &report).ok());
  EXPECT_TRUE(report.clean());
}

// What is in use is refused with FAILED_PRECONDITION: a snapshot with a reader, a volume being
// reverted while open, a snapshot past the chain limit.
TEST_F(ControlServiceSnapshotTest, BusyIsFailedPrecondition) {
  ASSERT_TRUE(CreateVolume("v", 4 * kMiB).ok());
  v1::Snapshot snap;
  ASSERT_TRUE(Snap("v", "s", &snap).ok());
  {
    Result<std::shared_ptr<VolumeHandle>> view = snapshots_->OpenSnapshot("v@s");
    ASSERT_TRUE(view.ok()) << view.status();
    v1::DeleteSnapshotResponse deleted;
    grpc::Status st = DeleteSnap("v@s", false, &deleted);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  }
  {
    Result<std::shared_ptr<VolumeHandle>> open = engine_->OpenVolume("v");
    ASSERT_TRUE(open.ok());
    v1::Volume volume;
    grpc::Status st = Revert("v", "s", &volume);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  }
  v1::Volume volume;
  ASSERT_TRUE(Revert("v", "s", &volume).ok());
  v1::DeleteSnapshotResponse deleted;
  ASSERT_TRUE(DeleteSnap("v@s", false, &deleted).ok());
  EXPECT_EQ(deleted.still_read_by_size(), 0);

  int created = 0;
  grpc::Status st;
  while (created < 200) {
    st = Snap("v", "s" + std::to_string(created), &snap);
    if (!st.ok()) break;
    ++created;
  }
  EXPECT_EQ(created, 127);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(st.error_message().find("127"), std::string::npos) << st.error_message();
}

// FlattenVolume streams progress through a real gRPC server and ends with finished = true; the
// clone then no longer depends on its source.
TEST_F(ControlServiceSnapshotTest, FlattenStreamsProgress) {
  ASSERT_TRUE(CreateVolume("v", 16 * kMiB).ok());
  ASSERT_TRUE(Write("v", 0, ::shale::testing::Pattern(8 * kMiB, 3)).ok());
  v1::Snapshot snap;
  ASSERT_TRUE(Snap("v", "s", &snap).ok());
  v1::Volume clone;
  ASSERT_TRUE(Clone("v@s", "c", false, &clone).ok());
  ASSERT_TRUE(Write("c", 0, ::shale::testing::Pattern(kMiB, 4)).ok());

  const std::string endpoint = "unix://" + dir_ + "/flatten.sock";
  grpc::ServerBuilder builder;
  builder.AddListeningPort(endpoint, grpc::InsecureServerCredentials());
  builder.RegisterService(service_.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub =
      v1::Control::NewStub(grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));

  auto flatten = [&](const std::string& name, std::vector<v1::FlattenVolumeProgress>* got) {
    grpc::ClientContext ctx;
    v1::FlattenVolumeRequest req;
    req.set_name(name);
    std::unique_ptr<grpc::ClientReader<v1::FlattenVolumeProgress>> reader =
        stub->FlattenVolume(&ctx, req);
    v1::FlattenVolumeProgress progress;
    while (reader->Read(&progress)) got->push_back(progress);
    return reader->Finish();
  };
  std::vector<v1::FlattenVolumeProgress> got;
  grpc::Status st = flatten("c", &got);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_FALSE(got.empty());
  const v1::FlattenVolumeProgress& last = got.back();
  EXPECT_TRUE(last.finished());
  EXPECT_GT(last.total_clusters(), 0u);
  EXPECT_EQ(last.done_clusters(), last.total_clusters());
  uint64_t previous = 0;
  for (const v1::FlattenVolumeProgress& p : got) {
    EXPECT_GE(p.done_clusters(), previous) << "progress never goes back";
    EXPECT_LE(p.done_clusters(), p.total_clusters());
    previous = p.done_clusters();
  }

  grpc::ClientContext gctx;
  v1::GetVolumeRequest get;
  get.set_name("c");
  v1::Volume after;
  ASSERT_TRUE(stub->GetVolume(&gctx, get, &after).ok());
  EXPECT_TRUE(after.clone().detached());
  EXPECT_EQ(after.space().shared_bytes(), 0u);
  EXPECT_GE(after.space().owned_bytes(), 8 * kMiB);

  got.clear();
  st = flatten("missing", &got);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(got.empty());
  server->Shutdown();
}

// Snapshot exports over NBD: listed and shown with their clients; deleting one that a client
// reads is refused naming the client, and done with force.
TEST_F(ControlServiceSnapshotTest, SnapshotExportsOverNbd) {
  std::vector<Reactor*> reactors;
  for (const auto& r : engine_->reactors()) reactors.push_back(r.get());
  nbd::EngineExportResolver resolver(engine_.get(), snapshots_.get());
  nbd::NbdServerOptions options;
  options.tcp_address = "127.0.0.1:0";
  options.unix_socket = "";
  nbd::NbdServer server(reactors, &resolver, options);
  ASSERT_TRUE(server.Start().ok());
  NbdExportGate gate(&server);
  lifecycle_->SetExportGate(&gate);
  service_ = std::make_unique<ControlService>(
      lifecycle_.get(), ControlService::DaemonInfo{.version = "9.9.9", .control_endpoint = "x"},
      &server);
  ASSERT_TRUE(CreateVolume("v", 4 * kMiB).ok());
  v1::Snapshot snap;
  ASSERT_TRUE(Snap("v", "s", &snap).ok());
  EXPECT_EQ(snap.export_uri(), "nbd://" + server.tcp_address() + "/v@s");
  uint16_t port = 0;
  const int fd = ConnectNbdClient(server.tcp_address(), "v@s", &port);
  ASSERT_GE(fd, 0);

  ASSERT_TRUE(GetSnap("v@s", &snap).ok());
  EXPECT_EQ(snap.nbd_clients(), 1u);
  v1::ListExportsResponse exports;
  grpc::ServerContext ctx;
  ASSERT_TRUE(service_->ListExports(&ctx, nullptr, &exports).ok());
  ASSERT_EQ(exports.exports_size(), 2);
  EXPECT_EQ(exports.exports(0).name(), "v");
  EXPECT_EQ(exports.exports(1).name(), "v@s");
  EXPECT_TRUE(exports.exports(1).snapshot());
  EXPECT_TRUE(exports.exports(1).read_only());
  EXPECT_EQ(exports.exports(1).clients_size(), 1);

  v1::DeleteSnapshotResponse deleted;
  grpc::Status st = DeleteSnap("v@s", false, &deleted);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("1 connected NBD client(s)"), std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("--force"), std::string::npos) << st.error_message();
  st = DeleteSnap("v@s", true, &deleted);
  EXPECT_TRUE(st.ok()) << st.error_message();
  char byte;
  EXPECT_EQ(recv(fd, &byte, 1, 0), 0) << "the client was disconnected";
  close(fd);
  EXPECT_EQ(GetSnap("v@s", &snap).error_code(), grpc::StatusCode::NOT_FOUND);
  service_.reset();
  server.Stop();
}

// `pool check` reports problems of the image tree, not only of mappings: an image whose parent
// is missing and a head image no volume uses, planted in the pool's metadata while the engine
// is down.
TEST_F(ControlServiceSnapshotTest, PoolCheckReportsImageTreeProblems) {
  ASSERT_TRUE(CreateVolume("v", 4 * kMiB).ok());
  v1::Snapshot snap;
  ASSERT_TRUE(Snap("v", "s", &snap).ok());
  v1::CheckPoolRequest check;
  check.set_name("default");
  v1::CheckPoolResponse report;
  ASSERT_TRUE(Call(service_.get(), &ControlService::CheckPoolWork, check, &report).ok());
  EXPECT_TRUE(report.clean());

  const std::string uuid = engine_->GetPool("default")->uuid;
  service_.reset();
  snapshots_->Stop();
  snapshots_.reset();
  ASSERT_TRUE(engine_->Shutdown().ok());
  engine_.reset();
  {
    Result<std::unique_ptr<MetadataStore>> meta =
        MetadataStore::Open(dir_ + "/data/pools/" + uuid + "/meta", {});
    ASSERT_TRUE(meta.ok()) << meta.status();
    meta::ImageRecord orphan;
    orphan.set_id(999);
    orphan.set_parent(12345);
    orphan.set_kind(meta::IMAGE_HEAD);
    ASSERT_TRUE((*meta)->Put(keys::Image(999), orphan.SerializeAsString()).ok());
  }
  EngineOptions options;
  options.data_dir = dir_ + "/data";
  options.commit_interval_ms = 100;
  Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine_ = std::move(engine).value();
  snapshots_ = std::make_unique<snapshot::SnapshotManager>(engine_.get());
  ASSERT_TRUE(snapshots_->Start().ok());
  lifecycle_ = std::make_unique<VolumeLifecycle>(engine_.get(), snapshots_.get(), nullptr);
  service_ = std::make_unique<ControlService>(
      lifecycle_.get(), ControlService::DaemonInfo{.version = "9", .control_endpoint = "x"});

  report.Clear();
  ASSERT_TRUE(Call(service_.get(), &ControlService::CheckPoolWork, check, &report).ok());
  EXPECT_FALSE(report.clean());
  std::string problems;
  for (const std::string& p : report.problems()) problems += p + "\n";
  EXPECT_NE(problems.find("image 999: parent 12345 is missing"), std::string::npos) << problems;
  EXPECT_NE(problems.find("image 999: a head image that no volume uses"), std::string::npos)
      << problems;
}

}  // namespace
}  // namespace shale::daemon
