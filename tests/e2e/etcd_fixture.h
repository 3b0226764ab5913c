// A test fixture with a real etcd (tests/cluster/etcd_process.h) for the cluster-mode end-to-end
// tests: skipped with the reason where etcd is not installed; etcd's log tail is printed when a
// test fails. Declare the test's daemons (Harness) in the test body: they stop before etcd.
#pragma once

#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <string>

#include "tests/cluster/etcd_process.h"

namespace shale::e2e {

class EtcdE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = test::EtcdProcess::Unavailable(); !why.empty()) {
      GTEST_SKIP() << why;
    }
    Result<std::unique_ptr<test::EtcdProcess>> etcd = test::EtcdProcess::Start();
    ASSERT_TRUE(etcd.ok()) << etcd.status();
    etcd_ = std::move(etcd).value();
  }
  void TearDown() override {
    if (HasFailure() && etcd_ != nullptr) {
      const std::string log = etcd_->Log();
      std::cerr << "etcd log (tail):\n" << log.substr(log.size() > 3000 ? log.size() - 3000 : 0);
    }
  }

  std::unique_ptr<test::EtcdProcess> etcd_;
};

}  // namespace shale::e2e
