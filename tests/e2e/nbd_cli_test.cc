// The NBD server as admins see it through the CLI: export URIs and client counts in
// `volume show`, `export list` with every client, deleting a volume that has clients (refused
// naming them, or --force), resizing one, read-only volumes, `status`, and turning NBD off.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

class NbdCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(h_.StartDaemon());
    CommandResult r = h_.Shale({"volume", "create", "vol", "--size", "64M"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    address_ = h_.NbdAddress();
    ASSERT_FALSE(address_.empty());
  }

  // A client that negotiated `name` and stays connected.
  std::unique_ptr<NbdRawClient> Client(const std::string& name, bool unix_socket = false) {
    auto c = unix_socket ? NbdRawClient::Unix(h_.nbd_socket_path()) : NbdRawClient::Tcp(address_);
    EXPECT_NE(c, nullptr);
    if (c == nullptr) return nullptr;
    EXPECT_TRUE(c->Go(name).has_value()) << "negotiating " << name;
    return c;
  }

  nlohmann::json Show(const std::string& name) {
    CommandResult r = h_.Shale({"volume", "show", name, "-o", "json"});
    EXPECT_EQ(r.exit_code, 0) << r.Describe();
    return r.Json();
  }

  Harness h_;
  std::string address_;
};

TEST_F(NbdCliTest, VolumeShowHasTheExportUriAndClientCount) {
  nlohmann::json v = Show("vol");
  EXPECT_EQ(v["export_uri"], "nbd://" + address_ + "/vol");
  EXPECT_EQ(v["nbd_clients"], 0);
  auto a = Client("vol");
  auto b = Client("vol", /*unix_socket=*/true);
  ASSERT_TRUE(a && b);
  v = Show("vol");
  EXPECT_EQ(v["nbd_clients"], 2);
  EXPECT_EQ(v["open_count"], 2);
  CommandResult table = h_.Shale({"volume", "show", "vol"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_NE(table.out.find("Export:        nbd://" + address_ + "/vol\n"), std::string::npos)
      << table.out;
  EXPECT_NE(table.out.find("NBD clients:   2\n"), std::string::npos) << table.out;
  a.reset();
  b.reset();
  EXPECT_TRUE(WaitFor([&] { return Show("vol")["nbd_clients"] == 0; }));
}

TEST_F(NbdCliTest, ExportListShowsEveryExportWithItsClients) {
  ASSERT_EQ(h_.Shale({"volume", "create", "idle", "--size", "8M", "--read-only"}).exit_code, 0);
  auto tcp = Client("vol");
  auto local = Client("vol", /*unix_socket=*/true);
  ASSERT_TRUE(tcp && local);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(tcp->Request(NbdRawClient::kCmdWrite, i * 4096, 4096, std::string(4096, 'x')), 0);
  }
  std::string data;
  ASSERT_EQ(tcp->Request(NbdRawClient::kCmdRead, 0, 8192, "", &data), 0);

  CommandResult r = h_.Shale({"export", "list", "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  nlohmann::json j = r.Json();
  ASSERT_EQ(j["exports"].size(), 2u) << r.Describe();
  EXPECT_EQ(j["handshaking"], 0);
  const nlohmann::json& idle = j["exports"][0];
  EXPECT_EQ(idle["name"], "idle");
  EXPECT_EQ(idle["read_only"], true);
  EXPECT_EQ(idle["clients"].size(), 0u);
  const nlohmann::json& vol = j["exports"][1];
  EXPECT_EQ(vol["name"], "vol");
  EXPECT_EQ(vol["uri"], "nbd://" + address_ + "/vol");
  EXPECT_EQ(vol["size_bytes"], 64 * kMiB);
  ASSERT_EQ(vol["clients"].size(), 2u);
  const nlohmann::json& c0 = vol["clients"][0];
  EXPECT_EQ(c0["transport"], "tcp");
  EXPECT_EQ(c0["peer"], "127.0.0.1:" + std::to_string(tcp->local_port()));
  EXPECT_EQ(c0["requests"], 6);
  EXPECT_EQ(c0["bytes_written"], 5 * 4096);
  EXPECT_EQ(c0["bytes_read"], 8192);
  EXPECT_GT(c0["connected_unix_ns"].get<uint64_t>(), 0u);
  const nlohmann::json& c1 = vol["clients"][1];
  EXPECT_EQ(c1["transport"], "unix");
  EXPECT_EQ(c1["peer"], "pid " + std::to_string(getpid()));

  // A client still negotiating is counted apart.
  auto pending = NbdRawClient::Tcp(address_);
  ASSERT_NE(pending, nullptr);
  EXPECT_TRUE(WaitFor([&] {
    return h_.Shale({"export", "list", "-o", "json"}).Json()["handshaking"] == 1;
  }));

  CommandResult table = h_.Shale({"export", "list"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_EQ(table.out.rfind("EXPORT  MODE  SIZE    CLIENT", 0), 0u) << table.out;
  EXPECT_NE(table.out.find("tcp 127.0.0.1:" + std::to_string(tcp->local_port())), std::string::npos)
      << table.out;
  EXPECT_NE(table.out.find("unix pid " + std::to_string(getpid())), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("1 connection(s) still negotiating"), std::string::npos) << table.out;
}

TEST_F(NbdCliTest, DeletingAVolumeWithClientsNamesThemAndForceDisconnectsThem) {
  auto c = Client("vol");
  ASSERT_TRUE(c);
  CommandResult refused = h_.Shale({"volume", "delete", "vol"});
  ExpectOneLineError(refused,
                     "connected NBD client(s): tcp 127.0.0.1:" + std::to_string(c->local_port()));
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << refused.Describe();
  // The client was not disturbed.
  EXPECT_EQ(c->Request(NbdRawClient::kCmdRead, 0, 4096), 0);

  CommandResult forced = h_.Shale({"volume", "delete", "vol", "--force"});
  ASSERT_EQ(forced.exit_code, 0) << forced.Describe();
  EXPECT_EQ(forced.out, "volume 'vol' deleted\n");
  EXPECT_TRUE(c->WaitClosed());
  ExpectOneLineError(h_.Shale({"volume", "show", "vol"}), "not found");
  // The name is free again.
  ASSERT_EQ(h_.Shale({"volume", "create", "vol", "--size", "8M"}).exit_code, 0);
  auto again = Client("vol");
  ASSERT_TRUE(again);
}

TEST_F(NbdCliTest, ResizeWithClientsConnectedKeepsTheirSizeUntilReconnect) {
  auto c = Client("vol");
  ASSERT_TRUE(c);
  CommandResult r = h_.Shale({"volume", "resize", "vol", "--size", "128M"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  // The connected client keeps the 64 MiB it negotiated: beyond it is out of range.
  EXPECT_EQ(c->Request(NbdRawClient::kCmdRead, 64 * kMiB, 4096), 22);  // NBD_EINVAL
  EXPECT_EQ(c->Request(NbdRawClient::kCmdRead, 64 * kMiB - 4096, 4096), 0);
  auto fresh = NbdRawClient::Tcp(address_);
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(fresh->Go("vol"), 128 * kMiB);
  EXPECT_EQ(fresh->Request(NbdRawClient::kCmdRead, 64 * kMiB, 4096), 0);
}

TEST_F(NbdCliTest, ReadOnlyVolumesRefuseWritesOverNbd) {
  ASSERT_EQ(h_.Shale({"volume", "create", "ro", "--size", "16M", "--read-only"}).exit_code, 0);
  auto c = Client("ro");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Request(NbdRawClient::kCmdWrite, 0, 4096, std::string(4096, 'w')), 1);  // EPERM
  std::string data;
  EXPECT_EQ(c->Request(NbdRawClient::kCmdRead, 0, 4096, "", &data), 0);
  EXPECT_EQ(data, std::string(4096, '\0'));
  EXPECT_EQ(Show("ro")["stats"]["writes"], 0);

  const std::string qemu_io = FindProgram("qemu-io");
  if (qemu_io.empty()) GTEST_SKIP() << "qemu-io is not installed (qemu-utils)";
  CommandResult w =
      RunProcess({qemu_io, "-f", "raw", "nbd://" + address_ + "/ro", "-c", "write -P 1 0 4k"});
  EXPECT_NE(w.out + w.err, "");
  EXPECT_NE((w.out + w.err).find("ermi"), std::string::npos) << w.Describe();  // EPERM
}

TEST_F(NbdCliTest, StatusReportsTheNbdServer) {
  CommandResult r = h_.Shale({"status", "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  const nlohmann::json nbd = r.Json()["nbd"];
  EXPECT_EQ(nbd["enabled"], true);
  EXPECT_EQ(nbd["tcp_address"], address_);
  EXPECT_EQ(nbd["unix_socket"], h_.nbd_socket_path());
  EXPECT_EQ(nbd["max_connections"], 128);
  CommandResult table = h_.Shale({"status"});
  EXPECT_NE(table.out.find("NBD TCP:          nbd://" + address_ + "/VOLUME"), std::string::npos)
      << table.out;
}

TEST(NbdCli, NbdCanBeTurnedOff) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon({"--nbd-listen", "none", "--nbd-socket", "none"}));
  CommandResult r = h.Shale({"status", "-o", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.Json()["nbd"]["enabled"], false);
  ASSERT_EQ(h.Shale({"volume", "create", "v", "--size", "8M"}).exit_code, 0);
  EXPECT_EQ(h.Shale({"volume", "show", "v", "-o", "json"}).Json()["export_uri"], "");
  EXPECT_FALSE(std::filesystem::exists(h.nbd_socket_path()));
  // Only the UNIX socket: URIs name it.
  EXPECT_EQ(h.StopDaemon(SIGTERM), 0);
  ASSERT_TRUE(h.StartDaemon({"--nbd-listen", "none"}));
  EXPECT_EQ(h.Shale({"volume", "show", "v", "-o", "json"}).Json()["export_uri"],
            "nbd+unix:///v?socket=" + h.nbd_socket_path());
  auto c = NbdRawClient::Unix(h.nbd_socket_path());
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->Go("v"), 8 * kMiB);
}

TEST(NbdCli, PortInUseIsAClearStartupError) {
  Harness a;
  ASSERT_TRUE(a.StartDaemon());
  const std::string taken = a.NbdAddress();
  Harness b;
  CommandResult r =
      RunProcess({ShaledBinary(), "--data-dir", b.data_dir(), "--default-pool-size", "1G",
                  "--nbd-listen", taken, "--nbd-insecure-tcp", "--log-file", b.root() + "/log"});
  ExpectOneLineError(r, "cannot listen for NBD on " + taken, "shaled: ");
  EXPECT_NE(r.err.find("--nbd-listen"), std::string::npos) << r.Describe();
}

}  // namespace
}  // namespace shale::e2e
