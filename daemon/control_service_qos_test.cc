// The QoS RPCs of ControlService against a real Engine and QosManager, handlers called directly:
// validation errors are INVALID_ARGUMENT naming the field, unknown volumes NOT_FOUND, QoS given
// at create is validated before the volume exists, volume answers carry the settings, a delete
// drops them, and a change reaches a volume open through QoS at once.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>

#include "daemon/control_service.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/common/units.h"
#include "engine/engine.h"
#include "qos/qos_manager.h"
#include "snapshot/snapshot_manager.h"
#include "snapshot/volume_scan.h"

namespace shale::daemon {
namespace {

class ControlServiceQosTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shale-ctlqos-XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
    Open();
  }
  void Open() {
    EngineOptions options;
    options.data_dir = dir_ + "/data";
    options.default_pool_size = 256 * kMiB;
    Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(engine).value();
    snapshots_ = std::make_unique<snapshot::SnapshotManager>(engine_.get());
    ASSERT_TRUE(snapshots_->Start().ok());
    Result<std::unique_ptr<qos::QosManager>> qos = qos::QosManager::Open(engine_.get(), {});
    ASSERT_TRUE(qos.ok()) << qos.status();
    qos_ = std::move(qos).value();
    lifecycle_ = std::make_unique<VolumeLifecycle>(engine_.get(), snapshots_.get(), qos_.get());
    service_ = std::make_unique<ControlService>(lifecycle_.get(),
                                                ControlService::DaemonInfo{.version = "9.9.9"});
  }
  void Close() {
    service_.reset();
    lifecycle_.reset();
    qos_.reset();
    if (snapshots_) snapshots_->Stop();
    snapshots_.reset();
    if (engine_) {
      EXPECT_TRUE(engine_->Shutdown().ok());
    }
    engine_.reset();
  }
  void TearDown() override {
    Close();
    std::filesystem::remove_all(dir_);
  }

  grpc::Status Create(const std::string& name, const v1::QosSettings* qos,
                      v1::Volume* out = nullptr) {
    v1::CreateVolumeRequest req;
    req.set_name(name);
    req.set_size_bytes(64 * kMiB);
    if (qos != nullptr) *req.mutable_qos() = *qos;
    v1::Volume resp;
    grpc::ServerContext ctx;
    grpc::Status st = service_->CreateVolume(&ctx, &req, &resp);
    if (out != nullptr) *out = resp;
    return st;
  }
  grpc::Status Set(const std::string& name, const v1::QosSettings& qos,
                   v1::VolumeQos* out = nullptr) {
    v1::SetVolumeQosRequest req;
    req.set_name(name);
    *req.mutable_qos() = qos;
    v1::VolumeQos resp;
    grpc::ServerContext ctx;
    grpc::Status st = service_->SetVolumeQos(&ctx, &req, &resp);
    if (out != nullptr) *out = resp;
    return st;
  }
  v1::QosSettings Get(const std::string& name) {
    v1::GetVolumeQosRequest req;
    req.set_name(name);
    v1::VolumeQos resp;
    grpc::ServerContext ctx;
    grpc::Status st = service_->GetVolumeQos(&ctx, &req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.qos();
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<snapshot::SnapshotManager> snapshots_;
  std::unique_ptr<qos::QosManager> qos_;
  std::unique_ptr<VolumeLifecycle> lifecycle_;
  std::unique_ptr<ControlService> service_;
};

v1::QosSettings Iops(int64_t iops) {
  v1::QosSettings s;
  s.set_iops(iops);
  return s;
}

TEST_F(ControlServiceQosTest, BadSettingsAreInvalidArgumentNamingTheField) {
  ASSERT_TRUE(Create("v", nullptr).ok());
  struct Case {
    v1::QosSettings settings;
    std::string needle;
  };
  std::vector<Case> cases;
  cases.push_back({Iops(-1), "iops must be between 0 (unlimited) and 100000000, got -1"});
  cases.push_back({Iops(100'000'001), "got 100000001"});
  {
    v1::QosSettings s;
    s.set_bps(-5);
    cases.push_back({s, "bps must be between 0 (unlimited)"});
  }
  {
    v1::QosSettings s = Iops(1000);
    s.set_burst_iops(500);
    cases.push_back({s, "burst_iops (500) is below iops (1000)"});
  }
  {
    v1::QosSettings s;
    s.set_burst_write_bps(1 << 20);
    cases.push_back({s, "burst_write_bps (1048576) needs write_bps"});
  }
  {
    v1::QosSettings s = Iops(1000);
    s.set_burst_seconds(10);
    cases.push_back({s, "burst_seconds (10) is set but no burst rate is"});
  }
  {
    v1::QosSettings s;
    s.set_weight(10'001);
    cases.push_back({s, "weight must be between 1 and 10000"});
  }
  {
    v1::QosSettings s;
    s.set_weight(-3);
    cases.push_back({s, "weight must be between 1 and 10000"});
  }
  {
    v1::QosSettings s = Iops(100);
    s.set_reservation_iops(200);
    cases.push_back({s, "reservation_iops (200) exceeds the iops limit (100)"});
  }
  {
    v1::QosSettings s;
    s.set_iops_unit(1000);
    cases.push_back({s, "iops_unit must be"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.settings.ShortDebugString());
    grpc::Status st = Set("v", c.settings);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find(c.needle), std::string::npos) << st.error_message();
    // Refused at create too, before a volume exists.
    st = Create("w", &c.settings);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_FALSE(engine_->GetVolume("w").ok()) << "a refused create left a volume";
  }
  EXPECT_EQ(Get("v").iops(), 0) << "a refused set changed something";
}

TEST_F(ControlServiceQosTest, UnknownNamesAndPools) {
  EXPECT_EQ(Set("nope", Iops(10)).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Set("bad/name", Iops(10)).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ServerContext ctx;
  v1::GetVolumeQosRequest get;
  get.set_name("nope");
  v1::VolumeQos q;
  EXPECT_EQ(service_->GetVolumeQos(&ctx, &get, &q).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ServerContext ctx2;
  v1::GetVolumeStatsRequest stats;
  stats.set_name("nope");
  v1::VolumeIoStats s;
  EXPECT_EQ(service_->GetVolumeStats(&ctx2, &stats, &s).error_code(), grpc::StatusCode::NOT_FOUND);

  grpc::ServerContext ctx3;
  v1::SetPoolQosRequest pool;
  pool.set_pool("default");
  pool.set_budget(0);
  v1::PoolQos p;
  EXPECT_EQ(service_->SetPoolQos(&ctx3, &pool, &p).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ServerContext ctx4;
  pool.set_pool("nopool");
  pool.set_budget(8);
  EXPECT_EQ(service_->SetPoolQos(&ctx4, &pool, &p).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ServerContext ctx5;
  pool.set_pool("default");
  ASSERT_TRUE(service_->SetPoolQos(&ctx5, &pool, &p).ok());
  EXPECT_EQ(p.budget(), 8u);
}

TEST_F(ControlServiceQosTest, CreateCarriesSettingsAndDeleteDropsThem) {
  v1::QosSettings s = Iops(2000);
  s.set_burst_iops(5000);
  v1::Volume created;
  ASSERT_TRUE(Create("v", &s, &created).ok());
  // Normalized: defaults filled in.
  EXPECT_EQ(created.qos().iops(), 2000);
  EXPECT_EQ(created.qos().burst_seconds(), 1);
  EXPECT_EQ(created.qos().weight(), 100);
  EXPECT_EQ(created.qos().iops_unit(), 4096);

  grpc::ServerContext ctx;
  v1::GetVolumeRequest get;
  get.set_name("v");
  v1::Volume shown;
  ASSERT_TRUE(service_->GetVolume(&ctx, &get, &shown).ok());
  EXPECT_EQ(shown.qos().SerializeAsString(), created.qos().SerializeAsString());

  grpc::ServerContext ctx2;
  v1::DeleteVolumeRequest del;
  del.set_name("v");
  v1::DeleteVolumeResponse deleted;
  ASSERT_TRUE(service_->DeleteVolume(&ctx2, &del, &deleted).ok());
  ASSERT_TRUE(Create("v", nullptr).ok());
  EXPECT_EQ(Get("v").iops(), 0) << "a new volume inherited a deleted one's settings";

  // And across a restart.
  ASSERT_TRUE(Set("v", Iops(300)).ok());
  Close();
  Open();
  EXPECT_EQ(Get("v").iops(), 300);
}

TEST_F(ControlServiceQosTest, AChangeReachesAnOpenVolumeAtOnce) {
  ASSERT_TRUE(Create("v", nullptr).ok());
  Result<std::shared_ptr<VolumeHandle>> handle = engine_->OpenVolume("v");
  ASSERT_TRUE(handle.ok());
  Result<std::shared_ptr<qos::QosVolume>> wrapped = qos_->Wrap(*handle);
  ASSERT_TRUE(wrapped.ok());

  v1::QosSettings s = Iops(1000);
  s.set_bps(10 << 20);
  ASSERT_TRUE(Set("v", s).ok());
  grpc::ServerContext ctx;
  v1::GetVolumeStatsRequest req;
  req.set_name("v");
  v1::VolumeIoStats stats;
  ASSERT_TRUE(service_->GetVolumeStats(&ctx, &req, &stats).ok());
  EXPECT_TRUE(stats.open());
  EXPECT_EQ(stats.qos().iops(), 1000);
  ASSERT_EQ(stats.buckets_size(), 2);
  EXPECT_EQ(stats.buckets(0).limit(), "iops");
  EXPECT_EQ(stats.buckets(0).rate(), 1000u);
  EXPECT_EQ(stats.buckets(1).limit(), "bps");
  EXPECT_EQ(stats.buckets(1).rate(), uint64_t{10} << 20);
  EXPECT_GT(stats.time_unix_ns(), 0u);
  wrapped->reset();
}

// The daemon's wiring of the snapshot layer's background I/O through QoS (daemon.cc does the
// same): every request of digests, verify, export and import goes through QosManager::Wrap,
// tagged IoClass::kBackground, and the jobs still succeed.
class CountingLayer final : public VolumeLayer {
 public:
  explicit CountingLayer(std::shared_ptr<qos::QosVolume> next) : next_(std::move(next)) {}
  void Submit(VolumeIo* io) override {
    ++requests;
    if (io->io_class != IoClass::kBackground) ++client_class;
    next_->Submit(io);
  }
  static inline std::atomic<uint64_t> requests{0}, client_class{0};

 private:
  std::shared_ptr<qos::QosVolume> next_;
};

TEST(SnapshotBackgroundIoThroughQos, DigestVerifyExportImportGoThroughTheQosLayer) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "shale-bgqos-XXXXXX").string();
  const std::string dir = mkdtemp(tmpl.data());
  EngineOptions options;
  options.data_dir = dir + "/data";
  options.default_pool_size = 256 * kMiB;
  Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  Result<std::unique_ptr<qos::QosManager>> qos = qos::QosManager::Open(engine->get(), {});
  ASSERT_TRUE(qos.ok());
  snapshot::SnapshotManager::Options so;
  so.background_io = [&](std::shared_ptr<VolumeHandle> h) -> std::shared_ptr<VolumeLayer> {
    auto wrapped = (*qos)->Wrap(std::move(h));
    EXPECT_TRUE(wrapped.ok());
    return std::make_shared<CountingLayer>(std::move(wrapped).value());
  };
  {
    snapshot::SnapshotManager snapshots(engine->get(), so);
    ASSERT_TRUE(snapshots.Start().ok());
    ASSERT_TRUE((*engine)->CreateVolume({.name = "v", .size_bytes = 8 * kMiB}).ok());
    {
      auto h = (*engine)->OpenVolume("v");
      ASSERT_TRUE(h.ok());
      AlignedBuffer buf = AllocateAligned(kMiB);
      std::memset(buf.get(), 0x5a, kMiB);
      ASSERT_TRUE(snapshot::RunIo(**h, VolumeOp::kWrite, 0, kMiB, buf.get()).ok());
    }
    ASSERT_TRUE(snapshots.Create("v", "s1", {.wait_digest = true}).ok());
    const uint64_t after_digest = CountingLayer::requests.load();
    EXPECT_GT(after_digest, 0u) << "the digest read around QoS";
    ASSERT_TRUE(snapshots.Verify("v@s1").ok());
    const uint64_t after_verify = CountingLayer::requests.load();
    EXPECT_GT(after_verify, after_digest) << "verify read around QoS";
    const std::string stream = dir + "/s1.stream";
    ASSERT_TRUE(snapshots.Export("v@s1", stream).ok());
    const uint64_t after_export = CountingLayer::requests.load();
    EXPECT_GT(after_export, after_verify) << "export read around QoS";
    auto imported = snapshots.Import(stream, "w");
    ASSERT_TRUE(imported.ok()) << imported.status();
    EXPECT_GT(CountingLayer::requests.load(), after_export) << "import wrote around QoS";
    EXPECT_EQ(CountingLayer::client_class.load(), 0u) << "background work in the client class";
    snapshots.Stop();
  }
  qos->reset();
  EXPECT_TRUE((*engine)->Shutdown().ok());
  std::filesystem::remove_all(dir);
}

TEST(ControlServiceWithoutQos, QosRpcsAreFailedPrecondition) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "shale-ctlnoqos-XXXXXX").string();
  const std::string dir = mkdtemp(tmpl.data());
  EngineOptions options;
  options.data_dir = dir + "/data";
  options.default_pool_size = 256 * kMiB;
  Result<std::unique_ptr<Engine>> engine = Engine::Open(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  snapshot::SnapshotManager snapshots(engine->get());
  ASSERT_TRUE(snapshots.Start().ok());
  {
    VolumeLifecycle lifecycle(engine->get(), &snapshots, nullptr);
    ControlService service(&lifecycle, ControlService::DaemonInfo{});
    grpc::ServerContext ctx;
    v1::SetVolumeQosRequest req;
    req.set_name("v");
    v1::VolumeQos resp;
    EXPECT_EQ(service.SetVolumeQos(&ctx, &req, &resp).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    grpc::ServerContext ctx2;
    v1::CreateVolumeRequest create;
    create.set_name("v");
    create.set_size_bytes(kMiB);
    create.mutable_qos()->set_iops(10);
    v1::Volume v;
    EXPECT_EQ(service.CreateVolume(&ctx2, &create, &v).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  snapshots.Stop();
  EXPECT_TRUE((*engine)->Shutdown().ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale::daemon
