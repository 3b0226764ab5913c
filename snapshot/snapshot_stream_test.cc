// Export and import through SnapshotManager: full and incremental round trips (changed ranges
// and content comparison), corrupted and truncated streams, wrong bases, digest mismatches and
// recovery of an import interrupted by a crash. Nothing a failed import did may remain.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "engine/pool/keys.h"
#include "snapshot/records.h"
#include "snapshot/snapshot_test_util.h"
#include "snapshot/stream_format.h"

namespace shale::snapshot {
namespace {

using testing::Pattern;

class SnapshotStreamTest : public testing::SnapshotTest {
 protected:
  std::string File(const std::string& name) { return dir_ + "/" + name; }
  static std::string Slurp(const std::string& path) {
    std::string out(std::filesystem::file_size(path), '\0');
    std::ifstream in(path, std::ios::binary);
    in.read(out.data(), static_cast<std::streamsize>(out.size()));
    return out;
  }
  static void Spit(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  // Everything the snapshot layer and the engine hold, to compare before/after a failed import.
  std::string State() {
    std::string s;
    for (const auto& v : engine_->ListVolumes()) {
      s += "vol " + v.name + " " + std::to_string(v.size_bytes) + "\n";
    }
    auto snaps = mgr_->List({.include_implicit = true, .with_space = false});
    EXPECT_TRUE(snaps.ok());
    for (const auto& sn : *snaps) s += "snap " + sn.full_name() + " " + sn.digest + "\n";
    for (const auto& img : engine_->ListImages("default")) {  // heads change with every revert
      if (img.frozen) s += "img " + std::to_string(img.id) + "\n";
    }
    engine_
        ->ScanRecords("default", keys::ExtensionPrefix(kImportNamespace),
                      [&](auto k, auto) {
                        s += "import-marker " + std::string(k) + "\n";
                        return true;
                      })
        .IgnoreError();
    s += "free " + std::to_string(FreeBytes()) + "\n";
    return s;
  }

  // v: 8 MiB with data, holes and labels; snapshot v@s1.
  std::vector<uint8_t> MakeSource() {
    CreateVolume("v", 8 * kMiB);
    EXPECT_TRUE(Write("v", 0, Pattern(3 * kMiB, 1)).ok());
    EXPECT_TRUE(Write("v", 5 * kMiB + 4096, Pattern(100 * kKiB, 2)).ok());
    Snap("v", "s1", {{"source", "https://example.com/d.csv"}, {"notebook", "nb-1"}});
    return Content("v@s1");
  }
};

TEST_F(SnapshotStreamTest, FullRoundTrip) {
  const auto content = MakeSource();
  auto ex = mgr_->Export("v@s1", File("s1.stream"));
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_EQ(ex->digest, DigestHexOf(content));
  EXPECT_EQ(ex->data_bytes, 3 * kMiB + 100 * kKiB) << "holes are not in a full stream";
  EXPECT_EQ(mgr_->Get("v@s1")->digest, ex->digest) << "the export recorded the digest it computed";
  auto im = mgr_->Import(File("s1.stream"), "w");
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_TRUE(im->created_volume);
  EXPECT_FALSE(im->incremental);
  EXPECT_EQ(im->snapshot.full_name(), "w@s1");
  EXPECT_EQ(im->snapshot.digest_state, DigestState::kReady);
  EXPECT_EQ(im->snapshot.digest, ex->digest);
  EXPECT_EQ(im->snapshot.labels, mgr_->Get("v@s1")->labels);
  EXPECT_EQ(Content("w"), content);
  EXPECT_EQ(Content("w@s1"), content);
  auto verified = mgr_->Verify("w@s1");
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(*verified, ex->digest);
  // The file is not overwritten by accident; the import of an existing volume is refused.
  EXPECT_EQ(mgr_->Export("v@s1", File("s1.stream")).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(mgr_->Import(File("s1.stream"), "w").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(mgr_->Import(File("missing.stream"), "x").status().code(), StatusCode::kNotFound);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, CancelledExportAndImportLeaveNothingBehind) {
  MakeSource();
  int calls = 0;
  ExportOptions cancel_export;
  cancel_export.cancelled = [&] { return ++calls >= 2; };
  auto ex = mgr_->Export("v@s1", File("s1.stream"), cancel_export);
  ASSERT_FALSE(ex.ok());
  EXPECT_EQ(ex.status().code(), StatusCode::kAborted) << ex.status();
  EXPECT_FALSE(std::filesystem::exists(File("s1.stream"))) << "the partial file is removed";
  EXPECT_EQ(calls, 2);
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  const std::string before = State();
  ImportOptions cancel_import;
  cancel_import.cancelled = [] { return true; };
  auto im = mgr_->Import(File("s1.stream"), "w", cancel_import);
  ASSERT_FALSE(im.ok());
  EXPECT_EQ(im.status().code(), StatusCode::kAborted) << im.status();
  EXPECT_EQ(State(), before) << "the full import's volume is gone again";
  EXPECT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
}

TEST_F(SnapshotStreamTest, IncrementalRoundTripFromChangedRanges) {
  MakeSource();
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  ASSERT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
  // Changes: overwrite, discard, grow, write past the old end.
  ASSERT_TRUE(Write("v", 1 * kMiB, Pattern(256 * kKiB, 3)).ok());
  ASSERT_TRUE(Discard("v", 2 * kMiB, 512 * kKiB).ok());
  ASSERT_TRUE(engine_->ResizeVolume("v", 10 * kMiB).ok());
  ASSERT_TRUE(Write("v", 9 * kMiB, Pattern(64 * kKiB, 4)).ok());
  Snap("v", "s2", {{"step", "2"}});
  const auto content = Content("v@s2");
  auto ex = mgr_->Export("v@s2", File("s2.inc"), {.base = "v@s1"});
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_FALSE(ex->content_compared);
  EXPECT_EQ(ex->base, "v@s1");
  EXPECT_LT(ex->data_bytes, 1 * kMiB) << "only the changes travel";
  // The target's own later writes are discarded by the import (it reverts to the base).
  ASSERT_TRUE(Write("w", 0, Pattern(4096, 99)).ok());
  auto im = mgr_->Import(File("s2.inc"), "w");
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_TRUE(im->incremental);
  EXPECT_EQ(im->snapshot.full_name(), "w@s2");
  EXPECT_EQ(im->snapshot.digest, mgr_->Get("v@s2")->digest);
  EXPECT_EQ(im->snapshot.digest, DigestHexOf(content));
  EXPECT_EQ(Content("w@s2"), content);
  EXPECT_EQ(Content("w"), content);
  EXPECT_EQ(engine_->GetVolume("w")->size_bytes, 10 * kMiB);
  EXPECT_EQ(mgr_->Get("w@s2")->labels, (Labels{{"step", "2"}}));
  EXPECT_TRUE(mgr_->Get("w@s1").ok());
  // Importing it again: the snapshot exists already.
  EXPECT_EQ(mgr_->Import(File("s2.inc"), "w").status().code(), StatusCode::kAlreadyExists);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, IncrementalByContentWhenTheBaseIsNotAnAncestor) {
  MakeSource();
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  ASSERT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
  ASSERT_TRUE(Write("v", 0, Pattern(128 * kKiB, 5)).ok());
  Snap("v", "s2");
  ASSERT_TRUE(mgr_->Export("v@s2", File("s2.inc"), {.base = "v@s1"}).ok());
  ASSERT_TRUE(mgr_->Import(File("s2.inc"), "w").ok());
  // Back to s1 and a different branch: s2 is not an ancestor of s3.
  ASSERT_TRUE(mgr_->Revert("v", "s1").ok());
  ASSERT_TRUE(Write("v", 4 * kMiB, Pattern(64 * kKiB, 6)).ok());
  ASSERT_TRUE(Discard("v", 5 * kMiB, 1 * kMiB).ok());
  Snap("v", "s3");
  const auto content = Content("v@s3");
  auto ex = mgr_->Export("v@s3", File("s3.inc"), {.base = "v@s2"});
  ASSERT_TRUE(ex.ok()) << ex.status();
  EXPECT_TRUE(ex->content_compared);
  EXPECT_LT(ex->data_bytes, 512 * kKiB);
  auto im = mgr_->Import(File("s3.inc"), "w");
  ASSERT_TRUE(im.ok()) << im.status();
  EXPECT_EQ(im->snapshot.digest, DigestHexOf(content));
  EXPECT_EQ(Content("w@s3"), content);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, CorruptedOrTruncatedStreamsLeaveNothingBehind) {
  MakeSource();
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  const std::string good = Slurp(File("s1.stream"));
  const std::string before = State();
  struct Case {
    std::string name;
    std::string bytes;
    std::string hint;
  };
  std::string flipped_data = good;
  flipped_data[good.size() / 2] ^= 0x10;  // inside a data payload
  std::string flipped_header = good;
  flipped_header[20] ^= 0x01;
  std::string flipped_end = good;
  flipped_end[good.size() - 20] ^= 0x01;  // the end record's digest
  const std::vector<Case> cases = {
      {"flipped data byte", flipped_data, "checksum mismatch"},
      {"flipped header byte", flipped_header, "header checksum"},
      {"flipped digest byte", flipped_end, "checksum mismatch"},
      {"truncated in the middle", good.substr(0, good.size() / 2), "truncated"},
      {"truncated end record", good.substr(0, good.size() - 1), "truncated"},
      {"empty", "", "truncated"},
      {"trailing garbage", good + "junk", "after the end record"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Spit(File("bad.stream"), c.bytes);
    auto im = mgr_->Import(File("bad.stream"), "w");
    ASSERT_FALSE(im.ok());
    EXPECT_EQ(im.status().code(), StatusCode::kCorruption) << im.status();
    EXPECT_NE(im.status().message().find(c.hint), std::string_view::npos) << im.status();
    EXPECT_EQ(State(), before);
    ExpectClean();
  }
  // The good stream still imports.
  EXPECT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
}

TEST_F(SnapshotStreamTest, CorruptedIncrementalLeavesTheTargetAtItsBase) {
  MakeSource();
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  ASSERT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
  ASSERT_TRUE(Write("v", 0, Pattern(2 * kMiB, 7)).ok());
  Snap("v", "s2");
  ASSERT_TRUE(mgr_->Export("v@s2", File("s2.inc"), {.base = "v@s1"}).ok());
  std::string bad = Slurp(File("s2.inc"));
  bad[bad.size() - 300 * 1024] ^= 0x04;  // late in the stream: after some data was applied
  Spit(File("bad.inc"), bad);
  const auto base_content = Content("w@s1");
  const std::string before = State();
  auto im = mgr_->Import(File("bad.inc"), "w");
  ASSERT_FALSE(im.ok());
  EXPECT_EQ(im.status().code(), StatusCode::kCorruption) << im.status();
  EXPECT_EQ(State(), before);
  EXPECT_EQ(Content("w"), base_content);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, IncrementalOntoADifferentBaseIsRefused) {
  MakeSource();
  ASSERT_TRUE(Write("v", 0, Pattern(4096, 8)).ok());
  Snap("v", "s2");
  ASSERT_TRUE(mgr_->Export("v@s2", File("s2.inc"), {.base = "v@s1"}).ok());
  // w has a snapshot named s1, but with other content.
  CreateVolume("w", 8 * kMiB);
  ASSERT_TRUE(Write("w", 0, Pattern(4096, 9)).ok());
  Snap("w", "s1");
  ASSERT_TRUE(Write("w", 4096, Pattern(4096, 10)).ok());  // changes after the base survive
  WaitDigest("w@s1");  // so State() does not change when the import computes it
  const auto w_content = Content("w");
  const std::string before = State();
  auto im = mgr_->Import(File("s2.inc"), "w");
  ASSERT_FALSE(im.ok());
  EXPECT_EQ(im.status().code(), StatusCode::kFailedPrecondition) << im.status();
  EXPECT_NE(im.status().message().find("digest"), std::string_view::npos) << im.status();
  EXPECT_EQ(State(), before);
  EXPECT_EQ(Content("w"), w_content);
  // No base at all, or no volume.
  CreateVolume("x", 8 * kMiB);
  auto nobase = mgr_->Import(File("s2.inc"), "x");
  EXPECT_EQ(nobase.status().code(), StatusCode::kFailedPrecondition) << nobase.status();
  EXPECT_NE(nobase.status().message().find("import the base first"), std::string_view::npos);
  EXPECT_EQ(mgr_->Import(File("s2.inc"), "nothing").status().code(), StatusCode::kNotFound);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, AStreamWhoseDataDoesNotMatchItsDigestIsUndone) {
  // Checksums are right, but the digest in the end record describes other data (a buggy or
  // malicious exporter): the import reads back what it wrote and refuses it.
  StringSink sink;
  StreamWriter w(&sink);
  StreamMeta meta;
  meta.set_source_volume("x");
  meta.set_snapshot("s");
  StreamInfo info;
  info.size_bytes = 1 * kMiB;
  ASSERT_TRUE(w.WriteHeader(info, meta).ok());
  const auto data = Pattern(64 * kKiB, 1);
  ASSERT_TRUE(w.WriteData(0, data.data(), data.size()).ok());
  ASSERT_TRUE(w.WriteEnd(Hash128{1, 2}).ok());
  const std::string before = State();
  StringSource src(sink.out);
  auto im = mgr_->Import(&src, "w");
  ASSERT_FALSE(im.ok());
  EXPECT_EQ(im.status().code(), StatusCode::kCorruption);
  EXPECT_NE(im.status().message().find("hashes to"), std::string_view::npos) << im.status();
  EXPECT_EQ(State(), before);
  ExpectClean();
}

TEST_F(SnapshotStreamTest, ExportArgumentsAreChecked) {
  MakeSource();
  ASSERT_TRUE(engine_->ResizeVolume("v", 16 * kMiB).ok());
  Snap("v", "big");
  StringSink sink;
  EXPECT_EQ(mgr_->Export("v@s1", &sink, {.base = "v@big"}).status().code(),
            StatusCode::kInvalidArgument)
      << "a base larger than the snapshot";
  EXPECT_EQ(mgr_->Export("v@s1", &sink, {.base = "v@s1"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(mgr_->Export("v@s1", &sink, {.base = "v@nope"}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Export("v@nope", &sink).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Export("v", &sink).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mgr_->Export("v@nope", File("x.stream")).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(File("x.stream")));
  EXPECT_FALSE(std::filesystem::exists(File("x.stream.partial")));
  // An exported (open) snapshot cannot be deleted meanwhile; the engine says busy.
  auto view = mgr_->OpenSnapshot("v@s1");
  ASSERT_TRUE(view.ok());
  auto del = mgr_->Delete("v@s1");
  EXPECT_EQ(del.status().code(), StatusCode::kBusy);
  EXPECT_NE(del.status().message().find("exported"), std::string_view::npos);
}

TEST_F(SnapshotStreamTest, AnImportInterruptedByACrashIsUndoneAtStart) {
  MakeSource();
  ASSERT_TRUE(mgr_->Export("v@s1", File("s1.stream")).ok());
  const std::string before = State();
  // What a crash in the middle of a full import leaves: the marker, a volume with some data.
  ImportRecord marker;
  marker.set_volume("w");
  marker.set_snapshot("s1");
  marker.set_started_unix_ns(1);
  CreateVolume("w", 8 * kMiB);
  ASSERT_TRUE(Write("w", 0, Pattern(1 * kMiB, 1)).ok());
  marker.set_volume_id(engine_->GetVolume("w")->id);
  MetaBatch batch;
  batch.Put(ImportKey("w"), marker.SerializeAsString());
  ASSERT_TRUE(engine_->WriteRecords("default", std::move(batch)).ok());
  Restart();
  EXPECT_EQ(State(), before);
  EXPECT_TRUE(mgr_->Import(File("s1.stream"), "w").ok());
  ExpectClean();
}

}  // namespace
}  // namespace shale::snapshot
