// SnapshotManager: data semantics of snapshots and clones, names and errors, implicit snapshots,
// delete in any order, revert/flatten, space accounting, provenance digests, concurrency.
#include "snapshot/snapshot_manager.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "engine/io/reactor.h"
#include "snapshot/snapshot_test_util.h"
#include "snapshot/stream_format.h"

namespace shale::snapshot {
namespace {

using testing::Pattern;
using testing::RunVolumeIo;

class SnapshotManagerTest : public testing::SnapshotTest {};

TEST_F(SnapshotManagerTest, SnapshotsAndClonesReadTheRightData) {
  CreateVolume("v", 16 * kMiB);
  const auto a = Pattern(2 * kMiB, 1), b = Pattern(2 * kMiB, 2), c = Pattern(1 * kMiB, 3);
  ASSERT_TRUE(Write("v", 0, a).ok());
  const SnapshotInfo s1 = Snap("v", "s1");
  EXPECT_EQ(s1.full_name(), "v@s1");
  EXPECT_EQ(s1.size_bytes, 16 * kMiB);
  ASSERT_TRUE(Write("v", 0, b).ok());
  EXPECT_EQ(Read("v", 0, b.size()), b);

  // The snapshot, opened as the NBD layer does, reads A and refuses writes.
  auto view = mgr_->OpenSnapshot("v@s1");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE((*view)->volume().read_only());
  EXPECT_EQ(ReadFrom(**view, 0, a.size()), a);
  EXPECT_EQ(WriteTo(**view, 0, c).code(), StatusCode::kPermissionDenied);
  view->reset();

  auto clone = mgr_->Clone("v@s1", "c");
  ASSERT_TRUE(clone.ok()) << clone.status();
  EXPECT_EQ(clone->clone.source, "v@s1");
  EXPECT_FALSE(clone->clone.implicit_source);
  EXPECT_FALSE(clone->volume.read_only);
  auto ro = mgr_->Clone("v@s1", "r", {.read_only = true});
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_TRUE(ro->volume.read_only);
  EXPECT_EQ(Read("c", 0, a.size()), a);
  EXPECT_EQ(Read("r", 0, a.size()), a);
  {
    auto h = engine_->OpenVolume("r");
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(WriteTo(**h, 0, c).code(), StatusCode::kPermissionDenied);
  }
  // A writable clone diverges; the snapshot, the read-only clone and the volume do not move.
  ASSERT_TRUE(Write("c", 512 * kKiB, c).ok());
  auto expect = a;
  std::copy(c.begin(), c.end(), expect.begin() + 512 * kKiB);
  EXPECT_EQ(Read("c", 0, a.size()), expect);
  auto snap_now = Content("v@s1");
  EXPECT_TRUE(std::equal(a.begin(), a.end(), snap_now.begin()));
  EXPECT_EQ(Read("r", 0, a.size()), a);
  EXPECT_EQ(Read("v", 0, b.size()), b);

  auto info = mgr_->GetCloneInfo("c");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->source, "v@s1");
  EXPECT_TRUE((*info)->source_exists);
  auto not_clone = mgr_->GetCloneInfo("v");
  ASSERT_TRUE(not_clone.ok());
  EXPECT_FALSE(not_clone->has_value());
  EXPECT_EQ(mgr_->GetCloneInfo("nope").status().code(), StatusCode::kNotFound);
  auto got = mgr_->Get("v@s1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->clones, (std::vector<std::string>{"c", "r"}));
  ExpectClean();
}

TEST_F(SnapshotManagerTest, NamesLabelsAndErrors) {
  CreateVolume("v", 4 * kMiB);
  Labels labels = {{"source", "https://example.com/data.csv"},
                   {"notebook.example.com/id", "nb-17"}};
  auto s = mgr_->Create("v", "s1", {.labels = labels});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->labels, labels);
  auto got = mgr_->Get("v@s1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->labels, labels);
  EXPECT_FALSE(got->implicit);
  EXPECT_TRUE(got->source_volume_live);
  EXPECT_GT(got->created_unix_ns, 0u);

  EXPECT_EQ(mgr_->Create("v", "s1").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(mgr_->Create("missing", "s1").status().code(), StatusCode::kNotFound);
  for (const std::string& bad :
       std::vector<std::string>{"", "-s", "a@b", "a/b", std::string(129, 'x')}) {
    EXPECT_EQ(mgr_->Create("v", bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(mgr_->Create("v", "s2", {.labels = {{"bad key", "x"}}}).status().code(),
            StatusCode::kInvalidArgument);
  for (std::string bad : {"v@", "@s1", "vs1", "v@s1@x"}) {
    auto r = mgr_->Get(bad);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(mgr_->Delete(bad).status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(mgr_->OpenSnapshot(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(mgr_->Get("v@").status().message().find("empty snapshot part"), std::string_view::npos);
  EXPECT_EQ(mgr_->Get("v@s9").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Get("w@s1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Delete("v@s9").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Clone("v@s9", "c").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Clone("missing", "c").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(mgr_->Clone("v@s1", "v").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(mgr_->Clone("v@s1", "bad name").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mgr_->DeleteVolume("missing").code(), StatusCode::kNotFound);
  // Nothing above left anything behind.
  auto all = mgr_->List({.include_implicit = true});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].full_name(), "v@s1");
  EXPECT_EQ(engine_->ListVolumes().size(), 1u);
  // Listing by volume, sorted by creation.
  CreateVolume("w", 1 * kMiB);
  Snap("v", "b-second");
  Snap("w", "a");
  auto v_only = mgr_->List({.volume = "v"});
  ASSERT_TRUE(v_only.ok());
  ASSERT_EQ(v_only->size(), 2u);
  EXPECT_EQ((*v_only)[0].name, "s1");
  EXPECT_EQ((*v_only)[1].name, "b-second");
  EXPECT_EQ(mgr_->List({})->size(), 3u);
  ExpectClean();
}

TEST_F(SnapshotManagerTest, ImplicitSnapshotsAreHiddenAndGoWithTheirLastClone) {
  CreateVolume("v", 4 * kMiB);
  const auto a = Pattern(1 * kMiB, 1);
  ASSERT_TRUE(Write("v", 0, a).ok());
  auto c1 = mgr_->Clone("v", "c1");
  ASSERT_TRUE(c1.ok()) << c1.status();
  EXPECT_TRUE(c1->clone.implicit_source);
  EXPECT_EQ(c1->clone.source_volume, "v");
  ASSERT_TRUE(mgr_->Clone("v", "c2", {.read_only = true}).ok());
  ASSERT_TRUE(Write("v", 0, Pattern(1 * kMiB, 2)).ok());
  EXPECT_EQ(Read("c1", 0, a.size()), a);
  EXPECT_EQ(Read("c2", 0, a.size()), a);

  EXPECT_TRUE(mgr_->List({})->empty()) << "implicit snapshots are hidden by default";
  auto all = mgr_->List({.include_implicit = true});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  std::set<std::string> for_clones;
  for (const auto& s : *all) {
    EXPECT_TRUE(s.implicit);
    for_clones.insert(s.implicit_for);
    EXPECT_EQ(s.clones, (std::vector<std::string>{s.implicit_for}));
  }
  EXPECT_EQ(for_clones, (std::set<std::string>{"c1", "c2"}));
  // The implicit snapshot can be shown by name.
  EXPECT_TRUE(mgr_->Get(c1->clone.source).ok());

  // Deleting the clone deletes its implicit snapshot; flattening the other does too.
  ASSERT_TRUE(mgr_->DeleteVolume("c1").ok());
  all = mgr_->List({.include_implicit = true});
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].implicit_for, "c2");
  uint64_t last_done = 0, last_total = 0;
  ASSERT_TRUE(mgr_->Flatten("c2",
                            [&](uint64_t done, uint64_t total) {
                              last_done = done;
                              last_total = total;
                            })
                  .ok());
  EXPECT_GT(last_total, 0u);
  EXPECT_EQ(last_done, last_total);
  EXPECT_TRUE(mgr_->List({.include_implicit = true})->empty());
  EXPECT_EQ(Read("c2", 0, a.size()), a);
  auto info = mgr_->GetCloneInfo("c2");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_TRUE((*info)->detached);
  EXPECT_FALSE((*info)->source_exists);
  ExpectClean();
  // Operations that bypass this layer (the engine directly) are caught up at the next start.
  ASSERT_TRUE(mgr_->Clone("v", "c3").ok());
  ASSERT_TRUE(mgr_->Clone("v", "c4").ok());
  ASSERT_TRUE(engine_->FlattenVolume("c3").ok());
  ASSERT_TRUE(engine_->DeleteVolume("c4").ok());
  EXPECT_EQ(mgr_->List({.include_implicit = true})->size(), 2u);
  Restart();
  EXPECT_TRUE(mgr_->List({.include_implicit = true})->empty());
  info = mgr_->GetCloneInfo("c3");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_TRUE((*info)->detached);
  EXPECT_EQ(mgr_->ListClones()->size(), 2u) << "c2 and c3 (flattened clones keep provenance)";
  ASSERT_TRUE(mgr_->DeleteVolume("c2").ok());
  ASSERT_TRUE(mgr_->DeleteVolume("c3").ok());
  ASSERT_TRUE(mgr_->DeleteVolume("v").ok());
  EXPECT_EQ(FreeBytes(), initial_free_);
  EXPECT_TRUE(mgr_->ListClones()->empty());
  ExpectClean();
}

// Volumes, clones (of snapshots, of live volumes, of clones) and snapshots deleted in many
// orders: every survivor keeps its content, the pool check stays clean, implicit snapshots live
// exactly as long as their clone, and the end returns exactly the initial free space.
TEST_F(SnapshotManagerTest, DeletingInAnyOrderReturnsExactlyTheSpace) {
  const std::vector<std::string> items = {"V", "V@s1", "V@s2", "C1", "C2", "R", "C3"};
  std::vector<std::vector<std::string>> orders = {items, {items.rbegin(), items.rend()}};
  for (uint32_t seed = 1; seed <= 12; ++seed) {
    auto order = items;
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    orders.push_back(order);
  }
  for (const auto& order : orders) {
    std::string trace;
    for (const auto& o : order) trace += o + " ";
    SCOPED_TRACE("order: " + trace);
    CreateVolume("V", 2 * kMiB);
    ASSERT_TRUE(Write("V", 0, Pattern(1 * kMiB, 1)).ok());
    Snap("V", "s1");
    ASSERT_TRUE(Write("V", 512 * kKiB, Pattern(1 * kMiB, 2)).ok());
    Snap("V", "s2");
    ASSERT_TRUE(Write("V", 1536 * kKiB, Pattern(512 * kKiB, 3)).ok());
    ASSERT_TRUE(mgr_->Clone("V@s1", "C1").ok());
    ASSERT_TRUE(Write("C1", 0, Pattern(256 * kKiB, 4)).ok());
    ASSERT_TRUE(mgr_->Clone("V", "C2").ok());
    ASSERT_TRUE(Write("C2", 1 * kMiB, Pattern(64 * kKiB, 5)).ok());
    ASSERT_TRUE(mgr_->Clone("V@s2", "R", {.read_only = true}).ok());
    ASSERT_TRUE(mgr_->Clone("C1", "C3").ok());
    ASSERT_TRUE(Write("C3", 1900 * kKiB, Pattern(148 * kKiB, 6)).ok());
    ASSERT_TRUE(Discard("C3", 0, 64 * kKiB).ok());
    std::map<std::string, std::vector<uint8_t>> expect;
    for (const auto& o : items) expect[o] = Content(o);
    std::set<std::string> clones_alive = {"C1", "C2", "R", "C3"};
    const std::map<std::string, std::string> implicit_of = {{"C2", "V"}, {"C3", "C1"}};

    for (const auto& victim : order) {
      SCOPED_TRACE("deleting " + victim);
      if (victim.find('@') != std::string::npos) {
        auto r = mgr_->Delete(victim);
        ASSERT_TRUE(r.ok()) << r.status();
      } else {
        ASSERT_TRUE(mgr_->DeleteVolume(victim).ok());
        clones_alive.erase(victim);
      }
      expect.erase(victim);
      ExpectClean();
      for (const auto& [name, content] : expect) EXPECT_EQ(Content(name), content) << name;
      // Implicit snapshots exist exactly for the clones still alive that made them.
      std::set<std::string> implicit_for;
      auto listed = mgr_->List({.include_implicit = true});
      ASSERT_TRUE(listed.ok()) << listed.status();
      for (const auto& s : *listed) {
        if (s.implicit) implicit_for.insert(s.implicit_for);
      }
      std::set<std::string> want;
      for (const auto& [clone, src] : implicit_of) {
        if (clones_alive.count(clone)) want.insert(clone);
      }
      EXPECT_EQ(implicit_for, want);
    }
    EXPECT_EQ(FreeBytes(), initial_free_);
    EXPECT_TRUE(mgr_->List({.include_implicit = true})->empty());
    EXPECT_TRUE(mgr_->ListClones()->empty());
    EXPECT_TRUE(engine_->ListImages("default").empty());
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_F(SnapshotManagerTest, ChainLimitIsSurfaced) {
  CreateVolume("v", 1 * kMiB);
  for (size_t i = 0; i + 1 < Volume::kMaxChainDepth; ++i) {
    ASSERT_TRUE(mgr_->Create("v", "s" + std::to_string(i)).ok()) << i;
  }
  auto r = mgr_->Create("v", "one-too-many");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("limit of 127 snapshots"), std::string_view::npos)
      << r.status();
  EXPECT_NE(r.status().message().find("v@one-too-many"), std::string_view::npos) << r.status();
  EXPECT_EQ(mgr_->Get("v@one-too-many").status().code(), StatusCode::kNotFound);
  // Clone of the live volume needs one more snapshot: refused the same way, nothing left.
  EXPECT_EQ(mgr_->Clone("v", "c").status().code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(engine_->GetVolume("c").ok());
  // Deleting an old one makes room (it merges away).
  ASSERT_TRUE(mgr_->Delete("v@s0").ok());
  EXPECT_TRUE(mgr_->Create("v", "one-too-many").ok());
  ExpectClean();
}

TEST_F(SnapshotManagerTest, RevertRollsBackToTheVolumesOwnSnapshots) {
  CreateVolume("v", 2 * kMiB);
  const auto a = Pattern(2 * kMiB, 1), b = Pattern(2 * kMiB, 2);
  ASSERT_TRUE(Write("v", 0, a).ok());
  Snap("v", "s1");
  ASSERT_TRUE(engine_->ResizeVolume("v", 3 * kMiB).ok());
  ASSERT_TRUE(Write("v", 0, b).ok());
  Snap("v", "s2");
  ASSERT_TRUE(Write("v", 0, Pattern(4096, 3)).ok());
  {
    auto h = engine_->OpenVolume("v");
    EXPECT_EQ(mgr_->Revert("v", "s1").code(), StatusCode::kBusy) << "open volumes are not reverted";
  }
  ASSERT_TRUE(mgr_->Revert("v", "s1").ok());
  EXPECT_EQ(Content("v"), a);
  EXPECT_EQ(engine_->GetVolume("v")->size_bytes, 2 * kMiB);
  EXPECT_TRUE(mgr_->Get("v@s2").ok()) << "later snapshots stay";
  auto r = mgr_->Revert("v", "s2");
  EXPECT_EQ(r.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.message().find("no longer in the history"), std::string_view::npos) << r;
  EXPECT_EQ(mgr_->Revert("v", "w@s1").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(mgr_->Revert("v", "nope").code(), StatusCode::kNotFound);
  EXPECT_TRUE(mgr_->Revert("v", "v@s1").ok());
  ExpectClean();
}

TEST_F(SnapshotManagerTest, ADeletedVolumeKeepsItsSnapshotsAndItsNamespace) {
  CreateVolume("v", 1 * kMiB);
  const auto a = Pattern(1 * kMiB, 1);
  ASSERT_TRUE(Write("v", 0, a).ok());
  Snap("v", "s1", {{"k", "v"}});
  {
    auto h = engine_->OpenVolume("v");
    EXPECT_EQ(mgr_->DeleteVolume("v").code(), StatusCode::kBusy);
  }
  ASSERT_TRUE(mgr_->DeleteVolume("v").ok());
  auto s = mgr_->Get("v@s1");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE(s->source_volume_live);
  EXPECT_EQ(Content("v@s1"), a);
  ASSERT_TRUE(mgr_->Clone("v@s1", "c").ok());
  EXPECT_EQ(Content("c"), a);
  // A new volume of the same name shares the namespace: names stay taken, history does not.
  CreateVolume("v", 1 * kMiB);
  auto dup = mgr_->Create("v", "s1");
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(dup.status().message().find("earlier volume"), std::string_view::npos) << dup.status();
  EXPECT_TRUE(mgr_->Create("v", "s2").ok());
  EXPECT_FALSE(mgr_->Get("v@s1")->source_volume_live);
  EXPECT_TRUE(mgr_->Get("v@s2")->source_volume_live);
  auto rv = mgr_->Revert("v", "s1");
  EXPECT_EQ(rv.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(rv.message().find("earlier volume"), std::string_view::npos) << rv;
  EXPECT_EQ(mgr_->List({.volume = "v"})->size(), 2u);
  ExpectClean();
}

TEST_F(SnapshotManagerTest, SpaceAccounting) {
  CreateVolume("v", 8 * kMiB);
  ASSERT_TRUE(Write("v", 0, Pattern(4 * kMiB, 1)).ok());
  Snap("v", "s1");
  ASSERT_TRUE(Write("v", 0, Pattern(1 * kMiB, 2)).ok());
  ASSERT_TRUE(Flush("v").ok());  // usage of snapshots counts committed overwrites
  auto space = mgr_->GetVolumeSpace("v");
  ASSERT_TRUE(space.ok()) << space.status();
  EXPECT_EQ(space->size_bytes, 8 * kMiB);
  EXPECT_EQ(space->owned_bytes, 1 * kMiB);
  EXPECT_EQ(space->written_bytes, 1 * kMiB);
  EXPECT_EQ(space->shared_bytes, 3 * kMiB);
  EXPECT_EQ(space->snapshot_count, 1u);
  EXPECT_EQ(space->snapshot_data_bytes, 4 * kMiB);
  EXPECT_EQ(space->snapshot_exclusive_bytes, 1 * kMiB)
      << "the overwritten MiB is the snapshot's alone";
  auto s = mgr_->Get("v@s1");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->data_bytes, 4 * kMiB);
  EXPECT_EQ(s->exclusive_bytes, 1 * kMiB);
  EXPECT_EQ(s->shared_bytes, 3 * kMiB);
  // Deleting the snapshot frees exactly what it held alone.
  const uint64_t before = FreeBytes();
  ASSERT_TRUE(mgr_->Delete("v@s1").ok());
  EXPECT_EQ(FreeBytes() - before, 1 * kMiB);
  EXPECT_EQ(mgr_->GetVolumeSpace("v")->owned_bytes, 4 * kMiB);
  EXPECT_EQ(mgr_->GetVolumeSpace("nope").status().code(), StatusCode::kNotFound);
}

TEST_F(SnapshotManagerTest, DeletingASnapshotWithClonesDefersItsSpace) {
  CreateVolume("v", 4 * kMiB);
  ASSERT_TRUE(Write("v", 0, Pattern(2 * kMiB, 1)).ok());
  Snap("v", "s1");
  ASSERT_TRUE(mgr_->Clone("v@s1", "c1", {.read_only = true}).ok());
  ASSERT_TRUE(mgr_->Clone("v@s1", "c2").ok());
  ASSERT_TRUE(mgr_->DeleteVolume("v").ok());
  const uint64_t before = FreeBytes();
  auto r = mgr_->Delete("v@s1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->still_read_by, (std::vector<std::string>{"c1", "c2"}));
  EXPECT_EQ(FreeBytes(), before) << "clones still read it: its space is deferred";
  EXPECT_EQ(Read("c1", 0, 2 * kMiB), Pattern(2 * kMiB, 1));
  auto info = mgr_->GetCloneInfo("c1");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_FALSE((*info)->source_exists);
  EXPECT_EQ((*info)->source, "v@s1");
  ASSERT_TRUE(mgr_->DeleteVolume("c1").ok());
  ASSERT_TRUE(mgr_->DeleteVolume("c2").ok());
  EXPECT_EQ(FreeBytes(), initial_free_);
  ExpectClean();
}

// ---------------------------------------------------------------------------------------------
// Provenance

// The same 4 MiB content with holes: [1 MiB, 1.5 MiB) and [3 MiB, 4 MiB) are zeros.
std::vector<uint8_t> Dataset() {
  auto f = Pattern(4 * kMiB, 9);
  std::fill(f.begin() + 1 * kMiB, f.begin() + 1536 * kKiB, 0);
  std::fill(f.begin() + 3 * kMiB, f.end(), 0);
  return f;
}

TEST_F(SnapshotManagerTest, DigestDependsOnlyOnTheBytes) {
  const auto f = Dataset();
  const std::vector<std::pair<uint64_t, uint64_t>> data = {{0, 1 * kMiB},
                                                           {1536 * kKiB, 1536 * kKiB}};
  auto slice = [&](uint64_t off, uint64_t len) {
    return std::vector<uint8_t>(f.begin() + off, f.begin() + off + len);
  };
  // v1: written once, zeros included.
  CreateVolume("v1", 4 * kMiB);
  ASSERT_TRUE(Write("v1", 0, f).ok());
  // v2: junk first, holes discarded, data written backwards in 64 KiB pieces after a snapshot.
  CreateVolume("v2", 4 * kMiB);
  ASSERT_TRUE(Write("v2", 0, Pattern(4 * kMiB, 77)).ok());
  ASSERT_TRUE(Discard("v2", 1 * kMiB, 512 * kKiB).ok());
  ASSERT_TRUE(Discard("v2", 3 * kMiB, 1 * kMiB).ok());
  Snap("v2", "mid");
  for (auto it = data.rbegin(); it != data.rend(); ++it) {
    for (uint64_t off = it->first + it->second; off > it->first;) {
      off -= 64 * kKiB;
      ASSERT_TRUE(Write("v2", off, slice(off, 64 * kKiB)).ok());
    }
  }
  // v3: a clone of v2's junk, fixed up, with an explicit zero-write over a hole.
  ASSERT_TRUE(mgr_->Clone("v2@mid", "v3").ok());
  for (const auto& [off, len] : data) ASSERT_TRUE(Write("v3", off, slice(off, len)).ok());
  ASSERT_TRUE(Write("v3", 1 * kMiB, Pattern(512 * kKiB, 5)).ok());
  {
    auto h = engine_->OpenVolume("v3");
    ASSERT_TRUE(
        RunVolumeIo((*h)->volume(), VolumeOp::kWriteZeroes, 1 * kMiB, 512 * kKiB, nullptr).ok());
  }
  // v4: one byte differs.
  CreateVolume("v4", 4 * kMiB);
  auto g = f;
  g[2 * kMiB + 123] ^= 0x40;
  ASSERT_TRUE(Write("v4", 0, g).ok());
  for (const char* v : {"v1", "v2", "v3", "v4"}) Snap(v, "final");
  const std::string want = DigestHexOf(f);
  EXPECT_EQ(WaitDigest("v1@final"), want);
  EXPECT_EQ(WaitDigest("v2@final"), want);
  EXPECT_EQ(WaitDigest("v3@final"), want);
  EXPECT_EQ(WaitDigest("v4@final"), DigestHexOf(g));
  EXPECT_NE(DigestHexOf(g), want);
  EXPECT_EQ(WaitDigest("v2@mid"), DigestHexOf(Content("v2@mid")));

  // Stable across a restart, and Verify agrees with the record.
  Restart();
  auto s = mgr_->Get("v3@final");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->digest_state, DigestState::kReady);
  EXPECT_EQ(s->digest, want);
  auto v = mgr_->Verify("v3@final");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, want);
}

TEST_F(SnapshotManagerTest, PendingDigestsSurviveARestart) {
  Restart(/*start_manager=*/false);  // no worker: the digest stays pending
  CreateVolume("v", 4 * kMiB);
  const auto f = Dataset();
  ASSERT_TRUE(Write("v", 0, f).ok());
  auto s = mgr_->Create("v", "s");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->digest_state, DigestState::kPending);
  EXPECT_EQ(s->digest_total_bytes, 4 * kMiB);
  auto ro = mgr_->Clone("v@s", "r", {.read_only = true});
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ(ro->clone.source_digest, "") << "not known yet";
  Restart();
  EXPECT_EQ(WaitDigest("v@s"), DigestHexOf(f));
  // The read-only clone reports the digest of the snapshot it came from.
  auto info = mgr_->GetCloneInfo("r");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->source_digest, DigestHexOf(f));
  EXPECT_EQ(DigestHexOf(Content("r")), (*info)->source_digest);
  // ... also after its source is deleted (the digest is recorded with the clone).
  ASSERT_TRUE(mgr_->Delete("v@s").ok());
  info = mgr_->GetCloneInfo("r");
  ASSERT_TRUE(info.ok() && info->has_value());
  EXPECT_EQ((*info)->source_digest, DigestHexOf(f));
  // A clone of a snapshot whose digest is ready records it at once; wait_digest waits.
  auto s2 = mgr_->Create("v", "s2", {.wait_digest = true});
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(s2->digest_state, DigestState::kReady);
  auto r2 = mgr_->Clone("v@s2", "r2", {.read_only = true});
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->clone.source_digest, s2->digest);
}

// Finds `needle` in the allocated parts of a (sparse) file.
int64_t FindInFile(const std::string& path, const std::vector<uint8_t>& needle) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return -1;
  const off_t end = ::lseek(fd, 0, SEEK_END);
  std::vector<uint8_t> buf(1 << 20);
  int64_t found = -1;
  for (off_t pos = ::lseek(fd, 0, SEEK_DATA); pos >= 0 && pos < end && found < 0;) {
    const off_t hole = ::lseek(fd, pos, SEEK_HOLE);
    for (off_t at = pos; at < hole && found < 0;
         at += static_cast<off_t>(buf.size() - needle.size())) {
      const ssize_t n = ::pread(fd, buf.data(), buf.size(), at);
      if (n <= 0) break;
      auto it = std::search(buf.begin(), buf.begin() + n, needle.begin(), needle.end());
      if (it != buf.begin() + n) found = at + (it - buf.begin());
      if (at + n >= hole) break;
    }
    pos = ::lseek(fd, hole, SEEK_DATA);
  }
  ::close(fd);
  return found;
}

TEST_F(SnapshotManagerTest, VerifyDetectsAFlippedByteOnDisk) {
  CreateVolume("v", 4 * kMiB);
  const auto data = Pattern(64 * kKiB, 4242);
  ASSERT_TRUE(Write("v", 1 * kMiB, data).ok());
  Snap("v", "s");
  const std::string recorded = WaitDigest("v@s");
  ASSERT_FALSE(recorded.empty());
  auto ok = mgr_->Verify("v@s");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, recorded);

  const int64_t at =
      FindInFile(PoolFile(), std::vector<uint8_t>(data.begin(), data.begin() + 4096));
  ASSERT_GE(at, 0) << "the snapshot's data block is in the pool file";
  int fd = ::open(PoolFile().c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint8_t byte;
  ASSERT_EQ(::pread(fd, &byte, 1, at + 100), 1);
  byte ^= 0x01;
  ASSERT_EQ(::pwrite(fd, &byte, 1, at + 100), 1);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);

  auto bad = mgr_->Verify("v@s");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorruption);
  EXPECT_NE(bad.status().message().find(recorded), std::string_view::npos) << bad.status();
  auto flipped = data;
  flipped[100] ^= 0x01;
  std::vector<uint8_t> expect(4 * kMiB, 0);
  std::copy(flipped.begin(), flipped.end(), expect.begin() + 1 * kMiB);
  EXPECT_NE(bad.status().message().find(DigestHexOf(expect)), std::string_view::npos)
      << bad.status();
  // The record keeps the digest of what was snapshotted; an export refuses the damaged data.
  EXPECT_EQ(mgr_->Get("v@s")->digest, recorded);
  StringSink sink;
  auto ex = mgr_->Export("v@s", &sink);
  EXPECT_EQ(ex.status().code(), StatusCode::kCorruption) << ex.status();
}

// ---------------------------------------------------------------------------------------------
// Concurrency

// Block i of the writer's sequence: its index in the first 8 bytes, then a pattern of it.
std::vector<uint8_t> SeqBlock(uint64_t i) {
  auto b = Pattern(4096, static_cast<uint32_t>(i + 1));
  std::memcpy(b.data(), &i, sizeof(i));
  return b;
}

// The writer's sequence writes block i to block i % blocks, one write at a time. The content
// of a point-in-time copy is what the first k writes left, for one k: returns that k, or a
// description of why the content is no such prefix (a torn block, a block from the wrong write).
Result<uint64_t> PrefixOfWrites(const std::vector<uint8_t>& content, uint64_t blocks) {
  std::vector<int64_t> seen(blocks, -1);  // index of the write each block holds; -1: zeros
  int64_t newest = -1;
  for (uint64_t j = 0; j < blocks; ++j) {
    const uint8_t* p = content.data() + j * 4096;
    if (std::all_of(p, p + 4096, [](uint8_t x) { return x == 0; })) continue;
    uint64_t i;
    std::memcpy(&i, p, sizeof(i));
    if (i % blocks != j) {
      return Status::Corruption("block " + std::to_string(j) + " holds write " + std::to_string(i) +
                                ", which went to block " + std::to_string(i % blocks));
    }
    if (!std::equal(p, p + 4096, SeqBlock(i).begin())) {
      return Status::Corruption("block " + std::to_string(j) + " (write " + std::to_string(i) +
                                ") is torn");
    }
    seen[j] = static_cast<int64_t>(i);
    newest = std::max(newest, seen[j]);
  }
  // Only the newest write found can end the prefix; every other block must agree with it.
  const uint64_t k = static_cast<uint64_t>(newest + 1);
  for (uint64_t j = 0; j < blocks; ++j) {
    const int64_t want = k > j ? static_cast<int64_t>(j + blocks * ((k - 1 - j) / blocks)) : -1;
    if (seen[j] != want) {
      return Status::Corruption("the newest write found is " + std::to_string(newest) +
                                ", but block " + std::to_string(j) + " holds write " +
                                std::to_string(seen[j]) + " instead of " + std::to_string(want) +
                                " (-1: zeros)");
    }
  }
  return k;
}

// Point-in-time, nothing torn: the content is the prefix of k writes with lo <= k <= hi, where
// writes [0, lo) were acknowledged before the copy was requested (surely in) and writes from hi
// on were submitted after it returned (surely not in).
void ExpectPrefixOfWrites(const std::vector<uint8_t>& content, uint64_t blocks, uint64_t lo,
                          uint64_t hi) {
  auto k = PrefixOfWrites(content, blocks);
  if (!k.ok()) {
    ADD_FAILURE() << "content matches no prefix of the writes: " << k.status().message()
                  << "; expected the prefix of between " << lo << " and " << hi << " writes";
    return;
  }
  EXPECT_TRUE(lo <= *k && *k <= hi) << "content matches the prefix of " << *k
                                    << " writes; expected between " << lo << " and " << hi;
}

// The checker itself: it finds the prefix, and rejects a lost write and a torn block.
TEST(PrefixOfWritesTest, FindsThePrefixAndRejectsWhatIsNone) {
  constexpr uint64_t kBlocks = 4;
  auto content_of = [&](uint64_t k) {
    std::vector<uint8_t> c(kBlocks * 4096, 0);
    for (uint64_t i = 0; i < k; ++i) {
      const auto b = SeqBlock(i);
      std::copy(b.begin(), b.end(), c.begin() + static_cast<long>((i % kBlocks) * 4096));
    }
    return c;
  };
  EXPECT_EQ(PrefixOfWrites(content_of(0), kBlocks).value(), 0u);
  EXPECT_EQ(PrefixOfWrites(content_of(3), kBlocks).value(), 3u);
  EXPECT_EQ(PrefixOfWrites(content_of(10), kBlocks).value(), 10u);
  auto lost = content_of(10);  // block 3 still holds write 3: write 7 is missing
  const auto old = SeqBlock(3);
  std::copy(old.begin(), old.end(), lost.begin() + 3 * 4096);
  EXPECT_EQ(PrefixOfWrites(lost, kBlocks).status().code(), StatusCode::kCorruption);
  auto torn = content_of(10);
  torn[2 * 4096 + 100] ^= 1;
  EXPECT_EQ(PrefixOfWrites(torn, kBlocks).status().code(), StatusCode::kCorruption);
}

TEST_F(SnapshotManagerTest, SnapshotsClonesAndDeletesWhileAnotherThreadWrites) {
  constexpr uint64_t kBlocks = 64;
  CreateVolume("v", kBlocks * 4096);
  // Write i is counted in `submitted` before it is issued and in `acked` once it completed.
  // The engine acknowledges a write before this thread can count it, so a write can be in a
  // snapshot taken before `acked` shows it: a snapshot holds at least `acked` writes (read before
  // the call) and at most `submitted` (read after it returned).
  std::atomic<uint64_t> submitted{0}, acked{0};
  std::atomic<bool> stop{false};
  Status writer_status;
  std::thread writer([&] {
    auto h = engine_->OpenVolume("v");
    if (!h.ok()) {
      writer_status = h.status();
      return;
    }
    for (uint64_t i = 0; !stop.load(); ++i) {
      submitted.store(i + 1);
      Status st = WriteTo(**h, (i % kBlocks) * 4096, SeqBlock(i));
      if (!st.ok()) {
        writer_status = st;
        return;
      }
      acked.store(i + 1);
    }
  });
  struct Taken {
    std::string name;
    uint64_t lo, hi;
  };
  std::vector<Taken> taken;
  for (int k = 0; k < 12; ++k) {
    ASSERT_TRUE(Eventually([&] { return acked.load() > static_cast<uint64_t>(k) * 50; }));
    const uint64_t lo = acked.load();
    if (k % 3 == 2) {
      const std::string clone = "c" + std::to_string(k);
      ASSERT_TRUE(mgr_->Clone("v", clone).ok());
      taken.push_back({clone, lo, submitted.load()});
    } else {
      const std::string snap = "v@s" + std::to_string(k);
      ASSERT_TRUE(mgr_->Create("v", "s" + std::to_string(k)).ok());
      taken.push_back({snap, lo, submitted.load()});
    }
    if (k % 4 == 3) {  // delete the oldest snapshot while writes go on
      auto oldest = std::find_if(taken.begin(), taken.end(), [](const Taken& t) {
        return t.name.find('@') != std::string::npos;
      });
      ASSERT_NE(oldest, taken.end());
      ASSERT_TRUE(mgr_->Delete(oldest->name).ok()) << oldest->name;
      taken.erase(oldest);
    }
    if (k == 8) {
      ASSERT_TRUE(mgr_->DeleteVolume("c5").ok());
      std::erase_if(taken, [](const Taken& t) { return t.name == "c5"; });
    }
  }
  stop = true;
  writer.join();
  ASSERT_TRUE(writer_status.ok()) << writer_status;
  for (const Taken& t : taken) {
    SCOPED_TRACE(t.name);
    const auto content = Content(t.name);
    ExpectPrefixOfWrites(content, kBlocks, t.lo, t.hi);
    if (t.name.find('@') != std::string::npos) {
      EXPECT_EQ(WaitDigest(t.name), DigestHexOf(content));
    }
  }
  ExpectClean();
}

class DigestWorkerTest : public testing::SnapshotTest {
 protected:
  SnapshotManager::Options ManagerOptions() override {
    SnapshotManager::Options o;
    o.digest_hook = [this](uint64_t, const std::atomic<bool>& cancelled) {
      if (!park_.exchange(false)) return;
      parked_ = true;
      // Hold the job until someone cancels it (bounded, so a broken cancel fails the test).
      saw_cancel_ = Eventually([&] { return cancelled.load(); }, std::chrono::seconds(30));
    };
    return o;
  }
  std::atomic<bool> park_{false}, parked_{false}, saw_cancel_{false};
};

TEST_F(DigestWorkerTest, DeletingASnapshotCancelsItsDigestJob) {
  CreateVolume("v", 8 * kMiB);
  ASSERT_TRUE(Write("v", 0, Pattern(8 * kMiB, 1)).ok());
  park_ = true;
  Snap("v", "s1");
  ASSERT_TRUE(Eventually([&] { return parked_.load(); }));
  auto pending = mgr_->Get("v@s1");
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(pending->digest_state, DigestState::kPending);
  EXPECT_GT(pending->digest_done_bytes, 0u) << "progress is visible";
  EXPECT_LT(pending->digest_done_bytes, pending->digest_total_bytes);
  auto del = mgr_->Delete("v@s1");
  ASSERT_TRUE(del.ok()) << del.status();
  EXPECT_TRUE(saw_cancel_.load());
  EXPECT_EQ(mgr_->Get("v@s1").status().code(), StatusCode::kNotFound);
  // The worker goes on with the next job.
  Snap("v", "s2");
  EXPECT_EQ(WaitDigest("v@s2"), DigestHexOf(Pattern(8 * kMiB, 1)));
  ExpectClean();
}

TEST_F(DigestWorkerTest, StopCancelsAndTheJobResumesAfterARestart) {
  CreateVolume("v", 8 * kMiB);
  ASSERT_TRUE(Write("v", 0, Pattern(8 * kMiB, 2)).ok());
  park_ = true;
  Snap("v", "s1");
  ASSERT_TRUE(Eventually([&] { return parked_.load(); }));
  mgr_->Stop();
  EXPECT_TRUE(saw_cancel_.load());
  EXPECT_EQ(mgr_->Get("v@s1")->digest_state, DigestState::kPending);
  Restart();
  EXPECT_EQ(WaitDigest("v@s1"), DigestHexOf(Pattern(8 * kMiB, 2)));
}

// Flatten is paced by the manager's background_admission hook (the daemon's QoS there).
class PacedFlattenTest : public testing::SnapshotTest {
 protected:
  // Admits every batch from a deferred task; holds the handle like QosVolume does.
  class Counting final : public BackgroundAdmission {
   public:
    Counting(PacedFlattenTest* test, std::shared_ptr<VolumeHandle> handle)
        : test_(test), handle_(std::move(handle)) {}
    void Admit(uint64_t bytes, std::function<void(Done)> go) override {
      test_->admits_.fetch_add(1);
      test_->bytes_.fetch_add(bytes);
      Reactor::Current()->Defer(
          [this, go = std::move(go)] { go([this] { test_->dones_.fetch_add(1); }); });
    }

   private:
    PacedFlattenTest* test_;
    std::shared_ptr<VolumeHandle> handle_;
  };
  SnapshotManager::Options ManagerOptions() override {
    SnapshotManager::Options o;
    o.background_admission =
        [this](std::shared_ptr<VolumeHandle> h) -> std::shared_ptr<BackgroundAdmission> {
      volumes_.push_back(h->volume().name());
      return std::make_shared<Counting>(this, std::move(h));
    };
    return o;
  }
  std::atomic<uint64_t> admits_{0}, bytes_{0}, dones_{0};
  std::vector<std::string> volumes_;  // the thread calling Flatten
};

TEST_F(PacedFlattenTest, FlattenAsksTheHooksAdmissionForEveryBatch) {
  CreateVolume("v", 4 * kMiB);
  const auto a = Pattern(4 * kMiB, 7);
  ASSERT_TRUE(Write("v", 0, a).ok());
  ASSERT_TRUE(mgr_->Clone("v", "c").ok());
  ASSERT_TRUE(mgr_->Flatten("c").ok());
  EXPECT_EQ(volumes_, (std::vector<std::string>{"c"}));
  EXPECT_EQ(admits_.load(), 2u) << "64 clusters of 64 KiB, 32 per batch";
  EXPECT_EQ(bytes_.load(), 4 * kMiB);
  EXPECT_EQ(dones_.load(), 2u);
  EXPECT_EQ(Read("c", 0, a.size()), a);
  EXPECT_TRUE(mgr_->GetCloneInfo("c")->value().detached);
  // The admission (and the handle it held) is gone with the flatten: the volume can be deleted.
  ASSERT_TRUE(mgr_->DeleteVolume("c").ok());
  ExpectClean();
}

TEST_F(SnapshotManagerTest, ControlCallsFromManyThreads) {
  constexpr int kThreads = 4;
  for (int t = 0; t < kThreads; ++t) {
    CreateVolume("v" + std::to_string(t), 1 * kMiB);
    ASSERT_TRUE(Write("v" + std::to_string(t), 0, Pattern(256 * kKiB, t)).ok());
  }
  std::atomic<bool> done{false};
  std::vector<std::string> errors(kThreads + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string v = "v" + std::to_string(t);
      auto check = [&](const Status& st, const char* what) {
        if (!st.ok() && errors[t].empty()) errors[t] = std::string(what) + ": " + st.ToString();
        return st.ok();
      };
      for (int i = 0; i < 6; ++i) {
        const std::string s = "s" + std::to_string(i);
        const std::string c = v + "-c" + std::to_string(i);
        const std::string l = v + "-l" + std::to_string(i);
        if (!check(mgr_->Create(v, s).status(), "create")) return;
        if (!check(mgr_->Clone(v + "@" + s, c).status(), "clone")) return;
        if (!check(mgr_->Clone(v, l, {.read_only = true}).status(), "clone live")) return;
        if (!check(Write(c, 0, Pattern(64 * kKiB, i)), "write clone")) return;
        if (!check(mgr_->DeleteVolume(l), "delete live clone")) return;
        if (i % 2 == 0 && !check(mgr_->Delete(v + "@" + s).status(), "delete snapshot")) return;
        if (!check(mgr_->DeleteVolume(c), "delete clone")) return;
      }
    });
  }
  std::thread reader([&] {
    while (!done.load()) {
      auto l = mgr_->List({.include_implicit = true});
      if (!l.ok() && errors[kThreads].empty()) errors[kThreads] = l.status().ToString();
      for (int t = 0; t < kThreads; ++t) {
        auto s = mgr_->GetVolumeSpace("v" + std::to_string(t));
        if (!s.ok() && errors[kThreads].empty()) errors[kThreads] = s.status().ToString();
      }
    }
  });
  for (auto& th : threads) th.join();
  done = true;
  reader.join();
  for (const auto& e : errors) EXPECT_EQ(e, "");
  EXPECT_TRUE(mgr_->ListClones()->empty());
  auto left = mgr_->List({.include_implicit = true});
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->size(), static_cast<size_t>(kThreads * 3)) << "the odd snapshots stay";
  for (const auto& s : *left) EXPECT_FALSE(s.implicit);
  ExpectClean();
  for (const auto& s : *left) ASSERT_TRUE(mgr_->Delete(s.full_name()).ok());
  for (int t = 0; t < kThreads; ++t) ASSERT_TRUE(mgr_->DeleteVolume("v" + std::to_string(t)).ok());
  EXPECT_EQ(FreeBytes(), initial_free_);
}

}  // namespace
}  // namespace shale::snapshot
