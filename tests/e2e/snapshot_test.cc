// Snapshots and clones through the real binaries and real NBD clients (qemu-io, nbdcopy):
//  - data: a snapshot reads what was written before it, the volume what came after, clones
//    read the snapshot; writes to a snapshot export or a read-only clone fail (EPERM); a
//    writable clone diverges without touching its snapshot;
//  - chains: 64 snapshots with interleaved writes, each read back against an oracle, deleted in
//    random order with the survivors re-checked and `pool check` clean after every step; the
//    chain limit is a clear error;
//  - provenance: the digest survives restarts (clean and kill -9) and export/import; one byte
//    flipped in the pool file under a snapshot makes `snapshot verify` fail loudly.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/e2e/nbd_raw_client.h"
#include "tests/e2e/snapshot_e2e_util.h"

namespace shale::e2e {
namespace {

constexpr int64_t kNbdEperm = 1;

class SnapshotE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(h_.StartDaemon()); }

  void Ok(const std::vector<std::string>& args) {
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  Harness h_;
};

TEST_F(SnapshotE2eTest, SnapshotsAndClonesReadTheRightData) {
  SHALE_REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
  Ok({"volume", "create", "data", "--size", "64M"});
  // Pattern A: 4 MiB plus one sub-cluster block further on.
  CommandResult r =
      QemuIo(qemu_io, h_.NbdUri("data"), {"write -P 0xa1 0 4M", "write -P 0xa2 40M 4k", "flush"});
  ASSERT_TRUE(QemuOk(r)) << r.Describe();
  Ok({"snapshot", "create", "data", "a", "--label", "pattern=A", "--wait-digest"});
  const std::string digest_a = SnapshotDigest(h_, "data@a");
  ASSERT_EQ(digest_a.size(), 32u);
  // Pattern B over part of A (whole clusters, a 4 KiB piece inside a cluster) and beyond it.
  r = QemuIo(qemu_io, h_.NbdUri("data"),
             {"write -P 0xb1 0 2M", "write -P 0xb2 3M 4k", "write -P 0xb3 48M 1M", "flush"});
  ASSERT_TRUE(QemuOk(r)) << r.Describe();

  Ok({"clone", "create", "data@a", "rw-clone"});
  Ok({"clone", "create", "data@a", "ro-clone", "--read-only"});

  const std::vector<std::string> reads_a = {"read -P 0xa1 0 4M", "read -P 0xa2 40M 4k",
                                            "read -P 0 48M 1M", "read -P 0 4M 1M"};
  r = QemuIo(qemu_io, h_.NbdUri("data@a"), reads_a, /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << "the snapshot export reads A: " << r.Describe();
  r = QemuIo(qemu_io, h_.NbdUri("data"),
             {"read -P 0xb1 0 2M", "read -P 0xa1 2M 1M", "read -P 0xb2 3M 4k",
              "read -P 0xa1 3149824 1044480", "read -P 0xa2 40M 4k", "read -P 0xb3 48M 1M"},
             /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << "the volume reads B over A: " << r.Describe();
  for (const char* clone : {"rw-clone", "ro-clone"}) {
    r = QemuIo(qemu_io, h_.NbdUri(clone), reads_a, /*read_only=*/true);
    EXPECT_TRUE(QemuOk(r)) << clone << " reads A: " << r.Describe();
  }

  // Writes to the snapshot export and to the read-only clone fail: qemu-io cannot even open
  // them for writing, and a client that writes anyway gets EPERM.
  for (const char* name : {"data@a", "ro-clone"}) {
    r = QemuIo(qemu_io, h_.NbdUri(name), {"write -P 0xee 0 4k"});
    EXPECT_NE(r.exit_code, 0) << name << ": " << r.Describe();
    EXPECT_NE((r.out + r.err).find("Permission denied"), std::string::npos) << r.Describe();
    auto client = NbdRawClient::Tcp(h_.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go(name).has_value()) << name;
    EXPECT_EQ(client->Request(NbdRawClient::kCmdWrite, 0, 4096, std::string(4096, 'x')), kNbdEperm)
        << name;
    std::string data;
    EXPECT_EQ(client->Request(NbdRawClient::kCmdRead, 0, 4096, "", &data), 0);
    EXPECT_EQ(data, std::string(4096, '\xa1')) << name << " still reads A";
    client->Request(NbdRawClient::kCmdDisc, 0, 0);
  }

  // The writable clone diverges; the snapshot, the volume and the other clone do not move.
  r = QemuIo(qemu_io, h_.NbdUri("rw-clone"),
             {"write -P 0xc1 1M 8k", "write -P 0xc2 60M 64k", "flush"});
  ASSERT_TRUE(QemuOk(r)) << r.Describe();
  r = QemuIo(qemu_io, h_.NbdUri("rw-clone"),
             {"read -P 0xa1 0 1M", "read -P 0xc1 1M 8k", "read -P 0xa1 1056768 3137536",
              "read -P 0xc2 60M 64k"},
             /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << r.Describe();
  r = QemuIo(qemu_io, h_.NbdUri("data@a"), reads_a, /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << r.Describe();
  r = QemuIo(qemu_io, h_.NbdUri("ro-clone"), reads_a, /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << r.Describe();
  EXPECT_EQ(SnapshotDigest(h_, "data@a"), digest_a);
  r = h_.Shale({"snapshot", "verify", "data@a"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.out.find(digest_a), std::string::npos) << r.Describe();

  // Provenance and space as the CLI shows them.
  nlohmann::json ro = ShaleJson(h_, {"volume", "show", "ro-clone"});
  EXPECT_EQ(ro["clone"]["source"], "data@a");
  EXPECT_EQ(ro["clone"]["source_digest"], digest_a);
  EXPECT_EQ(ro["clone"]["read_only"], true);
  EXPECT_EQ(ro["read_only"], true);
  EXPECT_EQ(ro["space"]["owned_bytes"], 0u);
  EXPECT_GE(ro["space"]["shared_bytes"].get<uint64_t>(), 4 * kMiB);
  nlohmann::json snap = ShaleJson(h_, {"snapshot", "show", "data@a"});
  EXPECT_EQ(snap["volume"], "data");
  EXPECT_EQ(snap["labels"]["pattern"], "A");
  EXPECT_EQ(snap["clones"].size(), 2u);
  EXPECT_EQ(snap["export_uri"], h_.NbdUri("data@a"));
  nlohmann::json exports = ShaleJson(h_, {"export", "list"});
  bool listed = false;
  for (const auto& e : exports["exports"]) {
    if (e["name"] == "data@a") listed = e["snapshot"] == true && e["read_only"] == true;
  }
  EXPECT_TRUE(listed) << exports.dump();
  CommandResult table = h_.Shale({"volume", "show", "ro-clone"});
  EXPECT_NE(table.out.find("data@a (read-only)"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find(digest_a), std::string::npos) << table.out;

  // Deleting the snapshot keeps both clones readable; then everything goes and the pool is
  // back where it started.
  r = h_.Shale({"snapshot", "delete", "data@a"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.out.find("ro-clone"), std::string::npos) << r.Describe();
  r = QemuIo(qemu_io, h_.NbdUri("ro-clone"), reads_a, /*read_only=*/true);
  EXPECT_TRUE(QemuOk(r)) << r.Describe();
  ExpectPoolClean(h_, "after deleting the snapshot");
  for (const char* v : {"ro-clone", "rw-clone", "data"}) Ok({"volume", "delete", v});
  ExpectPoolClean(h_, "after deleting everything");
  nlohmann::json pool = ShaleJson(h_, {"pool", "show", "default"});
  EXPECT_EQ(pool["used_bytes"], 0u) << pool.dump();
}

// Writes, snapshots and the expected content of each snapshot: a list of (offset, length,
// pattern byte) writes over a zeroed volume.
struct Write {
  uint64_t offset;
  uint64_t length;
  int pattern;
};

std::string Expected(uint64_t size, const std::vector<Write>& writes) {
  std::string data(size, '\0');
  for (const Write& w : writes) {
    std::fill_n(data.begin() + static_cast<std::ptrdiff_t>(w.offset), w.length,
                static_cast<char>(w.pattern));
  }
  return data;
}

TEST_F(SnapshotE2eTest, ChainOf64SnapshotsReadBackAndDeleteInAnyOrder) {
  SHALE_REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
  SHALE_REQUIRE_TOOL(nbdcopy, "nbdcopy", "libnbd-bin");
  constexpr uint64_t kSize = 8 * kMiB;
  constexpr int kSnapshots = 64;
  Ok({"volume", "create", "chain", "--size", "8M"});
  std::mt19937_64 rng(20240501);
  std::vector<Write> writes;
  std::vector<size_t> writes_at;  // writes_at[i]: how many writes snapshot i holds
  const std::string uri = h_.NbdUri("chain");
  for (int i = 0; i < kSnapshots; ++i) {
    // Two writes per step: a sub-cluster one (4..16 KiB) and a larger unaligned one (4 KiB
    // aligned, up to 192 KiB), so both partial and whole-cluster overwrites happen.
    std::vector<std::string> cmds;
    for (uint64_t max_len : {16 * 1024ull, 192 * 1024ull}) {
      const uint64_t len = 4096 * (1 + rng() % (max_len / 4096));
      const uint64_t off = 4096 * (rng() % ((kSize - len) / 4096 + 1));
      const int pattern = 1 + static_cast<int>(rng() % 255);
      writes.push_back({off, len, pattern});
      cmds.push_back("write -P " + std::to_string(pattern) + " " + std::to_string(off) + " " +
                     std::to_string(len));
    }
    cmds.push_back("flush");
    CommandResult r = QemuIo(qemu_io, uri, cmds);
    ASSERT_TRUE(QemuOk(r)) << r.Describe();
    Ok({"snapshot", "create", "chain", "s" + std::to_string(i)});
    writes_at.push_back(writes.size());
    if (i % 8 == 7) ExpectPoolClean(h_, "after snapshot s" + std::to_string(i));
  }
  // One more write after the last snapshot: the volume differs from all of them.
  CommandResult r = QemuIo(qemu_io, uri, {"write -P 7 0 64k", "flush"});
  ASSERT_TRUE(QemuOk(r)) << r.Describe();
  writes.push_back({0, 64 * 1024, 7});

  // Reads a snapshot (or the volume) whole with nbdcopy and compares it with the oracle.
  const std::string copy = h_.root() + "/copy.img";
  auto check = [&](const std::string& name, const std::vector<Write>& upto) {
    std::filesystem::remove(copy);
    CommandResult c = Tool({nbdcopy, h_.NbdUri(name), copy});
    if (c.exit_code != 0) return "nbdcopy failed: " + c.Describe();
    return ReadTextFile(copy) == Expected(kSize, upto) ? std::string()
                                                       : "content differs from the oracle";
  };
  auto writes_of = [&](int i) {
    return std::vector<Write>(writes.begin(),
                              writes.begin() + static_cast<std::ptrdiff_t>(writes_at[i]));
  };
  std::vector<int> alive(kSnapshots);
  for (int i = 0; i < kSnapshots; ++i) alive[i] = i;
  auto check_all = [&](const std::string& when) {
    for (int i : alive) {
      EXPECT_EQ(check("chain@s" + std::to_string(i), writes_of(i)), "") << "s" << i << " " << when;
    }
    EXPECT_EQ(check("chain", writes), "") << "the volume " << when;
  };
  check_all("after creating the chain");
  ExpectPoolClean(h_, "after creating the chain");

  // The chain limit: 127 snapshots in a volume's chain, then a clear refusal.
  for (int i = kSnapshots; i < 127; ++i)
    Ok({"snapshot", "create", "chain", "s" + std::to_string(i)});
  CommandResult limit = h_.Shale({"snapshot", "create", "chain", "one-too-many"});
  ExpectOneLineError(limit, "limit of 127 snapshots");
  for (int i = kSnapshots; i < 127; ++i) Ok({"snapshot", "delete", "chain@s" + std::to_string(i)});

  std::shuffle(alive.begin(), alive.end(), rng);
  int deleted = 0;
  while (!alive.empty()) {
    const int victim = alive.back();
    alive.pop_back();
    Ok({"snapshot", "delete", "chain@s" + std::to_string(victim)});
    ++deleted;
    const std::string when =
        "after deleting " + std::to_string(deleted) + " (s" + std::to_string(victim) + ")";
    ExpectPoolClean(h_, when);
    // The snapshots next to the deleted one (their data merged or moved) and a random one.
    std::vector<int> sorted = alive;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int> probe;
    auto next = std::upper_bound(sorted.begin(), sorted.end(), victim);
    if (next != sorted.end()) probe.push_back(*next);
    if (next != sorted.begin()) probe.push_back(*std::prev(next));
    if (!sorted.empty()) probe.push_back(sorted[rng() % sorted.size()]);
    for (int i : probe) {
      EXPECT_EQ(check("chain@s" + std::to_string(i), writes_of(i)), "") << "s" << i << " " << when;
      // The digest recorded when it was created, recomputed from what is on disk now.
      CommandResult v = h_.Shale({"snapshot", "verify", "chain@s" + std::to_string(i)});
      EXPECT_EQ(v.exit_code, 0) << when << ": " << v.Describe();
    }
    if (deleted % 32 == 0) check_all(when);
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_EQ(check("chain", writes), "") << "the volume after deleting every snapshot";
  EXPECT_TRUE(ShaleJson(h_, {"snapshot", "list", "--all"})["snapshots"].empty());
  Ok({"volume", "delete", "chain"});
  ExpectPoolClean(h_, "after deleting the volume");
  EXPECT_EQ(ShaleJson(h_, {"pool", "show", "default"})["used_bytes"], 0u);
}

// Offsets of every occurrence of `needle` in the file.
std::vector<int64_t> FindInFile(const std::string& path, const std::string& needle) {
  std::vector<int64_t> found;
  std::ifstream in(path, std::ios::binary);
  constexpr size_t kChunk = 4 * kMiB;
  std::string buf;
  std::string carry;
  int64_t base = 0;  // file offset of carry[0]
  std::vector<char> chunk(kChunk);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    buf = carry + std::string(chunk.data(), static_cast<size_t>(got));
    for (size_t at = buf.find(needle); at != std::string::npos; at = buf.find(needle, at + 1)) {
      found.push_back(base + static_cast<int64_t>(at));
    }
    const size_t keep = std::min(buf.size(), needle.size() - 1);
    base += static_cast<int64_t>(buf.size() - keep);
    carry = buf.substr(buf.size() - keep);
  }
  return found;
}

TEST_F(SnapshotE2eTest, DigestIsStableAndVerifyCatchesAFlippedByte) {
  Ok({"volume", "create", "prov", "--size", "32M"});
  // Distinctive content through a raw NBD client: a marker we can find in the pool file.
  std::string marker;
  for (int i = 0; marker.size() < 64 * 1024; ++i) {
    marker += "shale-provenance-marker-" + std::to_string(i) + ";";
  }
  marker.resize(64 * 1024);
  {
    auto client = NbdRawClient::Tcp(h_.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("prov").has_value());
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 5 * kMiB, marker.size(), marker), 0);
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 0, 4096, std::string(4096, 'z')), 0);
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
    client->Request(NbdRawClient::kCmdDisc, 0, 0);
  }
  Ok({"snapshot", "create", "prov", "v1", "--label", "source=https://example.com/data.tar",
      "--wait-digest"});
  const std::string digest = SnapshotDigest(h_, "prov@v1");
  ASSERT_EQ(digest.size(), 32u);

  // Same bytes, same digest, whatever the history: a second volume written the same way.
  Ok({"volume", "create", "twin", "--size", "32M"});
  {
    auto client = NbdRawClient::Tcp(h_.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("twin").has_value());
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 0, 4096, std::string(4096, 'z')), 0);
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 5 * kMiB, marker.size(), marker), 0);
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
    client->Request(NbdRawClient::kCmdDisc, 0, 0);
  }
  Ok({"snapshot", "create", "twin", "t", "--wait-digest"});
  EXPECT_EQ(SnapshotDigest(h_, "twin@t"), digest);
  Ok({"volume", "delete", "twin"});
  Ok({"snapshot", "delete", "twin@t"});

  // Across a clean restart and a kill -9.
  ASSERT_EQ(h_.StopDaemon(SIGTERM), 0);
  ASSERT_TRUE(h_.StartDaemon());
  EXPECT_EQ(SnapshotDigest(h_, "prov@v1"), digest);
  h_.KillDaemon();
  ASSERT_TRUE(h_.StartDaemon());
  EXPECT_EQ(SnapshotDigest(h_, "prov@v1"), digest);
  CommandResult r = h_.Shale({"snapshot", "verify", "prov@v1"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();

  // Across export and import (full, then incremental onto the imported copy).
  const std::string full = h_.root() + "/v1.stream";
  nlohmann::json exported = ShaleJson(h_, {"snapshot", "export", "prov@v1", full});
  EXPECT_EQ(exported["digest"], digest);
  r = h_.Shale({"snapshot", "export", "prov@v1", full});
  ExpectOneLineError(r, "already exists");
  nlohmann::json imported = ShaleJson(h_, {"snapshot", "import", full, "copy"});
  EXPECT_EQ(imported["snapshot"]["name"], "copy@v1");
  EXPECT_EQ(imported["snapshot"]["digest"], digest);
  EXPECT_EQ(imported["snapshot"]["labels"]["source"], "https://example.com/data.tar");
  {
    auto client = NbdRawClient::Tcp(h_.NbdAddress());
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->Go("prov").has_value());
    ASSERT_EQ(client->Request(NbdRawClient::kCmdWrite, 9 * kMiB, 8192, std::string(8192, 'q')), 0);
    ASSERT_EQ(client->Request(NbdRawClient::kCmdFlush, 0, 0), 0);
    client->Request(NbdRawClient::kCmdDisc, 0, 0);
  }
  Ok({"snapshot", "create", "prov", "v2", "--wait-digest"});
  const std::string digest2 = SnapshotDigest(h_, "prov@v2");
  const std::string incr = h_.root() + "/v2.stream";
  nlohmann::json inc = ShaleJson(h_, {"snapshot", "export", "prov@v2", incr, "--base", "prov@v1"});
  EXPECT_EQ(inc["incremental"], true);
  EXPECT_LT(inc["stream_bytes"].get<uint64_t>(), exported["stream_bytes"].get<uint64_t>());
  imported = ShaleJson(h_, {"snapshot", "import", incr, "copy"});
  EXPECT_EQ(imported["incremental"], true);
  EXPECT_EQ(imported["snapshot"]["name"], "copy@v2");
  EXPECT_EQ(imported["snapshot"]["digest"], digest2);

  // A corrupt stream is refused and leaves nothing behind.
  {
    std::string bytes = ReadTextFile(full);
    ASSERT_GT(bytes.size(), 6 * 1024u);
    bytes[bytes.size() / 2] ^= 0x40;
    std::ofstream(h_.root() + "/bad.stream", std::ios::binary) << bytes;
  }
  r = h_.Shale({"snapshot", "import", h_.root() + "/bad.stream", "bad"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.ErrLines().size(), 1u) << r.Describe();
  EXPECT_NE(h_.Shale({"volume", "show", "bad"}).exit_code, 0) << "the failed import was undone";

  // One byte flipped in the pool file under the snapshot: every copy of the marker's first
  // block is hit (the imported copy and freed clusters hold it too). The daemon is stopped so
  // nothing it caches hides the change.
  ASSERT_EQ(h_.StopDaemon(SIGTERM), 0);
  const std::string pool_file = h_.data_dir() + "/default-pool.img";
  const std::vector<int64_t> found = FindInFile(pool_file, marker.substr(0, 4096));
  ASSERT_FALSE(found.empty()) << "the marker is not in " << pool_file;
  for (int64_t at : found) {
    std::fstream f(pool_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(at + 1000);
    char c = 0;
    f.get(c);
    f.seekp(at + 1000);
    f.put(static_cast<char>(c ^ 0x01));
    ASSERT_TRUE(f.good());
  }
  ASSERT_TRUE(h_.StartDaemon());
  r = h_.Shale({"snapshot", "verify", "prov@v1"});
  ExpectOneLineError(r, "prov@v1");
  EXPECT_NE(r.err.find(digest), std::string::npos) << "names the recorded digest: " << r.Describe();
  // A snapshot whose blocks were not touched still verifies.
  Ok({"volume", "create", "other", "--size", "1M"});
  Ok({"snapshot", "create", "other", "o", "--wait-digest"});
  r = h_.Shale({"snapshot", "verify", "other@o"});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
}

// Every refusal of the snapshot commands is one line on stderr and a non-zero exit.
TEST_F(SnapshotE2eTest, ErrorsAreOneLine) {
  Ok({"volume", "create", "v", "--size", "8M"});
  Ok({"snapshot", "create", "v", "s"});
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"snapshot", "create", "missing", "s"}, "volume 'missing' not found"},
      {{"snapshot", "create", "v", "s"}, "already exists"},
      {{"snapshot", "create", "v", "a/b"}, "a/b"},
      {{"snapshot", "create", "v", "t", "--label", "bad key=1"}, "bad key"},
      {{"snapshot", "show", "v"}, "VOLUME@SNAP"},
      {{"snapshot", "show", "v@nope"}, "'v@nope' not found"},
      {{"snapshot", "delete", "v@nope"}, "not found"},
      {{"snapshot", "verify", "@s"}, "@s"},
      {{"snapshot", "export", "v@s", "/nonexistent-dir/x.stream"}, "x.stream"},
      {{"snapshot", "import", "/nonexistent-dir/x.stream", "w"}, "x.stream"},
      {{"clone", "create", "v@nope", "c"}, "not found"},
      {{"clone", "create", "v@s", "v"}, "already exists"},
      {{"volume", "revert", "v", "--to", "nope"}, "not found"},
      {{"volume", "revert", "missing", "--to", "s"}, "not found"},
      {{"volume", "flatten", "missing"}, "volume 'missing' not found"},
  };
  for (const auto& [args, needle] : cases) {
    SCOPED_TRACE(args[0] + " " + args[1] + " " + args[2]);
    ExpectOneLineError(h_.Shale(args), needle);
  }
  // Busy: a snapshot read by an NBD client, a volume open while reverting.
  auto client = NbdRawClient::Tcp(h_.NbdAddress());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Go("v@s").has_value());
  ExpectOneLineError(h_.Shale({"snapshot", "delete", "v@s"}), "1 connected NBD client(s)");
  auto writer = NbdRawClient::Tcp(h_.NbdAddress());
  ASSERT_NE(writer, nullptr);
  ASSERT_TRUE(writer->Go("v").has_value());
  ExpectOneLineError(h_.Shale({"volume", "revert", "v", "--to", "s"}), "NBD client");
  writer->Request(NbdRawClient::kCmdDisc, 0, 0);
  CommandResult forced = h_.Shale({"snapshot", "delete", "v@s", "--force"});
  EXPECT_EQ(forced.exit_code, 0) << forced.Describe();
  EXPECT_TRUE(client->WaitClosed()) << "the snapshot's client was disconnected";
}

}  // namespace
}  // namespace shale::e2e
