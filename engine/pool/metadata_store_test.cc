#include "engine/pool/metadata_store.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace shale {
namespace {

// Scan stops at the end of its prefix (its iterator has an upper bound: the prefix's successor),
// also when the prefix ends in 0xff bytes, and with the empty prefix it visits everything.
// ScanRange visits [begin, end) in order (end empty: to the last key); the store opened with
// deferred compactions has them off until ResumeCompactions (Engine::LoadPool's map scan).
TEST(MetadataStoreTest, ScanRangeAndDeferredCompactions) {
  char tmpl[] = "/tmp/shale-metadata-store-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  {
    auto store =
        MetadataStore::Open(dir + "/db", {.create_if_missing = true, .defer_compactions = true});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE((*store)->compactions_deferred());
    MetaBatch b;
    for (const char* k : {"a", "b", "b1", "c", "d"}) b.Put(k, "v");
    ASSERT_TRUE((*store)->Write(b).ok());
    auto range = [&](const std::string& begin, const std::string& end) {
      std::vector<std::string> seen;
      EXPECT_TRUE((*store)
                      ->ScanRange(begin, end,
                                  [&](std::string_view k, std::string_view) {
                                    seen.emplace_back(k);
                                    return true;
                                  })
                      .ok());
      return seen;
    };
    EXPECT_EQ(range("b", "c"), (std::vector<std::string>{"b", "b1"}));
    EXPECT_EQ(range("a1", "d"), (std::vector<std::string>{"b", "b1", "c"}));
    EXPECT_EQ(range("c", ""), (std::vector<std::string>{"c", "d"}));
    EXPECT_TRUE(range("b2", "b3").empty());
    ASSERT_TRUE((*store)->ResumeCompactions().ok());
    EXPECT_FALSE((*store)->compactions_deferred());
  }
  std::filesystem::remove_all(dir);
}

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
