#include "engine/pool/metadata_store.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace shale {
namespace {

// Scan stops at the end of its prefix (its iterator has an upper bound: the prefix's successor),
// also when the prefix ends in 0xff bytes, and with the empty prefix it visits everything.
TEST(MetadataStoreTest, ScanVisitsExactlyItsPrefix) {
  char tmpl[] = "/tmp/shale-metadata-store-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    auto store = MetadataStore::Open(dir + "/db", {.create_if_missing = true});
    ASSERT_TRUE(store.ok()) << store.status();
    MetaBatch b;
    const std::string ff = "\xff";
    const std::vector<std::string> keys = {"a",           "a\x01", "a" + ff, "a" + ff + "x",
                                           "a" + ff + ff, "b",     "b" + ff, "c"};
    for (const std::string& k : keys) b.Put(k, "v");
    ASSERT_TRUE((*store)->Write(b).ok());
    auto scan = [&](const std::string& prefix) {
      std::vector<std::string> seen;
      EXPECT_TRUE((*store)
                      ->Scan(prefix,
                             [&](std::string_view k, std::string_view) {
                               seen.emplace_back(k);
                               return true;
                             })
                      .ok());
      return seen;
    };
    EXPECT_EQ(scan("a"),
              (std::vector<std::string>{"a", "a\x01", "a" + ff, "a" + ff + "x", "a" + ff + ff}));
    EXPECT_EQ(scan("a" + ff), (std::vector<std::string>{"a" + ff, "a" + ff + "x", "a" + ff + ff}));
    EXPECT_EQ(scan("a" + ff + ff), (std::vector<std::string>{"a" + ff + ff}));
    EXPECT_EQ(scan("b" + ff), (std::vector<std::string>{"b" + ff}));
    EXPECT_TRUE(scan("d").empty());
    EXPECT_EQ(scan("").size(), 8u);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shale
