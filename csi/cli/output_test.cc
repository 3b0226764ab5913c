#include "csi/cli/output.h"

#include <gtest/gtest.h>

#include "engine/common/units.h"

namespace shale::cli {
namespace {

TEST(Table, AlignsColumnsUnderTheHeader) {
  Table table({"NAME", "SIZE", "POOL"});
  table.AddRow({"a", "10 GiB", "default"});
  table.AddRow({"longer-name", "1 MiB"});  // padded with an empty cell
  EXPECT_EQ(table.Render(),
            "NAME         SIZE    POOL\n"
            "a            10 GiB  default\n"
            "longer-name  1 MiB\n");
}

TEST(Table, HeaderOnlyWhenEmpty) { EXPECT_EQ(Table({"NAME", "SIZE"}).Render(), "NAME  SIZE\n"); }

TEST(KeyValues, AlignsValues) {
  EXPECT_EQ(RenderKeyValues({{"Name", "v"}, {"Cluster size", "64 KiB"}}),
            "Name:          v\n"
            "Cluster size:  64 KiB\n");
}

TEST(Format, DurationsAndTimes) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(59), "59s");
  EXPECT_EQ(FormatDuration(90), "1m 30s");
  EXPECT_EQ(FormatDuration(3 * 3600 + 120), "3h 2m");
  EXPECT_EQ(FormatDuration(2 * 86400 + 3600), "2d 1h");
  EXPECT_EQ(FormatUnixNanos(0), "-");
  EXPECT_EQ(FormatUnixNanos(1'700'000'000'123'456'789ull), "2023-11-14T22:13:20Z");
}

v1::Volume SampleVolume() {
  v1::Volume v;
  v.set_name("data");
  v.set_pool("default");
  v.set_id(7);
  v.set_size_bytes(10 * kGiB);
  v.set_allocated_bytes(3 * kMiB);
  v.set_read_only(true);
  v.set_created_unix_ns(1'700'000'000'000'000'000ull);
  (*v.mutable_labels())["team"] = "ml";
  (*v.mutable_labels())["app"] = "notebook";
  v.mutable_stats()->set_writes(5);
  return v;
}

TEST(Json, VolumeFieldsAreStableAndExact) {
  nlohmann::ordered_json j = ToJson(SampleVolume());
  EXPECT_EQ(j["name"], "data");
  EXPECT_EQ(j["pool"], "default");
  EXPECT_EQ(j["id"], 7u);
  EXPECT_EQ(j["size_bytes"], 10 * kGiB);
  EXPECT_EQ(j["allocated_bytes"], 3 * kMiB);
  EXPECT_EQ(j["read_only"], true);
  EXPECT_EQ(j["created_unix_ns"], 1'700'000'000'000'000'000ull);
  EXPECT_EQ(j["open_count"], 0u);
  EXPECT_EQ(j["labels"]["team"], "ml");
  EXPECT_EQ(j["stats"]["writes"], 5u);
  for (const char* key : {"reads", "bytes_read", "bytes_written", "flushes", "errors"}) {
    EXPECT_TRUE(j["stats"].contains(key)) << key;
  }
  // Exact up to the last bit of a uint64.
  v1::Volume big;
  big.set_size_bytes(UINT64_MAX);
  EXPECT_EQ(nlohmann::json::parse(ToJson(big).dump())["size_bytes"].get<uint64_t>(), UINT64_MAX);
}

TEST(Json, PoolStatusAndCheck) {
  v1::Pool p;
  p.set_name("fast");
  p.set_state(v1::POOL_STATE_ERROR);
  p.set_error("device missing");
  p.set_capacity_bytes(kGiB);
  p.set_cluster_size(64 * 1024);
  nlohmann::ordered_json pj = ToJson(p);
  EXPECT_EQ(pj["state"], "error");
  EXPECT_EQ(pj["error"], "device missing");
  EXPECT_EQ(pj["capacity_bytes"], kGiB);
  for (const char* key : {"name", "uuid", "device_path", "backend", "used_bytes", "free_bytes",
                          "cluster_size", "cluster_count", "volume_count"}) {
    EXPECT_TRUE(pj.contains(key)) << key;
  }

  v1::GetStatusResponse s;
  s.set_version("0.1.0");
  nlohmann::ordered_json sj = ToJson(s);
  for (const char* key : {"version", "data_dir", "control_endpoint", "pid", "uptime_seconds",
                          "reactors", "io_backend", "pool_count", "volume_count"}) {
    EXPECT_TRUE(sj.contains(key)) << key;
  }

  v1::CheckPoolResponse c;
  c.add_problems("cluster 3 leaked");
  nlohmann::ordered_json cj = ToJson("fast", c);
  EXPECT_EQ(cj["pool"], "fast");
  EXPECT_EQ(cj["clean"], false);
  EXPECT_EQ(cj["problems"][0], "cluster 3 leaked");
}

TEST(Views, VolumeShowsHumanAndExactSizes) {
  const std::string view = VolumeView(SampleVolume());
  EXPECT_NE(view.find("10 GiB (10737418240 bytes)"), std::string::npos) << view;
  EXPECT_NE(view.find("app=notebook,team=ml"), std::string::npos) << view;
  EXPECT_NE(view.find("Read-only:"), std::string::npos) << view;

  v1::ListVolumesResponse list;
  *list.add_volumes() = SampleVolume();
  const std::string table = VolumeTable(list);
  EXPECT_EQ(table.substr(0, table.find('\n')),
            "NAME  POOL     SIZE    ALLOCATED  MODE  OPEN  CREATED               LABELS");
  EXPECT_NE(table.find("data  default  10 GiB  3 MiB      ro"), std::string::npos) << table;
}

}  // namespace
}  // namespace shale::cli
