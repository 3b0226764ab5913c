// The admin workflow through the real binaries: status, volume and pool lifecycles, with both
// the table and the JSON output checked.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <sstream>
#include <string>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;
constexpr uint64_t kGiB = 1024 * kMiB;

// The line of a table whose first column is `name` ("" if none).
std::string RowOf(const std::string& table, const std::string& name) {
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + " ", 0) == 0) return line;
  }
  return "";
}

TEST(Workflow, StatusDescribesTheDaemon) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());

  CommandResult table = h.Shale({"status"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_NE(table.out.find("Data dir:"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find(h.data_dir()), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("Version:"), std::string::npos) << table.out;

  CommandResult json = h.Shale({"status", "-o", "json"});
  ASSERT_EQ(json.exit_code, 0) << json.Describe();
  nlohmann::json s = json.Json();
  EXPECT_EQ(s["data_dir"], h.data_dir());
  EXPECT_EQ(s["control_endpoint"], h.endpoint());
  EXPECT_EQ(s["pid"], h.daemon_pid());
  EXPECT_EQ(s["reactors"], 1);
  EXPECT_EQ(s["io_backend"], "io_uring");
  EXPECT_EQ(s["pool_count"], 1);  // the default pool
  EXPECT_EQ(s["volume_count"], 0);
  EXPECT_FALSE(s["version"].get<std::string>().empty());
  EXPECT_TRUE(s["uptime_seconds"].is_number_unsigned());

  // The global option also works before the command.
  EXPECT_EQ(h.Shale({"-o", "json", "status"}).Json()["pid"], h.daemon_pid());
}

TEST(Workflow, VolumeLifecycle) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  // Volumes of 10 and 20 GiB on the 1 GiB test pool: beyond the default overcommit limit of 300 %
  // (docs/operations.md), which the capacity tests cover.
  ASSERT_EQ(h.Shale({"pool", "set", "default", "--overcommit", "unlimited"}).exit_code, 0);

  CommandResult created = h.Shale({"volume", "create", "data", "--size", "10G", "--label",
                                   "team=ml", "--label", "nb=42", "-o", "json"});
  ASSERT_EQ(created.exit_code, 0) << created.Describe();
  nlohmann::json v = created.Json();
  EXPECT_EQ(v["name"], "data");
  EXPECT_EQ(v["pool"], "default");
  EXPECT_EQ(v["size_bytes"], 10 * kGiB);
  EXPECT_EQ(v["read_only"], false);
  EXPECT_EQ(v["labels"]["team"], "ml");
  EXPECT_EQ(v["labels"]["nb"], "42");
  EXPECT_GT(v["created_unix_ns"].get<uint64_t>(), 0u);

  // Table output of create is the volume's view.
  CommandResult scratch = h.Shale({"volume", "create", "scratch", "--size", "100M", "--read-only"});
  ASSERT_EQ(scratch.exit_code, 0) << scratch.Describe();
  EXPECT_NE(scratch.out.find("100 MiB (104857600 bytes)"), std::string::npos) << scratch.out;
  // Sizes are rounded up to 4 KiB.
  CommandResult odd = h.Shale({"volume", "create", "odd", "--size", "5000", "-o", "json"});
  ASSERT_EQ(odd.exit_code, 0) << odd.Describe();
  EXPECT_EQ(odd.Json()["size_bytes"], 8192);

  CommandResult list = h.Shale({"volume", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.Describe();
  EXPECT_EQ(list.out.rfind("NAME ", 0), 0u) << "header row first:\n" << list.out;
  const std::string header = list.out.substr(0, list.out.find('\n'));
  const std::string data_row = RowOf(list.out, "data");
  const std::string scratch_row = RowOf(list.out, "scratch");
  ASSERT_FALSE(data_row.empty()) << list.out;
  ASSERT_FALSE(scratch_row.empty()) << list.out;
  EXPECT_NE(data_row.find("10 GiB"), std::string::npos) << data_row;
  EXPECT_NE(data_row.find("nb=42,team=ml"), std::string::npos) << data_row;
  EXPECT_NE(scratch_row.find(" ro "), std::string::npos) << scratch_row;
  // Aligned: every column starts where its header starts.
  const size_t size_col = header.find("SIZE");
  ASSERT_NE(size_col, std::string::npos) << header;
  EXPECT_EQ(data_row.substr(size_col, 6), "10 GiB") << list.out;
  EXPECT_EQ(scratch_row.substr(size_col, 7), "100 MiB") << list.out;

  CommandResult list_json = h.Shale({"volume", "list", "-o", "json"});
  ASSERT_EQ(list_json.exit_code, 0) << list_json.Describe();
  nlohmann::json volumes = list_json.Json()["volumes"];
  ASSERT_EQ(volumes.size(), 3u) << list_json.out;
  EXPECT_EQ(volumes[0]["name"], "data");  // sorted by name
  EXPECT_EQ(volumes[1]["name"], "odd");
  EXPECT_EQ(volumes[2]["name"], "scratch");
  EXPECT_EQ(volumes[2]["size_bytes"], 100 * kMiB);
  EXPECT_EQ(volumes[2]["read_only"], true);

  CommandResult show = h.Shale({"volume", "show", "data"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_NE(show.out.find("10 GiB (10737418240 bytes)"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("Pool:"), std::string::npos) << show.out;

  CommandResult grown = h.Shale({"volume", "resize", "data", "--size", "20G", "-o", "json"});
  ASSERT_EQ(grown.exit_code, 0) << grown.Describe();
  EXPECT_EQ(grown.Json()["size_bytes"], 20 * kGiB);
  EXPECT_EQ(h.Shale({"volume", "show", "data", "-o", "json"}).Json()["size_bytes"], 20 * kGiB);
  // Resizing to the current size is a no-op, not an error.
  EXPECT_EQ(h.Shale({"volume", "resize", "data", "--size", "20G"}).exit_code, 0);

  CommandResult deleted = h.Shale({"volume", "delete", "scratch"});
  ASSERT_EQ(deleted.exit_code, 0) << deleted.Describe();
  EXPECT_EQ(deleted.out, "volume 'scratch' deleted\n");
  CommandResult deleted_json = h.Shale({"volume", "delete", "odd", "-o", "json"});
  ASSERT_EQ(deleted_json.exit_code, 0) << deleted_json.Describe();
  EXPECT_EQ(deleted_json.Json()["name"], "odd");
  EXPECT_EQ(deleted_json.Json()["deleted"], true);

  nlohmann::json after = h.Shale({"volume", "list", "-o", "json"}).Json()["volumes"];
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0]["name"], "data");
  ExpectOneLineError(h.Shale({"volume", "show", "scratch"}), "volume 'scratch' not found");
  EXPECT_EQ(h.Shale({"status", "-o", "json"}).Json()["volume_count"], 1);
}

TEST(Workflow, PoolLifecycle) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  const std::string image = h.root() + "/p.img";

  CommandResult created =
      h.Shale({"pool", "create", "fast", "--device", image, "--size", "256M", "-o", "json"});
  ASSERT_EQ(created.exit_code, 0) << created.Describe();
  nlohmann::json p = created.Json();
  EXPECT_EQ(p["name"], "fast");
  EXPECT_EQ(p["state"], "online");
  EXPECT_EQ(p["device_path"], image);
  EXPECT_EQ(p["cluster_size"], 65536);
  EXPECT_GT(p["capacity_bytes"].get<uint64_t>(), 200 * kMiB);
  EXPECT_LE(p["capacity_bytes"].get<uint64_t>(), 256 * kMiB);
  EXPECT_EQ(p["volume_count"], 0);
  EXPECT_FALSE(p["uuid"].get<std::string>().empty());
  ASSERT_TRUE(std::filesystem::exists(image));
  EXPECT_EQ(std::filesystem::file_size(image), 256 * kMiB);

  // A relative --device means the caller's working directory, not the daemon's.
  CommandResult relative =
      h.ShaleRaw({"--endpoint", h.endpoint(), "pool", "create", "small", "--device", "small.img",
                  "--size", "64M", "--cluster-size", "4K", "-o", "json"},
                 {.cwd = h.root()});
  ASSERT_EQ(relative.exit_code, 0) << relative.Describe();
  EXPECT_EQ(relative.Json()["device_path"], h.root() + "/small.img");
  EXPECT_EQ(relative.Json()["cluster_size"], 4096);

  CommandResult list = h.Shale({"pool", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.Describe();
  EXPECT_EQ(list.out.rfind("NAME ", 0), 0u) << list.out;
  EXPECT_NE(RowOf(list.out, "default").find("online"), std::string::npos) << list.out;
  EXPECT_NE(RowOf(list.out, "fast").find(image), std::string::npos) << list.out;
  nlohmann::json pools = h.Shale({"pool", "list", "-o", "json"}).Json()["pools"];
  ASSERT_EQ(pools.size(), 3u);
  EXPECT_EQ(pools[0]["name"], "default");
  EXPECT_EQ(pools[1]["name"], "fast");
  EXPECT_EQ(pools[2]["name"], "small");

  CommandResult show = h.Shale({"pool", "show", "fast"});
  ASSERT_EQ(show.exit_code, 0) << show.Describe();
  EXPECT_NE(show.out.find("State:"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find(image), std::string::npos) << show.out;
  EXPECT_EQ(h.Shale({"pool", "show", "fast", "-o", "json"}).Json()["uuid"], p["uuid"]);

  CommandResult volume =
      h.Shale({"volume", "create", "in-fast", "--size", "64M", "--pool", "fast", "-o", "json"});
  ASSERT_EQ(volume.exit_code, 0) << volume.Describe();
  EXPECT_EQ(volume.Json()["pool"], "fast");
  nlohmann::json only_fast =
      h.Shale({"volume", "list", "--pool", "fast", "-o", "json"}).Json()["volumes"];
  ASSERT_EQ(only_fast.size(), 1u);
  EXPECT_EQ(only_fast[0]["name"], "in-fast");

  CommandResult check = h.Shale({"pool", "check", "fast"});
  ASSERT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_NE(check.out.find("clean"), std::string::npos) << check.out;
  CommandResult check_json = h.Shale({"pool", "check", "default", "-o", "json"});
  ASSERT_EQ(check_json.exit_code, 0) << check_json.Describe();
  EXPECT_EQ(check_json.Json()["clean"], true);
  EXPECT_EQ(check_json.Json()["problems"].size(), 0u);

  // Refused while it holds a volume; nothing is lost by the refusal.
  ExpectOneLineError(h.Shale({"pool", "delete", "fast"}), "holds 1 volume(s)");
  EXPECT_EQ(h.Shale({"volume", "show", "in-fast"}).exit_code, 0);
  EXPECT_TRUE(std::filesystem::exists(image));

  CommandResult forced = h.Shale({"pool", "delete", "fast", "--force"});
  ASSERT_EQ(forced.exit_code, 0) << forced.Describe();
  EXPECT_EQ(forced.out, "pool 'fast' deleted\n");
  EXPECT_FALSE(std::filesystem::exists(image)) << "shaled created the file, so it removes it";
  ExpectOneLineError(h.Shale({"volume", "show", "in-fast"}), "volume 'in-fast' not found");
  ExpectOneLineError(h.Shale({"pool", "show", "fast"}), "pool 'fast' not found");

  CommandResult deleted_json = h.Shale({"pool", "delete", "small", "-o", "json"});
  ASSERT_EQ(deleted_json.exit_code, 0) << deleted_json.Describe();
  EXPECT_EQ(deleted_json.Json()["deleted"], true);
  EXPECT_EQ(h.Shale({"pool", "list", "-o", "json"}).Json()["pools"].size(), 1u);
}

}  // namespace
}  // namespace shale::e2e
