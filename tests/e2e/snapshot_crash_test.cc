// kill -9 of shaled in the middle of every snapshot-layer operation — snapshot create and
// delete, clone (of a snapshot and of the live volume), flatten, revert — and of client writes.
// After each restart: `pool check` is clean, every snapshot that existed still has its digest
// and verifies, acknowledged-and-flushed data is intact, and the interrupted operation either
// happened entirely or not at all (checked against an oracle of the volume's content).
//
// The kill comes after a random delay of 0..80 ms while the operation runs (the delay is the
// point of the test, not a wait). Run with each read cache (--read-cache none, page). Power cuts at
// the engine level are covered by tests/crash.
#include <gtest/gtest.h>
#include <signal.h>

#include <array>
#include <chrono>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/snapshot_e2e_util.h"

namespace shale::e2e {
namespace {

constexpr int kRegions = 16;                // of 1 MiB each
using Content = std::array<int, kRegions>;  // pattern byte of each region (0 = zeros)

struct SnapshotModel {
  Content content;
  std::string digest;
};

// Run with each read cache (shaled --read-cache): with `page`, reads come from the kernel's page
// cache, which must never hold a stale cluster (one freed and written again by a revert, a
// flatten or a delete, or written while it was cached).
class SnapshotCrashTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    qemu_io_ = FindProgram("qemu-io");
    if (qemu_io_.empty()) GTEST_SKIP() << "qemu-io is not installed (Debian package qemu-utils)";
    flags_ = {"--read-cache", GetParam()};
    ASSERT_TRUE(h_.StartDaemon(flags_));
    ASSERT_EQ(ShaleJson(h_, {"status"})["read_cache"], GetParam());
  }

  void Ok(const std::vector<std::string>& args) {
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  // qemu-io reads of every region of `name` against `content`.
  bool Reads(const std::string& name, const Content& content, std::string* why = nullptr) {
    std::vector<std::string> cmds;
    for (int i = 0; i < kRegions; ++i) {
      cmds.push_back("read -P " + std::to_string(content[i]) + " " + std::to_string(i) + "M 1M");
    }
    CommandResult r = QemuIo(qemu_io_, h_.NbdUri(name), cmds, /*read_only=*/true);
    if (!QemuOk(r) && why != nullptr) *why = r.Describe();
    return QemuOk(r);
  }

  std::vector<std::string> WriteCommands(int region, int pattern) {
    return {"write -P " + std::to_string(pattern) + " " + std::to_string(region) + "M 1M", "flush"};
  }

  bool Exists(const std::vector<std::string>& show) { return h_.Shale(show).exit_code == 0; }

  // Runs `argv` in the background, kills shaled after `delay`, restarts it; returns the result
  // of `argv` (which fails if the kill came first).
  CommandResult KillDuring(const std::vector<std::string>& argv, std::chrono::milliseconds delay) {
    CommandResult result;
    std::thread op([&] { result = RunProcess(argv, {.timeout = std::chrono::seconds(60)}); });
    std::this_thread::sleep_for(delay);
    h_.KillDaemon();
    op.join();
    EXPECT_TRUE(h_.StartDaemon(flags_));
    ++(result.exit_code == 0 ? completed_ : interrupted_);
    return result;
  }

  std::vector<std::string> ShaleArgv(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {ShaleBinary(), "--endpoint", h_.endpoint()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  // The invariants that hold after every crash.
  void CheckInvariants(const std::string& when, const std::string& skip_snapshot = "") {
    ExpectPoolClean(h_, when);
    for (const auto& [name, snap] : snapshots_) {
      if (name == skip_snapshot) continue;
      EXPECT_EQ(SnapshotDigest(h_, name), snap.digest) << name << " " << when;
      CommandResult v = h_.Shale({"snapshot", "verify", name});
      EXPECT_EQ(v.exit_code, 0) << name << " " << when << ": " << v.Describe();
    }
    std::string why;
    EXPECT_TRUE(Reads("v", volume_, &why)) << "volume v " << when << ": " << why;
    for (const auto& [name, content] : clones_) {
      EXPECT_TRUE(Reads(name, content, &why)) << "clone " << name << " " << when << ": " << why;
    }
  }

  void AddSnapshot(const std::string& name, const Content& content) {
    nlohmann::json j = ShaleJson(h_, {"snapshot", "show", name});
    std::string digest = SnapshotDigest(h_, name);
    if (digest.empty()) {
      CommandResult v = h_.Shale({"snapshot", "verify", name});  // records a pending digest
      EXPECT_EQ(v.exit_code, 0) << v.Describe();
      digest = SnapshotDigest(h_, name);
    }
    EXPECT_EQ(digest.size(), 32u) << name;
    snapshots_[name] = {content, digest};
  }

  std::string qemu_io_;
  std::vector<std::string> flags_;  // shaled's
  Harness h_;
  Content volume_{};
  std::map<std::string, SnapshotModel> snapshots_;  // "v@NAME"
  std::map<std::string, Content> clones_;
  int completed_ = 0, interrupted_ = 0;  // operations that finished before the kill, or not
};

TEST_P(SnapshotCrashTest, KillNineDuringEveryOperation) {
  Ok({"volume", "create", "v", "--size", "16M"});
  std::mt19937_64 rng(4242);
  int next_pattern = 1;
  auto pattern = [&] {
    next_pattern = next_pattern % 250 + 1;
    return next_pattern;
  };
  // Fill the volume so clones, flatten and revert have data to work on.
  {
    std::vector<std::string> cmds;
    for (int i = 0; i < kRegions; ++i) {
      volume_[i] = pattern();
      cmds.push_back("write -P " + std::to_string(volume_[i]) + " " + std::to_string(i) + "M 1M");
    }
    cmds.push_back("flush");
    CommandResult r = QemuIo(qemu_io_, h_.NbdUri("v"), cmds);
    ASSERT_TRUE(QemuOk(r)) << r.Describe();
  }
  Ok({"snapshot", "create", "v", "base", "--wait-digest"});
  AddSnapshot("v@base", volume_);

  enum Op { kWrite, kSnapCreate, kSnapDelete, kCloneSnap, kCloneLive, kFlatten, kRevert, kOps };
  const char* names[] = {
      "write",   "snapshot create", "snapshot delete", "clone of snapshot", "clone of live volume",
      "flatten", "revert"};
  int seq = 0;
  for (int round = 0; round < 6 && !HasFailure(); ++round) {
    for (int op = 0; op < kOps && !HasFailure(); ++op) {
      ++seq;
      const auto delay = std::chrono::milliseconds(rng() % 81);
      const std::string when = std::string("after kill -9 during ") + names[op] + " #" +
                               std::to_string(seq) + " (" + std::to_string(delay.count()) + " ms)";
      SCOPED_TRACE(when);
      // Some change since the last snapshot, so every snapshot differs from the volume.
      const int region = static_cast<int>(rng() % kRegions);
      const int p = pattern();
      CommandResult w = QemuIo(qemu_io_, h_.NbdUri("v"), WriteCommands(region, p));
      ASSERT_TRUE(QemuOk(w)) << w.Describe();
      volume_[region] = p;

      switch (op) {
        case kWrite: {
          const int r2 = static_cast<int>(rng() % kRegions);
          const int p2 = pattern();
          CommandResult r = KillDuring({qemu_io_, "-f", "raw", h_.NbdUri("v"), "-c",
                                        WriteCommands(r2, p2)[0], "-c", "flush"},
                                       delay);
          if (QemuOk(r)) {
            volume_[r2] = p2;  // acknowledged and flushed: must be there
          } else {
            // Not acknowledged: old or new data, maybe mixed. Check the other regions, then
            // make the region known again.
            Content other = volume_;
            std::vector<std::string> cmds;
            for (int i = 0; i < kRegions; ++i) {
              if (i == r2) continue;
              cmds.push_back("read -P " + std::to_string(other[i]) + " " + std::to_string(i) +
                             "M 1M");
            }
            CommandResult rest = QemuIo(qemu_io_, h_.NbdUri("v"), cmds, true);
            EXPECT_TRUE(QemuOk(rest)) << rest.Describe();
            CommandResult fix = QemuIo(qemu_io_, h_.NbdUri("v"), WriteCommands(r2, p2));
            ASSERT_TRUE(QemuOk(fix)) << fix.Describe();
            volume_[r2] = p2;
          }
          CheckInvariants(when);
          break;
        }
        case kSnapCreate: {
          // By default create answers at the cut (durable: false while its commit is in
          // flight, and then a kill may lose it); with --wait-durable, once it survives a crash.
          const std::string name = "s" + std::to_string(seq);
          const bool wait_durable = seq % 2 == 0;
          std::vector<std::string> argv = {"snapshot", "create", "v", name, "-o", "json"};
          if (wait_durable) argv.push_back("--wait-durable");
          CommandResult r = KillDuring(ShaleArgv(argv), delay);
          const bool exists = Exists({"snapshot", "show", "v@" + name});
          if (r.exit_code == 0) {
            const bool durable = r.Json()["durable"].get<bool>();
            if (wait_durable) {
              EXPECT_TRUE(durable) << r.Describe();
            }
            if (durable) {
              EXPECT_TRUE(exists) << "a durable snapshot is gone: " << r.Describe();
            }
          }
          if (exists) {
            std::string why;
            EXPECT_TRUE(Reads("v@" + name, volume_, &why)) << why;
            AddSnapshot("v@" + name, volume_);
          }
          CheckInvariants(when);
          break;
        }
        case kSnapDelete: {
          // The newest user snapshot other than base (its data merges into the volume's head).
          std::string victim;
          for (const auto& [name, s] : snapshots_) {
            if (name != "v@base") victim = name;
          }
          if (victim.empty()) break;
          CommandResult r = KillDuring(ShaleArgv({"snapshot", "delete", victim}), delay);
          const bool exists = Exists({"snapshot", "show", victim});
          if (r.exit_code == 0) {
            EXPECT_FALSE(exists) << "deleted, yet listed: " << victim;
          }
          if (!exists) snapshots_.erase(victim);
          CheckInvariants(when);  // checks the victim too when it survived
          break;
        }
        case kCloneSnap:
        case kCloneLive: {
          const std::string clone = "c" + std::to_string(seq);
          std::string source = "v";
          Content content = volume_;
          if (op == kCloneSnap) {
            auto it = std::next(snapshots_.begin(),
                                static_cast<std::ptrdiff_t>(rng() % snapshots_.size()));
            source = it->first;
            content = it->second.content;
          }
          CommandResult r = KillDuring(ShaleArgv({"clone", "create", source, clone}), delay);
          const bool exists = Exists({"volume", "show", clone});
          if (r.exit_code == 0) {
            EXPECT_TRUE(exists) << "an acknowledged clone is gone";
          }
          if (exists) {
            nlohmann::json j = ShaleJson(h_, {"volume", "show", clone});
            EXPECT_TRUE(j["clone"].is_object()) << "a clone without provenance: " << j.dump();
            clones_[clone] = content;
          }
          // An implicit snapshot of a clone that was never acknowledged goes away.
          nlohmann::json all = ShaleJson(h_, {"snapshot", "list", "--all"});
          for (const auto& s : all["snapshots"]) {
            if (s["implicit"] == true) {
              EXPECT_TRUE(clones_.count(s["implicit_for"].get<std::string>()))
                  << "implicit snapshot left behind: " << s.dump();
            }
          }
          CheckInvariants(when);
          break;
        }
        case kFlatten: {
          if (clones_.empty()) break;
          auto it = std::next(clones_.begin(), static_cast<std::ptrdiff_t>(rng() % clones_.size()));
          // Give the clone something of its own too, then flatten it.
          const int cp = pattern();
          CommandResult cw = QemuIo(qemu_io_, h_.NbdUri(it->first), WriteCommands(3, cp));
          ASSERT_TRUE(QemuOk(cw)) << cw.Describe();
          it->second[3] = cp;
          CommandResult r = KillDuring(ShaleArgv({"volume", "flatten", it->first}), delay);
          if (r.exit_code == 0) {
            nlohmann::json j = ShaleJson(h_, {"volume", "show", it->first});
            EXPECT_EQ(j["space"]["shared_bytes"], 0u) << j.dump();
          }
          CheckInvariants(when);
          break;
        }
        case kRevert: {
          auto it =
              std::next(snapshots_.begin(), static_cast<std::ptrdiff_t>(rng() % snapshots_.size()));
          const Content target = it->second.content;
          const std::string snap = it->first.substr(2);  // "v@NAME" -> "NAME"
          CommandResult r = KillDuring(ShaleArgv({"volume", "revert", "v", "--to", snap}), delay);
          std::string why_old, why_new;
          const bool old_content = Reads("v", volume_, &why_old);
          const bool new_content = Reads("v", target, &why_new);
          if (r.exit_code == 0) {
            EXPECT_TRUE(new_content) << "acknowledged revert not in effect: " << why_new;
          } else {
            EXPECT_TRUE(old_content || new_content)
                << "half a revert: neither the old content (" << why_old << ") nor the snapshot's ("
                << why_new << ")";
          }
          if (new_content) volume_ = target;
          CheckInvariants(when);
          break;
        }
      }
      // Keep the number of clones small: deleting them is not under test here.
      while (clones_.size() > 3) {
        Ok({"volume", "delete", clones_.begin()->first});
        clones_.erase(clones_.begin());
      }
    }
  }
  std::cout << "kill -9 cycles: " << completed_ << " operations completed before the kill, "
            << interrupted_ << " interrupted\n";
  // Everything goes away cleanly at the end.
  for (const auto& [name, content] : clones_) Ok({"volume", "delete", name});
  for (const auto& [name, snap] : snapshots_) Ok({"snapshot", "delete", name});
  Ok({"volume", "delete", "v"});
  ExpectPoolClean(h_, "at the end");
  EXPECT_TRUE(ShaleJson(h_, {"snapshot", "list", "--all"})["snapshots"].empty());
  EXPECT_EQ(ShaleJson(h_, {"pool", "show", "default"})["used_bytes"], 0u);
}

INSTANTIATE_TEST_SUITE_P(ReadCache, SnapshotCrashTest, ::testing::Values("none", "page"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace shale::e2e
