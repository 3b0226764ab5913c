#include "csi/attach.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace shale::csi {
namespace {

namespace fs = std::filesystem;

// A fake /dev + /sys tree in a temporary directory.
class FakeHost {
 public:
  FakeHost() {
    root_ = fs::temp_directory_path() /
            ("shale-attach-test-" + std::to_string(getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(root_ / "dev");
    fs::create_directories(root_ / "sys/block");
  }
  ~FakeHost() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  std::string dev() const { return (root_ / "dev").string(); }
  std::string sys() const { return (root_ / "sys").string(); }
  void AddDevice(const std::string& name, int client_pid = 0) {
    std::ofstream(root_ / "dev" / name).put('\n');
    fs::create_directories(root_ / "sys/block" / name);
    if (client_pid > 0) std::ofstream(root_ / "sys/block" / name / "pid") << client_pid << "\n";
  }

 private:
  static inline int counter_ = 0;
  fs::path root_;
};

TEST(CsiAttach, MethodNamesRoundTrip) {
  for (AttachMethod m : {AttachMethod::kNbdfuseLoop, AttachMethod::kKernelNbd}) {
    EXPECT_EQ(ParseAttachMethod(AttachMethodName(m)), m);
  }
  EXPECT_EQ(ParseAttachMethod(""), AttachMethod::kNbdfuseLoop) << "state files before the field";
  EXPECT_FALSE(ParseAttachMethod("iscsi").has_value());
}

TEST(CsiAttach, KernelNbdOnlyWithDeviceDriverAndClient) {
  KernelNbdProbe p{.dev_nbd0 = true, .sys_nbd0 = true, .nbd_client = "/usr/sbin/nbd-client"};
  EXPECT_EQ(ChooseAttachMethod(p), AttachMethod::kKernelNbd);
  for (int missing = 0; missing < 3; ++missing) {
    KernelNbdProbe q = p;
    if (missing == 0) q.dev_nbd0 = false;
    if (missing == 1) q.sys_nbd0 = false;  // a stale /dev node without the driver
    if (missing == 2) q.nbd_client.clear();
    EXPECT_EQ(ChooseAttachMethod(q), AttachMethod::kNbdfuseLoop) << missing;
  }
  EXPECT_EQ(ChooseAttachMethod({}), AttachMethod::kNbdfuseLoop);
}

TEST(CsiAttach, ProbeReadsDevAndSys) {
  FakeHost host;
  KernelNbdProbe empty = ProbeKernelNbd(host.dev(), host.sys());
  EXPECT_FALSE(empty.dev_nbd0);
  EXPECT_FALSE(empty.sys_nbd0);
  host.AddDevice("nbd0");
  KernelNbdProbe loaded = ProbeKernelNbd(host.dev(), host.sys());
  EXPECT_TRUE(loaded.dev_nbd0);
  EXPECT_TRUE(loaded.sys_nbd0);
}

TEST(CsiAttach, PicksLowestFreeDevice) {
  EXPECT_EQ(PickFreeNbdDevice({}), std::nullopt);
  EXPECT_EQ(PickFreeNbdDevice({{"nbd0", true}, {"nbd1", true}}), std::nullopt);
  // Numeric, not lexical, order: nbd2 before nbd10.
  EXPECT_EQ(PickFreeNbdDevice({{"nbd10", false}, {"nbd0", true}, {"nbd2", false}}), "/dev/nbd2");
  EXPECT_EQ(PickFreeNbdDevice({{"loop0", false}, {"nbdx", false}, {"nbd1", false}}), "/dev/nbd1");

  FakeHost host;
  host.AddDevice("nbd0", 4242);
  host.AddDevice("nbd1");
  host.AddDevice("nbd11");
  host.AddDevice("loop0");
  std::vector<NbdDeviceState> devices = ListNbdDevices(host.sys());
  EXPECT_EQ(devices.size(), 3u);
  EXPECT_EQ(PickFreeNbdDevice(devices), "/dev/nbd1");
  EXPECT_EQ(NbdDevicePid("/dev/nbd0", host.sys()), 4242);
  EXPECT_EQ(NbdDevicePid("/dev/nbd1", host.sys()), 0) << "no client";
  EXPECT_EQ(NbdDevicePid("/dev/loop0", host.sys()), 0) << "not an nbd device";
  EXPECT_TRUE(ListNbdDevices(host.sys() + "/nowhere").empty());
}

TEST(CsiAttach, NbdClientCommandLines) {
  using V = std::vector<std::string>;
  EXPECT_EQ(NbdClientConnectArgv("nbd-client", {.unix_socket = "/data/nbd.sock"}, "pvc-1",
                                 "/dev/nbd3", false),
            (V{"nbd-client", "-unix", "/data/nbd.sock", "/dev/nbd3", "-N", "pvc-1"}));
  EXPECT_EQ(NbdClientConnectArgv("nbd-client", {.unix_socket = "/s"}, "v@snap", "/dev/nbd0", true),
            (V{"nbd-client", "-unix", "/s", "/dev/nbd0", "-N", "v@snap", "-readonly"}));
  EXPECT_EQ(NbdClientConnectArgv("/usr/sbin/nbd-client", {.host = "127.0.0.1", .port = "10809"},
                                 "pvc-2", "/dev/nbd1", false),
            (V{"/usr/sbin/nbd-client", "-N", "pvc-2", "127.0.0.1", "10809", "/dev/nbd1"}));
  EXPECT_EQ(NbdClientDisconnectArgv("nbd-client", "/dev/nbd1"),
            (V{"nbd-client", "-d", "/dev/nbd1"}));
}

}  // namespace
}  // namespace shale::csi
