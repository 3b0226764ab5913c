#include "nbd/authz.h"

#include <gtest/gtest.h>

namespace shale::nbd {
namespace {

TEST(ExportAuthzTest, RulesGrantNamesGlobsAndSnapshotsOfGrantedVolumes) {
  auto authz = ExportAuthz::Parse(
      "# who may open what\n"
      "cn:alice   data-a scratch-a-*   # trailing comment\n"
      "\n"
      "dns:backup.example *\n"
      "psk:bob    shared@v1\n"
      "cn:alice   extra\n");
  ASSERT_TRUE(authz.ok()) << authz.status().ToString();
  const ExportAuthz& a = **authz;
  EXPECT_EQ(a.identities(), 3u);
  const std::vector<std::string> alice = {"cn:alice", "dns:alice.example"};
  EXPECT_TRUE(a.Allows(alice, "data-a"));
  EXPECT_TRUE(a.Allows(alice, "data-a@v1")) << "a volume grants its snapshots";
  EXPECT_TRUE(a.Allows(alice, "scratch-a-17"));
  EXPECT_TRUE(a.Allows(alice, "extra")) << "rules of one identity add up";
  EXPECT_FALSE(a.Allows(alice, "data-b"));
  EXPECT_FALSE(a.Allows(alice, "data-ab"));
  EXPECT_FALSE(a.Allows(alice, "shared@v1"));
  EXPECT_TRUE(a.Allows({"dns:backup.example"}, "anything@snap"));
  EXPECT_TRUE(a.Allows({"psk:bob"}, "shared@v1"));
  EXPECT_FALSE(a.Allows({"psk:bob"}, "shared")) << "a snapshot does not grant its volume";
  EXPECT_FALSE(a.Allows({"psk:bob"}, "shared@v2"));
  EXPECT_FALSE(a.Allows({"cn:mallory"}, "data-a"));
  EXPECT_FALSE(a.Allows({}, "data-a")) << "no identity, no access";
  EXPECT_FALSE(a.Allows({"cn:alice"}, "")) << "empty names match nothing";
}

TEST(ExportAuthzTest, MalformedRulesNameTheLine) {
  const std::pair<const char*, const char*> cases[] = {
      {"alice data\n", "line 1"},
      {"\n\ncn: data\n", "line 3"},
      {"cn:alice\n", "no export pattern"},
      {"subject:alice data\n", "not an identity"},
  };
  for (const auto& [text, needle] : cases) {
    auto authz = ExportAuthz::Parse(text);
    ASSERT_FALSE(authz.ok()) << text;
    EXPECT_NE(authz.status().message().find(needle), std::string::npos)
        << text << " -> " << authz.status().ToString();
  }
  auto missing = ExportAuthz::Load("/nonexistent/authz");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/authz"), std::string::npos);
}

TEST(ExportAuthzTest, AnEmptyFileGrantsNothing) {
  auto authz = ExportAuthz::Parse("# nobody yet\n");
  ASSERT_TRUE(authz.ok());
  EXPECT_FALSE((*authz)->Allows({"cn:alice"}, "data"));
}

}  // namespace
}  // namespace shale::nbd
