// The audit log end to end (docs/operations.md, "Audit log"): every change through the control
// socket is one JSON line in <data-dir>/audit.log with the caller's uid and pid (SO_PEERCRED),
// written and synced before the answer (it survives kill -9 of shaled right after the answer),
// failed changes recorded as failed, reads not recorded; `shale audit` filters and shows it;
// a log that cannot be written stops shaled (fail closed).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "tests/e2e/csi_client.h"
#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

// Records of `shale audit -o json` (with `args`) whose action is `action`.
std::vector<nlohmann::json> Records(Harness& h, const std::string& action,
                                    std::vector<std::string> args = {}) {
  args.insert(args.begin(), {"audit", "-o", "json"});
  CommandResult r = h.Shale(args);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  std::vector<nlohmann::json> out;
  const nlohmann::json j = r.Json();
  if (!j.is_object() || !j["records"].is_array()) return out;
  for (const nlohmann::json& record : j["records"]) {
    if (record["action"] == action) out.push_back(record);
  }
  return out;
}

// The one record of `action`, checked: made by this test's uid through the control socket, by
// a `shale` process (not shaled), naming `volume`, with `result`.
nlohmann::json ExpectOneRecord(Harness& h, const std::string& action, const std::string& volume,
                               const std::string& result = "ok") {
  std::vector<nlohmann::json> found = Records(h, action);
  EXPECT_EQ(found.size(), 1u) << action;
  if (found.size() != 1) return nullptr;
  const nlohmann::json& r = found[0];
  EXPECT_EQ(r["source"], "control") << r;
  EXPECT_EQ(r["result"], result) << r;
  EXPECT_EQ(r["caller"]["uid"], getuid()) << r;
  EXPECT_EQ(r["caller"]["gid"], getgid()) << r;
  EXPECT_EQ(r["caller"]["command"], "shale") << r;
  EXPECT_GT(r["caller"]["pid"].get<int>(), 0) << r;
  EXPECT_NE(r["caller"]["pid"], h.daemon_pid()) << r;
  EXPECT_NE(std::find(r["volumes"].begin(), r["volumes"].end(), volume), r["volumes"].end()) << r;
  EXPECT_TRUE(r["time"].is_string()) << r;
  EXPECT_GT(r["time_unix_ns"].get<uint64_t>(), 0u) << r;
  return r;
}

TEST(Audit, EveryChangeIsRecordedWithItsCaller) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  for (const std::vector<std::string>& args : {
           std::vector<std::string>{"volume", "create", "data", "--size", "64M"},
           std::vector<std::string>{"snapshot", "create", "data", "s1"},
           std::vector<std::string>{"clone", "create", "data@s1", "explore"},
           std::vector<std::string>{"qos", "set", "explore", "--iops", "1000"},
           std::vector<std::string>{"volume", "delete", "explore"},
           std::vector<std::string>{"volume", "list"},
           std::vector<std::string>{"volume", "show", "data"},
       }) {
    CommandResult r = h.Shale(args);
    ASSERT_EQ(r.exit_code, 0) << r.Describe();
  }
  // A refused change is recorded too, with its result and the daemon's message.
  EXPECT_EQ(h.Shale({"volume", "delete", "nosuch"}).exit_code, 1);

  const nlohmann::json create = ExpectOneRecord(h, "CreateVolume", "data");
  EXPECT_EQ(create["request"]["size_bytes"], std::to_string(64 << 20)) << create;
  const nlohmann::json snap = ExpectOneRecord(h, "CreateSnapshot", "data");
  EXPECT_EQ(snap["request"]["name"], "s1") << snap;
  const nlohmann::json clone = ExpectOneRecord(h, "CloneVolume", "explore");
  EXPECT_EQ(clone["volumes"], nlohmann::json({"data", "explore"})) << clone;
  const nlohmann::json qos = ExpectOneRecord(h, "SetVolumeQos", "explore");
  EXPECT_EQ(qos["request"]["qos"]["iops"], "1000") << qos;
  std::vector<nlohmann::json> deletes = Records(h, "DeleteVolume");
  ASSERT_EQ(deletes.size(), 2u);
  EXPECT_EQ(deletes[0]["result"], "ok") << deletes[0];
  EXPECT_EQ(deletes[0]["volumes"], nlohmann::json({"explore"}));
  EXPECT_EQ(deletes[1]["result"], "not_found") << deletes[1];
  EXPECT_NE(deletes[1]["error"].get<std::string>().find("'nosuch' not found"), std::string::npos)
      << deletes[1];
  EXPECT_EQ(deletes[1]["caller"]["uid"], getuid());
  // Reads are not recorded; shaled's start is.
  EXPECT_TRUE(Records(h, "ListVolumes").empty());
  EXPECT_TRUE(Records(h, "GetVolume").empty());
  EXPECT_EQ(Records(h, "ShaledStart").size(), 1u);

  // Filters: by volume (a snapshot or clone counts for its volume), by time.
  const std::vector<nlohmann::json> of_data = Records(h, "CreateSnapshot", {"--volume", "data"});
  EXPECT_EQ(of_data.size(), 1u);
  EXPECT_TRUE(Records(h, "SetVolumeQos", {"--volume", "data"}).empty());
  EXPECT_EQ(Records(h, "SetVolumeQos", {"--since", "1h"}).size(), 1u);
  EXPECT_TRUE(Records(h, "SetVolumeQos", {"--since", "2999-01-01"}).empty());
  CommandResult table = h.Shale({"audit", "--volume", "explore"});
  ASSERT_EQ(table.exit_code, 0) << table.Describe();
  EXPECT_NE(table.out.find("SetVolumeQos"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("uid " + std::to_string(getuid())), std::string::npos) << table.out;
  EXPECT_EQ(table.out.find("CreateSnapshot"), std::string::npos) << table.out;
  ExpectOneLineError(h.Shale({"audit", "--since", "yesterday"}), "--since 'yesterday'");
  ExpectOneLineError(h.Shale({"audit", "--volume", "bad/name"}), "volume");

  // The file: one JSON object per line, mode 0600.
  const std::string path = h.data_dir() + "/audit.log";
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  size_t lines = 0;
  std::istringstream in(ReadTextFile(path));
  for (std::string line; std::getline(in, line); ++lines) {
    EXPECT_TRUE(nlohmann::json::parse(line, nullptr, false).is_object()) << line;
  }
  EXPECT_EQ(lines, 7u) << "start, 5 changes and the refused delete";
}

// The record is durable before the answer: kill -9 right after the command returned loses
// nothing.
TEST(Audit, ARecordSurvivesKillNineRightAfterTheAnswer) {
  Harness h;
  ASSERT_TRUE(h.StartDaemon());
  ASSERT_EQ(h.Shale({"volume", "create", "v", "--size", "16M"}).exit_code, 0);
  ASSERT_EQ(h.Shale({"snapshot", "create", "v", "before-crash"}).exit_code, 0);
  h.KillDaemon();
  ASSERT_TRUE(h.StartDaemon());
  const nlohmann::json snap = ExpectOneRecord(h, "CreateSnapshot", "v");
  EXPECT_EQ(snap["request"]["name"], "before-crash");
  ExpectOneRecord(h, "CreateVolume", "v");
  EXPECT_EQ(Records(h, "ShaledStart").size(), 2u);
}

// CSI calls are recorded with the PVC the provisioner passes (--extra-create-metadata), also
// the DeleteVolume that names only the volume id (from the labels the driver recorded); CSI
// secrets never reach the file.
TEST(Audit, CsiCallsNameThePvcAndKeepNoSecret) {
  Harness h;
  CsiClient csi;
  ASSERT_TRUE(csi.Start(h));
  csiv1::CreateVolumeRequest req = CsiClient::VolumeRequest("pvc-1234", 16 << 20);
  (*req.mutable_parameters())["csi.storage.k8s.io/pvc/name"] = "data";
  (*req.mutable_parameters())["csi.storage.k8s.io/pvc/namespace"] = "team-a";
  (*req.mutable_secrets())["secretKey"] = "s3cr3t-value";
  csiv1::CreateVolumeResponse resp;
  grpc::Status st = csi.CreateVolume(req, &resp);
  ASSERT_TRUE(st.ok()) << Describe(st);
  st = csi.DeleteVolume(resp.volume().volume_id());
  ASSERT_TRUE(st.ok()) << Describe(st);
  for (const char* action : {"CreateVolume", "DeleteVolume"}) {
    std::vector<nlohmann::json> found = Records(h, action);
    ASSERT_EQ(found.size(), 1u) << action;
    const nlohmann::json& r = found[0];
    EXPECT_EQ(r["source"], "csi") << r;
    EXPECT_EQ(r["result"], "ok") << r;
    EXPECT_EQ(r["caller"]["uid"], getuid()) << r;
    EXPECT_EQ(r["caller"]["pid"], getpid()) << "this test is the CSI client: " << r;
    EXPECT_EQ(r["kubernetes"]["pvc_name"], "data") << r;
    EXPECT_EQ(r["kubernetes"]["pvc_namespace"], "team-a") << r;
    EXPECT_EQ(r["volumes"], nlohmann::json({resp.volume().volume_id()})) << r;
  }
  const std::string file = ReadTextFile(h.data_dir() + "/audit.log");
  EXPECT_EQ(file.find("s3cr3t-value"), std::string::npos) << file;
  EXPECT_NE(file.find("\"secrets\":\"<redacted>\""), std::string::npos) << file;
}

// Fail closed: shaled does not start with an audit log it cannot write.
TEST(Audit, AnUnwritableLogStopsTheStart) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  Harness h;
  std::filesystem::create_directories(h.data_dir());
  std::filesystem::create_symlink("/dev/full", h.data_dir() + "/audit.log");  // ENOSPC
  CommandResult r = RunProcess({ShaledBinary(), "--data-dir", h.data_dir(), "--default-pool-size",
                                "1G", "--nbd-listen", "none", "--metrics-listen", "none",
                                "--log-file", h.root() + "/log"});
  ExpectOneLineError(r, "cannot write the audit log " + h.data_dir() + "/audit.log", "shaled: ");
  EXPECT_EQ(r.exit_code, 1);
}

}  // namespace
}  // namespace shale::e2e
