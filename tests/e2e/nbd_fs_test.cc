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

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kVolumeSize = 512ull * 1024 * 1024;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

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
    if (geteuid() != 0) GTEST_SKIP() << "needs root (loop devices and mounts)";
    if (access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "needs /dev/fuse (FUSE)";
    if (access("/dev/loop-control", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "needs loop devices (/dev/loop-control)";
    }
    for (const char* tool :
         {"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount"}) {
      tools_[tool] = FindProgram(tool);
      if (tools_[tool].empty()) {
        GTEST_SKIP() << tool << " is not installed (scripts/deps installs libnbd-bin, fuse3, "
                     << "util-linux, e2fsprogs)";
      }
    }
    CommandResult free_loop = RunProcess({tools_["losetup"], "--find"});
    if (free_loop.exit_code != 0) {
      GTEST_SKIP() << "no free loop device: " << free_loop.Describe();
    }
    ASSERT_TRUE(h_.StartDaemon());
    CommandResult r = h_.Shale({"volume", "create", "notebook", "--size", "512M"});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    fuse_dir_ = h_.root() + "/fuse";
    mnt_ = h_.root() + "/mnt";
    std::filesystem::create_directories(fuse_dir_);
    std::filesystem::create_directories(mnt_);
  }

  void TearDown() override {
    // Whatever state a failed check left behind: unmount, detach, unmount FUSE, stop nbdfuse.
    if (mounted_) {
      if (RunProcess({tools_["umount"], mnt_}).exit_code != 0) {
        RunProcess({tools_["umount"], "-l", mnt_});
      }
      mounted_ = false;
    }
    if (!loop_.empty()) {
      RunProcess({tools_["losetup"], "-d", loop_});
      loop_.clear();
    }
    if (nbdfuse_) {
      if (RunProcess({tools_["fusermount3"], "-u", fuse_dir_}).exit_code != 0) {
        RunProcess({tools_["fusermount3"], "-uz", fuse_dir_});
      }
      nbdfuse_->Stop(SIGTERM);
      nbdfuse_.reset();
    }
  }

  // nbdfuse (a new NBD connection) + a loop device over its file.
  void Attach() {
    const std::string pidfile = h_.root() + "/nbdfuse.pid";
    std::filesystem::remove(pidfile);
    nbdfuse_ =
        std::make_unique<ChildProcess>(std::vector<std::string>{tools_["nbdfuse"], "-P", pidfile,
                                                                fuse_dir_, h_.NbdUri("notebook")},
                                       h_.root() + "/nbdfuse.log");
    const std::string file = fuse_dir_ + "/nbd";
    ASSERT_TRUE(WaitFor([&] {
      std::error_code ec;
      return std::filesystem::exists(pidfile) &&
             std::filesystem::file_size(file, ec) == kVolumeSize;
    })) << "nbdfuse did not come up: "
        << nbdfuse_->Log();
    CommandResult loop = RunProcess({tools_["losetup"], "--find", "--show", file});
    ASSERT_EQ(loop.exit_code, 0) << loop.Describe();
    loop_ = Trim(loop.out);
    ASSERT_EQ(loop_.rfind("/dev/loop", 0), 0u) << loop.Describe();
  }

  void Mount() {
    CommandResult r = RunProcess({tools_["mount"], "-t", "ext4", loop_, mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    mounted_ = true;
  }

  void Unmount() {
    CommandResult r = RunProcess({tools_["umount"], mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    mounted_ = false;
  }

  void Detach() {
    CommandResult r = RunProcess({tools_["losetup"], "-d", loop_});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    loop_.clear();
    r = RunProcess({tools_["fusermount3"], "-u", fuse_dir_});
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
    // nbdfuse exits (flushing and closing its connection) once unmounted.
    EXPECT_TRUE(WaitFor([&] { return !nbdfuse_->running(); })) << nbdfuse_->Log();
    nbdfuse_.reset();
  }

  Harness h_;
  std::map<std::string, std::string> tools_;
  std::string fuse_dir_, mnt_, loop_;
  std::unique_ptr<ChildProcess> nbdfuse_;
  bool mounted_ = false;
};

TEST_F(NbdFilesystemTest, Ext4RoundTripThroughNbdfuseAndLoop) {
  constexpr int kFiles = 24;
  ASSERT_NO_FATAL_FAILURE(Attach());
  CommandResult mkfs =
      RunProcess({tools_["mkfs.ext4"], "-q", "-F", loop_}, {.timeout = std::chrono::seconds(120)});
  ASSERT_EQ(mkfs.exit_code, 0) << mkfs.Describe();
  ASSERT_NO_FATAL_FAILURE(Mount());
  std::filesystem::create_directories(mnt_ + "/data/nested");
  for (int i = 0; i < kFiles; ++i) {
    const std::string path = mnt_ + (i % 3 == 0 ? "/data/nested/f" : "/data/f") + std::to_string(i);
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
  CommandResult fsck =
      RunProcess({tools_["fsck.ext4"], "-n", "-f", loop_}, {.timeout = std::chrono::seconds(120)});
  EXPECT_EQ(fsck.exit_code, 0) << fsck.Describe();
  ASSERT_NO_FATAL_FAILURE(Mount());
  for (int i = 0; i < kFiles; ++i) {
    const std::string path = mnt_ + (i % 3 == 0 ? "/data/nested/f" : "/data/f") + std::to_string(i);
    EXPECT_TRUE(ReadTextFile(path) == FileContents(i)) << path << " differs after remount";
  }
  ASSERT_NO_FATAL_FAILURE(Unmount());
  ASSERT_NO_FATAL_FAILURE(Detach());
}

}  // namespace
}  // namespace shale::e2e
