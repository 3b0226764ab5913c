#include "cluster/membership.h"

#include <gtest/gtest.h>

#include <functional>
#include <nlohmann/json.hpp>

#include "cluster/node_record.h"

namespace shale::cluster {
namespace {

Membership Example() {
  Membership m;
  m.uuid = "0f6f1c0e-8c1a-4e8b-9d3e-2a7b5c9d1e4f";
  m.size_bytes = 1ull << 30;
  m.min_in_sync = 1;
  m.epoch = 7;
  m.target = "node-a";
  m.replicas = {{"node-a", ReplicaState::kHealthy, 0},
                {"node-b", ReplicaState::kFaulted, 6},
                {"node-c", ReplicaState::kRebuilding, 7}};
  m.in_sync = {"node-a"};
  m.history = {{6, {"node-a", "node-c"}, "node-b timed out"}, {7, {"node-a"}, "node-c timed out"}};
  return m;
}

std::string Encoded(const Membership& m) {
  Result<std::string> json = EncodeMembership(m);
  EXPECT_TRUE(json.ok()) << json.status();
  return json.ok() ? *json : std::string();
}

// `json` with one change applied to its parsed form.
std::string Edit(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(Encoded(Example()));
  edit(j);
  return j.dump();
}

TEST(Membership, RoundTripsThroughJson) {
  const Membership m = Example();
  ASSERT_TRUE(m.Validate().ok()) << m.Validate();
  const std::string json = Encoded(m);
  // Field order as in docs/replication.md, so etcdctl output reads like the doc.
  EXPECT_EQ(json.find("{\"uuid\":"), 0u) << json;
  EXPECT_NE(json.find("\"since_epoch\":6"), std::string::npos) << json;
  EXPECT_EQ(json.find("\"since_epoch\":0"), std::string::npos) << json;
  Result<Membership> back = DecodeMembership(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(json.find("detached"), std::string::npos) << "absent unless detached: " << json;
  // A detached volume (`volume detach`) keeps the flag; a record without it is attached.
  Membership detached = m;
  detached.detached = true;
  const std::string djson = Encoded(detached);
  EXPECT_NE(djson.find("\"detached\":true"), std::string::npos) << djson;
  back = DecodeMembership(djson);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->detached);
  EXPECT_EQ(*back, detached);
  // A replica placed to replace another names it; the field is absent on every other replica.
  EXPECT_EQ(json.find("replaces"), std::string::npos) << json;
  Membership replacing = m;
  replacing.replicas[2].replaces = "node-b";
  const std::string rjson = Encoded(replacing);
  EXPECT_NE(rjson.find("\"replaces\":\"node-b\""), std::string::npos) << rjson;
  back = DecodeMembership(rjson);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->replicas[2].replaces, "node-b");
  EXPECT_EQ(*back, replacing);
  // The node selector is kept when set, absent otherwise.
  EXPECT_EQ(json.find("node_selector"), std::string::npos) << json;
  Membership selective = m;
  selective.node_selector = "disk=ssd, !spot";
  const std::string sjson = Encoded(selective);
  EXPECT_NE(sjson.find("\"node_selector\":\"disk=ssd, !spot\""), std::string::npos) << sjson;
  back = DecodeMembership(sjson);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, selective);
  // QoS: the fields set, absent when none.
  EXPECT_EQ(json.find("qos"), std::string::npos) << json;
  Membership limited = m;
  limited.qos = {{"iops", 500}, {"weight", 200}};
  const std::string qjson = Encoded(limited);
  EXPECT_NE(qjson.find("\"qos\":{\"iops\":500,\"weight\":200}"), std::string::npos) << qjson;
  back = DecodeMembership(qjson);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, limited);
  // Labels: kept when set, absent otherwise.
  EXPECT_EQ(json.find("labels"), std::string::npos) << json;
  Membership labelled = m;
  labelled.labels = {{"csi.shale.io/fingerprint", "ab12"}, {"team", ""}};
  const std::string ljson = Encoded(labelled);
  EXPECT_NE(ljson.find("\"labels\":{\"csi.shale.io/fingerprint\":\"ab12\",\"team\":\"\"}"),
            std::string::npos)
      << ljson;
  back = DecodeMembership(ljson);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, labelled);
}

TEST(Membership, ValidateNamesTheBrokenRule) {
  const struct {
    std::function<void(Membership&)> edit;
    const char* says;
  } cases[] = {
      {[](Membership& m) { m.uuid = "not-a-uuid"; }, "is not a UUID"},
      {[](Membership& m) { m.uuid = "00000000-0000-0000-0000-000000000000"; }, "is not a UUID"},
      {[](Membership& m) { m.size_bytes = 0; }, "size_bytes is 0"},
      {[](Membership& m) { m.epoch = 0; }, "epoch is 0"},
      {[](Membership& m) { m.target = ""; }, "target"},
      {[](Membership& m) { m.target = "a/b"; }, "target"},
      {[](Membership& m) { m.replicas.clear(); }, "0 replicas"},
      {[](Membership& m) { m.replicas[1].node = "node-a"; }, "names node 'node-a' twice"},
      {[](Membership& m) { m.replicas[1].since_epoch = 8; }, "after the current epoch"},
      {[](Membership& m) { m.replicas[2].replaces = "node-z"; }, "replaces 'node-z'"},
      {[](Membership& m) { m.replicas[2].replaces = "node-c"; }, "not another replica"},
      {[](Membership& m) { m.min_in_sync = 0; }, "min_in_sync 0"},
      {[](Membership& m) { m.min_in_sync = 4; }, "min_in_sync 4"},
      {[](Membership& m) { m.in_sync.clear(); }, "in_sync is empty"},
      {[](Membership& m) { m.in_sync.push_back("node-a"); }, "twice"},
      {[](Membership& m) { m.in_sync.push_back("node-z"); }, "holds no replica"},
      {[](Membership& m) { m.in_sync.push_back("node-c"); }, "rebuilding, not healthy"},
      {[](Membership& m) { m.replicas[2].state = ReplicaState::kHealthy; },
       "healthy but not in in_sync"},
      {[](Membership& m) { m.node_selector = "disk=ssd,"; }, "node selector requirement"},
      {[](Membership& m) { m.node_selector = "disk=ssd,gpu"; }, "canonical form"},
      {[](Membership& m) { m.qos["Bad"] = 1; }, "qos field 'Bad'"},
      {[](Membership& m) { m.qos["iops"] = Membership::kMaxQosValue + 1; }, "too large"},
      {[](Membership& m) { m.labels[""] = "x"; }, "label key '' is empty"},
      {[](Membership& m) { m.labels["k"] = std::string(1025, 'v'); }, "label 'k' is too long"},
      {[](Membership& m) {
         for (int i = 0; i < 65; ++i) m.labels["k" + std::to_string(i)] = "";
       },
       "labels has 65 entries"},
      {[](Membership& m) {
         for (int i = 0; i < 17; ++i) m.labels["k" + std::to_string(i)] = std::string(1000, 'v');
       },
       "labels take 17"},
      {[](Membership& m) { m.history[1].epoch = 6; }, "epochs must increase"},
      {[](Membership& m) { m.history[1].epoch = 8; }, "epochs must increase"},
      {[](Membership& m) { m.history[0].reason = std::string(600, 'x'); }, "reason longer"},
      {[](Membership& m) { m.history.resize(17); }, "17 entries"},
  };
  // Valid, but escaped beyond what any node would decode: refused rather than written.
  Membership escaped = Example();
  for (int i = 0; i < 15; ++i) escaped.labels["k" + std::to_string(i)] = std::string(1000, '\x01');
  ASSERT_TRUE(escaped.Validate().ok());
  Result<std::string> too_big = EncodeMembership(escaped);
  ASSERT_FALSE(too_big.ok());
  EXPECT_NE(too_big.status().message().find("bytes; at most 65536"), std::string_view::npos)
      << too_big.status();
  for (const auto& c : cases) {
    Membership m = Example();
    c.edit(m);
    const Status s = m.Validate();
    ASSERT_FALSE(s.ok()) << c.says;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find(c.says), std::string_view::npos) << s;
    EXPECT_FALSE(EncodeMembership(m).ok()) << c.says;
  }
}

TEST(Membership, MalformedJsonIsCorruptionNamingTheField) {
  const struct {
    std::string json;
    const char* says;
  } cases[] = {
      {"", "not valid JSON"},
      {"{", "not valid JSON"},
      {"[1,2]", "not a JSON object"},
      {"\"text\"", "not a JSON object"},
      {"{}", "field 'uuid' is missing"},
      {Edit([](nlohmann::json& j) { j.erase("epoch"); }), "field 'epoch' is missing"},
      {Edit([](nlohmann::json& j) { j["epoch"] = "7"; }), "field 'epoch' must be a non-negative"},
      {Edit([](nlohmann::json& j) { j["epoch"] = -7; }), "field 'epoch' must be a non-negative"},
      {Edit([](nlohmann::json& j) { j["epoch"] = 7.5; }), "field 'epoch' must be a non-negative"},
      {Edit([](nlohmann::json& j) { j["min_in_sync"] = 1u << 31; }), "min_in_sync"},
      {Edit([](nlohmann::json& j) { j["replicas"] = "node-a"; }),
       "field 'replicas' must be an array"},
      {Edit([](nlohmann::json& j) { j["replicas"][0] = 3; }), "'replicas[0]' must be an object"},
      {Edit([](nlohmann::json& j) { j["replicas"][1]["state"] = "gone"; }),
       "'replicas[1].state' unknown replica state 'gone'"},
      {Edit([](nlohmann::json& j) { j["replicas"][1].erase("node"); }),
       "'replicas[1].node' is missing"},
      {Edit([](nlohmann::json& j) { j["replicas"][1]["weight"] = 2; }),
       "'replicas[1].weight' is unknown"},
      {Edit([](nlohmann::json& j) { j["in_sync"][0] = 1; }), "'in_sync[0]' must be a string"},
      {Edit([](nlohmann::json& j) { j["qos"] = 5; }), "field 'qos' must be an object"},
      {Edit([](nlohmann::json& j) {
         j["qos"] = {{"iops", -1}};
       }),
       "'qos.iops' must be a non"},
      {Edit([](nlohmann::json& j) {
         j["qos"] = {{"Iops!", 1}};
       }),
       "is not a field name"},
      {Edit([](nlohmann::json& j) { j["history"][0]["in_sync"] = nullptr; }),
       "'history[0].in_sync' must be an array"},
      {Edit([](nlohmann::json& j) { j["labels"] = "a=b"; }), "field 'labels' must be an object"},
      {Edit([](nlohmann::json& j) {
         j["labels"] = {{"a", 1}};
       }),
       "'labels.a' must be a string"},
      {Edit([](nlohmann::json& j) { j["owner"] = "x"; }), "field 'owner' is unknown"},
      {Edit([](nlohmann::json& j) { j["detached"] = "yes"; }),
       "field 'detached' must be true or false"},
      {Edit([](nlohmann::json& j) {
         j["in_sync"] = {"node-a", "node-c"};
       }),
       "not healthy"},
      {Edit([](nlohmann::json& j) {
         for (int i = 0; i < 17; ++i) j["history"].push_back(j["history"][0]);
       }),
       "'history' has more than 16"},
      {std::string(70 * 1024, ' '), "the limit is"},
      {"{\"uuid\": \"\xff\xfe\"}", "not valid JSON"},
      {"{\"uuid\": " + std::string(20000, '[') + std::string(20000, ']') + "}", "must be a string"},
  };
  for (const auto& c : cases) {
    Result<Membership> m = DecodeMembership(c.json, "volume v1");
    ASSERT_FALSE(m.ok()) << c.json.substr(0, 200);
    EXPECT_EQ(m.status().code(), StatusCode::kCorruption) << m.status();
    EXPECT_NE(m.status().message().find(c.says), std::string_view::npos) << m.status();
    EXPECT_EQ(m.status().message().find("volume v1: "), 0u) << m.status();
  }
}

TEST(Membership, RecordChangeKeepsTheLast16) {
  Membership m = Example();
  m.history.clear();
  for (int i = 0; i < 40; ++i) {
    ++m.epoch;
    m.RecordChange("change " + std::to_string(i));
  }
  ASSERT_EQ(m.history.size(), Membership::kMaxHistory);
  EXPECT_EQ(m.history.back().reason, "change 39");
  EXPECT_EQ(m.history.back().epoch, m.epoch);
  EXPECT_EQ(m.history.front().reason, "change 24");
  EXPECT_TRUE(m.Validate().ok()) << m.Validate();
}

TEST(Membership, TransitionsFollowTheEpochRules) {
  const Membership from = Example();
  Membership to = from;
  EXPECT_TRUE(CheckMembershipTransition(from, to).ok());  // nothing changed
  to.replicas[2].state = ReplicaState::kFaulted;          // no in_sync/target change
  EXPECT_TRUE(CheckMembershipTransition(from, to).ok());

  to = from;
  to.in_sync = {"node-a", "node-c"};
  to.replicas[2].state = ReplicaState::kHealthy;
  EXPECT_EQ(CheckMembershipTransition(from, to).code(), StatusCode::kFailedPrecondition);
  to.epoch = from.epoch + 1;
  EXPECT_TRUE(CheckMembershipTransition(from, to).ok());
  to.epoch = from.epoch + 2;
  EXPECT_NE(CheckMembershipTransition(from, to).message().find("jumped"), std::string_view::npos);

  to = from;
  to.target = "node-c";
  EXPECT_FALSE(CheckMembershipTransition(from, to).ok());
  to = from;
  to.epoch = from.epoch - 1;
  EXPECT_NE(CheckMembershipTransition(from, to).message().find("went back"),
            std::string_view::npos);
  to = from;
  to.uuid = "1f6f1c0e-8c1a-4e8b-9d3e-2a7b5c9d1e4f";
  EXPECT_NE(CheckMembershipTransition(from, to).message().find("uuid"), std::string_view::npos);
  to = from;
  to.in_sync = {"node-a"};  // same set, another order: no change
  EXPECT_TRUE(CheckMembershipTransition(from, to).ok());
}

TEST(ReplicaStates, NamesRoundTrip) {
  for (ReplicaState s : {ReplicaState::kHealthy, ReplicaState::kRebuilding, ReplicaState::kFaulted,
                         ReplicaState::kStale}) {
    Result<ReplicaState> back = ParseReplicaState(ReplicaStateName(s));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, s);
  }
  EXPECT_FALSE(ParseReplicaState("Healthy").ok());
}

NodeInfo ExampleNode() {
  return NodeInfo{"10.0.0.1:7480", {{"default", 1000, 8000}, {"fast", 0, 100}}};
}

TEST(NodeRecord, RoundTripsThroughJson) {
  Result<std::string> json = EncodeNodeInfo(ExampleNode());
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_NE(json->find("\"version\":1"), std::string::npos) << *json;
  Result<NodeInfo> back = DecodeNodeInfo(*json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, ExampleNode());
  Result<NodeInfo> no_pools = DecodeNodeInfo(R"({"replica_address":"h:1","pools":[],"version":1})");
  ASSERT_TRUE(no_pools.ok()) << no_pools.status();
}

TEST(NodeRecord, RejectsBadInfoAndMalformedJson) {
  NodeInfo bad = ExampleNode();
  bad.pools[0].free_bytes = 9000;
  EXPECT_NE(bad.Validate().message().find("more free bytes"), std::string_view::npos);
  bad = ExampleNode();
  bad.pools[1].name = "default";
  EXPECT_NE(bad.Validate().message().find("listed twice"), std::string_view::npos);
  bad = ExampleNode();
  bad.replica_address = "";  // a node without --replica-listen: valid, it holds no replicas
  EXPECT_TRUE(EncodeNodeInfo(bad).ok()) << EncodeNodeInfo(bad).status();
  bad.replica_address = "no-port";
  EXPECT_NE(bad.Validate().message().find("HOST:PORT"), std::string_view::npos);

  const struct {
    const char* json;
    const char* says;
  } cases[] = {
      {"null", "not a JSON object"},
      {R"({"replica_address":"h:1","pools":[]})", "'version' is missing"},
      {R"({"replica_address":"h:1","pools":[],"version":2})", "newer than this Shale"},
      {R"({"replica_address":"h:1","pools":{},"version":1})", "'pools' must be an array"},
      {R"({"replica_address":"h:1","pools":[{"name":"p","free_bytes":1}],"version":1})",
       "'pools[0].capacity_bytes' is missing"},
      {R"({"replica_address":"h:1","pools":[{"name":"p","free_bytes":1,"capacity_bytes":2,"x":1}],"version":1})",
       "'pools[0].x' is unknown"},
      {R"({"replica_address":"h:1","pools":[{"name":"p","free_bytes":3,"capacity_bytes":2}],"version":1})",
       "more free bytes"},
      {R"({"replica_address":7,"pools":[],"version":1})", "must be a string"},
  };
  for (const auto& c : cases) {
    Result<NodeInfo> r = DecodeNodeInfo(c.json, "node n1");
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption) << r.status();
    EXPECT_NE(r.status().message().find(c.says), std::string_view::npos) << r.status();
  }
}

}  // namespace
}  // namespace shale::cluster
