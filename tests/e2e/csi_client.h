// A CSI client for the e2e tests: the csi.v1 stubs (Identity, Controller, Node, GroupController,
// SnapshotMetadata) on a shaled started with
// --csi-endpoint, plus request builders. Header-only; used by csi_*_test.cc.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>

#include "csi/csi.grpc.pb.h"
#include "tests/e2e/harness.h"

namespace shale::e2e {

namespace csiv1 = ::csi::v1;
using AccessMode = csiv1::VolumeCapability::AccessMode;

inline csiv1::VolumeCapability MountCap(AccessMode::Mode mode = AccessMode::SINGLE_NODE_WRITER,
                                        const std::string& fs = "ext4") {
  csiv1::VolumeCapability cap;
  cap.mutable_mount()->set_fs_type(fs);
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

inline csiv1::VolumeCapability BlockCap(AccessMode::Mode mode = AccessMode::SINGLE_NODE_WRITER) {
  csiv1::VolumeCapability cap;
  cap.mutable_block();
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

class CsiClient {
 public:
  CsiClient() = default;

  // Starts shaled with the CSI endpoint in the harness root; false (with a failure) if not.
  // An empty `node_id` leaves the daemon's default (in cluster mode: the node name).
  [[nodiscard]] bool Start(Harness& h, const std::vector<std::string>& extra = {},
                           const std::string& node_id = "test-node") {
    socket_ = h.root() + "/csi.sock";
    std::vector<std::string> args = {"--csi-endpoint", "unix://" + socket_};
    if (!node_id.empty()) args.insert(args.end(), {"--node-id", node_id});
    args.insert(args.end(), extra.begin(), extra.end());
    if (!h.StartDaemon(args)) return false;
    auto channel = grpc::CreateChannel("unix://" + socket_, grpc::InsecureChannelCredentials());
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      ADD_FAILURE() << "CSI socket does not answer: " << h.DaemonLog();
      return false;
    }
    identity = csiv1::Identity::NewStub(channel);
    controller = csiv1::Controller::NewStub(channel);
    node = csiv1::Node::NewStub(channel);
    group = csiv1::GroupController::NewStub(channel);
    metadata = csiv1::SnapshotMetadata::NewStub(channel);
    return true;
  }

  const std::string& socket() const { return socket_; }

  // Calls stub method `fn` with a fresh context and a deadline.
  template <typename Stub, typename Req, typename Resp>
  grpc::Status Call(Stub* stub, grpc::Status (Stub::*fn)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return (stub->*fn)(&ctx, req, resp);
  }

  grpc::Status CreateVolume(const csiv1::CreateVolumeRequest& req,
                            csiv1::CreateVolumeResponse* resp) {
    return Call(controller.get(), &csiv1::Controller::Stub::CreateVolume, req, resp);
  }
  grpc::Status DeleteVolume(const std::string& id) {
    csiv1::DeleteVolumeRequest req;
    req.set_volume_id(id);
    csiv1::DeleteVolumeResponse resp;
    return Call(controller.get(), &csiv1::Controller::Stub::DeleteVolume, req, &resp);
  }
  grpc::Status CreateSnapshot(const std::string& volume, const std::string& name,
                              csiv1::CreateSnapshotResponse* resp,
                              const std::map<std::string, std::string>& params = {}) {
    csiv1::CreateSnapshotRequest req;
    req.set_source_volume_id(volume);
    req.set_name(name);
    req.mutable_parameters()->insert(params.begin(), params.end());
    return Call(controller.get(), &csiv1::Controller::Stub::CreateSnapshot, req, resp);
  }
  grpc::Status DeleteSnapshot(const std::string& id) {
    csiv1::DeleteSnapshotRequest req;
    req.set_snapshot_id(id);
    csiv1::DeleteSnapshotResponse resp;
    return Call(controller.get(), &csiv1::Controller::Stub::DeleteSnapshot, req, &resp);
  }

  // `context`: the volume_context CreateVolume answered (some volumes need it at NodeStage).
  grpc::Status Stage(const std::string& vol, const std::string& staging,
                     const csiv1::VolumeCapability& cap,
                     const google::protobuf::Map<std::string, std::string>& context = {}) {
    csiv1::NodeStageVolumeRequest req;
    req.set_volume_id(vol);
    req.set_staging_target_path(staging);
    *req.mutable_volume_capability() = cap;
    *req.mutable_volume_context() = context;
    csiv1::NodeStageVolumeResponse resp;
    return Call(node.get(), &csiv1::Node::Stub::NodeStageVolume, req, &resp);
  }
  grpc::Status Unstage(const std::string& vol, const std::string& staging) {
    csiv1::NodeUnstageVolumeRequest req;
    req.set_volume_id(vol);
    req.set_staging_target_path(staging);
    csiv1::NodeUnstageVolumeResponse resp;
    return Call(node.get(), &csiv1::Node::Stub::NodeUnstageVolume, req, &resp);
  }

  grpc::Status Publish(const std::string& vol, const std::string& staging,
                       const std::string& target, const csiv1::VolumeCapability& cap,
                       bool readonly) {
    csiv1::NodePublishVolumeRequest req;
    req.set_volume_id(vol);
    req.set_staging_target_path(staging);
    req.set_target_path(target);
    *req.mutable_volume_capability() = cap;
    req.set_readonly(readonly);
    csiv1::NodePublishVolumeResponse resp;
    return Call(node.get(), &csiv1::Node::Stub::NodePublishVolume, req, &resp);
  }
  grpc::Status Unpublish(const std::string& vol, const std::string& target) {
    csiv1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(vol);
    req.set_target_path(target);
    csiv1::NodeUnpublishVolumeResponse resp;
    return Call(node.get(), &csiv1::Node::Stub::NodeUnpublishVolume, req, &resp);
  }

  // A CreateVolume request for `name` with one mount capability.
  static csiv1::CreateVolumeRequest VolumeRequest(const std::string& name, int64_t required = 0,
                                                  int64_t limit = 0) {
    csiv1::CreateVolumeRequest req;
    req.set_name(name);
    *req.add_volume_capabilities() = MountCap();
    if (required != 0 || limit != 0) {
      req.mutable_capacity_range()->set_required_bytes(required);
      req.mutable_capacity_range()->set_limit_bytes(limit);
    }
    return req;
  }

  std::unique_ptr<csiv1::Identity::Stub> identity;
  std::unique_ptr<csiv1::Controller::Stub> controller;
  std::unique_ptr<csiv1::Node::Stub> node;
  std::unique_ptr<csiv1::GroupController::Stub> group;
  std::unique_ptr<csiv1::SnapshotMetadata::Stub> metadata;

 private:
  std::string socket_;
};

inline std::string Describe(const grpc::Status& st) {
  return "code " + std::to_string(st.error_code()) + ": " + st.error_message();
}

}  // namespace shale::e2e
