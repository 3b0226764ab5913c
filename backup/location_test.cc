#include "backup/location.h"

#include <gtest/gtest.h>

namespace shale::backup {
namespace {

TEST(LocationTest, ParsesPlacesAndBackups) {
  Result<Location> l = ParseLocation("s3://my-bucket/team/nb-42/");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->bucket, "my-bucket");
  EXPECT_EQ(l->prefix, "team/nb-42");
  EXPECT_EQ(l->ToString(), "s3://my-bucket/team/nb-42");
  EXPECT_EQ(l->Key("chunks/x"), "team/nb-42/chunks/x");
  Result<Location> bare = ParseLocation("s3://bkt");
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->Key("backups/"), "backups/");

  Result<BackupRef> r = ParseBackupRef("s3://bkt/p/q/data.20261205T173838Z.3fa9c1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->location.prefix, "p/q");
  EXPECT_EQ(r->id, "data.20261205T173838Z.3fa9c1");
  EXPECT_EQ(r->ToString(), "s3://bkt/p/q/data.20261205T173838Z.3fa9c1");
  Result<BackupRef> top = ParseBackupRef("s3://bkt/data.20261205T173838Z.3fa9c1");
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->location.prefix, "");
}

TEST(LocationTest, RefusesBadInputNamingIt) {
  for (const char* bad : {"http://bkt/p", "s3://", "s3://B/p", "s3://ab", "s3://-bkt",
                          "s3://bkt/a//b", "s3://bkt/a/../b", "s3://bkt/a b", "s3://bkt/a?x"}) {
    Result<Location> l = ParseLocation(bad);
    EXPECT_EQ(l.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(ParseBackupRef("s3://bkt").ok());
  EXPECT_FALSE(ParseBackupRef("s3://bkt/p/not-an-id").ok());
  EXPECT_NE(ParseBackupRef("s3://bkt/p/x").status().message().find("backup list"),
            std::string_view::npos);
}

TEST(LocationTest, BackupIds) {
  const std::string id = NewBackupId("my.vol-1", 1'796'485'118'000'000'000ull);
  EXPECT_TRUE(ValidateBackupId(id).ok()) << id;
  EXPECT_EQ(id.substr(0, 26), "my.vol-1.20261205T153838Z.");
  EXPECT_EQ(VolumeOfBackupId(id).value(), "my.vol-1");
  EXPECT_NE(NewBackupId("v", 0), NewBackupId("v", 0));  // random tail
  for (const char* bad :
       {"", "v", "v.20261205T173838Z", ".20261205T173838Z.3fa9c1", "v.20261205T173838Z.3FA9C1",
        "v.2026120XT173838Z.3fa9c1", "-v.20261205T173838Z.3fa9c1"}) {
    EXPECT_FALSE(ValidateBackupId(bad).ok()) << bad;
  }
}

TEST(LocationTest, Endpoints) {
  EXPECT_TRUE((Endpoint{"http://127.0.0.1:4568", ""}.Validate().ok()));
  EXPECT_TRUE((Endpoint{"https://minio.example:9000/", "eu-west-1"}.Validate().ok()));
  EXPECT_FALSE((Endpoint{"ftp://x", ""}.Validate().ok()));
  EXPECT_FALSE((Endpoint{"http://", ""}.Validate().ok()));
  EXPECT_FALSE((Endpoint{"http://h/path", ""}.Validate().ok()));
  EXPECT_FALSE((Endpoint{"http://user:pw@h", ""}.Validate().ok()));
  EXPECT_FALSE((Endpoint{"", "EU_WEST"}.Validate().ok()));
  EXPECT_EQ((Endpoint{"http://h:1/", ""}.BucketUrl("b")), "http://h:1/b");
  EXPECT_EQ((Endpoint{"", "eu-west-1"}.BucketUrl("b")), "https://b.s3.eu-west-1.amazonaws.com");
  EXPECT_EQ((Endpoint{"", ""}.Describe()), "AWS S3 (us-east-1)");
}

}  // namespace
}  // namespace shale::backup
