#include "cluster/node_selector.h"

#include <gtest/gtest.h>

#include <string>

#include "cluster/node_record.h"

namespace shale::cluster {
namespace {

TEST(NodeSelector, EveryKindOfRequirementMatchesAsWritten) {
  Result<NodeSelector> s = NodeSelector::Parse(" disk=ssd, zone!=a , gpu, !spot, tier==gold");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ToString(), "disk=ssd, zone!=a, gpu, !spot, tier=gold");
  const Labels good = {{"disk", "ssd"}, {"zone", "b"}, {"gpu", ""}, {"tier", "gold"}};
  EXPECT_TRUE(s->Matches(good));
  EXPECT_EQ(s->Unmet(good), "");

  Labels bad = good;
  bad["disk"] = "hdd";   // value differs
  bad["zone"] = "a";     // the excluded value
  bad.erase("gpu");      // missing
  bad["spot"] = "true";  // must be absent
  EXPECT_FALSE(s->Matches(bad));
  EXPECT_EQ(s->Unmet(bad), "disk=ssd, zone!=a, gpu, !spot");
  // A missing key meets key!=value.
  Labels no_zone = good;
  no_zone.erase("zone");
  EXPECT_TRUE(s->Matches(no_zone));
}

TEST(NodeSelector, TheEmptySelectorMatchesEveryNode) {
  for (const char* text : {"", "  "}) {
    Result<NodeSelector> s = NodeSelector::Parse(text);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(s->empty());
    EXPECT_TRUE(s->Matches({}));
    EXPECT_EQ(s->ToString(), "");
  }
}

TEST(NodeSelector, MalformedRequirementsAreRefusedByName) {
  for (const char* text : {"disk=ssd,", ",disk=ssd", "disk=ssd,,gpu", "=ssd", "!", "-bad=x",
                           "disk=ss\x01", "a b=c", "!=x"}) {
    Result<NodeSelector> s = NodeSelector::Parse(text);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << text;
    EXPECT_NE(s.status().ToString().find("node selector requirement"), std::string::npos)
        << s.status();
  }
  std::string many;
  for (int i = 0; i < 17; ++i) many += (many.empty() ? "k" : ",k") + std::to_string(i);
  EXPECT_FALSE(NodeSelector::Parse(many).ok());
  EXPECT_FALSE(NodeSelector::Parse(std::string(2000, 'k')).ok());
}

TEST(NodeLabels, RoundTripAndStrictDecoding) {
  const Labels labels = {{"disk", "ssd"}, {"example.com/zone", "b"}};
  Result<std::string> json = EncodeNodeLabels(labels);
  ASSERT_TRUE(json.ok()) << json.status();
  Result<Labels> back = DecodeNodeLabels(*json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, labels);
  for (const char* bad : {"[]", "{\"disk\": 1}", "{\"-x\": \"y\"}", "not json", "{\"a\": null}"}) {
    Result<Labels> decoded = DecodeNodeLabels(bad);
    ASSERT_FALSE(decoded.ok()) << bad;
    EXPECT_EQ(decoded.status().code(), StatusCode::kCorruption) << bad;
  }
  EXPECT_FALSE(EncodeNodeLabels({{"", "x"}}).ok());
}

}  // namespace
}  // namespace shale::cluster
