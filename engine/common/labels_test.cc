#include "engine/common/labels.h"

#include <gtest/gtest.h>

namespace shale {
namespace {

TEST(LabelTest, ParsesAndValidates) {
  auto kv = ParseLabel("source=https://example.com/data.csv?x=1");
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(kv->first, "source");
  EXPECT_EQ(kv->second, "https://example.com/data.csv?x=1");
  auto empty = ParseLabel("notebook.example.com/id=");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->second, "");
  EXPECT_FALSE(ParseLabel("novalue").ok());
  EXPECT_FALSE(ParseLabel("=v").ok());
  EXPECT_FALSE(ParseLabel("bad key=v").ok());
  EXPECT_FALSE(ParseLabel("k=line\nbreak").ok());
  EXPECT_FALSE(ParseLabel(std::string(129, 'k') + "=v").ok());
  EXPECT_FALSE(ParseLabel("k=" + std::string(1025, 'v')).ok());
  Labels many;
  for (size_t i = 0; i <= kMaxLabels; ++i) many["k" + std::to_string(i)] = "v";
  EXPECT_EQ(ValidateLabels(many).code(), StatusCode::kInvalidArgument);
  many.erase("k0");
  EXPECT_TRUE(ValidateLabels(many).ok());
}

TEST(LabelTest, KeysAndValues) {
  EXPECT_TRUE(ValidateLabel("team", "data-science").ok());
  EXPECT_TRUE(ValidateLabel("example.com/owner", "").ok());
  EXPECT_FALSE(ValidateLabel("", "x").ok());
  EXPECT_FALSE(ValidateLabel("-x", "x").ok());
  EXPECT_FALSE(ValidateLabel("a b", "x").ok());
  EXPECT_FALSE(ValidateLabel(std::string(kMaxLabelKeyLength + 1, 'k'), "x").ok());
  EXPECT_TRUE(ValidateLabel("k", std::string(kMaxLabelValueLength, 'v')).ok());
  EXPECT_FALSE(ValidateLabel("k", std::string(kMaxLabelValueLength + 1, 'v')).ok());
  EXPECT_FALSE(ValidateLabel("k", "line\nbreak").ok());
}

}  // namespace
}  // namespace shale
