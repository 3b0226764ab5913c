#include "cluster/endpoints.h"

#include <gtest/gtest.h>

#include "cluster/etcd_types.h"

namespace shale::cluster {
namespace {

TEST(EtcdEndpoints, ParsesOneAndMany) {
  Result<std::vector<EtcdEndpoint>> one = ParseEtcdEndpoints("etcd://127.0.0.1:2379");
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].host, "127.0.0.1");
  EXPECT_EQ((*one)[0].port, 2379);

  Result<std::vector<EtcdEndpoint>> many =
      ParseEtcdEndpoints("etcd://etcd-0.etcd.svc:2379,10.0.0.2:12379,[::1]:3");
  ASSERT_TRUE(many.ok()) << many.status();
  ASSERT_EQ(many->size(), 3u);
  EXPECT_EQ((*many)[0].Address(), "etcd-0.etcd.svc:2379");
  EXPECT_EQ((*many)[1].Address(), "10.0.0.2:12379");
  EXPECT_EQ((*many)[2].host, "::1");
  EXPECT_EQ((*many)[2].Address(), "[::1]:3");
  EXPECT_EQ(FormatEtcdEndpoints(*many), "etcd://etcd-0.etcd.svc:2379,10.0.0.2:12379,[::1]:3");
}

TEST(EtcdEndpoints, RejectsMalformedWithAClearMessage) {
  const struct {
    const char* text;
    const char* says;
  } cases[] = {
      {"", "does not start with etcd://"},
      {"127.0.0.1:2379", "does not start with etcd://"},
      {"http://127.0.0.1:2379", "does not start with etcd://"},
      {"etcd://", "no endpoint"},
      {"etcd://host", "has no port"},
      {"etcd://host:", "no valid port"},
      {"etcd://host:0", "no valid port"},
      {"etcd://host:65536", "no valid port"},
      {"etcd://host:12x", "no valid port"},
      {"etcd://host:-1", "no valid port"},
      {"etcd://:2379", "no valid host"},
      {"etcd://a:1,", "an empty endpoint"},
      {"etcd://a:1,,b:2", "an empty endpoint"},
      {"etcd://a:1,a:1", "given twice"},
      {"etcd://::1:2379", "IPv6 address in brackets"},
      {"etcd://[::1]", "has no port"},
      {"etcd://[::1:2379", "lacks ']'"},
      {"etcd://[zz]:1", "not an IPv6 address"},
      {"etcd://user@a:1", "credentials"},
      {"etcd://a:1/v3", "path"},
      {"etcd://a:1,etcd://b:2", "repeats a scheme"},
      {"etcd://a b:1", "no valid host"},
  };
  for (const auto& c : cases) {
    Result<std::vector<EtcdEndpoint>> r = ParseEtcdEndpoints(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.text;
    const std::string msg(r.status().message());
    EXPECT_NE(msg.find(c.says), std::string::npos) << c.text << " -> " << msg;
    EXPECT_NE(msg.find("'" + std::string(c.text) + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("etcd://HOST:PORT"), std::string::npos) << msg;
  }
}

TEST(EtcdEndpoints, BoundsTheList) {
  std::string text = "etcd://";
  for (size_t i = 0; i <= kMaxEtcdEndpoints; ++i) {
    text += (i > 0 ? "," : "") + std::string("h") + std::to_string(i) + ":1";
  }
  Result<std::vector<EtcdEndpoint>> r = ParseEtcdEndpoints(text);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("more than"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace shale::cluster

namespace shale::cluster {
namespace {

TEST(EtcdTypes, PrefixEnd) {
  EXPECT_EQ(PrefixEnd("/shale/v1/volumes/"), "/shale/v1/volumes0");
  EXPECT_EQ(PrefixEnd("a\xff"), "b");
  EXPECT_EQ(PrefixEnd("\xff\xff"), std::string(1, '\0'));
  EXPECT_EQ(PrefixEnd(""), std::string(1, '\0'));
}

}  // namespace
}  // namespace shale::cluster
