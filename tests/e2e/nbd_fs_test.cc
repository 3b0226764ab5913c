// A filesystem on a Shale volume, through NBD, the way a notebook pod gets one where the kernel
// has no nbd module: nbdfuse exposes the export as a file, a loop device makes it a block
// device, then mkfs.ext4, mount, write files with known contents, unmount, detach everything,
// attach again (a new NBD connection), fsck -n must be clean and every file intact.
//
// Needs root, /dev/fuse and loop devices; skips with a message where they are truly missing.
// Mounts, loop devices and the FUSE mount are cleaned up in TearDown even when a check fails.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/e2e/nbd_attach.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kVolumeSize = 512ull * 1024 * 1024;

// Deterministic contents of test file `i`.
std::string FileContents(int i) {
  const size_t sizes[] = {0, 1, 511, 4096, 65537, 1 << 20, 3 * (1 << 20) + 123, 8 << 20};
  std::string data(sizes[i % 8] + static_cast<size_t>(i), '\0');
  std::mt19937_64 rng(static_cast<uint64_t>(i) * 7919);
  for (char& c : data) c = static_cast<char>(rng());
  return data;
}

class NbdFilesystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = NbdfuseLoopUnavailable(
        {"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount"},
        "libnbd-bin, fuse3, util-linux, e2fsprogs", &tools_);
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_TRUE(h_.StartDaemon());
    CommandResult r = h_.Shale({"volume", "create", "notebook", "--size", "512M"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    a_.export_name = "notebook";
    a_.fuse_dir = h_.root() + "/fuse";
    a_.mnt = h_.root() + "/mnt";
  }

  // Whatever state a failed check left behind: unmount, detach, unmount FUSE, stop nbdfuse.
  void TearDown() override { ReleaseNbdAttachment(a_, /*check=*/false); }

  // nbdfuse (a new NBD connection) + a loop device over its file.
  void Attach() {
    ASSERT_EQ(AttachNbdfuseLoop(h_, &a_, h_.root() + "/nbdfuse", kVolumeSize, false), "");
  }

  void Mount() { ASSERT_TRUE(MountExt4(&a_, /*read_only=*/false)); }

  void Unmount() {
    CommandResult r = RunProcess({tools_["umount"], a_.mnt});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    a_.mounted = false;
  }

  void Detach() {
    ReleaseNbdAttachment(a_, /*check=*/true);
    ASSERT_FALSE(HasFailure());
  }

  Harness h_;
  std::map<std::string, std::string> tools_;
  NbdAttachment a_;
};

TEST_F(NbdFilesystemTest, Ext4RoundTripThroughNbdfuseAndLoop) {
  constexpr int kFiles = 24;
  ASSERT_NO_FATAL_FAILURE(Attach());
  CommandResult mkfs = RunProcess({tools_["mkfs.ext4"], "-q", "-F", a_.loop},
                                  {.timeout = std::chrono::seconds(120)});
  ASSERT_EQ(mkfs.exit_code, 0) << mkfs.Describe();
  ASSERT_NO_FATAL_FAILURE(Mount());
  std::filesystem::create_directories(a_.mnt + "/data/nested");
  for (int i = 0; i < kFiles; ++i) {
    const std::string path =
        a_.mnt + (i % 3 == 0 ? "/data/nested/f" : "/data/f") + std::to_string(i);
    std::ofstream out(path, std::ios::binary);
    const std::string contents = FileContents(i);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    ASSERT_TRUE(out.good()) << path;
  }
  ::sync();
  // The client is visible while it works (nbdfuse opens several connections: multi-conn).
  CommandResult exports = h_.Shale({"export", "list", "-o", "json"});
  ASSERT_EQ(exports.exit_code, 0) << exports.Describe();
  EXPECT_GE(exports.Json()["exports"][0]["clients"].size(), 1u) << exports.Describe();
  ASSERT_NO_FATAL_FAILURE(Unmount());
  ASSERT_NO_FATAL_FAILURE(Detach());
  EXPECT_TRUE(WaitFor([&] {
    return h_.Shale({"volume", "show", "notebook", "-o", "json"}).Json()["nbd_clients"] == 0;
  }));

  // Everything again through a new connection: a clean filesystem with every file intact.
  ASSERT_NO_FATAL_FAILURE(Attach());
  CommandResult fsck = RunProcess({tools_["fsck.ext4"], "-n", "-f", a_.loop},
                                  {.timeout = std::chrono::seconds(120)});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.Describe();
  ASSERT_NO_FATAL_FAILURE(Mount());
  for (int i = 0; i < kFiles; ++i) {
    const std::string path =
        a_.mnt + (i % 3 == 0 ? "/data/nested/f" : "/data/f") + std::to_string(i);
    EXPECT_TRUE(ReadTextFile(path) == FileContents(i)) << path << " differs after remount";
  }
  ASSERT_NO_FATAL_FAILURE(Unmount());
  ASSERT_NO_FATAL_FAILURE(Detach());
}

}  // namespace
}  // namespace shale::e2e
