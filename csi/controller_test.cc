// The controller's records: CSI records of older versions (keyed by volume name) are upgraded to
// the lifecycle's frontend records, and stale ones are dropped (docs/lifecycle.md).
#include <gtest/gtest.h>

#include <filesystem>

#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/params.h"
#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/pool/keys.h"
#include "engine/pool/metadata_store.h"

namespace shale::csi {
namespace {

constexpr uint64_t kMiB = 1 << 20;

TEST(ControllerRecords, LegacyRecordsAreUpgradedOrDropped) {
  char tmpl[] = "/tmp/shale-csi-records-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    EngineOptions o;
    o.data_dir = dir + "/data";
    o.default_pool_size = 64 * kMiB;
    auto engine = Engine::Open(o);
    ASSERT_TRUE(engine.ok()) << engine.status();
    snapshot::SnapshotManager snapshots(engine->get());
    ASSERT_TRUE(snapshots.Start().ok());
    daemon::VolumeLifecycle lifecycle(engine->get(), &snapshots, nullptr);
    // As an older shaled left them: a CSI volume with its record, and the record of a CSI volume
    // deleted through the CLI next to a volume of the same name made by hand.
    ASSERT_TRUE((*engine)
                    ->CreateVolume({.name = "pvc-a",
                                    .size_bytes = 8 * kMiB,
                                    .labels = {{std::string(kLabelFingerprint), "f"}}})
                    .ok());
    ASSERT_TRUE((*engine)->CreateVolume({.name = "byhand", .size_bytes = 8 * kMiB}).ok());
    const std::string old_a = EncodeCsiRecord({"pvc-a", 4 * kMiB, ""});
    MetaBatch legacy;
    legacy.Put(keys::Extension("csi", "volume/pvc-a"), old_a);
    legacy.Put(keys::Extension("csi", "volume/byhand"), EncodeCsiRecord({"byhand", kMiB, ""}));
    legacy.Put(keys::Extension("csi", "volume/gone"), EncodeCsiRecord({"gone", kMiB, ""}));
    ASSERT_TRUE((*engine)->WriteRecords("default", std::move(legacy)).ok());

    ControllerService controller(DriverOptions{.node_id = "n"}, &lifecycle);
    ASSERT_TRUE(controller.UpgradeRecords().ok());

    auto a = (*engine)->GetVolume("pvc-a");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(CsiCapacity(engine->get(), *a), 4 * kMiB);
    auto byhand = (*engine)->GetVolume("byhand");
    ASSERT_TRUE(byhand.ok());
    EXPECT_FALSE(ReadCsiRecord(engine->get(), *byhand).has_value());
    EXPECT_EQ(CsiCapacity(engine->get(), *byhand), 8 * kMiB);
    size_t left = 0;
    ASSERT_TRUE((*engine)
                    ->ScanRecords("default", keys::ExtensionPrefix("csi"),
                                  [&](std::string_view, std::string_view) {
                                    ++left;
                                    return true;
                                  })
                    .ok());
    EXPECT_EQ(left, 0u) << "legacy records left behind";
    // Idempotent.
    ASSERT_TRUE(controller.UpgradeRecords().ok());
    EXPECT_EQ(CsiCapacity(engine->get(), *a), 4 * kMiB);
    snapshots.Stop();
    ASSERT_TRUE((*engine)->Shutdown().ok());
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale::csi
