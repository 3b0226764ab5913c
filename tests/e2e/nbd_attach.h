// nbdfuse + loop attachments for end-to-end tests on machines whose kernel has no nbd module
// (nbd_fs_test.cc, notebook_test.cc), and the checks every test of that kind starts with (also
// csi_node_test.cc and csi_replicated_test.cc, whose driver attaches the same way, and their
// clean-up).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {

// Effective capabilities include CAP_SYS_RESOURCE (bit 24), which online ext4 resize needs.
inline bool HasCapSysResource() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;
    }
  }
  return false;
}

inline std::string TrimOutput(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Why this machine cannot run a test of nbdfuse + loop devices, "" when it can: root, /dev/fuse,
// loop devices with a free one, and every program in `tools` (their paths go to *found).
// `packages` names what scripts/deps installs for them, for the skip message.
// The size in bytes of the block device mounted at `mountpoint` (0 when unknown).
inline uint64_t MountedDeviceBytes(const std::string& mountpoint) {
  CommandResult src = RunProcess({FindProgram("findmnt"), "-n", "-o", "SOURCE", mountpoint});
  if (src.exit_code != 0) return 0;
  CommandResult size = RunProcess({FindProgram("blockdev"), "--getsize64", TrimOutput(src.out)});
  return size.exit_code == 0 ? std::stoull(TrimOutput(size.out)) : 0;
}

inline std::string NbdfuseLoopUnavailable(const std::vector<std::string>& tools,
                                          const std::string& packages,
                                          std::map<std::string, std::string>* found = nullptr) {
  if (geteuid() != 0) return "needs root (loop devices and mounts)";
  if (access("/dev/fuse", R_OK | W_OK) != 0) return "needs /dev/fuse (FUSE)";
  if (access("/dev/loop-control", R_OK | W_OK) != 0) {
    return "needs loop devices (/dev/loop-control)";
  }
  for (const std::string& tool : tools) {
    const std::string path = FindProgram(tool);
    if (path.empty()) return tool + " is not installed (scripts/deps installs " + packages + ")";
    if (found != nullptr) (*found)[tool] = path;
  }
  CommandResult free_loop = RunProcess({FindProgram("losetup"), "--find"});
  if (free_loop.exit_code != 0) return "no free loop device: " + free_loop.Describe();
  return "";
}

// One export attached as a block device (nbdfuse's file under a loop device), maybe mounted.
struct NbdAttachment {
  std::string export_name;
  std::string fuse_dir, mnt, loop;
  std::unique_ptr<ChildProcess> nbdfuse;
  bool mounted = false;
};

// nbdfuse (-r when `read_only`) on the daemon's export `a->export_name`, mounted at
// `a->fuse_dir` (pid file and log: `files_prefix`.pid / .log), waits until its file has `size`
// bytes, then a loop device over it (read-only too). "" on success, else what went wrong.
inline std::string AttachNbdfuseLoop(Harness& h, NbdAttachment* a, const std::string& files_prefix,
                                     uint64_t size, bool read_only) {
  std::filesystem::create_directories(a->fuse_dir);
  if (!a->mnt.empty()) std::filesystem::create_directories(a->mnt);
  const std::string pidfile = files_prefix + ".pid";
  std::filesystem::remove(pidfile);
  std::vector<std::string> argv = {FindProgram("nbdfuse"), "-P", pidfile};
  if (read_only) argv.push_back("-r");
  argv.insert(argv.end(), {a->fuse_dir, h.NbdUri(a->export_name)});
  a->nbdfuse = std::make_unique<ChildProcess>(argv, files_prefix + ".log");
  const std::string file = a->fuse_dir + "/nbd";
  if (!WaitFor([&] {
        std::error_code ec;
        return std::filesystem::exists(pidfile) && std::filesystem::file_size(file, ec) == size;
      })) {
    return "nbdfuse did not come up for " + a->export_name + ": " + a->nbdfuse->Log();
  }
  std::vector<std::string> losetup = {FindProgram("losetup"), "--find", "--show"};
  if (read_only) losetup.push_back("-r");
  losetup.push_back(file);
  CommandResult loop = RunProcess(losetup);
  if (loop.exit_code != 0 || TrimOutput(loop.out).rfind("/dev/loop", 0) != 0) {
    return loop.Describe();
  }
  a->loop = TrimOutput(loop.out);
  return "";
}

// Mounts the attachment's ext4 at a->mnt (read-only with noload: a read-only device must not be
// asked to replay the journal). Fails the test (EXPECT) when mount does.
inline bool MountExt4(NbdAttachment* a, bool read_only) {
  std::vector<std::string> argv = {FindProgram("mount"), "-t", "ext4"};
  if (read_only) argv.insert(argv.end(), {"-o", "ro,noload"});
  argv.insert(argv.end(), {a->loop, a->mnt});
  CommandResult r = RunProcess(argv);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  a->mounted = r.exit_code == 0;
  return a->mounted;
}

// Whatever is set up, newest first: unmount, detach the loop device, unmount FUSE, stop
// nbdfuse. With `check`, every step must succeed (EXPECT); without (TearDown after a failed
// check), failures fall back to lazy unmounts.
inline void ReleaseNbdAttachment(NbdAttachment& a, bool check) {
  if (a.mounted) {
    CommandResult r = RunProcess({FindProgram("umount"), a.mnt});
    if (check) {
      EXPECT_EQ(r.exit_code, 0) << r.Describe();  // braces: EXPECT is an if/else macro
    }
    if (r.exit_code != 0) RunProcess({FindProgram("umount"), "-l", a.mnt});
    a.mounted = false;
  }
  if (!a.loop.empty()) {
    CommandResult r = RunProcess({FindProgram("losetup"), "-d", a.loop});
    if (check) {
      EXPECT_EQ(r.exit_code, 0) << r.Describe();
    }
    a.loop.clear();
  }
  if (a.nbdfuse) {
    CommandResult r = RunProcess({FindProgram("fusermount3"), "-u", a.fuse_dir});
    if (check) {
      EXPECT_EQ(r.exit_code, 0) << r.Describe();
    }
    if (r.exit_code != 0) RunProcess({FindProgram("fusermount3"), "-uz", a.fuse_dir});
    // nbdfuse exits (flushing and closing its connections) once unmounted.
    if (check) {
      EXPECT_TRUE(WaitFor([&] { return !a.nbdfuse->running(); })) << a.nbdfuse->Log();
    }
    a.nbdfuse->Stop(SIGTERM);
    a.nbdfuse.reset();
  }
}

// Mount points under `prefix`, from /proc/self/mountinfo (deepest last).
inline std::vector<std::string> MountsUnder(const std::string& prefix) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, devno, root, mp;
    f >> id >> parent >> devno >> root >> mp;
    if (mp.rfind(prefix, 0) == 0) out.push_back(mp);
  }
  return out;
}

// The `losetup -a` lines of loop devices backed by a file under `prefix`.
inline std::string LoopsUsing(const std::string& prefix) {
  CommandResult r = RunProcess({FindProgram("losetup"), "-a"});
  std::string out;
  std::istringstream lines(r.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find(prefix) != std::string::npos) out += line + "\n";
  }
  return out;
}

// Whatever a failed CSI node test left under `root`: unmounts (deepest first, the driver's
// FUSE attach dirs last), detaches loop devices, unmounts FUSE.
inline void CleanUpCsiAttachments(const std::string& root) {
  std::vector<std::string> mounts = MountsUnder(root);
  for (auto it = mounts.rbegin(); it != mounts.rend(); ++it) {
    if (it->find("/csi/attach/") != std::string::npos) continue;
    RunProcess({FindProgram("umount"), "-l", *it});
  }
  std::istringstream loops(LoopsUsing(root));
  std::string line;
  while (std::getline(loops, line)) {
    RunProcess({FindProgram("losetup"), "-d", line.substr(0, line.find(':'))});
  }
  for (const std::string& m : MountsUnder(root)) {
    RunProcess({FindProgram("fusermount3"), "-uz", m});
  }
}

}  // namespace shale::e2e
