// Guards the wire contract of csi/csi.proto against CSI spec v1.10.0 (package csi.v1).
//
// csi.proto is restated in Shale's own words, so nothing but this test stops an edit from
// renumbering a field or renaming an RPC — which compiles fine and breaks every real CO
// (kubelet, external-provisioner, -snapshotter, -resizer) on the wire. The expected values
// below were checked against the spec's own generated descriptor (lib/go/csi/csi.pb.go of
// spec v1.10/1.11 and v1.13.0-rc1, minus the post-1.10 additions). Everything is read back
// through the generated descriptor pool, i.e. exactly what the gRPC server serves.
#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "csi/csi.grpc.pb.h"
#include "csi/csi.pb.h"

namespace shale::csi {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::ServiceDescriptor;

const DescriptorPool* Pool() {
  // Referencing a generated type forces csi.pb.cc to register csi.proto in the pool.
  (void)::csi::v1::CreateVolumeRequest::descriptor();
  return DescriptorPool::generated_pool();
}

struct Rpc {
  const char* method;
  const char* input;  // short names in package csi.v1
  const char* output;
  bool server_streaming;
};

void ExpectService(const char* service, const std::vector<Rpc>& rpcs) {
  const ServiceDescriptor* s = Pool()->FindServiceByName(std::string("csi.v1.") + service);
  ASSERT_NE(s, nullptr) << service;
  EXPECT_EQ(s->method_count(), static_cast<int>(rpcs.size())) << service << ": RPC added/removed";
  for (const Rpc& rpc : rpcs) {
    SCOPED_TRACE(std::string(service) + "/" + rpc.method);
    const auto* m = s->FindMethodByName(rpc.method);
    ASSERT_NE(m, nullptr);
    // The HTTP/2 path a CO calls, e.g. /csi.v1.Controller/CreateVolume.
    EXPECT_EQ("/" + s->full_name() + "/" + m->name(),
              std::string("/csi.v1.") + service + "/" + rpc.method);
    EXPECT_EQ(m->input_type()->full_name(), std::string("csi.v1.") + rpc.input);
    EXPECT_EQ(m->output_type()->full_name(), std::string("csi.v1.") + rpc.output);
    EXPECT_FALSE(m->client_streaming());
    EXPECT_EQ(m->server_streaming(), rpc.server_streaming);
  }
}

TEST(CsiProtoWire, PackageAndServices) {
  const auto* file = ::csi::v1::CreateVolumeRequest::descriptor()->file();
  EXPECT_EQ(file->package(), "csi.v1");
  EXPECT_EQ(file->service_count(), 5);
  // The generated stubs must carry the same fully qualified names.
  EXPECT_STREQ(::csi::v1::Identity::service_full_name(), "csi.v1.Identity");
  EXPECT_STREQ(::csi::v1::Controller::service_full_name(), "csi.v1.Controller");
  EXPECT_STREQ(::csi::v1::Node::service_full_name(), "csi.v1.Node");
  EXPECT_STREQ(::csi::v1::GroupController::service_full_name(), "csi.v1.GroupController");
  EXPECT_STREQ(::csi::v1::SnapshotMetadata::service_full_name(), "csi.v1.SnapshotMetadata");
}

TEST(CsiProtoWire, RpcPathsAndTypes) {
  ExpectService("Identity",
                {
                    {"GetPluginInfo", "GetPluginInfoRequest", "GetPluginInfoResponse", false},
                    {"GetPluginCapabilities", "GetPluginCapabilitiesRequest",
                     "GetPluginCapabilitiesResponse", false},
                    {"Probe", "ProbeRequest", "ProbeResponse", false},
                });
  ExpectService("Controller",
                {
                    {"CreateVolume", "CreateVolumeRequest", "CreateVolumeResponse", false},
                    {"DeleteVolume", "DeleteVolumeRequest", "DeleteVolumeResponse", false},
                    {"ControllerPublishVolume", "ControllerPublishVolumeRequest",
                     "ControllerPublishVolumeResponse", false},
                    {"ControllerUnpublishVolume", "ControllerUnpublishVolumeRequest",
                     "ControllerUnpublishVolumeResponse", false},
                    {"ValidateVolumeCapabilities", "ValidateVolumeCapabilitiesRequest",
                     "ValidateVolumeCapabilitiesResponse", false},
                    {"ListVolumes", "ListVolumesRequest", "ListVolumesResponse", false},
                    {"GetCapacity", "GetCapacityRequest", "GetCapacityResponse", false},
                    {"ControllerGetCapabilities", "ControllerGetCapabilitiesRequest",
                     "ControllerGetCapabilitiesResponse", false},
                    {"CreateSnapshot", "CreateSnapshotRequest", "CreateSnapshotResponse", false},
                    {"DeleteSnapshot", "DeleteSnapshotRequest", "DeleteSnapshotResponse", false},
                    {"ListSnapshots", "ListSnapshotsRequest", "ListSnapshotsResponse", false},
                    {"ControllerExpandVolume", "ControllerExpandVolumeRequest",
                     "ControllerExpandVolumeResponse", false},
                    {"ControllerGetVolume", "ControllerGetVolumeRequest",
                     "ControllerGetVolumeResponse", false},
                    {"ControllerModifyVolume", "ControllerModifyVolumeRequest",
                     "ControllerModifyVolumeResponse", false},
                });
  ExpectService("GroupController",
                {
                    {"GroupControllerGetCapabilities", "GroupControllerGetCapabilitiesRequest",
                     "GroupControllerGetCapabilitiesResponse", false},
                    {"CreateVolumeGroupSnapshot", "CreateVolumeGroupSnapshotRequest",
                     "CreateVolumeGroupSnapshotResponse", false},
                    {"DeleteVolumeGroupSnapshot", "DeleteVolumeGroupSnapshotRequest",
                     "DeleteVolumeGroupSnapshotResponse", false},
                    {"GetVolumeGroupSnapshot", "GetVolumeGroupSnapshotRequest",
                     "GetVolumeGroupSnapshotResponse", false},
                });
  ExpectService("SnapshotMetadata", {
                                        {"GetMetadataAllocated", "GetMetadataAllocatedRequest",
                                         "GetMetadataAllocatedResponse", true},
                                        {"GetMetadataDelta", "GetMetadataDeltaRequest",
                                         "GetMetadataDeltaResponse", true},
                                    });
  ExpectService(
      "Node",
      {
          {"NodeStageVolume", "NodeStageVolumeRequest", "NodeStageVolumeResponse", false},
          {"NodeUnstageVolume", "NodeUnstageVolumeRequest", "NodeUnstageVolumeResponse", false},
          {"NodePublishVolume", "NodePublishVolumeRequest", "NodePublishVolumeResponse", false},
          {"NodeUnpublishVolume", "NodeUnpublishVolumeRequest", "NodeUnpublishVolumeResponse",
           false},
          {"NodeGetVolumeStats", "NodeGetVolumeStatsRequest", "NodeGetVolumeStatsResponse", false},
          {"NodeExpandVolume", "NodeExpandVolumeRequest", "NodeExpandVolumeResponse", false},
          {"NodeGetCapabilities", "NodeGetCapabilitiesRequest", "NodeGetCapabilitiesResponse",
           false},
          {"NodeGetInfo", "NodeGetInfoRequest", "NodeGetInfoResponse", false},
      });
}

// One expected field: number, wire-relevant type and shape. `type_name` is the short name of a
// message/enum type (nested ones as "Outer.Inner"), or "" for scalars; maps are "map".
struct Field {
  const char* name;
  int number;
  FieldDescriptor::Type type;
  bool repeated;
  const char* type_name;
  const char* oneof;  // "" when not in a oneof
};

constexpr auto kString = FieldDescriptor::TYPE_STRING;
constexpr auto kInt64 = FieldDescriptor::TYPE_INT64;
constexpr auto kInt32 = FieldDescriptor::TYPE_INT32;
constexpr auto kBool = FieldDescriptor::TYPE_BOOL;
constexpr auto kMsg = FieldDescriptor::TYPE_MESSAGE;
constexpr auto kEnum = FieldDescriptor::TYPE_ENUM;

void ExpectMessage(const char* message, const std::vector<Field>& fields) {
  const Descriptor* d = Pool()->FindMessageTypeByName(std::string("csi.v1.") + message);
  ASSERT_NE(d, nullptr) << message;
  EXPECT_EQ(d->field_count(), static_cast<int>(fields.size()))
      << message << ": field added/removed";
  for (const Field& f : fields) {
    SCOPED_TRACE(std::string(message) + "." + f.name);
    const FieldDescriptor* fd = d->FindFieldByName(f.name);
    ASSERT_NE(fd, nullptr);
    EXPECT_EQ(fd->number(), f.number);
    EXPECT_EQ(fd->type(), f.type);
    EXPECT_EQ(fd->is_repeated(), f.repeated);
    const std::string type_name = f.type_name;
    if (type_name == "map") {
      EXPECT_TRUE(fd->is_map());
      // Every map in CSI is map<string, string>.
      EXPECT_EQ(fd->message_type()->map_key()->type(), kString);
      EXPECT_EQ(fd->message_type()->map_value()->type(), kString);
    } else {
      EXPECT_FALSE(fd->is_map());
      std::string actual;
      if (fd->message_type() != nullptr) actual = fd->message_type()->full_name();
      if (fd->enum_type() != nullptr) actual = fd->enum_type()->full_name();
      const std::string expected = type_name.empty()                    ? ""
                                   : type_name.rfind("google.", 0) == 0 ? type_name
                                                                        : "csi.v1." + type_name;
      EXPECT_EQ(actual, expected);
    }
    const auto* oneof = fd->real_containing_oneof();
    EXPECT_EQ(oneof == nullptr ? std::string() : oneof->name(), f.oneof);
  }
}

TEST(CsiProtoWire, ControllerMessages) {
  ExpectMessage("CreateVolumeRequest",
                {
                    {"name", 1, kString, false, "", ""},
                    {"capacity_range", 2, kMsg, false, "CapacityRange", ""},
                    {"volume_capabilities", 3, kMsg, true, "VolumeCapability", ""},
                    {"parameters", 4, kMsg, true, "map", ""},
                    {"secrets", 5, kMsg, true, "map", ""},
                    {"volume_content_source", 6, kMsg, false, "VolumeContentSource", ""},
                    {"accessibility_requirements", 7, kMsg, false, "TopologyRequirement", ""},
                    {"mutable_parameters", 8, kMsg, true, "map", ""},
                });
  ExpectMessage("VolumeContentSource",
                {
                    {"snapshot", 1, kMsg, false, "VolumeContentSource.SnapshotSource", "type"},
                    {"volume", 2, kMsg, false, "VolumeContentSource.VolumeSource", "type"},
                });
  ExpectMessage("VolumeContentSource.SnapshotSource", {{"snapshot_id", 1, kString, false, "", ""}});
  ExpectMessage("VolumeContentSource.VolumeSource", {{"volume_id", 1, kString, false, "", ""}});
  ExpectMessage("CapacityRange", {
                                     {"required_bytes", 1, kInt64, false, "", ""},
                                     {"limit_bytes", 2, kInt64, false, "", ""},
                                 });
  ExpectMessage("Volume", {
                              {"capacity_bytes", 1, kInt64, false, "", ""},
                              {"volume_id", 2, kString, false, "", ""},
                              {"volume_context", 3, kMsg, true, "map", ""},
                              {"content_source", 4, kMsg, false, "VolumeContentSource", ""},
                              {"accessible_topology", 5, kMsg, true, "Topology", ""},
                          });
  ExpectMessage("Topology", {{"segments", 1, kMsg, true, "map", ""}});
  ExpectMessage("TopologyRequirement", {
                                           {"requisite", 1, kMsg, true, "Topology", ""},
                                           {"preferred", 2, kMsg, true, "Topology", ""},
                                       });
  ExpectMessage("DeleteVolumeRequest", {
                                           {"volume_id", 1, kString, false, "", ""},
                                           {"secrets", 2, kMsg, true, "map", ""},
                                       });
  ExpectMessage("ListVolumesRequest", {
                                          {"max_entries", 1, kInt32, false, "", ""},
                                          {"starting_token", 2, kString, false, "", ""},
                                      });
  ExpectMessage("ListVolumesResponse",
                {
                    {"entries", 1, kMsg, true, "ListVolumesResponse.Entry", ""},
                    {"next_token", 2, kString, false, "", ""},
                });
  ExpectMessage("ListVolumesResponse.Entry",
                {
                    {"volume", 1, kMsg, false, "Volume", ""},
                    {"status", 2, kMsg, false, "ListVolumesResponse.VolumeStatus", ""},
                });
  ExpectMessage("ListVolumesResponse.VolumeStatus",
                {
                    {"published_node_ids", 1, kString, true, "", ""},
                    {"volume_condition", 2, kMsg, false, "VolumeCondition", ""},
                });
  ExpectMessage("ControllerModifyVolumeRequest",
                {
                    {"volume_id", 1, kString, false, "", ""},
                    {"secrets", 2, kMsg, true, "map", ""},
                    {"mutable_parameters", 3, kMsg, true, "map", ""},
                });
  ExpectMessage("ControllerExpandVolumeRequest",
                {
                    {"volume_id", 1, kString, false, "", ""},
                    {"capacity_range", 2, kMsg, false, "CapacityRange", ""},
                    {"secrets", 3, kMsg, true, "map", ""},
                    {"volume_capability", 4, kMsg, false, "VolumeCapability", ""},
                });
  ExpectMessage("ControllerExpandVolumeResponse",
                {
                    {"capacity_bytes", 1, kInt64, false, "", ""},
                    {"node_expansion_required", 2, kBool, false, "", ""},
                });
  ExpectMessage("GetCapacityResponse",
                {
                    {"available_capacity", 1, kInt64, false, "", ""},
                    {"maximum_volume_size", 2, kMsg, false, "google.protobuf.Int64Value", ""},
                    {"minimum_volume_size", 3, kMsg, false, "google.protobuf.Int64Value", ""},
                });
}

TEST(CsiProtoWire, SnapshotMessages) {
  ExpectMessage("CreateSnapshotRequest", {
                                             {"source_volume_id", 1, kString, false, "", ""},
                                             {"name", 2, kString, false, "", ""},
                                             {"secrets", 3, kMsg, true, "map", ""},
                                             {"parameters", 4, kMsg, true, "map", ""},
                                         });
  ExpectMessage("CreateSnapshotResponse", {{"snapshot", 1, kMsg, false, "Snapshot", ""}});
  ExpectMessage("Snapshot", {
                                {"size_bytes", 1, kInt64, false, "", ""},
                                {"snapshot_id", 2, kString, false, "", ""},
                                {"source_volume_id", 3, kString, false, "", ""},
                                {"creation_time", 4, kMsg, false, "google.protobuf.Timestamp", ""},
                                {"ready_to_use", 5, kBool, false, "", ""},
                                {"group_snapshot_id", 6, kString, false, "", ""},
                            });
  ExpectMessage("ListSnapshotsRequest", {
                                            {"max_entries", 1, kInt32, false, "", ""},
                                            {"starting_token", 2, kString, false, "", ""},
                                            {"source_volume_id", 3, kString, false, "", ""},
                                            {"snapshot_id", 4, kString, false, "", ""},
                                            {"secrets", 5, kMsg, true, "map", ""},
                                        });
  ExpectMessage("ListSnapshotsResponse",
                {
                    {"entries", 1, kMsg, true, "ListSnapshotsResponse.Entry", ""},
                    {"next_token", 2, kString, false, "", ""},
                });
  ExpectMessage("GetMetadataDeltaRequest", {
                                               {"base_snapshot_id", 1, kString, false, "", ""},
                                               {"target_snapshot_id", 2, kString, false, "", ""},
                                               {"starting_offset", 3, kInt64, false, "", ""},
                                               {"max_results", 4, kInt32, false, "", ""},
                                               {"secrets", 5, kMsg, true, "map", ""},
                                           });
  ExpectMessage("GetMetadataAllocatedResponse",
                {
                    {"block_metadata_type", 1, kEnum, false, "BlockMetadataType", ""},
                    {"volume_capacity_bytes", 2, kInt64, false, "", ""},
                    {"block_metadata", 3, kMsg, true, "BlockMetadata", ""},
                });
}

// GroupController and SnapshotMetadata (spec v1.10): every message Shale serves.
TEST(CsiProtoWire, GroupControllerAndSnapshotMetadataMessages) {
  ExpectMessage("GroupControllerGetCapabilitiesRequest", {});
  ExpectMessage("GroupControllerGetCapabilitiesResponse",
                {{"capabilities", 1, kMsg, true, "GroupControllerServiceCapability", ""}});
  ExpectMessage("GroupControllerServiceCapability",
                {{"rpc", 1, kMsg, false, "GroupControllerServiceCapability.RPC", "type"}});
  ExpectMessage("GroupControllerServiceCapability.RPC",
                {{"type", 1, kEnum, false, "GroupControllerServiceCapability.RPC.Type", ""}});
  ExpectMessage("CreateVolumeGroupSnapshotRequest",
                {
                    {"name", 1, kString, false, "", ""},
                    {"source_volume_ids", 2, kString, true, "", ""},
                    {"secrets", 3, kMsg, true, "map", ""},
                    {"parameters", 4, kMsg, true, "map", ""},
                });
  ExpectMessage("CreateVolumeGroupSnapshotResponse",
                {{"group_snapshot", 1, kMsg, false, "VolumeGroupSnapshot", ""}});
  ExpectMessage("VolumeGroupSnapshot",
                {
                    {"group_snapshot_id", 1, kString, false, "", ""},
                    {"snapshots", 2, kMsg, true, "Snapshot", ""},
                    {"creation_time", 3, kMsg, false, "google.protobuf.Timestamp", ""},
                    {"ready_to_use", 4, kBool, false, "", ""},
                });
  for (const char* m : {"DeleteVolumeGroupSnapshotRequest", "GetVolumeGroupSnapshotRequest"}) {
    ExpectMessage(m, {
                         {"group_snapshot_id", 1, kString, false, "", ""},
                         {"snapshot_ids", 2, kString, true, "", ""},
                         {"secrets", 3, kMsg, true, "map", ""},
                     });
  }
  ExpectMessage("DeleteVolumeGroupSnapshotResponse", {});
  ExpectMessage("GetVolumeGroupSnapshotResponse",
                {{"group_snapshot", 1, kMsg, false, "VolumeGroupSnapshot", ""}});
  ExpectMessage("BlockMetadata", {
                                     {"byte_offset", 1, kInt64, false, "", ""},
                                     {"size_bytes", 2, kInt64, false, "", ""},
                                 });
  ExpectMessage("GetMetadataAllocatedRequest", {
                                                   {"snapshot_id", 1, kString, false, "", ""},
                                                   {"starting_offset", 2, kInt64, false, "", ""},
                                                   {"max_results", 3, kInt32, false, "", ""},
                                                   {"secrets", 4, kMsg, true, "map", ""},
                                               });
  ExpectMessage("GetMetadataDeltaResponse",
                {
                    {"block_metadata_type", 1, kEnum, false, "BlockMetadataType", ""},
                    {"volume_capacity_bytes", 2, kInt64, false, "", ""},
                    {"block_metadata", 3, kMsg, true, "BlockMetadata", ""},
                });
}

TEST(CsiProtoWire, VolumeCapabilityAndNodeMessages) {
  ExpectMessage("VolumeCapability",
                {
                    {"block", 1, kMsg, false, "VolumeCapability.BlockVolume", "access_type"},
                    {"mount", 2, kMsg, false, "VolumeCapability.MountVolume", "access_type"},
                    {"access_mode", 3, kMsg, false, "VolumeCapability.AccessMode", ""},
                });
  ExpectMessage("VolumeCapability.BlockVolume", {});
  ExpectMessage("VolumeCapability.MountVolume",
                {
                    {"fs_type", 1, kString, false, "", ""},
                    {"mount_flags", 2, kString, true, "", ""},
                    {"volume_mount_group", 3, kString, false, "", ""},
                });
  ExpectMessage("VolumeCapability.AccessMode",
                {
                    {"mode", 1, kEnum, false, "VolumeCapability.AccessMode.Mode", ""},
                });
  ExpectMessage("NodeStageVolumeRequest",
                {
                    {"volume_id", 1, kString, false, "", ""},
                    {"publish_context", 2, kMsg, true, "map", ""},
                    {"staging_target_path", 3, kString, false, "", ""},
                    {"volume_capability", 4, kMsg, false, "VolumeCapability", ""},
                    {"secrets", 5, kMsg, true, "map", ""},
                    {"volume_context", 6, kMsg, true, "map", ""},
                });
  ExpectMessage("NodePublishVolumeRequest",
                {
                    {"volume_id", 1, kString, false, "", ""},
                    {"publish_context", 2, kMsg, true, "map", ""},
                    {"staging_target_path", 3, kString, false, "", ""},
                    {"target_path", 4, kString, false, "", ""},
                    {"volume_capability", 5, kMsg, false, "VolumeCapability", ""},
                    {"readonly", 6, kBool, false, "", ""},
                    {"secrets", 7, kMsg, true, "map", ""},
                    {"volume_context", 8, kMsg, true, "map", ""},
                });
  ExpectMessage("NodeGetInfoResponse", {
                                           {"node_id", 1, kString, false, "", ""},
                                           {"max_volumes_per_node", 2, kInt64, false, "", ""},
                                           {"accessible_topology", 3, kMsg, false, "Topology", ""},
                                       });
  ExpectMessage("NodeExpandVolumeRequest",
                {
                    {"volume_id", 1, kString, false, "", ""},
                    {"volume_path", 2, kString, false, "", ""},
                    {"capacity_range", 3, kMsg, false, "CapacityRange", ""},
                    {"staging_target_path", 4, kString, false, "", ""},
                    {"volume_capability", 5, kMsg, false, "VolumeCapability", ""},
                    {"secrets", 6, kMsg, true, "map", ""},
                });
  ExpectMessage(
      "PluginCapability",
      {
          {"service", 1, kMsg, false, "PluginCapability.Service", "type"},
          {"volume_expansion", 2, kMsg, false, "PluginCapability.VolumeExpansion", "type"},
      });
}

void ExpectEnum(const char* name, const std::vector<std::pair<const char*, int>>& values) {
  const EnumDescriptor* e = Pool()->FindEnumTypeByName(std::string("csi.v1.") + name);
  ASSERT_NE(e, nullptr) << name;
  EXPECT_EQ(e->value_count(), static_cast<int>(values.size())) << name << ": value added/removed";
  for (const auto& [value, number] : values) {
    const auto* v = e->FindValueByName(value);
    ASSERT_NE(v, nullptr) << name << "." << value;
    EXPECT_EQ(v->number(), number) << name << "." << value;
  }
}

TEST(CsiProtoWire, EnumValues) {
  ExpectEnum("PluginCapability.Service.Type", {{"UNKNOWN", 0},
                                               {"CONTROLLER_SERVICE", 1},
                                               {"VOLUME_ACCESSIBILITY_CONSTRAINTS", 2},
                                               {"GROUP_CONTROLLER_SERVICE", 3},
                                               {"SNAPSHOT_METADATA_SERVICE", 4}});
  ExpectEnum("PluginCapability.VolumeExpansion.Type",
             {{"UNKNOWN", 0}, {"ONLINE", 1}, {"OFFLINE", 2}});
  ExpectEnum("VolumeCapability.AccessMode.Mode", {{"UNKNOWN", 0},
                                                  {"SINGLE_NODE_WRITER", 1},
                                                  {"SINGLE_NODE_READER_ONLY", 2},
                                                  {"MULTI_NODE_READER_ONLY", 3},
                                                  {"MULTI_NODE_SINGLE_WRITER", 4},
                                                  {"MULTI_NODE_MULTI_WRITER", 5},
                                                  {"SINGLE_NODE_SINGLE_WRITER", 6},
                                                  {"SINGLE_NODE_MULTI_WRITER", 7}});
  ExpectEnum("ControllerServiceCapability.RPC.Type", {{"UNKNOWN", 0},
                                                      {"CREATE_DELETE_VOLUME", 1},
                                                      {"PUBLISH_UNPUBLISH_VOLUME", 2},
                                                      {"LIST_VOLUMES", 3},
                                                      {"GET_CAPACITY", 4},
                                                      {"CREATE_DELETE_SNAPSHOT", 5},
                                                      {"LIST_SNAPSHOTS", 6},
                                                      {"CLONE_VOLUME", 7},
                                                      {"PUBLISH_READONLY", 8},
                                                      {"EXPAND_VOLUME", 9},
                                                      {"LIST_VOLUMES_PUBLISHED_NODES", 10},
                                                      {"VOLUME_CONDITION", 11},
                                                      {"GET_VOLUME", 12},
                                                      {"SINGLE_NODE_MULTI_WRITER", 13},
                                                      {"MODIFY_VOLUME", 14}});
  ExpectEnum("NodeServiceCapability.RPC.Type", {{"UNKNOWN", 0},
                                                {"STAGE_UNSTAGE_VOLUME", 1},
                                                {"GET_VOLUME_STATS", 2},
                                                {"EXPAND_VOLUME", 3},
                                                {"VOLUME_CONDITION", 4},
                                                {"SINGLE_NODE_MULTI_WRITER", 5},
                                                {"VOLUME_MOUNT_GROUP", 6}});
  ExpectEnum("GroupControllerServiceCapability.RPC.Type",
             {{"UNKNOWN", 0}, {"CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT", 1}});
  ExpectEnum("VolumeUsage.Unit", {{"UNKNOWN", 0}, {"BYTES", 1}, {"INODES", 2}});
  ExpectEnum("BlockMetadataType", {{"UNKNOWN", 0}, {"FIXED_LENGTH", 1}, {"VARIABLE_LENGTH", 2}});
}

// A round trip through bytes built by hand: proves the generated code reads the spec's wire
// encoding (tag = field_number << 3 | wire_type), not just that the descriptor says so.
TEST(CsiProtoWire, DecodesHandEncodedCreateVolumeRequest) {
  using namespace std::string_literals;  // the bytes contain NULs
  std::string wire;
  wire += "\x0a\x03pvc"s;                       // 1: name = "pvc"
  wire += "\x12\x02\x08\x40"s;                  // 2: capacity_range { required_bytes: 64 }
  wire += "\x1a\x06\x0a\x00\x1a\x02\x08\x01"s;  // 3: volume_capabilities { block {}
                                                //    access_mode { mode: SINGLE_NODE_WRITER } }
  ::csi::v1::CreateVolumeRequest req;
  ASSERT_TRUE(req.ParseFromString(wire));
  EXPECT_EQ(req.name(), "pvc");
  EXPECT_EQ(req.capacity_range().required_bytes(), 64);
  ASSERT_EQ(req.volume_capabilities_size(), 1);
  EXPECT_TRUE(req.volume_capabilities(0).has_block());
  EXPECT_EQ(req.volume_capabilities(0).access_mode().mode(),
            ::csi::v1::VolumeCapability::AccessMode::SINGLE_NODE_WRITER);
  EXPECT_EQ(req.SerializeAsString(), wire) << "canonical re-encoding is byte-identical";
}

}  // namespace
}  // namespace shale::csi
