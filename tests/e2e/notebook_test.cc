// The notebook flow end to end, with real clients: a data-source volume gets an ext4
// filesystem through nbdfuse + loop and a generated dataset; it is frozen as a labelled
// snapshot with its digest; two read-only clones are mounted read-only at the same time
// (nbdfuse -r on each clone's export, losetup -r, mount -o ro,noload) and hold identical files;
// a scratch volume is written and deleted and the pool's free space comes back.
//
// Needs root, /dev/fuse and loop devices; skips with a message where they are truly missing.
// Every mount, loop device and FUSE mount is cleaned up in TearDown even when a check fails.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/e2e/nbd_attach.h"
#include "tests/e2e/snapshot_e2e_util.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kDataVolumeSize = 256 * kMiB;
constexpr int kFiles = 20;

// Deterministic "dataset" file `i`: CSV-like rows of pseudo-random numbers, 1 KiB..2 MiB.
std::string DatasetFile(int i) {
  std::mt19937_64 rng(static_cast<uint64_t>(i) * 104729 + 1);
  const size_t size = 1024 + (rng() % (2 * kMiB));
  std::string data;
  data.reserve(size + 64);
  while (data.size() < size) {
    data += std::to_string(rng() % 100000) + "," + std::to_string(rng() % 1000) + "\n";
  }
  data.resize(size);
  return data;
}

std::string DatasetPath(int i) {
  return std::string(i % 4 == 0 ? "/dataset/train/part-" : "/dataset/part-") + std::to_string(i) +
         ".csv";
}

using Attachment = NbdAttachment;

class NotebookTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = NbdfuseLoopUnavailable(
        {"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "qemu-io"},
        "libnbd-bin, fuse3, util-linux, e2fsprogs, qemu-utils", &tools_);
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_TRUE(h_.StartDaemon());
  }

  void TearDown() override {
    // Newest first: unmount, detach the loop device, unmount FUSE, stop nbdfuse.
    for (auto it = attached_.rbegin(); it != attached_.rend(); ++it) Release(**it, /*check=*/false);
    attached_.clear();
  }

  void Release(Attachment& a, bool check) { ReleaseNbdAttachment(a, check); }

  // nbdfuse on the export (read-only with -r), then a loop device over its file.
  Attachment* Attach(const std::string& export_name, bool read_only) {
    auto a = std::make_unique<Attachment>();
    Attachment* raw = a.get();
    attached_.push_back(std::move(a));
    const std::string tag = export_name.substr(0, export_name.find('@'));
    raw->export_name = export_name;
    raw->fuse_dir = h_.root() + "/fuse-" + tag;
    raw->mnt = h_.root() + "/mnt-" + tag;
    const std::string failed =
        AttachNbdfuseLoop(h_, raw, h_.root() + "/nbdfuse-" + tag, kDataVolumeSize, read_only);
    if (!failed.empty()) {
      ADD_FAILURE() << failed;
      return nullptr;
    }
    return raw;
  }

  bool Mount(Attachment* a, bool read_only) { return MountExt4(a, read_only); }

  void Ok(const std::vector<std::string>& args) {
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  Harness h_;
  std::map<std::string, std::string> tools_;
  std::vector<std::unique_ptr<Attachment>> attached_;
};

TEST_F(NotebookTest, DatasetSnapshotReadOnlyClonesScratchAndSpace) {
  const uint64_t free_at_start = PoolFreeBytes(h_);

  // 1. The data source: ext4 with a generated dataset and a checksum manifest.
  Ok({"volume", "create", "notebook-data", "--size", "256M", "--label", "kind=data-source"});
  Attachment* src = Attach("notebook-data", /*read_only=*/false);
  ASSERT_NE(src, nullptr);
  CommandResult mkfs = RunProcess({tools_["mkfs.ext4"], "-q", "-F", "-L", "dataset", src->loop},
                                  {.timeout = std::chrono::seconds(120)});
  ASSERT_EQ(mkfs.exit_code, 0) << mkfs.Describe();
  ASSERT_TRUE(Mount(src, /*read_only=*/false));
  std::filesystem::create_directories(src->mnt + "/dataset/train");
  for (int i = 0; i < kFiles; ++i) {
    std::ofstream out(src->mnt + DatasetPath(i), std::ios::binary);
    const std::string data = DatasetFile(i);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    ASSERT_TRUE(out.good()) << DatasetPath(i);
  }
  CommandResult sums = RunProcess({"/bin/sh", "-c",
                                   "cd " + src->mnt +
                                       " && find dataset -type f "
                                       "| sort | xargs sha256sum > SHA256SUMS"});
  ASSERT_EQ(sums.exit_code, 0) << sums.Describe();
  const std::string manifest = ReadTextFile(src->mnt + "/SHA256SUMS");
  ASSERT_NE(manifest.find("part-1.csv"), std::string::npos) << manifest;
  ::sync();
  Release(*src, /*check=*/true);
  ASSERT_FALSE(HasFailure());
  EXPECT_TRUE(WaitFor([&] {
    return ShaleJson(h_, {"volume", "show", "notebook-data"})["nbd_clients"] == 0;
  }));

  // 2. Frozen with provenance labels and its digest.
  nlohmann::json snap = ShaleJson(h_, {"snapshot", "create", "notebook-data", "v1", "--label",
                                       "source=https://example.com/datasets/taxi-2024.tar",
                                       "--label", "notebook=nb-42", "--wait-digest"});
  ASSERT_TRUE(snap.is_object());
  EXPECT_EQ(snap["digest_state"], "ready");
  const std::string digest = snap["digest"];
  ASSERT_EQ(digest.size(), 32u);
  EXPECT_EQ(snap["labels"]["notebook"], "nb-42");

  // 3. Two read-only clones, mounted read-only at the same time.
  Ok({"clone", "create", "notebook-data@v1", "explore-a", "--read-only"});
  Ok({"clone", "create", "notebook-data@v1", "explore-b", "--read-only"});
  for (const char* clone : {"explore-a", "explore-b"}) {
    nlohmann::json v = ShaleJson(h_, {"volume", "show", clone});
    EXPECT_EQ(v["clone"]["source"], "notebook-data@v1");
    EXPECT_EQ(v["clone"]["source_digest"], digest);
    EXPECT_EQ(v["read_only"], true);
  }
  Attachment* a = Attach("explore-a", /*read_only=*/true);
  ASSERT_NE(a, nullptr);
  Attachment* b = Attach("explore-b", /*read_only=*/true);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(Mount(a, /*read_only=*/true));
  ASSERT_TRUE(Mount(b, /*read_only=*/true));
  for (Attachment* m : {a, b}) {
    EXPECT_EQ(ReadTextFile(m->mnt + "/SHA256SUMS"), manifest) << m->export_name;
    for (int i = 0; i < kFiles; ++i) {
      EXPECT_TRUE(ReadTextFile(m->mnt + DatasetPath(i)) == DatasetFile(i))
          << m->export_name << DatasetPath(i) << " differs";
    }
    CommandResult check =
        RunProcess({"/bin/sh", "-c", "cd " + m->mnt + " && sha256sum --quiet -c SHA256SUMS"});
    EXPECT_EQ(check.exit_code, 0) << m->export_name << ": " << check.Describe();
    // Read-only all the way down.
    std::ofstream probe(m->mnt + "/dataset/new-file");
    EXPECT_FALSE(probe.good()) << m->export_name << " accepted a write";
  }
  nlohmann::json exports = ShaleJson(h_, {"export", "list"});
  for (const auto& e : exports["exports"]) {
    if (e["name"] == "explore-a" || e["name"] == "explore-b") {
      EXPECT_GE(e["clients"].size(), 1u) << e.dump();
      EXPECT_EQ(e["read_only"], true);
    }
  }
  CommandResult verify = h_.Shale({"snapshot", "verify", "notebook-data@v1"});
  EXPECT_EQ(verify.exit_code, 0) << verify.Describe();
  EXPECT_NE(verify.out.find(digest), std::string::npos) << verify.Describe();

  // 4. A scratch volume: written, deleted, its space back in the pool.
  const uint64_t free_before_scratch = PoolFreeBytes(h_);
  Ok({"volume", "create", "scratch", "--size", "128M"});
  CommandResult w = QemuIo(tools_["qemu-io"], h_.NbdUri("scratch"),
                           {"write -P 0x5c 0 32M", "write -P 0x5d 100M 4M", "flush"});
  ASSERT_TRUE(QemuOk(w)) << w.Describe();
  EXPECT_LE(PoolFreeBytes(h_) + 36 * kMiB, free_before_scratch) << "the scratch data takes space";
  Ok({"volume", "delete", "scratch"});
  EXPECT_EQ(PoolFreeBytes(h_), free_before_scratch);
  ExpectPoolClean(h_, "after the scratch volume");

  // 5. Clean up: clones, snapshot, data source; the pool is as it was.
  Release(*b, /*check=*/true);
  Release(*a, /*check=*/true);
  EXPECT_TRUE(WaitFor([&] {
    return ShaleJson(h_, {"volume", "show", "explore-a"})["nbd_clients"] == 0 &&
           ShaleJson(h_, {"volume", "show", "explore-b"})["nbd_clients"] == 0;
  }));
  for (const char* v : {"explore-a", "explore-b"}) Ok({"volume", "delete", v});
  Ok({"snapshot", "delete", "notebook-data@v1"});
  Ok({"volume", "delete", "notebook-data"});
  ExpectPoolClean(h_, "at the end");
  EXPECT_EQ(PoolFreeBytes(h_), free_at_start);
}

}  // namespace
}  // namespace shale::e2e
