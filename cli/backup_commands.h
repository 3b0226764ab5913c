// Backup commands of the shale CLI (docs/backup.md): `backup create|list|show|verify|delete|
// prune|restore`. Every command takes --endpoint URL (the S3 endpoint, path-style; the control
// socket is then given before the command or with $SHALE_ENDPOINT) and --region R. Long
// commands stream progress from shaled and draw it on stderr when that is a terminal.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "cli/control_client.h"
#include "cli/replica_flags.h"

namespace shale::cli {

class BackupCommands {
 public:
  // A selected command sets `*action`. Everything passed must outlive the object. Progress
  // goes to `err` only when `err_is_terminal`.
  BackupCommands(Action* action, std::ostream& out, std::ostream& err, bool err_is_terminal)
      : action_(action), out_(out), err_(err), err_is_terminal_(err_is_terminal) {}
  BackupCommands(const BackupCommands&) = delete;
  BackupCommands& operator=(const BackupCommands&) = delete;

  // Adds `backup ...` under `app`.
  void AddCommands(CLI::App& app);

 private:
  void AddS3Options(CLI::App* cmd);
  v1::S3Target Target(const std::string& url) const;
  int RunCreate(ControlClient& client, Format format);
  int RunList(ControlClient& client, Format format);
  int RunShow(ControlClient& client, Format format);
  int RunVerify(ControlClient& client, Format format);
  int RunDelete(ControlClient& client, Format format);
  int RunPrune(ControlClient& client, Format format);
  int RunRestore(ControlClient& client, Format format);
  // Draws a progress message (terminal only).
  void Draw(const std::string& what, const v1::BackupProgress& p);
  // Runs a streaming backup RPC, drawing its progress as `what`; `*last` gets the last message.
  // False (with the error line on err_) when it failed.
  template <typename Request>
  bool Stream(ControlClient& client, StreamRpc<Request, v1::BackupProgress> rpc, const Request& req,
              const std::string& what, v1::BackupProgress* last) {
    const std::string error = client.Stream(rpc, req, [&](const v1::BackupProgress& p) {
      *last = p;
      Draw(what, p);
    });
    if (drew_) err_ << "\n";
    drew_ = false;
    if (!error.empty()) err_ << "shale: " << error << "\n";
    return error.empty();
  }
  void PrintJson(const nlohmann::ordered_json& json);

  Action* const action_;
  std::ostream& out_;
  std::ostream& err_;
  const bool err_is_terminal_;
  bool drew_ = false;
  // Parsed arguments (one command runs per invocation).
  std::string snapshot_, url_, volume_, pool_, s3_endpoint_, region_;
  ReplicaFlags replica_flags_;  // restore
  unsigned keep_ = 0;
  bool full_ = false;
};

// JSON of a backup: id, url, volume, snapshot, time (UTC), size, digest, then the details.
nlohmann::ordered_json BackupJson(const v1::Backup& b);

}  // namespace shale::cli
