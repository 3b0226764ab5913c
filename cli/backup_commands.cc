#include "cli/backup_commands.h"

#include "cli/output.h"
#include "engine/common/units.h"

namespace shale::cli {

namespace {

std::string Percent(uint64_t done, uint64_t total) {
  return total == 0 ? std::string("0%") : std::to_string(done * 100 / total) + "%";
}

std::string BackupView(const v1::Backup& b) {
  const std::string kind = b.base().empty() ? "full" : "incremental on " + b.base();
  google::protobuf::Map<std::string, std::string> labels = b.labels();
  return RenderKeyValues({
      {"Id", b.id()},
      {"URL", b.url()},
      {"Snapshot", b.volume() + "@" + b.snapshot()},
      {"Time", FormatUnixNanos(b.created_unix_ns())},
      {"Snapshot taken", FormatUnixNanos(b.snapshot_created_unix_ns())},
      {"Size", FormatSize(b.size_bytes()) + " (" + std::to_string(b.size_bytes()) + " bytes)"},
      {"Digest", b.digest()},
      {"Kind", kind},
      {"Chunks", std::to_string(b.chunk_count()) + " holding " + FormatSize(b.data_bytes()) + ", " +
                     FormatSize(b.stored_bytes()) + " stored (compressed, shared)"},
      {"Uploaded", std::to_string(b.uploaded_chunks()) + " chunk(s), " +
                       FormatSize(b.uploaded_bytes()) + " (read " + FormatSize(b.read_bytes()) +
                       ")"},
      {"Labels", FormatLabels(labels)},
      {"From", b.host() + ", pool " + b.pool() + ", shale " + b.shale_version()},
  });
}

nlohmann::ordered_json GcJson(const v1::GcBackupsResponse& r) {
  nlohmann::ordered_json deleted = nlohmann::ordered_json::array();
  for (const std::string& id : r.deleted()) deleted.push_back(id);
  return {{"deleted", deleted},
          {"chunks_deleted", r.chunks_deleted()},
          {"bytes_freed", r.bytes_freed()},
          {"chunks_kept", r.chunks_kept()},
          {"sweep_deferred", r.sweep_deferred()},
          {"deferred_reason", r.deferred_reason()}};
}

std::string GcText(const v1::GcBackupsResponse& r) {
  std::string out;
  for (const std::string& id : r.deleted()) out += "backup " + id + " deleted\n";
  if (r.deleted().empty()) out += "no backup deleted\n";
  if (r.sweep_deferred()) {
    out += "chunks not swept now: " + r.deferred_reason() + "\n";
  } else {
    out += std::to_string(r.chunks_deleted()) + " unreferenced chunk(s) deleted (" +
           FormatSize(r.bytes_freed()) + "), " + std::to_string(r.chunks_kept()) +
           " still referenced\n";
  }
  return out;
}

}  // namespace

nlohmann::ordered_json BackupJson(const v1::Backup& b) {
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  for (const auto& [k, v] : b.labels()) labels[k] = v;
  return {{"id", b.id()},
          {"url", b.url()},
          {"volume", b.volume()},
          {"snapshot", b.snapshot()},
          {"time", FormatUnixNanos(b.created_unix_ns())},
          {"created_unix_ns", b.created_unix_ns()},
          {"size", b.size_bytes()},
          {"digest", b.digest()},
          {"incremental", !b.base().empty()},
          {"base", b.base()},
          {"snapshot_created_unix_ns", b.snapshot_created_unix_ns()},
          {"chunk_count", b.chunk_count()},
          {"data_bytes", b.data_bytes()},
          {"stored_bytes", b.stored_bytes()},
          {"uploaded_chunks", b.uploaded_chunks()},
          {"uploaded_bytes", b.uploaded_bytes()},
          {"read_bytes", b.read_bytes()},
          {"labels", labels},
          {"host", b.host()},
          {"pool", b.pool()},
          {"shale_version", b.shale_version()}};
}

void BackupCommands::PrintJson(const nlohmann::ordered_json& json) { out_ << json.dump(2) << "\n"; }

void BackupCommands::AddS3Options(CLI::App* cmd) {
  cmd->add_option("--endpoint", s3_endpoint_,
                  "S3 endpoint, e.g. http://127.0.0.1:9000 (path-style); default: shaled's "
                  "--backup-endpoint, else AWS. (shaled's control socket: give --endpoint "
                  "before `backup`, or $SHALE_ENDPOINT)")
      ->type_name("URL");
  cmd->add_option("--region", region_,
                  "S3 region; default: shaled's --backup-region, else us-east-1")
      ->type_name("R");
}

v1::S3Target BackupCommands::Target(const std::string& url) const {
  v1::S3Target t;
  t.set_url(url);
  t.set_endpoint(s3_endpoint_);
  t.set_region(region_);
  return t;
}

void BackupCommands::AddCommands(CLI::App& app) {
  CLI::App* backup = app.add_subcommand(
      "backup",
      "Back snapshots up to S3 (incremental, deduplicated) and restore them, verified by digest");
  backup->require_subcommand(1);

  CLI::App* create = backup->add_subcommand(
      "create",
      "Back a snapshot up: incremental against the newest earlier backup of the volume "
      "in that place, unless --full");
  create->add_option("VOLUME@SNAP", snapshot_, "The snapshot")->required();
  create->add_option("--to", url_, "Where: s3://BUCKET/PREFIX")->required()->type_name("URL");
  create->add_flag("--full", full_, "Read the whole snapshot (chunks still deduplicate)");
  AddS3Options(create);
  create->callback(SelectAction(action_, this, &BackupCommands::RunCreate));

  CLI::App* list = backup->add_subcommand("list", "List the backups in a place");
  list->add_option("s3://BUCKET/PREFIX", url_, "The place")->required();
  list->add_option("--volume", volume_, "Only this volume's backups")->type_name("V");
  AddS3Options(list);
  list->callback(SelectAction(action_, this, &BackupCommands::RunList));

  CLI::App* show = backup->add_subcommand("show", "Show one backup's manifest");
  show->add_option("s3://BUCKET/PREFIX/ID", url_, "The backup")->required();
  AddS3Options(show);
  show->callback(SelectAction(action_, this, &BackupCommands::RunShow));

  CLI::App* verify = backup->add_subcommand(
      "verify", "Recompute the snapshot digest from the objects in the bucket; exit 1 on damage");
  verify->add_option("s3://BUCKET/PREFIX/ID", url_, "The backup")->required();
  AddS3Options(verify);
  verify->callback(SelectAction(action_, this, &BackupCommands::RunVerify));

  CLI::App* del = backup->add_subcommand(
      "delete", "Delete a backup, then the chunks no other backup references");
  del->add_option("s3://BUCKET/PREFIX/ID", url_, "The backup")->required();
  AddS3Options(del);
  del->callback(SelectAction(action_, this, &BackupCommands::RunDelete));

  CLI::App* prune = backup->add_subcommand(
      "prune", "Keep the newest N backups of each volume in a place, delete the others");
  prune->add_option("s3://BUCKET/PREFIX", url_, "The place")->required();
  prune->add_option("--keep", keep_, "Backups kept per volume")
      ->required()
      ->check(CLI::Range(1u, 1000000u))
      ->type_name("N");
  prune->add_option("--volume", volume_, "Only this volume's backups")->type_name("V");
  AddS3Options(prune);
  prune->callback(SelectAction(action_, this, &BackupCommands::RunPrune));

  CLI::App* restore = backup->add_subcommand(
      "restore", "Restore a backup as a new volume; its digest is checked before success");
  restore->add_option("s3://BUCKET/PREFIX/ID", url_, "The backup (the id `backup list` shows)")
      ->required();
  restore->add_option("NEW-VOLUME", volume_, "The volume to create")->required();
  restore->add_option("--pool", pool_, "Pool of the new volume")->type_name("P");
  replica_flags_.Add(restore,
                     "A replicated volume (cluster mode): this node restores its replica, the "
                     "others on distinct nodes are filled from it");
  AddS3Options(restore);
  restore->callback(SelectAction(action_, this, &BackupCommands::RunRestore));
}

void BackupCommands::Draw(const std::string& what, const v1::BackupProgress& p) {
  if (!err_is_terminal_ || p.finished()) return;
  err_ << "\r" << what << ": " << p.phase() << " " << Percent(p.done_bytes(), p.total_bytes())
       << " (" << FormatSize(p.done_bytes()) << " of " << FormatSize(p.total_bytes());
  if (p.uploaded_bytes() > 0) err_ << ", " << FormatSize(p.uploaded_bytes()) << " uploaded";
  err_ << ")   " << std::flush;
  drew_ = true;
}

int BackupCommands::RunCreate(ControlClient& client, Format format) {
  v1::CreateBackupRequest req;
  req.set_snapshot(snapshot_);
  *req.mutable_to() = Target(url_);
  req.set_full(full_);
  v1::BackupProgress last;
  if (!Stream(client, &v1::Control::Stub::CreateBackup, req, "backing up " + snapshot_, &last)) {
    return kExitFailure;
  }
  const v1::Backup& b = last.backup();
  if (format == Format::kJson) {
    nlohmann::ordered_json j = BackupJson(b);
    j["full_reason"] = last.run().full_reason();
    j["reused_chunks"] = last.run().reused_chunks();
    j["zero_chunks"] = last.run().zero_chunks();
    j["requests"] = last.run().requests();
    j["bytes_sent"] = last.run().bytes_sent();
    PrintJson(j);
  } else {
    out_ << "backup " << b.id() << " of " << b.volume() << "@" << b.snapshot()
         << " created: " << b.url() << "\n"
         << (b.base().empty() ? "full (" + last.run().full_reason() + ")"
                              : "incremental on " + b.base())
         << ": " << b.uploaded_chunks() << " chunk(s) uploaded (" << FormatSize(b.uploaded_bytes())
         << "), " << last.run().reused_chunks() << " already stored, " << last.run().zero_chunks()
         << " zero; digest " << b.digest() << "\n";
  }
  return kExitOk;
}

int BackupCommands::RunList(ControlClient& client, Format format) {
  v1::ListBackupsRequest req;
  *req.mutable_place() = Target(url_);
  req.set_volume(volume_);
  return RunRpc(
      client, &v1::Control::Stub::ListBackups, req, err_, [&](const v1::ListBackupsResponse& resp) {
        if (format == Format::kJson) {
          nlohmann::ordered_json list = nlohmann::ordered_json::array();
          for (const v1::Backup& b : resp.backups()) list.push_back(BackupJson(b));
          PrintJson({{"backups", list}});
          return kExitOk;
        }
        Table t({"ID", "SNAPSHOT", "TIME", "SIZE", "STORED", "KIND", "DIGEST"});
        for (const v1::Backup& b : resp.backups()) {
          t.AddRow({b.id(), b.volume() + "@" + b.snapshot(), FormatUnixNanos(b.created_unix_ns()),
                    FormatSize(b.size_bytes()), FormatSize(b.stored_bytes()),
                    b.base().empty() ? "full" : "incr", b.digest()});
        }
        out_ << t.Render();
        return kExitOk;
      });
}

int BackupCommands::RunShow(ControlClient& client, Format format) {
  v1::GetBackupRequest req;
  *req.mutable_backup() = Target(url_);
  return RunRpc(client, &v1::Control::Stub::GetBackup, req, err_, [&](const v1::Backup& b) {
    format == Format::kJson ? PrintJson(BackupJson(b)) : void(out_ << BackupView(b));
    return kExitOk;
  });
}

int BackupCommands::RunVerify(ControlClient& client, Format format) {
  v1::VerifyBackupRequest req;
  *req.mutable_backup() = Target(url_);
  v1::BackupProgress last;
  if (!Stream(client, &v1::Control::Stub::VerifyBackup, req, "verifying " + url_, &last)) {
    return kExitFailure;
  }
  if (format == Format::kJson) {
    PrintJson({{"id", last.backup().id()},
               {"url", last.backup().url()},
               {"digest", last.digest()},
               {"chunks_checked", last.chunks_done()},
               {"verified", true}});
  } else {
    out_ << "backup " << last.backup().id() << " verified: " << last.chunks_done()
         << " chunk(s) checked, digest " << last.digest() << "\n";
  }
  return kExitOk;
}

int BackupCommands::RunDelete(ControlClient& client, Format format) {
  v1::DeleteBackupRequest req;
  *req.mutable_backup() = Target(url_);
  return RunRpc(client, &v1::Control::Stub::DeleteBackup, req, err_,
                [&](const v1::GcBackupsResponse& r) {
                  format == Format::kJson ? PrintJson(GcJson(r)) : void(out_ << GcText(r));
                  return kExitOk;
                });
}

int BackupCommands::RunPrune(ControlClient& client, Format format) {
  v1::PruneBackupsRequest req;
  *req.mutable_place() = Target(url_);
  req.set_keep(keep_);
  req.set_volume(volume_);
  return RunRpc(client, &v1::Control::Stub::PruneBackups, req, err_,
                [&](const v1::GcBackupsResponse& r) {
                  format == Format::kJson ? PrintJson(GcJson(r)) : void(out_ << GcText(r));
                  return kExitOk;
                });
}

int BackupCommands::RunRestore(ControlClient& client, Format format) {
  v1::RestoreBackupRequest req;
  *req.mutable_backup() = Target(url_);
  req.set_volume(volume_);
  req.set_pool(pool_);
  replica_flags_.Fill(&req);
  v1::BackupProgress last;
  if (!Stream(client, &v1::Control::Stub::RestoreBackup, req, "restoring " + volume_, &last)) {
    return kExitFailure;
  }
  if (format == Format::kJson) {
    nlohmann::ordered_json j = ToJson(last.volume());
    j["restored_from"] = url_;
    j["digest"] = last.digest();
    PrintJson(j);
  } else {
    out_ << "volume '" << volume_ << "' restored from " << url_ << " ("
         << FormatSize(last.volume().size_bytes()) << "); digest " << last.digest()
         << " verified\n";
  }
  return kExitOk;
}

}  // namespace shale::cli
