#include "backup/credentials.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

namespace shale::backup {
namespace {

TEST(CredentialsTest, ParsesProfiles) {
  const std::string text =
      "# comment\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n"
      "\n[profile ci]\naws_access_key_id=AKIA2\naws_secret_access_key = s2\n"
      "aws_session_token = tok\n";
  Result<Credentials> d = ParseCredentialsFile(text, "");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->access_key_id, "AKIA1");
  EXPECT_EQ(d->secret_access_key, "s1");
  EXPECT_TRUE(d->session_token.empty());
  Result<Credentials> ci = ParseCredentialsFile(text, "ci");
  ASSERT_TRUE(ci.ok());
  EXPECT_EQ(ci->session_token, "tok");
  EXPECT_FALSE(ParseCredentialsFile(text, "nope").ok());
  EXPECT_FALSE(ParseCredentialsFile("[default]\naws_access_key_id=x\n", "").ok());
}

TEST(CredentialsTest, FileMustBeOwnerOnlyAndErrorsHoldNoSecret) {
  char dir[] = "/tmp/shale-cred-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/creds";
  {
    std::ofstream out(path);
    out << "[default]\naws_access_key_id=AKIASECRETID\naws_secret_access_key=TOPSECRET\n";
  }
  chmod(path.c_str(), 0644);
  Result<Credentials> open = LoadCredentials(path);
  EXPECT_EQ(open.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(open.status().message().find("chmod 600"), std::string_view::npos);
  EXPECT_EQ(open.status().message().find("TOPSECRET"), std::string_view::npos);
  chmod(path.c_str(), 0600);
  Result<Credentials> ok = LoadCredentials(path);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->secret_access_key, "TOPSECRET");
  EXPECT_FALSE(LoadCredentials(std::string(dir) + "/missing").ok());
  unlink(path.c_str());
  rmdir(dir);
}

TEST(CredentialsTest, FromTheEnvironment) {
  setenv("AWS_ACCESS_KEY_ID", "AKIAENV", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
  setenv("AWS_SESSION_TOKEN", "envtoken", 1);
  Result<Credentials> c = LoadCredentials("");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->access_key_id, "AKIAENV");
  EXPECT_EQ(c->session_token, "envtoken");
  unsetenv("AWS_SECRET_ACCESS_KEY");
  Result<Credentials> missing = LoadCredentials("");
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("AWS_SECRET_ACCESS_KEY"), std::string_view::npos);
  unsetenv("AWS_ACCESS_KEY_ID");
  unsetenv("AWS_SESSION_TOKEN");
}

}  // namespace
}  // namespace shale::backup
