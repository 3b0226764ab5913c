#include "cli/output.h"

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
            "NAME  POOL     SIZE    ALLOCATED  MODE  OPEN  CREATED               CLONE OF  LABELS");
  EXPECT_NE(table.find("data  default  10 GiB  3 MiB      ro"), std::string::npos) << table;
}

TEST(Views, VolumeShowsItsExport) {
  v1::Volume v = SampleVolume();
  std::string view = VolumeView(v);
  EXPECT_NE(view.find("Export:        -\n"), std::string::npos) << view;
  v.set_export_uri("nbd://127.0.0.1:10809/data");
  v.set_nbd_clients(2);
  view = VolumeView(v);
  EXPECT_NE(view.find("Export:        nbd://127.0.0.1:10809/data\n"), std::string::npos) << view;
  EXPECT_NE(view.find("NBD clients:   2\n"), std::string::npos) << view;
  const nlohmann::ordered_json j = ToJson(v);
  EXPECT_EQ(j["export_uri"], "nbd://127.0.0.1:10809/data");
  EXPECT_EQ(j["nbd_clients"], 2u);
}

v1::ListExportsResponse SampleExports() {
  v1::ListExportsResponse r;
  v1::Export* idle = r.add_exports();
  idle->set_name("idle");
  idle->set_uri("nbd://127.0.0.1:10809/idle");
  idle->set_size_bytes(kGiB);
  idle->set_read_only(true);
  v1::Export* busy = r.add_exports();
  busy->set_name("busy");
  busy->set_uri("nbd://127.0.0.1:10809/busy");
  busy->set_size_bytes(2 * kGiB);
  for (const auto& [transport, peer] :
       {std::pair<std::string, std::string>{"tcp", "127.0.0.1:40000"}, {"unix", "pid 42"}}) {
    v1::NbdClient* c = busy->add_clients();
    c->set_id(9);
    c->set_transport(transport);
    c->set_peer(peer);
    c->set_connected_unix_ns(1'700'000'000'123'456'789ull);
    c->set_requests(1234);
    c->set_bytes_read(4096);
    c->set_bytes_written(8192);
    c->set_errors(1);
  }
  r.set_handshaking(3);
  return r;
}

TEST(Views, ExportTableHasARowPerClient) {
  const std::string table = ExportTable(SampleExports());
  EXPECT_EQ(table,
            "EXPORT  MODE  SIZE   CLIENT               CONNECTED             REQUESTS  URI\n"
            "idle    ro    1 GiB  -                    -                     -         "
            "nbd://127.0.0.1:10809/idle\n"
            "busy    rw    2 GiB  tcp 127.0.0.1:40000  2023-11-14T22:13:20Z  1234      "
            "nbd://127.0.0.1:10809/busy\n"
            "busy    rw    2 GiB  unix pid 42          2023-11-14T22:13:20Z  1234      "
            "nbd://127.0.0.1:10809/busy\n"
            "3 connection(s) still negotiating\n");
}

TEST(Json, ExportsAndStatusNbd) {
  const nlohmann::ordered_json j = ToJson(SampleExports());
  EXPECT_EQ(j["handshaking"], 3u);
  ASSERT_EQ(j["exports"].size(), 2u);
  EXPECT_EQ(j["exports"][0]["clients"].size(), 0u);
  const auto& c = j["exports"][1]["clients"][1];
  for (const char* key : {"id", "transport", "peer", "connected_unix_ns", "requests", "bytes_read",
                          "bytes_written", "errors"}) {
    EXPECT_TRUE(c.contains(key)) << key;
  }
  EXPECT_EQ(c["peer"], "pid 42");
  EXPECT_EQ(j["exports"][1]["size_bytes"], 2 * kGiB);

  v1::GetStatusResponse s;
  s.mutable_nbd()->set_enabled(true);
  s.mutable_nbd()->set_tcp_address("127.0.0.1:10809");
  s.mutable_nbd()->set_unix_socket("/d/nbd.sock");
  s.mutable_nbd()->set_max_connections(128);
  const nlohmann::ordered_json sj = ToJson(s);
  EXPECT_EQ(sj["nbd"]["tcp_address"], "127.0.0.1:10809");
  EXPECT_EQ(sj["nbd"]["unix_socket"], "/d/nbd.sock");
  const std::string view = StatusView(s);
  EXPECT_NE(view.find("NBD TCP:          nbd://127.0.0.1:10809/VOLUME\n"), std::string::npos)
      << view;
  EXPECT_NE(view.find("Metrics:          off\n"), std::string::npos) << view;
  s.mutable_metrics()->set_enabled(true);
  s.mutable_metrics()->set_url("http://127.0.0.1:9580/metrics");
  EXPECT_EQ(ToJson(s)["metrics"]["url"], "http://127.0.0.1:9580/metrics");
  EXPECT_NE(StatusView(s).find("Metrics:          http://127.0.0.1:9580/metrics\n"),
            std::string::npos)
      << StatusView(s);
  const std::string off = StatusView(v1::GetStatusResponse());
  EXPECT_NE(off.find("NBD:          off\n"), std::string::npos) << off;
}

TEST(OutputTest, StatusSaysWhichNbdListenersAreOpenAndWhetherTheyRequireTls) {
  v1::GetStatusResponse s;
  s.mutable_nbd()->set_enabled(true);
  s.mutable_nbd()->set_tcp_address("127.0.0.1:10809");
  v1::NbdListener* tcp = s.mutable_nbd()->add_listeners();
  tcp->set_transport("tcp");
  tcp->set_address("127.0.0.1:10809");
  tcp->set_tls("x509");
  tcp->set_client_certificates(true);
  tcp->set_authz(true);
  v1::NbdListener* unix = s.mutable_nbd()->add_listeners();
  unix->set_transport("unix");
  unix->set_address("/d/nbd.sock");
  std::string view = StatusView(s);
  EXPECT_NE(view.find("nbds://127.0.0.1:10809/VOLUME — TLS required (x509, client certificates, "
                      "per-export authorization)"),
            std::string::npos)
      << view;
  EXPECT_NE(view.find("/d/nbd.sock — mode 0600 (owner only)"), std::string::npos) << view;
  const nlohmann::ordered_json j = ToJson(s);
  ASSERT_EQ(j["nbd"]["listeners"].size(), 2u);
  EXPECT_EQ(j["nbd"]["listeners"][0]["tls"], "x509");
  EXPECT_EQ(j["nbd"]["listeners"][0]["client_certificates"], true);
  EXPECT_EQ(j["nbd"]["listeners"][1]["transport"], "unix");
  tcp->set_tls("");
  tcp->set_client_certificates(false);
  tcp->set_authz(false);
  view = StatusView(s);
  EXPECT_NE(view.find("nbd://127.0.0.1:10809/VOLUME — no TLS: open to anyone who can connect"),
            std::string::npos)
      << view;
}

v1::Snapshot SampleSnapshot() {
  v1::Snapshot s;
  s.set_name("data@v1");
  s.set_volume("data");
  s.set_snapshot("v1");
  s.set_pool("default");
  s.set_volume_exists(true);
  s.set_size_bytes(kGiB);
  s.set_created_unix_ns(1'700'000'000'000'000'000ull);
  (*s.mutable_labels())["source"] = "https://example.com/d.csv";
  s.set_digest_state(v1::DIGEST_STATE_READY);
  s.set_digest("0123456789abcdef0123456789abcdef");
  s.set_data_bytes(3 * kMiB);
  s.set_exclusive_bytes(kMiB);
  s.set_shared_bytes(2 * kMiB);
  s.add_clones("ro-1");
  s.add_clones("ro-2");
  s.set_export_uri("nbd://127.0.0.1:10809/data@v1");
  return s;
}

TEST(Views, SnapshotShowsProvenanceSpaceAndClones) {
  v1::Snapshot s = SampleSnapshot();
  std::string view = SnapshotView(s);
  for (const char* needle :
       {"Name:          data@v1\n", "Volume:        data\n", "Created:       2023-11-14T22:13:20Z",
        "source=https://example.com/d.csv", "Digest:        0123456789abcdef0123456789abcdef\n",
        "Digest state:  ready", "Owned:         1 MiB (1048576 bytes)",
        "Shared:        2 MiB (2097152 bytes)", "Clones:        ro-1, ro-2\n",
        "Export:        nbd://127.0.0.1:10809/data@v1 (read-only)"}) {
    EXPECT_NE(view.find(needle), std::string::npos) << needle << "\n" << view;
  }
  s.set_digest_state(v1::DIGEST_STATE_PENDING);
  s.set_digest("");
  s.set_digest_done_bytes(256 * kMiB);
  s.set_digest_total_bytes(kGiB);
  EXPECT_EQ(DigestText(s), "pending 25% (256 MiB of 1 GiB)");
  s.set_volume_exists(false);
  view = SnapshotView(s);
  EXPECT_NE(view.find("data (deleted since)"), std::string::npos) << view;
  EXPECT_NE(view.find("Durable:       yes\n"), std::string::npos) << view;
  // Answered at the cut: no space figures (they would need the commit), and it says so.
  s.set_commit_pending(true);
  view = SnapshotView(s);
  EXPECT_NE(view.find("Durable:       not yet: its commit is in flight"), std::string::npos)
      << view;
  EXPECT_EQ(view.find("Owned:"), std::string::npos) << view;
  EXPECT_FALSE(ToJson(s)["durable"].get<bool>());

  const nlohmann::ordered_json j = ToJson(SampleSnapshot());
  EXPECT_EQ(j["name"], "data@v1");
  EXPECT_EQ(j["digest_state"], "ready");
  EXPECT_EQ(j["digest"], "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(j["labels"]["source"], "https://example.com/d.csv");
  EXPECT_EQ(j["exclusive_bytes"], kMiB);
  EXPECT_EQ(j["shared_bytes"], 2 * kMiB);
  EXPECT_EQ(j["clones"].size(), 2u);

  v1::ListSnapshotsResponse list;
  *list.add_snapshots() = SampleSnapshot();
  const std::string table = SnapshotTable(list);
  EXPECT_EQ(table.substr(0, table.find('\n')),
            "SNAPSHOT  SIZE   CREATED               DIGEST                            OWNED  "
            "SHARED  CLONES  LABELS                            NOTES");
  EXPECT_NE(table.find("data@v1   1 GiB"), std::string::npos) << table;
}

TEST(Views, VolumeShowsSpaceAndCloneProvenance) {
  v1::Volume v = SampleVolume();
  v.mutable_space()->set_owned_bytes(kMiB);
  v.mutable_space()->set_shared_bytes(2 * kMiB);
  v1::CloneInfo* c = v.mutable_clone();
  c->set_volume("data");
  c->set_source("src@v1");
  c->set_source_exists(true);
  c->set_read_only(true);
  c->set_source_digest("0123456789abcdef0123456789abcdef");
  const std::string view = VolumeView(v);
  for (const char* needle : {"Owned:", "1 MiB (1048576 bytes)", "Shared:", "2 MiB (2097152 bytes)",
                             "Clone of:       src@v1 (read-only)\n",
                             "Source digest:  0123456789abcdef0123456789abcdef\n"}) {
    EXPECT_NE(view.find(needle), std::string::npos) << needle << "\n" << view;
  }
  const nlohmann::ordered_json j = ToJson(v);
  EXPECT_EQ(j["space"]["owned_bytes"], kMiB);
  EXPECT_EQ(j["space"]["shared_bytes"], 2 * kMiB);
  EXPECT_EQ(j["clone"]["source"], "src@v1");
  EXPECT_EQ(j["clone"]["read_only"], true);
  EXPECT_EQ(j["clone"]["source_digest"], "0123456789abcdef0123456789abcdef");
  EXPECT_TRUE(ToJson(SampleVolume())["clone"].is_null());

  v1::ListClonesResponse clones;
  *clones.add_clones() = *c;
  const std::string table = CloneTable(clones);
  EXPECT_NE(table.find("data   src@v1  ro    0123456789abcdef0123456789abcdef"), std::string::npos)
      << table;
}

}  // namespace
}  // namespace shale::cli
