#include "cli/volume_commands.h"

#include <map>

#include "cli/output.h"
#include "cli/qos_commands.h"

namespace shale::cli {

void VolumeCommands::PrintJson(const nlohmann::ordered_json& json) { out_ << json.dump(2) << "\n"; }

int VolumeCommands::PrintVolume(Format format, const v1::Volume& volume) {
  // Advice about a request that succeeded (the pool is filling up): on stderr, so scripts
  // reading stdout are not disturbed.
  for (const std::string& warning : volume.warnings())
    err_ << "shale: warning: " << warning << "\n";
  format == Format::kJson ? PrintJson(ToJson(volume)) : void(out_ << VolumeView(volume));
  return kExitOk;
}

CLI::App* VolumeCommands::AddCommands(CLI::App& app) {
  CLI::App* volume_cmd = app.add_subcommand("volume", "Manage thin volumes");
  volume_cmd->require_subcommand(1);

  CLI::App* create = volume_cmd->add_subcommand("create", "Create a thin volume");
  create->add_option("NAME", name_, "Volume name")->required();
  create->add_option("--size", size_, "Size seen by clients (rounded up to 4K)")
      ->required()
      ->check(SizeValidator())
      ->type_name("SIZE");
  create
      ->add_option("--pool", pool_,
                   "Pool to carve it from (default: \"default\", or the only pool)")
      ->type_name("POOL");
  create->add_flag("--read-only", read_only_, "Refuse writes to the volume");
  create->add_option("--label", labels_, "Attach a label; repeatable")->type_name("KEY=VALUE");
  qos_->AddCreateFlags(create);
  replica_flags_.Add(create,
                     "Replicas on distinct nodes (cluster mode; the local node first, then by "
                     "free capacity)");
  create->callback(SelectAction(action_, this, &VolumeCommands::RunCreate));

  CLI::App* list = volume_cmd->add_subcommand("list", "List volumes");
  list->add_option("--pool", pool_, "Only the volumes of this pool")->type_name("POOL");
  list->callback(SelectAction(action_, this, &VolumeCommands::RunList));

  CLI::App* show = volume_cmd->add_subcommand("show", "Show one volume");
  show->add_option("NAME", name_, "Volume name")->required();
  show->callback(SelectAction(action_, this, &VolumeCommands::RunShow));

  CLI::App* resize = volume_cmd->add_subcommand("resize", "Grow a volume (shrinking is refused)");
  resize->add_option("NAME", name_, "Volume name")->required();
  resize->add_option("--size", size_, "New size (rounded up to 4K)")
      ->required()
      ->check(SizeValidator())
      ->type_name("SIZE");
  resize->callback(SelectAction(action_, this, &VolumeCommands::RunResize));

  CLI::App* del = volume_cmd->add_subcommand(
      "delete",
      "Delete a volume and free its space (refused while NBD clients use it, unless --force)");
  del->add_option("NAME", name_, "Volume name")->required();
  del->add_flag("--force", force_,
                "Disconnect the volume's NBD clients first (their requests in flight "
                "complete), then delete");
  del->callback(SelectAction(action_, this, &VolumeCommands::RunDelete));

  CLI::App* recover = volume_cmd->add_subcommand(
      "force-recover",
      "Serve a replicated volume from NODE's replica when its in-sync replicas are gone; writes "
      "acknowledged since NODE's generation may be lost (printed and logged)");
  recover->add_option("NAME", name_, "Volume name")->required();
  recover->add_option("--from", from_, "The node whose replica becomes the only in-sync one")
      ->required()
      ->type_name("NODE");
  recover->callback(SelectAction(action_, this, &VolumeCommands::RunForceRecover));

  CLI::App* take = volume_cmd->add_subcommand(
      "take-over",
      "Make this node (it holds an in-sync replica) the target of a replicated volume: epoch + 1, "
      "the old target is fenced (refused while the old target's node is up, unless --force)");
  take->add_option("NAME", name_, "Volume name")->required();
  take->add_flag("--force", force_,
                 "Take it although the old target's lease lives (you know that node is dead or "
                 "cut off); the old target is fenced either way");
  take->callback(SelectAction(action_, this, &VolumeCommands::RunTakeOver));

  CLI::App* attach = volume_cmd->add_subcommand(
      "attach",
      "Serve a replicated volume on this node (it holds an in-sync replica): refused while "
      "another node has it attached and that node's lease lives; after a detach there, or once "
      "that lease expired, the volume moves here (epoch + 1, the old target fenced)");
  attach->add_option("NAME", name_, "Volume name")->required();
  attach->callback(SelectAction(action_, this, &VolumeCommands::RunAttach));
  CLI::App* detach = volume_cmd->add_subcommand(
      "detach",
      "Stop serving a replicated volume on this node (refused while it has clients), so any "
      "node holding an in-sync replica can attach it at once");
  detach->add_option("NAME", name_, "Volume name")->required();
  detach->callback(SelectAction(action_, this, &VolumeCommands::RunDetach));
  return volume_cmd;
}

int VolumeCommands::RunCreate(ControlClient& client, Format format) {
  std::map<std::string, std::string> labels;
  std::string error;
  if (!ParseLabels(labels_, &labels, &error)) {
    err_ << "shale: volume create: " << error << "\n";
    return kExitUsage;
  }
  v1::CreateVolumeRequest req;
  req.set_name(name_);
  req.set_size_bytes(SizeOf(size_));
  req.set_pool(pool_);
  req.set_read_only(read_only_);
  req.mutable_labels()->insert(labels.begin(), labels.end());
  replica_flags_.Fill(&req);
  if (!qos_->FillCreate(&req, &error)) {
    err_ << "shale: volume create: " << error << "\n";
    return kExitUsage;
  }
  return RunRpc(client, &v1::Control::Stub::CreateVolume, req, err_,
                [&](const v1::Volume& volume) { return PrintVolume(format, volume); });
}

int VolumeCommands::RunList(ControlClient& client, Format format) {
  v1::ListVolumesRequest req;
  req.set_pool(pool_);
  return RunRpc(client, &v1::Control::Stub::ListVolumes, req, err_,
                [&](const v1::ListVolumesResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json volumes = nlohmann::ordered_json::array();
                    for (const v1::Volume& v : resp.volumes()) volumes.push_back(ToJson(v));
                    PrintJson({{"volumes", volumes}});
                  } else {
                    out_ << VolumeTable(resp);
                  }
                  return kExitOk;
                });
}

int VolumeCommands::RunShow(ControlClient& client, Format format) {
  v1::GetVolumeRequest req;
  req.set_name(name_);
  return RunRpc(client, &v1::Control::Stub::GetVolume, req, err_,
                [&](const v1::Volume& volume) { return PrintVolume(format, volume); });
}

int VolumeCommands::RunResize(ControlClient& client, Format format) {
  v1::ResizeVolumeRequest req;
  req.set_name(name_);
  req.set_size_bytes(SizeOf(size_));
  return RunRpc(client, &v1::Control::Stub::ResizeVolume, req, err_,
                [&](const v1::Volume& volume) { return PrintVolume(format, volume); });
}

int VolumeCommands::RunDelete(ControlClient& client, Format format) {
  v1::DeleteVolumeRequest req;
  req.set_name(name_);
  req.set_force(force_);
  return RunRpc(client, &v1::Control::Stub::DeleteVolume, req, err_,
                [&](const v1::DeleteVolumeResponse&) {
                  format == Format::kJson ? PrintJson({{"name", name_}, {"deleted", true}})
                                          : void(out_ << "volume '" << name_ << "' deleted\n");
                  return kExitOk;
                });
}

int VolumeCommands::RunForceRecover(ControlClient& client, Format format) {
  v1::ForceRecoverVolumeRequest req;
  req.set_volume(name_);
  req.set_from_node(from_);
  return RunRpc(client, &v1::Control::Stub::ForceRecoverVolume, req, err_,
                [&](const v1::ForceRecoverVolumeResponse& resp) {
                  format == Format::kJson
                      ? PrintJson({{"name", name_}, {"from", from_}, {"message", resp.message()}})
                      : void(out_ << resp.message() << "\n");
                  return kExitOk;
                });
}

int VolumeCommands::RunTakeOver(ControlClient& client, Format format) {
  v1::TakeOverVolumeRequest req;
  req.set_volume(name_);
  req.set_force(force_);
  return RunRpc(
      client, &v1::Control::Stub::TakeOverVolume, req, err_,
      [&](const v1::TakeOverVolumeResponse& resp) {
        format == Format::kJson
            ? PrintJson({{"name", name_}, {"epoch", resp.epoch()}, {"message", resp.message()}})
            : void(out_ << resp.message() << "\n");
        return kExitOk;
      });
}

int VolumeCommands::RunAttach(ControlClient& client, Format format) {
  v1::AttachVolumeRequest req;
  req.set_volume(name_);
  return RunRpc(client, &v1::Control::Stub::AttachVolume, req, err_,
                [&](const v1::VolumeAttachment& resp) { return PrintAttachment(resp, format); });
}

int VolumeCommands::RunDetach(ControlClient& client, Format format) {
  v1::DetachVolumeRequest req;
  req.set_volume(name_);
  return RunRpc(client, &v1::Control::Stub::DetachVolume, req, err_,
                [&](const v1::VolumeAttachment& resp) { return PrintAttachment(resp, format); });
}

int VolumeCommands::PrintAttachment(const v1::VolumeAttachment& resp, Format format) {
  format == Format::kJson ? PrintJson({{"name", name_},
                                       {"target", resp.target()},
                                       {"detached", resp.detached()},
                                       {"epoch", resp.epoch()},
                                       {"message", resp.message()}})
                          : void(out_ << resp.message() << "\n");
  return kExitOk;
}

}  // namespace shale::cli
