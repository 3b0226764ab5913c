// Runs the NBD fuzz entry point (nbd_protocol_fuzz.cc) in the normal build: over every seed of
// the corpus, then over deterministic mutations of them, under the build's sanitizers. The
// libFuzzer run itself is the ctest entry nbd_protocol_fuzz (run_fuzz.sh).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "nbd/handshake.h"
#include "tests/fuzz/seed_mutator.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace shale::nbd {
namespace {

#ifndef SHALE_NBD_CORPUS_DIR
#error "SHALE_NBD_CORPUS_DIR must be defined by the build"
#endif

std::map<std::string, std::vector<uint8_t>> LoadSeeds() {
  std::map<std::string, std::vector<uint8_t>> seeds;
  for (const auto& entry : std::filesystem::directory_iterator(SHALE_NBD_CORPUS_DIR)) {
    std::ifstream in(entry.path(), std::ios::binary);
    seeds[entry.path().filename().string()] =
        std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
  }
  return seeds;
}

// Runs a seed's handshake (after its chunking byte) with the fuzz target's fake exports.
Handshake::State Negotiate(const std::vector<uint8_t>& seed, Session* session) {
  Handshake hs(HandshakeLimits{}, /*tls_required=*/(seed[0] & 0x80) != 0);
  std::string out;
  std::span<const uint8_t> in(seed.data() + 1, seed.size() - 1);
  while (true) {
    switch (hs.state()) {
      case Handshake::State::kReading: {
        const size_t used = hs.Consume(in, &out);
        in = in.subspan(used);
        if (used == 0 && hs.state() == Handshake::State::kReading) return hs.state();
        break;
      }
      case Handshake::State::kNeedExport:
        if (hs.export_name() == "vol" || hs.export_name() == "ro") {
          hs.ProvideExport(ExportInfo{hs.export_name(), 1 << 20, hs.export_name() == "ro", ""},
                           &out);
        } else {
          hs.ProvideExport(Status::NotFound("no such export"), &out);
        }
        break;
      case Handshake::State::kNeedExportList:
        hs.ProvideExportList({"vol", "ro"}, &out);
        break;
      case Handshake::State::kStartTls:
        hs.TlsEstablished();  // as if the TLS handshake succeeded
        break;
      default:
        *session = hs.session();
        return hs.state();
    }
  }
}

TEST(NbdProtocolCorpus, SeedsReachTheStatesTheyAreFor) {
  auto seeds = LoadSeeds();
  ASSERT_GE(seeds.size(), 10u) << "seed corpus missing: " << SHALE_NBD_CORPUS_DIR;
  Session s;
  EXPECT_EQ(Negotiate(seeds.at("go_structured_meta"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.structured_replies && s.block_status && s.block_size_requested);
  EXPECT_EQ(Negotiate(seeds.at("export_name_zeroes"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.via_export_name);
  EXPECT_EQ(Negotiate(seeds.at("read_only"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.params.transmission_flags & kTxReadOnly);
  EXPECT_EQ(Negotiate(seeds.at("unknown_then_go"), &s), Handshake::State::kDone);
  EXPECT_EQ(Negotiate(seeds.at("too_long_option"), &s), Handshake::State::kDone);
  EXPECT_EQ(Negotiate(seeds.at("malformed_go"), &s), Handshake::State::kDone);
  EXPECT_EQ(Negotiate(seeds.at("info_list_meta"), &s), Handshake::State::kClosed);  // ABORT
  EXPECT_EQ(Negotiate(seeds.at("bad_option_magic"), &s), Handshake::State::kClosed);
  EXPECT_EQ(Negotiate(seeds.at("unknown_client_flags"), &s), Handshake::State::kClosed);
  // FORCEDTLS seeds.
  EXPECT_EQ(Negotiate(seeds.at("tls_starttls_then_go"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.structured_replies);
  EXPECT_EQ(Negotiate(seeds.at("tls_options_before_starttls"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.params.transmission_flags & kTxReadOnly);
  EXPECT_EQ(Negotiate(seeds.at("tls_export_name_before_starttls"), &s), Handshake::State::kClosed);
  EXPECT_EQ(Negotiate(seeds.at("tls_starttls_twice"), &s), Handshake::State::kDone);
  EXPECT_TRUE(s.via_export_name);
  EXPECT_EQ(Negotiate(seeds.at("tls_abort_before_starttls"), &s), Handshake::State::kClosed);
  EXPECT_EQ(Negotiate(seeds.at("tls_without_fixed_newstyle"), &s), Handshake::State::kClosed);
}

TEST(NbdProtocolCorpus, EverySeedRunsClean) {
  for (const auto& [name, data] : LoadSeeds()) {
    SCOPED_TRACE(name);
    EXPECT_EQ(LLVMFuzzerTestOneInput(data.data(), data.size()), 0);
  }
}

// A small in-process mutator: the same kinds of edits libFuzzer makes, reproducible.
TEST(NbdProtocolCorpus, MutatedSeedsRunClean) {
  const auto seeds = LoadSeeds();
  std::vector<std::vector<uint8_t>> pool;
  for (const auto& [name, data] : seeds) pool.push_back(data);
  // Interesting 32-bit values: big-endian lengths, sizes.
  static constexpr uint32_t kValues[] = {
      0, 1, 511, 512, 4095, 4096, 0x7fffffff, 0x80000000, 0xffffffff, 1u << 20, 32u << 20};
  std::mt19937_64 rng(20261121);
  constexpr int kIterations = 200000;
  for (int i = 0; i < kIterations; ++i) {
    std::vector<uint8_t> input = pool[rng() % pool.size()];
    fuzz::MutateSeed(input, rng, kValues, fuzz::ByteOrder::kBig);
    ASSERT_EQ(LLVMFuzzerTestOneInput(input.data(), input.size()), 0);
    if (rng() % 8 == 0) pool.push_back(std::move(input));
  }
}

}  // namespace
}  // namespace shale::nbd
