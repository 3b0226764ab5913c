#include "backup/credentials.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace shale::backup {

namespace {

std::string Trim(std::string s) {
  const char* ws = " \t\r";
  s.erase(0, s.find_first_not_of(ws));
  const size_t end = s.find_last_not_of(ws);
  s.erase(end == std::string::npos ? 0 : end + 1);
  return s;
}

std::string Env(const char* name) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): nothing in shaled sets the environment.
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

}  // namespace

Result<Credentials> ParseCredentialsFile(const std::string& text, const std::string& profile) {
  const std::string want = profile.empty() ? "default" : profile;
  std::istringstream in(text);
  std::string line;
  std::string section;
  bool found = false;
  Credentials c;
  while (std::getline(in, line)) {
    line = Trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = Trim(line.substr(1, line.size() - 2));
      if (section.starts_with("profile ")) section = Trim(section.substr(8));
      found = found || section == want;
      continue;
    }
    if (section != want) continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = Trim(line.substr(0, eq));
    const std::string value = Trim(line.substr(eq + 1));
    if (key == "aws_access_key_id") c.access_key_id = value;
    if (key == "aws_secret_access_key") c.secret_access_key = value;
    if (key == "aws_session_token") c.session_token = value;
  }
  if (!found) {
    return Status::FailedPrecondition("the credentials file has no profile [" + want + "]");
  }
  if (c.access_key_id.empty() || c.secret_access_key.empty()) {
    return Status::FailedPrecondition("profile [" + want +
                                      "] of the credentials file lacks aws_access_key_id or "
                                      "aws_secret_access_key");
  }
  return c;
}

Result<Credentials> LoadCredentials(const std::string& file, const std::string& profile) {
  if (file.empty()) {
    Credentials c{Env("AWS_ACCESS_KEY_ID"), Env("AWS_SECRET_ACCESS_KEY"), Env("AWS_SESSION_TOKEN")};
    if (c.access_key_id.empty() || c.secret_access_key.empty()) {
      return Status::FailedPrecondition(
          "shaled has no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in its "
          "environment, or name a credentials file with --backup-credentials-file");
    }
    return c;
  }
  struct stat st;
  if (stat(file.c_str(), &st) != 0) {
    return Status::FailedPrecondition("S3 credentials file " + file +
                                      " cannot be read: " + std::string(strerror(errno)));
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return Status::FailedPrecondition("S3 credentials file " + file + " is mode " + mode +
                                      "; it holds secrets and must be readable by its owner "
                                      "only (chmod 600 " +
                                      file + ")");
  }
  std::ifstream in(file);
  if (!in) return Status::FailedPrecondition("S3 credentials file " + file + " cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  Result<Credentials> c = ParseCredentialsFile(text.str(), profile);
  if (!c.ok()) return c.status().WithContext("S3 credentials file " + file);
  return c;
}

}  // namespace shale::backup
