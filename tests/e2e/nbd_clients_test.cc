// shaled's NBD exports driven by the real clients of the Debian packages: nbdinfo (libnbd-bin),
// qemu-io and qemu-img (qemu-utils), nbdcopy (libnbd-bin) and fio's nbd engine — negotiation,
// data written and read back at many offsets, image conversion, sparse copies both ways,
// verified random writes from several jobs (connections), and durability across kill -9.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

// The tool, or a skip naming the package (scripts/deps installs them all).
#define REQUIRE_TOOL(var, name, package)                                    \
  const std::string var = FindProgram(name);                                \
  if (var.empty()) {                                                        \
    GTEST_SKIP() << name << " is not installed (Debian package " << package \
                 << "; scripts/deps installs it)";                          \
  }

CommandResult Tool(const std::vector<std::string>& argv, int timeout_s = 120) {
  return RunProcess(argv, {.timeout = std::chrono::seconds(timeout_s)});
}

// A file of `size` bytes: random data in `extents` (offset, length), holes elsewhere.
void WriteSparseImage(const std::string& path, uint64_t size,
                      const std::vector<std::pair<uint64_t, uint64_t>>& extents, uint64_t seed) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::mt19937_64 rng(seed);
  for (const auto& [offset, length] : extents) {
    std::string data(length, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    out.seekp(static_cast<std::streamoff>(offset));
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  out.close();
  std::filesystem::resize_file(path, size);
}

bool SameFiles(const std::string& a, const std::string& b) {
  return ReadTextFile(a) == ReadTextFile(b);
}

class NbdClientsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(h_.StartDaemon()); }

  void CreateVolume(const std::string& name, const std::string& size,
                    const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"volume", "create", name, "--size", size};
    args.insert(args.end(), extra.begin(), extra.end());
    CommandResult r = h_.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }

  Harness h_;
};

TEST_F(NbdClientsTest, NbdinfoNegotiatesSizeBlockSizesAndFlags) {
  REQUIRE_TOOL(nbdinfo, "nbdinfo", "libnbd-bin");
  CreateVolume("data", "1G");
  CreateVolume("frozen", "64M", {"--read-only"});

  CommandResult info = Tool({nbdinfo, "--json", h_.NbdUri("data")});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  nlohmann::json j = info.Json();
  EXPECT_EQ(j["protocol"], "newstyle-fixed");
  EXPECT_EQ(j["structured"], true);
  ASSERT_EQ(j["exports"].size(), 1u);
  const nlohmann::json& e = j["exports"][0];
  EXPECT_EQ(e["export-name"], "data");
  EXPECT_EQ(e["export-size"], 1024 * kMiB);
  EXPECT_EQ(e["block_size_minimum"], 512);
  EXPECT_EQ(e["block_size_preferred"], 4096);
  EXPECT_EQ(e["block_size_maximum"], 32 * kMiB);
  EXPECT_EQ(e["is_read_only"], false);
  for (const char* flag : {"can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
                           "can_multi_conn", "can_df", "can_cache"}) {
    EXPECT_EQ(e[flag], true) << flag;
  }
  EXPECT_EQ(e["contexts"], nlohmann::json::array({"base:allocation"}));

  // A read-only volume is a read-only export.
  info = Tool({nbdinfo, "--json", h_.NbdUri("frozen")});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  const nlohmann::json ro = info.Json()["exports"][0];
  EXPECT_EQ(ro["is_read_only"], true);
  EXPECT_EQ(ro["can_trim"], false);
  EXPECT_EQ(ro["can_zero"], false);
  EXPECT_EQ(ro["export-size"], 64 * kMiB);

  // Every volume is listed; the UNIX socket serves the same exports.
  info = Tool({nbdinfo, "--list", "--json", "nbd://" + h_.NbdAddress()});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  std::vector<std::string> names;
  const nlohmann::json listed = info.Json();
  for (const auto& x : listed["exports"]) names.push_back(x["export-name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"data", "frozen"}));
  info = Tool({nbdinfo, "--size", "nbd+unix:///data?socket=" + h_.nbd_socket_path()});
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  EXPECT_EQ(info.out, "1073741824\n");

  // Unknown exports are refused with the protocol's error, not a hang or a crash.
  info = Tool({nbdinfo, h_.NbdUri("nosuch")});
  EXPECT_NE(info.exit_code, 0);
  EXPECT_NE(info.err.find("nosuch"), std::string::npos) << info.Describe();
}

TEST_F(NbdClientsTest, QemuIoPatternsAtManyOffsetsReadBack) {
  REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
  CreateVolume("vol", "256M");
  const std::string uri = h_.NbdUri("vol");
  // offset, length, pattern: aligned, sector-sized, across 64 KiB cluster boundaries, and at
  // the very end of the volume.
  struct Write {
    uint64_t offset, length;
    int pattern;
  };
  const std::vector<Write> writes = {
      {0, 65536 - 512, 0xab},
      {65536 - 512, 1024, 0x11},               // crosses the first cluster boundary
      {2 * kMiB - 4096, 8192, 0x22},           // crosses a cluster and a MiB boundary
      {3 * kMiB + 512, 7680, 0x33},            // sector-aligned, not block-aligned
      {17 * kMiB + 12345 * 512, 65536, 0x44},  // a cluster's worth, off cluster alignment
      {255 * kMiB, 1 * kMiB - 512, 0x55},      // up to the last sector
      {256 * kMiB - 512, 512, 0x66},           // the last sector
  };
  auto cmd = [](const std::string& verb, const Write& w) {
    return verb + " -P " + std::to_string(w.pattern) + " " + std::to_string(w.offset) + " " +
           std::to_string(w.length);
  };
  std::vector<std::string> argv = {qemu_io, "-f", "raw", uri};
  for (const Write& w : writes) argv.insert(argv.end(), {"-c", cmd("write", w)});
  argv.insert(argv.end(), {"-c", "flush"});
  CommandResult wrote = Tool(argv);
  ASSERT_EQ(wrote.exit_code, 0) << wrote.Describe();
  EXPECT_EQ(wrote.err, "") << wrote.Describe();

  // A new connection reads every pattern back, and zeros where nothing was written.
  argv = {qemu_io, "-f", "raw", uri};
  for (const Write& w : writes) argv.insert(argv.end(), {"-c", cmd("read", w)});
  argv.insert(argv.end(), {"-c", "read -P 0 " + std::to_string(1 * kMiB) + " " +
                                     std::to_string(1 * kMiB - 65536)});
  argv.insert(argv.end(), {"-c", "read -P 0 " + std::to_string(100 * kMiB) + " 1M"});
  CommandResult read = Tool(argv);
  ASSERT_EQ(read.exit_code, 0) << read.Describe();
  EXPECT_EQ(read.out.find("failed"), std::string::npos) << read.Describe();
  EXPECT_EQ(read.err, "") << read.Describe();
  size_t reads = 0;
  for (size_t at = read.out.find("read "); at != std::string::npos;
       at = read.out.find("read ", at + 1)) {
    ++reads;
  }
  EXPECT_EQ(reads, writes.size() + 2) << read.Describe();

  // A wrong pattern is detected (the check above is not vacuous).
  CommandResult wrong = Tool({qemu_io, "-f", "raw", uri, "-c", "read -P 171 65536 512"});
  EXPECT_NE(wrong.out.find("Pattern verification failed"), std::string::npos) << wrong.Describe();

  // Past the end: refused by the client or the server, and nothing breaks.
  CommandResult beyond = Tool({qemu_io, "-f", "raw", uri, "-c", "write -P 1 256M 4k"});
  EXPECT_NE(beyond.exit_code, 0) << beyond.Describe();
  CommandResult still = Tool({qemu_io, "-f", "raw", uri, "-c", "read -P 0x66 268434944 512"});
  EXPECT_EQ(still.exit_code, 0) << still.Describe();
}

TEST_F(NbdClientsTest, QemuImgConvertsIntoAVolumeAndComparesEqual) {
  REQUIRE_TOOL(qemu_img, "qemu-img", "qemu-utils");
  REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
  CreateVolume("image", "128M");
  const std::string uri = h_.NbdUri("image");
  // A generated qcow2 image: data at scattered offsets, the rest unallocated.
  const std::string raw = h_.root() + "/src.raw";
  const std::string qcow2 = h_.root() + "/src.qcow2";
  WriteSparseImage(raw, 128 * kMiB,
                   {{0, 3 * kMiB},
                    {10 * kMiB + 4096, 777 * 512},
                    {64 * kMiB, 5 * kMiB},
                    {128 * kMiB - 1 * kMiB, 1 * kMiB}},
                   42);
  CommandResult r = Tool({qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw, qcow2});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();

  r = Tool({qemu_img, "convert", "-n", "-f", "qcow2", "-O", "raw", qcow2, uri});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  r = Tool({qemu_img, "compare", "-f", "qcow2", "-F", "raw", qcow2, uri});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_NE(r.out.find("Images are identical"), std::string::npos) << r.Describe();
  r = Tool({qemu_img, "compare", "-f", "raw", "-F", "raw", raw, uri});
  EXPECT_EQ(r.exit_code, 0) << r.Describe();

  // Block status reached the client: the holes are reported as zero, not as data.
  r = Tool({qemu_img, "map", "-f", "raw", "--output=json", uri});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  uint64_t data_bytes = 0;
  const nlohmann::json map = r.Json();
  for (const auto& extent : map) {
    if (extent["data"] == true) data_bytes += extent["length"].get<uint64_t>();
  }
  EXPECT_GE(data_bytes, 9 * kMiB + 777 * 512);
  EXPECT_LT(data_bytes, 16 * kMiB) << r.Describe();

  // A changed byte is noticed (compare is not vacuous).
  r = Tool({qemu_io, "-f", "raw", uri, "-c", "write -P 0x01 100M 512"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  r = Tool({qemu_img, "compare", "-f", "raw", "-F", "raw", raw, uri});
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
}

TEST_F(NbdClientsTest, NbdcopyBothWays) {
  REQUIRE_TOOL(nbdcopy, "nbdcopy", "libnbd-bin");
  CreateVolume("copy", "96M");
  const std::string uri = h_.NbdUri("copy");
  const std::string src = h_.root() + "/src.img";
  const std::string back = h_.root() + "/back.img";
  WriteSparseImage(src, 96 * kMiB, {{512 * 1024, 20 * kMiB}, {60 * kMiB + 512, 3 * kMiB + 1024}},
                   7);
  CommandResult r = Tool({nbdcopy, "--flush", src, uri});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  r = Tool({nbdcopy, uri, back});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(std::filesystem::file_size(back), 96 * kMiB);
  EXPECT_TRUE(SameFiles(src, back)) << "nbdcopy round trip differs";

  // Several connections at once (the export advertises multi-conn), from the UNIX socket.
  WriteSparseImage(src, 96 * kMiB, {{0, 40 * kMiB}, {80 * kMiB, 16 * kMiB}}, 8);
  const std::string unix_uri = "nbd+unix:///copy?socket=" + h_.nbd_socket_path();
  r = Tool({nbdcopy, "--connections=4", "--requests=32", src, unix_uri});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  r = Tool({nbdcopy, "--connections=4", uri, back});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_TRUE(SameFiles(src, back)) << "multi-connection round trip differs";
}

TEST_F(NbdClientsTest, FioVerifiesRandomWritesFromSeveralJobs) {
  REQUIRE_TOOL(fio, "fio", "fio");
  CreateVolume("fio", "256M");
  const std::vector<std::string> common = {
      fio,
      "--ioengine=nbd",
      "--uri=" + h_.NbdUri("fio"),
      "--numjobs=4",
      "--size=48M",
      "--offset_increment=64M",  // each job (connection) owns its own range
      "--bs=4k",
      "--iodepth=16",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--randrepeat=1",
      "--group_reporting",
      "--output-format=json"};
  // Random writes, then every block read back and checked, by the same jobs.
  std::vector<std::string> argv = common;
  argv.insert(argv.end(), {"--name=write-verify", "--rw=randwrite", "--do_verify=1"});
  CommandResult r = Tool(argv, 300);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  // fio prints "fio: connected to NBD server" before the JSON.
  const std::string json_text = r.out.substr(r.out.find('{'));
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.Describe();
  EXPECT_EQ(j["jobs"][0]["error"], 0);
  EXPECT_EQ(j["jobs"][0]["write"]["io_bytes"], 4 * 48 * kMiB);
  EXPECT_GE(j["jobs"][0]["read"]["io_bytes"].get<uint64_t>(), 4 * 48 * kMiB) << "verify reads";

  // New connections verify what the first ones wrote.
  argv = common;
  argv.insert(argv.end(), {"--name=verify-only", "--rw=randwrite", "--verify_only"});
  r = Tool(argv, 300);
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  j = nlohmann::json::parse(r.out.substr(r.out.find('{')), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.Describe();
  EXPECT_EQ(j["jobs"][0]["error"], 0);
  EXPECT_GE(j["jobs"][0]["read"]["io_bytes"].get<uint64_t>(), 4 * 48 * kMiB);
}

TEST_F(NbdClientsTest, FlushedWritesSurviveKillNine) {
  REQUIRE_TOOL(qemu_io, "qemu-io", "qemu-utils");
  // A commit interval of an hour: only the client's flush (and FUA) can make the data durable.
  h_.KillDaemon();
  ASSERT_TRUE(h_.StartDaemon({"--commit-interval-ms", "3600000"}));
  CreateVolume("durable", "128M");
  std::string uri = h_.NbdUri("durable");
  CommandResult r = Tool({qemu_io, "-f", "raw", uri, "-c", "write -P 0x5a 0 4M", "-c",
                          "write -P 0xa5 64M 1M", "-c", "write -P 0x3c 100M 64k", "-c", "flush"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  // A FUA write is durable without a flush.
  r = Tool({qemu_io, "-f", "raw", uri, "-c", "write -f -P 0xc3 120M 128k"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();

  h_.KillDaemon();
  ASSERT_TRUE(h_.StartDaemon({"--commit-interval-ms", "3600000"}));
  uri = h_.NbdUri("durable");
  r = Tool({qemu_io, "-f", "raw", uri, "-c", "read -P 0x5a 0 4M", "-c", "read -P 0xa5 64M 1M", "-c",
            "read -P 0x3c 100M 64k", "-c", "read -P 0xc3 120M 128k", "-c", "read -P 0 4M 1M"});
  ASSERT_EQ(r.exit_code, 0) << r.Describe();
  EXPECT_EQ(r.out.find("failed"), std::string::npos) << r.Describe();
  CommandResult check = h_.Shale({"pool", "check", "default"});
  EXPECT_EQ(check.exit_code, 0) << check.Describe();
}

}  // namespace
}  // namespace shale::e2e
