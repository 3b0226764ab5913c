#include "daemon/daemon_options.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace shale::daemon {
namespace {

DaemonCommandLine Parse(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {"shaled"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseDaemonCommandLine(static_cast<int>(argv.size()), argv.data());
}

std::string Cwd() { return std::filesystem::current_path().string(); }

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "shaled-opts-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(DaemonOptions, DefaultsAreTheEmbeddedDefault) {
  DaemonCommandLine cl = Parse({});
  ASSERT_TRUE(cl.run) << cl.err;
  const DaemonOptions& o = cl.options;
  EXPECT_EQ(o.data_dir, Cwd() + "/shale-data");
  EXPECT_EQ(o.control_socket, Cwd() + "/shale-data/shaled.sock");
  EXPECT_EQ(o.ControlEndpoint(), "unix://" + Cwd() + "/shale-data/shaled.sock");
  EXPECT_TRUE(o.create_default_pool);
  EXPECT_EQ(o.default_pool_size, 8 * kGiB);
  EXPECT_EQ(o.default_cluster_size, 64 * kKiB);
  EXPECT_EQ(o.reactors, 1u);
  EXPECT_EQ(o.io_backend, IoBackend::kIoUring);
  EXPECT_FALSE(o.cached_reads) << "every read from the device unless asked";
  EXPECT_EQ(o.commit_interval_ms, 5000u);
  EXPECT_EQ(o.log_level, "info");
  EXPECT_TRUE(o.log_file.empty());
  EXPECT_EQ(o.nbd_listen, "") << "no NBD TCP listener unless asked (docs/security.md)";
  EXPECT_FALSE(o.nbd_insecure_tcp);
  EXPECT_TRUE(o.nbd_tls_x509_dir.empty() && o.nbd_tls_psk_file.empty());
  EXPECT_EQ(o.nbd_socket, Cwd() + "/shale-data/nbd.sock");
  EXPECT_EQ(o.nbd_max_connections, 128u);
  EXPECT_EQ(o.nbd_handshake_timeout_s, 10u);

  EngineOptions e = o.ToEngineOptions();
  EXPECT_EQ(e.data_dir, o.data_dir);
  EXPECT_EQ(e.default_pool_size, 8 * kGiB);
  EXPECT_TRUE(e.create_default_pool);
}

TEST(DaemonOptions, FlagsOverrideDefaults) {
  DaemonCommandLine cl = Parse({"--data-dir",
                                "/srv/shale/",
                                "--default-pool-size",
                                "1G",
                                "--default-cluster-size",
                                "4K",
                                "--no-default-pool",
                                "--reactors",
                                "2",
                                "--io-backend",
                                "libaio",
                                "--read-cache",
                                "page",
                                "--commit-interval-ms",
                                "250",
                                "--log-level",
                                "debug",
                                "--log-file",
                                "/var/log/shaled.log",
                                "--control-socket",
                                "unix:///run/shaled.sock"});
  ASSERT_TRUE(cl.run) << cl.err;
  const DaemonOptions& o = cl.options;
  EXPECT_EQ(o.data_dir, "/srv/shale");
  EXPECT_EQ(o.default_pool_size, kGiB);
  EXPECT_EQ(o.default_cluster_size, 4 * kKiB);
  EXPECT_FALSE(o.create_default_pool);
  EXPECT_EQ(o.reactors, 2u);
  EXPECT_EQ(o.io_backend, IoBackend::kLibaio);
  EXPECT_TRUE(o.cached_reads);
  EXPECT_TRUE(o.ToEngineOptions().device.cached_reads);
  EXPECT_EQ(o.commit_interval_ms, 250u);
  EXPECT_EQ(o.log_level, "debug");
  EXPECT_EQ(o.log_file, "/var/log/shaled.log");
  EXPECT_EQ(o.control_socket, "/run/shaled.sock");
  EngineOptions e = o.ToEngineOptions();
  EXPECT_EQ(e.reactors, 2u);
  EXPECT_EQ(e.device.backend, IoBackend::kLibaio);
  EXPECT_EQ(e.commit_interval_ms, 250u);
  EXPECT_EQ(e.default_cluster_size, 4 * kKiB);
  EXPECT_FALSE(e.create_default_pool);
}

TEST(DaemonOptions, NbdOptions) {
  DaemonCommandLine cl = Parse({"--data-dir", "/srv/shale", "--nbd-listen", "[::1]:0",
                                "--nbd-insecure-tcp", "--nbd-socket", "unix://nbd.sock",
                                "--nbd-max-connections", "7", "--nbd-handshake-timeout", "3"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.nbd_listen, "[::1]:0");
  EXPECT_EQ(cl.options.nbd_socket, Cwd() + "/nbd.sock");
  EXPECT_EQ(cl.options.nbd_max_connections, 7u);
  EXPECT_EQ(cl.options.nbd_handshake_timeout_s, 3u);
  cl = Parse({"--nbd-listen", "none", "--nbd-socket", "none"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.nbd_listen, "");
  EXPECT_EQ(cl.options.nbd_socket, "");
  cl = Parse({"--nbd-listen", "localhost:10900", "--nbd-tls-psk-file", "keys.psk"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.nbd_listen, "localhost:10900");
  EXPECT_EQ(cl.options.nbd_tls_psk_file, Cwd() + "/keys.psk");
  EXPECT_FALSE(cl.options.nbd_insecure_tcp);
  cl = Parse({"--nbd-listen", "127.0.0.1:0", "--nbd-tls-x509-dir", "/etc/shale/tls/",
              "--nbd-tls-authz", "authz.conf"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.nbd_tls_x509_dir, "/etc/shale/tls");
  EXPECT_EQ(cl.options.nbd_tls_authz, Cwd() + "/authz.conf");
}

TEST(DaemonOptions, CsiEndpointAndNodeId) {
  DaemonCommandLine cl = Parse({});
  ASSERT_TRUE(cl.run);
  EXPECT_EQ(cl.options.csi_endpoint, "") << "off by default";
  cl = Parse({"--data-dir", "/srv/shale", "--csi-endpoint", "unix:///csi/csi.sock", "--node-id",
              "node-7"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.csi_endpoint, "/csi/csi.sock");
  EXPECT_EQ(cl.options.node_id, "node-7");
  for (const char* bad : {"tcp://127.0.0.1:1", "unix://"}) {
    cl = Parse({"--csi-endpoint", bad});
    EXPECT_FALSE(cl.run) << bad;
    EXPECT_EQ(cl.exit_code, 2);
    EXPECT_NE(cl.err.find("--csi-endpoint"), std::string::npos) << cl.err;
  }
  cl = Parse({"--data-dir", "/srv/shale", "--csi-endpoint", "unix:///srv/shale/shaled.sock"});
  EXPECT_FALSE(cl.run) << "must differ from the control socket";
  cl = Parse({"--node-id", std::string(200, 'n')});
  EXPECT_FALSE(cl.run);
}

TEST(DaemonOptions, RelativePathsBecomeAbsolute) {
  DaemonCommandLine cl = Parse({"--data-dir", "./a/../data/", "--control-socket", "c.sock"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.data_dir, Cwd() + "/data");
  EXPECT_EQ(cl.options.control_socket, Cwd() + "/c.sock");
  cl = Parse({"--data-dir", "data/"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.control_socket, Cwd() + "/data/shaled.sock");
}

TEST(DaemonOptions, HelpDocumentsEveryOption) {
  DaemonCommandLine cl = Parse({"--help"});
  EXPECT_FALSE(cl.run);
  EXPECT_EQ(cl.exit_code, 0);
  EXPECT_TRUE(cl.err.empty());
  for (const char* flag : {"--data-dir",
                           "--default-pool-size",
                           "--default-cluster-size",
                           "--no-default-pool",
                           "--reactors",
                           "--io-backend",
                           "--commit-interval-ms",
                           "--log-level",
                           "--log-file",
                           "--control-socket",
                           "--config",
                           "--version",
                           "--nbd-listen",
                           "--nbd-socket",
                           "--nbd-max-connections",
                           "--nbd-handshake-timeout",
                           "--cluster-store",
                           "--node-name",
                           "--replica-listen",
                           "--cluster-secret-file",
                           "--node-lease-seconds",
                           "--nbd-tls-x509-dir",
                           "--nbd-tls-psk-file",
                           "--nbd-tls-authz",
                           "--nbd-insecure-tcp"}) {
    EXPECT_NE(cl.out.find(flag), std::string::npos) << flag << " missing from:\n" << cl.out;
  }
  EXPECT_NE(cl.out.find("8G"), std::string::npos) << "defaults are shown";
}

TEST(DaemonOptions, VersionPrintsVersion) {
  DaemonCommandLine cl = Parse({"--version"});
  EXPECT_FALSE(cl.run);
  EXPECT_EQ(cl.exit_code, 0);
  EXPECT_EQ(cl.out.rfind("shaled ", 0), 0u) << cl.out;
}

// Each bad command line is a usage error: exit 2 and one line naming the problem.
TEST(DaemonOptions, BadInputIsOneLineUsageError) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--frobnicate"}, "--frobnicate"},
      {{"--default-pool-size", "12Q"}, "12Q"},
      {{"--default-pool-size", "1.5G"}, "1.5G"},
      {{"--default-pool-size", "0"}, "greater than 0"},
      {{"--default-cluster-size", "3K"}, "cluster"},
      {{"--reactors", "0"}, "--reactors"},
      {{"--reactors", "many"}, "--reactors"},
      {{"--io-backend", "spdk"}, "spdk"},
      {{"--log-level", "loud"}, "loud"},
      {{"--commit-interval-ms", "0"}, "--commit-interval-ms"},
      {{"--read-cache", "writeback"}, "writeback"},
      {{"--data-dir", ""}, "--data-dir"},
      {{"--control-socket", "/" + std::string(200, 's')}, "107"},
      {{"--config", "/nonexistent/shaled.toml"}, "shaled.toml"},
      {{"positional"}, "positional"},
      {{"--nbd-listen", "10809"}, "no port"},
      {{"--nbd-listen", "example.com:10809"}, "invalid IPv4 address"},
      {{"--nbd-listen", "127.0.0.1:65536"}, "port out of range"},
      {{"--nbd-listen", "127.0.0.1:x"}, "invalid port"},
      {{"--nbd-listen", "[::zz]:1"}, "invalid IPv6 address"},
      {{"--nbd-socket", "/" + std::string(200, 'n')}, "NBD socket path"},
      {{"--nbd-socket", "/x.sock", "--control-socket", "/x.sock"}, "must differ"},
      {{"--nbd-max-connections", "0"}, "--nbd-max-connections"},
      {{"--nbd-handshake-timeout", "0"}, "--nbd-handshake-timeout"},
      // Plain TCP only when asked for explicitly; TLS settings only with a TCP listener.
      {{"--nbd-listen", "127.0.0.1:0"}, "--nbd-insecure-tcp"},
      {{"--nbd-insecure-tcp"}, "add --nbd-listen"},
      {{"--nbd-tls-psk-file", "k.psk"}, "add --nbd-listen"},
      {{"--nbd-listen", "127.0.0.1:0", "--nbd-tls-psk-file", "k", "--nbd-tls-x509-dir", "d"},
       "choose one"},
      {{"--nbd-listen", "127.0.0.1:0", "--nbd-tls-psk-file", "k", "--nbd-insecure-tcp"},
       "contradicts"},
      {{"--nbd-listen", "127.0.0.1:0", "--nbd-insecure-tcp", "--nbd-tls-authz", "a"},
       "--nbd-tls-authz needs TLS"},
  };
  for (const auto& [args, needle] : cases) {
    DaemonCommandLine cl = Parse(args);
    SCOPED_TRACE(args.front());
    EXPECT_FALSE(cl.run);
    EXPECT_EQ(cl.exit_code, 2);
    EXPECT_EQ(cl.err.rfind("shaled: ", 0), 0u) << cl.err;
    EXPECT_EQ(cl.err.find('\n'), std::string::npos) << cl.err;
    EXPECT_NE(cl.err.find(needle), std::string::npos) << cl.err;
  }
}

TEST(DaemonOptions, ClusterMode) {
  DaemonCommandLine single = Parse({});
  ASSERT_TRUE(single.run) << single.err;
  EXPECT_EQ(single.options.cluster_store, "") << "single node unless asked";
  EXPECT_EQ(single.options.replica_listen, "") << "the replica listener is off unless asked";

  DaemonCommandLine cl =
      Parse({"--cluster-store", "etcd://10.0.0.1:2379,etcd-b:2379", "--node-name", "node-a",
             "--replica-listen", "127.0.0.1:7480", "--cluster-secret-file", "secret",
             "--node-lease-seconds", "2", "--replica-timeout", "0.5", "--rebuild-bps", "64M",
             "--replica-replace-after", "30"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.cluster_store, "etcd://10.0.0.1:2379,etcd-b:2379");
  EXPECT_EQ(cl.options.node_name, "node-a");
  EXPECT_EQ(cl.options.replica_listen, "127.0.0.1:7480");
  EXPECT_EQ(cl.options.cluster_secret_file, Cwd() + "/secret");
  EXPECT_EQ(cl.options.node_lease_seconds, 2u);
  EXPECT_EQ(cl.options.replica_timeout_seconds, 0.5);
  EXPECT_EQ(cl.options.rebuild_bps, uint64_t{64} << 20);
  EXPECT_EQ(cl.options.replica_replace_after_seconds, 30.0);

  DaemonCommandLine defaults = Parse({"--cluster-store", "etcd://127.0.0.1:2379", "--node-name",
                                      "n", "--cluster-secret-file", "/s"});
  ASSERT_TRUE(defaults.run) << defaults.err;
  EXPECT_EQ(defaults.options.node_lease_seconds, 10u);
  EXPECT_EQ(defaults.options.replica_timeout_seconds, 5.0);
  EXPECT_EQ(defaults.options.rebuild_bps, 0u);
  EXPECT_EQ(defaults.options.replica_replace_after_seconds, 600.0) << "10 minutes";
  EXPECT_EQ(defaults.options.replica_listen, "");
  EXPECT_EQ(defaults.options.cluster_tls_dir, "") << "replica traffic is plain TCP unless asked";

  // Mutual TLS for replica connections: a directory, made absolute (checked at start).
  DaemonCommandLine tls = Parse({"--cluster-store", "etcd://127.0.0.1:2379", "--node-name", "n",
                                 "--cluster-secret-file", "/s", "--cluster-tls-dir", "tls"});
  ASSERT_TRUE(tls.run) << tls.err;
  EXPECT_EQ(tls.options.cluster_tls_dir, Cwd() + "/tls");

  const std::vector<std::string> ok = {"--node-name", "n", "--cluster-secret-file", "/s"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), ok.begin(), ok.end());
    return args;
  };
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {with({"--cluster-store", "http://127.0.0.1:2379"}), "--cluster-store"},
      {with({"--cluster-store", "etcd://127.0.0.1"}), "--cluster-store"},
      {with({"--cluster-store", "etcd://127.0.0.1:0"}), "--cluster-store"},
      {with({"--cluster-store", "etcd://a:1,,b:2"}), "--cluster-store"},
      {with({"--cluster-store", "etcd://a:1,a:1"}), "--cluster-store"},
      {{"--cluster-store", "etcd://a:1", "--cluster-secret-file", "/s"}, "needs --node-name"},
      {{"--cluster-store", "etcd://a:1", "--node-name", "n"}, "needs --cluster-secret-file"},
      {{"--cluster-store", "etcd://a:1", "--node-name", "a/b", "--cluster-secret-file", "/s"},
       "--node-name"},
      {with({"--cluster-store", "etcd://a:1", "--replica-listen", "7480"}), "--replica-listen"},
      {with({"--cluster-store", "etcd://a:1", "--node-lease-seconds", "0"}),
       "--node-lease-seconds"},
      {{"--node-name", "n"}, "need --cluster-store"},
      {{"--replica-listen", "127.0.0.1:7480"}, "need --cluster-store"},
      {{"--cluster-secret-file", "/s"}, "need --cluster-store"},
      {{"--node-lease-seconds", "5"}, "need --cluster-store"},
      {{"--cluster-tls-dir", "/tls"}, "need --cluster-store"},
      {{"--replica-timeout", "5"}, "need --cluster-store"},
      {{"--rebuild-bps", "1M"}, "need --cluster-store"},
      {{"--replica-replace-after", "60"}, "need --cluster-store"},
      {with({"--cluster-store", "etcd://a:1", "--replica-replace-after", "-1"}),
       "--replica-replace-after"},
      {with({"--cluster-store", "etcd://a:1", "--replica-timeout", "0"}), "--replica-timeout"},
      {with({"--cluster-store", "etcd://a:1", "--rebuild-bps", "fast"}), "--rebuild-bps"},
  };
  for (const auto& [args, needle] : cases) {
    DaemonCommandLine bad = Parse(args);
    SCOPED_TRACE(testing::PrintToString(args));
    EXPECT_FALSE(bad.run);
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_EQ(bad.err.find('\n'), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find(needle), std::string::npos) << bad.err;
  }
}

TEST(DaemonOptions, ConfigFileIsReadAndFlagsWin) {
  TempDir dir;
  const std::string config = dir.path() + "/shaled.toml";
  std::ofstream(config) << "# shaled config\n"
                        << "data-dir = \"" << dir.path() << "/data\"\n"
                        << "default-pool-size = \"2G\"\n"
                        << "reactors = 2\n"
                        << "no-default-pool = true\n";
  DaemonCommandLine cl = Parse({"--config", config, "--reactors", "3"});
  ASSERT_TRUE(cl.run) << cl.err;
  EXPECT_EQ(cl.options.data_dir, dir.path() + "/data");
  EXPECT_EQ(cl.options.control_socket, dir.path() + "/data/shaled.sock");
  EXPECT_EQ(cl.options.default_pool_size, 2 * kGiB);
  EXPECT_FALSE(cl.options.create_default_pool);
  EXPECT_EQ(cl.options.reactors, 3u);
  EXPECT_EQ(cl.options.config_file, config);
}

TEST(DaemonOptions, ConfigFileErrorsAreReported) {
  TempDir dir;
  const std::string unknown_key = dir.path() + "/unknown.toml";
  std::ofstream(unknown_key) << "data-dirr = \"/x\"\n";
  DaemonCommandLine cl = Parse({"--config", unknown_key});
  EXPECT_FALSE(cl.run);
  EXPECT_EQ(cl.exit_code, 2);
  EXPECT_NE(cl.err.find("data-dirr"), std::string::npos) << cl.err;

  const std::string bad_value = dir.path() + "/bad.toml";
  std::ofstream(bad_value) << "default-pool-size = \"-1\"\n";
  cl = Parse({"--config", bad_value});
  EXPECT_FALSE(cl.run);
  EXPECT_EQ(cl.exit_code, 2);
  EXPECT_NE(cl.err.find("-1"), std::string::npos) << cl.err;
}

}  // namespace
}  // namespace shale::daemon
