#include "csi/params.h"

#include <gtest/gtest.h>

namespace shale::csi {
namespace {

TEST(CsiNames, ValidNamesPassThroughOthersHash) {
  EXPECT_EQ(ShaleNameFor("pvc-0b1c2d3e-aaaa-bbbb-cccc-0123456789ab"),
            "pvc-0b1c2d3e-aaaa-bbbb-cccc-0123456789ab");
  const std::string odd = "my volume/with spaces";
  const std::string mapped = ShaleNameFor(odd);
  EXPECT_EQ(mapped.rfind("csi-", 0), 0u);
  EXPECT_EQ(mapped.size(), 4u + 32u);
  EXPECT_EQ(ShaleNameFor(odd), mapped) << "deterministic";
  EXPECT_NE(ShaleNameFor(odd + "x"), mapped);
  EXPECT_EQ(ShaleNameFor(std::string(128, 'a')), std::string(128, 'a'));
  EXPECT_EQ(ShaleNameFor(std::string(129, 'a')).size(), 36u);
  EXPECT_EQ(ShaleNameFor("-leading-dash").rfind("csi-", 0), 0u);
}

TEST(CsiCapacity, RoundsUpAndHonoursLimits) {
  EXPECT_EQ(*SizeForRange(0, 0, 0), kDefaultVolumeSize);
  EXPECT_EQ(*SizeForRange(1, 0, 0), 4096u);
  EXPECT_EQ(*SizeForRange(4097, 0, 0), 8192u);
  EXPECT_EQ(*SizeForRange(4096, 4096, 0), 4096u);
  EXPECT_EQ(*SizeForRange(0, 10000, 0), 8192u) << "largest multiple under the limit";
  EXPECT_EQ(*SizeForRange(0, int64_t{2} << 30, 0), kDefaultVolumeSize);
  EXPECT_EQ(SizeForRange(1, 2, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(SizeForRange(0, 100, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(SizeForRange(-1, 0, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SizeForRange(10, 5, 0).status().code(), StatusCode::kInvalidArgument);
  // A source imposes its size.
  EXPECT_EQ(*SizeForRange(4096, 0, 1 << 20), 1u << 20);
  EXPECT_EQ(*SizeForRange(0, 0, 1 << 20), 1u << 20) << "a clone keeps its source's size";
  EXPECT_EQ(SizeForRange(0, 8192, 1 << 20).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(SizeForRange(int64_t{300} << 40, 0, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(EngineSizeFor(1 << 20), 4u << 20);
  EXPECT_EQ(EngineSizeFor(uint64_t{4} << 40), (uint64_t{5} << 40)) << "headroom capped";
}

TEST(CsiParams, ParsesKnownKeysAndRejectsOthers) {
  auto p = ParseVolumeParams({{"pool", "fast"},
                              {"fsType", "xfs"},
                              {"readOnlyClone", "true"},
                              {"replicas", "1"},
                              {"iops", "1000"},
                              {"burstIops", "5000"},
                              {"burstSeconds", "10"},
                              {"weight", "200"},
                              {"csi.storage.k8s.io/pvc/name", "data"}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->pool, "fast");
  EXPECT_EQ(p->fs_type, "xfs");
  EXPECT_TRUE(p->read_only_clone);
  EXPECT_TRUE(p->has_qos);
  EXPECT_EQ(p->qos.iops, 1000);
  EXPECT_EQ(p->qos.burst_iops, 5000);
  EXPECT_EQ(p->qos.weight, 200);
  EXPECT_EQ(p->provenance.at("csi.storage.k8s.io/pvc/name"), "data");
  EXPECT_EQ(ParseVolumeParams({{"replicas", "3"}})->replicas, 3u);
  for (const char* bad : {"0", "10", "three", "-1", ""}) {
    EXPECT_EQ(ParseVolumeParams({{"replicas", bad}}).status().code(), StatusCode::kInvalidArgument)
        << bad;
  }
  Result<VolumeParams> selective =
      ParseVolumeParams({{"replicas", "3"}, {"replicaNodeSelector", "disk=ssd,!spot"}});
  ASSERT_TRUE(selective.ok()) << selective.status();
  EXPECT_EQ(selective->replica_node_selector, "disk=ssd,!spot");
  // A 1-replica volume lives on its pod's node: a selector there is a mistake, said so.
  Result<VolumeParams> lone = ParseVolumeParams({{"replicaNodeSelector", "disk=ssd"}});
  ASSERT_FALSE(lone.ok());
  EXPECT_EQ(lone.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(lone.status().message().find("needs replicas of 2 or more"), std::string::npos)
      << lone.status();
  EXPECT_EQ(ParseVolumeParams({{"fsType", "btrfs"}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseVolumeParams({{"iops", "-1"}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseVolumeParams({{"iops", "ten"}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseVolumeParams({{"colour", "blue"}}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseVolumeParams({{"burstIops", "10"}}).status().code(), StatusCode::kInvalidArgument)
      << "a burst without its base limit";
}

TEST(CsiParams, FingerprintAndTokens) {
  EXPECT_EQ(Fingerprint("a", {{"k", "v"}}, "", false), Fingerprint("a", {{"k", "v"}}, "", false));
  EXPECT_NE(Fingerprint("a", {{"k", "v"}}, "", false), Fingerprint("a", {{"k", "w"}}, "", false));
  EXPECT_NE(Fingerprint("a", {}, "", false), Fingerprint("a", {}, "", true));
  EXPECT_NE(Fingerprint("a", {}, "snapshot:x@y", false), Fingerprint("a", {}, "", false));
  EXPECT_EQ(ParseToken(MakeToken("vol-1")), "vol-1");
  EXPECT_FALSE(ParseToken("invalid-token").has_value());
  EXPECT_FALSE(ParseToken("n:").has_value());
}

}  // namespace
}  // namespace shale::csi
