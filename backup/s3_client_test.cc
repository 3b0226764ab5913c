// Pure parts of the S3 client; requests against a real S3 server (s3rver) are covered end to
// end in tests/e2e/backup_test.cc.
#include "backup/s3_client.h"

#include <gtest/gtest.h>

namespace shale::backup {
namespace {

using namespace s3internal;

TEST(S3ClientTest, XmlOfAListing) {
  const std::string xml =
      "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated>"
      "<Contents><Key>p/a&amp;b</Key><Size>6</Size><LastModified>2026-12-05T17:38:38.000Z"
      "</LastModified></Contents><Contents><Key>p/c</Key><Size>7</Size></Contents>"
      "<NextContinuationToken>tok/+=</NextContinuationToken></ListBucketResult>";
  auto contents = XmlElements(xml, "Contents");
  ASSERT_EQ(contents.size(), 2u);
  EXPECT_EQ(XmlValues(contents[0], "Key"), std::vector<std::string>{"p/a&b"});
  EXPECT_EQ(XmlValues(xml, "NextContinuationToken").front(), "tok/+=");
  EXPECT_EQ(ParseIsoTime(XmlValues(contents[0], "LastModified").front()), 1796492318);
  EXPECT_FALSE(ParseIsoTime("yesterday").has_value());
}

TEST(S3ClientTest, EncodingAndHashes) {
  EXPECT_EQ(UriEncode("a/b c+d~e_f.g-h"), "a%2Fb%20c%2Bd~e_f.g-h");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(S3ClientTest, UnreachableEndpointIsOneClearError) {
  S3Config config;
  config.endpoint = {"http://127.0.0.1:1", ""};
  config.credentials = {"AKIAX", "secret-never-shown", ""};
  config.max_attempts = 2;
  config.first_backoff = std::chrono::milliseconds(10);
  S3Client s3(config, "bkt");
  Status st = s3.Put("k", "v");
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("cannot reach S3 endpoint http://127.0.0.1:1"), std::string::npos)
      << st;
  EXPECT_NE(st.message().find("2 attempts"), std::string::npos) << st;
  EXPECT_EQ(st.message().find("secret-never-shown"), std::string::npos);
  EXPECT_EQ(st.message().find('\n'), std::string::npos);
  EXPECT_EQ(s3.stats().requests, 2u);
}

}  // namespace
}  // namespace shale::backup
