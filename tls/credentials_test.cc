#include "tls/credentials.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace shale::tls {
namespace {

TEST(PskFileTest, ParsesPsktoolLines) {
  Result<std::map<std::string, std::string>> keys =
      ParsePskFile("alice:00ff10\n# a comment\n\nbob:ABCDEF0123456789\r\n");
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ(keys->at("alice"), std::string("\x00\xff\x10", 3));
  EXPECT_EQ(keys->at("bob").size(), 8u);
}

TEST(PskFileTest, RejectsMalformedFilesNamingTheLine) {
  const std::pair<const char*, const char*> cases[] = {
      {"alice", "line 1"},
      {"alice:abc\n", "even number"},
      {"alice:zz\n", "hexadecimal"},
      {":00\n", "user name"},
      {"a:00\na:11\n", "twice"},
      {"", "no key"},
      {"\n# only comments\n", "no key"},
  };
  for (const auto& [text, needle] : cases) {
    Result<std::map<std::string, std::string>> keys = ParsePskFile(text);
    ASSERT_FALSE(keys.ok()) << text;
    EXPECT_NE(keys.status().message().find(needle), std::string::npos)
        << text << " -> " << keys.status().ToString();
  }
}

TEST(CredentialsTest, MissingFilesSayWhichOne) {
  char tmpl[] = "/tmp/shale-tls-creds-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto missing_dir = Credentials::X509ServerDir(dir + "/nope");
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_NE(missing_dir.status().message().find(dir + "/nope"), std::string::npos);
  auto no_cert = Credentials::X509ServerDir(dir);
  ASSERT_FALSE(no_cert.ok());
  EXPECT_NE(no_cert.status().message().find("server-cert.pem"), std::string::npos)
      << no_cert.status().ToString();
  auto no_ca = Credentials::X509ClientDir(dir, "localhost");
  ASSERT_FALSE(no_ca.ok());
  EXPECT_NE(no_ca.status().message().find("ca-cert.pem"), std::string::npos);
  auto no_mutual = Credentials::X509MutualDir(dir);
  ASSERT_FALSE(no_mutual.ok());
  EXPECT_NE(no_mutual.status().message().find("ca.crt"), std::string::npos);
  {
    std::ofstream(dir + "/server-cert.pem") << "not a certificate\n";
    std::ofstream(dir + "/server-key.pem") << "not a key\n";
  }
  auto garbage = Credentials::X509ServerDir(dir);
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.status().message().find("server-cert.pem"), std::string::npos);
  auto psk = Credentials::PskServerFile(dir + "/keys.psk");
  ASSERT_FALSE(psk.ok());
  { std::ofstream(dir + "/keys.psk") << "alice:nothex\n"; }
  psk = Credentials::PskServerFile(dir + "/keys.psk");
  ASSERT_FALSE(psk.ok());
  EXPECT_NE(psk.status().message().find(dir + "/keys.psk"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(CredentialsTest, PskDescribesItself) {
  char tmpl[] = "/tmp/shale-tls-creds-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  { std::ofstream(dir + "/keys.psk") << "alice:00112233445566778899aabbccddeeff\n"; }
  auto psk = Credentials::PskServerFile(dir + "/keys.psk");
  ASSERT_TRUE(psk.ok()) << psk.status().ToString();
  EXPECT_EQ((*psk)->kind(), CredentialKind::kPsk);
  EXPECT_EQ((*psk)->Describe(), "psk (1 user)");
  EXPECT_TRUE((*psk)->CanServe(Role::kServer));
  EXPECT_FALSE((*psk)->CanServe(Role::kClient));
  auto client = Credentials::PskClientFile(dir + "/keys.psk", "bob");
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale::tls
