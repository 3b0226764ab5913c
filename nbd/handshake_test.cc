// The option negotiation state machine, driven as a client would: every option Shale supports,
// every error reply, the hard disconnects the protocol requires, and partial input.
#include "nbd/handshake.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "nbd/wire_testing.h"

namespace shale::nbd {
namespace {

using wire_testing::U16;
using wire_testing::U32;
using wire_testing::U64;

std::string Opt(uint32_t option, const std::string& data = "") {
  return U64(kOptionMagic) + U32(option) + U32(static_cast<uint32_t>(data.size())) + data;
}
std::string GoData(const std::string& name, const std::vector<uint16_t>& infos = {}) {
  std::string d =
      U32(static_cast<uint32_t>(name.size())) + name + U16(static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) d += U16(i);
  return d;
}
std::string MetaData(const std::string& name, const std::vector<std::string>& queries) {
  std::string d =
      U32(static_cast<uint32_t>(name.size())) + name + U32(static_cast<uint32_t>(queries.size()));
  for (const std::string& q : queries) d += U32(static_cast<uint32_t>(q.size())) + q;
  return d;
}

struct Reply {
  uint32_t option;
  uint32_t type;
  std::string data;
};

// Parses option replies; fails the test on anything else.
std::vector<Reply> ParseReplies(const std::string& out) {
  std::vector<Reply> replies;
  size_t pos = 0;
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  while (pos < out.size()) {
    EXPECT_GE(out.size() - pos, kOptionReplyHeaderSize);
    if (out.size() - pos < kOptionReplyHeaderSize) break;
    EXPECT_EQ(GetU64(p + pos), kOptionReplyMagic);
    const uint32_t len = GetU32(p + pos + 16);
    EXPECT_LE(len, out.size() - pos - kOptionReplyHeaderSize);
    replies.push_back(
        {GetU32(p + pos + 8), GetU32(p + pos + 12), out.substr(pos + kOptionReplyHeaderSize, len)});
    pos += kOptionReplyHeaderSize + len;
  }
  return replies;
}

// A handshake after the client flags, with exports "vol" (1 MiB) and "ro" (read-only).
class HandshakeTest : public ::testing::Test {
 protected:
  explicit HandshakeTest(uint32_t client_flags = kClientFlagFixedNewstyle | kClientFlagNoZeroes,
                         bool tls_required = false)
      : hs_(Limits(), tls_required) {
    std::string out;
    const std::string flags = U32(client_flags);
    EXPECT_EQ(hs_.Consume(AsBytes(flags), &out), 4u);
    EXPECT_TRUE(out.empty());
  }
  static HandshakeLimits Limits() {
    HandshakeLimits l;
    l.max_option_length = 1024;
    l.max_options = 100;
    return l;
  }
  static std::span<const uint8_t> AsBytes(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  }

  // Feeds `input` (answering export lookups) until it is used up or the machine stops reading.
  std::string Run(const std::string& input) {
    std::string out;
    std::span<const uint8_t> in = AsBytes(input);
    while (true) {
      switch (hs_.state()) {
        case Handshake::State::kReading: {
          const size_t used = hs_.Consume(in, &out);
          in = in.subspan(used);
          if (used == 0) return out;
          break;
        }
        case Handshake::State::kNeedExport:
          ++lookups_;
          if (hs_.export_name() == "vol" || hs_.export_name() == "ro") {
            hs_.ProvideExport(ExportInfo{hs_.export_name(), 1 << 20, hs_.export_name() == "ro",
                                         "desc of " + hs_.export_name()},
                              &out);
          } else {
            hs_.ProvideExport(Status::NotFound("no volume " + hs_.export_name()), &out);
          }
          break;
        case Handshake::State::kNeedExportList:
          hs_.ProvideExportList({"ro", "vol"}, &out);
          break;
        case Handshake::State::kStartTls:
          ++starttls_;
          leftover_ = std::string(reinterpret_cast<const char*>(in.data()), in.size());
          return out;
        default:
          leftover_ = std::string(reinterpret_cast<const char*>(in.data()), in.size());
          return out;
      }
    }
  }

  Handshake hs_;
  int lookups_ = 0;
  int starttls_ = 0;
  std::string leftover_;
};

TEST_F(HandshakeTest, GoAnswersExportInfoBlockSizesAndEntersTransmission) {
  const std::string out = Run(Opt(kOptGo, GoData("vol", {kInfoBlockSize})) + "REQUESTS");
  const std::vector<Reply> r = ParseReplies(out);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepInfo);
  EXPECT_EQ(r[0].data, InfoExportPayload(1 << 20, hs_.session().transmission_flags));
  EXPECT_EQ(r[1].type, kRepInfo);
  EXPECT_EQ(r[1].data, InfoBlockSizePayload(512, 4096, 32 << 20));
  EXPECT_EQ(r[2].type, kRepAck);
  for (const Reply& reply : r) EXPECT_EQ(reply.option, kOptGo);
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  EXPECT_EQ(leftover_, "REQUESTS") << "bytes after GO belong to the transmission phase";
  const Session& s = hs_.session();
  EXPECT_EQ(s.export_info.name, "vol");
  EXPECT_TRUE(s.block_size_requested);
  EXPECT_FALSE(s.structured_replies);
  EXPECT_FALSE(s.via_export_name);
  const uint16_t flags = s.transmission_flags;
  EXPECT_EQ(flags, kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim | kTxSendWriteZeroes |
                       kTxSendFastZero | kTxCanMultiConn | kTxSendCache);
  EXPECT_EQ(s.params.export_size, 1u << 20);
  EXPECT_EQ(s.params.min_block, 512u);
  EXPECT_EQ(s.params.max_block, 32u << 20);
}

TEST_F(HandshakeTest, InfoDescribesWithoutEnteringAndGoRepeatsIt) {
  const std::string info = Run(Opt(kOptInfo, GoData("vol", {kInfoName, kInfoDescription})));
  EXPECT_EQ(hs_.state(), Handshake::State::kReading);
  std::vector<Reply> r = ParseReplies(info);
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[2].data, InfoStringPayload(kInfoName, "vol"));
  EXPECT_EQ(r[3].data, InfoStringPayload(kInfoDescription, "desc of vol"));
  EXPECT_EQ(r[4].type, kRepAck);
  const std::string go = Run(Opt(kOptGo, GoData("vol", {kInfoName, kInfoDescription})));
  std::vector<Reply> g = ParseReplies(go);
  ASSERT_EQ(g.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(g[i].data, r[i].data) << i;
  EXPECT_EQ(hs_.state(), Handshake::State::kDone);
  EXPECT_FALSE(hs_.session().block_size_requested);
}

TEST_F(HandshakeTest, UnknownExportIsAnErrorAndTheHandshakeGoesOn) {
  std::vector<Reply> r = ParseReplies(Run(Opt(kOptGo, GoData("nope"))));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrUnknown);
  EXPECT_NE(r[0].data.find("nope"), std::string::npos);
  EXPECT_EQ(hs_.state(), Handshake::State::kReading);
  Run(Opt(kOptGo, GoData("ro")));
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  const uint16_t flags = hs_.session().transmission_flags;
  EXPECT_TRUE(flags & kTxReadOnly);
  EXPECT_FALSE(flags & (kTxSendTrim | kTxSendWriteZeroes | kTxSendFastZero));
}

TEST_F(HandshakeTest, ShutdownDuringLookupIsErrShutdown) {
  std::string out;
  const std::string go = Opt(kOptGo, GoData("vol"));
  hs_.Consume(AsBytes(go), &out);
  ASSERT_EQ(hs_.state(), Handshake::State::kNeedExport);
  EXPECT_TRUE(hs_.export_will_be_used());
  hs_.ProvideExport(Status::Unavailable("shutting down"), &out);
  std::vector<Reply> r = ParseReplies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrShutdown);
}

TEST_F(HandshakeTest, ListNamesEveryExport) {
  std::vector<Reply> r = ParseReplies(Run(Opt(kOptList)));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepServer);
  EXPECT_EQ(r[0].data, ServerPayload("ro"));
  EXPECT_EQ(r[1].data, ServerPayload("vol"));
  EXPECT_EQ(r[2].type, kRepAck);
  r = ParseReplies(Run(Opt(kOptList, "x")));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, AbortIsAcknowledgedThenClosed) {
  std::vector<Reply> r = ParseReplies(Run(Opt(kOptAbort, "ignored")));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
}

TEST_F(HandshakeTest, UnknownOptionsAndTlsAreRefusedAndParsingContinues) {
  std::vector<Reply> r = ParseReplies(
      Run(Opt(42, "some data") + Opt(kOptPeekExport) + Opt(kOptStartTls) + Opt(kOptStartTls, "x") +
          Opt(kOptStructuredReply, "x") + Opt(kOptStructuredReply)));
  ASSERT_EQ(r.size(), 6u);
  EXPECT_EQ(r[0].option, 42u);
  EXPECT_EQ(r[0].type, kRepErrUnsup);
  EXPECT_EQ(r[1].type, kRepErrUnsup);
  EXPECT_EQ(r[2].type, kRepErrUnsup);
  EXPECT_EQ(r[3].type, kRepErrInvalid);
  EXPECT_EQ(r[4].type, kRepErrInvalid);
  EXPECT_EQ(r[5].type, kRepAck);
  Run(Opt(kOptGo, GoData("vol")));
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  EXPECT_TRUE(hs_.session().structured_replies);
  EXPECT_TRUE(hs_.session().transmission_flags & kTxSendDf);
}

TEST_F(HandshakeTest, OverlongOptionsAreSkippedAndRefused) {
  std::vector<Reply> r =
      ParseReplies(Run(Opt(kOptInfo, std::string(5000, 'a')) + Opt(99, std::string(3000, 'b')) +
                       Opt(kOptGo, GoData("vol"))));
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[0].option, kOptInfo);
  EXPECT_EQ(r[0].type, kRepErrTooBig);
  EXPECT_EQ(r[1].option, 99u);
  EXPECT_EQ(r[1].type, kRepErrUnsup);
  EXPECT_EQ(hs_.state(), Handshake::State::kDone);
}

TEST_F(HandshakeTest, MalformedGoIsInvalid) {
  std::vector<Reply> r =
      ParseReplies(Run(Opt(kOptGo, U32(100) + "vol") +  // name longer than data
                       Opt(kOptGo, U32(3) + "vol") +    // no request count
                       Opt(kOptGo, U32(3) + "vol" + U16(2) + U16(kInfoName)) +  // count mismatch
                       Opt(kOptGo, GoData(std::string("v\0l", 3)))));           // NUL in the name
  ASSERT_EQ(r.size(), 4u);
  for (const Reply& reply : r) EXPECT_EQ(reply.type, kRepErrInvalid);
  EXPECT_EQ(lookups_, 0);
  EXPECT_EQ(hs_.state(), Handshake::State::kReading);
}

TEST_F(HandshakeTest, MetaContextsNeedStructuredRepliesAndTheSameExport) {
  std::vector<Reply> r =
      ParseReplies(Run(Opt(kOptSetMetaContext, MetaData("vol", {"base:allocation"}))));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);

  Run(Opt(kOptStructuredReply));
  r = ParseReplies(Run(Opt(kOptListMetaContext, MetaData("vol", {}))));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  EXPECT_EQ(r[0].data, MetaContextPayload(0, "base:allocation"));
  r = ParseReplies(Run(Opt(kOptListMetaContext, MetaData("vol", {"base:", "qemu:x"}))));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].data, MetaContextPayload(0, "base:allocation"));
  r = ParseReplies(Run(Opt(kOptListMetaContext, MetaData("vol", {"qemu:dirty-bitmap:a"}))));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  r = ParseReplies(Run(Opt(kOptListMetaContext, MetaData("vol", {"nocolon"}))));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  r = ParseReplies(Run(Opt(kOptSetMetaContext, MetaData("vol", {"base:allocation"}) + "x")));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid) << "trailing bytes";

  // The selection is for the export it named.
  r = ParseReplies(Run(Opt(kOptSetMetaContext, MetaData("ro", {"base:allocation"}))));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].data, MetaContextPayload(kBaseAllocationContextId, "base:allocation"));
  Run(Opt(kOptGo, GoData("vol")));
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  EXPECT_FALSE(hs_.session().block_status);
  EXPECT_FALSE(hs_.session().params.block_status);
}

TEST_F(HandshakeTest, SelectedContextCarriesIntoTransmission) {
  Run(Opt(kOptStructuredReply) + Opt(kOptSetMetaContext, MetaData("vol", {"base:allocation"})) +
      Opt(kOptGo, GoData("vol")));
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  EXPECT_TRUE(hs_.session().block_status);
  EXPECT_TRUE(hs_.session().params.block_status);
}

TEST_F(HandshakeTest, EmptySelectionSelectsNothing) {
  std::vector<Reply> r = ParseReplies(
      Run(Opt(kOptStructuredReply) + Opt(kOptSetMetaContext, MetaData("vol", {"base:"}))));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1].type, kRepAck);
  Run(Opt(kOptGo, GoData("vol")));
  EXPECT_FALSE(hs_.session().block_status);
}

TEST_F(HandshakeTest, ExportNameWithoutZeroes) {
  const std::string out = Run(Opt(kOptExportName, "vol"));
  ASSERT_EQ(hs_.state(), Handshake::State::kDone);
  ASSERT_EQ(out.size(), kExportNameReplySize);
  const auto* p = reinterpret_cast<const uint8_t*>(out.data());
  EXPECT_EQ(GetU64(p), 1u << 20);
  EXPECT_EQ(GetU16(p + 8), hs_.session().transmission_flags);
  EXPECT_TRUE(hs_.session().via_export_name);
}

TEST_F(HandshakeTest, ExportNameOfAnUnknownExportHangsUp) {
  Run(Opt(kOptExportName, "nope"));
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
  EXPECT_NE(hs_.close_reason().find("nope"), std::string::npos);
}

TEST_F(HandshakeTest, BadOptionMagicHangsUp) {
  Run("NOTMAGIC" + U32(kOptGo) + U32(0));
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
}

TEST_F(HandshakeTest, TooManyOptionsHangsUp) {
  std::string input;
  for (int i = 0; i < 101; ++i) input += Opt(kOptStructuredReply);
  Run(input);
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
}

TEST_F(HandshakeTest, OverlongExportNameHangsUp) {
  Run(Opt(kOptExportName, std::string(2000, 'x')));
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
}

class ZeroesHandshakeTest : public HandshakeTest {
 protected:
  ZeroesHandshakeTest() : HandshakeTest(kClientFlagFixedNewstyle) {}
};

TEST_F(ZeroesHandshakeTest, ExportNamePadsWithZeroesUnlessNegotiated) {
  const std::string out = Run(Opt(kOptExportName, "vol"));
  ASSERT_EQ(out.size(), kExportNameReplySize + kExportNameZeroes);
  EXPECT_EQ(out.substr(kExportNameReplySize), std::string(kExportNameZeroes, '\0'));
}

TEST(Handshake, UnknownClientFlagsHangUp) {
  Handshake hs(HandshakeLimits{});
  std::string out;
  std::string flags;
  AppendU32(&flags, 1u << 5);
  hs.Consume({reinterpret_cast<const uint8_t*>(flags.data()), 4}, &out);
  EXPECT_EQ(hs.state(), Handshake::State::kClosed);
  EXPECT_TRUE(out.empty());
}

// Byte-at-a-time input gives exactly the same conversation as all at once.
TEST(Handshake, PartialInputIsTheSameConversation) {
  std::string flags;
  AppendU32(&flags, kClientFlagFixedNewstyle);
  const std::string script = flags + Opt(kOptStructuredReply) + Opt(kOptList) + Opt(77, "x") +
                             Opt(kOptSetMetaContext, MetaData("vol", {"base:allocation"})) +
                             Opt(kOptInfo, std::string(20000, 'z')) +
                             Opt(kOptGo, GoData("vol", {kInfoBlockSize}));
  auto run = [&](size_t step) {
    Handshake hs(HandshakeLimits{});
    std::string out;
    std::string buf;
    size_t fed = 0;
    while (hs.state() != Handshake::State::kDone && hs.state() != Handshake::State::kClosed) {
      if (hs.state() == Handshake::State::kNeedExport) {
        hs.ProvideExport(ExportInfo{"vol", 4096, false, ""}, &out);
        continue;
      }
      if (hs.state() == Handshake::State::kNeedExportList) {
        hs.ProvideExportList({"vol"}, &out);
        continue;
      }
      if (fed == script.size() && buf.empty()) break;
      const size_t n = std::min(step, script.size() - fed);
      buf += script.substr(fed, n);
      fed += n;
      const size_t used =
          hs.Consume({reinterpret_cast<const uint8_t*>(buf.data()), buf.size()}, &out);
      buf.erase(0, used);
    }
    EXPECT_EQ(hs.state(), Handshake::State::kDone) << "step " << step;
    return out;
  };
  const std::string whole = run(script.size());
  EXPECT_EQ(run(1), whole);
  EXPECT_EQ(run(7), whole);
  EXPECT_EQ(run(4096), whole);
}

// A client that pipelines options cannot make the server buffer without bound.
TEST(Handshake, OutputIsBoundedPerConsume) {
  std::string input;
  AppendU32(&input, kClientFlagFixedNewstyle);
  for (int i = 0; i < 10000; ++i) input += Opt(kOptStructuredReply);
  HandshakeLimits limits;
  limits.max_options = 100000;
  Handshake hs(limits);
  std::string out;
  const size_t used =
      hs.Consume({reinterpret_cast<const uint8_t*>(input.data()), input.size()}, &out);
  EXPECT_LT(used, input.size());
  EXPECT_LE(out.size(), Handshake::kOutputHighWater + kOptionReplyHeaderSize);
  EXPECT_EQ(hs.state(), Handshake::State::kReading);
}

// FORCEDTLS (shaled with --nbd-tls-*): nothing but STARTTLS and ABORT before TLS.
class ForcedTlsHandshakeTest : public HandshakeTest {
 protected:
  ForcedTlsHandshakeTest()
      : HandshakeTest(kClientFlagFixedNewstyle | kClientFlagNoZeroes, /*tls_required=*/true) {}
};

TEST_F(ForcedTlsHandshakeTest, EveryOptionBeforeStartTlsGetsTlsRequired) {
  const std::vector<Reply> r =
      ParseReplies(Run(Opt(kOptList) + Opt(kOptGo, GoData("vol")) + Opt(kOptInfo, GoData("vol")) +
                       Opt(kOptStructuredReply) + Opt(kOptListMetaContext, MetaData("vol", {})) +
                       Opt(42, "x") + Opt(kOptInfo, std::string(5000, 'a'))));
  ASSERT_EQ(r.size(), 7u);
  for (const Reply& reply : r) EXPECT_EQ(reply.type, kRepErrTlsReqd) << reply.option;
  EXPECT_EQ(lookups_, 0) << "no export was looked up, listed or described";
  EXPECT_EQ(hs_.state(), Handshake::State::kReading);
  EXPECT_FALSE(hs_.tls_active());
}

TEST_F(ForcedTlsHandshakeTest, StartTlsIsAcknowledgedAndNegotiationContinuesInsideTls) {
  std::vector<Reply> r = ParseReplies(Run(Opt(kOptStartTls, "x") + Opt(kOptStartTls) + "\x16\x03"));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].type, kRepErrInvalid) << "STARTTLS takes no data";
  EXPECT_EQ(r[1].option, kOptStartTls);
  EXPECT_EQ(r[1].type, kRepAck);
  ASSERT_EQ(hs_.state(), Handshake::State::kStartTls);
  EXPECT_EQ(starttls_, 1);
  EXPECT_EQ(leftover_, "\x16\x03") << "bytes after STARTTLS are the client's TLS records";
  hs_.TlsEstablished();
  EXPECT_TRUE(hs_.tls_active());
  r = ParseReplies(Run(Opt(kOptStartTls) + Opt(kOptList) + Opt(kOptGo, GoData("vol"))));
  ASSERT_EQ(r.size(), 7u);
  EXPECT_EQ(r[0].type, kRepErrInvalid) << "a second STARTTLS";
  EXPECT_EQ(r[1].type, kRepServer);
  EXPECT_EQ(r[3].type, kRepAck);
  EXPECT_EQ(r[4].type, kRepInfo);
  EXPECT_EQ(r[6].type, kRepAck);
  EXPECT_EQ(hs_.state(), Handshake::State::kDone);
}

TEST_F(ForcedTlsHandshakeTest, ExportNameBeforeTlsDisconnectsAndAbortIsAcknowledged) {
  Run(Opt(kOptExportName, "vol"));
  EXPECT_EQ(hs_.state(), Handshake::State::kClosed);
  EXPECT_EQ(lookups_, 0);
  Handshake other(Limits(), /*tls_required=*/true);
  std::string out;
  const std::string flags = U32(kClientFlagFixedNewstyle);
  other.Consume(AsBytes(flags), &out);
  const std::string abort = Opt(kOptAbort);
  other.Consume(AsBytes(abort), &out);
  const std::vector<Reply> r = ParseReplies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_EQ(other.state(), Handshake::State::kClosed);
}

TEST(ForcedTlsHandshake, ClientWithoutFixedNewstyleIsDisconnected) {
  Handshake hs(HandshakeLimits{}, /*tls_required=*/true);
  std::string out;
  const std::string flags = U32(kClientFlagNoZeroes);
  hs.Consume({reinterpret_cast<const uint8_t*>(flags.data()), flags.size()}, &out);
  EXPECT_EQ(hs.state(), Handshake::State::kClosed);
  EXPECT_NE(hs.close_reason().find("fixed newstyle"), std::string::npos);
}

TEST_F(HandshakeTest, ForbiddenExportGetsPolicyErrorAndTheHandshakeGoesOn) {
  std::string out;
  const std::string go = Opt(kOptGo, GoData("secret"));
  hs_.Consume(AsBytes(go), &out);
  ASSERT_EQ(hs_.state(), Handshake::State::kNeedExport);
  hs_.ProvideExport(Status::PermissionDenied("not allowed"), &out);
  const std::vector<Reply> r = ParseReplies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrPolicy);
  EXPECT_EQ(hs_.state(), Handshake::State::kReading);
}

}  // namespace
}  // namespace shale::nbd
