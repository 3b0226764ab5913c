#include "snapshot/names.h"

#include <gtest/gtest.h>

namespace shale::snapshot {
namespace {

void ExpectInvalid(std::string_view text, std::string_view hint) {
  auto r = ParseSnapshotRef(text);
  ASSERT_FALSE(r.ok()) << text;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << text;
  EXPECT_NE(r.status().message().find(hint), std::string_view::npos) << r.status();
}

TEST(SnapshotRefTest, ParsesAndExplainsMistakes) {
  auto r = ParseSnapshotRef("data-01@v2.clean");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->volume, "data-01");
  EXPECT_EQ(r->snapshot, "v2.clean");
  EXPECT_EQ(r->ToString(), "data-01@v2.clean");
  ExpectInvalid("data", "missing '@'");
  ExpectInvalid("", "missing '@'");
  ExpectInvalid("v@", "empty snapshot part");
  ExpectInvalid("@s", "empty volume part");
  ExpectInvalid("@", "empty volume part");
  ExpectInvalid("a@b@c", "more than one '@'");
  ExpectInvalid("v@-s", "must start with a letter or digit");
  ExpectInvalid("v/x@s", "may contain only");
  ExpectInvalid("v@" + std::string(129, 's'), "129 bytes long");
  ExpectInvalid(std::string(129, 'v') + "@s", "129 bytes long");
  EXPECT_TRUE(ParseSnapshotRef(std::string(128, 'v') + "@" + std::string(128, 's')).ok());
}

}  // namespace
}  // namespace shale::snapshot
