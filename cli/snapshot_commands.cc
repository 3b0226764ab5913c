#include "cli/snapshot_commands.h"

#include <filesystem>
#include <map>

#include "cli/output.h"
#include "cli/progress.h"
#include "engine/common/units.h"

namespace shale::cli {

namespace {

// Stream files are paths on shaled's host; a relative one means the caller's working directory
// (shaled has its own), as for `pool create --device`.
std::string AbsolutePath(const std::string& path) {
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

std::string JoinNames(const google::protobuf::RepeatedPtrField<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

void SnapshotCommands::PrintJson(const nlohmann::ordered_json& json) {
  out_ << json.dump(2) << "\n";
}

void SnapshotCommands::AddCommands(CLI::App& app) {
  AddSnapshotCommand(app);
  AddCloneCommand(app);
}

void SnapshotCommands::AddSnapshotCommand(CLI::App& app) {
  CLI::App* snapshot_cmd = app.add_subcommand(
      "snapshot", "Manage snapshots: frozen, read-only copies of a volume named VOLUME@SNAP");
  snapshot_cmd->require_subcommand(1);

  CLI::App* create = snapshot_cmd->add_subcommand(
      "create",
      "Snapshot a volume (no data copied; every write acknowledged before it is included)");
  create->add_option("VOLUME", volume_, "Volume to snapshot (or VOLUME@SNAP)")->required();
  create->add_option("SNAP", snapshot_, "Snapshot name (the part after '@')");
  create->add_option("--label", labels_, "Attach a label, e.g. source=URL; repeatable")
      ->type_name("KEY=VALUE");
  create->add_flag("--wait-digest", wait_digest_,
                   "Answer once the content digest is computed (it reads the whole snapshot; "
                   "raise --timeout for large volumes)");
  create->add_flag("--wait-durable", wait_durable_,
                   "Answer once the snapshot survives a crash (by default it answers at the cut, "
                   "while its commit may still be in flight: Durable says which)");
  create->callback(SelectAction(action_, this, &SnapshotCommands::RunCreate));

  CLI::App* list = snapshot_cmd->add_subcommand("list", "List snapshots (of one volume, or all)");
  list->add_option("VOLUME", volume_, "Only this volume's snapshots");
  list->add_flag("--all", all_, "Also the implicit snapshots taken for clones of live volumes");
  list->callback(SelectAction(action_, this, &SnapshotCommands::RunList));

  CLI::App* show = snapshot_cmd->add_subcommand(
      "show", "Show a snapshot: source, labels, digest, space, clones, export");
  show->add_option("VOLUME@SNAP", ref_, "The snapshot")->required();
  show->callback(SelectAction(action_, this, &SnapshotCommands::RunShow));

  CLI::App* del = snapshot_cmd->add_subcommand(
      "delete",
      "Delete a snapshot; clones made from it keep working (its space returns when the last "
      "of them is deleted or flattened)");
  del->add_option("VOLUME@SNAP", ref_, "The snapshot")->required();
  del->add_flag("--force", force_, "Disconnect the snapshot's NBD clients first");
  del->callback(SelectAction(action_, this, &SnapshotCommands::RunDelete));

  CLI::App* verify = snapshot_cmd->add_subcommand(
      "verify", "Recompute the digest from the data on disk; exit 1 on a mismatch");
  verify->add_option("VOLUME@SNAP", ref_, "The snapshot")->required();
  verify->callback(SelectAction(action_, this, &SnapshotCommands::RunVerify));

  CLI::App* exp = snapshot_cmd->add_subcommand(
      "export",
      "Write a snapshot to a stream file on shaled's host (docs/format/snapshot-stream.md)");
  exp->add_option("VOLUME@SNAP", ref_, "The snapshot")->required();
  exp->add_option("FILE", file_, "Stream file to write (relative: to this directory)")->required();
  exp->add_option("--base", base_, "Write only what changed since this older snapshot")
      ->type_name("VOLUME@SNAP");
  exp->add_flag("--overwrite", overwrite_, "Replace FILE if it exists");
  exp->callback(SelectAction(action_, this, &SnapshotCommands::RunExport));

  CLI::App* imp = snapshot_cmd->add_subcommand(
      "import",
      "Recreate a snapshot from a stream file (a full stream creates VOLUME; an incremental one "
      "applies to the VOLUME holding its base); the digest is checked");
  imp->add_option("FILE", file_, "Stream file to read (relative: to this directory)")->required();
  imp->add_option("VOLUME", volume_, "Volume to create (full) or update (incremental)")->required();
  imp->add_option("--pool", pool_, "Pool of a new volume (default: \"default\", or the only one)")
      ->type_name("POOL");
  imp->callback(SelectAction(action_, this, &SnapshotCommands::RunImport));
  AddGroupCommands(snapshot_cmd);
}

void SnapshotCommands::AddCloneCommand(CLI::App& app) {
  CLI::App* clone_cmd = app.add_subcommand(
      "clone", "Manage clones: volumes that share a snapshot's data until they write");
  clone_cmd->require_subcommand(1);
  CLI::App* clone_create = clone_cmd->add_subcommand(
      "create",
      "Create a volume from VOLUME@SNAP, or from the live VOLUME (through an implicit snapshot)");
  clone_create->add_option("SOURCE", ref_, "VOLUME@SNAP or VOLUME")->required();
  clone_create->add_option("NEWVOL", target_, "Name of the new volume")->required();
  clone_create->add_flag("--read-only", read_only_,
                         "Refuse writes (enforced by the engine): the clone keeps the source's "
                         "exact content and digest");
  clone_create->add_option("--label", labels_, "Attach a label to the new volume; repeatable")
      ->type_name("KEY=VALUE");
  replica_flags_.Add(clone_create,
                     "A replicated clone (cluster mode): replicas on distinct nodes, each a "
                     "clone of its node's copy of the snapshot where it holds one; of a live "
                     "VOLUME, only when it is this node's own (not replicated)");
  clone_create->callback(SelectAction(action_, this, &SnapshotCommands::RunClone));

  CLI::App* clone_list =
      clone_cmd->add_subcommand("list", "List clones with their source and its digest");
  clone_list->callback(SelectAction(action_, this, &SnapshotCommands::RunListClones));
}

void SnapshotCommands::AddVolumeCommands(CLI::App* volume_cmd) {
  CLI::App* flatten = volume_cmd->add_subcommand(
      "flatten",
      "Copy what a volume still reads through snapshots into its own space (detaches a clone "
      "from its source); clients may keep using it");
  flatten->add_option("NAME", volume_, "Volume name")->required();
  flatten->callback(SelectAction(action_, this, &SnapshotCommands::RunFlatten));

  CLI::App* revert = volume_cmd->add_subcommand(
      "revert",
      "Roll a volume back to one of its snapshots, in place (content and size; later snapshots "
      "stay); refused while it is open");
  revert->add_option("NAME", volume_, "Volume name")->required();
  revert->add_option("--to", snapshot_, "Snapshot to return to (SNAP or NAME@SNAP)")
      ->required()
      ->type_name("SNAP");
  revert->callback(SelectAction(action_, this, &SnapshotCommands::RunRevert));
}

int SnapshotCommands::RunCreate(ControlClient& client, Format format) {
  std::string volume = volume_;
  std::string name = snapshot_;
  if (name.empty()) {
    // `snapshot create VOLUME@SNAP` reads as well as `snapshot create VOLUME SNAP`.
    const std::string::size_type at = volume.find('@');
    if (at == std::string::npos) {
      err_ << "shale: snapshot create: SNAP is required (shale snapshot create VOLUME SNAP) "
              "(see 'shale snapshot create --help')\n";
      return kExitUsage;
    }
    name = volume.substr(at + 1);
    volume.resize(at);
  }
  std::map<std::string, std::string> labels;
  std::string error;
  if (!ParseLabels(labels_, &labels, &error)) {
    err_ << "shale: snapshot create: " << error << "\n";
    return kExitUsage;
  }
  v1::CreateSnapshotRequest req;
  req.set_volume(volume);
  req.set_name(name);
  req.mutable_labels()->insert(labels.begin(), labels.end());
  req.set_wait_digest(wait_digest_);
  req.set_wait_durable(wait_durable_);
  return RunRpc(client, &v1::Control::Stub::CreateSnapshot, req, err_, [&](const v1::Snapshot& s) {
    format == Format::kJson ? PrintJson(ToJson(s)) : void(out_ << SnapshotView(s));
    return kExitOk;
  });
}

int SnapshotCommands::RunList(ControlClient& client, Format format) {
  v1::ListSnapshotsRequest req;
  req.set_volume(volume_);
  req.set_include_implicit(all_);
  return RunRpc(client, &v1::Control::Stub::ListSnapshots, req, err_,
                [&](const v1::ListSnapshotsResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json snaps = nlohmann::ordered_json::array();
                    for (const v1::Snapshot& s : resp.snapshots()) snaps.push_back(ToJson(s));
                    PrintJson({{"snapshots", snaps}});
                  } else {
                    out_ << SnapshotTable(resp);
                  }
                  return kExitOk;
                });
}

int SnapshotCommands::RunShow(ControlClient& client, Format format) {
  v1::GetSnapshotRequest req;
  req.set_name(ref_);
  return RunRpc(client, &v1::Control::Stub::GetSnapshot, req, err_, [&](const v1::Snapshot& s) {
    format == Format::kJson ? PrintJson(ToJson(s)) : void(out_ << SnapshotView(s));
    return kExitOk;
  });
}

int SnapshotCommands::RunDelete(ControlClient& client, Format format) {
  v1::DeleteSnapshotRequest req;
  req.set_name(ref_);
  req.set_force(force_);
  return RunRpc(client, &v1::Control::Stub::DeleteSnapshot, req, err_,
                [&](const v1::DeleteSnapshotResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json still = nlohmann::ordered_json::array();
                    for (const std::string& c : resp.still_read_by()) still.push_back(c);
                    PrintJson({{"name", ref_}, {"deleted", true}, {"still_read_by", still}});
                  } else if (resp.still_read_by().empty()) {
                    out_ << "snapshot '" << ref_ << "' deleted\n";
                  } else {
                    out_ << "snapshot '" << ref_ << "' deleted; its data stays until "
                         << JoinNames(resp.still_read_by())
                         << " (clones reading it) are deleted or flattened\n";
                  }
                  return kExitOk;
                });
}

int SnapshotCommands::RunVerify(ControlClient& client, Format format) {
  v1::VerifySnapshotRequest req;
  req.set_name(ref_);
  return RunRpc(client, &v1::Control::Stub::VerifySnapshot, req, err_,
                [&](const v1::VerifySnapshotResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json replicas = nlohmann::ordered_json::array();
                    for (const v1::ReplicaSnapshotDigest& r : resp.replicas()) {
                      replicas.push_back({{"node", r.node()}, {"digest", r.digest()}});
                    }
                    PrintJson({{"name", resp.name()},
                               {"digest", resp.digest()},
                               {"verified", true},
                               {"replicas", replicas}});
                  } else {
                    out_ << "snapshot '" << resp.name() << "' verified: digest " << resp.digest()
                         << "\n";
                    for (const v1::ReplicaSnapshotDigest& r : resp.replicas()) {
                      out_ << "  replica on " << r.node() << ": digest " << r.digest() << "\n";
                    }
                  }
                  return kExitOk;
                });
}

int SnapshotCommands::RunExport(ControlClient& client, Format format) {
  v1::ExportSnapshotRequest req;
  req.set_name(ref_);
  req.set_path(AbsolutePath(file_));
  req.set_base(base_);
  req.set_overwrite(overwrite_);
  const InterruptNotice notice("shaled cancels the export and removes the partial file " +
                               req.path());
  ProgressMeter meter(err_, err_is_terminal_, "exporting '" + ref_ + "'",
                      ProgressMeter::Unit::kBytes);
  return RunWithProgress(
      client, &v1::Control::Stub::ExportSnapshot, req, meter, err_,
      [&](const v1::ExportSnapshotResponse& resp) {
        if (format == Format::kJson) {
          PrintJson(ToJson(resp));
          return kExitOk;
        }
        out_ << RenderKeyValues(std::vector<std::pair<std::string, std::string>>{
            {"Snapshot", resp.name()},
            {"File", resp.path()},
            {"Kind", resp.base().empty()
                         ? std::string("full")
                         : "incremental since " + resp.base() +
                               (resp.content_compared() ? " (compared by content)" : "")},
            {"Stream", FormatSize(resp.stream_bytes()) + " (" +
                           std::to_string(resp.stream_bytes()) + " bytes)"},
            {"Data",
             FormatSize(resp.data_bytes()) + " in " + std::to_string(resp.records()) + " records"},
            {"Digest", resp.digest()},
        });
        return kExitOk;
      });
}

int SnapshotCommands::RunImport(ControlClient& client, Format format) {
  v1::ImportSnapshotRequest req;
  req.set_path(AbsolutePath(file_));
  req.set_volume(volume_);
  req.set_pool(pool_);
  const InterruptNotice notice("shaled cancels the import and undoes what it wrote to '" + volume_ +
                               "'");
  ProgressMeter meter(err_, err_is_terminal_, "importing into '" + volume_ + "'",
                      ProgressMeter::Unit::kBytes);
  return RunWithProgress(client, &v1::Control::Stub::ImportSnapshot, req, meter, err_,
                         [&](const v1::ImportSnapshotResponse& resp) {
                           if (format == Format::kJson) {
                             PrintJson(ToJson(resp));
                             return kExitOk;
                           }
                           out_ << "imported " << (resp.incremental() ? "incremental" : "full")
                                << " stream (" << FormatSize(resp.stream_bytes()) << ") as "
                                << resp.snapshot().name()
                                << (resp.created_volume() ? " (new volume)" : "")
                                << "; digest verified\n"
                                << SnapshotView(resp.snapshot());
                           return kExitOk;
                         });
}

int SnapshotCommands::RunClone(ControlClient& client, Format format) {
  std::map<std::string, std::string> labels;
  std::string error;
  if (!ParseLabels(labels_, &labels, &error)) {
    err_ << "shale: clone create: " << error << "\n";
    return kExitUsage;
  }
  v1::CloneVolumeRequest req;
  req.set_source(ref_);
  req.set_name(target_);
  req.set_read_only(read_only_);
  req.mutable_labels()->insert(labels.begin(), labels.end());
  replica_flags_.Fill(&req);
  return RunRpc(client, &v1::Control::Stub::CloneVolume, req, err_, [&](const v1::Volume& v) {
    format == Format::kJson ? PrintJson(ToJson(v)) : void(out_ << VolumeView(v));
    return kExitOk;
  });
}

int SnapshotCommands::RunListClones(ControlClient& client, Format format) {
  return RunRpc(client, &v1::Control::Stub::ListClones, v1::ListClonesRequest(), err_,
                [&](const v1::ListClonesResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json clones = nlohmann::ordered_json::array();
                    for (const v1::CloneInfo& c : resp.clones()) clones.push_back(ToJson(c));
                    PrintJson({{"clones", clones}});
                  } else {
                    out_ << CloneTable(resp);
                  }
                  return kExitOk;
                });
}

int SnapshotCommands::RunFlatten(ControlClient& client, Format format) {
  v1::FlattenVolumeRequest req;
  req.set_name(volume_);
  v1::FlattenVolumeProgress last;
  ProgressMeter meter(err_, err_is_terminal_, "flattening '" + volume_ + "'",
                      ProgressMeter::Unit::kCount, "clusters");
  const InterruptNotice notice(
      "the flatten goes on in shaled (it cannot stop halfway); 'shale volume show " + volume_ +
      "' shows 'Shared: 0 B' once it is done");
  const std::string error = client.Stream(
      &v1::Control::Stub::FlattenVolume, req, [&](const v1::FlattenVolumeProgress& p) {
        last = p;
        // A short flatten may send only its final message: it is shown too.
        if (p.total_clusters() > 0) {
          meter.Update(p.finished() ? p.total_clusters() : p.done_clusters(), p.total_clusters());
        }
      });
  if (!error.empty()) {
    meter.Abandon();
    err_ << "shale: " << error << "\n";
    return kExitFailure;
  }
  meter.Finish();
  if (format == Format::kJson) {
    PrintJson({{"name", volume_}, {"flattened", true}, {"clusters", last.total_clusters()}});
  } else {
    out_ << "volume '" << volume_ << "' flattened: " << last.total_clusters()
         << " shared cluster(s) copied; it reads nothing through snapshots any more\n";
  }
  return kExitOk;
}

int SnapshotCommands::RunRevert(ControlClient& client, Format format) {
  v1::RevertVolumeRequest req;
  req.set_name(volume_);
  req.set_snapshot(snapshot_);
  return RunRpc(client, &v1::Control::Stub::RevertVolume, req, err_, [&](const v1::Volume& v) {
    if (format == Format::kJson) {
      PrintJson(ToJson(v));
    } else {
      const std::string to =
          snapshot_.find('@') == std::string::npos ? volume_ + "@" + snapshot_ : snapshot_;
      out_ << "volume '" << volume_ << "' reverted to " << to << "\n";
    }
    return kExitOk;
  });
}

}  // namespace shale::cli
