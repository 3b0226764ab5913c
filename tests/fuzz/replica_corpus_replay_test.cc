// Runs the replica frame fuzz entry point (replica_frame_fuzz.cc) in the normal build: over
// every seed of its corpus, then over deterministic mutations of them, under the build's
// sanitizers. The libFuzzer run itself is the ctest entry replica_frame_fuzz (run_fuzz.sh).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/seed_mutator.h"

namespace shale::replication {
size_t RunReplicaFrameInput(const uint8_t* data, size_t size);  // replica_frame_fuzz.cc
}

namespace shale::replication {
namespace {

#ifndef SHALE_REPLICA_CORPUS_DIR
#error "SHALE_REPLICA_CORPUS_DIR must be defined by the build"
#endif

std::map<std::string, std::vector<uint8_t>> LoadSeeds() {
  std::map<std::string, std::vector<uint8_t>> seeds;
  for (const auto& entry : std::filesystem::directory_iterator(SHALE_REPLICA_CORPUS_DIR)) {
    std::ifstream in(entry.path(), std::ios::binary);
    seeds[entry.path().filename().string()] =
        std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
  }
  return seeds;
}

size_t Frames(const std::vector<uint8_t>& seed) {
  return RunReplicaFrameInput(seed.data(), seed.size());
}

TEST(ReplicaFrameCorpus, SeedsParseAsWritten) {
  auto seeds = LoadSeeds();
  ASSERT_GE(seeds.size(), 14u) << "seed corpus missing: " << SHALE_REPLICA_CORPUS_DIR;
  EXPECT_EQ(Frames(seeds.at("handshake")), 4u);
  EXPECT_EQ(Frames(seeds.at("auth_then_requests")), 14u);
  EXPECT_EQ(Frames(seeds.at("requests_direct")), 12u);
  EXPECT_EQ(Frames(seeds.at("requests_bytewise")), 12u);
  EXPECT_EQ(Frames(seeds.at("replies_direct")), 13u);
  EXPECT_EQ(Frames(seeds.at("replies_discard")), 12u);
  EXPECT_EQ(Frames(seeds.at("auth_failed")), 2u);
  // SNAPSHOT_DIGEST, DELETE_SNAPSHOT, TAKE_SNAPSHOT (with labels) before OPEN, then SNAPSHOT
  // after it, without labels and with them (a target without a replica sends them); their
  // replies (a TAKE_SNAPSHOT refused with PRECONDITION among them), the last a digest longer than
  // 64 bytes (refused by the length bounds); snapshot references with an empty snapshot name and
  // with names past the payload: framed, refused by their decoder.
  EXPECT_EQ(Frames(seeds.at("snapshots")), 7u);
  EXPECT_EQ(Frames(seeds.at("snapshot_replies")), 5u);
  EXPECT_EQ(Frames(seeds.at("bad_snapshot_ref")), 2u);
  // LIST_SNAPSHOTS before OPEN; its replies: two entries, an empty list marked truncated, and a
  // count past the entries (framed; refused by its decoder).
  EXPECT_EQ(Frames(seeds.at("snapshot_lists")), 3u);
  EXPECT_EQ(Frames(seeds.at("snapshot_list_replies")), 5u);
  // A well-framed OPEN whose name length runs past its payload (its decoder refuses it), then a
  // SNAPSHOT too short for its header: the reader stops there.
  EXPECT_EQ(Frames(seeds.at("bad_names")), 1u);
  for (const char* rejected :
       {"bad_checksum", "bad_magic", "bad_version", "oversized", "truncated", "garbage"}) {
    EXPECT_EQ(Frames(seeds.at(rejected)), 0u) << rejected;
  }
}

// A small in-process mutator: the same kinds of edits libFuzzer makes, reproducible.
TEST(ReplicaFrameCorpus, MutatedSeedsRunClean) {
  const auto seeds = LoadSeeds();
  std::vector<std::vector<uint8_t>> pool;
  for (const auto& [name, data] : seeds) {
    if (data.size() < 16 * 1024) pool.push_back(data);  // the large ones run once above
  }
  // Interesting 32-bit values: little-endian lengths, counts, statuses.
  static constexpr uint32_t kValues[] = {0,    1,     15,         16,         40,         512,
                                         4096, 65536, 0x7fffffff, 0x80000000, 0xffffffff, 8u << 20};
  std::mt19937_64 rng(20261205);
  constexpr int kIterations = 100000;
  for (int i = 0; i < kIterations; ++i) {
    std::vector<uint8_t> input = pool[rng() % pool.size()];
    fuzz::MutateSeed(input, rng, kValues, fuzz::ByteOrder::kLittle);
    RunReplicaFrameInput(input.data(), input.size());
    if (rng() % 8 == 0) pool.push_back(std::move(input));
  }
}

}  // namespace
}  // namespace shale::replication
