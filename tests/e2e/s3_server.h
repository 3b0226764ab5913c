// A real S3-protocol server for end-to-end tests: s3rver (npm, installed into tests/tools by
// scripts/deps) on 127.0.0.1 with a free port, and s3cmd (Debian) as the independent client.
// The server dies with the test (ChildProcess: SIGKILL in the destructor, PDEATHSIG).
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

#ifndef SHALE_TEST_TOOLS_DIR
#error "SHALE_TEST_TOOLS_DIR must be defined by the build"
#endif

namespace shale::e2e {

// s3rver's built-in account: requests signed with another access key id get 403.
inline constexpr char kS3AccessKey[] = "S3RVER";
inline constexpr char kS3SecretKey[] = "S3RVER";

inline std::string S3rverBinary() {
  const std::string local = std::string(SHALE_TEST_TOOLS_DIR) + "/node_modules/.bin/s3rver";
  if (access(local.c_str(), X_OK) == 0) return local;
  return FindProgram("s3rver");
}

class S3Server {
 public:
  // Starts s3rver with data under `dir` and the given buckets (over HTTPS when `tls_cert` and
  // `tls_key` name a PEM certificate and key); false (with a failure) if it does not come up.
  [[nodiscard]] bool Start(const std::string& dir, const std::vector<std::string>& buckets,
                           const std::string& tls_cert = "", const std::string& tls_key = "") {
    std::vector<std::string> argv = {S3rverBinary(), "-d", dir + "/s3", "-a",
                                     "127.0.0.1",    "-p", "0",         "--silent"};
    if (!tls_cert.empty()) argv.insert(argv.end(), {"--cert", tls_cert, "--key", tls_key});
    https_ = !tls_cert.empty();
    for (const std::string& b : buckets) {
      argv.insert(argv.end(), {"--configure-bucket", b});
    }
    RunProcess({"/bin/mkdir", "-p", dir + "/s3"});
    log_ = dir + "/s3rver.log";
    proc_ = std::make_unique<ChildProcess>(argv, log_);
    const std::regex re("listening on 127\\.0\\.0\\.1:([0-9]+)");
    bool up = WaitFor([&] {
      std::smatch m;
      const std::string text = ReadTextFile(log_);
      if (!std::regex_search(text, m, re)) return false;
      port_ = std::stoi(m[1].str());
      return true;
    });
    if (!up) {
      ADD_FAILURE() << "s3rver did not start: " << ReadTextFile(log_);
      return false;
    }
    cfg_ = dir + "/s3cfg";
    std::ofstream cfg(cfg_);
    cfg << "[default]\naccess_key = " << kS3AccessKey << "\nsecret_key = " << kS3SecretKey
        << "\nhost_base = 127.0.0.1:" << port_ << "\nhost_bucket = 127.0.0.1:" << port_
        << "\nuse_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n";
    return true;
  }

  std::string url() const {
    return (https_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(port_);
  }
  int port() const { return port_; }
  bool running() { return proc_ && proc_->running(); }
  void Kill() { proc_.reset(); }

  // s3cmd with this server's config.
  CommandResult S3cmd(std::vector<std::string> args, int timeout_s = 120) const {
    std::vector<std::string> argv = {FindProgram("s3cmd"), "-c", cfg_, "--no-progress"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProcess(argv, {.timeout = std::chrono::seconds(timeout_s)});
  }

  // Object keys under s3://BUCKET/PREFIX (recursive), from s3cmd; relative to the bucket.
  std::vector<std::string> Keys(const std::string& bucket, const std::string& prefix) const {
    CommandResult r = S3cmd({"ls", "-r", "s3://" + bucket + "/" + prefix});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    std::vector<std::string> keys;
    const std::string marker = "s3://" + bucket + "/";
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) {
      const size_t at = line.find(marker);
      if (at != std::string::npos) keys.push_back(line.substr(at + marker.size()));
    }
    return keys;
  }

 private:
  std::unique_ptr<ChildProcess> proc_;
  std::string log_;
  std::string cfg_;
  int port_ = 0;
  bool https_ = false;
};

}  // namespace shale::e2e
