// ControlService against a real Engine on a temporary data dir, handlers called directly: every
// request field is validated (bad input is INVALID_ARGUMENT with the shale-error trailer, never
// a crash), engine errors map to the documented gRPC codes, and results mirror the engine.
#include "csi/daemon/control_service.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "csi/nbd/export.h"
#include "csi/nbd/protocol.h"
#include "csi/nbd/server.h"
#include "engine/common/units.h"
#include "engine/engine.h"

namespace shale {
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
    service_ = std::make_unique<ControlService>(
        engine_.get(),
        ControlService::DaemonInfo{.version = "9.9.9", .control_endpoint = "unix:///test.sock"});
  }
  void TearDown() override {
    service_.reset();
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
  std::unique_ptr<ControlService> service_;
};

TEST(ControlServiceCodes, EveryShaleCodeMapsAsDocumented) {
  EXPECT_EQ(ToGrpcCode(StatusCode::kOk), grpc::StatusCode::OK);
  EXPECT_EQ(ToGrpcCode(StatusCode::kInvalidArgument), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcCode(StatusCode::kNotFound), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcCode(StatusCode::kAlreadyExists), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(ToGrpcCode(StatusCode::kNoSpace), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcCode(StatusCode::kFailedPrecondition), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ToGrpcCode(StatusCode::kBusy), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ToGrpcCode(StatusCode::kOutOfRange), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(ToGrpcCode(StatusCode::kPermissionDenied), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(ToGrpcCode(StatusCode::kNotSupported), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(ToGrpcCode(StatusCode::kUnavailable), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcCode(StatusCode::kIoError), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(ToGrpcCode(StatusCode::kCorruption), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(ToGrpcCode(StatusCode::kAborted), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(ToGrpcCode(StatusCode::kInternal), grpc::StatusCode::INTERNAL);

  grpc::Status st = ToGrpcStatus(Status::NotFound("volume 'x' not found"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "volume 'x' not found");
  EXPECT_TRUE(ToGrpcStatus(Status::Ok()).ok());
}

TEST(ControlServiceLabels, Validation) {
  EXPECT_TRUE(ValidateLabel("team", "data-science").ok());
  EXPECT_TRUE(ValidateLabel("example.com/owner", "").ok());
  EXPECT_FALSE(ValidateLabel("", "x").ok());
  EXPECT_FALSE(ValidateLabel("-x", "x").ok());
  EXPECT_FALSE(ValidateLabel("a b", "x").ok());
  EXPECT_FALSE(ValidateLabel(std::string(kMaxLabelKeyLength + 1, 'k'), "x").ok());
  EXPECT_FALSE(ValidateLabel("k", std::string(kMaxLabelValueLength + 1, 'v')).ok());
  EXPECT_FALSE(ValidateLabel("k", "line\nbreak").ok());
}

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
    auto it = trailers.find(kShaleErrorMetadataKey);
    ASSERT_NE(it, trailers.end());
    EXPECT_EQ(std::string(it->second.data(), it->second.size()), "not found");
  }
  {
    grpc::ClientContext ctx;
    v1::GetStatusResponse resp;
    ASSERT_TRUE(stub->GetStatus(&ctx, v1::GetStatusRequest(), &resp).ok());
    EXPECT_EQ(ctx.GetServerTrailingMetadata().count(kShaleErrorMetadataKey), 0u);
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
  nbd::EngineExportResolver resolver(engine_.get());
  nbd::NbdServerOptions options;
  options.tcp_address = "127.0.0.1:0";
  options.unix_socket = "";
  nbd::NbdServer server(reactors, &resolver, options);
  ASSERT_TRUE(server.Start().ok());
  service_ = std::make_unique<ControlService>(
      engine_.get(), ControlService::DaemonInfo{.version = "9.9.9", .control_endpoint = "x"},
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
  EXPECT_EQ(service_->CheckPool(&c4, &check, &report).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
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
  ASSERT_TRUE(service_->CheckPool(&cc, &check, &report).ok());
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

}  // namespace
}  // namespace shale
