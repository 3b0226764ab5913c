// S3 credentials of shaled (docs/backup.md, "Credentials"). They come from shaled's side only —
// a credentials file named in its config (`--backup-credentials-file`, mode 0600, the AWS
// shared-credentials INI format) or else AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
// (/ AWS_SESSION_TOKEN) in its environment — and never travel through the control API. No
// message, log line or error built here or by the S3 client ever contains them.
#pragma once

#include <string>

#include "engine/common/result.h"

namespace shale::backup {

struct Credentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // temporary credentials; empty otherwise
  bool empty() const { return access_key_id.empty(); }
};

// From `file` (profile `profile`, "default" when empty) if it is not empty, else from the
// environment. FailedPrecondition with a one-line reason when none are set, the file is missing,
// readable by others (mode & 077), or lacks the keys. Re-read by every backup operation, so
// rotated credentials take effect without a restart.
Result<Credentials> LoadCredentials(const std::string& file, const std::string& profile = "");

// Parses AWS shared-credentials text (INI: [profile] then key = value lines; '#' and ';'
// comments). Used by LoadCredentials and its tests.
Result<Credentials> ParseCredentialsFile(const std::string& text, const std::string& profile);

}  // namespace shale::backup
