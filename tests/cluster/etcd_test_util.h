// Shared by the tests of cluster/ against a real etcd (etcd_process.h): fixtures with a shared or
// an own etcd, short client deadlines, polling with a deadline.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "cluster/etcd_client.h"
#include "tests/cluster/etcd_process.h"

namespace shale::cluster {

// Skips the test (GTEST_SKIP, reported as skipped by ctest) when etcd is not installed.
#define SHALE_SKIP_WITHOUT_ETCD()                                                        \
  do {                                                                                   \
    if (const std::string why = ::shale::test::EtcdProcess::Unavailable(); !why.empty()) \
      GTEST_SKIP() << why;                                                               \
  } while (0)

// Short deadlines, so failure tests finish quickly.
inline EtcdClientOptions TestClientOptions() {
  EtcdClientOptions o;
  o.call_timeout = std::chrono::milliseconds(3000);
  o.attempt_timeout = std::chrono::milliseconds(1000);
  return o;
}

inline std::shared_ptr<EtcdClient> Connect(const std::string& endpoints,
                                           EtcdClientOptions options = TestClientOptions()) {
  Result<std::unique_ptr<EtcdClient>> client = EtcdClient::Create(endpoints, options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? std::shared_ptr<EtcdClient>(std::move(client).value()) : nullptr;
}

// Polls `done` every 20 ms until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& done,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

// A key prefix of the running test: tests sharing one etcd never see each other's keys.
inline std::string TestPrefix() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string("/t/") + info->test_suite_name() + "." + info->name() + "/";
}

// One etcd for every test of a suite that does not stop it.
class SharedEtcdTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::EtcdProcess::Unavailable().empty()) return;
    Result<std::unique_ptr<test::EtcdProcess>> etcd = test::EtcdProcess::Start();
    if (etcd.ok()) {
      etcd_ = std::move(etcd).value().release();
    } else {
      start_error_ = new std::string(etcd.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete etcd_;
    etcd_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }
  void SetUp() override {
    SHALE_SKIP_WITHOUT_ETCD();
    ASSERT_EQ(start_error_, nullptr) << *start_error_;
    ASSERT_NE(etcd_, nullptr);
    client_ = Connect(etcd_->endpoint());
    ASSERT_NE(client_, nullptr);
    prefix_ = TestPrefix();
  }

  static inline test::EtcdProcess* etcd_ = nullptr;
  static inline std::string* start_error_ = nullptr;
  std::shared_ptr<EtcdClient> client_;
  std::string prefix_;
};

// An etcd of its own, for tests that stop, kill or restart it.
class OwnEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SHALE_SKIP_WITHOUT_ETCD();
    Result<std::unique_ptr<test::EtcdProcess>> etcd = test::EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(etcd).value();
    prefix_ = TestPrefix();
  }
  void TearDown() override {
    if (HasFailure() && etcd_ != nullptr) {
      const std::string log = etcd_->Log();
      std::cerr << "etcd log (tail):\n" << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    }
  }

  std::unique_ptr<test::EtcdProcess> etcd_;
  std::string prefix_;
};

}  // namespace shale::cluster
