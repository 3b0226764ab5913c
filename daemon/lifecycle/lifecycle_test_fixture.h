// A test fixture with an engine, a snapshot manager and a VolumeLifecycle (and, if asked, a QoS
// manager) on a temporary data directory; Close() and Open() again restart them on the same
// directory. Tests of the lifecycle and of what hangs off it derive from it.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "daemon/lifecycle/volume_lifecycle.h"
#include "engine/engine.h"
#include "qos/qos_manager.h"
#include "snapshot/snapshot_manager.h"

namespace shale::daemon {

class LifecycleTest : public ::testing::Test {
 protected:
  // `prefix` names the temporary directory (/tmp/PREFIX-XXXXXX); `with_qos` opens a QoS manager
  // for the lifecycle.
  explicit LifecycleTest(std::string prefix, bool with_qos = false)
      : prefix_(std::move(prefix)), with_qos_(with_qos) {}

  void SetUp() override {
    std::string tmpl = "/tmp/" + prefix_ + "-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    Open();
  }
  void TearDown() override {
    Close();
    std::filesystem::remove_all(dir_);
  }
  // The engine's options: a 256 MiB default pool unless a fixture changes them.
  virtual void Tune(EngineOptions* /*options*/) {}

  void Open() {
    EngineOptions o;
    o.data_dir = dir_ + "/data";
    o.default_pool_size = 256 * kMiB;
    Tune(&o);
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(e).value();
    snapshots_ = std::make_unique<snapshot::SnapshotManager>(engine_.get());
    ASSERT_TRUE(snapshots_->Start().ok());
    if (with_qos_) {
      auto q = qos::QosManager::Open(engine_.get(), {});
      ASSERT_TRUE(q.ok()) << q.status();
      qos_ = std::move(q).value();
    }
    lifecycle_ = std::make_unique<VolumeLifecycle>(engine_.get(), snapshots_.get(), qos_.get());
  }
  void Close() {
    lifecycle_.reset();
    qos_.reset();
    if (snapshots_) snapshots_->Stop();
    snapshots_.reset();
    engine_.reset();
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<snapshot::SnapshotManager> snapshots_;
  std::unique_ptr<qos::QosManager> qos_;
  std::unique_ptr<VolumeLifecycle> lifecycle_;

 private:
  const std::string prefix_;
  const bool with_qos_;
};

}  // namespace shale::daemon
