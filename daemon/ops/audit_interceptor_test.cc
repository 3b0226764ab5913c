#include "daemon/ops/audit_interceptor.h"

#include <gtest/gtest.h>

namespace shale::daemon::ops {
namespace {

TEST(AuditInterceptorTest, RecordsOnlyStateChangingMethods) {
  EXPECT_TRUE(IsAuditedMethod("/shale.v1.Control/CreateVolume"));
  EXPECT_TRUE(IsAuditedMethod("/shale.v1.Control/SetVolumeQos"));
  EXPECT_TRUE(IsAuditedMethod("/csi.v1.Controller/DeleteVolume"));
  EXPECT_TRUE(IsAuditedMethod("/csi.v1.Node/NodePublishVolume"));
  EXPECT_FALSE(IsAuditedMethod("/shale.v1.Control/GetStatus"));
  EXPECT_FALSE(IsAuditedMethod("/shale.v1.Control/ListVolumes"));
  EXPECT_FALSE(IsAuditedMethod("/shale.v1.Control/GetAudit"));
  EXPECT_FALSE(IsAuditedMethod("/shale.v1.Control/CheckPool"));
  EXPECT_FALSE(IsAuditedMethod("/shale.v1.Control/VerifySnapshot"));
  EXPECT_FALSE(IsAuditedMethod("/csi.v1.Identity/Probe"));
  EXPECT_FALSE(IsAuditedMethod("/csi.v1.Node/NodeGetInfo"));
}

TEST(AuditInterceptorTest, SecretsNeverReachARecord) {
  nlohmann::json request = nlohmann::json::parse(R"({
    "name": "v",
    "secrets": {"accessKey": "AKIA", "secretKey": "s3cr3t"},
    "parameters": {"csi.storage.k8s.io/provisioner-secret-name": "creds", "team": "a"},
    "to": {"url": "s3://bucket/prefix", "endpoint": "https://AKIA:s3cr3t@minio:9000/x"},
    "tls": {"psk": "abcdef", "cluster_secret": "xyz"},
    "list": [{"password": "p"}, "http://u:p@h"]
  })");
  RedactSecrets(request);
  const std::string text = request.dump();
  for (const char* secret : {"AKIA", "s3cr3t", "abcdef", "xyz", "\"p\"", "u:p"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " in " << text;
  }
  EXPECT_EQ(request["secrets"], "<redacted>");
  EXPECT_EQ(request["parameters"]["team"], "a");
  EXPECT_EQ(request["to"]["url"], "s3://bucket/prefix");
  EXPECT_EQ(request["to"]["endpoint"], "https://<redacted>@minio:9000/x");
  EXPECT_EQ(request["list"][1], "http://<redacted>@h");
}

TEST(AuditInterceptorTest, FindsTheVolumesAndPoolARequestIsAbout) {
  AuditTargets t = FindAuditTargets(nlohmann::json{{"name", "v"}, {"pool", "p"}},
                                    "/shale.v1.Control/CreateVolume");
  EXPECT_EQ(t.volumes, std::vector<std::string>{"v"});
  EXPECT_EQ(t.pool, "p");
  t = FindAuditTargets(nlohmann::json{{"source", "src@s1"}, {"name", "c"}},
                       "/shale.v1.Control/CloneVolume");
  EXPECT_EQ(t.volumes, (std::vector<std::string>{"c", "src"}));
  t = FindAuditTargets(nlohmann::json{{"volume", "v"}, {"name", "s1"}},
                       "/shale.v1.Control/CreateSnapshot");
  EXPECT_EQ(t.volumes, std::vector<std::string>{"v"});
  t = FindAuditTargets(nlohmann::json{{"name", "v@s1"}}, "/shale.v1.Control/DeleteSnapshot");
  EXPECT_EQ(t.volumes, std::vector<std::string>{"v"});
  t = FindAuditTargets(nlohmann::json{{"name", "p2"}}, "/shale.v1.Control/SetPoolCapacity");
  EXPECT_TRUE(t.volumes.empty());
  EXPECT_EQ(t.pool, "p2");
  t = FindAuditTargets(nlohmann::json{{"volume_id", "pvc-1"}, {"secrets", "<redacted>"}},
                       "/csi.v1.Controller/DeleteVolume");
  EXPECT_EQ(t.volumes, std::vector<std::string>{"pvc-1"});
}

}  // namespace
}  // namespace shale::daemon::ops
